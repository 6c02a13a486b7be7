"""Evaluation over a dataset through `semask.Predictor`: raw image -> label map at the original size -> confusion
matrix -> metrics (aAcc, mIoU, mAcc, per-class IoU / Acc).

ONE place resizes, the Predictor: the dataset is read as stored (uint8 RGB, labels at their own size, no eval
transforms); the Predictor resizes the image keeping its aspect ratio to the config's `data.test_scale` (None: the
image's own size), normalises with `data.mean` / `data.std`, runs whole or sliding-window inference (optionally at
several scales and flipped, softmax averaged), and resizes the logits to the original size before the argmax. That is
mmseg's test protocol (batch 1, `Resize(keep_ratio=True)`, metrics at the original resolution) and exactly what
`semask segment` does with the same settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.datasets import SegmentationDataset
from ..data.palettes import ClassInfo
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..infer import MS_RATIOS, Predictor
from .metrics import IGNORE_INDEX, SegMetrics

__all__ = ["MS_RATIOS", "EvalProtocol", "eval_predictor", "evaluate", "parse_size"]


@dataclass(frozen=True)
class EvalProtocol:
    """How each image is predicted (mmseg's `test_cfg` and `--aug-test`).

    Args:
        mode: "whole" (one forward of the resized image) or "slide" (windows of `crop` every `stride`, overlaps
            averaged).
        crop: slide window, an int or (H, W); default: the training crop (`data.crop_size`).
        stride: default: 2/3 of the crop (mmseg's 512 / 341).
        scales: ratios of the test scale whose softmax is averaged; `MS_RATIOS` (0.5 .. 1.75) is mmseg's multi-scale.
        flip: also average the horizontally flipped prediction.
    """

    mode: str = "whole"
    crop: int | tuple[int, int] | None = None
    stride: int | tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"evaluation mode must be 'whole' or 'slide', got {self.mode!r}")

    def describe(self) -> str:
        text = self.mode if self.mode == "whole" else f"slide (crop {self.crop or 'training crop'}, " \
                                                      f"stride {self.stride or '2/3 crop'})"
        if tuple(self.scales) != (1.0,):
            text += f", scales {', '.join(f'{s:g}' for s in self.scales)}"
        return text + (", flip" if self.flip else "")


def parse_size(text: str | None) -> int | tuple[int, int] | None:
    """'512' -> 512, '512,1024' or '512x1024' -> (512, 1024) (H, W); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in str(text).replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(f"a size is N or H,W with positive integers, got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def eval_predictor(model: nn.Module, *, protocol: EvalProtocol = EvalProtocol(), test_scale: Sequence[int] | None,
                   crop_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, classes: ClassInfo | None = None,
                   amp_dtype: torch.dtype | None = None) -> Predictor:
    """A `Predictor` with a training config's preprocessing (test scale, mean / std, crop) rather than the weights'
    manifest entry: a model is evaluated as it was trained. `test_scale=None` predicts at each image's own size."""
    crop = protocol.crop if protocol.crop is not None else tuple(int(c) for c in crop_size)
    return Predictor(model, mode=protocol.mode, crop=crop, stride=protocol.stride, scales=protocol.scales,
                     flip=protocol.flip, dtype=amp_dtype, test_scale="original" if test_scale is None else test_scale,
                     mean=mean, std=std, classes=classes, max_pixels=None)


def _as_is(sample: dict) -> dict:
    return sample


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegmentationDataset, *, protocol: EvalProtocol = EvalProtocol(),
             test_scale: Sequence[int] | None, crop_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = IMAGENET_STD, indices: Iterable[int] | None = None,
             amp_dtype: torch.dtype | None = None, num_workers: int = 0, ignore_index: int = IGNORE_INDEX) -> dict:
    """Metrics of `model` over `dataset` (or over `indices`, this process's shard; the confusion matrices are summed
    over processes when distributed). The model's train/eval mode is restored afterwards."""
    was_training = model.training
    device = next(model.parameters()).device
    predictor = eval_predictor(model, protocol=protocol, test_scale=test_scale, crop_size=crop_size, mean=mean,
                              std=std, classes=dataset.class_info, amp_dtype=amp_dtype)
    metrics = SegMetrics(dataset.num_classes, ignore_index=ignore_index, device=device)
    indices = list(indices) if indices is not None else range(len(dataset))
    loader = DataLoader(dataset, batch_size=None, sampler=indices, num_workers=num_workers, collate_fn=_as_is)
    try:
        for sample in loader:
            if "label" not in sample:
                raise ValueError(f"{sample['path']} has no mask: cannot evaluate")
            pred = predictor(sample["image"])
            metrics.update(torch.from_numpy(pred.labels), torch.from_numpy(sample["label"]).long())
    finally:
        model.train(was_training)
    metrics.all_reduce()
    return metrics.compute(dataset.classes)
