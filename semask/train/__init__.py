"""Training pieces: losses (the trainer, optimiser and metrics build on them)."""

from .losses import SeMaskLoss, ohem_weights, pixel_accuracy
from .mask_losses import MaskClassificationLoss

__all__ = ["MaskClassificationLoss", "SeMaskLoss", "ohem_weights", "pixel_accuracy"]
