"""Mix Transformer (MiT, SegFormer's backbone), with an optional SeMask semantic layer per stage.

Stage i: overlapping patch embedding (conv k7/s4 for stage 0, k3/s2 after, padding k//2, then LayerNorm), `depth_i`
blocks of efficient self-attention (keys/values spatially reduced by a k=s=`sr_ratio` conv + LayerNorm) and Mix-FFN
(fc1 -> depth-wise 3×3 conv -> GELU -> fc2), then — SeMask only — the semantic layer, then the stage norm. The normed
map is both the stage's output and the next stage's input (unlike Swin, where the next stage takes the pre-norm map).
Numerics follow Hugging Face transformers' `SegformerModel` (LayerNorm eps 1e-5 everywhere; the original NVlabs code
uses 1e-6 inside the blocks); the converter in `semask.convert.segformer` maps its weights onto these names.

Where the semantic layer sits: the paper's SeMask block for MiT is "the MiT layer (Efficient Self-Attention) followed
by the same Semantic Layer", i.e. after the stage's blocks and before the stage norm, as for Swin. MiT has no attention
windows, so whether a stage's semantic attention is windowed or global is a config choice (`semantic_attention`,
`sem_window_size`); the registered models use the Swin ADE20K layout W W G G with 7×7 windows, see `registry.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from ..layers import add_residual, check_image_batch, drop_path_rates, gelu, is_tracing
from .semantic_layer import SemanticLayer, build_semantic_layers, init_semantic_layers, init_transformer_weights


class OverlapPatchEmbed(nn.Module):
    """Conv(k, stride s, padding k//2) + LayerNorm: [B, C_in, H, W] -> tokens [B, ceil(H/s)·ceil(W/s), C]."""

    def __init__(self, in_chans: int, dim: int, *, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # [B, H*W, C]


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a `sr_ratio`-times spatially reduced map (SegFormer)."""

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)  # floor on sizes not divisible by sr_ratio
            self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_impl = attn_impl

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x [B, N, C] (N = h*w) -> [B, N, C]."""
        b, n, c = x.shape
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)  # [B, N', C]
            kv = self.norm(kv)
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)  # [B, nH, N, d]
        k = self.k(kv).view(b, kv.shape[1], self.num_heads, -1).transpose(1, 2)  # [B, nH, N', d]
        v = self.v(kv).view(b, kv.shape[1], self.num_heads, -1).transpose(1, 2)
        if self.attn_impl == "eager":
            y = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """fc1 -> depth-wise 3×3 conv (positional information, no position embedding) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)  # [B, N, hidden]
        return self.fc2(gelu(x))  # in place on the conv's fresh output without autograd


class MiTBlock(nn.Module):
    """Pre-norm efficient self-attention + Mix-FFN, both residual with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int, mlp_ratio: float, drop_path: float,
                 attn_impl: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio=sr_ratio, attn_impl=attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = add_residual(x, self.drop_path(self.attn(self.norm1(x), h, w)))
        return add_residual(x, self.drop_path(self.mlp(self.norm2(x), h, w)))


class MiTStage(nn.Module):
    """`layers.i`: patch embedding, MiT blocks, the semantic layer (SeMask), the stage norm."""

    def __init__(self, in_chans: int, dim: int, depth: int, num_heads: int, *, patch_size: int, stride: int,
                 sr_ratio: int, mlp_ratio: float, drop_path: Sequence[float], semantic: SemanticLayer | None,
                 attn_impl: str) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, patch_size=patch_size, stride=stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio=sr_ratio, mlp_ratio=mlp_ratio, drop_path=drop_path[i],
                     attn_impl=attn_impl)
            for i in range(depth))
        if semantic is not None:
            self.semantic_layer = semantic
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, C_in, H, W] -> (stage output [B, C, H', W'], prior [B, K, H', W'] or None)."""
        x, h, w = self.patch_embed(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, h, w, use_reentrant=False)
            else:
                x = blk(x, h, w)
        b, _, c = x.shape
        prior = None
        if hasattr(self, "semantic_layer"):
            grid, prior = self.semantic_layer(x.reshape(b, h, w, c))  # [B, H, W, C], [B, H, W, K]
            x = grid.reshape(b, h * w, c)
            prior = prior.permute(0, 3, 1, 2).contiguous()
        x = self.norm(x).transpose(1, 2).reshape(b, c, h, w)
        return x.contiguous(), prior


class MiTBackbone(nn.Module):
    """(SeMask) MiT: NCHW image batch -> (per-stage NCHW features at strides 4, 8, 16, 32, per-stage priors).

    `semantic_attention` gives, per stage, "window" (windows of `sem_window_size`) or "global" semantic attention;
    None builds the plain MiT of SegFormer (no semantic layers, no priors).
    """

    def __init__(self, *, embed_dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 sr_ratios: Sequence[int], patch_sizes: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2), mlp_ratio: float = 4.0, in_chans: int = 3,
                 drop_path_rate: float = 0.1, semantic_attention: Sequence[str] | None = None,
                 sem_window_size: int | None = None, sem_num_classes: int | None = None,
                 num_sem_blocks: int | Sequence[int] = 1, attn_impl: str = "sdpa",
                 semantic_init: str = "mmseg") -> None:
        super().__init__()
        n = len(depths)
        per_stage = dict(embed_dims=embed_dims, num_heads=num_heads, sr_ratios=sr_ratios, patch_sizes=patch_sizes,
                         strides=strides)
        bad = {k: tuple(v) for k, v in per_stage.items() if len(v) != n}
        if bad:
            raise ValueError(f"depths {tuple(depths)} has {n} stages but {bad} do not")
        self.in_chans = in_chans
        self.dims = list(embed_dims)
        self.semantic = semantic_attention is not None
        semantic = build_semantic_layers(self.dims, semantic_attention, sem_window_size=sem_window_size,
                                         sem_num_classes=sem_num_classes, num_sem_blocks=num_sem_blocks,
                                         attn_impl=attn_impl)
        self.layers = nn.ModuleList(
            MiTStage(in_chans if i == 0 else self.dims[i - 1], dim, depth, num_heads[i], patch_size=patch_sizes[i],
                     stride=strides[i], sr_ratio=sr_ratios[i], mlp_ratio=mlp_ratio, semantic=semantic[i],
                     drop_path=dpr, attn_impl=attn_impl)
            for i, (dim, depth, dpr) in enumerate(zip(self.dims, depths, drop_path_rates(depths, drop_path_rate),
                                                      strict=True)))
        self.min_size = _min_input_size(patch_sizes, strides, sr_ratios)
        self.apply(_init_weights)
        init_semantic_layers(self, semantic_init)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """x [B, C_in, H, W] -> ([B, C_i, H_i, W_i] per stage with H_0 = ceil(H/4), H_i = ceil(H_{i-1}/2),
        [B, K, H_i, W_i] per stage or [])."""
        check_image_batch(x, self.in_chans)
        if not is_tracing() and min(x.shape[-2:]) < self.min_size:
            # SegFormer has no padding rule: a key/value reduction conv larger than its map fails deep inside
            raise ValueError(f"this MiT needs H and W >= {self.min_size} (each stage's key/value reduction conv must "
                             f"fit its map); got {tuple(x.shape[-2:])}: resize or pad the image")
        feats, priors = [], []
        for layer in self.layers:
            x, prior = layer(x)
            feats.append(x)
            if prior is not None:
                priors.append(prior)
        return feats, priors


def stage_sizes(n: int, patch_sizes: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Side length of each stage's map for an input side `n`: the patch embeddings' conv arithmetic (padding k//2),
    e.g. ceil(n/4), then ceil(./2) per stage for SegFormer's k7/s4, k3/s2."""
    sizes = []
    for k, s in zip(patch_sizes, strides, strict=True):
        n = (n + 2 * (k // 2) - k) // s + 1
        sizes.append(n)
    return sizes


def _min_input_size(patch_sizes: Sequence[int], strides: Sequence[int], sr_ratios: Sequence[int]) -> int:
    """Smallest side length every stage can take: each patch embedding (padding k//2) must leave a map of at least
    `sr_ratio` tokens for the k=s=sr_ratio reduction conv (29 for SegFormer's B0-B5)."""
    def fits(n: int) -> bool:
        return all(m >= max(r, 1) for m, r in zip(stage_sizes(n, patch_sizes, strides), sr_ratios, strict=True))

    return next(n for n in range(1, 1 << 16) if fits(n))


def _init_weights(m: nn.Module) -> None:
    """SegFormer's initialisation: the shared transformer init plus conv weights normal(0, sqrt(2 / fan_out)) with
    zero biases."""
    init_transformer_weights(m)
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
