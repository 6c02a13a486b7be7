"""Multiply-accumulate counts with `torch.utils.flop_counter` (no weights needed: the model can live on "meta")."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

# Tensor-tensor products of attention (q @ k^T, attn @ v, fused attention kernels). mmcv's counter, which the SeMask
# paper's Table 2 used, hooks modules (Linear, Conv, ...) and so never sees them.
_ATTENTION_OPS = ("bmm", "matmul", "scaled_dot_product")


def count_macs(model: nn.Module, size: tuple[int, int], *, batch: int = 1) -> dict[str, int]:
    """{"total": MACs, "mmcv": MACs without attention products, "<aten op>": MACs, ...} of one inference forward
    at `size` (flop counter FLOPs / 2).

    "total" counts every matmul and convolution (attention included). "mmcv" leaves out the attention products, as
    the module-hook counter behind the paper's FLOPs column does (it matches that table to < 1 %).
    Element-wise ops, norms and softmax are not counted.
    """
    p = next(model.parameters())
    x = torch.zeros(batch, 3, *size, device=p.device, dtype=p.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    by_op = {str(op).removeprefix("aten."): int(n) // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    total = int(counter.get_total_flops()) // 2
    attention = sum(n for op, n in by_op.items() if op.startswith(_ATTENTION_OPS))
    return {"total": total, "mmcv": total - attention, **by_op}
