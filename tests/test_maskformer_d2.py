"""SeMask MaskFormer / Mask2Former / FaPN: parity with the original (fixture e1), detectron2 checkpoint loading
(every released key manifest, round trips through the original layout), and the padding / inference rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.convert.detectron2 import d2_to_semask, detect_decoder, infer_d2_config, save_d2, semask_to_d2
from semask.decoders.maskformer import semantic_inference
from semask.hub import convert_original, load_manifest
from semask.registry import get_config
from semask.segmentor import build_model

FIX = Path(__file__).parent / "fixtures"
KEYS = FIX / "checkpoint_keys"
E1 = FIX / "semask_maskformer_tiny_w7.pth"
TOL = dict(atol=1e-4, rtol=1e-4)
# manifest file -> the tag whose architecture it must load into
TAGS = {
    "d2_maskformer__ade20k__maskformer_semask_swin_large_IN21k_384_bs16_160k_res640.json":
        "semask_swin_large_maskformer.ade20k",
    "d2_mask2former__ade20k__maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.json":
        "semask_swin_large_mask2former.ade20k",
    "d2_mask2former__cityscapes__maskformer2_semask_swin_large_IN21k_384_bs16_90k.json":
        "semask_swin_large_mask2former.cityscapes",
    "d2_fapn__ade20k__fapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.json":
        "semask_swin_large_fapn_mask2former.ade20k",
    "d2_fapn__ade20k__msfapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.json":
        "semask_swin_large_msfapn_mask2former.ade20k",
}


@pytest.fixture(scope="module")
def e1_model():
    return semask.load_original(E1, nheads=4)  # attention heads are not in the tensors


def _tensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIX / f"semask_maskformer_tiny_w7__{name}.safetensors"))


def test_e1_infers_fixture_architecture(e1_model):
    c = e1_model.config
    assert c.arch == "custom" and c.decoder == "maskformer"
    expected = semask.get_config("test_semask_maskformer")
    for f in ("embed_dim", "depths", "num_heads", "window_size", "num_classes", "semantic_attention",
              "sem_window_size", "conv_dim", "mask_dim", "hidden_dim", "num_queries", "dim_feedforward",
              "dec_layers"):
        assert getattr(c, f) == getattr(expected, f), f


@pytest.mark.parametrize("name", ["sq", "nsq"])
def test_e1_parity(e1_model, name):
    t = _tensors(name)
    images = t["images_tensor"]  # the original's normalised, padded batch (160x224 for nsq: no extra padding)
    with torch.no_grad():
        feats, priors = e1_model.backbone(images)
        out = e1_model(images)
    for i in range(4):
        torch.testing.assert_close(feats[i], t[f"backbone.res{i + 2}"], **TOL)
        torch.testing.assert_close(priors[i], t[f"backbone.sem_res{i + 2}"], **TOL)
    torch.testing.assert_close(out["pred_logits"], t["pred_logits"], **TOL)
    torch.testing.assert_close(out["pred_masks"], t["pred_masks"], **TOL)
    torch.testing.assert_close(out["prior_logits"], t["sem_pred"], **TOL)
    n = sum(k.startswith("sem_seg.") for k in t)
    assert n == images.shape[0]
    for i in range(n):  # detectron2 per image: crop the padded semantic map to the image size, then resize
        ref = t[f"sem_seg.{i}"]
        h, w = t[f"input.{i}"].shape[-2:]
        got = F.interpolate(out["logits"][i: i + 1, :, :h, :w], size=ref.shape[-2:], mode="bilinear",
                            align_corners=False)[0]
        torch.testing.assert_close(got, ref, **TOL)
        assert torch.equal(got.argmax(0), ref.argmax(0))


def test_padding_rule_matches_manual_padding(e1_model):
    """model(x) pads normalised images with 0 to a multiple of 32 and crops the outputs back to x's size."""
    x = _tensors("nsq")["images_tensor"][:1, :, :150, :200]
    padded = F.pad(x, (0, 24, 0, 10))  # -> 160 x 224
    with torch.no_grad():
        out, ref = e1_model(x), e1_model(padded)
    assert out["logits"].shape[-2:] == (150, 200) and out["prior_logits"].shape[-2:] == (150, 200)
    assert out["pred_masks"].shape[-2:] == (40, 56)
    torch.testing.assert_close(out["logits"], ref["logits"][..., :150, :200])
    torch.testing.assert_close(out["pred_masks"], ref["pred_masks"])
    masks = F.interpolate(ref["pred_masks"], size=(160, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["logits"], semantic_inference(ref["pred_logits"], masks)[..., :150, :200])
    # a different zero padding changes the result (the original's rule is not a no-op)
    with torch.no_grad():
        other = e1_model(F.pad(x, (0, 56, 0, 42)))
    assert not torch.allclose(other["logits"][..., :150, :200], out["logits"], atol=1e-4)


@pytest.mark.parametrize("manifest", sorted(TAGS))
def test_released_key_manifests_load(manifest):
    """Every key of every released checkpoint maps into the tag's architecture; full-size tensor count."""
    shapes = json.loads((KEYS / manifest).read_text())
    info = json.loads((KEYS / "index_d2.json").read_text())[manifest]
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert len(sd) == info["num_keys"]
    tag = TAGS[manifest]
    config = infer_d2_config(sd)
    expected = semask.get_config(tag)
    assert config.arch == expected.arch
    for f in ("embed_dim", "depths", "num_heads", "window_size", "num_classes", "decoder", "semantic_attention",
              "sem_window_size", "conv_dim", "mask_dim", "hidden_dim", "num_queries", "nheads", "dim_feedforward",
              "dec_layers", "enc_layers", "enc_dim_feedforward", "enc_points", "decoder_dropout"):
        assert getattr(config, f) == getattr(expected, f), f
    layout = ["window" if t == "SWSeMaskBlock" else "global" for t in info["semantic_layer_type_per_stage"]]
    assert list(expected.semantic_attention) == layout
    assert expected.sem_window_size == info["backbone"]["SEM_WINDOW_SIZE"]
    with torch.device("meta"):
        model = build_model(expected)
    mapped = d2_to_semask(sd, model)
    own = model.state_dict()
    assert set(mapped) == set(own)
    n_index = sum(k.endswith("relative_position_index") for k in sd)
    assert len(own) + n_index + 1 == info["num_keys"]  # + criterion.empty_weight
    floats = sum(v.numel() for v in own.values()) + expected.num_classes + 1
    assert floats == info["num_params_float"]
    for a, b in info["keys_sharing_storage"]:  # FaPN's GroupNorm listed twice: one module in our model too
        assert own[a].shape == own[b].shape
    assert load_manifest()[tag]["num_params"] == sum(p.numel() for p in model.parameters())


def test_fapn_shared_groupnorm_is_one_module():
    model = semask.create_model("test_semask_fapn_mask2former")
    pd = model.sem_seg_head.pixel_decoder
    for i in (1, 2, 3):
        assert getattr(pd, f"align_{i}").offset.norm is getattr(pd, f"layer_{i}").norm
    sd = model.state_dict()
    assert "sem_seg_head.pixel_decoder.align_1.offset.norm.weight" in sd
    assert "sem_seg_head.pixel_decoder.layer_1.norm.weight" in sd


def test_decoder_told_apart_by_keys_not_names():
    for manifest, tag in TAGS.items():
        keys = json.loads((KEYS / manifest).read_text())
        assert detect_decoder(keys) == semask.get_config(tag).decoder


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == 1 else 0.0))


@pytest.mark.parametrize("arch", ["test_semask_maskformer", "test_semask_mask2former",
                                  "test_semask_fapn_mask2former", "test_semask_msfapn_mask2former"])
def test_round_trip_through_detectron2_layout(arch, tmp_path):
    model = semask.create_model(arch).eval()
    _randomise(model)
    path = save_d2(model, tmp_path / "model_final.pth")
    obj = torch.load(path, map_location="cpu")
    assert "criterion.empty_weight" in obj["model"]
    assert any(k.endswith("relative_position_index") for k in obj["model"])
    c = model.config
    loaded = semask.load_original(path, nheads=c.nheads, semantic_attention=c.semantic_attention,
                                  sem_window_size=c.sem_window_size)
    assert loaded.config.decoder == c.decoder
    x = torch.randn(1, 3, 45, 70, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in ("logits", "pred_logits", "pred_masks", "prior_logits"):
        assert torch.equal(a[k], b[k]), k
    assert set(semask_to_d2(loaded)["model"]) == set(obj["model"])
    # and through a weights folder (FaPN's state dict names shared tensors twice: safetensors needs copies)
    semask.save_pretrained(loaded, tmp_path / "folder")
    again = semask.create_model(f"local-dir:{tmp_path / 'folder'}").eval()
    with torch.no_grad():
        assert torch.equal(again(x)["logits"], a["logits"])


@pytest.mark.parametrize("arch", ["test_semask_mask2former", "test_semask_msfapn_mask2former"])
def test_heads_read_from_the_deformable_encoder(arch):
    """The original builds the encoder with the decoder's heads and 4 points: its rows tell `nheads` (here 4, not
    the released 8 a MaskFormer / FaPN checkpoint is read with); an explicit `nheads` still wins."""
    model = semask.create_model(arch).eval()
    sd = semask_to_d2(model)["model"]
    assert (model.config.nheads, model.config.enc_points) == (4, 4)
    loaded = semask.load_original(sd)
    assert (loaded.config.nheads, loaded.config.enc_points) == (4, 4)
    x = torch.randn(1, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x)["logits"], model(x)["logits"])
    forced = semask.load_original(sd, nheads=8)  # another points count (a fork's), as the user says
    assert (forced.config.nheads, forced.config.enc_points) == (8, 2)
    rows = "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.attention_weights."
    odd = {k: (v[:-1] if k.startswith(rows) else v) for k, v in sd.items()}  # 47 rows: no 3 x 4 split
    with pytest.raises(ValueError, match="pass nheads="):
        semask.load_original(odd)
    with pytest.raises(ValueError, match="nheads=3 does not fit"):
        semask.load_original(sd, nheads=3)


def test_named_architecture_checks_the_heads_the_file_shows(tmp_path):
    """Converting under a name compares the heads read from the file with the name's, instead of forcing the
    name's heads onto it (which split the same rows into other points, silently)."""
    model = semask.create_model("test_semask_mask2former").eval()
    path = save_d2(model, tmp_path / "model_final.pth")
    layout = dict(semantic_attention=model.config.semantic_attention)  # not the original's rule for 5 classes
    loaded = semask.create_model("test_semask_mask2former", pretrained=path, **layout)  # 4 heads, as the file
    assert (loaded.config.nheads, loaded.config.enc_points) == (4, 4)
    eight = get_config("test_semask_mask2former", **layout).replace(nheads=8)
    with pytest.raises(ValueError, match=r"differ in \['nheads'\]"):
        convert_original(path, "test_semask_mask2former", eight, overrides=layout)
    with pytest.raises(ValueError, match="enc_points"):  # forced heads: the points no longer match the name's
        semask.create_model("test_semask_mask2former", pretrained=path, nheads=8, **layout)


def test_heads_default_without_an_encoder():
    """MaskFormer / FaPN tensors cannot show the heads: the released configs' 8 unless told."""
    for arch in ("test_semask_maskformer", "test_semask_fapn_mask2former"):
        sd = semask_to_d2(semask.create_model(arch))["model"]
        assert semask.load_original(sd).config.nheads == 8
        assert semask.load_original(sd, nheads=4).config.nheads == 4


def test_leftover_keys_fail():
    model = semask.create_model("test_semask_mask2former")
    sd = semask_to_d2(model)["model"]
    sd["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="extra"):
        semask.load_original(sd, nheads=4)
