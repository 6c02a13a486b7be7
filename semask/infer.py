"""`Predictor`: image in -> label map at the original size out; whole / sliding-window / multi-scale + flip.

The protocol is mmsegmentation's (`inference_segmentor`, `slide_inference`, `--aug-test`) as the original SeMask-FPN
code runs it: resize keeping the aspect ratio to the test scale (`Resize(img_scale, keep_ratio=True)`), normalise,
run, resize the logits bilinearly (align_corners=False) to the resized input and then to the ORIGINAL size, softmax,
average over scales and flips, argmax. Kept apart from the `nn.Module` (as segment-anything's predictor).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .data.datasets import pil_to_rgb
from .data.palettes import ClassInfo, get_class_info
from .data.transforms import resize_image
from .devices import resolve_device

_log = logging.getLogger(__name__)
ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg `tools/test.py --aug-test`
DEFAULT_MAX_PIXELS = 4096 * 4096  # multi-scale / flip / probs=True hold float32 [K, H, W] at the original size
# The paper's protocol for models without a tag: ADE20K-style 512-crop models, short side = crop 512.
DEFAULT_PREPROCESSING = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), test_scale=(2048, 512),
                             crop_size=(512, 512), reduce_zero_label=False)
FULL_MAP_BYTES = 512 << 20  # above this, the single pass never allocates the [K, H, W] map at the original size
# Predictor(dtype=...): None (or float32: no autocast) runs the model in its own dtype
AUTOCAST_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)


def aug_test(enabled: bool) -> dict[str, Any]:
    """`scales` / `flip` keywords (Predictor, EvalProtocol) for mmseg's `--aug-test` (MS_RATIOS + flip) or one pass."""
    return {"scales": MS_RATIOS if enabled else (1.0,), "flip": enabled}


# ----------------------------------------------------------------------------------------------- image loading
def check_max_pixels(max_pixels: int | None) -> int | None:
    """A pixel limit as given by users -> a positive int, or None for no limit (None or 0, as the CLI's 0)."""
    if max_pixels is None or max_pixels == 0:
        return None
    whole = isinstance(max_pixels, (int, np.integer)) or (isinstance(max_pixels, float) and max_pixels.is_integer())
    if isinstance(max_pixels, bool) or not whole or max_pixels < 0:
        raise ValueError(f"max_pixels must be a whole, positive pixel count (e.g. 4096 * 4096), or 0 / None for no "
                         f"limit; got {max_pixels!r}")
    return int(max_pixels)


def _check_pixels(h: int, w: int, max_pixels: int | None, what: str) -> None:
    max_pixels = check_max_pixels(max_pixels)
    if h < 1 or w < 1:
        raise ValueError(f"{what} is empty ({w}x{h} pixels)")
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(f"{what}: {w}x{h} = {h * w} pixels is above the limit max_pixels={max_pixels}; downscale "
                         f"it or raise the limit (Predictor(max_pixels=...), CLI --max-pixels)")


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 RGB, EXIF orientation applied; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ValueError(f"image file {path} is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            w, h = img.size  # from the header; nothing decoded yet
            _check_pixels(h, w, max_pixels, str(path))
            img.load()
            return pil_to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as err:
        raise ValueError(f"{path} is not an image Pillow can read (wrong extension or corrupt data)") from err
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: {err}") from err
    except OSError as err:  # truncated or broken data
        raise ValueError(f"cannot decode {path}: {err}") from err


def _array_to_rgb(arr: np.ndarray, max_pixels: int | None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an array [H, W], [H, W, 3] or [H, W, 4], got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint16:
        arr = np.round(arr / 257.0).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ValueError(f"arrays must be uint8 (or uint16), got {arr.dtype}; pass float images as a tensor in [0, 1]")
    _check_pixels(arr.shape[0], arr.shape[1], max_pixels, "array")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _tensor_to_rgb(t: torch.Tensor, max_pixels: int | None) -> list[np.ndarray]:
    """[3, H, W] or [B, 3, H, W] (1 channel: grey); float in [0, 1] or uint8 -> list of [H, W, 3] uint8."""
    if t.ndim not in (3, 4) or t.shape[-3] not in (1, 3):
        raise ValueError(f"expected a tensor [3, H, W] or [B, 3, H, W] (RGB, float in [0, 1] or uint8), "
                         f"got shape {tuple(t.shape)}")
    t = t.detach().cpu()
    _check_pixels(t.shape[-2], t.shape[-1], None, "tensor")  # before min/max, which an empty tensor has not
    if t.is_floating_point():
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float image tensors must be in [0, 1] (values {lo:.3g}..{hi:.3g}); pass uint8 for "
                             "0..255, and do not normalise: the Predictor does")
        t = (t.float() * 255).round()
    elif t.dtype != torch.uint8:
        raise ValueError(f"image tensors must be float in [0, 1] or uint8, got {t.dtype}")
    t = t.to(torch.uint8).expand(*t.shape[:-3], 3, *t.shape[-2:])
    batch = t if t.ndim == 4 else t[None]
    _check_pixels(batch.shape[-2], batch.shape[-1], max_pixels, "tensor")
    return [img.permute(1, 2, 0).contiguous().numpy() for img in batch]


def to_rgb_list(inputs: ImageInput | Sequence[ImageInput], *,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[list[np.ndarray], bool]:
    """Inputs -> ([H, W, 3] uint8 RGB images, whether a single image was given)."""
    single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, torch.Tensor) and inputs.ndim == 4)
    out: list[np.ndarray] = []
    for item in [inputs] if single or isinstance(inputs, torch.Tensor) else inputs:
        if isinstance(item, (str, Path)):
            out.append(load_image(item, max_pixels=max_pixels))
        elif isinstance(item, Image.Image):
            _check_pixels(item.height, item.width, max_pixels, "PIL image")
            out.append(pil_to_rgb(ImageOps.exif_transpose(item)))
        elif isinstance(item, np.ndarray):
            out.append(_array_to_rgb(item, max_pixels))
        elif isinstance(item, torch.Tensor):
            out.extend(_tensor_to_rgb(item, max_pixels))
        else:
            raise TypeError(f"cannot read an image from {type(item).__name__}; pass a path, PIL image, "
                            "[H, W, 3] uint8 array or [3, H, W] tensor")
    if not out:
        raise ValueError("no images given")
    return out, single


# ----------------------------------------------------------------------------------------------- geometry
def rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv `imrescale` size: the largest size with the aspect ratio kept that fits long <= max(scale) and
    short <= min(scale) (it may also upscale), rounded half up."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def slide_windows(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """mmseg `slide_inference` windows (y0, y1, x0, x1): a grid of `stride` steps; the last row/column is shifted
    back to end at the border so every pixel is covered; windows are clipped to the image."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, h), min(c * sw + cw, w)
            out.append((max(y1 - ch, 0), y1, max(x1 - cw, 0), x1))
    return out


def _check_test_scale(scale: Sequence[int] | str | None) -> tuple[int, int] | None:
    """(long, short) keep-ratio bound, or None for 'original' (no resize)."""
    if scale == "original" or scale is None:
        return None
    if isinstance(scale, str) or not isinstance(scale, Sequence) or len(scale) != 2 or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in scale):
        raise ValueError(f"test_scale must be (long, short) positive ints (e.g. (2048, 512)), 'original' or None, "
                         f"got {scale!r}")
    return int(scale[0]), int(scale[1])


def _check_slide(crop: int | Sequence[int], stride: int | Sequence[int]) -> None:
    """Sliding windows need 1 <= stride <= crop per dim: a larger stride leaves pixels no window covers."""
    crop_hw = (crop, crop) if isinstance(crop, int) else tuple(crop)
    stride_hw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if min(crop_hw) < 1 or min(stride_hw) < 1 or any(s > c for s, c in zip(stride_hw, crop_hw, strict=True)):
        raise ValueError(f"sliding windows need 1 <= stride <= crop in each dimension, got crop {tuple(crop_hw)}, "
                         f"stride {tuple(stride_hw)}")


def _check_channels(name: str, values: Sequence[float] | None) -> tuple[float, ...] | None:
    """mean= / std= overrides: one value per RGB channel (std > 0), in 0..255 units as the weights' own."""
    if values is None:
        return None
    vals = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    if len(vals) != 3 or (name == "std" and min(vals) <= 0):
        raise ValueError(f"{name} needs 3 values (R, G, B in 0..255 units{', each > 0' if name == 'std' else ''}), "
                         f"e.g. {DEFAULT_PREPROCESSING[name]}; got {values!r}")
    return vals


def _stage_strides(cfg: Any) -> list[int]:
    """Each backbone stage's stride (4, 8, 16, 32 for every registered model)."""
    if cfg.backbone == "mit":
        return np.cumprod(cfg.mit_strides).tolist()
    return [cfg.patch_size * 2 ** i for i in range(len(cfg.depths))]


def input_resize(model: nn.Module) -> str:
    """How the original pipeline resizes a model's input image to the test scale: "pil" for the mask-classification
    models (detectron2's `ResizeShortestEdge`: Pillow's bilinear filter on the uint8 image, antialiased when it
    shrinks), "bilinear" for the rest (mmseg's `cv2.resize`: bilinear, half-pixel centres, no antialiasing)."""
    return "pil" if model.config.mask_classification else "bilinear"


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _row_bands(x: torch.Tensor, band_bytes: int) -> list[slice]:
    """Slices of rows of a [K, H, W] map, each about `band_bytes` (at least one row)."""
    k, h, w = x.shape
    rows = max(1, band_bytes // max(1, k * w * x.element_size()))
    return [slice(r, r + rows) for r in range(0, h, rows)]


def _normalise(x: torch.Tensor, scores: bool) -> torch.Tensor:
    """[K, ...] -> per-pixel probabilities over K: softmax of class logits, or non-negative semantic scores divided
    by their sum (a pixel whose scores all underflowed to 0 gets 0)."""
    if not scores:
        return x.softmax(0)
    return x / x.sum(0, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _max_softmax(logits: torch.Tensor, size: Sequence[int], *, band_bytes: int = 4 << 20,
                 full_map_bytes: int | None = None, scores: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, h, w] logits -> (confidence [H, W], labels [H, W]) of `resize(logits, size).softmax(0).max(0)`; with
    `scores` (mask-classification models' semantic scores, >= 0) of the scores normalised per pixel (`_normalise`).

    Small outputs: resize, then softmax and max in bands of rows (both are per pixel, so the values are the same)
    without a [K, H, W] probability map. Outputs above `full_map_bytes` (a 150-class 12-megapixel photo would
    take 7 GiB): no [K, H, W] map at all; classes are resized a chunk at a time (bilinear resize is per channel, so
    each chunk's values are those of the full resize) and folded into a running max / arg-max and a rescaled sum of
    exponentials (the online softmax of flash attention): confidence = 1 / sum(exp(logit - max)) (scores: a plain
    running sum, confidence = max / sum). `full_map_bytes` defaults to `FULL_MAP_BYTES`."""
    k, (h, w) = logits.shape[0], tuple(size)
    full_map_bytes = FULL_MAP_BYTES if full_map_bytes is None else full_map_bytes
    if k * h * w * logits.element_size() <= full_map_bytes:
        full = _resize(logits[None], (h, w))[0]
        conf = full.new_empty(h, w)
        labels = torch.empty(h, w, dtype=torch.long, device=full.device)
        for band in _row_bands(full, band_bytes):
            torch.max(_normalise(full[:, band], scores), 0, out=(conf[band], labels[band]))
        return conf, labels
    per = max(1, full_map_bytes // (h * w * logits.element_size()))
    resized = tuple(logits.shape[1:]) != (h, w)  # else the chunks are views of `logits`: no in-place ops on them
    top = total = labels = None
    for c0 in range(0, k, per):
        chunk = _resize(logits[None, c0:c0 + per], (h, w))[0]  # [per, H, W]
        chunk_top, chunk_labels = chunk.max(0)
        new_top = chunk_top if top is None else torch.maximum(top, chunk_top)
        if scores:
            exp_sum = chunk.sum(0)
        else:
            exp_sum = (chunk.sub_(new_top) if resized else chunk - new_top).exp_().sum(0)
        if top is None:
            top, labels, total = chunk_top, chunk_labels, exp_sum
            continue
        # strictly greater: on a tie the lower class index wins, as torch.max does within a chunk
        labels = torch.where(chunk_top > top, chunk_labels + c0, labels)
        total = total.add_(exp_sum) if scores else total.mul_(top.sub_(new_top).exp_()).add_(exp_sum)
        top = new_top
    assert total is not None and labels is not None and top is not None
    if scores:
        return top.div_(total.clamp_min_(torch.finfo(total.dtype).tiny)), labels
    return total.reciprocal_(), labels


def _add_softmax(total: torch.Tensor, logits: torch.Tensor, *, flip: bool = False, band_bytes: int = 4 << 20,
                 scores: bool = False) -> None:
    """`total += logits.softmax(0)` ([K, H, W]; mirrored left-right if `flip`), in bands of rows so that neither
    the probabilities nor their mirror image is a second [K, H, W] map (the sums are the same). With `scores`
    (semantic scores) the scores themselves are added, as detectron2's test-time augmentation averages them."""
    for band in _row_bands(logits, band_bytes):
        prob = logits[:, band] if scores else logits[:, band].softmax(0)
        total[:, band] += prob.flip(-1) if flip else prob


# ----------------------------------------------------------------------------------------------- result
@dataclass
class Prediction:
    """One image's result. `labels` are model class indices (add `label_offset` for the dataset's ids)."""

    labels: np.ndarray  # [H, W] int64 at the original size
    # [H, W] float32: the averaged probability of the chosen class (mask-classification models: the averaged semantic
    # score of the chosen class over the sum of the class scores at that pixel, see `Predictor`)
    confidence: np.ndarray
    image: np.ndarray  # [H, W, 3] uint8 RGB input (orientation applied)
    priors: list[torch.Tensor]  # per stage [K', h_i, w_i] semantic-prior logits (scale 1.0, unflipped); [] if none
    classes: ClassInfo
    probs: torch.Tensor | None = None  # [K, H, W] averaged softmax (or normalised scores), when asked for

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes.names

    @property
    def label_offset(self) -> int:
        return self.classes.label_offset


def model_preprocessing(model: nn.Module) -> tuple[dict[str, Any], str | None]:
    """(preprocessing, guessed dataset) of a model's weights: what they record (a tag's manifest entry, a semask
    training run's record; its dataset under the "dataset" key, guess None); for models without a record, that of
    `arch.dataset` guessed from the class count (150 ADE20K, 19 Cityscapes, 171 COCO-Stuff-10k), else the paper's
    defaults (guess None). A record with preprocessing but neither dataset nor classes (a model re-headed by
    `reset_classifier` keeps only its weights' preprocessing) gives that preprocessing and the count's guess, since
    the class table is still chosen by count. What the `Predictor` and exported ONNX files (`semask.export`) use;
    both say a guess with `warn_guessed_dataset`."""
    entry = getattr(model, "pretrained_cfg", None) or {}
    n = model.config.num_classes
    info = get_class_info(num_classes=n)
    guess = info.name if info.name != "custom" else None
    if entry.get("preprocessing"):
        saved = entry.get("classes") or {}
        named = entry.get("dataset") or len(saved.get("names", ())) == n
        return dict(DEFAULT_PREPROCESSING, **entry["preprocessing"], dataset=entry.get("dataset")), (
            None if named else guess)
    from .hub import load_manifest

    entry = load_manifest().get(f"{model.config.arch}.{guess}") or load_manifest().get(
        f"semask_swin_tiny_fpn.{guess}")
    if entry:
        return dict(entry["preprocessing"]), guess
    return dict(DEFAULT_PREPROCESSING), None


def warn_guessed_dataset(model: nn.Module, guessed: str, fix: str) -> None:
    """Say that `guessed` (from `model_preprocessing`) was assumed for a model whose weights record no dataset."""
    recorded = bool((getattr(model, "pretrained_cfg", None) or {}).get("preprocessing"))
    what = "class names, palette, label ids as written to label PNGs" + ("" if recorded else ", preprocessing")
    _log.warning("%d classes and no recorded dataset: assuming %s (%s); %s", model.config.num_classes, guessed,
                 what, fix)


def model_classes(model: nn.Module, dataset: str | None) -> ClassInfo:
    """Class names, palette and label offset for a model's outputs: those recorded with its weights (a semask
    training run), else `dataset`'s, else generated for its class count (also for a tag's model re-headed to
    another count)."""
    n = model.config.num_classes
    saved = (getattr(model, "pretrained_cfg", None) or {}).get("classes")
    if saved and len(saved["names"]) == n:
        return ClassInfo(saved.get("name", "custom"), tuple(saved["names"]),
                         np.asarray(saved["palette"], dtype=np.uint8).reshape(n, 3), int(saved.get("label_offset", 0)))
    try:
        return get_class_info(dataset, n)
    except ValueError:
        return get_class_info(None, n)


def load_model(model_or_name: nn.Module | str, weights: bool | str | Path | None = None) -> nn.Module:
    """The model a `Predictor` (or `semask export`) runs: a model as it is; `arch.tag` with its published weights
    (or the clear "not published yet" error); `local-dir:` / `hf-hub:` with theirs; `weights=PATH` loads local
    weights into the named architecture; an untagged name without weights gets random weights, with a warning."""
    if isinstance(model_or_name, nn.Module):
        if weights not in (None, False):
            raise ValueError("weights= is for model names; load weights into the model instance yourself")
        return model_or_name
    from .hub import HF_PREFIX, LOCAL_DIR
    from .registry import create_model, split_name

    if model_or_name.startswith((LOCAL_DIR, HF_PREFIX)):  # the folder's / repo's architecture and its weights
        if weights not in (None, True):
            raise ValueError(f"{model_or_name!r} has its own weights; drop weights=, or name an architecture to "
                             "load other weights into")
        return create_model(model_or_name)
    _, tag = split_name(model_or_name)
    pretrained = (tag is not None) if weights is None else weights
    if pretrained is False:
        _log.warning("%s: random weights (pass weights=PATH / --weights PATH, or a name with a tag)", model_or_name)
    return create_model(model_or_name, pretrained=pretrained)


# ----------------------------------------------------------------------------------------------- predictor
class Predictor:
    """Segment images with a semask model.

    Args:
        model_or_name: a model, or `arch` / `arch.tag` (built with `create_model`; a tag loads its weights), or
            `local-dir:PATH` (a folder written by `semask convert`: its architecture and weights), or
            `hf-hub:owner/repo[@rev]` (a hub repo of such a folder).
        weights: with a name: a semask folder / safetensors file or an ORIGINAL checkpoint; False for random weights.
        mode: "whole" (one forward of the resized image) or "slide" (windows of `crop` every `stride`, overlaps
            averaged). crop defaults to the weights' training crop, stride to 2/3 of it (mmseg's 512/341).
        scales: ratios of the test scale; `MS_RATIOS` with `flip=True` is mmseg's ms+flip (`--aug-test`).
        dtype: autocast dtype (torch.float16 / bfloat16), None to run the model in its own dtype (float32, or
            what it was cast to: inputs are cast to match).
        test_scale: (long, short) bound of mmseg's keep-ratio resize; default: the weights' preprocessing;
            "original": no resize (each image at its own size, e.g. for data already at the test scale).
        mean, std, classes: override the weights' normalisation and class table (e.g. a training config's).
        dataset: class names / palette ("ade20k", "cityscapes", "coco_stuff10k"); default from the tag or count.
        max_pixels: inputs above this many pixels raise a ValueError (None or 0: no limit).

    Mask-classification models (MaskFormer, Mask2Former, FaPN, MSFaPN) output semantic scores (softmax(class) x
    sigmoid(mask) summed over queries, detectron2's `semantic_inference`), not logits: views are averaged as scores
    (as detectron2's test-time augmentation), and `confidence` / `probs` are the scores divided by their sum over the
    classes at each pixel (no softmax on top, which would flatten them to ~1/K).
    Inputs with a side below the backbone's smallest (SegFormer's MiT: 29 px) are zero-padded for the forward.
    """

    def __init__(self, model_or_name: nn.Module | str, *, weights: bool | str | Path | None = None,
                 device: str | torch.device | None = None, mode: str = "whole", crop: int | Sequence[int] | None = None,
                 stride: int | Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                 dtype: torch.dtype | None = None, test_scale: Sequence[int] | str | None = None,
                 dataset: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 classes: ClassInfo | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive ratios, got {scales!r}")
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"dtype is the autocast dtype: torch.float16, torch.bfloat16 or None (float32), got "
                             f"{dtype}; for float64, cast the model yourself (model.double()) and pass dtype=None")
        dtype = None if dtype == torch.float32 else dtype  # float32: no autocast
        max_pixels = check_max_pixels(max_pixels)
        mean, std = _check_channels("mean", mean), _check_channels("std", std)
        # a device torch cannot use here fails before the weights are read
        keep = device is None and isinstance(model_or_name, nn.Module)  # a model instance stays where it is
        resolved = None if keep else resolve_device(device)
        model = load_model(model_or_name, weights)
        self.device = next(model.parameters()).device if resolved is None else resolved
        self.model = model.to(self.device).eval()
        cfg = self.model.config
        # MaskFormer / Mask2Former / FaPN: "logits" are semantic scores (>= 0), averaged and normalised as such
        self.semantic_scores = cfg.mask_classification
        self.resize = input_resize(self.model)  # the original pipeline's image resize (detectron2: Pillow's)
        pre, guessed = model_preprocessing(self.model)
        self.dataset = dataset or pre.get("dataset") or guessed
        if guessed and not (dataset or classes):  # an untagged model without recorded classes
            warn_guessed_dataset(self.model, guessed, "pass dataset= / classes= / test_scale= if that is wrong")
        if classes is not None and len(classes.names) != cfg.num_classes:
            raise ValueError(f"classes= has {len(classes.names)} names ({classes.name}) but the model predicts "
                             f"{cfg.num_classes} classes: pass the class table the model was trained with")
        self.classes = classes or (get_class_info(dataset, cfg.num_classes) if dataset else
                                   model_classes(self.model, self.dataset))
        self.mean = torch.tensor(mean if mean is not None else pre["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std if std is not None else pre["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.test_scale = _check_test_scale(test_scale if test_scale is not None else pre["test_scale"])
        crop = crop if crop is not None else pre["crop_size"]
        self.crop = (crop, crop) if isinstance(crop, int) else tuple(int(c) for c in crop)
        stride = stride if stride is not None else tuple(c * 2 // 3 for c in self.crop)
        self.stride = (stride, stride) if isinstance(stride, int) else tuple(int(s) for s in stride)
        _check_slide(self.crop, self.stride)
        self.mode, self.scales, self.flip, self.dtype, self.max_pixels = mode, tuple(scales), flip, dtype, max_pixels
        # SegFormer's MiT cannot take sides below its key/value reduction (29 px): smaller inputs are zero-padded
        self.min_side = int(getattr(self.model.backbone, "min_size", 1))
        self.strides = _stage_strides(cfg)

    def __call__(self, inputs: ImageInput | Sequence[ImageInput], *, probs: bool = False
                 ) -> Prediction | list[Prediction]:
        return self.predict(inputs, probs=probs)

    @torch.inference_mode()
    def predict(self, inputs: ImageInput | Sequence[ImageInput], *, probs: bool = False
                ) -> Prediction | list[Prediction]:
        """One input -> a `Prediction`; a list (or a [B, 3, H, W] tensor) -> a list; sizes may differ."""
        images, single = to_rgb_list(inputs, max_pixels=self.max_pixels)
        results = [self._predict_one(img, probs) for img in images]
        return results[0] if single else results

    def _predict_one(self, image: np.ndarray, want_probs: bool) -> Prediction:
        h, w = image.shape[:2]
        x = torch.tensor(image, device=self.device).permute(2, 0, 1)[None].float()  # [1, 3, H, W] in 0..255
        total: torch.Tensor | None = None
        priors: list[torch.Tensor] = []
        n = 0
        prior_ratio = 1.0 if 1.0 in self.scales else self.scales[0]
        single = len(self.scales) == 1 and not self.flip and not want_probs  # labels straight from one pass
        scores = self.semantic_scores
        for ratio in self.scales:
            bound = self.test_scale or (max(h, w), min(h, w))  # "original": a bound the image already fits
            scale = [int(s * ratio) for s in bound]
            size = rescale_size(h, w, scale)
            if size == (h, w):
                xs = x
            elif self.resize == "pil":  # detectron2: Pillow's bilinear filter on the uint8 image
                small = resize_image(image, (size[1], size[0]), "pil")  # what training's Resize does too
                xs = torch.tensor(small, device=self.device).permute(2, 0, 1)[None].float()
            else:  # mmseg resizes the uint8 image (cv2 bilinear, no antialias), then normalises.
                xs = _resize(x, size).round().clamp(0, 255)
            xs = (xs - self.mean.to(xs.device)) / self.std.to(xs.device)
            for flip in (False, True) if self.flip else (False,):
                logits, stage_priors = self._run(xs.flip(-1) if flip else xs)  # [1, K, h', w']
                if ratio == prior_ratio and not flip:
                    priors = [p[0].float().cpu() for p in stage_priors]
                if single:
                    conf, labels = _max_softmax(logits[0], (h, w), scores=scores)
                    return self._result(image, labels, conf, priors, None)
                if total is None:
                    total = logits.new_zeros(logits.shape[1], h, w)  # [K, H, W]
                # no name holds the resized map, so it is freed before the next view's is made
                _add_softmax(total, _resize(logits, (h, w))[0], flip=flip, scores=scores)
                n += 1
        assert total is not None
        avg = total.div_(n) if n > 1 else total  # [K, H, W]
        if scores:  # the averaged semantic scores, normalised per pixel (in bands: no second [K, H, W] map)
            for band in _row_bands(avg, 4 << 20):
                avg[:, band] = _normalise(avg[:, band], scores=True)
        conf, labels = avg.max(0)
        return self._result(image, labels, conf, priors, avg.float().cpu() if want_probs else None)

    def _result(self, image: np.ndarray, labels: torch.Tensor, conf: torch.Tensor, priors: list[torch.Tensor],
                probs: torch.Tensor | None) -> Prediction:
        return Prediction(labels=labels.cpu().numpy().astype(np.int64), confidence=conf.float().cpu().numpy(),
                          image=image, priors=priors, classes=self.classes, probs=probs)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, K, h, w] at the input size and the backbone's per-stage prior maps [B, K', ceil(h/s_i),
        ceil(w/s_i)] (by a forward hook, so any `Segmentor` works unchanged).

        Inputs smaller than the backbone's `min_size` (MiT: 29 px, where its key/value reduction conv no longer fits)
        are zero-padded right/bottom (the mean colour, as mask-classification models pad to a multiple of 32) and
        the outputs cropped back. Prior maps are cropped to the unpadded input's grid, also where the model pads."""
        h, w = x.shape[-2:]
        if min(h, w) < self.min_side:
            x = F.pad(x, (0, max(0, self.min_side - w), 0, max(0, self.min_side - h)))
        captured: list[list[torch.Tensor]] = []
        hook = self.model.backbone.register_forward_hook(lambda _m, _i, out: captured.append(list(out[1])))
        if self.dtype is not None:
            context = torch.autocast(self.device.type, dtype=self.dtype)
        else:  # a model cast to half / bfloat16 / float64 (no autocast) gets its own dtype
            context = nullcontext()
            x = x.to(next(self.model.parameters()).dtype)
        try:
            with context:
                logits = self.model(x, priors=False)["logits"]  # per-stage priors come from the hook
        finally:
            hook.remove()
        priors = [p[..., :-(-h // s), :-(-w // s)].float()
                  for p, s in zip(captured[0] if captured else [], self.strides, strict=False)]
        return logits[..., :h, :w].float(), priors

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.mode == "whole":
            return self._forward(x)
        return self._slide(x)

    def _slide(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """mmseg `slide_inference`: logits of overlapping windows summed and divided by the count map. The prior
        maps are stitched the same way on each stage's grid (window footprints rounded to that grid)."""
        _, _, h, w = x.shape
        logits: torch.Tensor | None = None
        count = x.new_zeros(1, 1, h, w)
        priors: list[torch.Tensor] = []
        prior_counts: list[torch.Tensor] = []
        for y0, y1, x0, x1 in slide_windows(h, w, self.crop, self.stride):
            out, stage = self._forward(x[:, :, y0:y1, x0:x1])
            if logits is None:
                logits = x.new_zeros(1, out.shape[1], h, w)
                for p, s in zip(stage, self.strides, strict=False):
                    priors.append(x.new_zeros(1, p.shape[1], -(-h // s), -(-w // s)))
                    prior_counts.append(x.new_zeros(1, 1, -(-h // s), -(-w // s)))
            logits[:, :, y0:y1, x0:x1] += out
            count[:, :, y0:y1, x0:x1] += 1
            for i, (p, s) in enumerate(zip(stage, self.strides, strict=False)):
                ph, pw = priors[i].shape[-2:]
                # a window at the bottom/right border reaches the last cell (ceil, as its own map): a one-window
                # slide gives the whole image's priors
                a0 = min(round(y0 / s), ph - 1)
                a1 = ph if y1 == h else min(max(round(y1 / s), a0 + 1), ph)
                b0 = min(round(x0 / s), pw - 1)
                b1 = pw if x1 == w else min(max(round(x1 / s), b0 + 1), pw)
                priors[i][:, :, a0:a1, b0:b1] += _resize(p, (a1 - a0, b1 - b0))
                prior_counts[i][:, :, a0:a1, b0:b1] += 1
        assert logits is not None and bool((count > 0).all()), "sliding windows must cover every pixel"
        return logits / count, [p / c.clamp(min=1) for p, c in zip(priors, prior_counts, strict=True)]
