"""Paired image/label transforms in numpy (+ PIL for resizing), as mmseg's training pipeline.

Every random transform draws from the `np.random.Generator` it is given, so one sample's augmentation is a pure
function of its seed (the trainer derives it from the run seed, the epoch and the sample position: resuming or
sharding over processes gives the same pictures). Images are HxWx3 (uint8, then float32), labels HxW uint8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PAPER_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # SeMask's ADE20K / COCO-Stuff `ratio_range` list

Sample = dict  # {"image": ndarray, "label": ndarray, ...}


def _resize(array: np.ndarray, size_wh: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if array.shape[1] == size_wh[0] and array.shape[0] == size_wh[1]:
        return array
    return np.asarray(Image.fromarray(array).resize(size_wh, resample))


def rescale_size(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv `rescale_size` keep-ratio rule: the largest size with long edge <= max(scale), short <= min(scale)."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)  # (W, H)


class Resize:
    """Keep-ratio resize to `scale` (long, short) times a ratio: `ratios` a list (random choice, the paper's
    ADE20K/COCO setting), `ratio_range` a (low, high) pair (uniform, the Cityscapes setting), or neither (fixed)."""

    def __init__(self, scale: Sequence[int], *, ratios: Sequence[float] | None = None,
                 ratio_range: Sequence[float] | None = None) -> None:
        if ratios is not None and ratio_range is not None:
            raise ValueError("give either ratios (a list to choose from) or ratio_range (low, high), not both")
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratios = list(ratios) if ratios is not None else None
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ratio = 1.0
        if self.ratios:
            ratio = float(self.ratios[rng.integers(len(self.ratios))])
        elif self.ratio_range:
            ratio = float(rng.uniform(*self.ratio_range))
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = rescale_size(sample["image"].shape[:2], scale)
        sample["image"] = _resize(sample["image"], size, Image.Resampling.BILINEAR)
        if "label" in sample:
            sample["label"] = _resize(sample["label"], size, Image.Resampling.NEAREST)
        return sample


class RandomCrop:
    """Random crop of `size` (H, W); up to 10 tries to find one where no class covers more than `cat_max_ratio`
    of the labelled pixels (mmseg's rule; 1.0 disables it)."""

    def __init__(self, size: Sequence[int], *, cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _box(self, hw: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        top = int(rng.integers(max(hw[0] - self.size[0], 0) + 1))
        left = int(rng.integers(max(hw[1] - self.size[1], 0) + 1))
        return top, min(top + self.size[0], hw[0]), left, min(left + self.size[1], hw[1])

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        box = self._box(sample["image"].shape[:2], rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                crop = sample["label"][box[0]:box[1], box[2]:box[3]]
                _, counts = np.unique(crop[crop != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._box(sample["image"].shape[:2], rng)
        for key in ("image", "label"):
            if key in sample:
                sample[key] = sample[key][box[0]:box[1], box[2]:box[3]]
        return sample


class RandomFlip:
    """Horizontal flip with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.p:
            for key in ("image", "label"):
                if key in sample:
                    sample[key] = sample[key][:, ::-1]
        return sample


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] float RGB in [0, 255] -> HSV with hue in degrees [0, 360), s in [0, 1], v in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(c > 0, (h * 60.0) % 360.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0] / 60.0, hsv[..., 1], hsv[..., 2]
    k = np.stack([(5 + h) % 6, (3 + h) % 6, (1 + h) % 6], -1)
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion: each step with probability 0.5 — brightness ±32, contrast ×[0.5, 1.5]
    (before or after the colour steps), saturation ×[0.5, 1.5], hue ±18 (on the OpenCV 0–180 scale, ±36°)."""

    def __init__(self, brightness_delta: int = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample["image"].astype(np.float32)
        if rng.integers(2):
            img = img + rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = bool(rng.integers(2))
        if contrast_first and rng.integers(2):
            img = img * rng.uniform(*self.contrast_range)
        img = np.clip(img, 0, 255)
        do_sat, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
        if do_sat or do_hue:
            hsv = _rgb_to_hsv(img)
            if do_sat:
                hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*self.saturation_range), 0, 1)
            if do_hue:
                hsv[..., 0] = (hsv[..., 0] + 2 * rng.integers(-self.hue_delta, self.hue_delta)) % 360.0
            img = _hsv_to_rgb(hsv)
        if not contrast_first and rng.integers(2):
            img = img * rng.uniform(*self.contrast_range)
        sample["image"] = np.clip(img, 0, 255).astype(np.uint8)
        return sample


class Normalize:
    """(image - mean) / std as float32 [H, W, 3] (RGB, ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample["image"] = (sample["image"].astype(np.float32) - self.mean) / self.std
        return sample


class Pad:
    """Pad bottom/right to at least `size` (H, W): image with 0 (after normalisation), label with 255."""

    def __init__(self, size: Sequence[int], *, ignore_index: int = IGNORE_INDEX) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.ignore_index = ignore_index

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        h, w = sample["image"].shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph or pw:
            sample["image"] = np.pad(sample["image"], ((0, ph), (0, pw), (0, 0)))
            if "label" in sample:
                sample["label"] = np.pad(sample["label"], ((0, ph), (0, pw)), constant_values=self.ignore_index)
        return sample


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample, np.random.Generator], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def train_transforms(*, crop_size: Sequence[int], scale: Sequence[int], ratios: Sequence[float] | None = PAPER_RATIOS,
                     ratio_range: Sequence[float] | None = None, cat_max_ratio: float = 1.0, flip: float = 0.5,
                     photometric: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> Compose:
    """The SeMask-FPN training pipeline: Resize (random ratio) -> RandomCrop -> Flip -> PhotoMetric -> Normalize ->
    Pad to the crop size."""
    steps: list = [Resize(scale, ratios=None if ratio_range else ratios, ratio_range=ratio_range),
                   RandomCrop(crop_size, cat_max_ratio=cat_max_ratio), RandomFlip(flip)]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [Normalize(mean, std), Pad(crop_size)]
    return Compose(steps)
