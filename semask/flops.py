"""Multiply-accumulate counts with `torch.utils.flop_counter` (no weights needed: the model can live on "meta")."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, size: tuple[int, int], *, batch: int = 1) -> dict[str, int]:
    """{"total": MACs, "<aten op>": MACs, ...} of one inference forward at `size` (flop counter FLOPs / 2).

    Counts matmuls and convolutions (attention included); element-wise ops, norms and softmax are not counted, as
    in the papers' tables.
    """
    p = next(model.parameters())
    x = torch.zeros(batch, 3, *size, device=p.device, dtype=p.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    by_op = {str(op).removeprefix("aten."): int(n) // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()) // 2, **by_op}
