"""Backbones: SeMask Swin (and plain Swin as the same class without semantic layers)."""

from .semantic_layer import SemanticAttention, SemanticLayer
from .swin import SwinBackbone

__all__ = ["SemanticAttention", "SemanticLayer", "SwinBackbone"]
