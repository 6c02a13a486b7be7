"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, and the Mask2Former pixel-decoder encoder.

The original runs a compiled CUDA op (`MultiScaleDeformableAttention`); its own "for debug and test" fallback is the
`grid_sample` formulation written here, which needs no extension and runs on any device. Sampling is bilinear with
zero padding at pixel centres (`align_corners=False`): location (0, 0) is the top-left corner of the map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def ms_deform_attn(value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """value [B, S, nH, d] (levels flattened, S = sum H_l W_l), locations [B, Lq, nH, L, P, 2] in [0, 1] (x, y),
    weights [B, Lq, nH, L, P] -> [B, Lq, nH * d]."""
    b, _, nh, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * nh, d, h, w)  # [B * nH, d, H, W]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B * nH, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    w_ = weights.transpose(1, 2).reshape(b * nh, 1, lq, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w_).sum(-1)  # [B * nH, d, Lq]
    return out.view(b, nh * d, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention over `n_levels` maps (keys `sampling_offsets`, `attention_weights`, `value_proj`,
    `output_proj` as the original)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on a ring of directions per head, growing with the point index."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        for lin in (self.attention_weights,):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_in: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """query [B, Lq, C], reference_points [B, Lq, L, 2] (x, y in [0, 1]), value_in [B, S, C] -> [B, Lq, C]."""
        b, lq, _ = query.shape
        nh, nl, npt = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(b, value_in.shape[1], nh, self.d_model // nh)
        offsets = self.sampling_offsets(query).view(b, lq, nh, nl, npt, 2)
        weights = self.attention_weights(query).view(b, lq, nh, nl * npt).softmax(-1).view(b, lq, nh, nl, npt)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)  # [L, 2]
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, shapes, locations, weights))


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + ReLU FFN (keys `self_attn`, `norm1`, `linear1`, `linear2`, `norm2`)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int
                 ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: Sequence[tuple[int, int]]
                ) -> torch.Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, ref, src, shapes)))
        src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class MSDeformAttnEncoder(nn.Module):
    """`transformer.encoder.layers.i` + `transformer.level_embed` of the original pixel decoder (no padding masks:
    the original builds all-False masks, so every valid ratio is 1)."""

    def __init__(self, d_model: int, *, n_heads: int, num_layers: int, d_ffn: int, dropout: float,
                 n_levels: int, n_points: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points) for _ in range(num_layers))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1] -> [1, S, L, 2] (x, y)."""
        refs = []
        for h, w in shapes:
            # arange + 0.5 = the original's linspace(0.5, n - 0.5, n) exactly (its step is exactly 1), and it
            # takes a symbolic n when traced
            ry, rx = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                                    torch.arange(w, dtype=torch.float32, device=device) + 0.5, indexing="ij")
            refs.append(torch.stack((rx.reshape(-1) / w, ry.reshape(-1) / h), -1))
        return torch.cat(refs, 0)[None, :, None].expand(1, -1, len(shapes), 2)

    def forward(self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """srcs/pos per level [B, C, H_l, W_l] -> (memory [B, S, C], level shapes)."""
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                         for i, p in enumerate(pos_embeds)], 1)
        ref = self.reference_points(shapes, src.device).to(src.dtype)
        for layer in self.encoder.layers:
            src = layer(src, pos, ref, shapes)
        return src, shapes
