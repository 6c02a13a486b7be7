"""SeMask MiT + SegFormer head: parity with Hugging Face transformers' SegFormer, and the weight converter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.convert import segformer as conv
from semask.hub import load_manifest

from .conftest import randomize_gammas

transformers = pytest.importorskip("transformers")

B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256)
# B4's widths, heads (1/2/5/8), reductions (8/4/2/1) and 768-wide head; fewer blocks than B4's 3/8/27/3 to keep the
# test fast on CPU, but stage 2 still has two-digit block indices.
B4_SHAPED = dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 3, 11, 3], decoder_hidden_size=768)
SIZES = [(67, 93), (45, 61)]


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter and BN statistic, so that a swapped or skipped tensor cannot go unnoticed
    (transformers' init leaves LayerNorms at 1/0 and BN statistics at 0/1)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model.eval()


def hf_segformer(num_labels: int, **sizes) -> torch.nn.Module:
    cfg = transformers.SegformerConfig(num_labels=num_labels, **sizes)
    return randomised(transformers.SegformerForSemanticSegmentation(cfg))


@pytest.fixture(scope="module")
def hf_b0() -> torch.nn.Module:
    torch.manual_seed(0)
    return hf_segformer(150, **B0)


@pytest.fixture(scope="module")
def hf_b0_dir(hf_b0: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("segformer_b0")
    hf_b0.save_pretrained(out)  # the layout of the files on the hub (transformers 5 writes the 4.x key names)
    return out


@pytest.mark.parametrize("arch, sizes, depths", [("mit_b0_segformer", B0, None),
                                                 ("mit_b4_segformer", B4_SHAPED, (3, 3, 11, 3))])
def test_logits_match_transformers(arch: str, sizes: dict, depths: tuple | None) -> None:
    hf = hf_segformer(19, **sizes)
    model = semask.create_model(arch, num_classes=19, **({"depths": depths} if depths else {})).eval()
    conv.load_segformer_weights(model, hf.state_dict())  # transformers >= 5 in-memory names
    for size in SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ref = hf(pixel_values=x).logits  # stride 4
            out = model(x, upsample=False)["logits"]
            assert out.shape == ref.shape == (2, 19, -(-size[0] // 4), -(-size[1] // 4))
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
            ref_up = F.interpolate(ref, size=size, mode="bilinear", align_corners=False)
            torch.testing.assert_close(model(x)["logits"], ref_up, atol=1e-5, rtol=0)
            model.set_attn_impl("eager")
            torch.testing.assert_close(model(x, upsample=False)["logits"], ref, atol=1e-4, rtol=1e-4)
            model.set_attn_impl("sdpa")


def test_hub_layout_folder_builds_the_registered_arch(hf_b0: torch.nn.Module, hf_b0_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(hf_b0_dir / "model.safetensors"), "pt") as f:
        assert "segformer.encoder.block.0.0.attention.self.query.weight" in f.keys()  # the hub files' names
    model = conv.load_segformer(hf_b0_dir)
    assert model.config.arch == "mit_b0_segformer" and model.config.num_classes == 150
    x = torch.randn(1, 3, 51, 77)
    with torch.no_grad():
        torch.testing.assert_close(model(x, upsample=False)["logits"], hf_b0(pixel_values=x).logits, atol=1e-5, rtol=0)


def test_semask_variant_keeps_semantic_layers_as_initialised(hf_b0_dir: Path) -> None:
    plain = conv.load_segformer(hf_b0_dir)
    torch.manual_seed(3)
    fresh = semask.create_model("semask_mit_b0_segformer")
    torch.manual_seed(3)
    model = conv.load_segformer(hf_b0_dir, semantic=True)
    assert model.config.arch == "semask_mit_b0_segformer"
    assert model.config.semantic_attention == ("window", "window", "global", "global")
    own, ref, init = model.state_dict(), plain.state_dict(), fresh.state_dict()
    semantic = [k for k in own if ".semantic_layer." in k]
    assert semantic and set(own) == set(ref) | set(semantic)
    assert all(torch.equal(own[k], ref[k]) for k in ref)
    assert all(torch.equal(own[k], init[k]) for k in semantic)
    out = model(torch.randn(1, 3, 45, 61))
    assert out["prior_logits"].shape == out["logits"].shape == (1, 150, 45, 61)


def test_imagenet_backbone_checkpoint_leaves_the_head(caplog: pytest.LogCaptureFixture) -> None:
    cfg = transformers.SegformerConfig(num_labels=1000, **B0)
    hf = randomised(transformers.SegformerForImageClassification(cfg))
    model = semask.create_model("semask_mit_b0_segformer", num_classes=7)
    head = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    with caplog.at_level(logging.INFO):
        conv.load_segformer_weights(model, hf.state_dict())
    assert "decode_head" in caplog.text and "semantic_layer" in caplog.text
    assert all(torch.equal(v, model.decode_head.state_dict()[k]) for k, v in head.items())
    ref = next(v for k, v in hf.state_dict().items()  # transformers >= 5 / 4 names
               if k.endswith(("stages.2.blocks.1.attention.q_proj.weight", "block.2.1.attention.self.query.weight")))
    assert torch.equal(model.backbone.layers[2].blocks[1].attn.q.weight, ref)


def test_other_class_count_keeps_only_the_classifier(hf_b0: torch.nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    model = semask.create_model("mit_b0_segformer", num_classes=7)
    pred = model.decode_head.linear_pred.weight.clone()
    with caplog.at_level(logging.WARNING):
        conv.load_segformer_weights(model, hf_b0.state_dict())
    assert "150 classes" in caplog.text
    assert torch.equal(model.decode_head.linear_pred.weight, pred)
    assert torch.equal(model.decode_head.linear_fuse.bn.running_var, hf_b0.decode_head.batch_norm.running_var)


def test_converter_fails_loudly(hf_b0: torch.nn.Module) -> None:
    config = semask.get_config("mit_b0_segformer")
    sd = dict(hf_b0.state_dict())
    assert len(conv.segformer_hf_to_semask(sd, config)) == len(sd)
    with pytest.raises(KeyError, match="segformer.pooler.weight"):
        conv.segformer_hf_to_semask({**sd, "segformer.pooler.weight": torch.zeros(1)}, config)
    with pytest.raises(KeyError, match=r"segformer.stages.0.blocks.2.mlp.fc1.weight"):  # B0 has 2 blocks per stage
        conv.segformer_hf_to_semask({**sd, "segformer.stages.0.blocks.2.mlp.fc1.weight": torch.zeros(1)}, config)
    with pytest.raises(KeyError, match=r"backbone.layers.1.blocks.0.attn.norm.bias"):
        conv.segformer_hf_to_semask({k: v for k, v in sd.items() if "stages.1.blocks.0.attention.sequence_reduction"
                                     ".layer_norm.bias" not in k}, config)
    with pytest.raises(KeyError, match="decode_head.linear_fuse.conv.weight"):  # a partial head is not a backbone
        conv.segformer_hf_to_semask({k: v for k, v in sd.items() if "linear_fuse" not in k}, config)
    with pytest.raises(ValueError, match="mlp.fc2.bias"):
        conv.segformer_hf_to_semask({**sd, "segformer.stages.3.blocks.1.mlp.fc2.bias": torch.zeros(3)}, config)
    with pytest.raises(ValueError, match="MiT models only"):
        conv.segformer_hf_to_semask(sd, semask.get_config("test_swin_fpn"))
    with pytest.raises(ValueError, match="model shape"):  # B0 weights into B1
        conv.segformer_hf_to_semask(sd, semask.get_config("mit_b1_segformer"))


def test_pretrained_tags_download_and_convert(hf_b0: torch.nn.Module, hf_b0_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def fake_download(repo_id: str, revision: str | None) -> Path:
        asked.append(repo_id)
        return hf_b0_dir / "model.safetensors"

    monkeypatch.setattr(conv, "_download", fake_download)
    model = semask.create_model("mit_b0_segformer.ade20k", pretrained=True).eval()
    semantic = semask.create_model("semask_mit_b0_segformer.segformer_ade20k_init", pretrained=True, num_classes=9)
    conv.load_mit_pretrained_backbone(semask.create_model("semask_mit_b0_segformer"))
    assert asked == ["nvidia/segformer-b0-finetuned-ade-512-512"] * 2 + ["nvidia/mit-b0"]
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(model(x, upsample=False)["logits"], hf_b0(pixel_values=x).logits, atol=1e-5, rtol=0)
    assert semantic.config.num_classes == 9 and semantic.config.semantic
    with pytest.raises(ValueError, match="no ImageNet MiT weights.*mit_b0_segformer"):
        conv.load_mit_pretrained_backbone(semask.create_model("test_mit_segformer"))


# Parameters (millions) of SegFormer-B0..B5 on ADE20K, Table 1 of the SegFormer paper (arXiv 2105.15203).
SEGFORMER_PARAMS_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("size", sorted(SEGFORMER_PARAMS_M))
def test_sizes_match_segformer(size: str) -> None:
    manifest = load_manifest()
    init = manifest[f"semask_mit_{size}_segformer.segformer_ade20k_init"]
    assert init["source"] is None and init["init"]["repo_id"].startswith(f"nvidia/segformer-{size}-finetuned-ade-")
    assert manifest[f"mit_{size}_segformer.imagenet_init"]["init"]["repo_id"] == f"nvidia/mit-{size}"
    assert "NVIDIA Source Code License" in manifest[f"mit_{size}_segformer.ade20k"]["license"]
    config = semask.get_config(f"mit_{size}_segformer")
    hf_cfg = transformers.SegformerConfig(num_labels=150, hidden_sizes=list(config.stage_dims),
                                          depths=list(config.depths), decoder_hidden_size=config.decoder_channels)
    with torch.device("meta"):
        hf = transformers.SegformerForSemanticSegmentation(hf_cfg)
        ours = semask.create_model(f"mit_{size}_segformer")
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in hf.parameters())
    assert round(n / 1e6, 1) == SEGFORMER_PARAMS_M[size]


def test_semantic_layout_is_explicit() -> None:
    cfg = semask.get_config("semask_mit_b4_segformer")
    assert (cfg.backbone, cfg.decoder, cfg.window_size) == ("mit", "segformer", None)
    assert (cfg.semantic_attention, cfg.sem_window_size) == (("window", "window", "global", "global"), 7)
    model = semask.create_model("test_semask_mit_segformer", semantic_attention=("global",) * 4)
    assert all(layer.semantic_layer.window_size is None for layer in model.backbone.layers)
    with pytest.raises(ValueError, match="MiT backbone needs"):
        semask.create_model("test_mit_segformer", mit_sr_ratios=None)


def test_gradient_checkpointing_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = semask.create_model("test_semask_mit_segformer").train()
        randomize_gammas(model)
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(1)
        out = model(torch.randn(1, 3, 40, 52))
        (out["logits"].sum() + out["prior_logits"].sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_local_round_trip(tmp_path: Path) -> None:
    model = semask.create_model("test_semask_mit_segformer").eval()
    randomize_gammas(model)
    semask.save_pretrained(model, tmp_path)
    loaded = semask.create_model(f"local-dir:{tmp_path}").eval()
    assert loaded.config == model.config
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["prior_logits"], model(x)["prior_logits"])


def test_inputs_below_the_smallest_mit_size_are_a_clear_error() -> None:
    """SegFormer does not pad: below 29 px stage 0's 8x8 key/value reduction conv is larger than its map."""
    model = semask.create_model("test_semask_mit_segformer").eval()
    assert model.backbone.min_size == 29
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 61))["logits"].shape[-2:] == (29, 61)
        with pytest.raises(ValueError, match=r"H and W >= 29.*\(28, 300\)"):
            model(torch.randn(1, 3, 28, 300))


def test_offline_segformer_download_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SegFormer hub path goes through semask.hub.hub_download, like the Swin tags (was a raw
    huggingface_hub LocalEntryNotFoundError)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*not in the cache.*HF_HUB_OFFLINE is set"):
        semask.create_model("mit_b0_segformer.ade20k", pretrained=True)


def test_stage_sizes_are_the_feature_map_sizes() -> None:
    """`stage_sizes` (what semask.export.min_input_size derives the program's bound from) is the conv arithmetic the
    stages do: ceil(n/4), then ceil(./2)."""
    from semask.backbones.mit import stage_sizes

    model = semask.create_model("test_mit_segformer").eval()
    cfg = model.config
    for hw in [(29, 61), (60, 61), (97, 33)]:
        with torch.no_grad():
            feats, _ = model.backbone(torch.randn(1, 3, *hw))
        sizes = [stage_sizes(n, cfg.mit_patch_sizes, cfg.mit_strides) for n in hw]
        assert [tuple(f.shape[-2:]) for f in feats] == list(zip(*sizes, strict=True))
        assert sizes[0] == [-(-hw[0] // s) for s in (4, 8, 16, 32)]


def test_segformer_classifier_starts_as_nvlabs():
    """NVlabs' SegFormerHead classifier `linear_pred` is a plain Conv2d with torch's default init (mmseg's
    normal(0, .01) goes to the unused `conv_seg`): uniform within 1/sqrt(fan_in), biases too."""
    torch.manual_seed(0)
    head = semask.create_model("mit_b0_segformer").decode_head
    bound = head.linear_pred.in_channels ** -0.5
    w, b = head.linear_pred.weight, head.linear_pred.bias
    assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    assert b.abs().max() <= bound and b.abs().max() > bound / 2
