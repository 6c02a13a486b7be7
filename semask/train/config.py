"""Training configuration: a dataclass, read from YAML (PyYAML `safe_load` only) or JSON, with `key=value` and
`data.key=value` overrides from the command line. String values are coerced to the field's type, so `lr=1e-4`
(a string for YAML 1.1) works."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, PAPER_RATIOS

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class DataConfig:
    type: str = "folder"  # ade20k | cityscapes | coco_stuff10k | folder
    root: str = ""
    train_split: str | None = None  # None: the dataset's default (ADE20K training, Cityscapes train, ...)
    val_split: str | None = None
    classes: Any = None  # folder datasets: a list of names or a file (default root/classes.txt)
    reduce_zero_label: bool = False  # folder datasets only (the others fix it)
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)  # (long, short) before the random ratio
    ratios: tuple[float, ...] | None = PAPER_RATIOS
    ratio_range: tuple[float, float] | None = None  # continuous (low, high) instead of `ratios` (Cityscapes)
    cat_max_ratio: float = 1.0
    flip: float = 0.5
    photometric: bool = True
    test_scale: tuple[int, int] | None = (2048, 512)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = 2


@dataclass
class TrainConfig:
    model: str = "semask_swin_tiny_fpn"  # arch or arch.tag
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {drop_path_rate: 0.3}
    pretrained: str | None = None  # semask weights folder / safetensors / original .pth to start from
    pretrained_backbone: bool = False  # ImageNet-initialised backbone (create_model(..., pretrained_backbone=True))
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "work_dirs/semask"
    iters: int = 80000
    batch_size: int = 8  # per process
    accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    prior_loss_weight: float = 0.4
    loss_reduction: str = "all"  # mmseg mean over all pixels; "valid" for the labelled-pixel mean
    ohem_min_kept: int | None = None
    amp: str = "no"  # no | bf16 | fp16 (fp16 on CUDA only)
    clip_grad: float | None = None  # max gradient norm
    grad_checkpointing: bool = False
    norm_eval: bool = False  # keep BatchNorm statistics frozen (small batches)
    sync_bn: bool = True  # SyncBatchNorm in the head when distributed on CUDA
    eval_interval: int = 8000
    eval_mode: str = "whole"  # whole | slide (images are predicted one at a time, as mmseg)
    eval_crop: int | tuple[int, int] | None = None  # slide window; default data.crop_size
    eval_stride: int | tuple[int, int] | None = None  # default 2/3 of the window
    eval_tta: bool = False  # multi-scale (0.5 .. 1.75) + flip, mmseg's --aug-test
    ckpt_interval: int = 8000
    keep_last: int = 3
    log_interval: int = 50
    seed: int = 0
    device: str = "auto"
    resume: str | None = "auto"  # auto (latest in out_dir, if any) | a checkpoint path | null

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        return bool(value)
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _build(cls: type, values: dict, where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; valid: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        default = names[name].default
        if name == "data":
            kwargs[name] = value if isinstance(value, DataConfig) else _build(DataConfig, value or {}, "data")
        elif name in ("model_overrides", "classes"):
            kwargs[name] = value
        else:
            kwargs[name] = _coerce(value, default if default is not dataclasses.MISSING else None)
    return cls(**kwargs)


def config_from_dict(values: dict) -> TrainConfig:
    return _build(TrainConfig, dict(values), "config")


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (presets: configs/*.yaml)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml  # PyYAML: a dependency of huggingface_hub, declared in pyproject

    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`key=value` / `data.key=value`; values are parsed as YAML (`[512, 512]`, `null`, `true`)."""
    import yaml

    values = json.loads(json.dumps(values, default=list))  # deep copy
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. lr=1e-4, data.root=/data/ade)")
        target = values
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        target[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    values = read_config_file(path) if path else {}
    return config_from_dict(apply_overrides(values, list(overrides)))
