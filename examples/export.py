"""Export a semask model to ONNX and to a torch.export program (dynamic H/W), then check both at a new size.

    pip install -e ".[export]"
    python examples/export.py --model semask_swin_tiny_fpn --out export_out [--weights model.safetensors|orig.pth]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from semask.export import deployment_metadata, export_onnx, export_program
from semask.infer import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="semask_swin_tiny_fpn", help="arch (random weights) or arch.tag (published)")
    ap.add_argument("--weights", default=None, help="safetensors file/folder or original .pth (default: a tag's "
                                                    "published weights; an arch without a tag: untrained)")
    ap.add_argument("--out", default="export_out")
    ap.add_argument("--check-size", default="480x640", help="an input size other than the traced 512x512")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # as semask export and the Predictor: a tag loads its published weights, --weights local ones, else random
    model = load_model(args.model, args.weights).eval()

    program = export_program(model)  # traced at 512x512, valid for other sizes
    torch.export.save(program, out / "model.pt2")
    # the file carries the preprocessing and classes (examples/onnx_segment.py runs it without torch)
    onnx_path = export_onnx(program, out / "model.onnx", metadata=deployment_metadata(model))
    print(f"wrote {out / 'model.pt2'} and {onnx_path}")

    h, w = (int(v) for v in args.check_size.split("x"))
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        ref = model(x)["logits"]
    got = torch.export.load(out / "model.pt2").module()(x)[0]
    print(f"torch.export at {h}x{w}: max |diff| {(got - ref).abs().max().item():.2e}")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipping the ONNX check (pip install -e '.[export]')")
        return
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    print(f"onnxruntime at {h}x{w}: max |diff| {(logits - ref).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
