"""Paired image/label transforms in numpy (+ torch or PIL for resizing), as mmseg's training pipeline.

Every random transform draws from the `np.random.Generator` it is given, so one sample's augmentation is a pure
function of its seed (the trainer derives it from the run seed, the epoch and the sample position: resuming or
sharding over processes gives the same pictures). Images are HxWx3 (uint8, then float32), labels HxW uint8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IGNORE_INDEX = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PAPER_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # SeMask's ADE20K / COCO-Stuff `ratio_range` list
RESIZE_RULES = ("bilinear", "pil")  # the values of `semask.infer.input_resize`

Sample = dict  # {"image": ndarray, "label": ndarray, ...}


def _resize(array: np.ndarray, size_wh: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if array.shape[1] == size_wh[0] and array.shape[0] == size_wh[1]:
        return array
    return np.asarray(Image.fromarray(array).resize(size_wh, resample))


def check_resize_rule(resize: str) -> str:
    if not isinstance(resize, str) or resize not in RESIZE_RULES:
        raise ValueError(f"resize must be one of {', '.join(map(repr, RESIZE_RULES))} (got {resize!r})")
    return resize


def bilinear_resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """mmseg's image resize (`cv2.resize` INTER_LINEAR): bilinear with half-pixel centres and no antialiasing, on
    the uint8 [H, W, C] image as float32, rounded and clipped back to uint8 — the arithmetic of `semask.infer`'s
    "bilinear" rule (`F.interpolate(..., align_corners=False).round().clamp(0, 255)`), so training and inference
    see the same pixels."""
    if image.shape[1] == size_wh[0] and image.shape[0] == size_wh[1]:
        return image
    x = torch.tensor(image).permute(2, 0, 1)[None].float()  # a copy: images from Pillow are read-only
    x = F.interpolate(x, size=(size_wh[1], size_wh[0]), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def resize_image(image: np.ndarray, size_wh: tuple[int, int], resize: str = "bilinear") -> np.ndarray:
    """Resize a uint8 [H, W, 3] image to `size_wh` by a `semask.infer.input_resize` rule: "bilinear" (mmseg, see
    `bilinear_resize`) or "pil" (detectron2: Pillow's BILINEAR filter, antialiased when it shrinks)."""
    if check_resize_rule(resize) == "pil":
        return _resize(image, size_wh, Image.Resampling.BILINEAR)
    return bilinear_resize(image, size_wh)


def rescale_size(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv `rescale_size` keep-ratio rule: the largest size with long edge <= max(scale), short <= min(scale)."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)  # (W, H)


class Resize:
    """Keep-ratio resize to `scale` (long, short) times a ratio: `ratios` a list (random choice, the paper's
    ADE20K/COCO setting), `ratio_range` a (low, high) pair (uniform, the Cityscapes setting), or neither (fixed).

    `resize` is the model's image-resize rule, as `semask.infer.input_resize(model)` gives it: "bilinear" (mmseg's
    pipeline, the FPN/SegFormer models: no antialiasing) or "pil" (detectron2's, the mask-classification models:
    Pillow's BILINEAR). Labels are always resized NEAREST."""

    def __init__(self, scale: Sequence[int], *, ratios: Sequence[float] | None = None,
                 ratio_range: Sequence[float] | None = None, resize: str = "bilinear") -> None:
        if ratios is not None and ratio_range is not None:
            raise ValueError("give either ratios (a list to choose from) or ratio_range (low, high), not both")
        self.resize = check_resize_rule(resize)
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
        sample["image"] = resize_image(sample["image"], size, self.resize)
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


def _affine_u8(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """img * alpha + beta in float32, clipped to 0..255 and truncated to uint8: mmseg's photometric steps each
    end in this cast, so a pixel pushed past 255 (or below 0) by one step stays at the bound for the next."""
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


# OpenCV's 8-bit RGB -> HSV works in fixed point (12 fractional bits) with these reciprocal tables (entry 0 is 0).
_HSV_SHIFT = 12
_SAT_DIV = np.r_[0, np.rint((255 << _HSV_SHIFT) / np.arange(1, 256))].astype(np.int64)  # by the value
_HUE_DIV = np.r_[0, np.rint((180 << _HSV_SHIFT) / (6.0 * np.arange(1, 256)))].astype(np.int64)  # by max - min


def _rgb_to_hsv8(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB [..., 3] -> OpenCV's 8-bit HSV (what mmcv's `bgr2hsv` gives mmseg): hue 0..179 in 2° steps,
    saturation and value 0..255, as int64 arrays; the same integer arithmetic as `cv2.cvtColor`."""
    rgb = img.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    diff = v - rgb.min(-1)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SAT_DIV[v] + half) >> _HSV_SHIFT
    sextant = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))  # in units of diff
    h = (sextant * _HUE_DIV[diff] + half) >> _HSV_SHIFT
    return np.where(h < 0, h + 180, h), s, v


def _hsv8_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit HSV (see `_rgb_to_hsv8`) -> uint8 RGB as `cv2.cvtColor` converts an image row (its vector
    path: float32 with fused multiply-adds, truncated to uint8)."""
    f32 = np.float32
    one = f32(1)
    hue = np.asarray(h).astype(f32) * f32(6 / 180)
    sat = np.asarray(s).astype(f32) * f32(1 / 255)
    val = np.asarray(v).astype(f32) * f32(1 / 255)
    sector = np.floor(hue)
    frac = hue - sector

    def fused(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # 1 - a * b rounded once (a float32 fma)
        return (1.0 - a.astype(np.float64) * b).astype(f32)

    levels = np.stack([val, val * (one - sat), val * fused(sat, frac), val * fused(sat, one - frac)], -1)
    # (r, g, b) as indices into levels (v, p, q, t) for each 60° sector
    order = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
    rgb = np.take_along_axis(levels, order[sector.astype(np.int64) % 6], -1) * f32(255)
    return np.clip(rgb, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion: each step with probability 0.5 — brightness ±32, contrast ×[0.5, 1.5]
    (before or after the colour steps), saturation ×[0.5, 1.5], hue ±18 (on the OpenCV 0–180 scale, ±36°).

    As in mmseg, every step gives a uint8 image: brightness and contrast add / multiply in float32, clip to 0..255
    and truncate; saturation and hue each convert to OpenCV's 8-bit HSV and back (the saturation factor clips and
    truncates on the 0..255 saturation; the hue shift is in 2° steps, modulo 180). The draws are made in mmseg's
    order. The image stays RGB where mmseg's is BGR (no step depends on the channel order)."""

    def __init__(self, brightness_delta: int = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _affine_u8(img, alpha=rng.uniform(*self.contrast_range)) if rng.integers(2) else img

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample["image"]
        if img.dtype != np.uint8:
            img = _affine_u8(img)
        if rng.integers(2):
            img = _affine_u8(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(rng.integers(2))
        if contrast_first:
            img = self._contrast(img, rng)
        if rng.integers(2):  # saturation
            h, s, v = _rgb_to_hsv8(img)
            img = _hsv8_to_rgb(h, _affine_u8(s, alpha=rng.uniform(*self.saturation_range)), v)
        if rng.integers(2):  # hue
            h, s, v = _rgb_to_hsv8(img)
            img = _hsv8_to_rgb((h + rng.integers(-self.hue_delta, self.hue_delta)) % 180, s, v)
        if not contrast_first:
            img = self._contrast(img, rng)
        sample["image"] = img
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
                     std: Sequence[float] = IMAGENET_STD, resize: str = "bilinear") -> Compose:
    """The SeMask-FPN training pipeline: Resize (random ratio) -> RandomCrop -> Flip -> PhotoMetric -> Normalize ->
    Pad to the crop size. `resize` is the model's image-resize rule ("bilinear" | "pil", see `Resize`); pass
    `semask.infer.input_resize(model)` so that training resizes as inference does."""
    steps: list = [Resize(scale, ratios=None if ratio_range else ratios, ratio_range=ratio_range, resize=resize),
                   RandomCrop(crop_size, cat_max_ratio=cat_max_ratio), RandomFlip(flip)]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [Normalize(mean, std), Pad(crop_size)]
    return Compose(steps)
