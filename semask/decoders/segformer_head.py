"""SegFormer's all-MLP decode head (`SegFormerHead` of the original mmseg code / `SegformerDecodeHead` of transformers).

Per stage a Linear to `channels` (`linear_c.i`), bilinear resize to the stride-4 size, concatenation in the order
stage 3, 2, 1, 0 (as the original), then `linear_fuse` (a 1×1 `ConvModule`: conv without bias -> BatchNorm -> ReLU),
dropout and the 1×1 classifier `linear_pred`. Returns stride-4 logits, the same contract as the Semantic-FPN head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .fpn import ConvModule, _resize


class MLPProjection(nn.Module):
    """`linear_c.i.proj`: a Linear over channels of a [B, C, H, W] map -> [B, channels, H, W]."""

    def __init__(self, in_ch: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_ch, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SegFormerHead(nn.Module):
    """All-MLP decoder. Args: in_channels per stage, channels (256 for MiT-B0/B1, 768 for B2-B5), num_classes,
    dropout before the classifier (Dropout2d, as mmseg)."""

    def __init__(self, in_channels: Sequence[int], *, channels: int = 256, num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(MLPProjection(c, channels) for c in in_channels)
        self.linear_fuse = ConvModule(channels * len(in_channels), channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # NVlabs' SegFormer (mmseg): ConvModule kaiming(fan_out, relu), BN 1/0. linear_c and the classifier
        # `linear_pred` keep torch's default: mmseg's BaseDecodeHead.init_weights only draws normal(0, .01) for its
        # `conv_seg`, which SegFormerHead never uses.
        nn.init.kaiming_normal_(self.linear_fuse.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.linear_fuse.bn.weight)
        nn.init.zeros_(self.linear_fuse.bn.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-stage features [B, C_i, H_i, W_i] -> logits [B, K, H_0, W_0] at stride 4."""
        size = feats[0].shape[-2:]
        outs = [_resize(proj(f), size) for proj, f in zip(self.linear_c, feats, strict=True)]
        x = self.linear_fuse(torch.cat(outs[::-1], dim=1))  # [B, channels, H_0, W_0]
        return self.linear_pred(self.dropout(x))
