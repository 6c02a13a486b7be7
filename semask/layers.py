"""Small shared pieces: window partition/reverse and right/bottom padding of token grids."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T")


def is_tracing() -> bool:
    """True under torch.compile / torch.export / jit tracing / ONNX export: code paths then avoid Python-side caches
    and branches on (possibly symbolic) sizes, so exported programs stay valid for every input size."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` ("cuda", "cpu", ...); torch 2.3 has no device argument."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def round_up(n: int | torch.SymInt, multiple: int) -> int | torch.SymInt:
    """The smallest multiple of `multiple` that is >= n (a padded size).

    Ceil-div form rather than n + (m - n % m) % m: the same ints, but nested Mod/FloorDiv on symbolic sizes makes
    torch.export's shape reasoning (sympy) blow up over the stages.
    """
    return (n + multiple - 1) // multiple * multiple


def pad_hw(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a [B, H, W, C] grid on the right/bottom to multiples of `multiple` (the original Swin's rule)."""
    _, h, w, _ = x.shape
    pad_r = round_up(w, multiple) - w
    pad_b = round_up(h, multiple) - h
    if is_tracing() or pad_r or pad_b:  # traced: always pad (a zero pad is a no-op), no guard on the size
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def crop_hw(x: torch.Tensor, h: int, w: int, dim: int = 1) -> torch.Tensor:
    """The top-left h×w part of a map whose height is dim `dim` and width dim `dim + 1` (undoes a right/bottom
    pad): [B, Hp, Wp, C] -> [B, h, w, C] by default (`pad_hw`), [B, C, Hp, Wp] -> [B, C, h, w] with dim=2.

    Traced, it gathers with `index_select`: a slice `x[:, :h]` makes torch.export guard on `h == Hp` (no padding
    was needed for the example input), which would pin the exported program to inputs padded like the example.
    """
    if not is_tracing():
        return x.narrow(dim, 0, h).narrow(dim + 1, 0, w)
    x = x.index_select(dim, torch.arange(h, device=x.device))
    return x.index_select(dim + 1, torch.arange(w, device=x.device))


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


@contextlib.contextmanager
def constant_tensors() -> Iterator[None]:
    """Build tensors that a cache keeps for later calls: outside inference mode and without grad.

    A tensor first made under `torch.inference_mode()` is an inference tensor, and a later training step that saves
    it for backward (`index_select` saves its index, SDPA its mask) would fail with "Inference tensors cannot be
    saved for backward". `inference_mode(False)` alone turns grad mode on, hence the `no_grad`.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


def tensor_cache(fn: Callable[..., T]) -> Callable[..., T]:
    """`functools.lru_cache(maxsize=64)` for functions that build constant tensors (indices, masks), built under
    `constant_tensors` so that one call's grad / inference mode cannot leak into the cached result."""
    @functools.lru_cache(maxsize=64)
    @functools.wraps(fn)
    def cached(*args: Any, **kwargs: Any) -> T:
        with constant_tensors():
            return fn(*args, **kwargs)
    return cached


@tensor_cache
def _window_index(b: int, h: int, w: int, window: int, shift: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices into a [B * H * W, C] token matrix for `to_windows` / `from_windows` (batch offsets included).

    Returns (src [B * Hp * Wp]: the token each window slot takes, pad [B * P]: the slots that are padding,
    pos [B * H * W]: the window slot each token comes back from).
    """
    hp, wp = round_up(h, window), round_up(w, window)
    rows = ((torch.arange(hp) + shift) % hp)[:, None].expand(hp, wp)  # rolled by -shift: slot (i, j) <- (i+s, j+s)
    cols = ((torch.arange(wp) + shift) % wp)[None, :].expand(hp, wp)
    valid = (rows < h) & (cols < w)
    src = torch.where(valid, rows * w + cols, 0)
    src = window_partition(src[None, :, :, None], window).reshape(-1)  # [Hp * Wp] in window order
    valid = window_partition(valid[None, :, :, None], window).reshape(-1)
    slots = torch.arange(src.numel())
    pos = torch.empty(h * w, dtype=torch.long)
    pos[src[valid]] = slots[valid]
    batch = torch.arange(b)[:, None]
    return tuple((t[None] + batch * n).reshape(-1).to(device)  # type: ignore[return-value]
                 for t, n in ((src, h * w), (slots[~valid], hp * wp), (pos, hp * wp)))


def to_windows(x: torch.Tensor, window: int, shift: int = 0) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, window * window, C]: zero-pad right/bottom to multiples of `window`, roll by
    (-shift, -shift), partition (the original's pad -> roll -> partition).

    Eagerly this is one row gather over cached indices instead of up to four copies (pad, a roll per dim,
    partition); the values are the same bit for bit (benchmarks/RESULTS.md has the gain). Traced programs keep the
    plain ops, which work for symbolic sizes.
    """
    b, h, w, c = x.shape
    if is_tracing():
        x = pad_hw(x, window)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        return window_partition(x, window)
    src, pad, _ = _window_index(b, h, w, window, shift, x.device)
    t = x.reshape(b * h * w, c).index_select(0, src)
    if pad.numel():
        t.index_fill_(0, pad, 0)
    return t.view(-1, window * window, c)


def from_windows(t: torch.Tensor, window: int, shift: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `to_windows`: [B * nW, window * window, C] -> [B, h, w, C] (reverse, roll back, crop)."""
    c = t.shape[-1]
    hp, wp = round_up(h, window), round_up(w, window)
    if is_tracing():
        x = window_reverse(t, window, hp, wp)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return crop_hw(x, h, w)
    b = t.shape[0] * window * window // (hp * wp)
    _, _, pos = _window_index(b, h, w, window, shift, t.device)
    return t.reshape(-1, c).index_select(0, pos).view(b, h, w, c)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU; without autograd in place on `x`, which must be a fresh map the caller owns (same values, one
    allocation fewer: on CPU, one round of page faults fewer for the blocks' 4C-wide hidden maps)."""
    return torch.ops.aten.gelu_(x) if not torch.is_grad_enabled() else F.gelu(x)


def add_residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y; without autograd summed into `y`, which must be a fresh branch output the caller owns (y + x is x + y
    bit for bit, and no new map is allocated)."""
    return y.add_(x) if not torch.is_grad_enabled() else x + y


def check_image_batch(x: torch.Tensor, in_chans: int) -> None:
    """Raise a clear error unless `x` is a non-empty float [B, in_chans, H, W] batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor image batch, got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.ndim == 3:
        raise ValueError(f"expected a [B, {in_chans}, H, W] batch, got shape {shape}; "
                         "add a batch dimension with x.unsqueeze(0) for a single image")
    if x.ndim != 4:
        hint = ("; fold the extra leading dimensions into the batch, e.g. x.flatten(0, 1) for [N, T, C, H, W]"
                if x.ndim > 4 else "")
        raise ValueError(f"expected a 4-D [B, {in_chans}, H, W] batch, got {x.ndim}-D shape {shape}{hint}")
    if x.shape[1] != in_chans:
        hint = ("; this looks like channels-last [B, H, W, C]: use x.permute(0, 3, 1, 2)"
                if x.shape[-1] == in_chans else "; convert grayscale/RGBA images to RGB and use NCHW layout")
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {shape}){hint}")
    if x.numel() == 0:
        raise ValueError(f"empty image batch (shape {shape}): every dimension must be at least 1")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got {x.dtype}; convert with x.float() and normalise "
                        "with the ImageNet mean/std (semask.Predictor does this for you)")


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth growing linearly 0 -> `rate` over all blocks, split per stage (computed in Python so that
    meta-device builds work)."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    return [flat[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
