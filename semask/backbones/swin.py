"""Swin Transformer backbone as the SeMask/mmseg code runs it, with an optional semantic layer per stage.

Written here rather than taken from timm because the numerics must match the original segmentation Swin: features
are zero-padded to a multiple of the window AFTER `norm1` and cropped after attention (pad-then-roll), the shift is
applied even when a stage is smaller than the window, PatchMerging pads odd sizes, and the semantic layer sits
between the blocks and PatchMerging. Parameter names follow the original checkpoints so conversion is a rename.
All tensors inside a stage are channels-last grids [B, H, W, C]; the backbone takes and returns NCHW.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..layers import (
    add_residual,
    check_image_batch,
    constant_tensors,
    drop_path_rates,
    from_windows,
    gelu,
    is_tracing,
    round_up,
    tensor_cache,
    to_windows,
    window_partition,
)
from .semantic_layer import SemanticLayer, build_semantic_layers, init_semantic_layers, init_transformer_weights

MASK_VALUE = -100.0  # the original shift-mask value; the eager path keeps it for parity
# The fused/fast paths use a value whose exp() underflows to an exact 0 in fp32 (anything <= -104 does): exp(-100)
# is a float32 denormal and a masked `softmax @ v` slows 2-9x on CPUs without flush-to-zero. The difference to the
# original is below 1e-40 relative (masked weights exp(-100) ~ 4e-44 vs 0). -1e4 also fits fp16/bf16.
FAST_MASK_VALUE = -1e4


def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] index into the (2w-1)^2 bias table, in the original's order."""
    ar = torch.arange(window, device="cpu")  # always on CPU: a meta-device build still gets the real index
    coords = torch.stack(torch.meshgrid(ar, ar, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # [N, N, 2]
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@tensor_cache
def shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device,
               value: float = MASK_VALUE) -> torch.Tensor:
    """[nW, N, N] additive mask (0 / `value`) for shifted windows of a padded hp x wp grid, as the original builds it.

    Cached per (size, device, value): no per-call rebuilds. Traced code uses `shift_mask_traceable` instead.
    """
    img = torch.zeros(1, hp, wp, 1, device=device)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, window).squeeze(-1)  # [nW, N]
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, value).masked_fill(diff == 0, 0.0)


def shift_mask_traceable(hp: int | torch.SymInt, wp: int | torch.SymInt, window: int, shift: int,
                         device: torch.device, value: float = MASK_VALUE) -> torch.Tensor:
    """The same mask as `shift_mask` from tensor ops only (no Python loop over slices, no cache), so torch.export /
    ONNX programs rebuild it for any (symbolic) padded size."""
    def region(n: int | torch.SymInt) -> torch.Tensor:  # 0 / 1 / 2 for slices [0, -w), [-w, -s), [-s, n)
        ar = torch.arange(n, device=device)
        return (ar >= n - window).to(torch.float32) + (ar >= n - shift).to(torch.float32)

    img = (region(hp)[:, None] * 3 + region(wp)[None, :])[None, :, :, None]  # [1, hp, wp, 1]
    win = window_partition(img, window).squeeze(-1)  # [nW, N]
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, value), torch.zeros_like(diff))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, *, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_impl = attn_impl
        self._bias_cache: dict[tuple, tuple[tuple[torch.Tensor | None, ...], torch.Tensor]] = {}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # The index is not in checkpoints (non-persistent, as the original's): rebuild it, so a model built on the
        # meta device and materialised with `to_empty()` gets a valid one with its weights. New weights: no cached bias.
        with torch.no_grad():
            if not self.relative_position_index.is_meta:
                self.relative_position_index.copy_(relative_position_index(self.window_size))
        self._bias_cache.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_bias_cache": {}}  # copies / pickles rebuild it for their own weights

    def relative_bias(self) -> torch.Tensor:
        """[nH, N, N] relative-position bias."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def combined_bias(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """[nW or 1, nH, N, N] bias + shift mask, built once per (mask, dtype) and reused while weights are fixed.

        Not cached while the table takes gradients, nor under torch.compile / export / tracing (the cache is a Python
        dict keyed by `data_ptr`, which a traced program must not bake in). On CUDA the last dim is padded to a
        multiple of 8 in storage (a sliced view is returned): the memory-efficient SDPA kernel, the only fused CUDA
        kernel that takes a learnable bias, otherwise copies the bias on every call.
        """
        table = self.relative_position_bias_table
        cacheable = not (torch.is_grad_enabled() and table.requires_grad) and not is_tracing()
        key = None
        index = self.relative_position_index
        if cacheable:
            # the table's storage and version: a reassigned table (load_state_dict(assign=True), `p.data = ...`) or an
            # in-place update misses; the entry holds the tensors, so their addresses cannot be reused meanwhile
            key = (None if mask is None else (mask.data_ptr(), mask.shape), table.device, dtype,
                   table.data_ptr(), table._version, index.data_ptr(), index._version)
            if key in self._bias_cache:
                return self._bias_cache[key][1]
        # A cached bias is built outside inference mode: a later step with grad (e.g. frozen tables, trained q/k)
        # hands it to SDPA, which saves it for backward (see `semask.layers.tensor_cache`). Cached means no grad.
        with constant_tensors() if cacheable else nullcontext():
            bias = self.relative_bias().unsqueeze(0)
            if mask is not None:
                bias = bias + mask.unsqueeze(1)
            n = bias.shape[-1]
            # contiguous first: the table gather leaves the heads innermost in memory, and F.pad keeps that layout
            # (last-dim stride nH: GPU kernels need 1, and the batch>1 view below fails)
            bias = bias.to(dtype).contiguous()
            if bias.is_cuda and n % 8:
                bias = F.pad(bias, (0, 8 - n % 8))[..., :n]
        if cacheable:
            if len(self._bias_cache) >= 16:  # many input sizes: keep the cache bounded
                self._bias_cache.clear()
            self._bias_cache[key] = ((mask, table.detach(), index), bias)  # held: their data_ptrs stay unique
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B * nW, N, C], mask [nW, N, N] or None -> [B * nW, N, C]."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B * nW, nH, N, d]
        if self.attn_impl == "eager":  # the original formula, kept for comparison
            attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_bias().unsqueeze(0)
            if mask is not None:
                nw = mask.shape[0]
                mask = mask.to(attn.dtype)  # the -100 / 0 mask is built in fp32; exact in bf16/fp16 too
                attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, n, n)
            x = attn.softmax(dim=-1) @ v
        else:
            bias = self.combined_bias(mask, q.dtype)  # [nW, nH, N, N] (unshifted: nW = 1)
            nw = bias.shape[0]
            if nw != 1 and nw != bw:
                # Several images: fold windows into the head dimension so one [1, nW*nH, N, N] bias broadcasts
                # over the batch (copies q, k, v). With one image (or no shift) the bias already lines up with the
                # window batch and q, k, v go to the kernel as strided views, uncopied.
                q, k, v = (t.reshape(bw // nw, nw * self.num_heads, n, -1) for t in (q, k, v))
                bias = bias.view(1, -1, n, n)
            # CPU training: SDPA's CPU flash kernel refuses a bias that requires grad and the math kernel it falls
            # back to is slower than the plain formula (benchmarks/RESULTS.md), so use the formula there.
            if self.attn_impl == "math" or (bias.requires_grad and x.device.type == "cpu"):
                x = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1) @ v
            else:
                x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
            x = x.reshape(bw, self.num_heads, n, -1)
        return self.proj(x.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, keys `fc1` / `fc2` as the original."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu(self.fc1(x)))  # in place on fc1's fresh output without autograd


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, padding after `norm1` as the original segmentation Swin."""

    def __init__(self, dim: int, num_heads: int, window_size: int, *, shift: int, mlp_ratio: float,
                 drop_path: float, attn_impl: str) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, attn_impl=attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        _, h, w, _ = x.shape
        ws, s = self.window_size, self.shift
        mask = None
        if s:
            # The eager path keeps the original -100; the others use a value that underflows to exact 0.
            value = MASK_VALUE if self.attn.attn_impl == "eager" else FAST_MASK_VALUE
            hp, wp = round_up(h, ws), round_up(w, ws)
            mask = (shift_mask_traceable if is_tracing() else shift_mask)(hp, wp, ws, s, x.device, value)
        # pad AFTER norm1 (pad tokens are exact zeros), roll by -s, partition; attention; and back.
        y = self.attn(to_windows(self.norm1(x), ws, s), mask)  # [B * nW, ws * ws, C]
        x = add_residual(x, self.drop_path(from_windows(y, ws, s, h, w)))
        return add_residual(x, self.drop_path(self.mlp(self.norm2(x))))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (odd sizes zero-padded) -> LayerNorm(4C) -> Linear(4C -> 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""
        _, h, w, _ = x.shape
        if is_tracing() or h % 2 or w % 2:  # traced: always pad (no guard on symbolic sizes)
            x = F.pad(x, (0, 0, 0, round_up(w, 2) - w, 0, round_up(h, 2) - h))
        # The original's order: [0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2].
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Conv patchify after right/bottom zero-padding to a multiple of the patch size, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, H, W] -> [B, ceil(H/p), ceil(W/p), C]."""
        p = self.patch_size
        h, w = x.shape[-2:]
        if is_tracing() or h % p or w % p:  # traced: always pad (no guard on symbolic sizes)
            x = F.pad(x, (0, round_up(w, p) - w, 0, round_up(h, p) - h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """`layers.i`: Swin blocks, then the semantic layer (SeMask), then PatchMerging (all but the last stage)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, *, mlp_ratio: float,
                 drop_path: Sequence[float], semantic: SemanticLayer | None, downsample: bool,
                 attn_impl: str) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=0 if i % 2 == 0 else window_size // 2,
                      mlp_ratio=mlp_ratio, drop_path=drop_path[i], attn_impl=attn_impl)
            for i in range(depth))
        if semantic is not None:
            self.semantic_layer = semantic
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x [B, H, W, C] -> (stage output [B, H, W, C], prior [B, H, W, K] or None, next input or None)."""
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        prior = None
        if hasattr(self, "semantic_layer"):
            x, prior = self.semantic_layer(x)
        return x, prior, (self.downsample(x) if self.downsample is not None else None)


class SwinBackbone(nn.Module):
    """(SeMask) Swin: NCHW image batch -> (per-stage NCHW features, per-stage NCHW prior logits).

    `semantic_attention` gives, per stage, "window" (windows of `sem_window_size`, never shifted) or "global"
    (all tokens) semantic attention; None builds the plain Swin baseline (no semantic layers, no priors).
    """

    def __init__(self, *, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 mlp_ratio: float = 4.0, patch_size: int = 4, in_chans: int = 3, drop_path_rate: float = 0.3,
                 semantic_attention: Sequence[str] | None = None, sem_window_size: int | None = None,
                 sem_num_classes: int | None = None, num_sem_blocks: int | Sequence[int] = 1,
                 attn_impl: str = "sdpa", semantic_init: str = "mmseg") -> None:
        super().__init__()
        n = len(depths)
        if len(num_heads) != n:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length")
        self.in_chans = in_chans
        self.dims = [embed_dim * 2 ** i for i in range(n)]
        self.semantic = semantic_attention is not None
        semantic = build_semantic_layers(self.dims, semantic_attention, sem_window_size=sem_window_size,
                                         sem_num_classes=sem_num_classes, num_sem_blocks=num_sem_blocks,
                                         attn_impl=attn_impl)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, num_heads[i], window_size, mlp_ratio=mlp_ratio, semantic=semantic[i],
                      drop_path=dpr, downsample=i < n - 1, attn_impl=attn_impl)
            for i, (dim, depth, dpr) in enumerate(zip(self.dims, depths, drop_path_rates(depths, drop_path_rate),
                                                      strict=True)))
        for i, dim in enumerate(self.dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(_init_weights)
        init_semantic_layers(self, semantic_init)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """x [B, C_in, H, W] -> ([B, C_i, H/4/2^i, W/4/2^i] per stage, [B, K, same] per stage or [])."""
        check_image_batch(x, self.in_chans)
        x = self.patch_embed(x)
        feats, priors = [], []
        for i, layer in enumerate(self.layers):
            out, prior, x = layer(x)
            feats.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
            if prior is not None:
                priors.append(prior.permute(0, 3, 1, 2).contiguous())
        return feats, priors


def _init_weights(m: nn.Module) -> None:
    """The mmseg initialisation: the shared transformer init plus trunc-normal(.02) relative-position tables."""
    init_transformer_weights(m)
    if isinstance(m, WindowAttention):
        trunc_normal_(m.relative_position_bias_table, std=0.02)
