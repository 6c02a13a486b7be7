"""Original SeMask-FPN / Swin-FPN (mmseg 0.x) checkpoints -> semask.

Our parameter names are the original ones, so conversion is: unwrap the dict, strip `module.`, check and drop the
`relative_position_index` buffers (we rebuild them), and fail loudly on anything left over. The architecture is read
from the tensors alone; only the windowed/global semantic layout, which the weights cannot tell, comes from the
original code's rule (`original_semantic_attention`) unless the caller overrides it.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..segmentor import Segmentor, build_model
from .common import fail_on_unmapped
from .formats import numpy_globals, read_pickle, sniff_format

_log = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]


def read_checkpoint(path: str | Path, *, allow_unsafe: bool = False) -> Any:
    """torch.load with `weights_only=True`; a safetensors file; a detectron2 `.pkl` through an allowlist
    (`semask.convert.formats`). `allow_unsafe=True` unpickles arbitrary objects (trusted files only)."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            raise ValueError(f"{path} is a semask weights folder, already converted: load it with "
                             f"semask.create_model('local-dir:{path}') (or pretrained='{path}')")
        raise ValueError(f"{path} is a folder; pass the checkpoint file in it (.pth / .pkl / .safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); download it again")
    fmt = sniff_format(path)
    if fmt == "safetensors":  # e.g. `semask convert` output: our names are the original ones
        from safetensors.torch import load_file

        return load_file(str(path))
    if fmt == "pickle":
        return _read_pickle(path, allow_unsafe)
    if allow_unsafe:
        _log.warning("loading %s with weights_only=False: this runs any code the file contains", path)
    try:
        # a file object, not the path: recent torch.load reads any *.safetensors path as safetensors, and this
        # file's bytes say it is a torch.save file (e.g. a .pth renamed)
        with _numpy_allowed() if not allow_unsafe else contextlib.nullcontext(), path.open("rb") as f:
            return torch.load(f, map_location="cpu", weights_only=not allow_unsafe)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint "
                         f"({type(err).__name__}: {str(err)[:200]}); download it again") from err
    except Exception as err:  # pickle.UnpicklingError for disallowed globals, and for bytes that are no pickle
        refused = _refused_globals(path, err)
        if refused:
            raise _unsafe_error(path, refused) from err
        raise ValueError(f"cannot read checkpoint {path}: {_what_it_is(path)}; download it again") from err


def _numpy_allowed() -> contextlib.AbstractContextManager:
    """numpy scalars / arrays in a checkpoint's metadata (e.g. mmcv's `hook_msgs` best score) are data: let
    weights_only loading rebuild them. torch < 2.6 cannot allowlist them under numpy 1's names: they still need
    allow_unsafe there."""
    if torch.__version__ < "2.6":
        return contextlib.nullcontext()
    return torch.serialization.safe_globals([(obj, f"{m}.{n}") for (m, n), obj in numpy_globals().items()])


def _refused_globals(path: Path, err: Exception) -> str:
    """The globals weights_only loading refused in `path`, comma-separated; "" when the file is no checkpoint at
    all (torch's error for that also says "weights only load failed", so the globals are what tells them apart)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # older torch has no such function, and it reads only zip checkpoints
        found = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    return ", ".join(found)


def _unsafe_error(path: Path, refused: str) -> ValueError:
    return ValueError(f"{path} holds Python objects that safe loading refuses ({refused}); if you trust the file, "
                      "pass allow_unsafe=True (or convert it once with `semask convert --allow-unsafe`)")


def _what_it_is(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(512).lstrip()
    if head[:1] == b"<":  # e.g. Google Drive's "can't scan for viruses" page saved instead of the file
        return "it is an HTML page, not a PyTorch checkpoint (a download link that returned a web page?)"
    return "it is not a PyTorch checkpoint (zip or legacy torch.save format), a detectron2 .pkl or safetensors"


def _read_pickle(path: Path, allow_unsafe: bool) -> Any:
    try:
        return read_pickle(path, allow_unsafe=allow_unsafe)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise _unsafe_error(path, str(err).removeprefix("Unsupported global: ")) from err
        raise ValueError(f"cannot read checkpoint {path}: the pickle is truncated or corrupt ({err}); "
                         "download it again") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as err:
        raise ValueError(f"cannot read checkpoint {path}: the pickle is truncated or corrupt "
                         f"({type(err).__name__}: {str(err)[:200]}); download it again") from err


def unwrap_state_dict(obj: Any) -> StateDict:
    """Accept {'state_dict': ...}, {'model': ...} or a bare state dict; strip DataParallel `module.` prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"expected a state dict (or a dict with 'state_dict'/'model'), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def meta_config_fields(obj: Any) -> dict[str, Any]:
    """Fields the tensors cannot show, from the training config an mmseg checkpoint records: mmseg's tools/train.py
    saves `cfg.pretty_text` (Python source, read here with `ast`, never executed) or a dict as `meta['config']`.
    Returns {"sem_window_size": n} when the config sets it, else {} (the released files carry no config)."""
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    config = meta.get("config") if isinstance(meta, Mapping) else None
    values: set[Any] = set()
    if isinstance(config, str):
        try:
            tree = ast.parse(config)
        except SyntaxError:
            _log.warning("meta['config'] of the checkpoint is not Python source; its fields are ignored")
            return {}
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "sem_window_size":
                with contextlib.suppress(ValueError):
                    values.add(ast.literal_eval(node.value))
    elif isinstance(config, Mapping):
        backbone = (config.get("model") or {}).get("backbone") or {}
        if isinstance(backbone, Mapping) and "sem_window_size" in backbone:
            values.add(backbone["sem_window_size"])
    values = {v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    if len(values) != 1:
        if values:
            _log.warning("meta['config'] of the checkpoint sets sem_window_size to %s; ignored (pass "
                         "sem_window_size= to choose)", sorted(values))
        return {}
    return {"sem_window_size": values.pop()}


def original_semantic_attention(embed_dim: int, num_cls: int, num_stages: int) -> tuple[str, ...]:
    """The original SeMask-FPN rule: `embed_dim in (96, 192) and num_cls > 19` -> stages 0-1 windowed and the
    rest global ('large' variant); otherwise every stage windowed."""
    if embed_dim in (96, 192) and num_cls > 19:
        return tuple("window" if i < 2 else "global" for i in range(num_stages))
    return ("window",) * num_stages


def _check_family(sd: StateDict) -> None:
    keys = list(sd)
    if any(k.startswith("sem_seg_head.") for k in keys):
        raise ValueError("this is a detectron2 MaskFormer/Mask2Former checkpoint (keys 'sem_seg_head.*'); "
                         "load it with semask.load_original (semask.convert.detectron2)")
    if not any(k.startswith("backbone.layers.") for k in keys):
        backbone_only = any(k.startswith(("layers.0.blocks.", "patch_embed.")) for k in keys)
        hint = (" It looks like ImageNet Swin backbone weights (timm / Microsoft): pass them as "
                "create_model(ARCH, pretrained_backbone=...) to fine-tune from them." if backbone_only else "")
        raise ValueError(f"not an mmseg Swin checkpoint: no 'backbone.layers.*' keys (first keys: {keys[:3]}); "
                         f"semask.load_original reads SeMask-FPN / Swin-FPN checkpoints.{hint}")
    if not any(k.startswith("decode_head.scale_heads.") for k in keys):
        heads = sorted({k.split(".")[1] for k in keys if k.startswith("decode_head.")})
        raise ValueError(f"decode head is not a Semantic FPN (decode_head has {heads}); only FPN heads are supported")


def infer_mmseg_config(sd: StateDict, **overrides: Any) -> ModelConfig:
    """Read the architecture from tensor shapes; the semantic layout follows the original rule unless overridden."""
    _check_family(sd)
    proj = sd["backbone.patch_embed.proj.weight"]  # [C, in_chans, p, p]
    embed_dim = proj.shape[0]
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"backbone\.layers\.(\d+)\.", k))})
    if stages != list(range(len(stages))):
        raise ValueError(f"stage indices {stages} are not contiguous from 0")
    depths, heads, windows = [], [], set()
    for i in stages:
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.layers\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        table = sd.get(f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table")
        if table is not None:
            heads.append(table.shape[1])
            windows.add(round((table.shape[0] ** 0.5 + 1) / 2))
        else:  # a zero-depth stage: heads are irrelevant, keep Swin's doubling
            heads.append(heads[-1] * 2 if heads else max(1, embed_dim // 32))
    if len(windows) > 1:
        raise ValueError(f"stages use different windows {sorted(windows)}; semask models use one window size")
    window = windows.pop() if windows else 7
    fc1 = next((v for k, v in sd.items() if k.endswith("blocks.0.mlp.fc1.weight")), None)
    q = sd.get("backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight")
    n_sem = tuple(len({k.split("class_injection.")[1].split(".")[0] for k in sd
                       if k.startswith(f"backbone.layers.{i}.semantic_layer.class_injection.")}) for i in stages)
    conv_seg = sd["decode_head.conv_seg.weight"]  # [K, channels, 1, 1]
    fields: dict[str, Any] = dict(
        arch="original", embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(heads), window_size=window,
        patch_size=proj.shape[-1], in_chans=proj.shape[1], num_classes=conv_seg.shape[0],
        decoder_channels=conv_seg.shape[1], mlp_ratio=fc1.shape[0] / fc1.shape[1] if fc1 is not None else 4.0)
    if q is not None:
        fields.update(semantic_attention=original_semantic_attention(embed_dim, q.shape[0], len(stages)),
                      sem_window_size=window,
                      num_sem_blocks=n_sem[0] if len(set(n_sem)) == 1 else n_sem,
                      sem_num_classes=q.shape[0] if q.shape[0] != conv_seg.shape[0] else None)
    config = ModelConfig(**fields).replace(**overrides)
    return config.replace(arch=overrides.get("arch") or _registered_arch(config))


def _registered_arch(config: ModelConfig) -> str:
    """The registered architecture with the same sizes, or 'custom'."""
    from ..registry import ARCHS  # late: the registry imports the loaders

    for name, fields in ARCHS.items():  # registered release sizes first, test_* last (table order)
        # The window is not compared: tags may pin another one (the Swin-B window-7 baselines).
        if all(getattr(config, k) == fields[k] for k in ("embed_dim", "depths", "num_heads")) \
                and ("semantic_attention" in fields) == config.semantic and fields.get("backbone", "swin") == "swin":
            return name
    return "custom"


def mmseg_to_semask(sd: StateDict, model: Segmentor) -> StateDict:
    """Map original keys onto `model`'s; a `KeyError` names every key left unmapped or missing."""
    own = model.state_dict()
    out: StateDict = {}
    leftover = []
    for k, v in sd.items():
        if k.endswith("attn.relative_position_index"):
            # A constant of the window size that we rebuild; only its shape has to agree.
            table = sd.get(k.replace("relative_position_index", "relative_position_bias_table"))
            window = round((table.shape[0] ** 0.5 + 1) / 2) if table is not None else -1
            if tuple(v.shape) != (window * window, window * window):
                raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit window {window}")
            continue
        if k in own:
            if own[k].shape != v.shape:
                raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(own[k].shape)}")
            out[k] = v
        else:
            leftover.append(k)
    missing = sorted(set(own) - set(out))
    fail_on_unmapped(f"mmseg checkpoint -> {model.config.arch}", leftover, missing)
    return out


def load_original(checkpoint: str | Path | Mapping[str, Any], *, allow_unsafe: bool = False,
                  **overrides: Any) -> Segmentor:
    """Build the architecture an original checkpoint describes and load it (eval mode): mmseg SeMask-FPN /
    Swin-FPN, or detectron2 SeMask MaskFormer / Mask2Former / FaPN / MSFaPN (`semask.convert.detectron2`).

    Args:
        checkpoint: a path to the `.pth` (or a detectron2 `.pkl`), or the loaded object (`{'state_dict': ...}`,
            `{'model': ...}`, bare).
        allow_unsafe: unpickle arbitrary objects (only for files you trust).
        overrides: `ModelConfig` fields the tensors cannot tell, e.g. `semantic_attention`, `sem_window_size`
            (mmseg checkpoints that record their training config in `meta['config']` give `sem_window_size`
            themselves; an override still wins).
    """
    obj = read_checkpoint(checkpoint, allow_unsafe=allow_unsafe) if isinstance(checkpoint, (str, Path)) \
        else checkpoint
    sd = unwrap_state_dict(obj)
    from .detectron2 import is_detectron2, load_d2_state_dict  # MaskFormer / Mask2Former / FaPN checkpoints

    if is_detectron2(sd):
        return load_d2_state_dict(sd, **overrides)
    recorded = meta_config_fields(obj) if any(k.startswith("backbone.layers.0.semantic_layer.") for k in sd) else {}
    model = build_model(infer_mmseg_config(sd, **{**recorded, **overrides}))
    model.load_state_dict(mmseg_to_semask(sd, model), strict=True)
    return model.eval()
