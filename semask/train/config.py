"""Training configuration: a dataclass, read from YAML (PyYAML `safe_load` only) or JSON, with `key=value` and
`data.key=value` overrides from the command line. String values are coerced to the field's type, so `lr=1e-4`
(a string for YAML 1.1) works."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.datasets import DATASETS
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
    # Whole-model weights to start from, as create_model(pretrained=...): true (the tag's published weights, e.g.
    # model=semask_mit_b4_segformer.segformer_ade20k_init), hf-hub:owner/repo@rev, a semask weights folder /
    # safetensors file, or an original .pth
    pretrained: bool | str | None = None
    # ImageNet backbone init, as create_model(pretrained_backbone=...): true (the paper's, from the hub),
    # hf-hub:owner/repo@rev, or a local timm .safetensors / Microsoft or timm .pth
    pretrained_backbone: bool | str = False
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "work_dirs/semask"
    iters: int = 80000
    batch_size: int = 8  # per process
    accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 1.0  # lr factor of backbone.* (Mask2Former / FaPN: 0.1)
    head_lr_mult: float = 1.0  # lr factor of everything else (SegFormer: 10)
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


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {args[0].__name__}s"
        return f"a list of {len(args)} {'/'.join(sorted({a.__name__ for a in args}))}s"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any) -> Any:
    """`value` as the annotated type `hint` (numbers from strings, lists to tuples); TypeError if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _convert(value, arg)
                except TypeError:
                    pass
        raise TypeError
    if isinstance(value, str) and hint in (int, float) and _FLOAT_RE.match(value.strip()):
        value = float(value) if any(c in value for c in ".eE") else int(value)  # YAML 1.1 reads 1e-4 as a string
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, float) and value.is_integer():  # iters=1e4
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):  # a split named 2017
            return str(value)
        if isinstance(value, os.PathLike):  # a config built in Python: out_dir=Path(...)
            return os.fspath(value)
    elif origin is tuple and isinstance(value, (list, tuple)):
        variadic = len(args) == 2 and args[1] is Ellipsis
        if variadic or len(value) == len(args):
            types_ = [args[0]] * len(value) if variadic else args
            return tuple(_convert(v, t) for v, t in zip(value, types_, strict=True))
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
    raise TypeError


def _build(cls: type, values: dict, where: str) -> Any:
    """`cls(**values)` after the key check; the values' types are checked by `validate_config` (`_check_types`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; valid: {sorted(names)}")
    return cls(**{k: _data_section(v) if k == "data" else v for k, v in values.items()})


def _convert_key(f: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
    """`value` of field `f` converted to its type; a ValueError naming the key, the value and an example."""
    key = f.name if where == "config" else f"{where}.{f.name}"
    try:
        return _convert(value, hint)
    except TypeError:
        example = "" if f.default in (None, dataclasses.MISSING) else \
            f" (e.g. {key}={json.dumps(f.default, default=list).replace(' ', '')})"
        raise ValueError(f"config key {key} must be {_describe(hint)}, got {value!r}{example}") from None


def _data_section(value: Any) -> DataConfig:
    """The `data` section: a DataConfig as is, a mapping (or None: the defaults) built into one."""
    if isinstance(value, DataConfig):
        return value
    if value is None or isinstance(value, dict):
        return _build(DataConfig, value or {}, "data")
    raise ValueError(f"config key data must be a mapping of data keys (or a DataConfig), got {value!r}")


def _check_types(obj: Any, where: str) -> None:
    """Type-check every field of a dataclass config built in Python and normalise it in place as `_build` would
    (lists to tuples, ints to floats, ...); the same errors as a file or override with that value."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "data":
            setattr(obj, f.name, _data_section(value))
            _check_types(obj.data, "data")
        else:
            setattr(obj, f.name, _convert_key(f, hints[f.name], value, where))


# Range and choice rules checked by `validate_config` (after the types). A null value of an optional key passes
# (`_NULL_MEANS` says what null does, for the error message); NaN fails every range.
_AT_LEAST = {"iters": 1, "batch_size": 1, "accum_steps": 1, "eval_interval": 1, "ckpt_interval": 1,
             "log_interval": 1, "keep_last": 1, "warmup_iters": 0, "data.num_workers": 0,
             "weight_decay": 0, "poly_power": 0, "prior_loss_weight": 0, "ohem_min_kept": 1}
_ABOVE = {"lr": 0, "clip_grad": 0, "backbone_lr_mult": 0, "head_lr_mult": 0}  # strictly
_BETWEEN = {"warmup_ratio": (0, 1), "data.flip": (0, 1), "data.cat_max_ratio": (0, 1)}  # inclusive
_NULL_MEANS = {"clip_grad": "no clipping", "ohem_min_kept": "no OHEM"}
_CHOICES = {"amp": ("no", "bf16", "fp16"), "loss_reduction": ("all", "valid"), "eval_mode": ("whole", "slide"),
            "data.type": tuple(DATASETS)}


def _range_error(key: str, rule: str, value: Any) -> ValueError:
    """'config key KEY must be RULE [or null (what null does)], got VALUE'."""
    null = f" or null ({_NULL_MEANS[key]})" if key in _NULL_MEANS else ""
    return ValueError(f"config key {key} must be {rule}{null}, got {value!r}")


def validate_config(config: TrainConfig) -> None:
    """Type (normalising `config` in place, as when read from a file), range and choice checks; a ValueError
    names the key, the value and the accepted values."""
    _check_types(config, "config")

    def get(key: str) -> Any:
        obj = config
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    for key, low in _AT_LEAST.items():
        if get(key) is not None and not get(key) >= low:
            raise _range_error(key, f">= {low}", get(key))
    for key, low in _ABOVE.items():
        if get(key) is not None and not get(key) > low:
            raise _range_error(key, f"> {low}", get(key))
    for key, (low, high) in _BETWEEN.items():
        if not low <= get(key) <= high:
            raise _range_error(key, f"in [{low}, {high}]", get(key))
    for key, choices in _CHOICES.items():
        if get(key) not in choices:
            raise ValueError(f"config key {key} must be one of {list(choices)}, got {get(key)!r}")
    if config.pretrained and config.pretrained_backbone:  # create_model refuses both, but only after the data check
        raise ValueError(f"config keys pretrained={config.pretrained!r} and pretrained_backbone="
                         f"{config.pretrained_backbone!r} exclude each other: whole-model weights already hold a "
                         "backbone; set one of them to false")
    for key in ("data.crop_size", "data.scale", "data.test_scale"):
        if get(key) is not None and min(get(key)) < 1:
            raise ValueError(f"config key {key} must be positive sizes, got {list(get(key))}")
    _validate_augmentation(config.data)


def _validate_augmentation(d: DataConfig) -> None:
    """Values the data pipeline would only trip over at the first batch (or train with into a NaN loss)."""
    if d.ratios is not None and any(r <= 0 for r in d.ratios):
        raise ValueError(f"config key data.ratios must be positive, got {list(d.ratios)} "
                         "(e.g. data.ratios=[0.5,1.0,2.0])")
    if d.ratio_range is not None:
        low, high = d.ratio_range
        if not 0 < low <= high:
            raise ValueError(f"config key data.ratio_range must be [low, high] with 0 < low <= high, got "
                             f"{list(d.ratio_range)} (e.g. data.ratio_range=[0.5,2.0])")
    if any(s <= 0 for s in d.std):  # images are divided by it: 0 gives inf / NaN inputs and a NaN loss
        raise ValueError(f"config key data.std must be positive, got {list(d.std)} (ImageNet: "
                         f"data.std={json.dumps(list(IMAGENET_STD)).replace(' ', '')})")


def config_from_dict(values: dict) -> TrainConfig:
    """A checked `TrainConfig` from plain values (a YAML/JSON file with overrides applied)."""
    config = _build(TrainConfig, dict(values), "config")
    validate_config(config)
    return config


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (presets: configs/*.yaml)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:  # its message has the line and column, not the file
            raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    import yaml  # PyYAML: a dependency of huggingface_hub, declared in pyproject

    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:  # e.g. `iters: [1`: the parser's message carries the line and column
        raise ValueError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
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
        try:
            target[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)}); e.g. "
                             "data.crop_size=[512,512] (quoted for the shell)") from None
    return values


def _yaml_problem(err: Exception) -> str:
    """'line L, column C: PROBLEM (CONTEXT at line L, column C)' of a PyYAML error, without the excerpts it
    quotes (of a string that PyYAML calls "<unicode string>")."""
    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem is None:  # not a MarkedYAMLError
        return str(err)
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        problem += f" ({context}" + (f" at {at(context_mark)})" if context_mark is not None else ")")
    return f"{at(mark)}: {problem}" if mark is not None else problem


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    values = read_config_file(path) if path else {}
    return config_from_dict(apply_overrides(values, list(overrides)))
