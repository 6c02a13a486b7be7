"""`semask` command line: list | info | convert | export."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_models, list_pretrained

    names = list_pretrained(args.pattern) if args.pretrained else list_models(args.pattern, include_tags=args.tags)
    print("\n".join(names))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .registry import create_model

    with torch.device("meta"):
        model = create_model(args.model)
    n = sum(p.numel() for p in model.parameters())
    info = {"name": args.model, "params": n, "config": model.config.to_dict()}
    if args.flops:
        from .flops import count_macs

        h, w = args.size
        macs = count_macs(model, (h, w))
        info.update(input_size=[h, w], gmacs=round(macs["total"] / 1e9, 3),
                    gmacs_by_op={k: round(v / 1e9, 3) for k, v in macs.items() if k != "total"})
        print(f"{args.model}: {n / 1e6:.2f} M params, {macs['total'] / 1e9:.2f} GMACs at {h}x{w} "
              "(multiply-accumulates; papers' 'FLOPs' usually count these)", file=sys.stderr)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .export import export_onnx, export_program
    from .registry import create_model

    model = create_model(args.model, pretrained=args.weights or False).eval()
    size = tuple(args.size)
    if args.format == "onnx":
        path = export_onnx(model, args.out, example_size=size, opset=args.opset)
    else:
        path = args.out
        torch.export.save(export_program(model, example_size=size), path)
    print(f"exported {args.model} ({args.format}, dynamic H/W) -> {path}")
    return 0


def _size(text: str) -> list[int]:
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    return [int(parts[0]), int(parts[-1])]


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import load_original
    from .hub import save_pretrained
    from .registry import get_config

    overrides = {}
    if args.model:  # a tag pins the quirk fields the weights cannot tell
        cfg = get_config(args.model)
        overrides = {"semantic_attention": cfg.semantic_attention, "sem_window_size": cfg.sem_window_size}
    model = load_original(args.checkpoint, allow_unsafe=args.allow_unsafe, **overrides)
    path = save_pretrained(model, args.out_dir)
    print(f"converted {args.checkpoint} ({model.config.arch}, {model.config.num_classes} classes, semantic layers: "
          f"{model.config.semantic_attention}) -> {path}")
    print(f"load it with: semask.create_model({model.config.arch!r}, pretrained={str(args.out_dir)!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semask", description="SeMask semantic segmentation models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list architectures (and tags)")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--tags", action="store_true", help="include every arch.tag")
    p.add_argument("--pretrained", action="store_true", help="only tags with released weights")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parameters and config of a model")
    p.add_argument("model", help="arch or arch.tag")
    p.add_argument("--flops", action="store_true", help="count multiply-accumulates (torch.utils.flop_counter)")
    p.add_argument("--size", type=_size, default=[512, 512], help="input size for --flops: N or HxW (512)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export", help="export to ONNX or a torch.export program (dynamic H/W)")
    p.add_argument("model", help="arch or arch.tag")
    p.add_argument("out", help="output file (.onnx or .pt2)")
    p.add_argument("--format", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--weights", help="local weights: safetensors file/folder or original .pth (default: untrained)")
    p.add_argument("--size", type=_size, default=[512, 512], help="example input traced: N or HxW (512); "
                                                                  "the program accepts other sizes")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert", help="convert an original mmseg checkpoint to model.safetensors + config.json")
    p.add_argument("checkpoint", help="original .pth file")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--model", help="arch.tag whose windowed/global semantic layout to use "
                                   "(default: the original code's rule)")
    p.add_argument("--allow-unsafe", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"semask {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
