"""Whole-model and backbone inference: ours fused (sdpa) vs ours eager (the original formula) vs timm's fused
Swin `features_only` backbone, at the same input size in one process; efficiency; bf16; torch.compile.

    python benchmarks/bench_model.py [--device cuda] [--models tiny:512,large:640] [--repeats 5] [--compile]
    python benchmarks/bench_model.py --whole 1024x2048 [--device cuda] [--bf16]   # memory of one whole image
    python benchmarks/bench_model.py --onnx [--models tiny:512]   # + the exported ONNX file in ONNX Runtime (CPU)

`--models` takes NAME[:SIZE],... with NAME tiny, small, base or large (each against timm's Swin of that size); a
missing SIZE is the model's standard input side (T/S/B 512, L 640).

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
from _common import (
    STANDARD_SIZES,
    check_attention_kernels,
    device_arg,
    peak_bytes,
    positive_int,
    size_hw,
    time_alternating,
    timm_swin,
)

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
    """The model exported to ONNX (`semask.export.export_onnx`) and run by ONNX Runtime's CPU provider with torch's
    thread count, timed against eager PyTorch in one alternated run. The file carries both outputs, so the eager
    side is `model(x)` with its priors.

    The export traces through a `torch.export` program whose dynamic H/W start at `min_input_size(model)` (225 for
    Swin window 7, 385 for window 12), so the traced example must be at least that big; the ONNX graph itself has no
    such guard and runs at any size. So an input below the minimum is traced at the minimum and run at its own size
    (the printed max |diff| against eager checks the graph there)."""
    import onnxruntime as ort

    from semask.export import MAX_SIZE, export_onnx, min_input_size

    h, w = x.shape[-2:]
    low = min_input_size(model)
    trace = (min(max(h, low), MAX_SIZE), min(max(w, low), MAX_SIZE))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx", example_size=trace)
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
    traced = "" if trace == (h, w) else f", traced at {trace[0]}x{trace[1]} (the .pt2 minimum is {low})"
    print(f"  onnx (exported in {t_export:.0f} s{traced}, max |diff| {diff:.1e}): onnxruntime "
          f"{t['onnxruntime'] * 1e3:.1f} ms vs eager {t['eager'] * 1e3:.1f} ms ({t['eager'] / t['onnxruntime']:.2f}x)")


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

    where = f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.startswith("cuda") else dev
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


MODELS_HELP = (f"NAME[:SIZE],... with NAME one of {', '.join(STANDARD_SIZES)} (SeMask Swin FPN, against timm's Swin "
               "of the same size) and SIZE the square input side in pixels; a missing SIZE is the model's standard "
               "size (" + ", ".join(f"{k} {v}" for k, v in STANDARD_SIZES.items()) + ")")


def parse_models(text: str) -> list[tuple[str, int]]:
    """'tiny:512,large' -> [('tiny', 512), ('large', 640)]; a ValueError saying what is wrong otherwise."""
    out = []
    for item in text.split(","):
        name, sep, size = item.strip().lower().partition(":")
        if not name:
            raise ValueError(f"empty entry in {text!r}")
        if name not in STANDARD_SIZES:
            raise ValueError(f"unknown model {name!r} in {text!r}")
        if not sep:
            out.append((name, STANDARD_SIZES[name]))
            continue
        try:
            out.append((name, positive_int(size)))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"size of {item.strip()!r}: {err}") from None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Prints, per model, the median inference time of SeMask Swin FPN (whole model, the inference "
                    "path without priors, backbone; fused SDPA vs eager attention) next to timm's Swin backbone, "
                    "the MAC efficiency against an fp32 matmul, and the SDPA kernels the attention ran; optionally "
                    "bf16, torch.compile, ONNX Runtime and a profile. --whole prints one whole-image inference's "
                    "peak memory instead.")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    ap.add_argument("--models", metavar="NAME[:SIZE],...",
                    help="models and input sides: NAME tiny|small|base|large; a missing SIZE is the model's standard "
                         "size, T/S/B 512, L 640 (default: tiny:512,large:640)")
    ap.add_argument("--repeats", type=positive_int, default=5,
                    help="timed calls per variant; the median is printed (default: %(default)s)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the model in bfloat16 (with --whole: measure bfloat16 instead of fp32)")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd backbone against eager")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of the fused model")
    ap.add_argument("--onnx", action="store_true",
                    help="also time the exported ONNX file in ONNX Runtime (CPU only; needs semask[export])")
    ap.add_argument("--whole", metavar="HxW", type=size_hw,
                    help="only the peak memory of one whole-image SeMask-L inference at HxW, e.g. 1024x2048 "
                         "(runs alone)")
    args = ap.parse_args()
    if args.whole:
        ignored = [f"--{k}" for k in ("models", "compile", "profile", "onnx") if getattr(args, k)]
        if ignored:
            ap.error(f"--whole runs alone: drop {', '.join(ignored)}")
        return whole_image(args.whole, args)
    try:
        models = parse_models(args.models or "tiny:512,large:640")
    except ValueError as err:
        ap.error(f"--models: {err}: use {MODELS_HELP}")
    if args.onnx:
        check_onnx(ap, args)
    for size, img in models:
        bench(size, img, args)


def check_onnx(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse --onnx up front (before minutes of timing) where it cannot run."""
    import importlib.util

    if args.device != "cpu":
        ap.error(f"--onnx runs ONNX Runtime's CPU provider: use --device cpu (got {args.device})")
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        ap.error(f"--onnx needs {', '.join(missing)}: pip install semask[export]")
    from semask.export import check_export_support

    try:
        check_export_support()
    except RuntimeError as err:
        ap.error(f"--onnx: {err}")


if __name__ == "__main__":
    main()
