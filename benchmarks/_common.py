"""Shared helpers: alternating-variant timing with medians, the fp32 matmul MAC-rate yardstick, device sync."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from semask.backbones.mit import EfficientSelfAttention
from semask.backbones.semantic_layer import SemanticAttention
from semask.backbones.swin import WindowAttention
from semask.kernels import FUSED, attention_kernels


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def minor_faults() -> int:
    """Page faults served without I/O so far in this process (first touches of freshly mapped memory); 0 where
    `resource` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_alternating(variants: dict[str, Callable[[], object]], *, repeats: int, device: str,
                     warmup: int = 1, faults: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds per call of each variant, run in turn (A B C A B C ...) so load drifts hit all alike.

    `faults`, if given, receives each variant's median minor page faults per call: on CPU, glibc hands blocks
    above its mmap threshold (and heap it trimmed) back to the kernel, and touching them again costs ~1 µs per
    4 KiB page, a cost that moves with the process's allocation history (benchmarks/RESULTS.md).
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    counts: dict[str, list[int]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            f0 = minor_faults()
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
            counts[name].append(minor_faults() - f0)
    if faults is not None:
        faults.update({k: statistics.median(v) for k, v in counts.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak memory `fn()` adds. CUDA: `max_memory_allocated` over what was allocated before. CPU: the process's
    peak RSS (`ru_maxrss`) over its RSS before, so call it in a process that has not peaked higher already."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    import resource

    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * resource.getpagesize()
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def timm_swin(size: str, img: int, device: str) -> torch.nn.Module:
    """timm's Swin with fused attention, `features_only` (the yardstick backbone), at input size `img`."""
    import timm

    name = {"tiny": "swin_tiny_patch4_window7_224", "large": "swin_large_patch4_window12_384"}[size]
    model = timm.create_model(name, pretrained=False, features_only=True, img_size=img).eval().to(device)
    # timm's Swin leaves fused attention off by default (`use_fused_attn(experimental=True)`): turn it on, or the
    # yardstick would be the -100-mask eager formula with its denormal slowdown.
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    return model


def check_attention_kernels(model: torch.nn.Module, fn: Callable[[], object]) -> dict[str, set[str]]:
    """Print which SDPA backend each kind of attention ran in `fn()` and exit with an error unless the window
    (or MiT) attention ran a fused kernel: SDPA drops to its math kernel silently, which would make every timing
    of the "fused" variants a timing of something else."""
    got = attention_kernels(model, fn, (WindowAttention, EfficientSelfAttention, SemanticAttention))
    print("  attention kernels: " + "; ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(got.items())))
    for name in ("WindowAttention", "EfficientSelfAttention"):
        if name in got and not got[name] <= FUSED:
            raise SystemExit(f"{name} did not run a fused SDPA kernel ({sorted(got[name])}): check the torch build, "
                             "dtype and device (torch.backends.cuda.*_sdp_enabled) before reading these timings")
    return got
