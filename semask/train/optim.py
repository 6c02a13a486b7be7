"""The original optimisers and schedule: AdamW with parameter groups as each original code base forms them, and
iteration-based poly decay after a linear warmup (mmcv's `PolyLrUpdaterHook` + `warmup='linear'`, detectron2's
`WarmupPolyLR`: the same formula)."""

from __future__ import annotations

import torch
import torch.nn as nn

# mmcv paramwise_cfg custom_keys of the released configs: decay_mult 0 for any parameter whose name CONTAINS these.
NO_DECAY_KEYS = ("absolute_pos_embed", "relative_position_bias_table", "norm")
# detectron2's build_optimizer (MaskFormer / Mask2Former / FaPN): no decay for the parameters of these module types.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
              nn.LocalResponseNorm)
POSITION_TABLES = ("relative_position_bias_table", "absolute_pos_embed")
RULES = ("mmseg", "detectron2")


def family_rule(model: nn.Module) -> str:
    """Which original forms a model's parameter groups: "detectron2" for the mask-classification decoders,
    "mmseg" for Semantic-FPN and SegFormer."""
    config = getattr(model, "config", None)  # a model without one (a user's module): mmseg's rule
    return "detectron2" if config is not None and config.mask_classification else "mmseg"


def param_groups(model: nn.Module, weight_decay: float, *, rule: str = "mmseg", backbone_lr_mult: float = 1.0,
                 head_lr_mult: float = 1.0, no_decay_keys: tuple[str, ...] = NO_DECAY_KEYS) -> list[dict]:
    """Groups of trainable parameters by (lr multiplier, weight decay), in the model's parameter order; each group
    carries its `lr_mult`.

    rule "mmseg" (mmcv's custom_keys): no decay for parameters whose name contains a `no_decay_keys` entry; as
    the original, biases and the FPN head's BatchNorm (`bn`, no 'norm' in its name) are decayed. Rule
    "detectron2" (the MaskFormer-family `build_optimizer`): no decay for the parameters of norm modules (by type,
    GroupNorm included), of `nn.Embedding`s (the queries) and for the position tables. `backbone_lr_mult` scales
    `backbone.*` (Mask2Former's BACKBONE_MULTIPLIER), `head_lr_mult` the rest (SegFormer's 'head' lr_mult)."""
    if rule not in RULES:
        raise ValueError(f"parameter-group rule must be one of {RULES}, got {rule!r}")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()  # a parameter shared by two modules is one optimiser entry
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{module_name}.{param_name}" if module_name else param_name
            if rule == "detectron2":
                no_decay = isinstance(module, (*NORM_TYPES, nn.Embedding)) or param_name in POSITION_TABLES
            else:
                no_decay = any(k in name for k in no_decay_keys)
            mult = backbone_lr_mult if name.startswith("backbone.") else head_lr_mult
            groups.setdefault((mult, 0.0 if no_decay else weight_decay), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_mult": mult} for (mult, wd), ps in groups.items()]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                    rule: str = "mmseg", backbone_lr_mult: float = 1.0, head_lr_mult: float = 1.0
                    ) -> torch.optim.AdamW:
    """AdamW over `param_groups`, each group at `lr` times its multiplier."""
    groups = param_groups(model, weight_decay, rule=rule, backbone_lr_mult=backbone_lr_mult,
                          head_lr_mult=head_lr_mult)
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


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


def reschedule(scheduler: torch.optim.lr_scheduler.LambdaLR, fn: PolyWarmup, base_lr: float, *,
               saved_mult: float | None = None) -> dict[str, tuple[float, float]]:
    """Make a restored scheduler follow `fn` and `base_lr` from its restored iteration (mmseg's resume: the
    current config's schedule, not the checkpoint's); returns the settings that changed, {name: (old, new)}.

    LambdaLR's `load_state_dict` restores the checkpoint's PolyWarmup (total_iters, warmup, power) into the lambda,
    so without this a resume with a larger `iters` trains its extra iterations at lr 0. The lr is recomputed with
    LambdaLR's own formula, so an unchanged schedule resumes bit-exactly. `saved_mult`: the first group's lr
    multiplier when the scheduler's state was saved (default: its current one), to tell the saved lr apart from a
    changed multiplier."""
    groups = scheduler.optimizer.param_groups
    old = vars(scheduler.lr_lambdas[0])
    changed = {k: (old.get(k), v) for k, v in vars(fn).items() if old.get(k) != v}
    mult = groups[0].get("lr_mult", 1.0)
    saved_mult = mult if saved_mult is None else saved_mult
    if scheduler.base_lrs[0] != base_lr * saved_mult:
        changed["lr"] = (scheduler.base_lrs[0] / saved_mult, base_lr)
    scheduler.lr_lambdas = [fn] * len(groups)
    for group in groups:  # each group at the config's lr times its multiplier
        group["initial_lr"] = base_lr * group.get("lr_mult", 1.0)
        group["lr"] = group["initial_lr"] * fn(scheduler.last_epoch)
    scheduler.base_lrs = [group["initial_lr"] for group in groups]
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() reports
    return changed
