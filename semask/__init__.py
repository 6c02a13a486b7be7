"""semask: SeMask semantic segmentation models in pure PyTorch."""

from .config import ModelConfig
from .convert import load_original
from .hub import save_pretrained
from .infer import Predictor
from .registry import create_model, get_config, list_models, list_pretrained
from .segmentor import Segmentor, build_model

__version__ = "0.1.0"

# Submodules with heavier imports (the trainer, export, plotting) load on first use: `semask.train.Trainer`,
# `semask.kernels.attention_kernels(...)` work after `import semask` alone.
_LAZY = ("data", "export", "flops", "kernels", "publish", "train", "viz")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ModelConfig", "Predictor", "Segmentor", "__version__", "build_model", "create_model", "get_config",
           "list_models", "list_pretrained", "load_original", "save_pretrained"]
