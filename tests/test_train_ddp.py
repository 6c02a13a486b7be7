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
