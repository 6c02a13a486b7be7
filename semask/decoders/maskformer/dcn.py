"""Modulated deformable convolution (DCNv2) for FaPN, without a compiled extension.

`torchvision.ops.deform_conv2d` is used when torchvision imports (same offset layout as the original DCNv2 op:
channel 2k is dy and 2k+1 is dx of kernel point k, per deformable group); otherwise `deform_conv2d_torch`, a
`grid_sample` implementation with the same bilinear/zero-outside rule.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import is_tracing
from .common import Conv2dNorm

try:  # an optional dependency: timm pulls it in, but inference must not need it
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
except Exception:  # pragma: no cover - exercised only without torchvision
    _tv_deform_conv2d = None


def deform_conv2d_torch(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        mask: torch.Tensor, *, padding: int = 1, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """x [B, C, H, W], offset [B, 2*G*K, Ho, Wo] (dy, dx per point), mask [B, G*K, Ho, Wo], weight [O, C, kh, kw]."""
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    g = offset.shape[1] // (2 * k)
    dev, dt = x.device, x.dtype
    base_y = torch.arange(ho, device=dev, dtype=dt) * stride - padding
    base_x = torch.arange(wo, device=dev, dtype=dt) * stride - padding
    ky, kx = torch.meshgrid(torch.arange(kh, device=dev, dtype=dt) * dilation,
                            torch.arange(kw, device=dev, dtype=dt) * dilation, indexing="ij")
    off = offset.view(b, g, k, 2, ho, wo)
    py = base_y.view(1, 1, 1, ho, 1) + ky.reshape(1, 1, k, 1, 1) + off[:, :, :, 0]  # [B, G, K, Ho, Wo]
    px = base_x.view(1, 1, 1, 1, wo) + kx.reshape(1, 1, k, 1, 1) + off[:, :, :, 1]
    # pixel coordinate -> grid_sample's [-1, 1] with align_corners=False (pixel centres at (2i + 1) / n - 1)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), -1)  # [B, G, K, Ho, Wo, 2]
    grid = grid.view(b * g, k * ho, wo, 2)
    cols = F.grid_sample(x.view(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # [B * G, C/G, K * Ho, Wo]
    cols = cols.view(b, g, c // g, k, ho, wo) * mask.view(b, g, 1, k, ho, wo)
    out = torch.einsum("bgckhw,ogck->bohw", cols, weight.view(o, g, c // g, k))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mask: torch.Tensor, *, padding: int = 1, impl: str = "auto") -> torch.Tensor:
    """DCNv2 with torchvision ("auto" when available, or "torchvision") or the pure-PyTorch version ("torch").

    "auto" takes the pure-PyTorch version when traced: an exported program then needs no torchvision op, and its
    `grid_sample` is a standard ONNX operator (GridSample) where torchvision's op has no ONNX Runtime kernel."""
    if impl == "torchvision" or (impl == "auto" and _tv_deform_conv2d is not None and not is_tracing()):
        if _tv_deform_conv2d is None:
            raise ValueError("impl='torchvision' needs torchvision; use impl='torch'")
        if x.dtype in (torch.float32, torch.float64):
            return _tv_deform_conv2d(x, offset, weight, bias, padding=(padding, padding), mask=mask)
        # Other dtypes run in float32, as the original's DCNv2 extension does under autocast: torchvision has no
        # bfloat16 kernel (nor a CPU float16 one), and its autocast wrapper exists on CUDA only
        out = _tv_deform_conv2d(x.float(), offset.float(), weight.float(), None if bias is None else bias.float(),
                                padding=(padding, padding), mask=mask.float())
        return out.to(x.dtype)
    if impl not in ("auto", "torch"):
        raise ValueError(f"impl must be 'auto', 'torchvision' or 'torch', got {impl!r}")
    return deform_conv2d_torch(x, offset, weight, bias, mask, padding=padding)


class DCN(nn.Module):
    """The original `DCN(extra_offset_mask=True)`: `conv_offset_mask` on a guide map -> (o1, o2, m); offset =
    cat(o1, o2), mask = sigmoid(m); then a 3×3 modulated deformable conv (keys `weight`, `bias`,
    `conv_offset_mask.*`)."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel_size: int = 3, deformable_groups: int = 8) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.impl = "auto"
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        nn.init.uniform_(self.weight, -(in_ch * kernel_size ** 2) ** -0.5, (in_ch * kernel_size ** 2) ** -0.5)
        self.conv_offset_mask = nn.Conv2d(in_ch, deformable_groups * 3 * kernel_size ** 2, kernel_size,
                                          padding=self.padding)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        o1, o2, m = torch.chunk(self.conv_offset_mask(guide), 3, dim=1)
        return modulated_deform_conv2d(x, torch.cat((o1, o2), 1), self.weight, self.bias, torch.sigmoid(m),
                                       padding=self.padding, impl=self.impl)


class FeatureAlign(nn.Module):
    """FaPN's `FeatureAlign` (no FSM): offsets from cat[lateral, 2·upsampled] through a 1×1 conv + the SHARED
    GroupNorm `norm` (the original passes the next output conv's norm, hence two keys, one tensor), then
    ReLU(DCN(upsampled, offsets)) + lateral."""

    def __init__(self, channels: int, norm: nn.Module) -> None:
        super().__init__()
        self.offset = Conv2dNorm(channels * 2, channels, 1, bias=False, norm=norm)
        self.dcpack_L2 = DCN(channels, channels, deformable_groups=8)

    def forward(self, feat_l: torch.Tensor, feat_s: torch.Tensor) -> torch.Tensor:
        if is_tracing() or feat_l.shape[-2:] != feat_s.shape[-2:]:  # same-size bilinear is an exact identity
            feat_s = F.interpolate(feat_s, feat_l.shape[-2:], mode="bilinear", align_corners=False)
        offset = self.offset(torch.cat([feat_l, feat_s * 2], dim=1))
        return F.relu(self.dcpack_L2(feat_s, offset)) + feat_l
