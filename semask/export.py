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
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram

# The example input is traced, not baked in; it must give every stage more than one window (see min_input_size).
DEFAULT_EXAMPLE = (512, 512)
MAX_SIZE = 8192  # the largest H/W an exported program accepts by default


class _Logits(nn.Module):
    """Wraps a segmentor so the program returns a tuple (logits[, prior_logits]): ONNX outputs are positional."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[k] for k in ("logits", "prior_logits") if k in out)


def _stage_sizes(cfg: Any, n: int) -> list[int]:
    """Side length of each backbone stage's map (strides 4, 8, 16, 32) for an input side `n`."""
    if cfg.mask_classification:  # mask classification: the input is padded to a multiple of 32
        n = -(-n // cfg.size_divisibility) * cfg.size_divisibility
    if cfg.backbone == "mit":
        from .backbones.mit import stage_sizes

        return stage_sizes(n, cfg.mit_patch_sizes, cfg.mit_strides)
    n = -(-n // cfg.patch_size)  # Swin: padded to the patch size, then PatchMerging pads odd sizes
    return [-(-n // 2 ** i) for i in range(len(cfg.depths))]


def _stage_minimum(cfg: Any, stage: int) -> int:
    """Fewest tokens per side stage `stage` may have in a program: the tracer specialises sizes 0 and 1, so every
    size the graph derives from H must stay >= 2: the count of attention windows (Swin's windows at every stage, the
    semantic layer's at its windowed stages) and MiT's key/value map after the k=s=sr_ratio reduction conv."""
    need = 2
    if cfg.backbone == "mit":
        need = max(need, 2 * cfg.mit_sr_ratios[stage])  # (n // sr) >= 2
    else:
        need = max(need, cfg.window_size + 1)  # ceil(n / window) >= 2
    if cfg.semantic_attention and cfg.semantic_attention[stage] == "window":
        need = max(need, cfg.sem_window_size + 1)
    return need


def min_input_size(model: nn.Module) -> int:
    """Smallest H/W an exported torch.export program accepts (eager PyTorch and ONNX runtimes have no such limit):
    the smallest side at which every stage keeps the sizes the tracer must not specialise above 1 (see
    `_stage_minimum`). Swin with window w: 32w + 1 (225 for w 7, 385 for w 12); SegFormer's MiT (key/value reduction
    8/4/2/1 at strides 4/8/16/32): 61, also with the SeMask-MiT layout (7x7 semantic windows in stages 0-1)."""
    cfg = model.config
    needs = [_stage_minimum(cfg, i) for i in range(len(cfg.depths))]
    return next(n for n in range(1, MAX_SIZE + 1)
                if all(m >= need for m, need in zip(_stage_sizes(cfg, n), needs, strict=True)))


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
                   min_size: int | None = None, max_size: int = MAX_SIZE) -> ExportedProgram:
    """`torch.export.export` of `model` (in eval mode) with dynamic height and width in [min_size, max_size]
    (default min: `min_input_size(model)`: Swin 225 for window 7, 385 for window 12; MiT 61). Eager PyTorch and the
    ONNX file of the program have no minimum: only this program's shape guards do.

    The program's module returns a tuple: (logits, prior_logits) for SeMask models, (logits,) for baselines.
    Mask-classification models' "logits" are their semantic scores (softmax(class) · sigmoid(mask) summed over
    queries, see `semantic_inference`): argmax them.
    """
    check_export_support()
    min_size = min_input_size(model) if min_size is None else min_size
    if not all(min_size <= s <= max_size for s in example_size):
        good = max(min_size, min(DEFAULT_EXAMPLE[0], max_size))
        raise ValueError(f"the traced example size {tuple(example_size)} must lie within [{min_size}, {max_size}] "
                         f"for {model.config.arch} (see semask.export.min_input_size); trace at {good}x{good} "
                         f"(semask export --size {good}): the program accepts every size in that range")
    model = _Logits(model.eval())
    example = torch.randn(batch, 3, *example_size, device=next(model.parameters()).device)  # the model's device
    return torch.export.export(model, (example,), dynamic_shapes=_dims(min_size, max_size),
                               prefer_deferred_runtime_asserts_over_guards=True)


# How each `semask.infer.input_resize` rule resizes the image, for runtimes that follow the metadata.
RESIZE_STEPS = {
    "bilinear": "bilinear with half-pixel centres and no antialiasing, on the uint8 image as float; round and clip "
                "to 0..255 (mmseg's cv2.resize)",
    "pil": "Pillow's Image.resize(size, Image.BILINEAR) on the uint8 RGB image (antialiased when it shrinks; "
           "detectron2's ResizeShortestEdge)",
}


def deployment_metadata(model: nn.Module, *, dataset: str | None = None, min_size: int | None = None,
                        max_size: int = MAX_SIZE) -> dict[str, Any]:
    """What a runtime needs besides the graph to segment an image as the `Predictor` does (JSON-ready): the
    weights' preprocessing, the classes (names, palette, the offset of the dataset's label ids) and what the
    outputs are. `export_onnx` writes it into the file as metadata_props["semask"];
    `examples/onnx_segment.py` follows it with numpy, Pillow and onnxruntime alone.

    `dataset` names the class table of a model whose weights record none (as the Predictor's `dataset=`);
    without it such a model's table is guessed from its class count, with a warning, and "dataset_guessed" is
    true."""
    from .data.palettes import get_class_info
    from .infer import input_resize, model_classes, model_preprocessing, warn_guessed_dataset

    cfg = model.config
    pre, guessed = model_preprocessing(model)
    resize = input_resize(model)
    if dataset is not None:
        classes, guessed = get_class_info(dataset, cfg.num_classes), None
    else:
        classes = model_classes(model, pre.get("dataset") or guessed)
        if guessed:
            warn_guessed_dataset(model, guessed, "pass dataset= to deployment_metadata (semask export --dataset) "
                                                 "if that is wrong")
    scores = ("semantic scores (softmax(class) x sigmoid(mask) summed over queries)"
              if cfg.mask_classification else "class logits")
    return {
        "arch": cfg.arch,
        "tag": (getattr(model, "pretrained_cfg", None) or {}).get("name"),  # whose preprocessing and classes
        "num_classes": cfg.num_classes,
        "dataset": classes.name,
        "dataset_guessed": guessed is not None,  # from the class count alone: the weights record no dataset
        "class_names": list(classes.names),
        "palette": classes.palette.tolist(),
        "label_offset": classes.label_offset,
        "input": {
            "name": "images", "shape": "[1, 3, H, W] float32, RGB (one image: the batch is fixed at export)",
            # the torch.export (.pt2) program's shape guard; the ONNX graph runs at any size (none is padded to it)
            "min_size": min_input_size(model) if min_size is None else min_size, "max_size": max_size,
            "size_limits": "min_size/max_size bound the torch.export (.pt2) program only; the ONNX graph takes any "
                           "H, W >= 1 (sides below pad_to_min padded as the steps say)",
            "pad_to_min": int(getattr(model.backbone, "min_size", 1)),
            "test_scale": None if pre["test_scale"] in (None, "original") else list(pre["test_scale"]),
            "mean": list(pre["mean"]), "std": list(pre["std"]),
            "resize": resize,
            "steps": "resize the 0..255 RGB image keeping its aspect ratio to the largest size with long side <= "
                     "max(test_scale) and short side <= min(test_scale) (it may upscale; sizes rounded half up; "
                     "test_scale null: no resize), " + RESIZE_STEPS[resize] + "; "
                     "(x - mean) / std per channel; a side below pad_to_min is zero-padded at the bottom/right "
                     "to pad_to_min (the logits cropped back)",
        },
        "outputs": {
            "logits": f"[1, K, H, W] {scores} at the input size: resize them bilinearly (half-pixel centres) to "
                      "the image's original size and take the argmax over K; add label_offset to get the "
                      "dataset's label ids",
            "prior_logits": "[1, K', H, W] the semantic-prior logits (SeMask models only)",
        },
    }


def export_onnx(model: nn.Module | ExportedProgram, path: str | Path, *,
                example_size: tuple[int, int] = DEFAULT_EXAMPLE, opset: int = 18, min_size: int | None = None,
                max_size: int = MAX_SIZE, metadata: dict[str, Any] | None = None) -> Path:
    """Write an ONNX file (opset >= 17, inputs `images` [B, 3, H, W] with dynamic H and W and a fixed B: 1 from a
    model, the traced batch of a program; outputs `logits` and, for SeMask models, `prior_logits`) from a model or an
    `export_program` result.

    The file's metadata_props["semask"] holds `metadata` as JSON: by default, for a model,
    `deployment_metadata(model)` (preprocessing, classes, outputs); pass it yourself with a program.
    Needs the `onnx` and `onnxscript` packages (the `export` extra)."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (dynamic padding and LayerNorm), got {opset}")
    if isinstance(model, ExportedProgram):
        program = model
    else:
        if metadata is None:
            metadata = deployment_metadata(model, min_size=min_size, max_size=max_size)
        program = export_program(model, example_size=example_size, min_size=min_size, max_size=max_size)
    names = ["logits", "prior_logits"][:len(program.graph_signature.user_outputs)]
    onnx_program = torch.onnx.export(program, input_names=["images"], output_names=names, opset_version=opset,
                                     dynamo=True, optimize=True)
    if metadata is not None:
        onnx_program.model.metadata_props["semask"] = json.dumps(metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path
