"""Attention alone, per stage shape of SeMask-T at 512x512, inference.

Window attention (window 7): fused (SDPA) vs the original eager formula (-100 shift mask) vs the denormal-safe
unfused formula ("math"), shifted and unshifted. Semantic attention (150 classes; windows at stages 0-1, all tokens
at 2-3): the plain formula softmax(Q K^T) V vs SDPA on the same q/k (width K = 150) vs SDPA with q/k zero-padded to a
multiple of 8 ("pad8": the same products; CUDA's fused kernels want aligned head dims) vs q/k AND v zero-padded to one
width ("same": CPU's flash kernel wants equal q/k/v widths; v's pad columns are dropped), with the SDPA backend each
ran.

    python benchmarks/bench_attention.py [--device cuda] [--size 512] [--repeats 7] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from _common import device_arg, positive_int, time_alternating

from semask.backbones.swin import FAST_MASK_VALUE, MASK_VALUE, WindowAttention, shift_mask
from semask.kernels import sdpa_backends
from semask.registry import get_config


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Prints two tables of median times per SeMask-T stage shape: window attention (eager, fused "
                    "SDPA and the unfused 'math' formula, shifted and unshifted) and the semantic attention core "
                    "(plain, SDPA, pad8, same) with the SDPA backend each ran.")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    ap.add_argument("--size", type=positive_int, default=512,
                    help="square input side whose stage shapes are timed (default: %(default)s)")
    ap.add_argument("--repeats", type=positive_int, default=7,
                    help="timed calls per variant; the median is printed (default: %(default)s)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="dtype of the inputs and weights (default: %(default)s)")
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
    semantic(args, dtype)


def semantic(args: argparse.Namespace, dtype: torch.dtype) -> None:
    cfg = get_config("semask_swin_tiny_fpn")
    k, ws = cfg.sem_num_classes or cfg.num_classes, cfg.sem_window_size
    print(f"\nsemantic attention core (q/k width {k}, no scaling, single head), SeMask-T at {args.size}^2; the model "
          f"runs 'plain' on every device")
    print(f"{'stage':>5} {'kind':>6} {'batch':>5} {'tokens':>6} {'C':>4} {'plain ms':>9} {'sdpa ms':>8} "
          f"{'pad8 ms':>8} {'same ms':>8} {'plain/best':>10}  kernels (sdpa, pad8, same)")
    pad = -k % 8
    for i, kind in enumerate(cfg.semantic_attention):
        dim = cfg.embed_dim * 2 ** i
        side = math.ceil(args.size / 4 / 2 ** i)
        if kind == "window":
            side = math.ceil(side / ws) * ws
            shape = ((side // ws) ** 2, ws * ws)
        else:
            shape = (1, side * side)
        q, kk = (torch.randn(*shape, 1, k, device=args.device, dtype=dtype).transpose(1, 2) * 0.1 for _ in "qk")
        v = torch.randn(*shape, 1, dim, device=args.device, dtype=dtype).transpose(1, 2)
        qp, kp = (F.pad(t, (0, pad)) for t in (q, kk))
        width = max(k, dim) + -max(k, dim) % 8
        qs, ks, vs = (F.pad(t, (0, width - t.shape[-1])) for t in (q, kk, v))
        variants = {"plain": lambda q=q, kk=kk, v=v: (q @ kk.transpose(-2, -1)).softmax(-1) @ v,
                    "sdpa": lambda q=q, kk=kk, v=v: F.scaled_dot_product_attention(q, kk, v, scale=1.0),
                    "pad8": lambda q=qp, kk=kp, v=v: F.scaled_dot_product_attention(q, kk, v, scale=1.0),
                    "same": lambda q=qs, kk=ks, v=vs, c=dim: F.scaled_dot_product_attention(q, kk, v,
                                                                                          scale=1.0)[..., :c]}
        with torch.inference_mode():
            t = time_alternating(variants, repeats=args.repeats, device=args.device)
            used = [",".join(sorted(sdpa_backends(variants[n]))) for n in ("sdpa", "pad8", "same")]
        print(f"{i:>5} {kind:>6} {shape[0]:>5} {shape[1]:>6} {dim:>4} {t['plain'] * 1e3:>9.2f} "
              f"{t['sdpa'] * 1e3:>8.2f} {t['pad8'] * 1e3:>8.2f} {t['same'] * 1e3:>8.2f} "
              f"{t['plain'] / min(t['sdpa'], t['pad8'], t['same']):>10.2f}  {', '.join(used)}")


if __name__ == "__main__":
    main()
