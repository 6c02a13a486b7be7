"""Training step (forward + backward, batch 2, 512^2) time and peak memory: ours, ours with gradient
checkpointing, timm's Swin-T `features_only` (sum of features as the loss), and ours with attn_impl="eager".

Memory: each variant runs ONE step in a fresh subprocess; CPU peak = resource.getrusage ru_maxrss minus the RSS
after building the model and the batch (so weights are excluded, activations + grads counted); CUDA peak =
torch.cuda.max_memory_allocated minus the allocation before the step. Time: all variants in this process,
alternated, medians.

    python benchmarks/bench_train.py [--device cuda] [--size 512] [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from _common import time_alternating, timm_swin

import semask

VARIANTS = ("ours", "ours_ckpt", "ours_eager", "timm")


def build(variant: str, size: int, device: str):
    torch.manual_seed(0)
    if variant == "timm":
        model = timm_swin("tiny", size, device).train()
    else:
        model = semask.create_model("semask_swin_tiny_fpn", attn_impl="eager" if variant == "ours_eager"
                                    else "sdpa").train().to(device)
        model.set_grad_checkpointing(variant == "ours_ckpt")

    def step(x: torch.Tensor) -> None:
        out = model(x)
        loss = sum(o.float().mean() for o in (out.values() if isinstance(out, dict) else out))
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def child(variant: str, size: int, batch: int, device: str) -> None:
    step = build(variant, size, device)
    x = torch.randn(batch, 3, size, size, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_kib() * 1024
        step(x)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_bytes": peak}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.size, args.batch, args.device)

    mem = {}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", v, "--size", str(args.size), "--batch",
                              str(args.batch), "--device", args.device], capture_output=True, text=True, check=True)
        mem[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    steps = {v: build(v, args.size, args.device) for v in VARIANTS}
    t = time_alternating({v: (lambda s=s: s(x)) for v, s in steps.items()}, repeats=args.repeats,
                         device=args.device)
    print(f"train step, batch {args.batch}, {args.size}^2, fp32, {args.device} ({torch.get_num_threads()} threads); "
          f"time: median of {args.repeats} alternated; memory: one step per fresh subprocess "
          f"({'max_memory_allocated' if args.device.startswith('cuda') else 'ru_maxrss - RSS before the step'})")
    for v in VARIANTS:
        print(f"  {v:<11} {t[v] * 1e3:8.0f} ms ({t[v] / t['timm']:.2f}x timm)   peak {mem[v] / 2**20:7.0f} MiB "
              f"({mem[v] / mem['timm']:.2f}x timm)")
    print(f"  gradient checkpointing: {mem['ours_ckpt'] / mem['ours']:.2f}x the memory, "
          f"{t['ours_ckpt'] / t['ours']:.2f}x the time of ours without")


if __name__ == "__main__":
    main()
