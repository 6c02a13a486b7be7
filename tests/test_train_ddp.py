"""`torchrun --nproc_per_node 2` (gloo, CPU) against one process over the same global batch.

Equal up to float summation order once the per-process randomness is off: dropout (also the semantic layers' fixed
proj_drop) and stochastic depth draw masks from per-process streams, and BatchNorm statistics are frozen (`norm_eval`;
SyncBatchNorm is CUDA-only, so on CPU each process would normalise over its half batch). Checked: the averaged
gradient of the first step (rtol 1e-4, atol 1e-7), the loss sequence (rtol 1e-4), the trained weights (atol 1e-6;
measured 6e-8), the metrics of the same weights (exact: no sample counted twice) and of the trained weights (abs 1e-3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._trainkit import TINY, one_thread, tiny_config, tiny_data  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], tmp: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_match_one_over_the_same_global_batch(tmp_path):
    data = tiny_data(tmp_path / "data", train=8, val=3)
    results = {}
    for world, batch in ((1, 4), (2, 2)):
        cfg = tiny_config(data, tmp_path / f"out{world}", iters=3, batch_size=batch, eval_interval=3, ckpt_interval=3,
                          norm_eval=True, resume=None,
                          model_overrides=dict(TINY, drop_path_rate=0.0, decoder_dropout=0.0))
        cfg_file = tmp_path / f"cfg{world}.json"
        cfg_file.write_text(json.dumps(cfg.to_dict()))
        script = [str(ROOT / "tests" / "_ddp_worker.py"), str(cfg_file), str(tmp_path / f"res{world}")]
        if world == 1:
            _run([sys.executable, *script], tmp_path)
        else:
            _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  *script], tmp_path)
        res = tmp_path / f"res{world}"
        results[world] = (json.loads((res / "result.json").read_text()),
                          *(torch.load(res / f, weights_only=True) for f in ("weights.pt", "grads.pt")))
    (one, w1, g1), (two, w2, g2) = results[1], results[2]
    assert (one["world"], two["world"]) == (1, 2)
    assert one["before"] == two["before"]  # 3 validation images split 2 + 1 over the processes, none counted twice
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    assert set(g1) == set(g2) and len(g1) > 50
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-7, msg=k)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=1e-5, msg=k)
    assert two["after"]["mIoU"] == pytest.approx(one["after"]["mIoU"], abs=1e-3)


def _torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_every_process_reports_a_bad_mask_of_any_shard(tmp_path):
    """Each process checks its shard of the masks and all of them raise the gathered error (a process whose shard is
    clean would otherwise go on and wait for the others)."""
    import numpy as np
    from PIL import Image

    data = tiny_data(tmp_path / "data", train=4, val=3)
    mask = tmp_path / "data" / "masks" / "val" / "0001.png"  # shard of process 1 (process 0 reads 0000, 0002)
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(mask)
    cfg = tiny_config(data, tmp_path / "out", batch_size=1)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    proc = _torchrun(["-m", "semask.cli", "train", "--config", str(cfg_file)], tmp_path)
    assert proc.returncode != 0
    reports = [line for line in (proc.stdout + proc.stderr).splitlines() if "semask train: error: bad data" in line]
    assert len(reports) == 2, proc.stderr[-5000:]
    assert (proc.stdout + proc.stderr).count("0001.png has label values [9]") == 2
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_finetune_example_under_torchrun_reports_once(tmp_path):
    """examples/finetune_custom.py on 2 processes: one results table, one weights line; with a mask-classification
    model under its bf16 autocast."""
    pytest.importorskip("scipy", reason="Hungarian matching needs scipy (the train extra)")
    data = tiny_data(tmp_path / "data", train=4, val=2, size=64)
    proc = _torchrun([str(ROOT / "examples" / "finetune_custom.py"), str(data), "--out", str(tmp_path / "run"),
                      "--arch", "test_semask_mask2former", "--iters", "2", "--crop", "64", "--batch-size", "1",
                      "--no-imagenet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.count("mIoU") == 1 and proc.stdout.count("weights: ") == 1, proc.stdout
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
