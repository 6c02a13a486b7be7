"""`Segmentor`: backbone -> decoder (+ the parameter-free prior decoder), and `build_model(config)`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .backbones import MiTBackbone, SwinBackbone
from .config import ModelConfig
from .decoders import SegFormerHead, SemanticFPNHead
from .decoders.fpn import _resize, prior_decoder


class Segmentor(nn.Module):
    """forward(images [B, 3, H, W]) -> {"logits": [B, K, H, W], "prior_logits": [B, K', H, W] (SeMask only)}.

    Keys follow the original mmseg checkpoints (`backbone.*`, `decode_head.*`).
    """

    pretrained_cfg: dict[str, Any] | None = None  # manifest entry of the tag (set by create_model; read by Predictor)

    def __init__(self, backbone: SwinBackbone, decode_head: SemanticFPNHead, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.config = config

    def forward(self, images: torch.Tensor, *, upsample: bool = True,
                priors: bool = True) -> dict[str, torch.Tensor]:
        """`upsample=False` returns the stride-4 maps the decoders produce, before the bilinear resize;
        `priors=False` skips "prior_logits" (the original computes no priors at test time; the per-stage maps stay
        available from `model.backbone`)."""
        feats, stage_priors = self.backbone(images)
        out = {"logits": self.decode_head(feats)}
        if priors and stage_priors:
            out["prior_logits"] = prior_decoder(stage_priors)
        if upsample:
            out = {k: _resize(v, images.shape[-2:]) for k, v in out.items()}
        return out

    def set_attn_impl(self, impl: str) -> None:
        """Switch every attention to "sdpa" (fused), "eager" (the original formula) or "math" (the same unfused
        formula with a denormal-safe shift mask)."""
        from .config import ATTN_IMPLS

        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        for m in self.modules():
            if hasattr(m, "attn_impl"):
                m.attn_impl = impl
        self.config = self.config.replace(attn_impl=impl)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int) -> list[str]:
        """Re-head the model for `num_classes` classes in place (timm's name, e.g. before fine-tuning on your own
        classes); returns the names of the re-initialised tensors. Only the layers whose shape depends on the class
        count are replaced with freshly initialised ones (the classifier, the semantic layers' class projections
        `mlp_cls_q` / `mlp_cls_k`, a mask model's `class_embed`), on the model's device and dtype; every other
        module, weight, flag and hook is kept. Create the optimizer after calling it."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        config = self.config.replace(num_classes=num_classes, sem_num_classes=None)
        # Which layers depend on the class count: compare two builds on the meta device (no memory, no init).
        with torch.device("meta"):
            probe = build_model(config.replace(num_classes=num_classes + 1)).state_dict()
        fresh = build_model(config)  # the new layers, initialised as a new model's are
        replaced = [k for k, v in fresh.state_dict().items() if v.shape != probe[k].shape]
        for name in sorted({k.rpartition(".")[0] for k in replaced}):
            old, new = self.get_submodule(name), fresh.get_submodule(name)
            ref = next(old.parameters())
            new.to(device=ref.device, dtype=ref.dtype).train(old.training).requires_grad_(ref.requires_grad)
            parent, _, attr = name.rpartition(".")
            setattr(self.get_submodule(parent), attr, new)
        self.config = config
        cfg = self.pretrained_cfg
        if cfg and replaced and num_classes != len((cfg.get("classes") or {}).get("names", ())):
            # The record's classes, dataset and tag no longer describe the outputs; the weights' preprocessing
            # (mean/std, test scale) still holds.
            self.pretrained_cfg = {"preprocessing": cfg["preprocessing"]} if cfg.get("preprocessing") else None
        return replaced


def build_model(config: ModelConfig) -> Segmentor:
    """Build an untrained model from a config (ImageNet/original weights are loaded by the callers)."""
    c = config
    backbone = _build_backbone(c)
    if c.mask_classification:  # mask classification (MaskFormer / Mask2Former / FaPN)
        from .decoders.maskformer import MaskFormerHead, MaskFormerSegmentor  # late import: it subclasses Segmentor

        return MaskFormerSegmentor(backbone, MaskFormerHead(backbone.dims, c), c)
    head_cls = SegFormerHead if c.decoder == "segformer" else SemanticFPNHead
    head = head_cls(backbone.dims, channels=c.decoder_channels, num_classes=c.num_classes, dropout=c.decoder_dropout)
    return Segmentor(backbone, head, c)


def _build_backbone(c: ModelConfig) -> SwinBackbone | MiTBackbone:
    """(SeMask) Swin or (SeMask) MiT, as `c.backbone` names."""
    semantic = dict(semantic_attention=c.semantic_attention, sem_window_size=c.sem_window_size,
                    sem_num_classes=c.prior_classes if c.semantic else None, num_sem_blocks=c.num_sem_blocks,
                    attn_impl=c.attn_impl, mlp_ratio=c.mlp_ratio, in_chans=c.in_chans,
                    drop_path_rate=c.drop_path_rate, semantic_init=c.semantic_init)
    if c.backbone == "mit":
        return MiTBackbone(embed_dims=c.stage_dims, depths=c.depths, num_heads=c.num_heads,
                           sr_ratios=c.mit_sr_ratios, patch_sizes=c.mit_patch_sizes, strides=c.mit_strides,
                           **semantic)
    return SwinBackbone(embed_dim=c.embed_dim, depths=c.depths, num_heads=c.num_heads, window_size=c.window_size,
                        patch_size=c.patch_size, **semantic)
