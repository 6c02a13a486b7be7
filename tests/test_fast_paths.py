"""Fast attention paths stay within 1e-5 of the original formula; FLOP counting; `semask info --flops`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import semask
from semask.backbones.mit import EfficientSelfAttention
from semask.backbones.semantic_layer import SemanticAttention
from semask.backbones.swin import FAST_MASK_VALUE, MASK_VALUE, WindowAttention, shift_mask, shift_mask_traceable
from semask.cli import main
from semask.flops import count_macs
from semask.kernels import FUSED, PLAIN, attention_kernels
from semask.layers import _window_index

from .conftest import randomize_gammas

FIXTURE = "tests/fixtures/semask_fpn_tiny_w7"


@pytest.fixture(scope="module")
def original():
    return semask.load_original(f"{FIXTURE}.pth").eval()


@pytest.mark.parametrize("case", ["sq", "nsq"])
def test_every_attn_impl_matches_the_original_outputs(original, case):
    f = load_file(f"{FIXTURE}__{case}.safetensors")
    outs = {}
    for impl in ("eager", "sdpa", "math"):
        original.set_attn_impl(impl)
        with torch.no_grad():
            outs[impl] = original(f["input"])["logits"]
        torch.testing.assert_close(outs[impl], f["seg_logits_up"], atol=1e-4, rtol=0)
    original.set_attn_impl("sdpa")
    assert torch.equal(outs["eager"], outs["math"]) or (outs["eager"] - outs["math"]).abs().max() < 1e-5
    assert (outs["eager"] - outs["sdpa"]).abs().max() < 1e-5


def test_eager_path_keeps_the_original_mask_and_fast_paths_underflow():
    assert MASK_VALUE == -100.0
    assert torch.exp(torch.tensor(MASK_VALUE)) > 0  # the original's denormal weights
    assert torch.exp(torch.tensor(FAST_MASK_VALUE)) == 0
    assert torch.exp(torch.tensor(FAST_MASK_VALUE, dtype=torch.bfloat16)) == 0
    m = shift_mask(14, 21, 7, 3, torch.device("cpu"))
    assert set(m.unique().tolist()) == {0.0, -100.0}


@pytest.mark.parametrize("hp,wp,window,shift", [(14, 21, 7, 3), (7, 7, 7, 3), (24, 36, 12, 6), (8, 12, 4, 2)])
def test_traceable_shift_mask_equals_the_original_construction(hp, wp, window, shift):
    dev = torch.device("cpu")
    for value in (MASK_VALUE, FAST_MASK_VALUE):
        assert torch.equal(shift_mask(hp, wp, window, shift, dev, value),
                           shift_mask_traceable(hp, wp, window, shift, dev, value))


def test_training_gradients_of_fast_path_match_eager():
    torch.manual_seed(0)
    model = semask.create_model("test_semask_swin_fpn", drop_path_rate=0.0, decoder_dropout=0.0).eval()
    randomize_gammas(model)  # the semantic attention must contribute to the gradients
    x = torch.randn(1, 3, 75, 61)
    grads = {}
    for impl in ("eager", "sdpa", "math"):
        model.set_attn_impl(impl)
        model.zero_grad()
        out = model(x)
        (out["logits"].square().mean() + out["prior_logits"].mean()).backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    table = "backbone.layers.0.blocks.1.attn.relative_position_bias_table"
    assert grads["eager"][table].abs().sum() > 0
    for impl in ("sdpa", "math"):
        for name, g in grads["eager"].items():
            torch.testing.assert_close(grads[impl][name], g, atol=1e-5, rtol=1e-4, msg=f"{impl} {name}")


def test_bias_cache_is_reused_in_inference_and_skipped_with_grad():
    model = semask.create_model("test_semask_swin_fpn").eval()
    attn = model.backbone.layers[0].blocks[1].attn
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        cached = dict(attn._bias_cache)
        model(x)
    assert len(cached) == 1 and attn._bias_cache.keys() == cached.keys()
    attn._bias_cache.clear()
    model(x)  # grad enabled and the table requires grad: rebuilt every call, never cached
    assert not attn._bias_cache


def _randomised(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = semask.create_model("test_semask_swin_fpn")
    randomize_gammas(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)  # a bias large enough to change the output visibly
    return model.state_dict()


def test_cached_bias_follows_the_weights_however_they_are_replaced():
    """Weights swapped under a filled bias cache (load_state_dict with or without assign=True, `p.data = ...`,
    deepcopy) give the new weights' output, never the old cached bias."""
    import copy

    a, b = _randomised(1), _randomised(2)
    x = torch.randn(1, 3, 64, 64)

    def fresh(state: dict[str, torch.Tensor]) -> torch.Tensor:
        model = semask.create_model("test_semask_swin_fpn").eval()
        model.load_state_dict(state)
        with torch.inference_mode():
            return model(x)["logits"]

    ref_a, ref_b = fresh(a), fresh(b)
    assert not torch.allclose(ref_a, ref_b, atol=1e-3)
    model = semask.create_model("test_semask_swin_fpn").eval()
    tables = [n for n, _ in model.named_parameters() if "relative_position_bias_table" in n]

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)["logits"]

    for assign in (False, True):
        model.load_state_dict({k: v.clone() for k, v in a.items()}, assign=assign)
        torch.testing.assert_close(run(), ref_a)
        model.load_state_dict({k: v.clone() for k, v in b.items()}, assign=assign)
        torch.testing.assert_close(run(), ref_b)
    params = dict(model.named_parameters())
    for name in tables:  # bypasses load_state_dict and the version counter
        params[name].data = a[name].clone()
    copied = copy.deepcopy(model)
    assert all(not m._bias_cache for m in copied.modules() if isinstance(m, WindowAttention))
    for name in tables:
        params[name].data = b[name].clone()
    torch.testing.assert_close(run(), ref_b)


def test_meta_build_materialised_with_to_empty_then_loaded():
    """The timm / accelerate pattern: build on the meta device, `to_empty()`, load the weights. The relative
    position index is not in checkpoints (non-persistent); loading rebuilds it."""
    state = _randomised(3)
    with torch.device("meta"):
        model = semask.create_model("test_semask_swin_fpn")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state)
    ref = semask.create_model("test_semask_swin_fpn").eval()
    ref.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["logits"], ref(x)["logits"], atol=0, rtol=0)


def test_flop_count_of_semask_tiny_matches_the_paper():
    with torch.device("meta"):
        model = semask.create_model("semask_swin_tiny_fpn")
    macs = count_macs(model, (512, 512))
    # Paper (Table 1, Semantic-FPN on ADE20K): SeMask-T 35 M params, ~40 GFLOPs (MACs) at 512x512.
    assert math.isclose(macs["total"] / 1e9, 40.0, rel_tol=0.06)
    assert macs["convolution"] > 0 and macs["addmm"] > macs["bmm"] > 0
    assert math.isclose(sum(p.numel() for p in model.parameters()) / 1e6, 35.0, rel_tol=0.03)


def test_cli_info_flops(capsys):
    assert main(["info", "test_semask_swin_fpn", "--flops", "--size", "64x96"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == [64, 96] and info["gmacs"] > 0
    assert math.isclose(sum(info["gmacs_by_op"].values()), info["gmacs"], rel_tol=1e-2)
    assert main(["info", "test_semask_swin_fpn", "--size", "64,96"]) == 0  # a size asks for the count
    assert json.loads(capsys.readouterr().out)["input_size"] == [64, 96]
    assert main(["info", "test_semask_swin_fpn", "--flops"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == [512, 512]
    assert main(["info", "test_semask_swin_fpn"]) == 0
    assert "gmacs" not in json.loads(capsys.readouterr().out)
    for bad in ("big", "0", "64x96x2"):
        with pytest.raises(SystemExit):
            main(["info", "test_semask_swin_fpn", "--flops", "--size", bad])
        assert "a size is N or H,W" in capsys.readouterr().err


def test_bf16_runs_on_every_attn_impl():
    torch.manual_seed(0)
    model = semask.create_model("test_semask_swin_fpn").eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 80, dtype=torch.bfloat16)
    outs = {}
    for impl in ("eager", "sdpa", "math"):
        model.set_attn_impl(impl)
        with torch.no_grad():
            outs[impl] = model(x)["logits"].float()
    for impl in ("sdpa", "math"):
        torch.testing.assert_close(outs[impl], outs["eager"], atol=0.05, rtol=0.05)


# Table 2 of the paper (Semantic-FPN; "FLOPs (G)" from mmcv's counter = MACs without attention products).
# Every row: ADE20K at the crop size, Cityscapes at 768x768.
PAPER_GFLOPS = [
    (f"{prefix}swin_{size}_fpn.{dataset}", crop, gflops)
    for prefix, table in (("semask_", {"tiny": (40, 84), "small": (63, 134), "base": (107, 217), "large": (356, 455)}),
                          ("", {"tiny": (38, 81), "small": (61, 130), "base": (103, 211), "large": (343, 444)}))
    for size, (ade, city) in table.items()
    for dataset, crop, gflops in (("ade20k", 640 if size == "large" else 512, ade), ("cityscapes", 768, city))]


@pytest.mark.parametrize("name, size, gflops", PAPER_GFLOPS)
def test_flop_counts_match_the_paper_table(name: str, size: int, gflops: float) -> None:
    with torch.device("meta"):
        model = semask.create_model(name)
    macs = count_macs(model, (size, size))
    assert math.isclose(macs["mmcv"] / 1e9, gflops, rel_tol=0.015), (name, macs["mmcv"] / 1e9)
    assert macs["total"] > macs["mmcv"]  # attention products are real work, counted in "total"


@pytest.mark.parametrize("name", ["test_semask_swin_fpn", "test_semask_mit_segformer"])
def test_in_place_inference_ops_equal_the_autograd_path(name):
    """Without autograd the FPN head sums its maps in place, the Swin / MiT blocks add their residuals and run
    GELU in place, and the semantic layers add their residual in place; outputs equal the autograd path's bit for
    bit ("math" attention: with a bias that takes gradients, SDPA's CPU kernel is not used, so only the unfused
    formula runs the same ops both ways)."""
    torch.manual_seed(0)
    model = semask.create_model(name, attn_impl="math").eval()
    randomize_gammas(model)  # the semantic residual must matter
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)
    assert slow["logits"].requires_grad
    for key in ("logits", "prior_logits"):
        assert torch.equal(fast[key], slow[key].detach()), key


def test_semantic_layer_recompute_keeps_gradients_and_saves_memory():
    """The semantic layers recompute in backward by default: same loss and gradients bit for bit (dropout replayed),
    fewer bytes saved for backward."""
    from semask.backbones.semantic_layer import SemanticLayer

    model = semask.create_model("test_semask_swin_fpn").train()
    randomize_gammas(model)
    layers = [m for m in model.modules() if isinstance(m, SemanticLayer)]
    x = torch.randn(2, 3, 64, 64)

    def run(recompute: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        for m in layers:
            m.recompute = recompute
        model.zero_grad()
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        torch.manual_seed(0)  # same dropout / drop-path draws
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x, upsample=False)
            loss = out["logits"].square().mean() + out["prior_logits"].square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved

    loss_keep, grads_keep, saved_keep = run(False)
    loss_re, grads_re, saved_re = run(True)
    assert torch.equal(loss_keep, loss_re)
    assert grads_keep.keys() == grads_re.keys()
    assert any("class_injection" in n and g.abs().sum() > 0 for n, g in grads_re.items())
    for name, g in grads_keep.items():
        assert torch.equal(grads_re[name], g), name
    assert saved_re < saved_keep


@pytest.mark.parametrize("b,h,w,window,shift", [(1, 14, 14, 7, 3), (2, 13, 17, 7, 3), (1, 5, 9, 7, 0),
                                                 (3, 11, 8, 4, 2), (1, 3, 2, 7, 3)])
def test_window_gather_equals_pad_roll_partition(b, h, w, window, shift):
    """`to_windows` / `from_windows` (one row gather each) give the plain ops' values and gradients bit for bit,
    padding (zeros after the norm), batch offsets and the roll included."""
    from semask.layers import crop_hw, from_windows, pad_hw, to_windows, window_partition, window_reverse

    x = torch.randn(b, h, w, 6, requires_grad=True)
    y = pad_hw(x, window)
    hp, wp = y.shape[1:3]
    if shift:
        y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
    ref = window_partition(y, window)
    got = to_windows(x, window, shift)
    assert torch.equal(got, ref)
    weight = torch.randn_like(ref)  # a different gradient per slot
    back_ref = window_reverse(ref * weight, window, hp, wp)
    if shift:
        back_ref = torch.roll(back_ref, shifts=(shift, shift), dims=(1, 2))
    back_ref = crop_hw(back_ref, h, w)
    back = from_windows(got * weight, window, shift, h, w)
    assert back.shape == (b, h, w, 6) and back.is_contiguous()
    assert torch.equal(back, back_ref)
    g_out = torch.randn(b, h, w, 6)
    g_ref, = torch.autograd.grad(back_ref, x, g_out)
    g, = torch.autograd.grad(back, x, g_out)
    assert torch.equal(g, g_ref)


def test_semantic_attention_fused_projection_equals_three_linears():
    """q/k/v come from one matmul over concatenated weights; the values are the three Linears' (the checkpoint's
    `mlp_cls_q`, `mlp_cls_k`, `mlp_v`), and the attention is the original formula."""
    from semask.backbones.semantic_layer import SemanticAttention

    torch.manual_seed(0)
    blk = SemanticAttention(24, 7).eval()
    torch.nn.init.normal_(blk.gamma)
    x = torch.randn(5, 9, 24)
    with torch.no_grad():
        q, out = blk(x)
        q_ref, k_ref, v_ref = blk.mlp_cls_q(x), blk.mlp_cls_k(x), blk.mlp_v(x)
        y = blk.mlp_res((q_ref @ k_ref.transpose(-2, -1)).softmax(-1) @ v_ref)
    torch.testing.assert_close(q, q_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, x + blk.gamma * y, atol=1e-6, rtol=0)


ATTENTION = (WindowAttention, SemanticAttention, EfficientSelfAttention)


@pytest.mark.parametrize("name", ["test_semask_swin_fpn", "test_semask_mit_segformer"])
def test_cpu_attention_kernels_are_the_chosen_ones(name):
    """The SDPA backend each attention runs, asserted (SDPA falls back to its math kernel without a word): CPU
    inference takes the fused flash kernel; semantic attention, eager and CPU Swin training the plain formula."""
    model = semask.create_model(name).eval()
    x = torch.randn(1, 3, 75, 97)
    window = "WindowAttention" if "swin" in name else "EfficientSelfAttention"
    with torch.inference_mode():
        got = attention_kernels(model, lambda: model(x), ATTENTION)
    assert got == {window: {"flash_cpu"}, "SemanticAttention": {PLAIN}}
    model.set_attn_impl("eager")
    with torch.inference_mode():
        assert attention_kernels(model, lambda: model(x), ATTENTION) == {window: {PLAIN}, "SemanticAttention": {PLAIN}}
    model.set_attn_impl("sdpa")
    model.train()
    got = attention_kernels(model, lambda: model(x)["logits"].sum().backward(), ATTENTION)
    # Swin: the CPU flash kernel refuses a bias that requires grad -> plain formula; MiT has no bias -> flash.
    assert got == {window: {PLAIN if "swin" in name else "flash_cpu"}, "SemanticAttention": {PLAIN}}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_cuda_window_attention_runs_a_fused_kernel():
    model = semask.create_model("test_semask_swin_fpn").eval().cuda().to(torch.bfloat16)
    for batch in (1, 2):
        x = torch.randn(batch, 3, 75, 97, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            got = attention_kernels(model, lambda x=x: model(x), ATTENTION)
        assert got["WindowAttention"] and got["WindowAttention"] <= FUSED, (batch, got)
    model.train()
    model(torch.randn(2, 3, 75, 97, device="cuda", dtype=torch.bfloat16))["logits"].float().sum().backward()


@pytest.mark.parametrize("train", [False, True])
def test_cuda_bias_layout_on_any_machine(monkeypatch, train):
    """The CUDA-only bias padding (window 7: 49 -> 56 in storage) must leave a last-dim stride of 1 (GPU kernels
    require it) and support batches of several images. Faked here by making every tensor claim to be on CUDA (the
    branch only changes the layout): the same outputs and gradients as the plain CPU layout."""
    torch.manual_seed(0)
    attn = WindowAttention(32, 4, 7).train(train)
    torch.nn.init.trunc_normal_(attn.relative_position_bias_table, std=0.02)
    mask = shift_mask(21, 21, 7, 3, torch.device("cpu"), FAST_MASK_VALUE)
    x = torch.randn(2 * 9, 49, 32, requires_grad=train)
    results = []
    for fake in (False, True):
        attn._bias_cache.clear()
        attn.zero_grad()
        with monkeypatch.context() as m:
            if fake:
                m.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
            with torch.set_grad_enabled(train):
                bias = attn.combined_bias(mask, torch.float32)
                out = attn(x, mask)
        assert bias.stride(-1) == 1 and bias.shape == (9, 4, 49, 49)
        if fake:
            assert bias.stride(-2) == 56  # padded to a multiple of 8 in storage
        if train:
            out.square().sum().backward()
            results.append((out.detach(), attn.relative_position_bias_table.grad.clone()))
        else:
            results.append((out, None))
    torch.testing.assert_close(results[0][0], results[1][0])
    if train:
        torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("frozen_tables", [False, True])
def test_caches_filled_in_inference_mode_serve_a_later_training_step(frozen_tables):
    """Window indices, shift masks and the combined bias are cached; filled first under `inference_mode`, they must
    still be usable by autograd (an inference tensor cannot be saved for backward)."""
    _window_index.cache_clear()
    shift_mask.cache_clear()
    model = semask.create_model("test_semask_swin_fpn").eval()
    if frozen_tables:  # the cached bias is then used with grad on and handed to SDPA, which saves it
        for n, p in model.named_parameters():
            p.requires_grad_("relative_position_bias_table" not in n)
    x = torch.randn(1, 3, 75, 97)
    with torch.inference_mode():
        expected = model(x)["logits"]
    out = model(x)["logits"]
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=0)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not any(t.is_inference() for t in _window_index(1, 19, 25, 7, 3, torch.device("cpu")))
