"""Small PIL drawings for training feedback (no matplotlib): loss / mIoU curves, label overlays, prior-map grids.

TODO(lead): dedupe the overlay and prior-grid helpers against `semask/viz.py` once both are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


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


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class: [K, 3] uint8 (class 0 dark grey)."""
    rng = np.random.default_rng(3)
    colors = rng.integers(40, 256, (max(num_classes, 1), 3)).astype(np.uint8)
    colors[0] = (60, 60, 60)
    return colors


def overlay_strip(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """[H, W*k, 3]: image | ground truth | prediction | 50% blend of prediction on the image."""
    def paint(lab: np.ndarray) -> np.ndarray:
        out = colors[np.clip(lab, 0, len(colors) - 1)]
        out[lab == 255] = 0
        return out

    tiles = [image] + ([paint(label)] if label is not None else []) + [paint(pred)]
    tiles.append((0.5 * image + 0.5 * paint(pred)).astype(np.uint8))
    return np.concatenate(tiles, axis=1)


def prior_grid(prior_probs: np.ndarray, names: Sequence[str] | None = None, *, scale: int = 2) -> np.ndarray:
    """[K, H, W] per-class prior probabilities -> a grey-scale grid of K heat maps (one per class), titled."""
    k, h, w = prior_probs.shape
    cols = min(k, 5)
    rows = -(-k // cols)
    hh, ww = h * scale, w * scale
    grid = Image.new("L", (cols * ww, rows * (hh + 12)), 255)
    draw = ImageDraw.Draw(grid)
    for i in range(k):
        tile = Image.fromarray((np.clip(prior_probs[i], 0, 1) * 255).astype(np.uint8)).resize((ww, hh))
        x, y = (i % cols) * ww, (i // cols) * (hh + 12)
        grid.paste(tile, (x, y + 12))
        draw.text((x + 2, y), (names[i] if names else str(i))[: ww // 6], fill=0)
    return np.asarray(grid)
