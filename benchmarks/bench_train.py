"""Training step (forward + backward, batch 2, 512^2) time and peak memory: ours, ours with gradient
checkpointing, timm's Swin-T `features_only` (fused attention on; mean of features as the loss), and ours with
attn_impl="eager".

Ours is the trainer's step: `model(x, upsample=False)` (stride-4 logits and priors) + `SeMaskLoss` against random
labels (150 classes, ~5 % ignored); `ours_plain_loss` is the earlier step, full-resolution outputs and the plain
autograd CE (`SeMaskLoss(memory_efficient=False)`), to show what the memory-efficient loss buys;
`ours_ckpt` is `model.set_grad_checkpointing(True)` (the Swin blocks), `ours_ckpt_head` also checkpoints the FPN
head (`model.decode_head.grad_checkpointing = True`); the `*_keep_semantic` variants turn off the semantic layers'
recompute in backward (`SemanticLayer.recompute = False`; on by default).

CPU memory is reported twice: with glibc's default malloc (what a user sees; freed heap memory is often kept, so
the figure depends on the allocation history) and with MALLOC_MMAP_THRESHOLD_=65536 (every allocation >= 64 KiB
is its own mapping, returned on free: RSS then tracks the bytes of live tensors, like CUDA's
max_memory_allocated).

Memory: each variant runs ONE step in a fresh subprocess; CPU peak = resource.getrusage ru_maxrss minus the RSS
after building the model and the batch (so weights are excluded, activations + grads counted); CUDA peak =
torch.cuda.max_memory_allocated minus the allocation before the step. Time: all variants in this process,
alternated, medians.

    python benchmarks/bench_train.py [--device cuda] [--size 512] [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from _common import device_arg, peak_bytes, positive_int, run_child, time_alternating, timm_swin

import semask
from semask.backbones.semantic_layer import SemanticLayer
from semask.train import SeMaskLoss

VARIANTS = ("ours", "ours_ckpt", "ours_ckpt_head", "ours_keep_semantic", "ours_ckpt_keep_semantic", "ours_plain_loss",
            "ours_eager", "timm")


def labels_for(x: torch.Tensor, num_classes: int = 150) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (x.shape[0], *x.shape[-2:]), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.05] = 255
    return labels.to(x.device)


def build(variant: str, size: int, device: str):
    torch.manual_seed(0)
    if variant == "timm":
        model = timm_swin("tiny", size, device).train()

        def step(x: torch.Tensor, labels: torch.Tensor) -> None:
            sum(o.mean() for o in model(x)).backward()
            model.zero_grad(set_to_none=True)
        return step

    model = semask.create_model("semask_swin_tiny_fpn", attn_impl="eager" if variant == "ours_eager"
                                else "sdpa").train().to(device)
    model.set_grad_checkpointing(variant.startswith("ours_ckpt"))
    model.decode_head.grad_checkpointing = variant == "ours_ckpt_head"
    if variant.endswith("keep_semantic"):  # the semantic layers keep their activations (no recompute)
        for m in model.modules():
            if isinstance(m, SemanticLayer):
                m.recompute = False
    plain = variant == "ours_plain_loss"
    criterion = SeMaskLoss(memory_efficient=not plain)

    def step(x: torch.Tensor, labels: torch.Tensor) -> None:  # noqa: F811
        criterion(model(x, upsample=plain), labels)["loss"].backward()
        model.zero_grad(set_to_none=True)
    return step


def child(variant: str, size: int, batch: int, device: str) -> None:
    step = build(variant, size, device)
    x = torch.randn(batch, 3, size, size, device=device)
    labels = labels_for(x)
    print(json.dumps({"peak_bytes": peak_bytes(lambda: step(x, labels), device)}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Prints the median time of one training step (forward + backward) of each --time variant and "
                    "the peak memory of one step of each --memory variant (each in a fresh subprocess; on CPU with "
                    "glibc's default malloc and with every allocation >= 64 KiB its own mapping), with ratios to "
                    f"timm's Swin-T and to ours. Variants: {', '.join(VARIANTS)}.")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    ap.add_argument("--size", type=positive_int, default=512, help="square input side (default: %(default)s)")
    ap.add_argument("--batch", type=positive_int, default=2, help="images per step (default: %(default)s)")
    ap.add_argument("--repeats", type=positive_int, default=3,
                    help="timed steps per variant; the median is printed (default: %(default)s)")
    ap.add_argument("--memory", default=",".join(VARIANTS), metavar="VARIANT,...",
                    help="variants whose peak memory is measured; empty: none (default: all)")
    ap.add_argument("--time", default="ours,ours_ckpt,ours_plain_loss,timm", metavar="VARIANT,...",
                    help="variants timed (alternated); empty: none (default: %(default)s)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.size, args.batch, args.device)
    for opt in ("memory", "time"):
        chosen = [v.strip() for v in getattr(args, opt).split(",") if v.strip()]
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown:
            ap.error(f"--{opt}: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        setattr(args, opt, list(dict.fromkeys(chosen)))  # in order, once each
    if not args.memory and not args.time:
        ap.error("--memory and --time are both empty: nothing to measure")

    cpu = not args.device.startswith("cuda")
    allocators = {"default malloc": {}, "live (mmap >= 64 KiB)": {"MALLOC_MMAP_THRESHOLD_": "65536"}} if cpu \
        else {"max_memory_allocated": {}}
    mem: dict[str, dict[str, int]] = {}
    for kind, env in allocators.items():
        mem[kind] = {}
        for v in args.memory:
            out = run_child([sys.executable, __file__, "--child", v, "--size", str(args.size), "--batch",
                             str(args.batch), "--device", args.device], env=env)
            mem[kind][v] = out["peak_bytes"]
    t = {}
    if args.time:
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        labels = labels_for(x)
        steps = {v: build(v, args.size, args.device) for v in args.time}
        t = time_alternating({v: (lambda s=s: s(x, labels)) for v, s in steps.items()}, repeats=args.repeats,
                             device=args.device)
    print(f"train step, batch {args.batch}, {args.size}^2, fp32, {args.device} ({torch.get_num_threads()} threads); "
          f"time: median of {args.repeats} alternated; memory: one step per fresh subprocess "
          f"({'ru_maxrss - RSS before the step' if cpu else 'max_memory_allocated'})")
    if t:
        _report("time", {v: sec * 1e3 for v, sec in t.items()}, "ms", indent="  ")
    for kind, m in mem.items():
        print(f"  peak memory, {kind}:")
        _report("", {v: b / 2**20 for v, b in m.items()}, "MiB", indent="    ")


def _report(label: str, values: dict[str, float], unit: str, *, indent: str) -> None:
    """One line per variant (and its ratio to timm), then each variant of ours relative to ours."""
    prefix = f"{indent}{label + ' ' if label else ''}"
    for v, x in values.items():
        print(f"{prefix}{v:<24} {x:8.0f} {unit}" + (f" ({x / values['timm']:.2f}x timm)" if "timm" in values else ""))
    if "ours" in values:
        for v in values:
            if v.startswith("ours_"):
                print(f"{prefix}{v} / ours: {values[v] / values['ours']:.2f}x")


if __name__ == "__main__":
    main()
