"""Small shared pieces: window partition/reverse and right/bottom padding of token grids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_hw(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a [B, H, W, C] grid on the right/bottom to multiples of `multiple` (the original Swin's rule)."""
    _, h, w, _ = x.shape
    pad_r = (multiple - w % multiple) % multiple
    pad_b = (multiple - h % multiple) % multiple
    if pad_r or pad_b:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of `window`) -> [B * nW, window * window, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, window * window, C] -> [B, H, W, C]; inverse of `window_partition`."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def check_image_batch(x: torch.Tensor, in_chans: int) -> None:
    """Raise a clear error unless `x` is a float [B, in_chans, H, W] batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor image batch, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a [B, {in_chans}, H, W] batch, got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) for a single image")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                         "convert grayscale/RGBA images to RGB and use NCHW layout")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got {x.dtype}; convert with x.float() and normalise "
                        "with the ImageNet mean/std (semask.Predictor does this for you)")


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth growing linearly 0 -> `rate` over all blocks, split per stage (computed in Python so that
    meta-device builds work)."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    return [flat[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
