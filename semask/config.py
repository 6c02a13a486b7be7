"""`ModelConfig`: every architecture field of a semask model, including the original's quirks made explicit."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

DECODERS = ("fpn", "segformer", "maskformer", "mask2former", "fapn_mask2former", "msfapn_mask2former")
BACKBONES = ("swin", "mit")
SEMANTIC_KINDS = ("window", "global")
SEMANTIC_INITS = ("mmseg", "detectron2")
# "eager": the original formulas (shift mask -100); "math": the same unfused formulas with a shift-mask value that
# underflows to exact 0 (denormal-safe); "sdpa": fused `scaled_dot_product_attention` where it pays.
ATTN_IMPLS = ("sdpa", "eager", "math")

# Value rules checked whenever a config is built or replaced: the builders would otherwise fail deep inside torch
# (num_classes=2.5) or build a model that cannot train (num_classes=0, drop_path_rate=2.0).
_POSITIVE_INTS = ("embed_dim", "num_classes", "patch_size", "in_chans", "decoder_channels", "size_divisibility",
                  "conv_dim", "mask_dim", "hidden_dim", "num_queries", "nheads", "dim_feedforward",
                  "enc_dim_feedforward", "enc_points")
_OPTIONAL_POSITIVE_INTS = ("window_size", "sem_window_size", "sem_num_classes")  # or None (see the docstring)
_LAYER_COUNTS = ("dec_layers", "enc_layers")  # 0 builds (Mask2Former DEC_LAYERS=1 builds no extra layer)
_RATES = ("drop_path_rate", "decoder_dropout")  # probabilities in [0, 1)
# Per-stage int lists and their minimum: a Swin / MiT stage may have depth 0, every other entry is a size.
_STAGE_INTS = {"depths": 0, "num_heads": 1, "embed_dims": 1, "mit_sr_ratios": 1, "mit_patch_sizes": 1,
               "mit_strides": 1, "num_sem_blocks": 1}


def _check_int(name: str, value: Any, low: int) -> int:
    """`value` as an int >= `low`; a ValueError naming the field otherwise (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"model config field {name} must be a whole number (int) >= {low}, got {value!r} "
                         f"({type(value).__name__})")
    if value < low:
        raise ValueError(f"model config field {name} must be >= {low}, got {value!r}")
    return int(value)  # numpy / torch ints -> int (JSON-serialisable)


def _check_float(name: str, value: Any, low: float, high: float | None = None) -> float:
    """`value` as a float in [low, high), or > low without `high` (a ratio); a ValueError naming the field."""
    ok_type = isinstance(value, numbers.Real) and not isinstance(value, bool)
    in_range = ok_type and (low <= value < high if high is not None else value > low)
    if not in_range:
        bound = f"in [{low}, {high})" if high is not None else f"> {low}"
        raise ValueError(f"model config field {name} must be a number {bound}, got {value!r}")
    return float(value)


def _check_stage_ints(name: str, value: Any, low: int) -> tuple[int, ...]:
    """A list / tuple of ints >= `low` as a tuple (lists come from JSON)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"model config field {name} must be a non-empty list of ints (one per stage), "
                         f"got {value!r}")
    return tuple(_check_int(f"{name}[{i}]", v, low) for i, v in enumerate(value))


def _checked_fields(c: ModelConfig) -> dict[str, Any]:
    """The type- and range-checked values of the numeric fields of `c`, normalised (ints, floats, tuples)."""
    out: dict[str, Any] = {name: _check_int(name, getattr(c, name), 1) for name in _POSITIVE_INTS}
    out.update({name: _check_int(name, getattr(c, name), 1) for name in _OPTIONAL_POSITIVE_INTS
                if getattr(c, name) is not None})
    out.update({name: _check_int(name, getattr(c, name), 0) for name in _LAYER_COUNTS})
    out.update({name: _check_float(name, getattr(c, name), 0.0, 1.0) for name in _RATES})
    out["mlp_ratio"] = _check_float("mlp_ratio", c.mlp_ratio, 0.0)
    for name, low in _STAGE_INTS.items():
        value = getattr(c, name)
        if name == "num_sem_blocks" and not isinstance(value, (list, tuple)):
            out[name] = _check_int(name, value, low)  # one count for every stage
        elif value is not None:
            out[name] = _check_stage_ints(name, value, low)
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Swin or MiT (SeMask) backbone + decoder segmentor.

    `semantic_attention` is the quirk the weights cannot tell: per stage "window" (non-overlapping windows of
    `sem_window_size`) or "global" (all tokens) semantic attention; None means plain Swin (no semantic layers).
    `sem_num_classes` is the class count of the semantic layers (None: same as `num_classes`); the released
    COCO-Stuff-10k configs differ here (150 vs 171, quirk Q1), so it is its own field.

    Mask-classification decoders (`decoder` "maskformer", "mask2former", "fapn_mask2former", "msfapn_mask2former")
    use the fields below `size_divisibility` (names of the original detectron2 config): `dec_layers` is the number
    of transformer decoder layers actually built (Mask2Former's DEC_LAYERS minus 1), `enc_*` configure the
    deformable-attention encoder of the Mask2Former pixel decoders, `decoder_dropout` is the transformer dropout.

    `backbone="mit"` (SegFormer's Mix Transformer) uses `embed_dims` (per-stage widths; Swin doubles `embed_dim`),
    `mit_sr_ratios` (key/value spatial reduction), `mit_patch_sizes` / `mit_strides` (overlapping patch embeddings)
    and has no attention window (`window_size=None`); `semantic_attention`/`sem_window_size` mean the same as for Swin.
    """

    arch: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int | None
    num_classes: int
    semantic_attention: tuple[str, ...] | None = None
    sem_window_size: int | None = None
    sem_num_classes: int | None = None
    num_sem_blocks: int | tuple[int, ...] = 1  # SemanticAttention blocks per stage (the original allows a list)
    # How fresh semantic layers start (weights loaded over them do not care): "mmseg" (SeMask-FPN: trunc-normal .02
    # on every Linear) or "detectron2" (the MaskFormer-family backbones: kaiming-normal q/k/v, zero mlp_res)
    semantic_init: str = "mmseg"
    mlp_ratio: float = 4.0
    patch_size: int = 4
    in_chans: int = 3
    drop_path_rate: float = 0.3
    decoder: str = "fpn"
    decoder_channels: int = 256
    decoder_dropout: float = 0.1
    attn_impl: str = "sdpa"
    size_divisibility: int = 32
    conv_dim: int = 256
    mask_dim: int = 256
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    enc_layers: int = 6
    enc_dim_feedforward: int = 1024
    enc_points: int = 4
    backbone: str = "swin"
    embed_dims: tuple[int, ...] | None = None
    mit_sr_ratios: tuple[int, ...] | None = None
    mit_patch_sizes: tuple[int, ...] | None = None
    mit_strides: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        """Checks every field (also on `replace` / `from_dict`) and normalises lists (JSON) to tuples."""
        for name, value in _checked_fields(self).items():
            object.__setattr__(self, name, value)  # frozen: normalised in place
        self._check_semantic_attention()
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.decoder == "maskformer" and self.dec_layers < 1:  # its output stacks the decoder layers'
            raise ValueError(f"model config field dec_layers must be >= 1 for decoder='maskformer', got "
                             f"{self.dec_layers}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone == "swin" and not self.window_size:
            raise ValueError("a Swin backbone needs window_size")
        if self.semantic_init not in SEMANTIC_INITS:
            raise ValueError(f"model config field semantic_init must be one of {SEMANTIC_INITS}, got "
                             f"{self.semantic_init!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"model config field attn_impl must be 'sdpa', 'eager' or 'math', got {self.attn_impl!r}")
        self._check_widths()

    def _check_widths(self) -> None:
        """Widths that must split evenly (else the failure comes deep inside torch, naming no field)."""
        if self.backbone == "swin":
            for i, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads, strict=False)):
                if dim % heads:
                    raise ValueError(f"model config field num_heads: stage {i} has {dim} channels (embed_dim * 2**"
                                     f"{i}), not divisible by its {heads} heads; got num_heads={self.num_heads}")
        if self.mask_classification:
            if self.hidden_dim % self.nheads:
                raise ValueError(f"model config fields hidden_dim ({self.hidden_dim}) must be divisible by nheads "
                                 f"({self.nheads})")
            if self.conv_dim % 32:  # detectron2's GroupNorm(32, conv_dim) in the pixel decoder
                raise ValueError(f"model config field conv_dim must be a multiple of 32 (GroupNorm with 32 groups), "
                                 f"got {self.conv_dim}")
        if self.backbone == "mit":
            missing = [k for k in ("embed_dims", "mit_sr_ratios", "mit_patch_sizes", "mit_strides")
                       if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a MiT backbone needs {missing} (see the mit_* entries of semask.registry.ARCHS)")

    def _check_semantic_attention(self) -> None:
        """None or one of SEMANTIC_KINDS per stage (the stage count is checked when the backbone is built)."""
        value = self.semantic_attention
        if value is None:
            return
        if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                or not all(v in SEMANTIC_KINDS for v in value):
            raise ValueError(f"model config field semantic_attention must be None or a list of {SEMANTIC_KINDS} "
                             f"(one per stage), got {value!r}")
        object.__setattr__(self, "semantic_attention", tuple(value))

    @property
    def semantic(self) -> bool:
        return self.semantic_attention is not None

    @property
    def mask_classification(self) -> bool:
        """A MaskFormer-family decoder (detectron2 originals) rather than a per-pixel head (FPN / SegFormer, mmseg)."""
        return self.decoder not in ("fpn", "segformer")

    @property
    def deformable_encoder(self) -> bool:
        """The pixel decoder has a deformable-attention encoder (Mask2Former, MSFaPN), whose tensors show `nheads`."""
        return self.decoder in ("mask2former", "msfapn_mask2former") and self.enc_layers > 0

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channel width of each backbone stage."""
        if self.embed_dims is not None:
            return self.embed_dims
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    @property
    def sem_blocks_per_stage(self) -> tuple[int, ...]:
        n = self.num_sem_blocks
        return tuple(n) if isinstance(n, tuple) else (n,) * len(self.depths)

    @property
    def prior_classes(self) -> int:
        return self.sem_num_classes if self.sem_num_classes is not None else self.num_classes

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes`; unknown field names raise a TypeError listing the valid ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown model config field(s) {sorted(unknown)}; valid: "
                            f"{sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config has unknown field(s) {sorted(unknown)}; written by a newer semask?")
        return cls(**d)
