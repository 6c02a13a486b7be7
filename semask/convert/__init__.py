"""Converters from original checkpoints to semask models; `load_original` is the public entry point."""

from .mmseg import infer_mmseg_config, load_original, mmseg_to_semask, original_semantic_attention, read_checkpoint

__all__ = ["infer_mmseg_config", "load_original", "mmseg_to_semask", "original_semantic_attention",
           "read_checkpoint"]
