"""Weights: the manifest of tags, and loading/saving semask weights (`model.safetensors` + `config.json`)."""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .segmentor import Segmentor, build_model

_log = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Structure fields: weights for one structure cannot be loaded into another.
_STRUCTURE = ("embed_dim", "depths", "num_heads", "window_size", "patch_size", "in_chans", "decoder",
              "decoder_channels", "num_sem_blocks", "mlp_ratio")


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict[str, dict[str, Any]]:
    """`arch.tag` -> manifest entry (see `semask/weights_manifest.json`)."""
    text = resources.files("semask").joinpath("weights_manifest.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def save_pretrained(model: Segmentor, out_dir: str | Path) -> Path:
    """Write `model.safetensors` and `config.json` to `out_dir`; returns the weights path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "arch": model.config.arch})
    (out / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return out / WEIGHTS_NAME


def _read_local(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """A semask folder/safetensors file -> (state dict, saved config or None)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}; write one with `semask convert ORIGINAL.pth {path}`")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {weights}: truncated or not a safetensors file ({err})") from err
    cfg_path = weights.parent / CONFIG_NAME
    config = ModelConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.is_file() else None
    return state, config


def _unpublished_error(name: str) -> ValueError:
    entry = load_manifest().get(name)
    if entry is None or not entry.get("source"):
        return ValueError(f"{name!r} has no released weights; pretrained tags: semask.list_pretrained()")
    url = entry["source"]["url"]
    return ValueError(f"converted weights for {name} are not published yet. Download the original checkpoint from "
                      f"{url}, then run `semask convert ORIGINAL.pth ./{name}` and "
                      f"`semask.create_model({name!r}, pretrained='./{name}')`")


def load_pretrained(name: str, source: bool | str | Path, config: ModelConfig, *,
                    num_classes: int | None = None, overrides: dict[str, Any] | None = None) -> Segmentor:
    """Build `config`'s model with weights from `source` (True, a semask folder/file, or an original checkpoint).

    The weights' saved config wins over `config` for the architecture; explicit `overrides` win over both.
    """
    overrides = overrides or {}
    if source is True:
        raise _unpublished_error(name)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"pretrained={str(source)!r} does not exist; pass True, a semask folder or "
                                "safetensors file, or an original .pth checkpoint")
    if path.is_dir() or path.suffix == ".safetensors":
        state, saved = _read_local(path)
    else:  # an original checkpoint, converted on the fly with the tag's quirk fields
        from .convert import load_original

        quirks = {k: getattr(config, k) for k in ("semantic_attention", "sem_window_size") if "." in name}
        model = load_original(path, **quirks, **overrides)
        state, saved = model.state_dict(), model.config
    if saved is not None:
        bad = [k for k in _STRUCTURE if getattr(saved, k) != getattr(config, k)]
        if bad or saved.semantic != config.semantic:
            raise ValueError(f"weights in {source} are for a different architecture than {name!r} "
                             f"(differs in {bad or ['semantic layers']}); use semask.load_original({str(source)!r}) "
                             f"or create_model with the matching name ({saved.arch!r})")
        config = saved.replace(**{k: v for k, v in overrides.items() if k != "num_classes"})
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    if num_classes is not None and num_classes != config.num_classes:
        model = reset_classes(model, num_classes)
    return model


def reset_classes(model: Segmentor, num_classes: int) -> Segmentor:
    """A copy of `model` for `num_classes` classes: only tensors whose shape depends on the classes (classifier,
    semantic-layer class projections) are re-initialised; the rest is copied."""
    new = build_model(model.config.replace(num_classes=num_classes, sem_num_classes=None))
    own = new.state_dict()
    state = {k: v for k, v in model.state_dict().items() if own[k].shape == v.shape}
    new.load_state_dict(state, strict=False)
    _log.warning("num_classes %d -> %d: re-initialised %s", model.config.num_classes, num_classes,
                 sorted(set(own) - set(state)))
    return new
