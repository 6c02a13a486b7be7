"""Converters from original checkpoints to semask models; `load_original` is the public entry point."""

from .detectron2 import d2_to_semask, infer_d2_config, save_d2, semask_to_d2
from .mmseg import infer_mmseg_config, load_original, mmseg_to_semask, original_semantic_attention, read_checkpoint

__all__ = ["d2_to_semask", "infer_d2_config", "infer_mmseg_config", "load_original", "mmseg_to_semask",
           "original_semantic_attention", "read_checkpoint", "save_d2", "semask_to_d2"]
