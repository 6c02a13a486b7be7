"""Losses of the mask-classification models (SeMask MaskFormer / Mask2Former / FaPN), as the original criterion.

Per image, the semantic label map becomes one binary mask per present class; queries are matched to them by the
Hungarian algorithm (`scipy.optimize.linear_sum_assignment`, the optional `train` extra) — the mask costs of
MaskFormer at the prediction resolution (targets nearest-downsampled), of Mask2Former on shared uniform random
points — then
* class CE over all queries, unmatched ones labelled "no object" with weight `no_object_weight` (0.1);
* mask losses — MaskFormer: sigmoid focal (α .25, γ 2) + dice on masks upsampled to the label size;
  Mask2Former: BCE + dice on `num_points` points, 75 % of them the most uncertain of 3× oversampled candidates;
* the same for every auxiliary (earlier-layer) output (deep supervision), matched separately;
* the SeMask prior loss: `prior_weight` (0.4) × CE on "prior_logits", mean over valid pixels (final outputs only).
Mask and dice losses are divided by the number of target masks in the batch; under an initialised
`torch.distributed` process group, by its mean over the processes (all-reduced, clamped at 1), as the original.
Labels are [B, H, W] at the input resolution (ignore 255); like detectron2 they are padded with the ignore value
to the padded size the model ran at (pred_masks × 4) so masks and labels share normalised coordinates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .losses import IGNORE_INDEX, _check_labels

WEIGHTS = {  # class, mask, dice weights of the released configs (§4 of the reference)
    "maskformer": dict(class_weight=1.0, mask_weight=20.0, dice_weight=1.0, num_points=None),
    "mask2former": dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=12544),
}


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W], coords [N, P, 2] (x, y) in [0, 1] -> [N, C, P] (bilinear, align_corners=False)."""
    return F.grid_sample(x, 2 * coords.unsqueeze(2) - 1, align_corners=False).squeeze(3)


def uncertain_points(logits: torch.Tensor, num_points: int, oversample: float, importance: float) -> torch.Tensor:
    """PointRend sampling: of `num_points × oversample` random points keep the `importance` share with logits
    closest to 0, fill the rest uniformly. logits [N, 1, H, W] -> coords [N, num_points, 2]."""
    n = logits.shape[0]
    cand = torch.rand(n, int(num_points * oversample), 2, device=logits.device, dtype=logits.dtype)
    uncertainty = -point_sample(logits, cand).abs()[:, 0]  # [N, P']
    k = int(importance * num_points)
    idx = uncertainty.topk(k, dim=1).indices
    chosen = torch.gather(cand, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    rest = torch.rand(n, num_points - k, 2, device=logits.device, dtype=logits.dtype)
    return torch.cat([chosen, rest], 1)


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    p = inputs.sigmoid().flatten(1)
    targets = targets.flatten(1)
    return (1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)).sum() / num_masks


def focal_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    p = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(1).sum() / num_masks


def _pair_costs(pred: torch.Tensor, tgt: torch.Tensor, focal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """pred [Q, P] logits, tgt [N, P] in {0, 1} -> (mask cost [Q, N], dice cost [Q, N])."""
    hw = pred.shape[1]
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    if focal:
        p = pred.sigmoid()
        pos, neg = 0.25 * (1 - p) ** 2 * pos, 0.75 * p ** 2 * neg
    cost_mask = (pos @ tgt.T + neg @ (1 - tgt).T) / hw
    p = pred.sigmoid()
    cost_dice = 1 - (2 * p @ tgt.T + 1) / (p.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
    return cost_mask, cost_dice


def num_masks_normaliser(targets: list[dict], device: torch.device | str = "cpu") -> float:
    """Number of target masks of the batch to divide the mask losses by: under an initialised `torch.distributed`
    process group the mean over its processes (one all-reduce, which every process must reach), clamped at 1."""
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


def targets_from_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> list[dict]:
    """[B, H, W] label maps -> per image {"labels": [N], "masks": [N, H, W] float}, one mask per present class."""
    out = []
    for lab in labels:
        classes = torch.unique(lab)
        classes = classes[(classes != ignore_index) & (classes < num_classes)]
        out.append({"labels": classes.long(), "masks": (lab[None] == classes[:, None, None]).to(torch.float32)})
    return out


class MaskClassificationLoss(nn.Module):
    """Set criterion + SeMask prior loss. forward(outputs, labels) -> {"loss", "loss_ce", "loss_mask",
    "loss_dice", "loss_prior", "loss_ce_0", ...} (already weighted; "loss" is their sum)."""

    def __init__(self, num_classes: int, *, kind: str = "mask2former", class_weight: float | None = None,
                 mask_weight: float | None = None, dice_weight: float | None = None, no_object_weight: float = 0.1,
                 prior_weight: float = 0.4, num_points: int | None = -1, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if kind not in WEIGHTS:
            raise ValueError(f"kind must be one of {sorted(WEIGHTS)}, got {kind!r}")
        d = WEIGHTS[kind]
        self.kind, self.num_classes, self.ignore_index = kind, num_classes, ignore_index
        self.w_class = d["class_weight"] if class_weight is None else class_weight
        self.w_mask = d["mask_weight"] if mask_weight is None else mask_weight
        self.w_dice = d["dice_weight"] if dice_weight is None else dice_weight
        self.num_points = d["num_points"] if num_points == -1 else num_points
        self.oversample_ratio, self.importance_sample_ratio = oversample_ratio, importance_sample_ratio
        self.prior_weight = prior_weight
        empty = torch.ones(num_classes + 1)
        empty[-1] = no_object_weight
        self.register_buffer("empty_weight", empty)

    @classmethod
    def from_config(cls, config: ModelConfig, **kwargs) -> MaskClassificationLoss:
        kind = "maskformer" if config.decoder == "maskformer" else "mask2former"
        return cls(config.num_classes, kind=kind, **kwargs)

    @torch.no_grad()
    def cost_matrix(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, target: dict) -> torch.Tensor:
        """Matching cost of one image: pred_logits [Q, K+1], pred_masks [Q, h, w], target {"labels" [N], "masks"
        [N, H, W]} -> [Q, N] = w_mask × mask cost + w_class × -p(class) + w_dice × dice cost."""
        prob = pred_logits.float().softmax(-1)
        pred, tgt = pred_masks.float(), target["masks"].to(device=pred_masks.device, dtype=torch.float32)
        if self.num_points:  # Mask2Former: BCE / dice on the same uniform random points of predictions and targets
            coords = torch.rand(1, self.num_points, 2, device=pred.device, dtype=pred.dtype)
            pred_p = point_sample(pred[:, None], coords.expand(pred.shape[0], -1, -1))[:, 0]
            tgt_p = point_sample(tgt[:, None], coords.expand(tgt.shape[0], -1, -1))[:, 0]
        else:  # MaskFormer: focal / dice at the prediction resolution, targets nearest-downsampled to it
            tgt_p = F.interpolate(tgt[:, None], size=pred.shape[-2:], mode="nearest")[:, 0]
            pred_p, tgt_p = pred.flatten(1), tgt_p.flatten(1)
        cost_mask, cost_dice = _pair_costs(pred_p, tgt_p, focal=not self.num_points)
        cost_class = -prob[:, target["labels"].to(prob.device)]
        return self.w_mask * cost_mask + self.w_class * cost_class + self.w_dice * cost_dice

    @torch.no_grad()
    def match(self, out: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian matching per image -> [(query indices, target indices)]."""
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as err:
            raise ImportError("Hungarian matching needs scipy: pip install 'semask[train]'") from err
        result = []
        for b, t in enumerate(targets):
            cost = self.cost_matrix(out["pred_logits"][b], out["pred_masks"][b], t)
            q, j = linear_sum_assignment(cost.cpu().numpy())
            result.append((torch.as_tensor(q, dtype=torch.long), torch.as_tensor(j, dtype=torch.long)))
        return result

    def _set_losses(self, out: dict, targets: list[dict], num_masks: float) -> dict[str, torch.Tensor]:
        idx = self.match(out, targets)
        logits = out["pred_logits"].float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        for b, (q, j) in enumerate(idx):
            target_classes[b, q.to(logits.device)] = targets[b]["labels"][j.to(logits.device)]
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits))
        src = torch.cat([out["pred_masks"][b, q] for b, (q, _) in enumerate(idx)])[:, None]  # [M, 1, h, w]
        tgt = torch.cat([targets[b]["masks"][j] for b, (_, j) in enumerate(idx)])[:, None].to(src)
        if self.num_points:
            with torch.no_grad():
                coords = uncertain_points(src.detach(), self.num_points, self.oversample_ratio,
                                          self.importance_sample_ratio)
                labels = point_sample(tgt, coords)[:, 0]
            logits_p = point_sample(src, coords)[:, 0]
            loss_mask = F.binary_cross_entropy_with_logits(logits_p, labels, reduction="none").mean(1).sum() / num_masks
            loss_dice = dice_loss(logits_p, labels, num_masks)
        else:
            src = F.interpolate(src, size=tgt.shape[-2:], mode="bilinear", align_corners=False)
            loss_mask = focal_loss(src.flatten(1), tgt.flatten(1), num_masks)
            loss_dice = dice_loss(src.flatten(1), tgt.flatten(1), num_masks)
        return {"loss_ce": self.w_class * loss_ce, "loss_mask": self.w_mask * loss_mask,
                "loss_dice": self.w_dice * loss_dice}

    def forward(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3:
            raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
        _check_labels(labels, self.num_classes, self.ignore_index)
        hp, wp = (s * 4 for s in outputs["pred_masks"].shape[-2:])
        h, w = labels.shape[-2:]
        if h > hp or w > wp:
            raise ValueError(f"labels {h}x{w} are larger than the model's padded input {hp}x{wp}; pass labels at "
                             "the input resolution")
        padded = F.pad(labels.long(), (0, wp - w, 0, hp - h), value=self.ignore_index)
        targets = targets_from_labels(padded, self.num_classes, self.ignore_index)
        num_masks = num_masks_normaliser(targets, outputs["pred_logits"].device)
        losses = self._set_losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._set_losses(aux, targets, num_masks).items()})
        if "prior_logits" in outputs and self.prior_weight:
            prior = outputs["prior_logits"]
            if prior.shape[-2:] != labels.shape[-2:]:
                prior = F.interpolate(prior, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            losses["loss_prior"] = self.prior_weight * F.cross_entropy(prior.float(), labels.long(),
                                                                       ignore_index=self.ignore_index)
        losses["loss"] = sum(losses.values())
        return losses
