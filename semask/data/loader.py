"""Deterministic sampling for iteration-based training: which sample, and with which augmentation seed.

`ResumableSampler` is `torch.utils.data.DistributedSampler` (same shuffling and padding, so one process with a
global batch of B·N sees the same samples as N processes with B each) that also (a) starts mid-epoch, for exact
resume, and (b) yields `(index, seed)` pairs: each sample's augmentation seed is a function of the run seed, the
epoch and its position in the epoch's global order — never of the worker, the process or how often we resumed.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .datasets import SegmentationDataset


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # samples of THIS process to skip in the current epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:  # exactly DistributedSampler's order
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        order += (order * math.ceil(self.total_size / n))[: self.total_size - n]
        positions = range(self.rank, self.total_size, self.num_replicas)
        for pos in list(positions)[self.start:]:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, pos]).generate_state(1)[0])
            yield order[pos], seed


class TransformedDataset(Dataset):
    """`dataset[(index, seed)]` -> {"image": float32 [3, H, W] tensor, "label": int64 [H, W] tensor, ...}."""

    def __init__(self, dataset: SegmentationDataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        sample = self.transform(self.dataset.load(index), np.random.default_rng(seed))
        out = {"image": torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1))),
               "index": index}
        if "label" in sample:
            out["label"] = torch.from_numpy(np.ascontiguousarray(sample["label"])).long()
        return out


def collate(batch: list[dict]) -> dict:
    """Stack same-size samples; a clear error when sizes differ (use batch size 1 or a crop)."""
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sorted(shapes)}; use batch_size 1 for evaluation "
                         "or crop/pad the images to one size")
    out = {"image": torch.stack([b["image"] for b in batch]), "index": torch.tensor([b["index"] for b in batch])}
    if "label" in batch[0]:
        out["label"] = torch.stack([b["label"] for b in batch])
    return out


# How the main process re-raises a worker's exception (torch.utils.data's ExceptionWrapper.reraise).
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_error_message(err: BaseException) -> str | None:
    """The message a DataLoader worker raised `err` with, or None if `err` is not a worker's error. The main
    process re-raises it as 'Caught ValueError in DataLoader worker process 1. Original Traceback ...': the
    message is the text after the traceback's last 'ValueError: '."""
    text = str(err)
    head = _WORKER_ERROR.match(text)
    if head is None:
        return None
    # The last line naming the type (module-qualified for non-builtin types) starts the message, which may span lines.
    starts = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(head.group(1))}: ", text, re.M))
    return text[starts[-1].end():].rstrip() if starts else None


@contextlib.contextmanager
def worker_errors_unwrapped() -> Iterator[None]:
    """Re-raise an exception from a DataLoader worker with the worker's own message (e.g. a bad file), chained to
    the worker's traceback, so that a command line that prints `str(err)` prints that message."""
    try:
        yield
    except Exception as err:
        message = worker_error_message(err)
        if message is None:
            raise
        raise type(err)(message) from err


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: process r takes samples r, r + N, ... with NO padding (no sample counted twice)."""

    def __init__(self, n: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
