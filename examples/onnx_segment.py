"""Segment an image with an exported ONNX file and nothing but numpy, Pillow and onnxruntime (no torch, no semask).

The file says what to do in its metadata (`metadata_props["semask"]`, written by `semask export` /
`semask.export.export_onnx`): the keep-ratio resize to the weights' test scale, the normalisation, and how to read
the outputs. These are the steps of `semask.Predictor`'s default path (whole image, one scale, no flip), so the
labels agree with it up to float rounding between the two runtimes.

The ONNX graph runs at any resized size, however elongated: the metadata's `min_size` / `max_size` are the shape
guards of the torch.export (.pt2) program only. Only a side below `pad_to_min` (SegFormer's MiT: 29 px, where its
key/value reduction no longer fits) is zero-padded and the logits cropped, as the Predictor does.

    semask export semask_swin_tiny_fpn.ade20k model.onnx
    python examples/onnx_segment.py model.onnx photo.jpg --out labels.png --overlay overlay.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def read_metadata(session: ort.InferenceSession) -> dict:
    meta = session.get_modelmeta().custom_metadata_map
    if "semask" not in meta:
        raise SystemExit("this ONNX file has no semask metadata: export it with `semask export MODEL OUT.onnx`")
    return json.loads(meta["semask"])


def load_rgb(path: str) -> np.ndarray:
    """An image file -> [H, W, 3] uint8 RGB as `semask.Predictor` reads it: EXIF orientation applied, 16/32-bit and
    float grey scaled to 8 bits (65535 -> 255; Pillow's convert("RGB") would clip them), alpha dropped."""
    img = ImageOps.exif_transpose(Image.open(path))
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit -> 8-bit
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))


def rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """The largest size with the aspect ratio kept that fits long <= max(scale), short <= min(scale); half up."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis with half-pixel centres and no antialiasing (torch's `F.interpolate(...,
    align_corners=False)`, in float32 as torch computes them): source indices i0, i1 and weights w0, w1."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    w1 = src - i0.astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - w1, w1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[C, H, W] float32 -> [C, *size]: along the width, then along the height (torch's order of the sums)."""
    i0, i1, w0, w1 = _taps(x.shape[2], size[1])
    x = x[:, :, i0] * w0 + x[:, :, i1] * w1
    i0, i1, w0, w1 = _taps(x.shape[1], size[0])
    return x[:, i0] * w0[:, None] + x[:, i1] * w1[:, None]


def segment(session: ort.InferenceSession, meta: dict, image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] int64 class indices (add meta["label_offset"] for the dataset's label ids)."""
    pre = meta["input"]
    h, w = image.shape[:2]
    size = rescale_size(h, w, pre["test_scale"]) if pre["test_scale"] else (h, w)  # null: the weights' own size
    if size != (h, w) and pre.get("resize") == "pil":  # mask-classification models: detectron2 resizes with Pillow
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    x = image.transpose(2, 0, 1).astype(np.float32)  # [3, H, W], 0..255
    if x.shape[1:] != size:  # "bilinear": mmseg's resize (no antialiasing), as torch computes it
        x = np.clip(np.rint(resize_bilinear(x, size)), 0, 255)
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    x = (x - mean) / std
    # No padding to the .pt2 program's min_size: the ONNX graph has no shape guard. Only sides below pad_to_min
    # (MiT) are zero-padded (the mean colour) right/bottom and the logits cropped, as the Predictor does.
    pad = pre.get("pad_to_min", 1)
    x = np.pad(x, ((0, 0), (0, max(0, pad - size[0])), (0, max(0, pad - size[1]))))
    logits = session.run(["logits"], {pre["name"]: x[None]})[0][0, :, :size[0], :size[1]]  # [K, h', w']
    return resize_bilinear(logits, (h, w)).argmax(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an ONNX file from `semask export`")
    ap.add_argument("image")
    ap.add_argument("--out", default="labels.png", help="label PNG in the dataset's ids")
    ap.add_argument("--overlay", help="also write the image blended with the class colours")
    args = ap.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = read_metadata(session)
    image = load_rgb(args.image)
    labels = segment(session, meta, image)
    ids = labels + meta["label_offset"]
    Image.fromarray(ids.astype(np.uint8 if ids.max() < 256 else np.uint16)).save(args.out)
    names = meta["class_names"]
    found = ", ".join(names[c] for c in np.unique(labels))
    print(f"{meta['arch']} ({meta['tag'] or 'untagged'}): wrote {args.out} ({image.shape[1]}x{image.shape[0]}); "
          f"classes: {found}")
    if args.overlay:
        palette = np.asarray(meta["palette"], np.float32)
        blend = 0.5 * image.astype(np.float32) + 0.5 * palette[labels]
        Image.fromarray(blend.round().astype(np.uint8)).save(args.overlay)
        print(f"wrote {args.overlay}")


if __name__ == "__main__":
    main()
