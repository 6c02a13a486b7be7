"""`semask` command line: list | info | convert | publish."""

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
    print(json.dumps({"name": args.model, "params": n, "config": model.config.to_dict()}, indent=2))
    return 0


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


def _cmd_publish(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .publish import publish_one

    if args.model and len(args.checkpoints) > 1:
        raise ValueError("--model names one tag; publish several checkpoints in separate calls, or omit it")
    entries = {}
    for ckpt in args.checkpoints:
        stem = Path(ckpt).stem
        out = Path(args.out) / stem if args.out else Path("publish") / stem
        name, entry = publish_one(ckpt, out, repo_id=args.repo_id, name=args.model, dry_run=args.dry_run,
                                  allow_unsafe=args.allow_unsafe)
        entries[name] = entry
        print(f"{'dry run: wrote' if args.dry_run else 'published'} {name} -> {out} "
              f"(repo {entry['hub']['repo_id']}, sha256 {entry['hub']['sha256']})", file=sys.stderr)
    print(json.dumps(entries, indent=1))  # the manifest entries to commit in semask/weights_manifest.json
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
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="convert an original mmseg checkpoint to model.safetensors + config.json")
    p.add_argument("checkpoint", help="original .pth file")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--model", help="arch.tag whose windowed/global semantic layout to use "
                                   "(default: the original code's rule)")
    p.add_argument("--allow-unsafe", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("publish", help="convert original checkpoints, write model.safetensors + config.json + model "
                                       "card, upload to the Hugging Face Hub, print the manifest entries")
    p.add_argument("checkpoints", nargs="+", metavar="ORIGINAL", help="original .pth files")
    p.add_argument("--repo-id", help="hub repo (may use {arch}, {dataset}, {name}); default: the manifest's")
    p.add_argument("--model", help="arch.tag of the checkpoint (default: the released tag its config matches)")
    p.add_argument("--out", help="folder for the files, one subfolder per checkpoint (default: ./publish)")
    p.add_argument("--dry-run", action="store_true", help="write the files and print the entry; upload nothing")
    p.add_argument("--allow-unsafe", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p.set_defaults(func=_cmd_publish)
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
