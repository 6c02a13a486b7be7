"""Whole-model and backbone inference: ours fused (sdpa) vs ours eager (the original formula) vs timm's fused
Swin `features_only` backbone, at the same input size in one process; efficiency; bf16; torch.compile.

    python benchmarks/bench_model.py [--device cuda] [--models tiny:512,large:640] [--repeats 5] [--compile]
    python benchmarks/bench_model.py --whole 1024x2048 [--device cuda] [--bf16]   # memory of one whole image
    python benchmarks/bench_model.py --onnx [--models tiny:512]   # + the exported ONNX file in ONNX Runtime (CPU)

Efficiency = (model MACs / second) / (MAC rate of a 2048^3 fp32 matmul), the matmul timed as one more variant of
the same alternated run (so load drifts hit it alike). `--profile` prints where the fused model's time goes.
On CPU each variant also reports its median minor page faults per call (first touches of freshly mapped memory).
The SDPA backend each attention ran is printed, and the run stops if the window attention did not run a fused one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import check_attention_kernels, peak_bytes, time_alternating, timm_swin

import semask
from semask.flops import count_macs


def bench(size: str, img: int, args: argparse.Namespace) -> None:
    dev = args.device
    torch.manual_seed(0)
    model = semask.create_model(f"semask_swin_{size}_fpn").eval().to(dev)
    timm_bb = timm_swin(size, img, dev)
    x = torch.randn(1, 3, img, img, device=dev)

    def ours(impl: str, part: str):
        def run() -> None:
            model.set_attn_impl(impl)
            if part == "infer":  # the Predictor's (and the original's test-time) path: no prior_logits
                model(x, priors=False)
            else:
                (model if part == "model" else model.backbone)(x)
        return run

    n = 2048
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    variants = {"model_sdpa": ours("sdpa", "model"), "model_eager": ours("eager", "model"),
                "infer_sdpa": ours("sdpa", "infer"),
                "backbone_sdpa": ours("sdpa", "backbone"), "backbone_eager": ours("eager", "backbone"),
                "timm": lambda: timm_bb(x), "matmul": lambda: [a @ b for _ in range(4)]}
    faults: dict[str, float] = {}
    with torch.inference_mode():
        t = time_alternating(variants, repeats=args.repeats, device=dev, faults=faults)
    model.set_attn_impl("sdpa")
    macs = count_macs(model, (img, img))["total"]
    timm_macs = count_macs(timm_bb, (img, img))["total"]
    rate = 4 * n ** 3 / t.pop("matmul")
    print(f"\nSeMask-{size[0].upper()} FPN {img}^2 fp32 batch 1 on {dev} ({torch.get_num_threads()} threads), "
          f"median of {args.repeats}, alternated:")
    for k, v in t.items():
        print(f"  {k:<15} {v * 1e3:9.1f} ms   {v / t['timm']:5.2f}x timm-Swin-{size[0].upper()}"
              + (f"   {faults[k] / 1000:6.1f}k page faults" if dev == "cpu" else ""))
    print(f"  fused vs eager: whole model {t['model_eager'] / t['model_sdpa']:.2f}x, "
          f"backbone {t['backbone_eager'] / t['backbone_sdpa']:.2f}x faster")
    # The prior maps add no MACs (bilinear resizes only), so both paths do the same multiply-accumulates.
    print(f"  {macs / 1e9:.1f} GMAC; fp32 matmul {rate / 1e9:.1f} GMAC/s; efficiency: model "
          f"{macs / t['model_sdpa'] / rate:.2f}, inference path {macs / t['infer_sdpa'] / rate:.2f} "
          f"(timm's backbone: {timm_macs / 1e9:.1f} GMAC, efficiency {timm_macs / t['timm'] / rate:.2f})")
    with torch.inference_mode():
        check_attention_kernels(model, lambda: model(x, priors=False))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                model(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40))

    if args.bf16:
        mb = semask.create_model(f"semask_swin_{size}_fpn").eval().to(dev, torch.bfloat16)
        xb = x.to(torch.bfloat16)

        def runb(impl: str):
            def run() -> None:
                mb.set_attn_impl(impl)
                mb(xb)
            return run

        with torch.inference_mode():
            tb = time_alternating({"sdpa": runb("sdpa"), "eager": runb("eager")}, repeats=args.repeats, device=dev)
            mb.set_attn_impl("sdpa")
            check_attention_kernels(mb, lambda: mb(xb))
        print(f"  bf16: sdpa {tb['sdpa'] * 1e3:.1f} ms, eager {tb['eager'] * 1e3:.1f} ms, fused "
              f"{tb['eager'] / tb['sdpa']:.2f}x; bf16 sdpa vs fp32 sdpa {t['model_sdpa'] / tb['sdpa']:.2f}x")
        if dev.startswith("cuda"):
            from torch.nn.attention import SDPBackend, sdpa_kernel
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                try:
                    with sdpa_kernel([backend]), torch.inference_mode():
                        mb(xb)
                    print(f"  window attention runs on {backend.name}")
                except RuntimeError as err:
                    print(f"  {backend.name}: not usable ({str(err).splitlines()[0][:80]})")

    if args.onnx:
        onnx_vs_eager(model, x, args)

    if args.compile:
        compiled = torch.compile(model.backbone)
        with torch.inference_mode():
            compiled(x)  # compile outside the timing
            tc = time_alternating({"eager_mode": lambda: model.backbone(x), "compiled": lambda: compiled(x)},
                                  repeats=args.repeats, device=dev)
        print(f"  torch.compile backbone: {tc['eager_mode'] / tc['compiled']:.2f}x "
              f"({tc['eager_mode'] * 1e3:.1f} -> {tc['compiled'] * 1e3:.1f} ms)")


def onnx_vs_eager(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> None:
    """The model exported to ONNX (`semask.export.export_onnx`, traced at this size) and run by ONNX Runtime's CPU
    provider with torch's thread count, timed against eager PyTorch in one alternated run. The file carries both
    outputs, so the eager side is `model(x)` with its priors."""
    if args.device != "cpu":
        print("  onnx: CPU only (ONNX Runtime's CPU provider); skipped on", args.device)
        return
    import onnxruntime as ort

    from semask.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx", example_size=tuple(x.shape[-2:]))
        t_export = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"images": x.numpy()}
        with torch.inference_mode():
            ref = model(x)
            got = session.run(None, feed)
            diff = max((torch.from_numpy(a) - ref[k]).abs().max().item()
                       for a, k in zip(got, ("logits", "prior_logits"), strict=False))
            t = time_alternating({"eager": lambda: model(x), "onnxruntime": lambda: session.run(None, feed)},
                                 repeats=args.repeats, device="cpu")
    print(f"  onnx (exported in {t_export:.0f} s, max |diff| {diff:.1e}): onnxruntime {t['onnxruntime'] * 1e3:.1f} ms"
          f" vs eager {t['eager'] * 1e3:.1f} ms ({t['eager'] / t['onnxruntime']:.2f}x)")


def whole_image(hw: tuple[int, int], args: argparse.Namespace) -> None:
    """Peak memory and time of ONE whole-image inference of SeMask-L FPN (the Cityscapes release's architecture,
    19 classes, window 12) at H x W, batch 1 — e.g. 1024x2048, a Cityscapes image without sliding windows. Run
    alone (`--whole` skips everything else) so that the CPU figure (peak RSS growth) is not masked by earlier work."""
    dev, dtype = args.device, (torch.bfloat16 if args.bf16 else torch.float32)
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_large_fpn.cityscapes").eval().to(dev, dtype)
    x = torch.randn(1, 3, *hw, device=dev, dtype=dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def run() -> None:  # the one forward is measured and its attention kernels checked (~20 s on a 2-core CPU)
        with torch.inference_mode():
            check_attention_kernels(model, lambda: model(x, priors=False))

    where = f"{dev} ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else dev
    t = time.perf_counter()
    try:
        peak = peak_bytes(run, dev)
    except torch.OutOfMemoryError as err:
        print(f"SeMask-L FPN whole image {hw[0]}x{hw[1]} {dtype} on {where}: does NOT fit ({str(err).splitlines()[0]})")
        return
    t = time.perf_counter() - t
    total = f" of {torch.cuda.get_device_properties(dev).total_memory / 2 ** 30:.0f} GiB" if dev.startswith("cuda") \
        else ""
    print(f"SeMask-L FPN (Cityscapes, 19 classes) whole image {hw[0]}x{hw[1]}, batch 1, {dtype} on {where}: "
          f"fits; peak {peak / 2 ** 30:.2f} GiB{total} above the weights ({weights / 2 ** 30:.2f} GiB), {t:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="tiny:512,large:640", help="size:img,... (tiny, large)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--onnx", action="store_true", help="also time the exported ONNX file in ONNX Runtime (CPU)")
    ap.add_argument("--whole", help="HxW: only the whole-image SeMask-L memory check at that size (e.g. 1024x2048)")
    args = ap.parse_args()
    if args.whole:
        h, w = (int(v) for v in args.whole.lower().split("x"))
        return whole_image((h, w), args)
    for item in args.models.split(","):
        size, img = item.split(":")
        bench(size, int(img), args)


if __name__ == "__main__":
    main()
