"""The SeMask semantic layer: the paper's contribution, exactly as the original code computes it.

Per stage, after the Swin blocks: ``x <- LN(x)``; then, in non-overlapping (never shifted) windows or over all tokens,
``Q = mlp_cls_q(x)`` (the semantic-prior map), ``A = softmax(Q @ mlp_cls_k(x)^T)`` (single head, no 1/sqrt(d)
scaling), ``out = x + gamma * mlp_res(A @ mlp_v(x))``. The residual is the *normalised* x (quirk Q4 of the original).
Windowed layers zero-pad right/bottom after the LayerNorm and do not mask the pad tokens (quirk Q5): border outputs
depend on the padding, which is what the released weights were trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..config import ATTN_IMPLS, SEMANTIC_INITS
from ..layers import from_windows, is_tracing, to_windows


class SemanticAttention(nn.Module):
    """One SeMask attention block (`class_injection.j` in the original checkpoints)."""

    def __init__(self, dim: int, num_classes: int, *, proj_drop: float = 0.1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B', N, C] (already LayerNorm-ed) -> (prior logits [B', N, K], features [B', N, C])."""
        # The three projections as one matmul over x (weights concatenated per call: tiny next to the [B', N, *]
        # maps): one pass over the tokens and one bias broadcast instead of three; the same values bit for bit.
        # q [B', N, K] (the semantic-prior map), k [B', N, K], v [B', N, C]: strided views, uncopied.
        projs = (self.mlp_cls_q, self.mlp_cls_k, self.mlp_v)
        qkv = F.linear(x, torch.cat([m.weight for m in projs]), torch.cat([m.bias for m in projs]))
        q, k, v = qkv.split([m.out_features for m in projs], dim=-1)
        # The plain formula on every device, whatever the model's `attn_impl`: SDPA has no fused kernel for q/k
        # width K (150, 171, 19 classes) != v width C. On CPU it runs its math kernel, 1.1-2x slower than this
        # (benchmarks/RESULTS.md); on CUDA flash needs equal widths and memory-efficient widths aligned to 8, so it
        # would run the math kernel too (q/k zero-padded to 152 might reach memory-efficient: unmeasured, no GPU).
        y = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        y = self.proj_drop(self.mlp_res(y))
        if not torch.is_grad_enabled():  # no graph: the same two ops, in place (no fresh [B', N, C] maps)
            return q, y.mul_(self.gamma).add_(x)
        return q, x + self.gamma * y


class SemanticLayer(nn.Module):
    """LayerNorm + SemanticAttention blocks over windows of `window_size` tokens, or over all tokens if None.

    `recompute` (default on): under autograd the layer keeps only its input and recomputes itself in backward
    (`torch.utils.checkpoint`, RNG replayed for the dropout, so gradients are the same bit for bit). Its saved
    activations (the K-class q/k maps, attention, padded/partitioned copies: ~0.2 GiB at batch 2, 512², SeMask-T)
    cost ~2.5 % of a step to recompute (benchmarks/RESULTS.md). Set `layer.recompute = False` to keep them.
    """

    recompute = True

    def __init__(self, dim: int, num_classes: int, *, window_size: int | None, num_blocks: int = 1) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_sem_blocks must be >= 1, got {num_blocks}")
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList(
            SemanticAttention(dim, num_classes) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, H, W, C] -> (features [B, H, W, C], prior logits [B, H, W, K])."""
        if self.recompute and torch.is_grad_enabled() and not is_tracing() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = x.shape
        x = self.norm1(x)
        if self.window_size is None:
            tokens = x.reshape(b, h * w, c)
        else:
            # pad AFTER the norm (pad tokens are exact zeros, as the original), partition; never shifted.
            tokens = to_windows(x, self.window_size)  # [B * nW, ws * ws, C]
        q = tokens
        for blk in self.class_injection:  # chained; the last block's Q is the prior map (as the original)
            q, tokens = blk(tokens)
        if self.window_size is None:
            return tokens.view(b, h, w, c), q.view(b, h, w, -1)
        out = from_windows(tokens, self.window_size, 0, h, w)
        prior = from_windows(q, self.window_size, 0, h, w)
        return out, prior


def build_semantic_layers(dims: Sequence[int], semantic_attention: Sequence[str] | None, *,
                          sem_window_size: int | None, sem_num_classes: int | None,
                          num_sem_blocks: int | Sequence[int], attn_impl: str) -> list[SemanticLayer | None]:
    """One SemanticLayer per stage (None for plain backbones), validated: the per-stage config fields of any SeMask
    backbone (Swin, MiT) mean the same thing, so they are checked and built in one place."""
    n = len(dims)
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
    if semantic_attention is None:
        return [None] * n
    if len(semantic_attention) != n or not set(semantic_attention) <= {"window", "global"}:
        raise ValueError(f"semantic_attention needs one of 'window'/'global' per stage ({n}), "
                         f"got {tuple(semantic_attention)}")
    if sem_num_classes is None or ("window" in semantic_attention and not sem_window_size):
        raise ValueError("a SeMask backbone needs sem_num_classes and, for windowed stages, sem_window_size")
    blocks = [num_sem_blocks] * n if isinstance(num_sem_blocks, int) else list(num_sem_blocks)
    if len(blocks) != n:
        raise ValueError(f"num_sem_blocks needs one count per stage ({n}), got {num_sem_blocks}")
    return [SemanticLayer(dim, sem_num_classes, num_blocks=nb,
                          window_size=sem_window_size if kind == "window" else None)
            for dim, kind, nb in zip(dims, semantic_attention, blocks, strict=True)]


def init_semantic_layers(module: nn.Module, rule: str) -> None:
    """Re-initialise the semantic layers in `module` by the original's rule, after the backbone's own init: "mmseg"
    keeps it (mmseg's `init_weights` runs trunc-normal .02 over the whole backbone); "detectron2" is what the
    MaskFormer-family backbones leave (their `init_weights` is never called, so only `SemanticAttention`'s
    constructor init runs): kaiming-normal q/k/v/res weights, zero biases, then a zero `mlp_res` weight. With
    `gamma` 0 as well, the semantic residual has no gradient there: only the prior maps train, as in the original."""
    if rule == "mmseg":
        return
    if rule not in SEMANTIC_INITS:
        raise ValueError(f"semantic_init must be one of {SEMANTIC_INITS}, got {rule!r}")
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SemanticAttention):
                for linear in (m.mlp_cls_q, m.mlp_cls_k, m.mlp_v, m.mlp_res):
                    nn.init.kaiming_normal_(linear.weight)
                    nn.init.zeros_(linear.bias)
                nn.init.zeros_(m.mlp_res.weight)
                nn.init.zeros_(m.gamma)


def init_transformer_weights(m: nn.Module) -> None:
    """What every SeMask backbone shares (mmseg / SegFormer): trunc-normal(.02) Linear weights (the semantic layers'
    too), zero biases, LayerNorm 1/0, semantic-attention gamma 0 (the semantic path starts as a LayerNorm)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, SemanticAttention):
        nn.init.zeros_(m.gamma)
