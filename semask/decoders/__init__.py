"""Decoders: Semantic-FPN and SegFormer's all-MLP head, with the parameter-free semantic-prior decoder."""

from .fpn import SemanticFPNHead, prior_decoder
from .segformer_head import SegFormerHead

__all__ = ["SegFormerHead", "SemanticFPNHead", "prior_decoder"]
