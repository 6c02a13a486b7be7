"""Backbones: SeMask Swin and SeMask MiT (and the plain ones as the same classes without semantic layers)."""

from .mit import MiTBackbone
from .semantic_layer import SemanticAttention, SemanticLayer
from .swin import SwinBackbone

__all__ = ["MiTBackbone", "SemanticAttention", "SemanticLayer", "SwinBackbone"]
