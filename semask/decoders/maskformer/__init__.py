"""Mask-classification decoders: MaskFormer, Mask2Former, FaPN- and MSFaPN-Mask2Former (pure PyTorch)."""

from .common import semantic_head
from .dcn import DCN, FeatureAlign, deform_conv2d_torch, modulated_deform_conv2d
from .model import MASK_DECODERS, MaskFormerHead, MaskFormerSegmentor, semantic_inference
from .ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = ["DCN", "MASK_DECODERS", "FeatureAlign", "MSDeformAttn", "MaskFormerHead", "MaskFormerSegmentor",
           "deform_conv2d_torch", "modulated_deform_conv2d", "ms_deform_attn", "semantic_head", "semantic_inference"]
