"""ImageNet Swin classification checkpoints (timm or Microsoft layout) -> a semask backbone, for fine-tuning.

Two layouts exist for the same weights:
* Microsoft (`swin_tiny_patch4_window7_224.pth`, what the original repo passed as `model.pretrained`): `{'model': sd}`,
  PatchMerging at the END of stage i (`layers.{i}.downsample`, i < n-1), plus `norm.*`, `head.*` and the constant
  `relative_position_index` / `attn_mask` buffers.
* timm >= 0.9 (`timm/swin_*` on the Hugging Face Hub): PatchMerging at the START of the next stage
  (`layers.{i+1}.downsample`), `head.fc.*`, no buffers.
Ours follows the segmentation Swin (downsample at the end of stage i, like Microsoft). The classifier `head` and the
final `norm` are dropped; semantic layers, the per-stage `norm{i}` and the decoder keep their initialisation.
Relative-position tables are resized (timm's `resize_rel_pos_bias_table`) when the windows differ.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .common import fail_on_unmapped
from .mmseg import StateDict, read_checkpoint, unwrap_state_dict

_log = logging.getLogger(__name__)
_DROP = re.compile(r"^(head\.|norm\.)|\.relative_position_index$|\.attn_mask$")
# What an ImageNet checkpoint cannot provide: these keep the model's own initialisation.
_OWN_INIT = re.compile(r"\.semantic_layer\.|^norm\d+\.")


def is_timm_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    """timm puts PatchMerging at the start of stages 1..n-1 (no `layers.0.downsample`); Microsoft at the end."""
    has_first = any(k.startswith("layers.0.downsample.") for k in sd)
    has_later = any(re.match(r"layers\.[1-9]\d*\.downsample\.", k) for k in sd)
    return has_later and not has_first


def imagenet_swin_to_semask(sd: Mapping[str, Any], backbone: nn.Module) -> StateDict:
    """Map a timm/Microsoft Swin state dict onto `backbone`'s keys (no `backbone.` prefix).

    Fails with a `KeyError` naming every checkpoint key left unmapped and every Swin key left missing (semantic layers
    and `norm{i}` are expected to be missing); a `ValueError` for shape mismatches other than window resizing.
    """
    from timm.layers import resize_rel_pos_bias_table

    sd = unwrap_state_dict(sd)
    whole = sorted({k.split(".")[0] for k in sd if k.startswith(("backbone.", "decode_head.", "sem_seg_head."))})
    if whole:  # mmseg / detectron2 segmentation model, not an ImageNet classifier
        raise ValueError(f"this is a whole segmentation-model checkpoint (keys {', '.join(w + '.*' for w in whole)}), "
                         "not an ImageNet Swin: load it with pretrained=PATH (CLI/config: pretrained=...), and "
                         "num_classes= for other classes re-initialises only the classifier and class projections")
    timm = is_timm_layout(sd)
    own = backbone.state_dict()
    out: StateDict = {}
    leftover = []
    for key, value in sd.items():
        if _DROP.search(key):
            continue
        if timm and (m := re.match(r"layers\.(\d+)\.downsample\.(.*)", key)):
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"  # start of stage i+1 -> end of stage i
        if key not in own:
            leftover.append(key)
            continue
        if key.endswith("relative_position_bias_table") and value.shape != own[key].shape:
            window = round((own[key].shape[0] ** 0.5 + 1) / 2)
            value = resize_rel_pos_bias_table(value, new_window_size=(window, window), new_bias_shape=own[key].shape)
        if value.shape != own[key].shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(own[key].shape)}; "
                             "is this checkpoint for a different Swin size?")
        out[key] = value.to(own[key].dtype)
    missing = sorted(k for k in set(own) - set(out) if not _OWN_INIT.search(k))
    fail_on_unmapped(f"ImageNet Swin checkpoint ({'timm' if timm else 'Microsoft'} layout) -> backbone", leftover,
                     missing)
    return out


def read_imagenet_checkpoint(path: str | Path, *, allow_unsafe: bool = False) -> StateDict:
    """A `.safetensors` (timm hub), `.pth`/`.bin` (Microsoft or timm) or detectron2 `.pkl` ImageNet checkpoint ->
    state dict (`read_checkpoint` tells the formats apart by their contents)."""
    return unwrap_state_dict(read_checkpoint(path, allow_unsafe=allow_unsafe))


def load_imagenet_backbone(backbone: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Copy ImageNet Swin weights into `backbone` in place; returns the keys that kept their initialisation."""
    mapped = imagenet_swin_to_semask(state, backbone)
    backbone.load_state_dict(mapped, strict=False)
    kept = sorted(set(backbone.state_dict()) - set(mapped))
    _log.info("loaded %d ImageNet tensors into the backbone; %d keep their initialisation (semantic layers, norm{i})",
              len(mapped), len(kept))
    return kept
