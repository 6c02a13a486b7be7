"""`ModelConfig`: every architecture field of a semask model, including the original's quirks made explicit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DECODERS = ("fpn", "segformer", "maskformer", "mask2former", "fapn_mask2former", "msfapn_mask2former")
BACKBONES = ("swin", "mit")


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
        for name in ("depths", "num_heads", "semantic_attention", "embed_dims", "mit_sr_ratios", "mit_patch_sizes",
                     "mit_strides"):  # lists from JSON -> tuples
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.num_sem_blocks, list):
            object.__setattr__(self, "num_sem_blocks", tuple(self.num_sem_blocks))
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone == "swin" and not self.window_size:
            raise ValueError("a Swin backbone needs window_size")
        if self.backbone == "mit":
            missing = [k for k in ("embed_dims", "mit_sr_ratios", "mit_patch_sizes", "mit_strides")
                       if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a MiT backbone needs {missing} (see the mit_* entries of semask.registry.ARCHS)")

    @property
    def semantic(self) -> bool:
        return self.semantic_attention is not None

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
