"""Semantic-FPN head (mmseg `FPNHead` / SeMask `BranchFPNHead`) and the parameter-free prior decoder.

Key names follow the original (`scale_heads.i.k.conv|bn`, `conv_seg`) so loading is a copy. The ×2 upsampling is
done in successive steps followed by a resize to the stride-4 size, exactly as the original: on odd sizes this
differs numerically from a single direct resize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import is_tracing


def _up2(x: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear ×2, by output size as mmseg's `Upsample` does."""
    return F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=align_corners)


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    # Traced: always resize (bilinear to the same size is an exact identity), so no guard on symbolic sizes.
    if not is_tracing() and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def prior_decoder(priors: Sequence[torch.Tensor], align_corners: bool = False) -> torch.Tensor:
    """Sum per-stage prior maps [B, K, H/4/2^i, W/4/2^i] into one [B, K, H/4, W/4]: stage i goes through i
    successive ×2 upsamplings, then a resize to stage 0's size (the original 'semantic decoder'; no parameters)."""
    out = priors[0]
    for i, prior in enumerate(priors[1:], start=1):
        for _ in range(i):
            prior = _up2(prior, align_corners)
        out = out + _resize(prior, out.shape[-2:], align_corners)
    return out


class _MaskReLU(torch.autograd.Function):
    """ReLU that keeps a 1-byte mask for backward instead of the 4-byte output (same gradient, bit for bit)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = torch.relu(x)
        ctx.save_for_backward(out > 0)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0)


class ReLU(nn.ReLU):
    """In-place ReLU in inference; in training the mask-saving ReLU (the decoder's stride-4 maps are large)."""

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled() and not is_tracing():
            return _MaskReLU.apply(x)
        return super().forward(x)


class ConvModule(nn.Sequential):
    """k×k conv (no bias, 'same' padding) -> BatchNorm -> ReLU, keyed `conv`, `bn` as mmcv's ConvModule."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = ReLU()


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up2(x)


@contextlib.contextmanager
def _restored_buffers(module: nn.Module) -> Iterator[None]:
    """Run a checkpoint's recompute, then put every buffer back (BatchNorm's running stats and batch count must
    not move twice for one forward; the recompute itself uses the batch statistics, as the first pass did)."""
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


class SemanticFPNHead(nn.Module):
    """Semantic FPN: per-stage conv towers upsampled to stride 4 and summed, then a 1×1 classifier.

    Stage i (stride 4·2^i) gets max(1, i) ConvModules, each followed by ×2 upsampling for i > 0 (keys
    `scale_heads.i.{0,2,4}`). Args: in_channels per stage, channels of the towers, num_classes, dropout before
    the classifier (Dropout2d, as mmseg).

    `grad_checkpointing = True` recomputes the head in backward instead of keeping its activations (~0.16 GiB at
    batch 2, 512², 256 channels); the recompute leaves BatchNorm's running stats alone and replays the dropout
    mask, so outputs, gradients and buffers are the same as without.
    """

    grad_checkpointing = False

    def __init__(self, in_channels: Sequence[int], *, channels: int = 256, num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i, in_ch in enumerate(in_channels):
            layers: list[nn.Module] = []
            for k in range(max(1, i)):
                layers.append(ConvModule(in_ch if k == 0 else channels, channels))
                if i > 0:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-stage features [B, C_i, H_i, W_i] -> logits [B, K, H_0, W_0] at stride 4."""
        if self.grad_checkpointing and torch.is_grad_enabled() and self.training:
            return checkpoint(self._forward, *feats, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), _restored_buffers(self)))
        return self._forward(*feats)

    def _forward(self, *feats: torch.Tensor) -> torch.Tensor:
        # Without autograd the stride-4 sum is accumulated in place (no fresh 256-channel map per stage).
        in_place = not torch.is_grad_enabled()
        out = self.scale_heads[0](feats[0])
        for head, feat in zip(self.scale_heads[1:], feats[1:], strict=True):
            y = _resize(head(feat), out.shape[-2:])
            out = out.add_(y) if in_place else out + y
        return self.conv_seg(self.dropout(out))
