"""The SeMask-FPN optimiser and schedule: AdamW with no weight decay on position tables and norms, iteration-based
poly decay (power 1.0, min_lr 0) after a linear warmup (mmcv's `PolyLrUpdaterHook` + `warmup='linear'`)."""

from __future__ import annotations

import torch
import torch.nn as nn

# mmcv paramwise_cfg custom_keys of the released configs: decay_mult 0 for any parameter whose name CONTAINS these.
NO_DECAY_KEYS = ("absolute_pos_embed", "relative_position_bias_table", "norm")


def param_groups(model: nn.Module, weight_decay: float, *, no_decay_keys: tuple[str, ...] = NO_DECAY_KEYS
                 ) -> list[dict]:
    """Two groups: decayed, and parameters whose name contains a `no_decay_keys` entry (weight_decay 0).

    As the original, biases and the head's BatchNorm (`bn`, no 'norm' in its name) are decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(k in name for k in no_decay_keys) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
                    ) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, foreach=True)


class PolyWarmup:
    """lr factor at iteration i: (1 - i / total)^power (floored at min_ratio), times mmcv's linear warmup
    `1 - (1 - i / warmup) · (1 - warmup_ratio)` for i < warmup. A class (not a lambda) so LambdaLR can save it."""

    def __init__(self, total_iters: int, *, power: float = 1.0, warmup_iters: int = 1500, warmup_ratio: float = 1e-6,
                 min_ratio: float = 0.0) -> None:
        if total_iters < 1:
            raise ValueError(f"total iterations must be >= 1, got {total_iters}")
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.min_ratio = min_ratio

    def __call__(self, i: int) -> float:
        factor = (1 - min(i, self.total_iters) / self.total_iters) ** self.power
        factor = (1 - self.min_ratio) * factor + self.min_ratio
        if i < self.warmup_iters:
            factor *= 1 - (1 - i / self.warmup_iters) * (1 - self.warmup_ratio)
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_iters: int, *, power: float = 1.0,
                    warmup_iters: int = 1500, warmup_ratio: float = 1e-6) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration (after the optimiser step)."""
    fn = PolyWarmup(total_iters, power=power, warmup_iters=warmup_iters, warmup_ratio=warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def reschedule(scheduler: torch.optim.lr_scheduler.LambdaLR, fn: PolyWarmup, base_lr: float
               ) -> dict[str, tuple[float, float]]:
    """Make a restored scheduler follow `fn` and `base_lr` from its restored iteration (mmseg's resume: the
    current config's schedule, not the checkpoint's); returns the settings that changed, {name: (old, new)}.

    LambdaLR's `load_state_dict` restores the checkpoint's PolyWarmup (total_iters, warmup, power) into the lambda,
    so without this a resume with a larger `iters` trains its extra iterations at lr 0. The lr is recomputed with
    LambdaLR's own formula, so an unchanged schedule resumes bit-exactly."""
    old = dict(vars(scheduler.lr_lambdas[0]), lr=scheduler.base_lrs[0])
    changed = {k: (old.get(k), v) for k, v in dict(vars(fn), lr=base_lr).items() if old.get(k) != v}
    groups = scheduler.optimizer.param_groups
    scheduler.lr_lambdas = [fn] * len(groups)
    scheduler.base_lrs = [base_lr] * len(groups)
    for group in groups:
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() reports
    return changed
