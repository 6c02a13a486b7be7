"""Device names from users (CLI flags, configs, keyword arguments) -> a checked `torch.device`."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None, *, local_rank: int = 0) -> torch.device:
    """None / "auto" -> `cuda:{local_rank}` when CUDA is available, else the CPU; "cuda" without an index ->
    `cuda:{local_rank}` (each torchrun process its own GPU). A misspelt name, or CUDA / MPS / XPU asked for where
    torch cannot use it, is a ValueError naming what works, instead of a failure deep inside the first forward."""
    if device is None or device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device: use 'cpu', 'cuda', 'cuda:1', ... "
                         "or 'auto'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                             f"built with CUDA {torch.version.cuda or 'none'}); use 'cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type not in ("cpu", "meta") and not _backend_available(dev.type):
        raise ValueError(f"device {device!r}: {dev.type} is not available here (torch {torch.__version__}); use "
                         "'cpu', 'cuda' or 'auto'")
    return dev


def _backend_available(kind: str) -> bool:
    """Whether torch can run on devices of type `kind` (mps, xpu, ...) here: the backend module's `is_available()`
    (torch.backends.mps, torch.xpu; third-party backends register torch.<kind> when loaded); no module: no."""
    module = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    if module is None:
        return False
    check = getattr(module, "is_available", None)
    return bool(check()) if callable(check) else True
