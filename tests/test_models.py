"""Every registered architecture builds; every tiny model trains at odd sizes; eager and fused paths agree."""

from __future__ import annotations

import pytest
import torch

import semask
from semask.train import SeMaskLoss

from .conftest import perturb_weights, randomize_gammas

TEST_ARCHS = semask.list_models("test_*")


def test_registry_lists() -> None:
    assert "semask_swin_tiny_fpn" in semask.list_models()
    assert len(TEST_ARCHS) >= 3
    # timm's meaning: what pretrained=True loads. Nothing of the SeMask-Swin zoo is on the hub yet (the manifest's
    # revisions are null), so those tags are listed only with include_unpublished.
    loadable = semask.list_pretrained()
    assert "mit_b0_segformer.ade20k" in loadable and "semask_mit_b0_segformer.imagenet_init" in loadable
    for name in loadable:
        entry = semask.hub.load_manifest()[name]
        assert semask.hub.is_published(entry) or (entry["source"] or entry["init"])["format"] == "hf-transformers"
    released = semask.list_pretrained(include_unpublished=True)
    assert set(loadable) < set(released) and "semask_swin_tiny_fpn.ade20k" in released
    assert not [n for n in released if n.startswith("swin_")]  # baselines: no released weights
    unpublished = sorted(set(released) - set(loadable))
    assert unpublished == sorted(n for n in released if n.startswith("semask_swin_"))
    with pytest.raises(ValueError, match="not published yet"):
        semask.create_model(unpublished[0], pretrained=True)
    # the default tag of an arch is whole-model weights, never a backbone-only *_init starting point
    assert semask.registry.default_tag("semask_swin_tiny_fpn") == "semask_swin_tiny_fpn.ade20k"
    assert semask.registry.default_tag("mit_b0_segformer") == "mit_b0_segformer.ade20k"
    with pytest.raises(ValueError, match=r"no released whole-model weights.*semask_mit_b0_segformer\.imagenet_init"):
        semask.registry.default_tag("semask_mit_b0_segformer")  # names its starting points instead
    with pytest.raises(ValueError, match="no released weights; pretrained architectures"):
        semask.registry.default_tag("test_semask_swin_fpn")
    assert set(semask.list_models("*", include_tags=True)) > set(semask.list_models())


@pytest.mark.parametrize("name", semask.list_models(include_tags=True))
def test_builds_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = semask.create_model(name)
    assert all(p.is_meta for p in model.parameters())
    entry = semask.hub.load_manifest().get(name)
    if entry is not None:
        assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
        assert model.config.num_classes == entry["num_classes"]


@pytest.mark.parametrize("name", TEST_ARCHS)
@pytest.mark.parametrize("size", [(61, 83), (83, 61), (45, 37)])  # last stage > 1 token
def test_forward_backward_odd_sizes(name: str, size: tuple[int, int]) -> None:
    model = semask.create_model(name, drop_path_rate=0.0).train()  # stochastic depth may drop a whole branch
    randomize_gammas(model)
    perturb_weights(model)
    x = torch.randn(2, 3, *size)
    out = model(x)
    k = model.config.num_classes
    assert out["logits"].shape == (2, k, *size)
    if model.config.semantic:
        assert out["prior_logits"].shape == (2, k, *size)
    else:
        assert "prior_logits" not in out
    labels = torch.randint(0, k, (2, *size))
    labels[:, :5] = 255
    SeMaskLoss()(out, labels)["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", TEST_ARCHS)
def test_backbone_contract(name: str) -> None:
    model = semask.create_model(name).eval()
    feats, priors = model.backbone(torch.randn(1, 3, 61, 83))
    n = len(model.config.depths)
    assert [f.shape[1] for f in feats] == list(model.config.stage_dims)  # Swin: embed_dim * 2**i; MiT: embed_dims
    assert feats[0].shape[-2:] == (16, 21)  # ceil(61 / 4), ceil(83 / 4)
    assert len(priors) == (n if model.config.semantic else 0)
    for f, p in zip(feats, priors, strict=False):
        assert p.shape == (1, model.config.num_classes, *f.shape[-2:])


@pytest.mark.parametrize("name", TEST_ARCHS)
@pytest.mark.parametrize("size", [(61, 83), (56, 56)])
def test_eager_and_sdpa_agree(name: str, size: tuple[int, int]) -> None:
    model = semask.create_model(name).eval()
    randomize_gammas(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        fused = model(x)
        model.set_attn_impl("eager")
        eager = model(x)
    for key in fused:
        torch.testing.assert_close(fused[key], eager[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TEST_ARCHS)
def test_bfloat16_inference(name: str) -> None:
    """bf16 both ways users ask for it, autocast or the model cast to bf16, close to float32 at bf16's precision.
    (The deformable ops: torchvision has no bf16 kernel and, on CPU, no autocast wrapper; Mask2Former's pixel
    decoder casts to float32 in the original, which a bf16 model's weights would not match.)"""
    torch.manual_seed(0)
    model = semask.create_model(name).eval()
    randomize_gammas(model)
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        ref = model(x)["logits"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x)["logits"]
        cast = model.to(torch.bfloat16)(x.bfloat16())["logits"]
    for out in (auto, cast):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, atol=0.05 * ref.abs().max().item(), rtol=0)


def test_sdpa_gradients_match_eager() -> None:
    grads = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = semask.create_model("test_semask_swin_fpn_global", attn_impl=impl).train()
        randomize_gammas(model)
        torch.manual_seed(1)
        out = model(torch.randn(1, 3, 45, 70))
        (out["logits"].square().mean() + out["prior_logits"].square().mean()).backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    for n, g in grads["sdpa"].items():
        torch.testing.assert_close(g, grads["eager"][n], atol=1e-5, rtol=1e-4, msg=n)


def test_bias_cache_follows_weight_updates() -> None:
    model = semask.create_model("test_semask_swin_fpn").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["logits"]
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.add_(1.0)  # in-place update: the cached bias must be rebuilt
        after = model(x)["logits"]
        model.set_attn_impl("eager")
        eager = model(x)["logits"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, eager, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = semask.create_model("test_semask_swin_fpn", drop_path_rate=0.0).train()
        randomize_gammas(model)
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(1)
        model(torch.randn(1, 3, 40, 52))["logits"].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_zero_depth_stage_and_global_semantic_attention() -> None:
    model = semask.create_model("test_semask_swin_fpn_global")
    assert len(model.backbone.layers[1].blocks) == 0
    assert model.config.semantic_attention == ("window", "window", "global", "global")
    assert model.backbone.layers[2].semantic_layer.window_size is None
    assert model.backbone.layers[0].semantic_layer.window_size == 5


def test_tags_pin_semantic_layout() -> None:
    cfg = semask.get_config("semask_swin_tiny_fpn.cityscapes")
    assert (cfg.num_classes, cfg.semantic_attention) == (19, ("window",) * 4)
    cfg = semask.get_config("semask_swin_large_fpn.coco_stuff10k")
    assert (cfg.num_classes, cfg.prior_classes, cfg.window_size) == (171, 171, 12)
    assert cfg.semantic_attention == ("window", "window", "global", "global")
    assert semask.get_config("swin_base_fpn.ade20k_w7").window_size == 7


def test_num_classes_override() -> None:
    model = semask.create_model("test_semask_swin_fpn", num_classes=3).eval()
    assert model.config.num_classes == 3 and model.config.prior_classes == 3
    assert model(torch.randn(1, 3, 32, 32))["prior_logits"].shape[1] == 3


@pytest.mark.parametrize("bad, error, match", [
    (torch.randn(1, 4, 32, 32), ValueError, "3 input channels"),
    (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point"),
    (torch.randn(3, 32, 32), ValueError, "add a batch dimension"),
    (torch.randn(2, 2, 3, 32, 32), ValueError, r"5-D shape \(2, 2, 3, 32, 32\); fold .* x.flatten\(0, 1\)"),
    (torch.randn(1, 32, 40, 3), ValueError, r"got 32 \(shape \(1, 32, 40, 3\)\); .*x.permute\(0, 3, 1, 2\)"),
    (torch.randn(0, 3, 32, 32), ValueError, "empty image batch"),
    (torch.randn(1, 3, 0, 32), ValueError, "empty image batch"),
])
@pytest.mark.parametrize("arch", ["test_semask_swin_fpn", "test_mit_segformer", "test_semask_maskformer"])
def test_bad_input_tensor(arch: str, bad: torch.Tensor, error: type, match: str) -> None:
    """Every family reports the caller's own shape (mask models pad the input first) and names the fix."""
    model = semask.create_model(arch).eval()
    with pytest.raises(error, match=match):
        model(bad)


def test_bad_names_and_fields() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        semask.create_model("semask_swin_huge_fpn")
    with pytest.raises(ValueError, match="unknown tag"):
        semask.create_model("semask_swin_tiny_fpn.imagenet")
    with pytest.raises(TypeError, match="unknown model config field"):
        semask.create_model("test_swin_fpn", windw_size=7)
    with pytest.raises(ValueError, match="attn_impl"):
        semask.create_model("test_swin_fpn", attn_impl="flash")
    with pytest.raises(ValueError, match="semantic_attention"):
        semask.create_model("test_semask_swin_fpn", semantic_attention=("window", "global"))
    with pytest.raises(ValueError, match="not published yet.*semask convert"):
        semask.create_model("semask_swin_tiny_fpn.ade20k", pretrained=True)


@pytest.mark.parametrize("name", ["test_semask_swin_fpn", "test_semask_maskformer", "test_semask_mit_segformer"])
def test_priors_can_be_skipped(name: str) -> None:
    model = semask.create_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        full, lean = model(x), model(x, priors=False)
    assert "prior_logits" in full and "prior_logits" not in lean
    torch.testing.assert_close(lean["logits"], full["logits"])


@pytest.mark.parametrize("arch", ["test_semask_swin_fpn", "test_mit_segformer", "test_semask_maskformer"])
def test_reset_classifier_in_place(arch: str) -> None:
    """timm's `reset_classifier`: only the class-dependent layers are new; other weights, flags, dtype and mode stay."""
    model = semask.create_model(arch).double().eval()
    model.set_grad_checkpointing(True)
    model.backbone.requires_grad_(False)  # a frozen backbone stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replaced = model.reset_classifier(7)
    assert replaced and all(k.endswith((".weight", ".bias")) for k in replaced)
    assert model.config.num_classes == 7 and not model.training
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in after.items():
        assert v.dtype == before[k].dtype
        if k in replaced:
            assert v.shape[0] in (7, 8)  # 8: a mask model's class_embed has the "no object" class
        else:
            assert torch.equal(v, before[k]), k
    head = [k for k in replaced if not k.startswith("backbone.")]
    assert head and all(model.get_parameter(k).requires_grad for k in head)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.backbone.layers[0].grad_checkpointing
    out = model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert out["logits"].shape == (1, 7, 64, 64)
    with pytest.raises(ValueError, match="positive int"):
        model.reset_classifier(0)


def test_reset_classifier_keeps_only_the_preprocessing_of_a_record_that_no_longer_fits() -> None:
    model = semask.create_model("test_semask_swin_fpn")
    record = {"name": "x.ade20k", "dataset": "ade20k", "preprocessing": {"mean": [0, 0, 0]},
              "classes": {"names": list("abcde")}}
    model.pretrained_cfg = dict(record)
    model.reset_classifier(5)
    assert model.pretrained_cfg == record  # same count: the record still describes the outputs
    model.reset_classifier(3)
    assert model.pretrained_cfg == {"preprocessing": {"mean": [0, 0, 0]}}
    predictor = semask.Predictor(model)  # classes generated for the new count, the weights' normalisation kept
    assert len(predictor.classes.names) == 3


def test_semantic_layers_start_as_each_original_starts_them() -> None:
    """SeMask-FPN (mmseg's init_weights): trunc-normal .02 on every semantic Linear. The MaskFormer family
    (detectron2 never calls the backbone's init_weights): SemanticAttention's own init, kaiming-normal q/k/v, zero
    mlp_res and biases, gamma 0; so the semantic residual gets no gradient and only the prior maps train, as in
    the original. reset_classifier re-creates the class projections by the same rule."""
    torch.manual_seed(0)
    fpn = semask.create_model("semask_swin_large_fpn", depths=(1, 1, 1, 1))
    m2f = semask.create_model("semask_swin_large_mask2former", depths=(1, 1, 1, 1))
    assert (fpn.config.semantic_init, m2f.config.semantic_init) == ("mmseg", "detectron2")
    for model, q_std in ((fpn, 0.02), (m2f, (2 / 192) ** 0.5)):
        attn = model.backbone.layers[0].semantic_layer.class_injection[0]
        assert attn.mlp_cls_q.weight.std().item() == pytest.approx(q_std, rel=0.05)
        assert not attn.gamma.any() and not attn.mlp_cls_q.bias.any()
        assert bool(attn.mlp_res.weight.any()) == (model is fpn)
    m2f.reset_classifier(7)
    attn = m2f.backbone.layers[0].semantic_layer.class_injection[0]
    assert attn.mlp_cls_q.weight.std().item() == pytest.approx((2 / 192) ** 0.5, rel=0.05)
    tiny = semask.create_model("test_semask_mask2former").train()
    out = tiny(torch.randn(2, 3, 64, 64))
    (out["pred_masks"].square().mean() + out["prior_logits"].square().mean()).backward()
    for layer in tiny.backbone.layers:
        attn = layer.semantic_layer.class_injection[0]
        assert not attn.gamma.grad.any() and not attn.mlp_res.weight.grad.any()
        assert attn.mlp_cls_q.weight.grad.abs().sum() > 0  # the prior maps train
    with pytest.raises(ValueError, match="semantic_init must be one of"):
        semask.create_model("test_semask_swin_fpn", semantic_init="timm")
