"""Training feedback drawn with PIL (no matplotlib): the loss / mIoU curves, and an image | truth | prediction strip
built from `semask.viz` (palettes, overlays and prior-map grids live there and in `semask.data.palettes`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..viz import colorize, overlay


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xs: Sequence[float], ys: Sequence[float],
           title: str, color: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y == y]  # drop NaN
    if not pts:
        return
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    hi = hi if hi > lo else lo + 1e-6
    span = xmax - xmin or 1
    coords = [(x0 + 4 + (x - xmin) / span * (x1 - x0 - 8), y1 - 4 - (y - lo) / (hi - lo) * (y1 - y0 - 8))
              for x, y in pts]
    if len(coords) > 1:
        draw.line(coords, fill=color, width=2)
    for c in coords if len(coords) < 30 else coords[-1:]:
        draw.ellipse((c[0] - 2, c[1] - 2, c[0] + 2, c[1] + 2), fill=color)
    draw.text((x1 - 120, y0 + 4), f"{lo:.4g} .. {hi:.4g}", fill=(90, 90, 90))
    draw.text((x0 + 4, y1 + 2), f"iter {xmin:g}", fill=(90, 90, 90))
    draw.text((x1 - 70, y1 + 2), f"iter {xmax:g}", fill=(90, 90, 90))


def plot_curves(records: Sequence[dict], path: str | Path) -> Path:
    """Two panels from JSON-lines records: training loss ({"iter", "loss"}) and mIoU ({"iter", "mIoU"})."""
    img = Image.new("RGB", (640, 480), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "mIoU" in r]
    _panel(draw, (40, 30, 620, 220), [r["iter"] for r in train], [r["loss"] for r in train], "training loss",
           (200, 40, 40))
    _panel(draw, (40, 270, 620, 455), [r["iter"] for r in evals], [r["mIoU"] for r in evals], "validation mIoU",
           (30, 90, 200))
    path = Path(path)
    img.save(path)
    return path


def comparison_strip(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette: np.ndarray, *,
                     alpha: float = 0.5) -> np.ndarray:
    """[H, 4W, 3] uint8: image | ground truth | prediction | prediction over the image, in `palette`'s colours
    (ignored pixels black), drawn with `semask.viz`."""
    return np.concatenate([image, colorize(truth, palette), colorize(pred, palette),
                           overlay(image, pred, alpha, palette=palette)], axis=1)
