"""Hugging Face transformers SegFormer checkpoints -> semask MiT models.

Reads both key layouts: the one of the files on the hub (`nvidia/mit-b*` ImageNet backbones, saved by transformers 4:
`segformer.encoder.block.{i}.{j}.attention.self.query...`; transformers 5 still writes it) and the in-memory names of
transformers >= 5 (`segformer.stages.{i}.blocks.{j}.attention.q_proj...`). Every key is renamed explicitly or the call
fails naming the leftovers; only the ImageNet classifier (`classifier.*`) is dropped on purpose. SegFormer has no
semantic layers: they keep their initialisation (gamma 0), as SeMask initialises them when fine-tuning from ImageNet.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..segmentor import Segmentor, build_model
from .common import fail_on_unmapped
from .formats import sniff_format

_log = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]
HF_FORMAT = "hf-transformers"  # `source.format` / `init.format` of manifest entries read by this module

# Sub-module of a block: hub-file (transformers 4) name and transformers >= 5 name -> ours.
_BLOCK = {
    "layer_norm_1": "norm1", "layernorm_before": "norm1",
    "attention.self.query": "attn.q", "attention.q_proj": "attn.q",
    "attention.self.key": "attn.k", "attention.k_proj": "attn.k",
    "attention.self.value": "attn.v", "attention.v_proj": "attn.v",
    "attention.self.sr": "attn.sr", "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.self.layer_norm": "attn.norm", "attention.sequence_reduction.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "layer_norm_2": "norm2", "layernorm_after": "norm2",
    "mlp.dense1": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv",
    "mlp.dense2": "mlp.fc2", "mlp.fc2": "mlp.fc2",
}
_HEAD = {"linear_fuse": "linear_fuse.conv", "batch_norm": "linear_fuse.bn", "classifier": "linear_pred"}
# (full-key pattern after stripping `segformer.`, our key); `{block}` is looked up in _BLOCK.
_RULES = [
    (r"(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.proj\.(\w+)",
     "backbone.layers.{0}.patch_embed.proj.{1}"),
    (r"(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.layer_norm\.(\w+)",
     "backbone.layers.{0}.patch_embed.norm.{1}"),
    (r"(?:encoder\.block\.(\d+)\.|stages\.(\d+)\.blocks\.)(\d+)\.(.+)\.(\w+)",
     "backbone.layers.{0}.blocks.{1}.{block}.{3}"),
    (r"(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(\w+)", "backbone.layers.{0}.norm.{1}"),
    (r"decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.(\w+)", "decode_head.linear_c.{0}.proj.{1}"),
    (r"decode_head\.(linear_fuse|batch_norm|classifier)\.(\w+)", "decode_head.{head}.{1}"),
]
IMAGENET_HEAD = ("classifier.weight", "classifier.bias")  # SegformerForImageClassification's head: not used


def _rename(key: str) -> str | None:
    """One transformers key (without `segformer.`) -> ours, or None if no rule matches."""
    for pattern, template in _RULES:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        groups = [g for g in m.groups() if g is not None]  # the two alternatives capture the stage index once
        fields: dict[str, str] = {}
        if "{block}" in template:
            if groups[2] not in _BLOCK:
                return None
            fields["block"] = _BLOCK[groups[2]]
        if "{head}" in template:
            fields["head"] = _HEAD[groups[0]]
        return template.format(*groups, **fields)
    return None


def segformer_hf_to_semask(state_dict: Mapping[str, torch.Tensor], config: ModelConfig, *,
                           allow_missing: tuple[str, ...] = ()) -> StateDict:
    """Rename a transformers SegFormer state dict (`SegformerForSemanticSegmentation`, `SegformerModel` or
    `SegformerForImageClassification`) to the keys of `config`'s model and check shapes.

    The result holds every backbone tensor but the semantic layers' and, when the checkpoint has a decode head
    (`segformer-b*-finetuned-*`), every decode-head tensor. `KeyError` names checkpoint keys no rule maps (or that
    `config` has no place for) and model keys left missing (except those starting with `allow_missing`);
    `ValueError` names shape mismatches.
    """
    if config.backbone != "mit":
        raise ValueError(f"{config.arch} has a {config.backbone!r} backbone; SegFormer weights fit MiT models only")
    with torch.device("meta"):
        own = build_model(config).state_dict()
    out: StateDict = {}
    leftover = []
    for key, value in state_dict.items():
        bare = key[len("segformer."):] if key.startswith("segformer.") else key
        if bare in IMAGENET_HEAD:
            continue
        ours = _rename(bare)
        if ours is None or ours not in own:
            leftover.append(key)
            continue
        if own[ours].shape != value.shape:
            raise ValueError(f"{key} -> {ours}: checkpoint shape {tuple(value.shape)} != model shape "
                             f"{tuple(own[ours].shape)} ({config.arch}); use the architecture of the checkpoint's size")
        out[ours] = value
    has_head = any(k.startswith("decode_head.") for k in out)
    needed = [k for k in own if ".semantic_layer." not in k and (has_head or not k.startswith("decode_head."))
              and not k.startswith(allow_missing)]
    missing = sorted(set(needed) - set(out))
    fail_on_unmapped(f"SegFormer checkpoint -> {config.arch}", leftover, missing)
    return out


def read_hf_checkpoint(source: str | Path, *, revision: str | None = None) -> StateDict:
    """The state dict of a transformers checkpoint: a folder with `model.safetensors` or `pytorch_model.bin`, one
    such file, or a hub repo id such as `nvidia/mit-b4` (downloaded with huggingface_hub at `revision`)."""
    path = Path(source)
    if path.is_dir():
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not files:
            raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")
        path = files[0]
    elif not path.is_file():
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
            raise FileNotFoundError(f"{source!r} is neither a checkpoint file/folder nor a hub repo id ('org/name')")
        path = _download(str(source), revision)
    if sniff_format(path) == "safetensors":  # by content: a renamed file is read by what it is
        from safetensors.torch import load_file

        return load_file(str(path))
    from .mmseg import read_checkpoint, unwrap_state_dict

    return unwrap_state_dict(read_checkpoint(path))  # torch.load(weights_only=True)


def _download(repo_id: str, revision: str | None) -> Path:
    """Through `semask.hub.hub_download`: `HF_HUB_OFFLINE` / `HF_ENDPOINT` / cache honoured, errors that say why."""
    from ..hub import hub_download

    try:  # the nvidia repos hold pytorch_model.bin; safetensors where a conversion was merged
        return hub_download(repo_id, "model.safetensors", revision=revision)
    except FileNotFoundError:  # not on the hub, or offline with only the .bin cached
        return hub_download(repo_id, "pytorch_model.bin", revision=revision)


def load_segformer_weights(model: Segmentor, source: str | Path | Mapping[str, torch.Tensor], *,
                           revision: str | None = None) -> Segmentor:
    """Copy SegFormer weights (a state dict, a transformers folder/file or a hub repo id) into a MiT `model`, in place.

    The semantic layers keep their initialisation; a backbone-only checkpoint (`nvidia/mit-b*`) leaves the decode
    head as initialised; a classifier trained for another class count is left as initialised (and logged).
    """
    sd = dict(source) if isinstance(source, Mapping) else read_hf_checkpoint(source, revision=revision)
    allow: tuple[str, ...] = ()
    cls = next((k for k in sd if k.endswith("decode_head.classifier.weight")), None)
    if cls is not None and sd[cls].shape[0] != model.config.num_classes:
        _log.warning("SegFormer classifier has %d classes, the model %d: decode_head.linear_pred keeps its "
                     "initialisation", sd[cls].shape[0], model.config.num_classes)
        sd = {k: v for k, v in sd.items() if not k.startswith(cls[:-len("weight")])}
        allow = ("decode_head.linear_pred.",)
    state = segformer_hf_to_semask(sd, model.config, allow_missing=allow)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # segformer_hf_to_semask only returns our keys
    kept = sorted({k.split(".semantic_layer.")[0] + ".semantic_layer" if ".semantic_layer." in k
                   else ".".join(k.split(".")[:2]) for k in missing})
    _log.info("loaded SegFormer weights into %s; kept as initialised: %s", model.config.arch, kept)
    return model


def infer_segformer_config(hf_config: Mapping[str, Any], *, semantic: bool = False, **overrides: Any) -> ModelConfig:
    """A semask config from a transformers `SegformerConfig` (its `config.json` as a dict): the registered
    `mit_b*_segformer` (or `semask_mit_b*_segformer` with `semantic=True`) of the same size, else 'custom'."""
    from ..registry import ARCHS  # late: the registry imports the loaders

    dims = tuple(hf_config["hidden_sizes"])
    fields: dict[str, Any] = dict(
        arch="custom", backbone="mit", embed_dim=dims[0], embed_dims=dims, depths=tuple(hf_config["depths"]),
        num_heads=tuple(hf_config["num_attention_heads"]), window_size=None,
        mit_sr_ratios=tuple(hf_config["sr_ratios"]), mit_patch_sizes=tuple(hf_config["patch_sizes"]),
        mit_strides=tuple(hf_config["strides"]), mlp_ratio=float(hf_config["mlp_ratios"][0]),
        in_chans=hf_config.get("num_channels", 3), decoder="segformer",
        decoder_channels=hf_config.get("decoder_hidden_size", 256), drop_path_rate=hf_config.get("drop_path_rate", 0.1),
        num_classes=len(hf_config.get("id2label") or {}) or hf_config.get("num_labels", 150))
    if len(set(hf_config["mlp_ratios"])) > 1:
        raise ValueError(f"per-stage MLP ratios {hf_config['mlp_ratios']} are not supported (SegFormer uses 4 for all)")
    sizes = ("embed_dims", "depths", "num_heads", "mit_sr_ratios", "mit_patch_sizes", "mit_strides", "decoder_channels")
    for name, arch in ARCHS.items():
        if arch.get("backbone") == "mit" and ("semantic_attention" in arch) == semantic \
                and all(arch[k] == fields[k] for k in sizes):
            fields = dict(arch, arch=name, num_classes=fields["num_classes"])
            break
    else:
        if semantic:
            raise ValueError("no registered SeMask MiT has this size; pass semantic_attention/sem_window_size")
    return ModelConfig(**fields).replace(**overrides)


def load_segformer(source: str | Path, *, semantic: bool = False, revision: str | None = None,
                   **overrides: Any) -> Segmentor:
    """Build the MiT model a transformers SegFormer folder or hub repo describes (`config.json`) and load it (eval).

    `semantic=True` builds the SeMask variant of the same size, initialised from the SegFormer weights.
    """
    path = Path(source)
    if path.is_dir():
        cfg_file = path / "config.json"
    elif path.exists():
        raise FileNotFoundError(f"{path}: pass the folder (config.json + weights), or a hub repo id")
    else:  # through semask.hub: offline / missing-repo errors that say why
        from ..hub import hub_download

        cfg_file = hub_download(str(source), "config.json", revision=revision)
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json (a folder written by transformers' save_pretrained)")
    config = infer_segformer_config(json.loads(cfg_file.read_text()), semantic=semantic, **overrides)
    return load_segformer_weights(build_model(config), source, revision=revision).eval()


def _hf_ref(name: str) -> dict[str, Any]:
    """The transformers checkpoint a manifest tag points at (`source`, or `init` for SeMask starting points)."""
    from ..hub import load_manifest

    entry = load_manifest().get(name) or {}
    ref = entry.get("source") or entry.get("init") or {}
    if ref.get("format") != HF_FORMAT:
        raise ValueError(f"{name!r} does not point at a transformers SegFormer checkpoint")
    return ref


def is_segformer_tag(name: str) -> bool:
    """Whether `arch.tag`'s weights are a transformers SegFormer checkpoint (loaded by `load_segformer_tag`)."""
    try:
        _hf_ref(name)
    except ValueError:
        return False
    return True


def load_segformer_tag(name: str, config: ModelConfig, *, num_classes: int | None = None) -> Segmentor:
    """`create_model("arch.tag", pretrained=True)` for SegFormer tags: download the transformers checkpoint at the
    manifest's revision, convert, load. For `semask_mit_*` tags the semantic layers keep their initialisation."""
    ref = _hf_ref(name)
    if num_classes is not None:
        config = config.replace(num_classes=num_classes, sem_num_classes=None)
    return load_segformer_weights(build_model(config), ref["repo_id"], revision=ref.get("revision"))


def load_mit_pretrained_backbone(model: Segmentor, *, revision: str | None = None) -> Segmentor:
    """`pretrained_backbone=True` for MiT architectures: the ImageNet-1k MiT of the model's size (the `init` of the
    manifest tag `<arch>.imagenet_init`, e.g. `nvidia/mit-b4`). Decode head and semantic layers keep their init."""
    tag = f"{model.config.arch}.imagenet_init"
    try:
        ref = _hf_ref(tag)
    except ValueError:
        from ..hub import load_manifest

        choices = sorted(n.split(".")[0] for n in load_manifest() if n.endswith(".imagenet_init"))
        raise ValueError(f"no ImageNet MiT weights for {model.config.arch!r} (no manifest tag {tag}); "
                         f"architectures with them: {choices}") from None
    return load_segformer_weights(model, ref["repo_id"], revision=revision or ref.get("revision"))
