"""Pictures of predictions: colour label maps, overlays, a colour legend, the per-stage semantic-prior grid, and
`save_prediction` (raw label PNG in the dataset's ids + overlay + prior grid)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.palettes import generate_palette
from .infer import Prediction

_FONT = ImageFont.load_default()
_BG = (255, 255, 255)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Label map [H, W] (array or tensor) -> [H, W, 3] uint8 colours; labels outside the palette (e.g. ignore 255,
    negative ids) are black."""
    labels = _label_array(labels)
    n = max(int(labels.max(initial=0)) + 1, len(palette))
    lut = np.zeros((n + 1, 3), dtype=np.uint8)  # the extra last row: black, for negative labels
    lut[:len(palette)] = palette
    return lut[np.where(labels < 0, n, labels)]


def _label_array(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer map [H, W], got shape {labels.shape} of {labels.dtype}")
    return labels


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, *,
            palette: np.ndarray | None = None) -> np.ndarray:
    """Blend the label colours over an image: (1 - alpha) · image + alpha · colour -> [H, W, 3] uint8.

    `image`: anything the Predictor reads (path, PIL, [H, W, 3] uint8 array, [3, H, W] tensor); `labels`: [H, W]
    integer array or tensor of the same size."""
    from .infer import to_rgb_list

    images, single = to_rgb_list(image, max_pixels=None)
    if not single:
        raise ValueError(f"overlay takes one image, got {len(images)}")
    image, labels = images[0], _label_array(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image and labels must have the same H x W, got {image.shape[:2]} and {labels.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if palette is None:
        palette = generate_palette(max(int(labels.max(initial=0)) + 1, 1))
    color = colorize(labels, palette).astype(np.float32)
    return np.round((1 - alpha) * image.astype(np.float32) + alpha * color).astype(np.uint8)


def legend(names: Sequence[str], palette: np.ndarray, labels: np.ndarray | None = None, *,
           max_entries: int = 20, row: int = 14) -> np.ndarray:
    """A column of colour swatches and class names ([h, w, 3] uint8): the classes present in `labels` by area
    (all classes without labels), at most `max_entries`."""
    if labels is not None:
        ids, counts = np.unique(labels, return_counts=True)
        keep = ids < len(names)
        order = [int(i) for i in ids[keep][np.argsort(-counts[keep], kind="stable")]]
    else:
        order = list(range(len(names)))
    order = order[:max_entries]
    width = 8 + row + 6 + 6 * max((len(names[i]) for i in order), default=4) + 8
    img = Image.new("RGB", (width, max(1, len(order)) * (row + 2) + 6), _BG)
    draw = ImageDraw.Draw(img)
    for k, i in enumerate(order):
        y = 4 + k * (row + 2)
        draw.rectangle((6, y, 6 + row, y + row), fill=tuple(int(c) for c in palette[i]), outline=(0, 0, 0))
        draw.text((6 + row + 6, y + 1), names[i], fill=(0, 0, 0), font=_FONT)
    return np.asarray(img)


def _tile(arr: np.ndarray, size: tuple[int, int], nearest: bool = True) -> Image.Image:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return Image.fromarray(arr).resize(size, resample)


def _grey(conf: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] -> a dark-to-bright [h, w, 3] uint8 ramp (black: unsure, white: sure)."""
    v = np.clip(np.round(np.asarray(conf, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def prior_grid(pred: Prediction, *, tile: int = 256, alpha: float = 0.6, show_legend: bool = True) -> Image.Image:
    """What SeMask's semantic layers "think": one column per stage with the arg-max of its prior map (top) and its
    confidence (bottom, max softmax), after a column with the input + final prediction and its confidence."""
    h, w = pred.labels.shape
    f = tile / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    pal = pred.classes.palette
    cols: list[tuple[str, Image.Image, Image.Image]] = [
        ("prediction / confidence", _tile(overlay(pred.image, pred.labels, alpha, palette=pal), size, nearest=False),
         _tile(_grey(pred.confidence), size, nearest=False))]
    shown = [pred.labels.ravel()]
    for i, prior in enumerate(pred.priors):
        conf, arg = torch.softmax(prior.float(), 0).max(0)  # [h_i, w_i] from [K', h_i, w_i]
        shown.append(arg.numpy().ravel())
        cols.append((f"stage {i + 1} prior (1/{4 * 2 ** i})", _tile(colorize(arg.numpy(), pal), size),
                     _tile(_grey(conf.numpy()), size)))
    pad, head = 4, 14
    leg = legend(pred.class_names, pal, np.concatenate(shown)) if show_legend else np.zeros((0, 0, 3), np.uint8)
    width = len(cols) * (size[0] + pad) + pad + leg.shape[1]
    height = max(head + 2 * (size[1] + pad) + pad, leg.shape[0] + head)
    grid = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(grid)
    for c, (title, top, bottom) in enumerate(cols):
        x = pad + c * (size[0] + pad)
        draw.text((x, 2), title, fill=(0, 0, 0), font=_FONT)
        grid.paste(top, (x, head))
        grid.paste(bottom, (x, head + size[1] + pad))
    if leg.size:
        grid.paste(Image.fromarray(leg), (len(cols) * (size[0] + pad) + pad, head))
    return grid


def label_png(labels: np.ndarray, offset: int = 0) -> Image.Image:
    """Lossless label image in the dataset's ids (`labels + offset`): 8-bit when they fit, else 16-bit."""
    ids = np.asarray(labels).astype(np.int64) + offset
    if ids.min(initial=0) < 0 or ids.max(initial=0) > 65535:
        raise ValueError(f"label ids must be in 0..65535, got {ids.min()}..{ids.max()}")
    if ids.max(initial=0) <= 255:
        return Image.fromarray(ids.astype(np.uint8), mode="L")
    return Image.fromarray(ids.astype(np.uint16))  # mode I;16


def save_prediction(pred: Prediction, out_dir: str | Path, stem: str = "image", *, overlay_png: bool = True,
                    priors_png: bool = False, alpha: float = 0.5) -> dict[str, Path]:
    """Write `{stem}.png` (raw labels in the dataset's ids: +1 for ADE20K / COCO-Stuff-10k, as mmseg's
    `format_results`), `{stem}_overlay.png` and, with `priors_png`, `{stem}_priors.png`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"labels": out / f"{stem}.png"}
    label_png(pred.labels, pred.label_offset).save(paths["labels"])
    if overlay_png:
        paths["overlay"] = out / f"{stem}_overlay.png"
        Image.fromarray(overlay(pred.image, pred.labels, alpha, palette=pred.classes.palette)).save(paths["overlay"])
    if priors_png:
        if not pred.priors:
            raise ValueError("this model has no semantic-prior maps (a plain Swin baseline); drop priors_png")
        paths["priors"] = out / f"{stem}_priors.png"
        prior_grid(pred).save(paths["priors"])
    return paths
