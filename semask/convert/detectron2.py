"""Original SeMask MaskFormer / Mask2Former / FaPN (detectron2) checkpoints -> semask, and back.

Our module names are the detectron2 ones, so conversion drops what we rebuild (`criterion.empty_weight`, the
`relative_position_index` buffers) and copies the rest, failing on leftovers. The architecture comes from tensor
shapes; the pixel decoder from the keys (FaPN: `align_*` without `pixel_decoder.transformer`; MSFaPN: both —
never from file names, quirk of the swapped Drive links). What the tensors cannot tell comes from the original
configs unless overridden: the attention heads (`nheads`, 8) of MaskFormer and FaPN (Mask2Former and MSFaPN show
them in their deformable encoder, see `_encoder_heads`), the windowed/global semantic layout and the semantic
window (§2.2 of the reference: MaskFormer W W W G; Mask2Former W W W G for 150 classes else W W W W with window 7,
the config default the Cityscapes release kept; FaPN/MSFaPN W W G G).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..backbones.swin import relative_position_index
from ..config import ModelConfig
from ..segmentor import Segmentor, build_model
from .common import fail_on_unmapped

StateDict = dict[str, torch.Tensor]
W, G = "window", "global"
PD, PR = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
DEFAULT_NHEADS = 8  # MASK_FORMER.NHEADS of every released config: what MaskFormer / FaPN checkpoints are read with
ORIGINAL_ENC_POINTS = 4  # the deformable encoder's sampling points, fixed in the original pixel decoders


def is_detectron2(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith("sem_seg_head.") for k in sd)


def detect_decoder(sd: Mapping[str, Any]) -> str:
    """"maskformer" / "mask2former" / "fapn_mask2former" / "msfapn_mask2former" from the keys alone."""
    has_align = any(k.startswith(PD + "align_") for k in sd)
    has_trans = any(k.startswith(PD + "transformer.") for k in sd)
    if has_align:
        return "msfapn_mask2former" if has_trans else "fapn_mask2former"
    if has_trans:
        return "mask2former"
    if any(k.startswith(PR + "transformer.decoder.") for k in sd):
        return "maskformer"
    heads = sorted({k.split(".")[1] for k in sd if k.startswith("sem_seg_head.")})
    raise ValueError(f"unknown detectron2 head (sem_seg_head has {heads}); semask reads SeMask MaskFormer, "
                     "Mask2Former, FaPN and MSFaPN checkpoints")


def original_d2_semantic(decoder: str, num_classes: int, num_stages: int) -> tuple[tuple[str, ...], int | None]:
    """(semantic layout, semantic window or None = Swin window) of the original D2 configs (reference §2.2, §6.2)."""
    if decoder == "maskformer":
        return tuple(W if i < num_stages - 1 else G for i in range(num_stages)), None
    if decoder == "mask2former":
        if num_classes == 150:
            return tuple(W if i < num_stages - 1 else G for i in range(num_stages)), None
        return (W,) * num_stages, 7
    return tuple(W if i < 2 else G for i in range(num_stages)), None


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def infer_d2_config(sd: Mapping[str, torch.Tensor], **overrides: Any) -> ModelConfig:
    """The architecture of a detectron2 SeMask checkpoint, from its tensors (see the module docstring)."""
    if not any(k.startswith("backbone.layers.") for k in sd):
        raise ValueError("not a SeMask Swin detectron2 checkpoint: no 'backbone.layers.*' keys")
    decoder = detect_decoder(sd)
    proj = sd["backbone.patch_embed.proj.weight"]
    embed_dim = proj.shape[0]
    n = _count(sd, r"backbone\.layers\.(\d+)\.")
    depths = tuple(_count(sd, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(n))
    tables = [sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(n) if depths[i]]
    heads = tuple(t.shape[1] for t in tables)
    if len(heads) != n:
        raise ValueError("a zero-depth Swin stage in a detectron2 checkpoint is not supported")
    window = round((tables[0].shape[0] ** 0.5 + 1) / 2)
    fc1 = sd["backbone.layers.0.blocks.0.mlp.fc1.weight"]
    q = sd.get("backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight")
    if q is None:
        raise ValueError("no semantic layers: only SeMask detectron2 checkpoints are supported")
    cls = sd[PR + "class_embed.weight"]  # [K + 1, hidden]
    num_classes = cls.shape[0] - 1
    hidden = cls.shape[1]
    fields: dict[str, Any] = dict(
        arch="original", embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
        patch_size=proj.shape[-1], in_chans=proj.shape[1], num_classes=num_classes,
        mlp_ratio=fc1.shape[0] / fc1.shape[1], decoder=decoder,
        num_sem_blocks=_count(sd, r"backbone\.layers\.0\.semantic_layer\.class_injection\.(\d+)\."),
        sem_num_classes=q.shape[0] if q.shape[0] != num_classes else None,
        hidden_dim=hidden, mask_dim=sd[PD + "mask_features.weight"].shape[0],
        conv_dim=sd[PD + "mask_features.weight"].shape[1], num_queries=sd[PR + "query_embed.weight"].shape[0],
        nheads=overrides.get("nheads", DEFAULT_NHEADS), semantic_init="detectron2")
    if decoder == "maskformer":
        fields.update(dec_layers=_count(sd, re.escape(PR) + r"transformer\.decoder\.layers\.(\d+)\."),
                      dim_feedforward=sd[PR + "transformer.decoder.layers.0.linear1.weight"].shape[0],
                      decoder_dropout=0.1)
        if any(k.startswith(PR + "transformer.encoder.") for k in sd):
            raise ValueError("MaskFormer checkpoints with transformer encoder layers (ENC_LAYERS > 0) are not "
                             "supported; the SeMask release has none")
    else:
        fields.update(dec_layers=_count(sd, re.escape(PR) + r"transformer_ffn_layers\.(\d+)\."),
                      dim_feedforward=sd[PR + "transformer_ffn_layers.0.linear1.weight"].shape[0],
                      decoder_dropout=0.0)
        enc = PD + "transformer.encoder.layers."
        n_enc = _count(sd, re.escape(enc) + r"(\d+)\.")
        if n_enc:
            rows = sd[enc + "0.self_attn.attention_weights.weight"].shape[0]  # nheads * levels * points
            fields.update(enc_layers=n_enc, enc_dim_feedforward=sd[enc + "0.linear1.weight"].shape[0],
                          **_encoder_heads(rows, sd[PD + "transformer.level_embed"].shape[0], overrides.get("nheads")))
    layout, sem_window = original_d2_semantic(decoder, num_classes, n)
    fields.update(semantic_attention=layout, sem_window_size=sem_window or window)
    config = ModelConfig(**fields).replace(**overrides)
    return config.replace(arch=overrides.get("arch") or _registered_arch(config))


def _encoder_heads(rows: int, levels: int, nheads: int | None) -> dict[str, int]:
    """`nheads` and `enc_points` from the deformable encoder's `attention_weights` rows (nheads * levels * points).

    Both original pixel decoders with an encoder (Mask2Former's `MSDeformAttnPixelDecoder`, SeMask-FAPN's
    `MSDeformAttnPixelFANDecoder`) build it with `MASK_FORMER.NHEADS` heads, the transformer decoder's, and leave its
    sampling points at the default 4 (no config key reaches it), so the rows tell the heads. An explicit `nheads`
    wins (a fork that changed the points)."""
    if nheads is None:
        if rows % (levels * ORIGINAL_ENC_POINTS):
            raise ValueError(f"the deformable encoder has {rows} attention-weight rows, not a multiple of "
                             f"{levels} levels x {ORIGINAL_ENC_POINTS} points as the original code builds it; "
                             "pass nheads= (MASK_FORMER.NHEADS of the run's config)")
        nheads = rows // (levels * ORIGINAL_ENC_POINTS)
    if rows % (levels * nheads):
        raise ValueError(f"nheads={nheads} does not fit the deformable encoder's {rows} attention-weight rows "
                         f"({levels} levels x nheads x points)")
    return {"nheads": nheads, "enc_points": rows // (levels * nheads)}


def _registered_arch(config: ModelConfig) -> str:
    from ..registry import ARCHS  # late: the registry imports the loaders

    for name, fields in ARCHS.items():
        if not name.startswith("test_") and fields.get("decoder") == config.decoder and all(
                getattr(config, k) == (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()
                if k in ("embed_dim", "depths", "num_heads", "window_size")):
            return name
    return "custom"


def d2_to_semask(sd: Mapping[str, torch.Tensor], model: Segmentor) -> StateDict:
    """Map detectron2 keys onto `model`'s; a `KeyError` names every key left unmapped or missing."""
    own = model.state_dict()
    out: StateDict = {}
    leftover = []
    for k, v in sd.items():
        if k == "criterion.empty_weight":
            if v.shape != (model.config.num_classes + 1,):
                raise ValueError(f"{k} has shape {tuple(v.shape)}, expected ({model.config.num_classes + 1},)")
            continue  # the loss's class weights; rebuilt by the training loss (no-object weight)
        if k.endswith("attn.relative_position_index"):
            if v.device.type != "meta" and not torch.equal(v.long(), relative_position_index(round(v.shape[0] ** .5))):
                raise ValueError(f"{k} differs from the standard Swin index")
            continue
        if k in own and own[k].shape == v.shape:
            out[k] = v
        elif k in own:
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(own[k].shape)}")
        else:
            leftover.append(k)
    missing = sorted(set(own) - set(out))
    fail_on_unmapped(f"detectron2 checkpoint -> {model.config.arch}", leftover, missing)
    return out


def semask_to_d2(model: Segmentor, *, no_object_weight: float = 0.1) -> dict[str, Any]:
    """Our mask-classification model -> a detectron2 checkpoint dict (`{"model": state_dict}`) as the original
    saves it: with the `relative_position_index` buffers and `criterion.empty_weight`."""
    c = model.config
    sd: StateDict = {}
    for k, v in model.state_dict().items():
        sd[k] = v.detach().cpu()
        if k.endswith("attn.relative_position_bias_table"):
            sd[k[: -len("bias_table")] + "index"] = relative_position_index(c.window_size)
    empty = torch.ones(c.num_classes + 1)
    empty[-1] = no_object_weight
    sd["criterion.empty_weight"] = empty
    return {"model": sd, "iteration": 0}


def load_d2_state_dict(sd: Mapping[str, torch.Tensor], **overrides: Any) -> Segmentor:
    """Build the architecture a detectron2 state dict describes and load it (eval mode)."""
    model = build_model(infer_d2_config(sd, **overrides))
    model.load_state_dict(d2_to_semask(sd, model), strict=True)
    return model.eval()


def save_d2(model: Segmentor, path: str | Path) -> Path:
    """Write `model` as an original-layout detectron2 `.pth`."""
    path = Path(path)
    torch.save(semask_to_d2(model), path)
    return path
