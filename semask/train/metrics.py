"""Segmentation metrics from a confusion matrix accumulated over the whole dataset (mmseg's definitions).

IoU_k = TP / (TP + FP + FN), Acc_k = TP / (TP + FN), aAcc = ΣTP / Σ labelled pixels; ignore-index pixels are not
counted. A class with no pixels in the labels nor the predictions (union 0) has IoU NaN and is skipped by mIoU; one
with no labelled pixels has Acc NaN, skipped by mAcc. A class predicted but absent from the labels has IoU 0 (counts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

IGNORE_INDEX = 255


class SegMetrics:
    """`update(pred, label)` with class-id tensors of one shape; `compute()` after all batches (all processes)."""

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # [label, pred]

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} shapes differ")
        valid = label != self.ignore_index
        k = self.num_classes
        bad = valid & ((label < 0) | (label >= k))
        if bool(bad.any()):
            raise ValueError(f"labels {torch.unique(label[bad]).tolist()[:10]} outside [0, {k}) and not "
                             f"{self.ignore_index}")
        idx = label[valid].long() * k + pred[valid].long()
        self.confusion += torch.bincount(idx, minlength=k * k).view(k, k).to(self.confusion.device)

    def all_reduce(self) -> None:
        """Sum the confusion matrices of every process (no-op without torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.confusion)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """{"aAcc", "mIoU", "mAcc" (fractions in [0, 1]), "IoU", "Acc" (per class, NaN where skipped)}."""
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        label_area, pred_area = cm.sum(1), cm.sum(0)
        union = label_area + pred_area - tp
        iou = tp / union  # 0/0 -> NaN: absent from labels and predictions
        acc = tp / label_area
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {"aAcc": float(tp.sum() / cm.sum().clamp(min=1)), "mIoU": float(iou.nanmean()),
                "mAcc": float(acc.nanmean()), "IoU": dict(zip(names, iou.tolist(), strict=True)),
                "Acc": dict(zip(names, acc.tolist(), strict=True))}


def format_table(metrics: dict) -> str:
    """A per-class IoU/Acc table plus the summary line (percentages)."""
    width = max([5] + [len(n) for n in metrics["IoU"]])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for name, iou in metrics["IoU"].items():
        acc = metrics["Acc"][name]
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    lines.append("  ".join(f"{k} {100 * metrics[k]:.2f}" for k in ("aAcc", "mIoU", "mAcc")))
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "   nan" if x != x else f"{100 * x:6.2f}"


def metrics_json(metrics: dict) -> str:
    """Metrics as strict JSON: NaN (a class absent from both truth and prediction) becomes null, which jq and
    JavaScript parse (they reject the NaN token Python writes by default)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(metrics), indent=2, allow_nan=False) + "\n"
