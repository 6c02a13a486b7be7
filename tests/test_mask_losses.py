"""Mask-classification losses: Hungarian matching, focal/dice and point-sampled BCE/dice, deep supervision, the
prior loss; tiny models train a few steps and the loss decreases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.train import MaskClassificationLoss
from semask.train.mask_losses import dice_loss, targets_from_labels, uncertain_points

pytest.importorskip("scipy", reason="Hungarian matching needs scipy (the optional `train` extra)")


def _labels(b: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    lab = torch.zeros(b, h, w, dtype=torch.long)
    lab[:, : h // 2] = 1
    lab[:, :, w // 2:] = 3
    lab[-1, h // 4: h // 2, :] = 4
    lab[:, :4, :4] = 255
    return lab


def test_targets_from_labels_skip_ignore():
    t = targets_from_labels(_labels(), 5)
    assert t[0]["labels"].tolist() == [0, 1, 3]
    assert t[1]["labels"].tolist() == [0, 1, 3, 4]
    assert torch.equal(t[0]["masks"].sum(0) + (_labels()[0] == 255).float(), torch.ones(64, 64))


@pytest.mark.parametrize("kind", ["maskformer", "mask2former"])
def test_matcher_finds_the_planted_assignment(kind):
    torch.manual_seed(0)
    lab = _labels(1)
    tgt = targets_from_labels(lab, 5)[0]
    q = 6
    perm = [4, 0, 2, 5]  # target j is predicted by query perm[j]
    masks = torch.full((1, q, 16, 16), -8.0)
    logits = torch.zeros(1, q, 6)
    logits[..., -1] = 5.0
    for j, qi in enumerate(perm):
        masks[0, qi] = F.interpolate(tgt["masks"][j][None, None], size=(16, 16))[0, 0] * 16 - 8
        logits[0, qi, tgt["labels"][j]] = 10.0
    loss = MaskClassificationLoss(5, kind=kind, num_points=512)
    (qs, js), = loss.match({"pred_logits": logits, "pred_masks": masks}, [tgt])
    assert dict(zip(js.tolist(), qs.tolist(), strict=True)) == dict(enumerate(perm))


def test_losses_small_for_perfect_predictions_and_terms_present():
    lab = _labels(1)
    tgt = targets_from_labels(lab, 5)[0]
    masks = torch.full((1, 6, 16, 16), -20.0)
    logits = torch.full((1, 6, 6), -10.0)
    logits[..., -1] = 10.0
    for j in range(len(tgt["labels"])):
        masks[0, j] = F.interpolate(tgt["masks"][j][None, None], size=(16, 16))[0, 0] * 40 - 20
        logits[0, j] = -10.0
        logits[0, j, tgt["labels"][j]] = 10.0
    prior = F.one_hot(lab.clamp(max=4), 5).permute(0, 3, 1, 2).float() * 20
    out = {"pred_logits": logits, "pred_masks": masks, "prior_logits": prior,
           "aux_outputs": [{"pred_logits": logits, "pred_masks": masks}]}
    losses = MaskClassificationLoss(5, kind="maskformer")(out, lab)
    assert set(losses) >= {"loss", "loss_ce", "loss_mask", "loss_dice", "loss_prior", "loss_ce_0", "loss_dice_0"}
    assert losses["loss_ce"] < 1e-3 and losses["loss_prior"] < 1e-3 and losses["loss_dice"] < 0.1
    bad = dict(out, pred_logits=-logits)
    assert MaskClassificationLoss(5, kind="maskformer")(bad, lab)["loss_ce"] > 1.0


def test_no_object_weight_and_dice():
    torch.testing.assert_close(MaskClassificationLoss(7).empty_weight, torch.tensor([1.0] * 7 + [0.1]))
    x = torch.tensor([[10.0, -10.0]])
    assert dice_loss(x, torch.tensor([[1.0, 0.0]]), 1.0) < 1e-3
    assert abs(dice_loss(x, torch.tensor([[0.0, 1.0]]), 1.0) - 2 / 3) < 1e-3  # +1 smoothing as the original


def test_uncertain_points_prefer_the_boundary():
    torch.manual_seed(0)
    logits = torch.linspace(-10, 10, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()
    pts = uncertain_points(logits, 200, 3.0, 1.0)
    assert pts.shape == (1, 200, 2)
    assert (pts[0, :, 0] - 0.5).abs().mean() < 0.15  # x near the zero crossing


@pytest.mark.parametrize("arch", ["test_semask_maskformer", "test_semask_mask2former",
                                  "test_semask_fapn_mask2former", "test_semask_msfapn_mask2former"])
def test_tiny_models_train(arch):
    torch.manual_seed(0)
    model = semask.create_model(arch, drop_path_rate=0.0, decoder_dropout=0.0).train()
    crit = MaskClassificationLoss.from_config(model.config, num_points=256)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 32, 32)
    lab = _labels(h=32, w=32)
    losses = []
    for _ in range(4):
        out = model(x)
        assert len(out["aux_outputs"]) == model.config.dec_layers - (model.config.decoder == "maskformer")
        loss = crit(out, lab)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-2:]) < losses[0], losses
