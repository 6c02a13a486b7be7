"""`semask` command line: list | info | convert | export | segment | publish | train | eval | demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_models, list_pretrained

    if args.unpublished and not args.pretrained:
        raise ValueError("--unpublished narrows --pretrained: pass both")
    names = list_pretrained(args.pattern, include_unpublished=args.unpublished) if args.pretrained else \
        list_models(args.pattern, include_tags=args.tags or None)  # a pattern with "." lists tags
    if names:
        print("\n".join(names))
    elif args.pretrained and not args.unpublished and list_pretrained(args.pattern, include_unpublished=True):
        print(f"no published weights match {args.pattern!r}; --unpublished also lists the released originals "
              "not converted on the hub yet", file=sys.stderr)
    else:
        print(f"nothing matches {args.pattern!r} (a glob, e.g. 'semask_swin_*' or 'semask_swin_tiny_fpn.*')",
              file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .registry import get_config
    from .segmentor import build_model

    with torch.device("meta"):  # the architecture only: no weights are read (a local-dir: folder's neither)
        model = build_model(get_config(args.model))
    n = sum(p.numel() for p in model.parameters())
    info = {"name": args.model, "params": n, "config": model.config.to_dict()}
    if args.flops or args.size is not None:  # a size is only used to count: asking for one asks for the count
        from .flops import count_macs

        h, w = args.size or (512, 512)
        macs = count_macs(model, (h, w))
        info.update(input_size=[h, w], gmacs=round(macs["total"] / 1e9, 3), gmacs_mmcv=round(macs["mmcv"] / 1e9, 3),
                    gmacs_by_op={k: round(v / 1e9, 3) for k, v in macs.items() if k not in ("total", "mmcv")})
        print(f"{args.model}: {n / 1e6:.2f} M params, {macs['total'] / 1e9:.2f} GMACs at {h}x{w} "
              f"(multiply-accumulates); {macs['mmcv'] / 1e9:.2f} GMACs without attention products, as mmcv's counter "
              "behind the paper's 'FLOPs' column", file=sys.stderr)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .export import check_export_support, deployment_metadata, export_onnx, export_program
    from .infer import load_model

    try:  # before building the model: an old torch cannot export whatever the model
        check_export_support()
    except RuntimeError as err:
        print(f"semask export: error: {err}", file=sys.stderr)
        return 2
    # The format follows the file name unless --format says otherwise; a contradiction is an error (a .pt2 file
    # holding ONNX fails later in torch.export.load with a BadZipFile).
    by_suffix = {".onnx": "onnx", ".pt2": "torch"}.get(Path(args.out).suffix.lower())
    fmt = args.format or by_suffix or "onnx"
    if by_suffix is not None and fmt != by_suffix:
        print(f"semask export: error: --format {fmt} writes {'.onnx' if fmt == 'onnx' else '.pt2'} files, not "
              f"{args.out}: change the suffix or drop --format", file=sys.stderr)
        return 2
    # As the Predictor: a tag loads its published weights (or fails with how to get them), --weights local ones;
    # a bare architecture without --weights exports random weights, with a warning.
    if args.dataset and fmt != "onnx":
        print("semask export: error: --dataset sets the class table in an ONNX file's metadata; .pt2 programs "
              "carry none: drop it", file=sys.stderr)
        return 2
    model = load_model(args.model, args.weights).eval()
    size = tuple(args.size)
    try:
        if fmt == "onnx":
            metadata = deployment_metadata(model, dataset=args.dataset)
            path = export_onnx(model, args.out, example_size=size, opset=args.opset, metadata=metadata)
        else:
            path = args.out
            torch.export.save(export_program(model, example_size=size), path)
    except ValueError as err:  # a traced size or opset the export cannot use
        print(f"semask export: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # onnx / onnxscript missing
        print(f"semask export: error: ONNX export needs the onnx and onnxscript packages ({err}); install them "
              "with: pip install 'semask[export]', or write a .pt2 program instead", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch.export / the ONNX converter failed: its message, not a traceback
        lines = [line for line in str(err).splitlines() if line.strip()][:4]
        print(f"semask export: error: exporting {args.model} ({fmt}, traced at {size[0]}x{size[1]}) failed in "
              f"{type(err).__name__}: " + "\n  ".join(lines) + "\nThis is a semask bug unless the model was "
              "changed: please report it with this command line", file=sys.stderr)
        return 2
    print(f"exported {args.model} ({fmt}, dynamic H/W) -> {path}")
    return 0


def _size(text: str) -> list[int]:
    """argparse type for `--size N|HxW` -> [H, W] (the one size parser, `semask.train.evaluate.parse_size`)."""
    from .train.evaluate import parse_size

    try:
        size = parse_size(text.lower())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return [size, size] if isinstance(size, int) else list(size)


def _test_scale(text: str) -> tuple[int, int] | str:
    """argparse type for `--test-scale LONG,SHORT|original`."""
    from .train.evaluate import parse_size  # the one size parser

    if text == "original":
        return text
    try:
        scale = parse_size(text.lower())
    except ValueError:
        scale = None
    if not isinstance(scale, tuple):
        raise argparse.ArgumentTypeError(f"expected LONG,SHORT (e.g. 2048,512) or 'original', got {text!r}")
    return scale


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import load_original
    from .hub import convert_original, save_pretrained
    from .registry import get_config

    if args.model:  # the name pins the fields the weights cannot tell, and its tag's classes / preprocessing
        model = convert_original(args.checkpoint, args.model, get_config(args.model), allow_unsafe=args.allow_unsafe,
                                 pin_layout=True)
    else:
        model = load_original(args.checkpoint, allow_unsafe=args.allow_unsafe)
    path = save_pretrained(model, args.out_dir)
    print(f"converted {args.checkpoint} ({model.config.arch}, {model.config.num_classes} classes, semantic layers: "
          f"{model.config.semantic_attention}) -> {path}")
    if model.config.arch == "custom":  # no registered size matches: the folder's config is the architecture
        print(f"load it with: semask.create_model('local-dir:{args.out_dir}')")
    else:
        print(f"load it with: semask.create_model({model.config.arch!r}, pretrained={str(args.out_dir)!r})")
    return 0


# --- segment -------------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def _segment_inputs(src: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """(image files, their paths relative to the input folder) for `semask segment SRC --out OUT`."""
    if not src.exists():
        raise FileNotFoundError(f"no such image or folder: {src}")
    if not src.is_dir():
        return [src], [Path(src.name)]
    out_r, src_r = out.resolve(), src.resolve()
    # --out inside the input folder: never segment our own earlier outputs (files under --out)
    skip = out_r if src_r in out_r.parents else None
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and (skip is None or skip not in p.resolve().parents))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {src}")
    return files, [p.relative_to(src) for p in files]


def _segment_outputs(files: list[Path], rels: list[Path], out: Path, kinds: list[str]) -> list[tuple[Path, str]]:
    """(folder, stem) per input for `save_prediction`, such that no two inputs write the same file and no output
    overwrites an input image. An input whose outputs would collide with another's (x.jpg and x.png both writing
    x.png; a.png's a_overlay.png and an input a_overlay.png) keeps its suffix in the name (x.jpg.png)."""
    def names(rel: Path, full: bool) -> list[Path]:
        stem = rel.name if full else rel.stem
        return [rel.parent / f"{stem}{kind}.png" for kind in kinds]

    def clashing(full: list[bool]) -> set[Path]:
        counts = Counter(n for rel, f in zip(rels, full, strict=True) for n in names(rel, f))
        return {n for n, c in counts.items() if c > 1}

    full = [False] * len(rels)
    bad = clashing(full)
    full = [bool(bad & set(names(rel, False))) for rel in rels]
    if bad := clashing(full):
        raise ValueError(f"inputs would write the same output files {sorted(map(str, bad))[:5]}; rename them")
    inputs = {p.resolve() for p in files}
    for path, rel, f in zip(files, rels, full, strict=True):
        for name in names(rel, f):
            if (out / name).resolve() in inputs:
                raise ValueError(f"writing {out / name} (the output for {path}) would overwrite an input image; "
                                 "choose an --out folder that holds no input images")
    return [(out / rel.parent, rel.name if f else rel.stem) for rel, f in zip(rels, full, strict=True)]


def _cmd_segment(args: argparse.Namespace) -> int:
    from .infer import Predictor, aug_test
    from .viz import save_prediction

    src, out = Path(args.input), Path(args.out)
    files, rels = _segment_inputs(src, out)
    kinds = [""] + ["_overlay"] * args.overlay + ["_priors"] * args.priors
    targets = _segment_outputs(files, rels, out, kinds)  # before the model is built: a clash costs nothing
    predictor = Predictor(args.model, weights=args.weights, device=args.device, mode=args.mode,
                          max_pixels=args.max_pixels or None, test_scale=args.test_scale, **aug_test(args.tta))
    if args.priors and not predictor.model.backbone.semantic:
        print(f"note: {args.model} has no semantic layers (a plain baseline): no prior grids are written",
              file=sys.stderr)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with huggingface_hub
        def tqdm(x, **_):  # type: ignore[no-redef]
            return x
    failed: list[tuple[Path, str]] = []
    for path, (folder, stem) in tqdm(list(zip(files, targets, strict=True)), desc="segment", unit="img",
                                     disable=len(files) < 2):
        try:
            pred = predictor(path)
            save_prediction(pred, folder, stem, overlay_png=args.overlay, priors_png=args.priors and bool(pred.priors))
        except (ValueError, OSError) as err:  # unreadable file: report it, go on with the batch
            failed.append((path, str(err)))
    print(f"segmented {len(files) - len(failed)}/{len(files)} image(s) with {args.model} -> {out}")
    for path, reason in failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


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


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .data.loader import worker_errors_unwrapped
    from .train import Trainer, load_config
    from .train.metrics import format_table

    _setup_logging()
    config = load_config(args.config, args.overrides)
    with worker_errors_unwrapped():  # a loader worker's error: its message, not "Caught ValueError in DataLoader..."
        trainer = Trainer(config)
        metrics = trainer.fit()
    if _is_main_process():
        if metrics:
            print(format_table(metrics))
        where = (f"log: {trainer.out_dir / 'log.jsonl'}; curves: {trainer.out_dir / 'curves.png'}; "
                 f"checkpoints: {trainer.ckpt_dir}")
        if trainer.stopped:  # no final weights were written
            print(f"{where}\nstopped at iteration {trainer.iteration} of {config.iters}: resume with the same "
                  "command", file=sys.stderr)
        else:
            print(f"{where}; weights: {trainer.out_dir / 'final'}")
    return 130 if trainer.stopped else 0  # 128 + SIGINT: scripts chaining on success do not go on


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data.loader import worker_errors_unwrapped
    from .train import load_config
    from .train.evaluate import parse_size
    from .train.metrics import format_table, metrics_json
    from .train.trainer import config_protocol, evaluate_checkpoint

    _setup_logging()
    config = load_config(args.config, args.overrides)
    # the config's eval_mode / eval_crop / eval_stride / eval_tta (what training evaluated with), unless flagged
    protocol = config_protocol(config, mode=args.mode, crop=parse_size(args.crop), stride=parse_size(args.stride),
                               tta=args.tta)
    with worker_errors_unwrapped():
        metrics, dataset = evaluate_checkpoint(config, args.checkpoint, split=args.split, protocol=protocol)
    if _is_main_process():
        scale = config.data.test_scale
        print(f"{dataset.name}: {len(dataset)} images; {protocol.describe()}; test scale "
              f"{tuple(scale) if scale else 'as stored'} (keep-ratio resize by the Predictor)")
        print(format_table(metrics))
        if args.json:
            Path(args.json).write_text(metrics_json(metrics), encoding="utf-8")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .train.demo import run_demo

    _setup_logging()  # the trainer logs the per-class table at each evaluation
    result = run_demo(args.out, seed=args.seed, **({"iters": args.iters} if args.iters is not None else {}))
    m, pictures = result["metrics"], result["pictures"]
    print(f"held-out mIoU {100 * m['mIoU']:.1f} in {result['seconds']:.0f} s")
    print(f"pictures: {result['overlays']} (image | truth | prediction | overlay); per held-out image in {pictures}: "
          "NNNN_overlay.png, NNNN_priors.png (semantic-prior arg-max and confidence per stage), NNNN.png (label ids)")
    print(f"curves: {result['curves']}; metrics: {result['out_dir'] / 'metrics.json'}; weights: {result['weights']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semask", description="SeMask semantic segmentation models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list architectures (and tags)")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--tags", action="store_true", help="include every arch.tag")
    p.add_argument("--pretrained", action="store_true", help="only tags that pretrained=True loads")
    p.add_argument("--unpublished", action="store_true",
                   help="with --pretrained: also released originals not yet converted on the hub")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parameters and config of a model")
    p.add_argument("model", help="arch, arch.tag, local-dir:FOLDER or hf-hub:OWNER/REPO[@REV]")
    p.add_argument("--flops", action="store_true", help="count multiply-accumulates (torch.utils.flop_counter)")
    p.add_argument("--size", type=_size, help="input size for --flops (implies it): N or HxW (512)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export", help="export to ONNX or a torch.export program (dynamic H/W)")
    p.add_argument("model", help="arch, arch.tag, local-dir:FOLDER or hf-hub:OWNER/REPO[@REV]")
    p.add_argument("out", help="output file (.onnx or .pt2)")
    p.add_argument("--format", choices=("onnx", "torch"), help="default: from OUT's suffix (.onnx / .pt2), else onnx")
    p.add_argument("--weights", help="local weights: safetensors file/folder or original .pth/.pkl (default: a "
                                     "tag's published weights; an arch without a tag: untrained, with a warning)")
    p.add_argument("--size", type=_size, default=[512, 512], help="example input traced: N or HxW (512); "
                                                                  "the program accepts other sizes")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--dataset", help="class table (e.g. ade20k) written into the ONNX metadata for weights that "
                                     "record none (default: the weights' own; else guessed from the class count, "
                                     "with a warning)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert", help="convert an original checkpoint (mmseg or detectron2) to model.safetensors + "
                                       "config.json")
    p.add_argument("checkpoint", help="original .pth file (mmseg or detectron2), or a detectron2 .pkl")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--model", help="arch.tag whose windowed/global semantic layout to use "
                                   "(default: the original code's rule)")
    p.add_argument("--allow-unsafe", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("segment", help="segment an image or a folder; write label PNGs (+ overlays, prior grids)")
    p.add_argument("input", help="an image file or a folder (searched recursively)")
    p.add_argument("--model", required=True, help="arch or arch.tag (a tag loads its published weights), or "
                   "local-dir:FOLDER (a folder written by semask convert), or hf-hub:OWNER/REPO[@REV] "
                   "(a hub repo of one)")
    p.add_argument("--weights", help="semask folder / safetensors file, or an ORIGINAL .pth/.pkl checkpoint")
    p.add_argument("--out", required=True, help="output folder: NAME.png (label ids), NAME_overlay.png, ...")
    p.add_argument("--mode", choices=("whole", "slide"), default="whole")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.5..1.75) + flip, as mmseg --aug-test")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--priors", action="store_true", help="also write NAME_priors.png (per-stage prior maps)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="refuse larger images (default 4096²; 0: no limit)")
    p.add_argument("--test-scale", type=_test_scale, help="LONG,SHORT keep-ratio resize bound before inference, or "
                   "'original' (no resize); default: the weights' (a training run's data.test_scale)")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("publish", help="convert original checkpoints, write model.safetensors + config.json + model "
                                       "card, upload to the Hugging Face Hub, print the manifest entries")
    p.add_argument("checkpoints", nargs="+", metavar="ORIGINAL", help="original .pth (or detectron2 .pkl) files")
    p.add_argument("--repo-id", help="hub repo (may use {arch}, {dataset}, {name}); default: the manifest's")
    p.add_argument("--model", help="arch.tag of the checkpoint (default: the released tag its config matches)")
    p.add_argument("--out", help="folder for the files, one subfolder per checkpoint (default: ./publish)")
    p.add_argument("--dry-run", action="store_true", help="write the files and print the entry; upload nothing")
    p.add_argument("--allow-unsafe", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("train", help="train or fine-tune (launch with torchrun for several GPUs/processes)")
    p.add_argument("--config", help="YAML or JSON config (presets: configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iters=1000 data.root=/data/ade")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="aAcc / mIoU / mAcc / per-class IoU of a checkpoint on a dataset split")
    p.add_argument("--config", required=True, help="the training config (dataset, model, test scale)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) or semask weights folder")
    p.add_argument("--split", help="dataset split (default: data.val_split)")
    p.add_argument("--mode", choices=("whole", "slide"),
                   help="whole image or sliding window (images resized to data.test_scale first); default: the "
                        "config's eval_mode")
    p.add_argument("--crop", help="slide window N or H,W (default: the config's eval_crop, else data.crop_size)")
    p.add_argument("--stride", help="slide stride N or H,W (default: the config's eval_stride, else 2/3 of the crop)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="multi-scale (0.5..1.75) + flip, as mmseg "
                   "--aug-test (default: the config's eval_tta)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="offline demo: synthetic data -> train a small SeMask on the CPU -> evaluate")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--iters", type=_positive_int, help="training iterations (default: the demo's tuned count)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError, TypeError) as err:  # OSError: missing, existing or unwritable paths
        print(f"semask {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
