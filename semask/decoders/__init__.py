"""Decoders: Semantic-FPN with the parameter-free semantic-prior decoder."""

from .fpn import SemanticFPNHead, prior_decoder

__all__ = ["SemanticFPNHead", "prior_decoder"]
