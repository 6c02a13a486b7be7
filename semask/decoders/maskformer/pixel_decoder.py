"""Pixel decoders: MaskFormer's FPN (`BasePixelDecoder`), Mask2Former's `MSDeformAttnPixelDecoder`, and the FaPN
variants `PixelFANDecoder` / `MSDeformAttnPixelFANDecoder` of SeMask-FaPN.

Each takes the four backbone maps (res2..res5, strides 4..32) and returns
(mask_features [B, mask_dim, H/4, W/4], multi-scale features: 3 maps, lowest resolution first).
Module names follow the original (`adapter_i`, `layer_i`, `align_i`, `input_proj`, `transformer`, `mask_features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import autocast_enabled
from .common import Conv2dNorm, group_norm, position_embedding_sine
from .dcn import FeatureAlign
from .ms_deform_attn import MSDeformAttnEncoder


class FPNPixelDecoder(nn.Module):
    """MaskFormer `BasePixelDecoder` (top-down FPN with nearest upsampling, GN, 3×3 mask conv); with `fapn=True`,
    SeMask's `PixelFANDecoder` (each top-down merge goes through a `FeatureAlign` before the output conv)."""

    def __init__(self, in_channels: Sequence[int], *, conv_dim: int, mask_dim: int, fapn: bool = False) -> None:
        super().__init__()
        self.fapn = fapn
        n = len(in_channels)
        for i, ch in enumerate(in_channels):
            idx = i + 1
            if i == n - 1:
                self.add_module(f"layer_{idx}", Conv2dNorm(ch, conv_dim, 3, bias=False, norm=group_norm(conv_dim),
                                                           activation=F.relu))
                continue
            self.add_module(f"adapter_{idx}", Conv2dNorm(ch, conv_dim, 1, bias=False, norm=group_norm(conv_dim)))
            out_norm = group_norm(conv_dim)
            if fapn:  # the GroupNorm is shared with the align block's offset conv (two keys, one module)
                self.add_module(f"align_{idx}", FeatureAlign(conv_dim, out_norm))
            self.add_module(f"layer_{idx}", Conv2dNorm(conv_dim, conv_dim, 3, bias=False, norm=out_norm,
                                                       activation=F.relu))
        self.num_levels = n
        self.mask_features = Conv2dNorm(conv_dim, mask_dim, 3)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        multi_scale: list[torch.Tensor] = []
        y = getattr(self, f"layer_{self.num_levels}")(feats[-1])
        multi_scale.append(y)
        for i in range(self.num_levels - 2, -1, -1):
            cur = getattr(self, f"adapter_{i + 1}")(feats[i])
            y = cur + F.interpolate(y, size=cur.shape[-2:], mode="nearest")
            if self.fapn:
                y = getattr(self, f"align_{i + 1}")(cur, y)
            y = getattr(self, f"layer_{i + 1}")(y)
            if len(multi_scale) < 3:
                multi_scale.append(y)
        return self.mask_features(y), multi_scale


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former pixel decoder: a deformable-attention encoder over res3..res5 (input_proj: 1×1 conv + GN, sine
    positions + level embeddings), then FPN levels down to stride 4 (bilinear top-down) and a 1×1 mask conv.
    `fapn=True` gives SeMask's `MSDeformAttnPixelFANDecoder` (a `FeatureAlign` in each FPN level)."""

    def __init__(self, in_channels: Sequence[int], *, conv_dim: int, mask_dim: int, nheads: int, enc_layers: int,
                 dim_feedforward: int = 1024, dropout: float = 0.0, n_points: int = 4, fapn: bool = False) -> None:
        super().__init__()
        self.fapn = fapn
        self.num_fpn_levels = 1  # common stride 4, transformer features from stride 8: log2(8) - log2(4)
        trans_channels = list(in_channels[self.num_fpn_levels:])
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, conv_dim, 1), nn.GroupNorm(32, conv_dim)) for ch in trans_channels[::-1])
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnEncoder(conv_dim, n_heads=nheads, num_layers=enc_layers, d_ffn=dim_feedforward,
                                               dropout=dropout, n_levels=len(trans_channels), n_points=n_points)
        self.conv_dim = conv_dim
        self.mask_features = Conv2dNorm(conv_dim, mask_dim, 1)
        for i, ch in enumerate(in_channels[: self.num_fpn_levels]):
            self.add_module(f"adapter_{i + 1}", Conv2dNorm(ch, conv_dim, 1, bias=False, norm=group_norm(conv_dim)))
            out_norm = group_norm(conv_dim)
            if fapn:
                self.add_module(f"align_{i + 1}", FeatureAlign(conv_dim, out_norm))
            self.add_module(f"layer_{i + 1}", Conv2dNorm(conv_dim, conv_dim, 3, bias=False, norm=out_norm,
                                                         activation=F.relu))

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # The original runs this decoder with autocast off (`@autocast(enabled=False)` on both SeMask versions), in
        # float32: in bfloat16 the deformable sampling locations (coordinates in [0, 1]) would be ~0.4 % coarse,
        # about a pixel at stride 8. A model cast to another dtype runs in its own.
        device = feats[0].device.type
        if autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self._forward(feats)
        return self._forward(feats)

    def _forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # The original casts to float32 (its deformable-attention op has no half kernel); here: to the decoder's own
        # dtype, which is that float32 under autocast and lets a model cast to bf16/fp16 run (float32 inputs
        # would not match its weights).
        dtype = self.mask_features.weight.dtype
        trans_feats = [f.to(dtype) for f in feats[self.num_fpn_levels:]][::-1]  # lowest resolution first
        srcs = [proj(x) for proj, x in zip(self.input_proj, trans_feats, strict=True)]
        pos = [position_embedding_sine(x, self.conv_dim // 2) for x in trans_feats]
        memory, shapes = self.transformer(srcs, pos)
        b = memory.shape[0]
        out = [z.transpose(1, 2).reshape(b, -1, h, w)
               for z, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes, strict=True)]
        for i in range(self.num_fpn_levels - 1, -1, -1):
            cur = getattr(self, f"adapter_{i + 1}")(feats[i].to(dtype))
            y = cur + F.interpolate(out[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
            if self.fapn:
                y = getattr(self, f"align_{i + 1}")(cur, y)
            out.append(getattr(self, f"layer_{i + 1}")(y))
        return self.mask_features(out[-1]), out[:3]
