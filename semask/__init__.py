"""semask: SeMask semantic segmentation models in pure PyTorch."""

from .config import ModelConfig
from .convert import load_original
from .hub import save_pretrained
from .infer import Predictor
from .registry import create_model, get_config, list_models, list_pretrained
from .segmentor import Segmentor, build_model

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Predictor", "Segmentor", "__version__", "build_model", "create_model", "get_config",
           "list_models", "list_pretrained", "load_original", "save_pretrained"]
