"""Mask-classification losses: Hungarian matching, focal/dice and point-sampled BCE/dice, deep supervision, the
prior loss; tiny models train a few steps and the loss decreases."""

from __future__ import annotations

import datetime
import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.train import MaskClassificationLoss
from semask.train.mask_losses import dice_loss, num_masks_normaliser, targets_from_labels, uncertain_points

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


def _reference_cost(logits, pred, tgt, labels, w_class, w_mask, w_dice, focal):
    """The original matching cost, written out per pixel: pred [Q, P] logits, tgt [N, P] in {0, 1} -> [Q, N]."""
    log_p, log_1mp = F.logsigmoid(pred), F.logsigmoid(-pred)  # log p, log (1 - p)
    p = pred.sigmoid()
    if focal:  # -α (1-p)^γ log p on positives, -(1-α) p^γ log(1-p) on negatives, α .25, γ 2
        on, off = -0.25 * (1 - p) ** 2 * log_p, -0.75 * p ** 2 * log_1mp
    else:  # plain BCE
        on, off = -log_p, -log_1mp
    t = tgt[None]  # [1, N, P] against [Q, 1, P]
    mask = (on[:, None] * t + off[:, None] * (1 - t)).mean(-1)
    dice = 1 - (2 * (p[:, None] * t).sum(-1) + 1) / (p.sum(-1)[:, None] + t.sum(-1) + 1)
    return w_mask * mask + w_class * -logits.softmax(-1)[:, labels] + w_dice * dice


def _random_image(seed: int, q: int = 6, k: int = 5, h: int = 4, w: int = 4, scale: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, k + 1, generator=g)
    masks = torch.randn(q, h, w, generator=g) * 3
    target = targets_from_labels(torch.randint(0, k, (1, h * scale, w * scale), generator=g), k)[0]
    return logits, masks, target


@pytest.mark.parametrize("seed", [1, 4, 6])
def test_maskformer_matching_cost_at_the_prediction_resolution(seed):
    """MaskFormer's matcher: focal + dice between the predicted masks and the targets nearest-downsampled to them
    (every 4th label pixel), not predictions upsampled to the labels (which picks other queries in these cases)."""
    from scipy.optimize import linear_sum_assignment

    crit = MaskClassificationLoss(5, kind="maskformer")
    logits, masks, t = _random_image(seed)
    sub = t["masks"][:, ::4, ::4]  # nearest downsampling by 4 = the top-left pixel of each 4 x 4 cell
    ref = _reference_cost(logits, masks.flatten(1), sub.flatten(1), t["labels"], 1.0, 20.0, 1.0, focal=True)
    torch.testing.assert_close(crit.cost_matrix(logits, masks, t), ref, rtol=1e-5, atol=1e-5)
    (q, j), = crit.match({"pred_logits": logits[None], "pred_masks": masks[None]}, [t])
    rq, rj = linear_sum_assignment(ref.numpy())
    assert (q.tolist(), j.tolist()) == (rq.tolist(), rj.tolist())
    up = F.interpolate(masks[None], size=t["masks"].shape[-2:], mode="bilinear", align_corners=False)[0]
    at_labels = _reference_cost(logits, up.flatten(1), t["masks"].flatten(1), t["labels"], 1.0, 20.0, 1.0, True)
    assert linear_sum_assignment(at_labels.numpy())[0].tolist() != rq.tolist()  # the case tells the two apart


def test_mask2former_matching_cost_on_shared_random_points():
    """Mask2Former's (and FaPN's) matcher stays point-sampled: BCE + dice on one set of uniform random points."""
    crit = MaskClassificationLoss(5, kind="mask2former", num_points=64)
    logits, masks, t = _random_image(0, h=8, w=8)
    torch.manual_seed(3)
    cost = crit.cost_matrix(logits, masks, t)
    torch.manual_seed(3)
    grid = 2 * torch.rand(1, 64, 2) - 1  # the points the matcher drew, as grid_sample coordinates
    pred = F.grid_sample(masks[None], grid[None], align_corners=False)[0, :, 0]
    tgt = F.grid_sample(t["masks"][None], grid[None], align_corners=False)[0, :, 0]
    ref = _reference_cost(logits, pred, tgt, t["labels"], 2.0, 5.0, 5.0, focal=False)
    torch.testing.assert_close(cost, ref, rtol=1e-5, atol=1e-5)


class _FakeProcessGroup:
    """torch.distributed as seen by one process of `world` whose peers hold `others` target masks in all."""

    def __init__(self, monkeypatch, world: int, others: float) -> None:
        self.calls, self.world, self.others = 0, world, others
        monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: self.world)
        monkeypatch.setattr(torch.distributed, "all_reduce", self.all_reduce)

    def all_reduce(self, tensor, *args, **kwargs):
        self.calls += 1
        tensor += self.others


def test_num_masks_normaliser_local_and_distributed(monkeypatch):
    targets = targets_from_labels(_labels(), 5)  # 3 + 4 masks
    assert num_masks_normaliser(targets) == 7.0
    assert num_masks_normaliser(targets_from_labels(torch.full((1, 8, 8), 255), 5)) == 1.0  # clamped
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: pytest.fail("all_reduce without a group"))
    assert num_masks_normaliser(targets) == 7.0
    group = _FakeProcessGroup(monkeypatch, world=2, others=5.0)
    assert num_masks_normaliser(targets) == 6.0  # (7 + 5) / 2
    group.world, group.others = 4, 0.0
    assert num_masks_normaliser(targets_from_labels(torch.full((1, 8, 8), 255), 5)) == 1.0  # clamped after the mean
    assert num_masks_normaliser(targets) == 1.75
    assert group.calls == 3


@pytest.mark.parametrize("kind", ["maskformer", "mask2former"])
def test_mask_losses_use_the_mean_mask_count_over_processes(monkeypatch, kind):
    """Under a process group the mask / dice losses (final and auxiliary) are divided by the all-reduced mask count
    over the world size, as the original; the class and prior losses are unchanged; one all-reduce per call."""
    torch.manual_seed(0)
    lab = _labels(h=32, w=32)  # 7 masks here
    out = {"pred_logits": torch.randn(2, 6, 6), "pred_masks": torch.randn(2, 6, 8, 8),
           "prior_logits": torch.randn(2, 5, 32, 32)}
    out["aux_outputs"] = [{"pred_logits": torch.randn(2, 6, 6), "pred_masks": torch.randn(2, 6, 8, 8)}]
    crit = MaskClassificationLoss(5, kind=kind, num_points=64)
    torch.manual_seed(1)
    local = crit(out, lab)
    group = _FakeProcessGroup(monkeypatch, world=2, others=21.0)  # mean over the processes: (7 + 21) / 2 = 14
    torch.manual_seed(1)
    dist_losses = crit(out, lab)
    assert group.calls == 1
    for k, v in local.items():
        if k == "loss":
            continue
        scale = 7 / 14 if k.startswith(("loss_mask", "loss_dice")) else 1.0
        torch.testing.assert_close(dist_losses[k], v * scale, msg=k)


def _gloo_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        lab = _labels(1 + rank, 32, 32)  # 4 masks on rank 0, 3 + 4 on rank 1: mean 5.5
        n = num_masks_normaliser(targets_from_labels(lab, 5))
        torch.manual_seed(rank)
        out = {"pred_logits": torch.randn(1 + rank, 6, 6), "pred_masks": torch.randn(1 + rank, 6, 8, 8)}
        crit = MaskClassificationLoss(5, kind="maskformer")
        loss = crit(out, lab)["loss_dice"]
        torch.distributed.destroy_process_group()
        local = crit(out, lab)["loss_dice"]  # no group any more: the local count
        if rank == 1:
            Path(result_file).write_text(f"{n} {float(loss / local)}")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="torch.distributed not built, or no fork (spawned workers re-import semask: slow)")
def test_mask_count_all_reduced_over_two_gloo_processes(tmp_path):
    torch.multiprocessing.start_processes(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "res")),
                                          nprocs=2, start_method="fork")
    n, ratio = map(float, (tmp_path / "res").read_text().split())
    assert n == 5.5
    assert ratio == pytest.approx(7 / 5.5)  # rank 1 divides by the mean 5.5 instead of its own 7


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
