"""`semask demo` (a few iterations: the full run is the README's main job) and examples/finetune_custom.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.cli import main
from semask.data import folder
from semask.data.palettes import generate_palette
from semask.data.synthetic import make_sample, write_synthetic_dataset
from tests._trainkit import one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def test_synthetic_data_is_deterministic_and_valid(tmp_path):
    a = make_sample(np.random.default_rng(0), 32)
    b = make_sample(np.random.default_rng(0), 32)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    root = write_synthetic_dataset(tmp_path, train=3, val=2, size=24)
    ds = folder(root, "train")
    assert len(ds) == 3 and ds.num_classes == 5 and ds.load(0)["label"].max() < 5


def test_demo_cli_writes_pictures_metrics_and_weights(tmp_path, capsys, monkeypatch, caplog):
    import semask.train.demo as demo

    real = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: real(out, **kw, train_images=8, val_images=3,
                                                                  image_size=32, progress=False))
    assert main(["demo", "--out", str(tmp_path), "--iters", "3"]) == 0
    out = capsys.readouterr().out
    assert "held-out mIoU" in out and "overlays.png" in out and "_priors.png" in out
    pictures = tmp_path / "pictures"
    strip = np.asarray(Image.open(pictures / "overlays.png"))
    assert strip.shape == (2 * 3 * 32, 2 * 4 * 32, 3)  # 3 rows of image | truth | prediction | overlay, ×2
    truth = np.asarray(Image.open(tmp_path / "data" / "masks" / "val" / "0000.png"))
    assert np.array_equal(strip[:64:2, 64:128:2], generate_palette(5)[truth])  # truth in the palette's colours
    # what `semask segment --overlay --priors` writes, through the Predictor: label ids, overlay, prior grid
    assert sorted(p.name for p in pictures.glob("0000*")) == ["0000.png", "0000_overlay.png", "0000_priors.png"]
    assert len(list(pictures.glob("*_priors.png"))) == 3
    assert Image.open(pictures / "0000.png").size == (32, 32) and Image.open(pictures / "0000_priors.png").width > 256
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 1 and metrics["iters"] == 3
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    # run again in the same folder: a fresh log (the first run's kept aside), not one appended to the other, and
    # the demo clears its own earlier checkpoints (the trainer refuses a fresh run beside another run's)
    with caplog.at_level("INFO", logger="semask.train.demo"):
        assert main(["demo", "--out", str(tmp_path), "--iters", "2"]) == 0
    assert "previous demo run's checkpoints" in caplog.text
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("iter_*.pt"))] == ["iter_0000002.pt"]
    iters = [json.loads(line)["iter"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert iters == sorted(iters) and max(iters) == 2
    assert (tmp_path / "run" / "log.previous.jsonl").read_text().count("\n") >= 1
    for bad in ("0", "-3", "x"):
        with pytest.raises(SystemExit):
            main(["demo", "--out", str(tmp_path), "--iters", bad])


def test_finetune_example_runs_on_a_folder_dataset(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", train=4, val=2, size=32)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "examples" / "finetune_custom.py"), str(data), "--out", str(tmp_path / "run"),
           "--arch", "test_semask_swin_fpn", "--iters", "2", "--crop", "32", "--batch-size", "2", "--no-imagenet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout and (tmp_path / "run" / "final" / "model.safetensors").is_file()
