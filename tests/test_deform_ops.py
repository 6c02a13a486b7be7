"""Deformable attention and DCNv2 (pure PyTorch / torchvision) against explicit loop references, fwd + bwd."""

from __future__ import annotations

import math

import pytest
import torch

from semask.decoders.maskformer import deform_conv2d_torch, modulated_deform_conv2d, ms_deform_attn

_DTYPE = torch.float64  # references in float64


def _bilinear(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """img [C, H, W]; (y, x) a pixel coordinate (centres at integers); zero outside -> [C]."""
    c, h, w = img.shape
    y0, x0 = math.floor(float(y.detach())), math.floor(float(x.detach()))
    out = img.new_zeros(c)
    for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
        for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + img[:, yy, xx] * wy * wx
    return out


def ms_deform_attn_loop(value, shapes, locations, weights):
    b, _, nh, d = value.shape
    _, lq, _, nl, npt, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    rows = []
    for bi in range(b):
        qs = []
        for q in range(lq):
            heads = []
            for m in range(nh):
                acc = value.new_zeros(d)
                for lv, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lv]:starts[lv + 1], m].t().reshape(d, h, w)
                    for p in range(npt):
                        x, y = locations[bi, q, m, lv, p]
                        acc = acc + weights[bi, q, m, lv, p] * _bilinear(img, y * h - 0.5, x * w - 0.5)
                heads.append(acc)
            qs.append(torch.cat(heads))
        rows.append(torch.stack(qs))
    return torch.stack(rows)


def test_ms_deform_attn_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    b, nh, d, lq, npt = 2, 2, 3, 4, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), nh, d, generator=g, dtype=_DTYPE, requires_grad=True)
    loc = (torch.rand(b, lq, nh, len(shapes), npt, 2, generator=g, dtype=_DTYPE) * 1.4 - 0.2).requires_grad_()
    wts = torch.rand(b, lq, nh, len(shapes), npt, generator=g, dtype=_DTYPE, requires_grad=True)
    out = ms_deform_attn(value, shapes, loc, wts)
    ref = ms_deform_attn_loop(value, shapes, loc, wts)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=g, dtype=_DTYPE)
    ga = torch.autograd.grad(out, (value, loc, wts), grad)
    gb = torch.autograd.grad(ref, (value, loc, wts), grad)
    for a, r in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def dcn_loop(x, offset, weight, bias, mask, padding=1):
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    k = kh * kw
    g = offset.shape[1] // (2 * k)
    cg = c // g
    out = []
    for bi in range(b):
        rows = []
        for i in range(h):
            cols = []
            for j in range(w):
                acc = bias.clone()
                for gi in range(g):
                    for ki in range(kh):
                        for kj in range(kw):
                            kk = ki * kw + kj
                            dy = offset[bi, gi * 2 * k + 2 * kk, i, j]
                            dx = offset[bi, gi * 2 * k + 2 * kk + 1, i, j]
                            m = mask[bi, gi * k + kk, i, j]
                            v = _bilinear(x[bi, gi * cg:(gi + 1) * cg], i - padding + ki + dy, j - padding + kj + dx)
                            acc = acc + weight[:, gi * cg:(gi + 1) * cg, ki, kj] @ (v * m)
                cols.append(acc)
            rows.append(torch.stack(cols, -1))
        out.append(torch.stack(rows, -2))
    return torch.stack(out)


@pytest.mark.parametrize("impl", ["torch", "torchvision"])
def test_dcn_matches_loop_reference(impl):
    if impl == "torchvision":
        pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(1)
    b, c, o, h, w, groups = 1, 4, 3, 4, 5, 2
    x = torch.randn(b, c, h, w, generator=g, dtype=_DTYPE, requires_grad=True)
    offset = (torch.randn(b, 2 * groups * 9, h, w, generator=g, dtype=_DTYPE) * 1.5).requires_grad_()
    mask = torch.rand(b, groups * 9, h, w, generator=g, dtype=_DTYPE, requires_grad=True)
    weight = torch.randn(o, c, 3, 3, generator=g, dtype=_DTYPE, requires_grad=True)
    bias = torch.randn(o, generator=g, dtype=_DTYPE, requires_grad=True)
    out = modulated_deform_conv2d(x, offset, weight, bias, mask, impl=impl)
    ref = dcn_loop(x, offset, weight, bias, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=g, dtype=_DTYPE)
    ga = torch.autograd.grad(out, (x, offset, mask, weight, bias), grad)
    gb = torch.autograd.grad(ref, (x, offset, mask, weight, bias), grad)
    for a, r in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_dcn_zero_offsets_full_mask_is_a_conv():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=_DTYPE)
    weight = torch.randn(5, 4, 3, 3, generator=g, dtype=_DTYPE)
    out = deform_conv2d_torch(x, torch.zeros(2, 2 * 2 * 9, 6, 7, dtype=_DTYPE), weight, None,
                              torch.ones(2, 2 * 9, 6, 7, dtype=_DTYPE))
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, padding=1))


@pytest.mark.parametrize("arch", ["test_semask_mask2former", "test_semask_msfapn_mask2former"])
def test_deformable_pixel_decoder_runs_in_float32_under_autocast(arch):
    """As the original (`@autocast(enabled=False)`): under bf16 autocast the deformable pixel decoder computes in
    float32 exactly what it computes outside autocast from the same (bf16) backbone maps."""
    import semask

    model = semask.create_model(arch).eval()
    decoder = model.sem_seg_head.pixel_decoder
    feats = [torch.randn(1, c, 48 // s, 64 // s, generator=torch.Generator().manual_seed(s)).bfloat16()
             for c, s in zip(model.backbone.dims, (4, 8, 16, 32), strict=True)]
    with torch.no_grad():
        ref_mask, ref_levels = decoder(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask, levels = decoder(feats)
    assert mask.dtype == torch.float32 and all(t.dtype == torch.float32 for t in levels)
    assert torch.equal(mask, ref_mask) and all(torch.equal(a, b) for a, b in zip(levels, ref_levels, strict=True))
