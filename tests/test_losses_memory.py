"""The memory-efficient SeMaskLoss (chunked resize + CE, gradient accumulated chunk by chunk) equals the plain
autograd path, and FPN-head gradient checkpointing changes nothing but memory."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from semask.decoders.fpn import SemanticFPNHead
from semask.train.losses import SeMaskLoss, _band_logits, _chunks


def _run(loss: SeMaskLoss, logits: torch.Tensor, prior: torch.Tensor, labels: torch.Tensor, scale: float = 0.7):
    lg = logits.clone().requires_grad_()
    pr = prior.clone().requires_grad_()
    out = loss({"logits": lg, "prior_logits": pr}, labels)
    (out["loss"] * scale).backward()
    return out, lg.grad, pr.grad


CASES = [  # (logits h, w, label H, W, classes, SeMaskLoss kwargs)
    (32, 35, 128, 140, 150, {}),  # stride 4: banded, several bands per image
    (32, 35, 128, 140, 19, {"reduction": "valid"}),
    (33, 33, 130, 131, 10, {}),  # non power-of-two ratio: one chunk per image
    (16, 16, 128, 128, 7, {"ohem_min_kept": 100}),  # factor 8, OHEM
    (32, 32, 32, 32, 5, {}),  # logits already at the label size
    (32, 35, 128, 140, 11, {"chunk_elements": 5000}),  # one logits row per band
]


@pytest.mark.parametrize("case", CASES)
def test_chunked_loss_equals_plain_autograd(case):
    h, w, hl, wl, k, kwargs = case
    torch.manual_seed(0)
    logits, prior = torch.randn(2, k, h, w), torch.randn(2, k, h, w)
    labels = torch.randint(0, k, (2, hl, wl))
    labels[:, :5] = 255
    labels[0, -3:, :7] = 255
    ref = _run(SeMaskLoss(memory_efficient=False, **{k: v for k, v in kwargs.items() if k != "chunk_elements"}),
               logits, prior, labels)
    new = _run(SeMaskLoss(**kwargs), logits, prior, labels)
    assert set(ref[0]) == set(new[0])
    for key in ref[0]:
        torch.testing.assert_close(new[0][key], ref[0][key], atol=1e-6, rtol=1e-6)
    assert abs(new[0]["acc"].item() - ref[0]["acc"].item()) <= 100 / labels.numel() + 1e-6  # at most one tie flips
    for a, b in ((new[1], ref[1]), (new[2], ref[2])):
        torch.testing.assert_close(a, b, atol=1e-6 * b.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 40, 23), (150, 32, 35)])
def test_band_resize_matches_the_full_resize(shape):
    """A band resized with its one-row halo equals the same rows of the full resize (up to ≤ 1 ulp of rounding)."""
    torch.manual_seed(0)
    c, h, w = shape
    x = torch.randn(1, c, h, w)
    for f in (1, 2, 4, 8):
        size = (h * f, w * 4)
        full = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        bands = _chunks(h, size[0], c * size[1], c * size[1] * f * 3)
        assert len(bands) > 1
        rows = torch.cat([_band_logits(x[..., lo:hi, :], (lo, hi, y0, y1), h, size) for lo, hi, y0, y1 in bands], -2)
        torch.testing.assert_close(rows, full, atol=1e-6, rtol=0)


def test_no_grad_and_default_model_outputs():
    """Under no_grad the chunked loss computes no gradient; full-size and stride-4 outputs give the same loss."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 8, 8)
    labels = torch.randint(0, 5, (1, 32, 32))
    with torch.no_grad():
        a = SeMaskLoss()({"logits": logits}, labels)
        up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
        b = SeMaskLoss()({"logits": up}, labels)
    assert a["loss"].grad_fn is None
    torch.testing.assert_close(a["loss"], b["loss"], atol=1e-6, rtol=1e-6)


def test_fpn_head_checkpointing_is_exact():
    """Recompute in backward: same output, input and parameter gradients, and BatchNorm buffers move once."""
    torch.manual_seed(0)
    dims = [16, 32, 64, 128]
    head = SemanticFPNHead(dims, channels=32, num_classes=7).train()
    ckpt = copy.deepcopy(head)
    ckpt.grad_checkpointing = True
    feats = [torch.randn(2, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate(dims)]
    results = []
    for m in (head, ckpt):
        fs = [f.clone().requires_grad_() for f in feats]
        torch.manual_seed(1)  # the same dropout mask
        out = m(fs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, [f.grad for f in fs], [p.grad for p in m.parameters()], list(m.buffers())))
    for a, b in zip(*results, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_mask_relu_matches_relu():
    """The decoder's training ReLU keeps a bool mask; output and gradient equal nn.ReLU's."""
    from semask.decoders.fpn import ReLU

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    x[0, 0, 0, :4] = 0.0
    grads = []
    for act in (torch.nn.ReLU(), ReLU()):
        xi = x.clone().requires_grad_()
        y = act(xi * 1.0)
        (y * torch.arange(y.numel()).view_as(y)).sum().backward()
        grads.append((y.detach(), xi.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
