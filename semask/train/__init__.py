"""Training: losses, optimiser + schedule, metrics, checkpoints and the `Trainer` (imports torch.distributed and
tqdm lazily through the trainer module)."""

from .config import DataConfig, TrainConfig, config_from_dict, load_config
from .losses import SeMaskLoss, ohem_weights, pixel_accuracy
from .mask_losses import MaskClassificationLoss
from .metrics import SegMetrics, format_table
from .optim import PolyWarmup, build_optimizer, build_scheduler, param_groups
from .trainer import Trainer

__all__ = ["DataConfig", "MaskClassificationLoss", "PolyWarmup", "SeMaskLoss", "SegMetrics", "TrainConfig", "Trainer",
           "build_optimizer", "build_scheduler", "config_from_dict", "format_table", "load_config", "ohem_weights",
           "param_groups", "pixel_accuracy"]
