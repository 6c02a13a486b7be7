"""Shared helpers: alternating-variant timing with medians, the fp32 matmul MAC-rate yardstick, device sync, the
timm yardstick backbone, command-line argument types and child processes whose failures are reported."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from semask.backbones.mit import EfficientSelfAttention
from semask.backbones.semantic_layer import SemanticAttention
from semask.backbones.swin import WindowAttention
from semask.devices import resolve_device
from semask.kernels import FUSED, attention_kernels

# timm's Swin of each SeMask Swin size (same widths, depths, heads and window as `semask.registry._SWIN`).
TIMM_SWIN = {"tiny": "swin_tiny_patch4_window7_224", "small": "swin_small_patch4_window7_224",
             "base": "swin_base_patch4_window12_384", "large": "swin_large_patch4_window12_384"}
# The input side each SeMask Swin size is benchmarked (and was trained on ADE20K) at.
STANDARD_SIZES = {"tiny": 512, "small": 512, "base": 512, "large": 640}


def device_arg(value: str) -> str:
    """argparse `type` for --device: 'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA if available, else CPU), checked
    (`semask.devices.resolve_device`: a misspelt name, or CUDA where torch cannot use it, is a usage error) and
    returned as a torch device string ('cuda' -> 'cuda:0')."""
    try:
        dev = resolve_device(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {value!r}: the benchmarks time and measure memory on 'cpu' or "
                                         "'cuda[:N]' only")
    return str(dev)


def positive_int(value: str) -> int:
    """argparse `type` for counts and sizes: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be >= 1")
    return n


def size_hw(value: str) -> tuple[int, int]:
    """argparse `type` for an image size 'HxW' (e.g. 1024x2048): two integers >= 1."""
    parts = value.lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HxW, e.g. 1024x2048") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: height and width must be >= 1")
    return h, w


def run_child(cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> dict:
    """Run `cmd` (a benchmark's own `--child` invocation) and return the JSON object on the last line of its
    stdout. If the child fails (or prints no JSON), print its stderr (the traceback) and exit with an error naming
    the command, instead of a bare CalledProcessError."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    if res.returncode == 0:
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            why = "printed no JSON result on the last line of its stdout"
            sys.stderr.write(f"child's stdout:\n{res.stdout}\n")
    elif res.returncode < 0:
        try:
            sig = signal.Signals(-res.returncode).name
        except ValueError:
            sig = str(-res.returncode)
        why = f"was killed by signal {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        why = f"exited with code {res.returncode}"
    if res.stderr:
        sys.stderr.write(res.stderr if res.stderr.endswith("\n") else res.stderr + "\n")
    envs = "".join(f"{k}={v} " for k, v in (env or {}).items())
    raise SystemExit(f"error: child process {why}: {envs}{' '.join(cmd)}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


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
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    import resource

    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * resource.getpagesize()
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def timm_swin(size: str, img: int, device: str) -> torch.nn.Module:
    """timm's Swin of the same `size` (tiny/small/base/large) with fused attention, `features_only` (the yardstick
    backbone), at input size `img`."""
    import timm

    model = timm.create_model(TIMM_SWIN[size], pretrained=False, features_only=True, img_size=img).eval().to(device)
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
