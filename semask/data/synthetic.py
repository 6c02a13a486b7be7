"""A small deterministic synthetic segmentation dataset (textured shapes on textured backgrounds) for the demo
and tests, written in the folder-dataset layout (`images/`, `masks/`, `classes.txt`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SYNTHETIC_CLASSES = ("background", "striped disc", "checkered square", "dotted triangle", "wavy blob")


def _texture(kind: int, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A [H, W] pattern in [0, 1] per class: noise, stripes, checkers, dots, waves (random phase and period)."""
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
    period = rng.uniform(5, 8)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:
        return rng.random(hw).astype(np.float32) * 0.6
    if kind == 1:
        return 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy) / period + phase)
    if kind == 2:
        return (((xx // (period / 2)) + (yy // (period / 2))) % 2).astype(np.float32)
    if kind == 3:
        return ((np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period)) > 0.5).astype(np.float32)
    return 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + 2 * np.sin(2 * np.pi * xx / (2 * period)) + phase)


def _shape_mask(kind: int, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    r = rng.uniform(0.14, 0.28) * min(h, w)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    if kind == 2:
        return (np.abs(yy - cy) < r * 0.9) & (np.abs(xx - cx) < r * 0.9)
    if kind == 3:
        return (yy - cy > -r) & (yy - cy < r) & (np.abs(xx - cx) < (yy - cy + r) * 0.6)
    angle = np.arctan2(yy - cy, xx - cx)
    return np.hypot(yy - cy, xx - cx) < r * (1 + 0.25 * np.sin(3 * angle + rng.uniform(0, 6)))


def make_sample(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 [S, S, 3], label uint8 [S, S]) pair with 1-3 shapes; class = shape + texture + tint."""
    hw = (size, size)
    label = np.zeros(hw, np.uint8)
    base = rng.uniform(60, 200, 3)
    image = base * (0.7 + 0.6 * _texture(0, hw, rng))[..., None]
    for kind in rng.choice(np.arange(1, len(SYNTHETIC_CLASSES)), size=int(rng.integers(1, 4)), replace=False):
        mask = _shape_mask(int(kind), hw, rng)
        tint = np.array([[220, 60, 60], [60, 200, 60], [60, 90, 230], [220, 200, 50]][kind - 1], np.float32)
        tint = np.clip(tint + rng.uniform(-40, 40, 3), 0, 255)
        pattern = _texture(int(kind), hw, rng)[..., None]
        image[mask] = (tint * (0.45 + 0.55 * pattern))[mask]
        label[mask] = kind
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_synthetic_dataset(root: str | Path, *, train: int = 96, val: int = 32, size: int = 64,
                            seed: int = 0) -> Path:
    """Write `root/{images,masks}/{train,val}/NNNN.png` and `root/classes.txt`; returns root. Deterministic."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = make_sample(rng, size)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(label).save(root / "masks" / split / f"{i:04d}.png")
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n", encoding="utf-8")
    return root
