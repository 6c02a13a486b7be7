"""Weights: the manifest of tags, Hugging Face Hub downloads (pinned revision + sha256), and loading/saving semask
weights (`model.safetensors` + `config.json`)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .segmentor import Segmentor, build_model

_log = logging.getLogger(__name__)
LOCAL_DIR = "local-dir:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HF_PREFIX = "hf-hub:"
PRETRAINED_CFG = "pretrained_cfg"  # config.json key: the preprocessing and classes the weights expect
_PORTABLE = ("name", "dataset", "preprocessing", "classes")  # what a saved folder keeps of model.pretrained_cfg
# Structure fields: weights for one structure cannot be loaded into another (nheads: the tensors do not always
# tell it, but the same weights split into other heads compute something else).
_STRUCTURE = ("embed_dim", "depths", "num_heads", "window_size", "patch_size", "in_chans", "decoder",
              "decoder_channels", "num_sem_blocks", "mlp_ratio", "conv_dim", "mask_dim", "hidden_dim", "num_queries",
              "nheads", "dim_feedforward", "dec_layers", "enc_layers", "enc_dim_feedforward", "enc_points",
              "backbone", "embed_dims", "mit_sr_ratios", "mit_patch_sizes", "mit_strides")
# What an original checkpoint's tensors cannot tell and a name pins (the original fixes them in its config files).
HIDDEN_FIELDS = ("semantic_attention", "sem_window_size", "nheads")


def structure_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """The structure fields in which two configs differ such that weights for one do not fit the other: fields
    that change the tensors, and `nheads` / `enc_points` of the mask decoders (the same tensors split another way).
    A field the architecture does not use (MaskFormer's pixel-decoder encoder sizes, FPN's query decoder) does not
    count."""
    bad = [k for k in _STRUCTURE if getattr(a, k) != getattr(b, k)]
    if not bad and a.semantic == b.semantic:
        return []
    with torch.device("meta"):  # shapes only, nothing allocated
        shapes = [{k: v.shape for k, v in build_model(c).state_dict().items()} for c in (a, b)]
    if shapes[0] != shapes[1]:
        return bad + (["semantic layers"] if a.semantic != b.semantic else [])
    if not a.mask_classification:
        return []
    split = ["nheads"] if "nheads" in bad else []
    return split + (["enc_points"] if "enc_points" in bad and a.deformable_encoder and b.deformable_encoder else [])


def state_dict_differences(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps `found` (a checkpoint's model) from loading into a model whose state dict is `expected`: missing
    and unexpected keys, and shape mismatches, one line each (empty: compatible)."""
    missing = [f"missing {k}" for k in expected if k not in found]
    unexpected = [f"unexpected {k}" for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} instead of {tuple(v.shape)}" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return missing + unexpected + shapes


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict[str, dict[str, Any]]:
    """`arch.tag` -> manifest entry (see `semask/weights_manifest.json`)."""
    text = resources.files("semask").joinpath("weights_manifest.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def tag_pretrained_cfg(name: str) -> dict[str, Any] | None:
    """A tag's manifest entry with its name: what `model.pretrained_cfg` holds for weights published under `name`
    (preprocessing, dataset, classes; read by the `Predictor` and by exports); None for names that are no tag."""
    entry = load_manifest().get(name)
    return None if entry is None else dict(entry, name=name)


def save_pretrained(model: Segmentor, out_dir: str | Path) -> Path:
    """Write `model.safetensors` and `config.json` to `out_dir`; returns the weights path. config.json holds the
    architecture and, under "pretrained_cfg", what the weights expect: preprocessing and classes (a tag's, or those
    a semask training run recorded), so that a folder predicts as its weights were trained."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory: FaPN's offset convs share their norm with the layer they
        # align (the original's module graph), so the state dict names one tensor twice. A copy per extra name.
        ptr = v.untyped_storage().data_ptr()
        state[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "arch": model.config.arch})
    config = model.config.to_dict()
    if getattr(model, "pretrained_cfg", None):
        config[PRETRAINED_CFG] = {k: v for k, v in model.pretrained_cfg.items() if k in _PORTABLE and v is not None}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out / WEIGHTS_NAME


def training_pretrained_cfg(classes: Any, *, mean: Any, std: Any, test_scale: Any, crop_size: Any,
                            dataset: str | None = None) -> dict[str, Any]:
    """`model.pretrained_cfg` for weights trained by semask: their classes (a `ClassInfo`) and preprocessing
    (`test_scale` None: each image at its own size)."""
    return {"dataset": dataset,
            "preprocessing": {"mean": list(mean), "std": list(std), "crop_size": list(crop_size),
                              "test_scale": "original" if test_scale is None else list(test_scale)},
            "classes": {"name": classes.name, "names": list(classes.names), "palette": classes.palette.tolist(),
                        "label_offset": int(classes.label_offset)}}


def _read_config_json(path: Path) -> tuple[ModelConfig, dict[str, Any] | None]:
    """config.json -> (architecture, pretrained_cfg or None)."""
    values = json.loads(path.read_text(encoding="utf-8"))
    if "arch" not in values and ("architecture" in values or "model_type" in values):  # timm's / transformers'
        if values.get("model_type") == "segformer":
            raise ValueError(f"{path.parent} is a transformers SegFormer folder, not semask weights: load it with "
                             f"semask.convert.segformer.load_segformer({str(path.parent)!r}, semantic=...)")
        kind = values.get("architecture") or values.get("model_type")
        raise ValueError(f"{path} describes a {kind!r} model of timm / transformers, not semask weights: ImageNet "
                         "Swin / MiT weights load as create_model(ARCH, pretrained_backbone=...)")
    extra = values.pop(PRETRAINED_CFG, None)
    return ModelConfig.from_dict(values), extra


def _with_pretrained_cfg(model: Segmentor, extra: dict[str, Any] | None, saved: ModelConfig) -> Segmentor:
    """Attach a folder's pretrained_cfg, unless the classes were re-initialised (its class table no longer fits)."""
    if extra and model.config.num_classes == saved.num_classes:
        model.pretrained_cfg = extra
    return model


def _is_semask_weights(path: Path) -> bool:
    """A semask folder or safetensors file (told by its bytes, not its name: a renamed .pth is an original
    checkpoint), as opposed to an original checkpoint converted on load."""
    from .convert.formats import sniff_format

    return path.is_dir() or (path.is_file() and sniff_format(path) == "safetensors")


def _read_local(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None, dict[str, Any] | None]:
    """A semask folder/safetensors file -> (state dict, saved config or None, its pretrained_cfg or None)."""
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
    config, extra = _read_config_json(cfg_path) if cfg_path.is_file() else (None, None)
    return state, config, extra


def _unpublished_error(name: str) -> ValueError:
    entry = load_manifest().get(name)
    if entry is None or not entry.get("source"):
        return ValueError(f"{name!r} has no released weights; pretrained tags: semask.list_pretrained()")
    url = entry["source"]["url"]
    return ValueError(f"converted weights for {name} are not published yet. Download the original checkpoint from "
                      f"{url}, then run `semask convert ORIGINAL.pth ./{name} --model {name}` and "
                      f"`semask.create_model({name!r}, pretrained='./{name}')`")


def is_published(entry: dict[str, Any] | None) -> bool:
    """A manifest entry whose converted weights are on the hub (repo id, pinned revision and sha256 all known)."""
    hub = (entry or {}).get("hub") or {}
    return all(hub.get(k) for k in ("repo_id", "revision", "filename", "sha256"))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """'hf-hub:owner/repo@revision' -> ('owner/repo', 'revision'); the revision is optional (default branch)."""
    repo_id, _, revision = spec.removeprefix(HF_PREFIX).partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected 'hf-hub:owner/repo' or 'hf-hub:owner/repo@revision', got {spec!r}")
    return repo_id, revision or None


def _hub_env() -> dict[str, Any]:
    """Endpoint, cache folder and offline flag, read from the environment at call time (huggingface_hub reads its
    own copies at import time, so settings made later in the process would otherwise be ignored)."""
    from huggingface_hub import constants

    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache and env.get("HF_HOME"):
        cache = os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    truthy = {"1", "ON", "YES", "TRUE"}
    offline = constants.HF_HUB_OFFLINE or env.get("HF_HUB_OFFLINE", "").upper() in truthy
    return {"endpoint": (env.get("HF_ENDPOINT") or "").rstrip("/") or None, "cache_dir": cache,
            "local_files_only": offline}


def _evict(path: Path) -> None:
    """Remove a cached hub file: the snapshot entry and the blob it points to."""
    blob = path.resolve()
    for p in (path, blob):
        if p.is_symlink() or p.exists():
            p.unlink()


def hub_download(repo_id: str, filename: str, *, revision: str | None = None, sha256: str | None = None) -> Path:
    """`hf_hub_download` (cache, `HF_HUB_OFFLINE`, `HF_ENDPOINT` honoured) + sha256 check before anything reads it.

    A file whose sha256 differs from `sha256` is deleted from the cache and a `ValueError` raised; a missing repo,
    revision or file, or an unreachable hub with nothing cached, raise `FileNotFoundError`; a failed transfer
    (nothing is left in the cache: huggingface_hub writes to a temporary file first) raises `OSError`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (  # also where huggingface_hub < 0.23 (no `.errors`) has them
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{filename}@{revision or 'main'}"
    settings = _hub_env()
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, **settings))
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if settings["local_files_only"] else "the hub could not be reached"
        raise FileNotFoundError(f"{where} is not in the cache ({settings['cache_dir'] or 'default HF cache'}) and "
                                f"{why}; download it once online, or pass a local copy of the file where you named the "
                                "hub weights (pretrained= / pretrained_backbone= / --weights)") from err
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise FileNotFoundError(f"{where} does not exist on the hub ({type(err).__name__}); check the repo id, "
                                "revision and file name") from err
    except (ValueError, TypeError):
        raise
    except Exception as err:  # transport errors (connection reset, truncated body, HTTP 5xx) from any http backend
        raise OSError(f"downloading {where} failed ({type(err).__name__}: {str(err)[:200]}); nothing was kept in "
                      "the cache, try again") from err
    # Without a manifest hash, an LFS file's cache blob is named by the sha256 the hub reported: checked as well,
    # so a damaged cached copy is evicted instead of failing (or loading other weights) on every later call.
    expected = (sha256 or _lfs_sha256(path) or "").lower()
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            _evict(path)
            raise ValueError(f"sha256 mismatch for {where}: expected {expected}, got {actual}. The cached file was "
                             "deleted; download again, and report it if this persists (the file on the hub changed "
                             "or is corrupt)")
    return path


def _lfs_sha256(path: Path) -> str | None:
    """The sha256 an LFS file's cache blob is named by (git-stored files are named by a 40-digit git hash)."""
    name = path.resolve().name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def _download_pretrained(name: str) -> Path:
    """The manifest's published weights of `arch.tag`, downloaded at the pinned revision and verified."""
    entry = load_manifest().get(name)
    if not is_published(entry):
        raise _unpublished_error(name)
    hub = entry["hub"]
    return hub_download(hub["repo_id"], hub["filename"], revision=hub["revision"], sha256=hub["sha256"])


def _download_spec(spec: str) -> Path:
    """'hf-hub:owner/repo@rev' -> local weights path (config.json fetched beside it when the repo has one)."""
    repo_id, revision = parse_hf_spec(spec)
    known = next((e["hub"]["sha256"] for e in load_manifest().values() if is_published(e)
                  and e["hub"]["repo_id"] == repo_id and e["hub"]["revision"] == revision), None)
    weights = hub_download(repo_id, WEIGHTS_NAME, revision=revision, sha256=known)
    commit = weights.parent.name if len(weights.parent.name) == 40 else revision  # same commit for the config
    try:
        hub_download(repo_id, CONFIG_NAME, revision=commit)
    except FileNotFoundError:
        _log.info("%s has no %s; using the architecture of the name passed to create_model", repo_id, CONFIG_NAME)
    if known is None:
        _log.info("%s: sha256 %s (not in the manifest; pin it with '@<commit>' for reproducible loads)", spec,
                  _lfs_sha256(weights) or file_sha256(weights))
    return weights


def download_repo(spec: str, *, weights: bool = True) -> Path:
    """'hf-hub:owner/repo@rev' used as a model name (timm's convention): the snapshot folder of a semask repo, its
    config.json (the architecture) and, with `weights`, its model.safetensors from the same commit."""
    repo_id, revision = parse_hf_spec(spec)
    try:
        config = hub_download(repo_id, CONFIG_NAME, revision=revision)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{spec} as a model name needs a semask repo ({CONFIG_NAME} + {WEIGHTS_NAME}): {err}. "
                                f"Weights alone load into a named architecture: semask.create_model('ARCH', "
                                f"pretrained={spec!r})") from err
    if weights:
        commit = config.parent.name if len(config.parent.name) == 40 else revision
        return _download_spec(f"{HF_PREFIX}{repo_id}" + (f"@{commit}" if commit else "")).parent
    return config.parent


def convert_original(path: str | Path, name: str, config: ModelConfig, *, allow_unsafe: bool = False,
                     pin_layout: bool = False, overrides: dict[str, Any] | None = None) -> Segmentor:
    """An original checkpoint converted as `name` (`arch` or `arch.tag`, whose config is `config`).

    The fields the tensors cannot tell come from the name: a tag (or `pin_layout`) pins all of them (semantic
    layout, heads), an arch name the heads only (the layout then follows the original code's rule, as
    `load_original`; `load_pretrained` refuses a rule that disagrees with the architecture's layout). Refused,
    naming what loads them: weights of another architecture, and under a tag, weights with another class count (the
    tag's layout would be pinned onto another dataset's weights). A tag's manifest entry becomes
    `model.pretrained_cfg`, so a folder saved from the result predicts as the tag does.
    """
    from .convert import load_original
    tagged = "." in name
    # Mask2Former / MSFaPN files show their heads: read, then compared with the name's below (never forced onto them)
    hidden = [k for k in HIDDEN_FIELDS if k != "nheads" or not config.deformable_encoder]
    quirks = {k: getattr(config, k) for k in hidden if tagged or pin_layout or k == "nheads"}
    model = load_original(path, allow_unsafe=allow_unsafe, **{**quirks, **(overrides or {})})
    n = model.config.num_classes  # the architecture is compared apart from the classes, checked next
    bad = structure_differences(model.config, config.replace(num_classes=n,
                                                             sem_num_classes=model.config.sem_num_classes))
    if bad:
        raise ValueError(f"{path} is not a {name} checkpoint (its tensors differ in {bad}): load it with "
                         f"semask.load_original({str(path)!r}), or name the architecture it is")
    if tagged and n != config.num_classes:
        tags = [t for t, e in load_manifest().items() if e["arch"] == config.arch and e.get("num_classes") == n]
        raise ValueError(f"{path} has {n} classes but {name} is a {config.num_classes}-class tag (its semantic "
                         f"layout would be pinned onto other weights): name {' or '.join(tags) or 'the tag they are'}"
                         f", or the architecture {config.arch} (the original's rule then picks the layout); "
                         "num_classes= re-heads after loading")
    if (cfg := tag_pretrained_cfg(name)) is not None:
        model.pretrained_cfg = cfg
    return model


_BARE_FIX = ("name the architecture they were saved from (pass num_classes= if they have another class count), "
             "or save them with semask.save_pretrained (it writes config.json beside them)")


def _fit_bare(state: dict[str, torch.Tensor], config: ModelConfig, name: str, source: Any,
              num_classes: int | None) -> tuple[ModelConfig, dict[str, torch.Tensor] | None, list[str]]:
    """(config, state, differences) for a safetensors file without config.json: our tensor names under `config`
    or, when they have that many classes, `num_classes`. State None: other names (an original state dict to
    convert, or another architecture's: `differences` from `config`'s tensors say which)."""
    candidates = [config] + ([config.replace(num_classes=num_classes, sem_num_classes=None)]
                             if num_classes is not None and num_classes != config.num_classes else [])
    bad: list[str] = []
    for candidate in candidates:
        with torch.device("meta"):
            ours = build_model(candidate).state_dict()
        bad = state_dict_differences(ours, state)
        if set(state) != set(ours):
            return config, None, bad
        if not bad:
            return candidate, state, []
    raise ValueError(f"weights in {source} do not fit {name!r} ({len(bad)} tensor(s) differ, e.g. "
                     f"{'; '.join(bad[:2])}): {_BARE_FIX}")


def load_pretrained(name: str, source: bool | str | Path, config: ModelConfig, *,
                    num_classes: int | None = None, overrides: dict[str, Any] | None = None) -> Segmentor:
    """Build `config`'s model with weights from `source`: True (the manifest's published weights, verified),
    'hf-hub:owner/repo@revision', a semask folder/safetensors file, or an original checkpoint.

    The weights' saved config wins over `config` for the architecture; explicit `overrides` win over both.
    """
    overrides = overrides or {}
    if source is True:
        from .convert.segformer import is_segformer_tag, load_segformer_tag

        if is_segformer_tag(name):  # SegFormer (MiT) tags: a transformers checkpoint, converted on the fly
            return load_segformer_tag(name, config, num_classes=num_classes)
        source = _download_pretrained(name)
    elif isinstance(source, str) and source.startswith(HF_PREFIX):
        if config.backbone == "mit":  # 'hf-hub:nvidia/segformer-…': a transformers checkpoint, converted
            from .convert.segformer import load_segformer_weights

            repo_id, revision = parse_hf_spec(source)
            if num_classes is not None:
                config = config.replace(num_classes=num_classes, sem_num_classes=None)
            return load_segformer_weights(build_model(config), repo_id, revision=revision)
        source = _download_spec(source)
    path = Path(source)
    if isinstance(source, str) and source.startswith(LOCAL_DIR):
        raise ValueError(f"pretrained={source!r}: 'local-dir:' prefixes a model name, create_model({source!r}); as "
                         f"pretrained= pass the folder itself, pretrained={source[len(LOCAL_DIR):]!r}")
    if not path.exists():
        raise FileNotFoundError(f"pretrained={str(source)!r} does not exist; pass True, a semask folder or "
                                "safetensors file, or an original .pth checkpoint")
    state, saved, extra = _read_local(path) if _is_semask_weights(path) else (None, None, None)
    bare: list[str] = []  # a bare safetensors file's differences from `config`'s tensors
    if state is not None and saved is None:  # a bare safetensors file: our tensors, or an original state dict
        config, state, bare = _fit_bare(state, config, name, source, num_classes)
    if state is None:  # an original checkpoint, converted on the fly with the name's hidden fields
        try:
            model = convert_original(path, name, config, overrides=overrides)
        except (ValueError, KeyError) as err:
            if not bare:
                raise
            raise ValueError(f"weights in {source} are neither {name!r}'s tensors ({len(bare)} differ, e.g. "
                             f"{'; '.join(bare[:2])}) nor an original checkpoint of it ({err}): {_BARE_FIX}") from err
        state, saved = model.state_dict(), model.config
    if saved is not None:  # the saved classes win (num_classes= re-heads below)
        bad = structure_differences(saved, config.replace(num_classes=saved.num_classes,
                                                          sem_num_classes=saved.sem_num_classes))
        if bad:
            raise ValueError(f"weights in {source} are for a different architecture than {name!r} "
                             f"(differs in {bad}); load them with {_matching_call(path)}")
        # The windowed/global layout is not in the weights: never switch it silently under a name that pins another.
        quirks = {k: getattr(saved, k) for k in ("semantic_attention", "sem_window_size")
                  if k not in overrides and getattr(saved, k) != getattr(config, k)}
        if quirks:
            as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in quirks.items()}
            tags = [n for n, e in load_manifest().items() if n.startswith(config.arch + ".")
                    and all(e["model"].get(k) == v for k, v in as_json.items())]
            fix = f"name the matching tag {tags} or pass" if tags else "pass"
            raise ValueError(f"the weights in {source} use {quirks}, but {name!r} pins "
                             f"{ {k: getattr(config, k) for k in quirks} }; {fix} these fields explicitly to "
                             "create_model")
        config = saved.replace(**{k: v for k, v in overrides.items() if k != "num_classes"})
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    if num_classes is not None and num_classes != config.num_classes:
        model = reset_classes(model, num_classes)
    return _with_pretrained_cfg(model, extra, config)


def read_local_config(path: str | Path) -> ModelConfig:
    """The architecture a semask folder's `config.json` describes (no weights read)."""
    return _read_config_json(_require_config(Path(path)))[0]


def _require_config(folder: Path) -> Path:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; a local-dir: model must be a folder written by "
                                "`semask convert` or semask.save_pretrained")
    return cfg_path


def _matching_call(path: Path) -> str:
    """The call that loads a semask folder / safetensors file `path` with the architecture it was saved for."""
    return f"semask.create_model('{LOCAL_DIR}{path if path.is_dir() else path.parent}')"


def load_local_dir(path: str | Path, *, num_classes: int | None = None,
                   overrides: dict[str, Any] | None = None) -> Segmentor:
    """The model a semask folder (`config.json` + `model.safetensors`) describes, with its weights."""
    path = Path(path)
    _require_config(path)  # first: a clear error for a folder without config.json
    state, config, extra = _read_local(path)
    wanted = config.replace(**(overrides or {}))
    if bad := structure_differences(config, wanted):
        raise ValueError(f"{LOCAL_DIR}{path} holds {config.arch} weights; the overrides of {bad} change their "
                         "tensors: drop them (overrides that leave the tensors alone, such as attn_impl= or "
                         "drop_path_rate=, are fine; num_classes= re-heads)")
    model = build_model(wanted)
    model.load_state_dict(state, strict=True)
    if num_classes is not None and num_classes != config.num_classes:
        model = reset_classes(model, num_classes)
    return _with_pretrained_cfg(model, extra, config)


def reset_classes(model: Segmentor, num_classes: int) -> Segmentor:
    """`model` re-headed in place for `num_classes` classes (`Segmentor.reset_classifier`), saying what it
    re-initialised (pretrained weights for other classes are a common mistake, so this is a warning)."""
    before = model.config.num_classes
    replaced = model.reset_classifier(num_classes)
    _log.warning("num_classes %d -> %d: re-initialised %s", before, num_classes, replaced)
    return model
