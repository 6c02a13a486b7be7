"""Small shared pieces: window partition/reverse and right/bottom padding of token grids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def is_tracing() -> bool:
    """True under torch.compile / torch.export / jit tracing / ONNX export: code paths then avoid Python-side caches
    and branches on (possibly symbolic) sizes, so exported programs stay valid for every input size."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def pad_hw(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a [B, H, W, C] grid on the right/bottom to multiples of `multiple` (the original Swin's rule)."""
    _, h, w, _ = x.shape
    # ceil-div form rather than (m - w % m) % m: the same ints, but nested Mod/FloorDiv on symbolic sizes makes
    # torch.export's shape reasoning (sympy) blow up over the stages.
    pad_r = (w + multiple - 1) // multiple * multiple - w
    pad_b = (h + multiple - 1) // multiple * multiple - h
    if is_tracing() or pad_r or pad_b:  # traced: always pad (a zero pad is a no-op), no guard on the size
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def crop_hw(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, Hp, Wp, C] -> [B, h, w, C], the top-left part (undoes `pad_hw`).

    Traced, it gathers with `index_select`: a slice `x[:, :h]` makes torch.export guard on `h == Hp` (no padding
    was needed for the example input), which would pin the exported program to inputs padded like the example.
    """
    if not is_tracing():
        return x[:, :h, :w]
    x = x.index_select(1, torch.arange(h, device=x.device))
    return x.index_select(2, torch.arange(w, device=x.device))


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
