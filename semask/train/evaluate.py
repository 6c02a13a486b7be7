"""Evaluation over a dataset: logits at the original label size -> argmax -> confusion matrix -> metrics.

SEAM: `whole_inference(model, images, out_size)` is the one place that turns a batch into logits. The Predictor of
`semask/infer.py` (whole / slide / multi-scale + flip) plugs in here through `evaluate(..., infer=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .metrics import IGNORE_INDEX, SegMetrics

InferFn = Callable[[nn.Module, torch.Tensor, tuple[int, int]], torch.Tensor]


def whole_inference(model: nn.Module, images: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """mmseg `mode='whole'`: one forward of the (already resized) batch, logits resized bilinearly to `out_size`."""
    logits = model(images)["logits"]
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], *, num_classes: int, class_names: Sequence[str] | None = None,
             device: torch.device | str = "cpu", infer: InferFn = whole_inference, amp_dtype: torch.dtype | None = None,
             ignore_index: int = IGNORE_INDEX) -> dict:
    """Metrics of `model` over `batches` of {"image", "label"} (summed over processes when distributed)."""
    was_training = model.training
    model.eval()
    metrics = SegMetrics(num_classes, ignore_index=ignore_index, device=device)
    device = torch.device(device)
    try:
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = infer(model, images, tuple(labels.shape[-2:]))
            metrics.update(logits.argmax(1), labels)
    finally:
        model.train(was_training)
    metrics.all_reduce()
    return metrics.compute(class_names)
