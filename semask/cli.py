"""`semask` command line: list | info | convert | train | eval | demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


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


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer, load_config
    from .train.metrics import format_table

    _setup_logging()
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config)
    metrics = trainer.fit()
    if _is_main_process():
        if metrics:
            print(format_table(metrics))
        print(f"log: {trainer.out_dir / 'log.jsonl'}; curves: {trainer.out_dir / 'curves.png'}; "
              f"checkpoints: {trainer.ckpt_dir}; weights: {trainer.out_dir / 'final'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import load_config
    from .train.metrics import format_table
    from .train.trainer import evaluate_checkpoint

    _setup_logging()
    config = load_config(args.config, args.overrides)
    metrics, dataset = evaluate_checkpoint(config, args.checkpoint, split=args.split)
    if _is_main_process():
        print(f"{dataset.name}: {len(dataset)} images")
        print(format_table(metrics))
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .train.demo import run_demo

    _setup_logging()  # the trainer logs the per-class table at each evaluation
    result = run_demo(args.out, seed=args.seed, **({"iters": args.iters} if args.iters else {}))
    m = result["metrics"]
    print(f"held-out mIoU {100 * m['mIoU']:.1f} in {result['seconds']:.0f} s")
    print(f"pictures: {result['pictures']}/overlays.png (image | truth | prediction | blend), "
          f"{result['pictures']}/prior_*.png (semantic-prior maps per class)")
    print(f"curves: {result['curves']}; metrics: {result['out_dir'] / 'metrics.json'}; weights: {result['weights']}")
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

    p = sub.add_parser("train", help="train or fine-tune (launch with torchrun for several GPUs/processes)")
    p.add_argument("--config", help="YAML or JSON config (presets: configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iters=1000 data.root=/data/ade")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="aAcc / mIoU / mAcc / per-class IoU of a checkpoint on a dataset split")
    p.add_argument("--config", required=True, help="the training config (dataset, model, test scale)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) or semask weights folder")
    p.add_argument("--split", help="dataset split (default: data.val_split)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="offline demo: synthetic data -> train a small SeMask on the CPU -> evaluate")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--iters", type=int, help="training iterations (default: the demo's tuned count)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
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
