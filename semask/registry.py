"""The ONE table of architectures, and `create_model` / `list_models` / `list_pretrained`.

An architecture (`ARCHS`) fixes sizes; a tag (`arch.tag`, an entry of `weights_manifest.json`) pins what one
original config built on top of it: classes, which semantic stages are windowed vs global, the semantic window.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .hub import (
    HF_PREFIX,
    LOCAL_DIR,
    download_repo,
    hub_download,
    is_published,
    load_local_dir,
    load_manifest,
    load_pretrained,
    read_local_config,
    tag_pretrained_cfg,
)
from .segmentor import Segmentor, build_model

W, G = "window", "global"
# size: (embed_dim, depths, num_heads, window) of the Swin backbones the paper uses.
_SWIN = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
# Untagged SeMask defaults = the ADE20K release of each size (original rule: T/S/L 'large' layout WWGG, B all W).
_SEMANTIC_ADE = {"tiny": (W, W, G, G), "small": (W, W, G, G), "base": (W, W, W, W), "large": (W, W, G, G)}


def _swin(size: str, semantic: bool) -> dict[str, Any]:
    dim, depths, heads, window = _SWIN[size]
    cfg = dict(embed_dim=dim, depths=depths, num_heads=heads, window_size=window, num_classes=150)
    if semantic:
        cfg.update(semantic_attention=_SEMANTIC_ADE[size], sem_window_size=window)
    return cfg


# Mask-classification decoders on SeMask Swin-L (detectron2 originals, reference §2.2 / §6.2). Untagged defaults =
# the ADE20K release; `dec_layers` counts built layers (Mask2Former DEC_LAYERS 10 -> 9). Their backbones start the
# semantic layers as the detectron2 code does (`semantic_init`).
_M2F = dict(dec_layers=9, decoder_dropout=0.0, enc_layers=6, semantic_init="detectron2")
_MASK = {
    "maskformer": dict(semantic_attention=(W, W, W, G), dec_layers=6, decoder_dropout=0.1, semantic_init="detectron2"),
    "mask2former": dict(_M2F, semantic_attention=(W, W, W, G)),
    "fapn_mask2former": dict(_M2F, semantic_attention=(W, W, G, G)),
    "msfapn_mask2former": dict(_M2F, semantic_attention=(W, W, G, G)),
}
# Tiny mask-classification models: "test_semask_maskformer" is the configuration of parity fixture e1.
_TEST_MASK = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, num_classes=5,
                  sem_window_size=7, conv_dim=32, mask_dim=32, hidden_dim=32, nheads=4, dim_feedforward=64,
                  num_queries=8, dec_layers=3, enc_layers=2, enc_dim_feedforward=64, drop_path_rate=0.1)

# ImageNet weights the paper fine-tuned from (T/S: IN-1k 224, B/L: IN-22k 384), as timm's Hugging Face Hub repos.
_IMAGENET = {
    "tiny": "timm/swin_tiny_patch4_window7_224.ms_in1k",
    "small": "timm/swin_small_patch4_window7_224.ms_in1k",
    "base": "timm/swin_base_patch4_window12_384.ms_in22k",
    "large": "timm/swin_large_patch4_window12_384.ms_in22k",
}

# MiT size: (per-stage widths, depths, decoder channels) of SegFormer's B0-B5; every size has 1/2/5/8 heads, key/value
# reduction 8/4/2/1, patch embeddings k7/s4 then k3/s2, MLP ratio 4, drop path 0.1.
_MIT = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
_MIT_COMMON = dict(backbone="mit", num_heads=(1, 2, 5, 8), window_size=None, mit_sr_ratios=(8, 4, 2, 1),
                   mit_patch_sizes=(7, 3, 3, 3), mit_strides=(4, 2, 2, 2), decoder="segformer", drop_path_rate=0.1)
# SeMask MiT: no weights or config were released, and MiT has no attention window to inherit. We use the layout of the
# Swin ADE20K models (T/S/L): 7x7 windows in stages 0-1, global in 2-3. At 512x512 MiT's stage 0 has 128x128 tokens,
# where global semantic attention would need a 16384x16384 map per image; stages 2-3 (32x32, 16x16) are cheap globally.
_MIT_SEMANTIC = dict(semantic_attention=(W, W, G, G), sem_window_size=7)


def _mit(size: str, semantic: bool) -> dict[str, Any]:
    dims, depths, channels = _MIT[size]
    cfg = dict(_MIT_COMMON, embed_dim=dims[0], embed_dims=dims, depths=depths, decoder_channels=channels,
               num_classes=150)
    return dict(cfg, **_MIT_SEMANTIC) if semantic else cfg


_TEST = dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, num_classes=5,
             decoder_channels=16, drop_path_rate=0.1)

_TEST_MIT = dict(_MIT_COMMON, embed_dim=8, embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 3, 4),
                 num_classes=5, decoder_channels=16, drop_path_rate=0.0)

ARCHS: dict[str, dict[str, Any]] = {
    **{f"semask_swin_{s}_fpn": _swin(s, semantic=True) for s in _SWIN},
    **{f"swin_{s}_fpn": _swin(s, semantic=False) for s in _SWIN},
    # Tiny models for tests: windowed, mixed windowed/global, a zero-depth stage, and the plain baseline.
    "test_semask_swin_fpn": dict(_TEST, semantic_attention=(W, W, W, W), sem_window_size=7),
    "test_semask_swin_fpn_global": dict(_TEST, window_size=4, depths=(1, 0, 2, 1),
                                        semantic_attention=(W, W, G, G), sem_window_size=5),
    "test_swin_fpn": dict(_TEST),
    **{f"semask_swin_large_{d}": dict(_swin("large", semantic=True), decoder=d, **f) for d, f in _MASK.items()},
    **{f"test_semask_{d}": dict(_TEST_MASK, decoder=d, **{k: v for k, v in f.items() if k in ("semantic_attention",
                                                                                               "decoder_dropout",
                                                                                               "semantic_init")})
       for d, f in _MASK.items()},
    **{f"semask_mit_{s}_segformer": _mit(s, semantic=True) for s in _MIT},
    **{f"mit_{s}_segformer": _mit(s, semantic=False) for s in _MIT},
    # MiT with non-doubling widths (as B0) and semantic windows that need padding at every test size; no stochastic
    # depth, so that every parameter gets a gradient in a 2-image training step.
    "test_semask_mit_segformer": dict(_TEST_MIT, semantic_attention=(W, W, G, G), sem_window_size=5),
    "test_mit_segformer": dict(_TEST_MIT),
}
# arch -> hub repo of the ImageNet Swin checkpoint `create_model(arch, pretrained_backbone=True)` starts from.
# Derived from the table: every architecture whose Swin sizes are one of the paper's (FPN and mask decoders alike).
BACKBONE_WEIGHTS: dict[str, str] = {
    name: _IMAGENET[size] for name, cfg in ARCHS.items() for size, (dim, depths, _, _) in _SWIN.items()
    if cfg.get("backbone", "swin") == "swin" and (cfg.get("embed_dim"), cfg.get("depths")) == (dim, depths)
}


def split_name(name: str) -> tuple[str, str | None]:
    """'arch.tag' -> ('arch', 'tag'); 'arch' -> ('arch', None). Unknown names raise a ValueError with choices."""
    arch, _, tag = name.partition(".")
    if arch not in ARCHS:
        close = fnmatch.filter(ARCHS, f"*{arch.split('_')[-1]}*") or sorted(ARCHS)
        raise ValueError(f"unknown architecture {arch!r}; choose from {close} (semask.list_models())")
    if tag and name not in load_manifest():
        tags = [n for n in load_manifest() if n.startswith(arch + ".")]
        raise ValueError(f"unknown tag {name!r}; {arch} has {tags or 'no tags'}")
    return arch, tag or None


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The architecture config of `arch`, `arch.tag`, `local-dir:PATH` or `hf-hub:owner/repo[@rev]` (its config.json
    alone is downloaded), with `overrides` applied last."""
    if name.startswith(LOCAL_DIR):
        return read_local_config(name[len(LOCAL_DIR):]).replace(**overrides)
    if name.startswith(HF_PREFIX):
        return read_local_config(download_repo(name, weights=False)).replace(**overrides)
    arch, tag = split_name(name)
    fields = dict(ARCHS[arch], arch=arch)
    if tag:
        fields.update(load_manifest()[name]["model"])
    return ModelConfig(**fields).replace(**overrides)


def default_tag(arch: str) -> str:
    """The `arch.tag` that `pretrained=True` uses when only `arch` is given: a published tag first, else the first
    released one (ADE20K sorts first)."""
    split_name(arch)
    # whole-model weights only: a `*_init` tag (backbone init, random semantic layers) is never the default
    released = [n for n in list_pretrained(f"{arch}.*", include_unpublished=True) if load_manifest()[n].get("source")]
    if not released:
        starts = list_pretrained(f"{arch}.*")  # e.g. SeMask MiT: ImageNet / SegFormer starting points only
        if starts:
            raise ValueError(f"{arch} has no released whole-model weights; name one of its starting points "
                             f"{starts} (a trained backbone, new semantic layers and head) to fine-tune from")
        raise ValueError(f"{arch} has no released weights; pretrained architectures: "
                         f"{sorted({n.split('.')[0] for n in list_pretrained(include_unpublished=True)})}")
    loadable = set(list_pretrained(f"{arch}.*"))
    return ([n for n in released if n in loadable] or released)[0]


def create_model(name: str, *, pretrained: bool | str | Path = False, num_classes: int | None = None,
                 pretrained_backbone: bool | str | Path = False, **overrides: Any) -> Segmentor:
    """Build `arch` or `arch.tag`, optionally with weights; or `local-dir:PATH`, a folder written by `semask convert`
    or `save_pretrained`, or `hf-hub:owner/repo[@revision]`, a hub repo of such a folder, with its own architecture
    and weights.

    Args:
        pretrained: False; True (the tag's published weights, downloaded at the pinned revision and verified
            against the manifest's sha256; `arch` alone means `default_tag(arch)`); 'hf-hub:owner/repo@revision';
            a local safetensors file or folder (`model.safetensors` + `config.json`); or an ORIGINAL checkpoint
            (.pth), converted on the fly with the tag's windowed/global semantic layout (untagged: the original
            code's rule, as `load_original`).
        num_classes: a class count different from the weights' re-initialises only the classifier and the
            semantic-layer class projections (and logs which tensors).
        pretrained_backbone: ImageNet Swin weights for the backbone only, to fine-tune from: True (the paper's,
            `BACKBONE_WEIGHTS[arch]` from the hub), 'hf-hub:owner/repo@revision' (a timm Swin repo), or a local
            timm `.safetensors` / Microsoft or timm `.pth`. Semantic layers and the decoder keep their init.
        overrides: any `ModelConfig` field, e.g. `attn_impl="eager"`, `drop_path_rate=0.1`.
    """
    if name.startswith((LOCAL_DIR, HF_PREFIX)):  # timm's convention: the folder's config.json is the architecture
        if pretrained not in (False, None, True) or pretrained_backbone:
            raise ValueError(f"{name!r} loads its own weights; drop pretrained=/pretrained_backbone=, or name an "
                             "architecture to load other weights into")
        folder = download_repo(name) if name.startswith(HF_PREFIX) else name[len(LOCAL_DIR):]
        return load_local_dir(folder, num_classes=num_classes, overrides=overrides)
    if pretrained is True and "." not in name:
        name = default_tag(name)
    config = get_config(name, **overrides)
    if pretrained is False or pretrained is None:
        if num_classes is not None:
            config = config.replace(num_classes=num_classes, sem_num_classes=overrides.get("sem_num_classes"))
        model = build_model(config)
        if pretrained_backbone:
            _load_backbone(model, name, pretrained_backbone)
    elif pretrained_backbone:
        raise ValueError("pass pretrained= (whole-model weights) or pretrained_backbone= (ImageNet init), not both")
    else:
        model = load_pretrained(name, pretrained, config, num_classes=num_classes, overrides=overrides)
    cfg = tag_pretrained_cfg(name)
    record = getattr(model, "pretrained_cfg", None)  # what the weights recorded (e.g. a run fine-tuned from a tag)
    if cfg is not None and model.config.num_classes == cfg.get("num_classes") and (
            not record or record.get("name") == name):
        model.pretrained_cfg = cfg
    return model


def _load_backbone(model: Segmentor, name: str, source: bool | str | Path) -> None:
    from .convert.swin_imagenet import load_imagenet_backbone, read_imagenet_checkpoint

    arch = name.partition(".")[0]
    if model.config.backbone == "mit":  # ImageNet MiT in the transformers layout (nvidia/mit-b*)
        from .convert.segformer import load_mit_pretrained_backbone, load_segformer_weights

        if source is True:
            load_mit_pretrained_backbone(model)
        elif isinstance(source, str) and source.startswith(HF_PREFIX):
            from .hub import parse_hf_spec

            repo_id, revision = parse_hf_spec(source)
            load_segformer_weights(model, repo_id, revision=revision)
        else:
            load_segformer_weights(model, source)
        return
    if source is True:
        if arch not in BACKBONE_WEIGHTS:
            raise ValueError(f"no ImageNet weights are known for {arch!r}; known: {sorted(BACKBONE_WEIGHTS)}, "
                             "or pass pretrained_backbone='path/to/swin.pth'")
        source = HF_PREFIX + BACKBONE_WEIGHTS[arch]
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        from .hub import parse_hf_spec

        repo_id, revision = parse_hf_spec(source)
        source = hub_download(repo_id, "model.safetensors", revision=revision)
    load_imagenet_backbone(model.backbone, read_imagenet_checkpoint(source))


def list_models(pattern: str = "*", *, pretrained: bool = False, include_tags: bool | None = None) -> list[str]:
    """Architecture names matching a glob `pattern`; with `include_tags` (default: when the pattern has a "."),
    every `arch.tag` too. `pretrained=True` (timm's): only architectures with weights `pretrained=True` loads, or
    with `include_tags`, those tags (`list_pretrained`)."""
    include_tags = "." in pattern if include_tags is None else include_tags
    if pretrained:
        tags = list_pretrained(pattern)
        if include_tags:
            return tags
        # an architecture whose only tags are `*_init` starting points has nothing create_model(arch, True) loads
        return sorted({n.partition(".")[0] for n in tags if not n.endswith("_init")})
    names = list(ARCHS) + (list(load_manifest()) if include_tags else [])
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_pretrained(pattern: str = "*", *, include_unpublished: bool = False) -> list[str]:
    """`arch.tag` names that `create_model(name, pretrained=True)` loads, as timm's: converted weights published on
    the hub, SegFormer checkpoints (converted on the fly from transformers), and the `*_init` starting points
    (ImageNet / SegFormer weights for the parts they name).

    `include_unpublished`: also the tags whose original checkpoint is released but whose conversion is not on the hub
    yet (`pretrained=True` raises with the download link and the `semask convert` command for those).
    """
    from .convert.segformer import is_segformer_tag

    def loadable(name: str, entry: dict[str, Any]) -> bool:
        return is_published(entry) or is_segformer_tag(name) or (include_unpublished and bool(entry.get("source")))

    def matches(name: str) -> bool:  # an architecture name alone matches its tags
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.partition(".")[0], pattern)

    return sorted(n for n, e in load_manifest().items() if matches(n) and loadable(n, e))
