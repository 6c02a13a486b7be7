"""Quickstart: segment an image with a SeMask model, save the overlay and the per-stage semantic-prior grid.

    python examples/quickstart.py [--model ARCH.TAG] [--checkpoint ORIGINAL.pth] [--image IMAGE] [--out DIR]

It loads the tag's pretrained weights when they are reachable; otherwise it falls back to an original-format
checkpoint (default: the small random-weight mmseg SeMask-FPN file shipped with the tests, so the script runs
offline; its predictions are meaningless). Without --image it segments a generated picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import semask
from semask.viz import save_prediction

ROOT = Path(__file__).resolve().parent.parent


def demo_image(h: int = 240, w: int = 320) -> np.ndarray:
    """A small synthetic scene: sky, sun, hills, ground."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[:] = np.stack([110 + 0.3 * yy, 160 + 0.3 * yy, np.full_like(yy, 235)], -1)  # sky
    hill = h * 0.55 + 25 * np.sin(xx / 37.0) + 12 * np.sin(xx / 11.0 + 1)
    img[yy > hill] = (70, 130, 60)  # hills
    img[yy > h * 0.78] = (150, 120, 80)  # ground
    img[(yy - h * 0.22) ** 2 + (xx - w * 0.78) ** 2 < (h * 0.08) ** 2] = (255, 220, 90)  # sun
    return img.clip(0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="semask_swin_tiny_fpn.ade20k", help="arch.tag with pretrained weights")
    parser.add_argument("--checkpoint", default=str(ROOT / "tests/fixtures/semask_fpn_tiny_w7.pth"),
                        help="original checkpoint used when the pretrained weights are not reachable")
    parser.add_argument("--image", help="an image file (default: a generated picture)")
    parser.add_argument("--out", default="quickstart_out")
    args = parser.parse_args()

    try:
        predictor = semask.Predictor(args.model)  # the tag's weights and preprocessing
    except (ValueError, OSError) as err:
        print(f"pretrained {args.model} not reachable ({str(err).splitlines()[0][:120]}...)\n"
              f"-> using the original checkpoint {args.checkpoint}")
        predictor = semask.Predictor(semask.load_original(args.checkpoint))  # architecture read from the tensors
    model = predictor.model
    print(f"model: {model.config.arch}, {model.config.num_classes} classes ({predictor.classes.name}), "
          f"test scale {predictor.test_scale}")

    pred = predictor(args.image if args.image else demo_image())
    paths = save_prediction(pred, args.out, Path(args.image).stem if args.image else "demo", priors_png=True)
    present = [pred.class_names[i] for i in np.unique(pred.labels)]
    print(f"label map {pred.labels.shape} (the input's size), classes {present}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
