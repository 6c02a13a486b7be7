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
import subprocess
import sys
import time

import numpy as np
import torch
from _common import peak_bytes

import semask
import semask.infer as infer

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
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="3000x4000", help="HxW of the photo (default: 12 megapixels)")
    ap.add_argument("--model", default="semask_swin_tiny_fpn", help="arch (random weights; 150 classes by default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    hw = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        return child(args.child, hw, args.model, args.device)
    got = {}
    for v in VARIANTS:
        res = subprocess.run([sys.executable, __file__, "--child", v, "--size", args.size, "--model", args.model,
                              "--device", args.device], capture_output=True, text=True, check=True)
        got[v] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{args.model} one-pass Predictor, {hw[0]}x{hw[1]} photo, {args.device} ({torch.get_num_threads()} threads), "
          f"FULL_MAP_BYTES {infer.FULL_MAP_BYTES >> 20} MiB:")
    for v, r in got.items():
        print(f"  {v:<9} {r['seconds']:6.2f} s   peak {r['peak'] / 2 ** 30:5.2f} GiB above the warm process")
    b, f = got["bounded"], got["full_map"]
    print(f"  bounded / full map: time {b['seconds'] / f['seconds']:.2f}x, peak memory {b['peak'] / f['peak']:.2f}x; "
          f"labels {'identical' if b['labels'] == f['labels'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
