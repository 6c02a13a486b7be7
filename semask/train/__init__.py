"""Training pieces: losses (the trainer, optimiser and metrics build on them)."""

from .losses import SeMaskLoss, ohem_weights, pixel_accuracy

__all__ = ["SeMaskLoss", "ohem_weights", "pixel_accuracy"]
