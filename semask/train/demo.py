"""`semask demo`: generate a synthetic dataset, train a small SeMask model on the CPU, evaluate it on held-out
images, and write overlays, prior-map grids and curves — the whole trainer in a few minutes, offline."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..data import SegmentationDataset, folder, write_synthetic_dataset
from ..viz import save_prediction
from .config import DataConfig, TrainConfig
from .evaluate import eval_predictor
from .metrics import format_table
from .plots import comparison_strip

_log = logging.getLogger(__name__)

# A small SeMask-Swin (4 stages, 1 block each, windows of 4 tokens): ~1.6M parameters, trains in minutes on 2 cores.
DEMO_MODEL = "test_semask_swin_fpn"
DEMO_OVERRIDES = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4, sem_window_size=4,
                      decoder_channels=32, drop_path_rate=0.0, decoder_dropout=0.0)


DEMO_ITERS = 500


def demo_config(out_dir: str | Path, *, iters: int = DEMO_ITERS, image_size: int = 64, seed: int = 0) -> TrainConfig:
    out = Path(out_dir)
    data = DataConfig(type="folder", root=str(out / "data"), train_split="train", val_split="val",
                      crop_size=(image_size, image_size), scale=(image_size, image_size), ratios=(1.0, 1.25, 1.5),
                      photometric=False, test_scale=None, num_workers=0)
    return TrainConfig(model=DEMO_MODEL, model_overrides=dict(DEMO_OVERRIDES), data=data, out_dir=str(out / "run"),
                       iters=iters, batch_size=8, lr=3e-3, weight_decay=0.01, warmup_iters=min(30, iters),
                       warmup_ratio=1e-3, eval_interval=max(iters // 5, 1), ckpt_interval=iters,
                       keep_last=1, log_interval=10, seed=seed, resume=None, loss_reduction="valid")


def run_demo(out_dir: str | Path = "demo_out", *, iters: int = DEMO_ITERS, train_images: int = 192,
             val_images: int = 48, image_size: int = 64, seed: int = 0, threads: int | None = 1,
             progress: bool = True) -> dict:
    """Returns {"metrics", "seconds", "out_dir", "pictures", "overlays", "curves", "weights"}; all written under
    `out_dir`. `pictures` is a folder with, per held-out image NNNN, what `semask segment --overlay --priors` writes
    (NNNN.png label ids, NNNN_overlay.png, NNNN_priors.png: per-stage prior arg-max + confidence), and `overlays`
    one picture of image | truth | prediction | overlay rows.

    `threads=1` (default): for these tiny tensors one intra-op thread is as fast as two on an idle machine and
    many times faster on a busy one (OpenMP threads spin-waiting for a shared core); None keeps torch's setting.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(Path(out_dir), iters=iters, train_images=train_images, val_images=val_images,
                         image_size=image_size, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _run_demo(out: Path, *, iters: int, train_images: int, val_images: int, image_size: int, seed: int,
              progress: bool) -> dict:
    from .trainer import Trainer

    start = time.perf_counter()
    torch.manual_seed(seed)
    write_synthetic_dataset(out / "data", train=train_images, val=val_images, size=image_size, seed=seed)
    cfg = demo_config(out, iters=iters, image_size=image_size, seed=seed)
    _clear_previous_checkpoints(Path(cfg.out_dir) / "checkpoints")
    trainer = Trainer(cfg, progress=progress)
    metrics = trainer.fit()
    overlays = _write_pictures(trainer.module, folder(out / "data", "val"), out / "pictures", cfg)
    seconds = time.perf_counter() - start
    summary = {"mIoU": metrics["mIoU"], "aAcc": metrics["aAcc"], "mAcc": metrics["mAcc"], "IoU": metrics["IoU"],
               "seconds": round(seconds, 1), "iters": iters, "model": DEMO_MODEL, "overrides": DEMO_OVERRIDES}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=list) + "\n", encoding="utf-8")
    (out / "metrics.txt").write_text(format_table(metrics) + "\n", encoding="utf-8")
    return {"metrics": metrics, "seconds": seconds, "out_dir": out, "pictures": out / "pictures",
            "overlays": overlays, "curves": out / "run" / "curves.png", "weights": out / "run" / "final"}


def _clear_previous_checkpoints(folder_path: Path) -> None:
    """The demo owns out/run and starts afresh each time (resume=None): an earlier demo's checkpoints go, as the
    trainer refuses a fresh run beside another run's checkpoints (its log is kept as log.previous.jsonl)."""
    if folder_path.is_dir():
        _log.info("demo: deleting the previous demo run's checkpoints in %s (each demo trains afresh)", folder_path)
        shutil.rmtree(folder_path)


def _write_pictures(model: torch.nn.Module, dataset: SegmentationDataset, folder_out: Path, cfg: TrainConfig,
                   count: int = 6) -> Path:
    """The first `count` held-out images through the Predictor (the evaluation's settings): `save_prediction` with
    overlay and prior grid for each, and overlays.png (image | truth | prediction | overlay, one row per image, ×2)."""
    from PIL import Image

    d = cfg.data
    predictor = eval_predictor(model, test_scale=d.test_scale, crop_size=d.crop_size, mean=d.mean, std=d.std,
                              classes=dataset.class_info)
    rows = []
    for i in range(min(count, len(dataset))):
        sample = dataset.load(i)
        pred = predictor(sample["image"])
        save_prediction(pred, folder_out, Path(sample["path"]).stem, priors_png=True)
        rows.append(comparison_strip(sample["image"], sample["label"], pred.labels, pred.classes.palette))
    strip = np.concatenate(rows, 0)
    path = folder_out / "overlays.png"
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.Resampling.NEAREST).save(path)
    return path
