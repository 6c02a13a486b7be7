"""Parity with outputs of the ORIGINAL SeMask code on configurations the older fixtures do not cover
(tests/fixtures/original, see its README for how each file was made):

* mmseg SeMask-FPN: global semantic attention in the last stage (the rule of the released T/S/L ADE20K / COCO-Stuff
  models), window 12, window 12 with semantic window 7 (a config field the tensors cannot show), and the plain
  Swin-FPN baseline;
* detectron2 SeMask Mask2Former, FaPN-Mask2Former and MSFaPN-Mask2Former.

The fixtures hold float16-exact weights; each test rebuilds the checkpoint in the original's own file layout (float32
tensors, int64 buffers, `{'meta', 'state_dict'}` or `{'model', 'iteration'}`) and loads it with
`semask.load_original`, the path a user takes with a released file.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import semask
from semask.backbones.swin import relative_position_index
from semask.train import SeMaskLoss

from .conftest import FIXTURES

ORIGINAL = FIXTURES / "original"
TOL = dict(atol=1e-4, rtol=1e-4)
MARGIN = 1e-4  # argmax is compared where the original's own top-2 margin is larger (float32 noise is ~1e-5)
FPN_CASES = ["fpn_semask_e96_k20_global", "fpn_semask_e16_w12", "fpn_semask_e16_w12_sw7", "fpn_swin_e8_w7"]
D2_CASES = ["d2_semask_mask2former", "d2_semask_fapn_mask2former", "d2_semask_msfapn_mask2former"]
# ModelConfig fields the tensors cannot tell and detectron2 checkpoints do not record; the original was built with
# these: FaPN has no deformable encoder to show its heads (Mask2Former / MSFaPN do). (Case sw7's sem_window_size=7
# comes from the training config its meta records, as mmseg saves it.)
OVERRIDES = {"d2_semask_fapn_mask2former": dict(nheads=4)}
KIND = {"SWSeMaskBlock": "window", "SeMaskBlock": "global"}
D2_DECODER = {"MSDeformAttnPixelDecoder": "mask2former", "PixelFANDecoder": "fapn_mask2former",
              "MSDeformAttnPixelFANDecoder": "msfapn_mask2former"}
PIXEL_MEAN = torch.tensor([123.675, 116.280, 103.530]).view(3, 1, 1)  # the original config's MODEL.PIXEL_MEAN/STD
PIXEL_STD = torch.tensor([58.395, 57.120, 57.375]).view(3, 1, 1)


def recipe(case: str) -> dict:
    return json.loads((ORIGINAL / f"{case}.ckpt.json").read_text())


def original_checkpoint(case: str, directory: Path) -> Path:
    """Write `case`'s checkpoint exactly as the original saved it (see the README) to `directory`/`case`.pth."""
    r = recipe(case)
    stored: dict[str, torch.Tensor] = {}
    for name in r["weights"]:
        stored.update(load_file(str(ORIGINAL / name)))
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in r["keys"]:
        if key in r["int_buffers"]:
            kind, value = r["int_buffers"][key]
            sd[key] = relative_position_index(value) if kind == "relative_position_index" \
                else torch.tensor(value, dtype=torch.int64)
        else:
            sd[key] = stored[key].to(torch.float32)
    if r["layout"] == "mmseg":
        meta = dict(r["meta"], CLASSES=tuple(r["meta"]["CLASSES"]))
        obj = {"meta": meta, "state_dict": sd}
    else:
        obj = {"model": sd, "iteration": r["iteration"]}
    path = Path(directory) / f"{case}.pth"
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("original")
    return {case: original_checkpoint(case, directory) for case in FPN_CASES + D2_CASES}


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[str, semask.Segmentor]:
    return {case: semask.load_original(path, **OVERRIDES.get(case, {})) for case, path in checkpoints.items()}


def outputs(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(ORIGINAL / f"{case}.outputs.safetensors"))


def assert_argmax(got: torch.Tensor, ref: torch.Tensor, margin: torch.Tensor) -> None:
    sure = margin.float() > MARGIN
    assert sure.float().mean() > 0.99  # near-ties are rare: the check covers (almost) every pixel
    assert torch.equal(got[sure], ref.to(got.dtype)[sure])


# --------------------------------------------------------------------------------------------- mmseg SeMask-FPN
@pytest.mark.parametrize("case", FPN_CASES)
def test_fpn_config_is_what_the_original_built(models: dict, case: str) -> None:
    c, orig = models[case].config, recipe(case)["original"]
    bb, head = orig["config"]["backbone"], orig["config"]["decode_head"]
    assert (c.embed_dim, c.depths, c.num_heads) == (bb["embed_dim"], tuple(bb["depths"]), tuple(bb["num_heads"]))
    assert c.window_size == bb["window_size"] == orig["swin_blocks"][0][0]["window_size"]
    assert c.mlp_ratio * c.embed_dim == orig["swin_blocks"][0][0]["mlp_hidden"]
    assert (c.decoder, c.num_classes, c.decoder_channels) == ("fpn", head["num_classes"], head["channels"])
    layers = orig["semantic_layers"]
    if layers[0] is None:  # plain Swin (SwinTransformer + FPNHead)
        assert c.semantic_attention is None
        return
    assert c.semantic_attention == tuple(KIND[layer["class"]] for layer in layers)
    assert c.sem_window_size == bb["sem_window_size"] == layers[0]["window_size"]
    assert c.prior_classes == bb["num_cls"] == layers[0]["n_cls"]
    assert c.sem_blocks_per_stage == tuple(layer["num_sem_blocks"] for layer in layers)


def test_fpn_global_case_is_the_released_layout(models: dict) -> None:
    """embed_dim 96 and more than 19 classes: the original windows stages 0-1 and attends globally after."""
    layers = recipe("fpn_semask_e96_k20_global")["original"]["semantic_layers"]
    assert [layer["class"] for layer in layers] == ["SWSeMaskBlock", "SWSeMaskBlock", "SeMaskBlock"]
    assert models["fpn_semask_e96_k20_global"].config.semantic_attention == ("window", "window", "global")


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("case", FPN_CASES)
def test_fpn_outputs_match_original(models: dict, case: str, impl: str) -> None:
    model, ref = models[case], outputs(case)
    x = ref["input"].float()
    model.set_attn_impl(impl)
    try:
        with torch.no_grad():
            feats, priors = model.backbone(x)
            out4, out = model(x, upsample=False), model(x)
    finally:
        model.set_attn_impl("sdpa")
    got = {f"backbone.out{i}": f for i, f in enumerate(feats)}
    got.update({f"backbone.sem{i}": p for i, p in enumerate(priors or [])})
    got.update({"seg_logits": out4["logits"], "seg_logits_up": out["logits"]})
    if "prior_logits" in out4:
        got.update({"sem_logits": out4["prior_logits"], "sem_logits_up": out["prior_logits"]})
    not_outputs = {"input", "label", "seg_pred", "seg_top2_margin"} | {k for k in ref if k.startswith("loss.")}
    for name in sorted(set(ref) - not_outputs):  # every stored output of the original
        torch.testing.assert_close(got[name], ref[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert set(got) - set(ref) <= {"sem_logits_up"}  # stored for one case only
    assert_argmax(out["logits"].argmax(1), ref["seg_pred"], ref["seg_top2_margin"])


@pytest.mark.parametrize("case", ["fpn_semask_e96_k20_global", "fpn_semask_e16_w12", "fpn_swin_e8_w7"])
def test_fpn_losses_match_original(models: dict, case: str) -> None:
    """The original's decode_head.losses (mmseg CE: mean over ALL pixels, ignore index 255; accuracy over all)."""
    model, ref = models[case], outputs(case)
    label = ref["label"].long()
    x = ref["input"].float()
    with torch.no_grad():
        for out in (model(x), model(x, upsample=False)):  # the original resizes stride-4 logits to the label itself
            losses = SeMaskLoss()(out, label)
            ce = ref["loss.loss_ce"] if "loss.loss_ce" in ref else ref["loss.loss_seg"]
            torch.testing.assert_close(losses["loss_ce"], ce[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(losses["acc"], ref["loss.acc_seg"][0], atol=1e-4, rtol=1e-5)
            if "loss.loss_cate" in ref:
                torch.testing.assert_close(losses["loss_prior"], ref["loss.loss_cate"][0], atol=1e-5, rtol=1e-5)
            else:
                assert "loss_prior" not in losses


def test_sem_window_size_is_not_in_the_tensors(checkpoints: dict, models: dict) -> None:
    """Case sw7 shares its weights with case w12; only the original's sem_window_size differs, and it matters: the
    loader reads it from the checkpoint's recorded training config (meta['config']), an override still wins."""
    assert recipe("fpn_semask_e16_w12_sw7")["weights"] == recipe("fpn_semask_e16_w12")["weights"]
    ref = outputs("fpn_semask_e16_w12_sw7")
    wrong = semask.load_original(checkpoints["fpn_semask_e16_w12_sw7"], sem_window_size=12)
    assert wrong.config.sem_window_size == 12 and models["fpn_semask_e16_w12_sw7"].config.sem_window_size == 7
    with torch.no_grad():
        logits = wrong(ref["input"].float(), upsample=False)["logits"]
    assert (logits - ref["seg_logits"]).abs().max() > 1e-2


# ------------------------------------------------------------------------- detectron2 Mask2Former / FaPN / MSFaPN
@pytest.mark.parametrize("case", D2_CASES)
def test_d2_config_is_what_the_original_built(models: dict, case: str) -> None:
    c, orig = models[case].config, recipe(case)["original"]
    swin, head, m2f = orig["swin"], orig["sem_seg_head"], orig["mask_former"]
    assert (c.embed_dim, c.depths, c.num_heads) == (swin["EMBED_DIM"], tuple(swin["DEPTHS"]), tuple(swin["NUM_HEADS"]))
    assert c.window_size == swin["WINDOW_SIZE"] == orig["swin_blocks"][0][0]["window_size"]
    assert c.sem_window_size == swin["SEM_WINDOW_SIZE"] == orig["semantic_layers"][0]["window_size"]
    assert c.semantic_attention == tuple(KIND[layer["class"]] for layer in orig["semantic_layers"])
    assert (c.decoder, c.num_classes) == (D2_DECODER[orig["pixel_decoder"]], head["NUM_CLASSES"])
    assert (c.conv_dim, c.mask_dim, c.hidden_dim) == (head["CONVS_DIM"], head["MASK_DIM"], m2f["HIDDEN_DIM"])
    assert (c.num_queries, c.nheads, c.dim_feedforward) == (orig["num_queries"], orig["nheads"], m2f["DIM_FEEDFORWARD"])
    assert c.dec_layers == orig["dec_layers_built"] == m2f["DEC_LAYERS"] - 1
    if c.decoder != "fapn_mask2former":  # the deformable-attention encoder (its 1024 is hard-coded in the original)
        assert (c.enc_layers, c.enc_points, c.enc_dim_feedforward) == (
            head["TRANSFORMER_ENC_LAYERS"], head["DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS"], 1024)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("case", D2_CASES)
def test_d2_outputs_match_original(models: dict, case: str, impl: str) -> None:
    """One unpadded odd-size image: the original pads it to a multiple of 32 (96 x 128) itself; so does semask."""
    model, ref = models[case], outputs(case)
    x = ((ref["input"].float() - PIXEL_MEAN) / PIXEL_STD)[None]
    model.set_attn_impl(impl)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.set_attn_impl("sdpa")
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], **TOL)
    torch.testing.assert_close(out["pred_masks"], ref["pred_masks"], **TOL)
    torch.testing.assert_close(out["prior_logits"], ref["prior_logits"], **TOL)
    torch.testing.assert_close(out["logits"][0], ref["sem_seg"], **TOL)  # the meta-architecture's sem_seg
    assert_argmax(out["logits"][0].argmax(0), ref["sem_seg"].argmax(0), ref["sem_seg_top2_margin"])
