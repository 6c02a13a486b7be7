"""Single-pass Predictor on a large photo: the bounded path (classes resized a chunk at a time into a running
softmax, at most `semask.infer.FULL_MAP_BYTES` of logits at the original size) vs the full [K, H, W] map.

    python benchmarks/bench_predict.py [--size 3000x4000] [--model semask_swin_tiny_fpn] [--device cpu]

Each variant runs in a fresh subprocess (so one's peak cannot hide the other's): one warm-up call on a small image,
then ONE call on the H x W image, timed, with its peak memory above the process before the call (CPU: ru_maxrss).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np
import torch
from _common import device_arg, peak_bytes, run_child, size_hw

import semask
import semask.infer as infer
from semask.hub import HF_PREFIX
from semask.registry import get_config

VARIANTS = {"bounded": None, "full_map": 1 << 62}  # FULL_MAP_BYTES: the library default, or never chunk


def child(variant: str, hw: tuple[int, int], model_name: str, device: str) -> None:
    if VARIANTS[variant] is not None:
        infer.FULL_MAP_BYTES = VARIANTS[variant]
    torch.manual_seed(0)
    predictor = semask.Predictor(semask.create_model(model_name), weights=False, device=device)
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    predictor(img[:480, :640])  # warm-up: allocator, kernels
    out = {}

    def run() -> None:
        t = time.perf_counter()
        out["labels"] = predictor(img).labels
        out["seconds"] = time.perf_counter() - t

    peak = peak_bytes(run, device)
    print(json.dumps({"seconds": out["seconds"], "peak": peak,
                      "labels": hashlib.sha256(out["labels"].tobytes()).hexdigest()[:16]}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Prints the time and peak memory of one Predictor call on a large random photo, bounded "
                    "(chunked) logits vs the full map, each in a fresh subprocess, and whether their labels agree.")
    ap.add_argument("--size", type=size_hw, default="3000x4000", metavar="HxW",
                    help="height x width of the photo (default: %(default)s, 12 megapixels)")
    ap.add_argument("--model", default="semask_swin_tiny_fpn",
                    help="architecture or arch.tag, random weights (default: %(default)s, 150 classes)")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    ap.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    hw = args.size
    if args.child:
        return child(args.child, hw, args.model, args.device)
    if not args.model.startswith(HF_PREFIX):  # hub repos are resolved (downloaded) by the child alone
        try:
            get_config(args.model)
        except (ValueError, OSError) as err:
            ap.error(f"--model: {err}")
    got = {}
    for v in VARIANTS:
        got[v] = run_child([sys.executable, __file__, "--child", v, "--size", f"{hw[0]}x{hw[1]}", "--model",
                            args.model, "--device", args.device])
    print(f"{args.model} one-pass Predictor, {hw[0]}x{hw[1]} photo, {args.device} ({torch.get_num_threads()} threads), "
          f"FULL_MAP_BYTES {infer.FULL_MAP_BYTES >> 20} MiB:")
    for v, r in got.items():
        print(f"  {v:<9} {r['seconds']:6.2f} s   peak {r['peak'] / 2 ** 30:5.2f} GiB above the warm process")
    b, f = got["bounded"], got["full_map"]
    print(f"  bounded / full map: time {b['seconds'] / f['seconds']:.2f}x, peak memory {b['peak'] / f['peak']:.2f}x; "
          f"labels {'identical' if b['labels'] == f['labels'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
