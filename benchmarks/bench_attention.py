"""Window attention alone, per stage shape of SeMask-T (window 7) at 512x512: fused (SDPA) vs the original eager
formula (-100 shift mask) vs the denormal-safe unfused formula ("math"), shifted and unshifted, inference.

    python benchmarks/bench_attention.py [--device cuda] [--size 512] [--repeats 7]
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import time_alternating

from semask.backbones.swin import FAST_MASK_VALUE, MASK_VALUE, WindowAttention, shift_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ws, shift = 7, 3
    print(f"window attention, SeMask-T shapes at {args.size}^2, batch 1, {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}, variants alternated")
    print(f"{'stage':>5} {'shift':>5} {'windows':>7} {'dim':>4} {'eager ms':>9} {'sdpa ms':>8} {'math ms':>8} "
          f"{'eager/sdpa':>10} {'eager/math':>10}")
    for i, (dim, heads) in enumerate(zip((96, 192, 384, 768), (3, 6, 12, 24), strict=True)):
        side = math.ceil(args.size / 4 / 2 ** i / ws) * ws
        nw = (side // ws) ** 2
        attn = WindowAttention(dim, heads, ws).to(args.device, dtype).eval()
        torch.nn.init.trunc_normal_(attn.relative_position_bias_table, std=0.02)
        x = torch.randn(nw, ws * ws, dim, device=args.device, dtype=dtype)
        for s in (0, shift):
            masks = {impl: shift_mask(side, side, ws, s, torch.device(args.device), v) if s else None
                     for impl, v in (("eager", MASK_VALUE), ("sdpa", FAST_MASK_VALUE), ("math", FAST_MASK_VALUE))}

            def run(impl: str, attn=attn, x=x, masks=masks) -> None:
                attn.attn_impl = impl
                attn(x, masks[impl])

            with torch.inference_mode():
                t = time_alternating({k: (lambda k=k: run(k)) for k in masks}, repeats=args.repeats,
                                     device=args.device)
            print(f"{i:>5} {s:>5} {nw:>7} {dim:>4} {t['eager'] * 1e3:>9.2f} {t['sdpa'] * 1e3:>8.2f} "
                  f"{t['math'] * 1e3:>8.2f} {t['eager'] / t['sdpa']:>10.2f} {t['eager'] / t['math']:>10.2f}")


if __name__ == "__main__":
    main()
