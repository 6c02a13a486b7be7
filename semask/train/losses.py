"""SeMask-FPN losses: CE on the main logits + 0.4 × CE on the summed semantic priors (mmseg semantics).

mmseg's CE is `reduction='none'` then the mean over ALL pixels, ignored ones counting 0 in the numerator and 1 in
the denominator (quirk Q8); `reduction="valid"` gives the usual mean over labelled pixels (detectron2's choice).
OHEM (`ohem_min_kept`, as the released SeMask-L ADE20K and COCO-Stuff configs) applies to the main loss only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255


def _resize(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise TypeError(f"labels must be an integer tensor [B, H, W], got {labels.dtype}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()[:10]
        raise ValueError(f"labels contain values {values} outside [0, {num_classes}) that are not the ignore index "
                         f"{ignore_index}; remap them (e.g. reduce_zero_label for ADE20K) or set them to "
                         f"{ignore_index}")


@torch.no_grad()
def ohem_weights(logits: torch.Tensor, labels: torch.Tensor, *, min_kept: int,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg `OHEMPixelSampler(thresh=None)`: weight 1 for the `min_kept × B` valid pixels with the largest CE."""
    losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    valid = labels != ignore_index
    weight = torch.zeros_like(losses)
    order = losses[valid].sort(descending=True).indices
    kept = torch.zeros(int(valid.sum()), device=losses.device, dtype=losses.dtype)
    kept[order[: min_kept * labels.shape[0]]] = 1.0
    weight[valid] = kept
    return weight


def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mmseg `acc_seg`: % of ALL pixels (ignored ones count as wrong) whose arg-max equals the label."""
    return (logits.argmax(1) == labels).float().mean() * 100


class SeMaskLoss(nn.Module):
    """`loss = CE(logits) + prior_weight × CE(prior_logits)` with labels [B, H, W] (ignore 255).

    Logits of any resolution are resized (bilinear, align_corners=False) to the label size first, as mmseg.
    Returns {"loss", "loss_ce", "loss_prior" (SeMask only), "acc"}.
    """

    def __init__(self, *, prior_weight: float = 0.4, ignore_index: int = IGNORE_INDEX, reduction: str = "all",
                 ohem_min_kept: int | None = None) -> None:
        super().__init__()
        if reduction not in ("all", "valid"):
            raise ValueError(f"reduction must be 'all' (mmseg: mean over all pixels) or 'valid', got {reduction!r}")
        self.prior_weight = prior_weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.ohem_min_kept = ohem_min_kept

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        if weight is not None:
            loss = loss * weight
        if self.reduction == "all":
            return loss.mean()
        return loss.sum() / (labels != self.ignore_index).sum().clamp(min=1)

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3:
            raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
        logits = _resize(outputs["logits"], labels.shape[-2:])
        _check_labels(labels, logits.shape[1], self.ignore_index)
        labels = labels.long()
        weight = None
        if self.ohem_min_kept:
            weight = ohem_weights(logits, labels, min_kept=self.ohem_min_kept, ignore_index=self.ignore_index)
        out = {"loss_ce": self._ce(logits, labels, weight)}
        total = out["loss_ce"]
        if "prior_logits" in outputs and self.prior_weight:
            prior = _resize(outputs["prior_logits"], labels.shape[-2:])
            _check_labels(labels, prior.shape[1], self.ignore_index)
            out["loss_prior"] = self.prior_weight * self._ce(prior, labels)
            total = total + out["loss_prior"]
        out["loss"] = total
        out["acc"] = pixel_accuracy(logits.detach(), labels)
        return out
