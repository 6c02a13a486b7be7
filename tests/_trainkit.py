"""Shared helpers for the trainer tests: a tiny synthetic folder dataset and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semask.data import write_synthetic_dataset
from semask.train import DataConfig, TrainConfig

TINY = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, sem_window_size=4,
            decoder_channels=8, drop_path_rate=0.1, decoder_dropout=0.1)


def tiny_data(root: Path, *, train: int = 8, val: int = 4, size: int = 32) -> Path:
    return write_synthetic_dataset(root, train=train, val=val, size=size, seed=1)


def tiny_config(data_root: Path, out_dir: Path, **changes) -> TrainConfig:
    data = DataConfig(type="folder", root=str(data_root), train_split="train", val_split="val", crop_size=(32, 32),
                      scale=(32, 32), ratios=(1.0, 1.5), photometric=True, test_scale=None, num_workers=0)
    cfg = TrainConfig(model="test_semask_swin_fpn", model_overrides=dict(TINY), data=data, out_dir=str(out_dir),
                      iters=6, batch_size=2, lr=1e-3, weight_decay=0.01, warmup_iters=2, eval_interval=3,
                      ckpt_interval=2, keep_last=2, log_interval=1, seed=3, resume="auto")
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
