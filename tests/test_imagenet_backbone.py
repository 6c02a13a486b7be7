"""ImageNet Swin (timm / Microsoft layout) -> semask backbone, checked against timm's own forward."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer

import semask
from semask.convert.swin_imagenet import imagenet_swin_to_semask, is_timm_layout, load_imagenet_backbone


def _stage_features_match(tm: torch.nn.Module, model: semask.Segmentor, size: int) -> None:
    """timm's per-stage outputs (before any norm) through our `norm{i}` == our backbone features, within 1e-5."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = tm.forward_intermediates(x, indices=len(model.backbone.layers), norm=False, output_fmt="NCHW",
                                       intermediates_only=True)
        feats, priors = model.backbone(x)
    assert priors == []  # plain Swin: no semantic layers in the path
    for i, (a, b) in enumerate(zip(ref, feats, strict=True)):
        norm = getattr(model.backbone, f"norm{i}")
        a = F.layer_norm(a.permute(0, 2, 3, 1), a.shape[1:2], norm.weight, norm.bias).permute(0, 3, 1, 2)
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=f"stage {i}")


def test_timm_swin_tiny_window7_equals_ours():
    # 224: no stage pads (56/28/14/7). The last stage is 7x7 = one window, where timm by default (like the
    # classification Swin) turns the shift off while the segmentation Swin we reproduce keeps it; always_partition
    # makes timm shift there too (same weights, same math as the segmentation Swin).
    torch.manual_seed(1)
    tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, always_partition=True).eval()
    sd = tm.state_dict()
    assert is_timm_layout(sd) and "layers.1.downsample.reduction.weight" in sd and "head.fc.weight" in sd
    model = semask.create_model("swin_tiny_fpn", drop_path_rate=0.0).eval()
    kept = load_imagenet_backbone(model.backbone, sd)
    assert kept == sorted(f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight"))
    torch.testing.assert_close(model.backbone.layers[0].downsample.reduction.weight,
                               sd["layers.1.downsample.reduction.weight"], atol=0, rtol=0)
    _stage_features_match(tm, model, 224)


def test_timm_window12_equals_ours():
    # A small window-12 Swin; at 384 the stages are 96/48/24/12 (multiples of 12, no padding) and the 12x12 last
    # stage has a single unshifted block, so timm and the segmentation Swin compute the same thing.
    torch.manual_seed(2)
    tm = SwinTransformer(img_size=384, embed_dim=32, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=12,
                         num_classes=10).eval()
    model = semask.create_model("test_swin_fpn", embed_dim=32, depths=(2, 2, 2, 1), window_size=12,
                                drop_path_rate=0.0).eval()
    load_imagenet_backbone(model.backbone, tm.state_dict())
    _stage_features_match(tm, model, 384)


def _microsoft_layout(sd: dict[str, torch.Tensor]) -> dict:
    """timm layout -> the Microsoft Swin .pth layout (downsample at the end of stage i, buffers, head)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("layers.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.", f"layers.{i - 1}.", 1)
        out[k.replace("head.fc.", "head.")] = v
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    return {"model": out}


def test_microsoft_pth_and_timm_safetensors_files(tmp_path):
    torch.manual_seed(3)
    tm = SwinTransformer(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, num_classes=10)
    sd = tm.state_dict()
    torch.save(_microsoft_layout(sd), tmp_path / "swin_ms.pth")
    save_file(sd, str(tmp_path / "swin_timm.safetensors"))
    # what Mask2Former's convert-pretrained-swin-model-to-d2.py makes of the .pth (the SeMask D2 configs' weights)
    with (tmp_path / "swin_ms_d2.pkl").open("wb") as f:
        pickle.dump(dict(_microsoft_layout(sd), __author__="third_party", matching_heuristics=True), f)
    ref = semask.create_model("test_semask_swin_fpn", drop_path_rate=0.0)
    a = semask.create_model("test_semask_swin_fpn", pretrained_backbone=tmp_path / "swin_ms.pth")
    b = semask.create_model("test_semask_swin_fpn", pretrained_backbone=str(tmp_path / "swin_timm.safetensors"))
    c = semask.create_model("test_semask_swin_fpn", pretrained_backbone=tmp_path / "swin_ms_d2.pkl")
    sa, sb, sref = a.state_dict(), b.state_dict(), ref.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in c.state_dict().items():
        if not (".semantic_layer." in k or k.startswith(("decode_head.", "backbone.norm"))):
            torch.testing.assert_close(v, sa[k], atol=0, rtol=0, msg=k)
    for k in sa:
        if ".semantic_layer." in k or k.startswith(("decode_head.", "backbone.norm")):
            assert sa[k].shape == sref[k].shape  # own initialisation, untouched by the ImageNet file
        else:
            torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0, msg=k)
    torch.testing.assert_close(sa["backbone.layers.2.downsample.norm.weight"], sd["layers.3.downsample.norm.weight"])


def test_window_resize_and_errors():
    torch.manual_seed(4)
    small = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))  # few tables: timm's resize is slow
    tm = SwinTransformer(**small, window_size=7, num_classes=10)
    model = semask.create_model("test_semask_swin_fpn", **small, window_size=12)  # W7 table -> W12 table
    mapped = imagenet_swin_to_semask(tm.state_dict(), model.backbone)
    assert mapped["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (23 * 23, 1)
    bad = dict(tm.state_dict(), extra_key=torch.zeros(1))
    with pytest.raises(KeyError, match="extra_key"):
        imagenet_swin_to_semask(bad, model.backbone)
    wider = semask.create_model("test_semask_swin_fpn", **dict(small, embed_dim=24))
    with pytest.raises(ValueError, match="shape"):
        imagenet_swin_to_semask(tm.state_dict(), wider.backbone)
    with pytest.raises(ValueError, match=r"whole segmentation-model checkpoint .*backbone\.\*.*pretrained=PATH"):
        imagenet_swin_to_semask(model.state_dict(), model.backbone)  # a SeMask model's weights, not ImageNet's
    with pytest.raises(ValueError, match="no ImageNet weights are known"):
        semask.create_model("test_semask_swin_fpn", pretrained_backbone=True)
    with pytest.raises(ValueError, match="not both"):
        semask.create_model("test_semask_swin_fpn", pretrained="x", pretrained_backbone=True)
