"""Quickstart: build a SeMask model from an original-format checkpoint and segment an image.

    python examples/quickstart.py [--checkpoint ORIGINAL.pth] [--image IMAGE] [--out DIR]

Without --checkpoint it uses the small random-weight original-format checkpoint shipped with the tests (a real
mmseg SeMask-FPN file layout, not a trained model); without --image it segments a generated picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import semask

ROOT = Path(__file__).resolve().parent.parent
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "tests/fixtures/semask_fpn_tiny_w7.pth"))
    parser.add_argument("--image", help="an RGB image (default: a generated one)")
    parser.add_argument("--out", default="quickstart_out")
    args = parser.parse_args()

    model = semask.load_original(args.checkpoint)  # architecture read from the tensors
    print(f"loaded {args.checkpoint}: {model.config.arch}, {model.config.num_classes} classes")
    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        yy, xx = np.mgrid[0:241, 0:321]
        image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() - MEAN) / STD
    with torch.inference_mode():
        out = model(x)
    labels = out["logits"].argmax(1)[0].numpy().astype(np.uint8)
    prior = F.softmax(out["prior_logits"], 1).amax(1)[0].numpy()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = np.random.default_rng(0).integers(0, 256, (model.config.num_classes, 3), dtype=np.uint8)
    Image.fromarray(palette[labels]).save(out_dir / "labels_color.png")
    Image.fromarray((prior * 255).astype(np.uint8)).save(out_dir / "prior_confidence.png")
    print(f"label map {labels.shape} with classes {np.unique(labels).tolist()}; wrote {out_dir}/labels_color.png "
          f"and {out_dir}/prior_confidence.png")


if __name__ == "__main__":
    main()
