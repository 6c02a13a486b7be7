"""Deployment: `torch.export` programs and ONNX files with dynamic H/W, and a fullgraph-compilable backbone.

Every family exports: Semantic-FPN, SegFormer, and the mask-classification models (MaskFormer, Mask2Former, FaPN,
MSFaPN). Traced code paths (see `semask.layers.is_tracing`) avoid the Python-side bias cache, build the shift mask
from tensor ops, always pad (a zero pad is a no-op) and crop by gathering, so one program serves every input size;
FaPN's deformable convolution takes its `grid_sample` form (an ONNX GridSample, no torchvision op).
The shape guards torch.export cannot prove on its own (e.g. `ceil(h/7) % (7 * ceil(h/7)) != 0`, true for every
valid size) become runtime assertions in the program (`prefer_deferred_runtime_asserts_over_guards`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram

# The example input is traced, not baked in; it must give every stage more than one window (see min_input_size).
DEFAULT_EXAMPLE = (512, 512)


class _Logits(nn.Module):
    """Wraps a segmentor so the program returns a tuple (logits[, prior_logits]): ONNX outputs are positional."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[k] for k in ("logits", "prior_logits") if k in out)


def min_input_size(model: nn.Module) -> int:
    """Smallest H/W an exported program accepts: every stage (stride 32 at the last) must have more than one
    window, since the tracer specialises size-1 window counts (eager PyTorch has no such limit)."""
    cfg = model.config
    return 32 * max(cfg.window_size or 0, cfg.sem_window_size or 0, 1) + 1  # MiT: no attention window


def _dims(min_size: int, max_size: int) -> tuple[dict[int, Dim], ...]:
    return ({2: Dim("height", min=min_size, max=max_size), 3: Dim("width", min=min_size, max=max_size)},)


def check_export_support() -> None:
    """Raise a clear error on torch builds whose `torch.export.export` cannot defer shape guards to runtime
    asserts (before 2.9): there, dynamic H/W export fails on guards like the one in the module docstring."""
    if "prefer_deferred_runtime_asserts_over_guards" not in inspect.signature(torch.export.export).parameters:
        raise RuntimeError(f"exporting with dynamic height/width needs torch >= 2.9 (torch.export's "
                           f"prefer_deferred_runtime_asserts_over_guards); this is torch {torch.__version__}. "
                           "Upgrade with: pip install -U 'torch>=2.9' (or install semask[export])")


def export_program(model: nn.Module, *, example_size: tuple[int, int] = DEFAULT_EXAMPLE, batch: int = 1,
                   min_size: int | None = None, max_size: int = 8192) -> ExportedProgram:
    """`torch.export.export` of `model` (in eval mode) with dynamic height and width in [min_size, max_size]
    (default min: `min_input_size(model)`, 225 for window 7, 385 for window 12).

    The program's module returns a tuple: (logits, prior_logits) for SeMask models, (logits,) for baselines.
    Mask-classification models' "logits" are their semantic scores (softmax(class) · sigmoid(mask) summed over
    queries, see `semantic_inference`): argmax them.
    """
    check_export_support()
    min_size = min_input_size(model) if min_size is None else min_size
    model = _Logits(model.eval())
    example = torch.randn(batch, 3, *example_size)
    return torch.export.export(model, (example,), dynamic_shapes=_dims(min_size, max_size),
                               prefer_deferred_runtime_asserts_over_guards=True)


def export_onnx(model: nn.Module | ExportedProgram, path: str | Path, *,
                example_size: tuple[int, int] = DEFAULT_EXAMPLE, opset: int = 18, min_size: int | None = None,
                max_size: int = 8192) -> Path:
    """Write an ONNX file (opset >= 17, inputs `images` [B, 3, H, W] with dynamic H and W; outputs `logits`
    and, for SeMask models, `prior_logits`) from a model or an `export_program` result.
    Needs the `onnx` and `onnxscript` packages (the `export` extra)."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (dynamic padding and LayerNorm), got {opset}")
    program = model if isinstance(model, ExportedProgram) else export_program(
        model, example_size=example_size, min_size=min_size, max_size=max_size)
    names = ["logits", "prior_logits"][:len(program.graph_signature.user_outputs)]
    onnx_program = torch.onnx.export(program, input_names=["images"], output_names=names, opset_version=opset,
                                     dynamo=True, optimize=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path
