"""Small pieces shared by the mask-classification decoders (MaskFormer / Mask2Former / FaPN).

Names follow detectron2 so the original checkpoints load by copy: a conv with its norm as the submodule `norm`
(detectron2's `Conv2d(..., norm=, activation=)`), `MLP.layers.i`, and the sine position encoding of DETR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Conv2dNorm(nn.Conv2d):
    """detectron2 `Conv2d`: conv -> optional `norm` -> optional activation (keys `weight`, `bias`, `norm.*`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, bias: bool = True,
                 norm: nn.Module | None = None, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)
        self.norm = norm
        self.activation = activation
        c2_xavier_fill(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.activation(x) if self.activation is not None else x


def c2_xavier_fill(m: nn.Module) -> None:
    """fvcore's `c2_xavier_fill`: kaiming-uniform with a=1 on the weight, zero bias."""
    nn.init.kaiming_uniform_(m.weight, a=1)
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)


def group_norm(channels: int) -> nn.GroupNorm:
    """detectron2 `get_norm("GN", C)` = GroupNorm(32, C)."""
    return nn.GroupNorm(32, channels)


class MLP(nn.Module):
    """Linear layers with ReLU between them (keys `layers.i`)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def position_embedding_sine(x: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised sine encoding (no padding mask, as every caller here) -> [B, 2 * num_pos_feats, H, W]."""
    b, _, h, w = x.shape
    ones = torch.ones(b, h, w, device=x.device, dtype=torch.float32)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)


def semantic_head(priors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The D2 SeMask `SemanticHead` (no parameters): stage i goes through i successive ×2 bilinear upsamplings,
    is resized to stage 0's size and summed, then the sum is upsampled ×4 — all with align_corners=True (the mmseg
    prior decoder uses align_corners=False; quirk Q7). [B, K, H/4, W/4] per stage -> [B, K, H, W]."""
    out = priors[0]
    for i, prior in enumerate(priors[1:], start=1):
        for _ in range(i):
            prior = F.interpolate(prior, scale_factor=2, mode="bilinear", align_corners=True)
        out = out + F.interpolate(prior, size=out.shape[-2:], mode="bilinear", align_corners=True)
    h, w = out.shape[-2:]
    return F.interpolate(out, size=(h * 4, w * 4), mode="bilinear", align_corners=True)
