"""mIoU / aAcc / mAcc against hand-computed confusion matrices; the optimiser groups and the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch

import semask
from semask.train import PolyWarmup, SegMetrics, build_optimizer, build_scheduler, format_table
from tests._trainkit import one_thread  # noqa: F401


def test_metrics_match_hand_computed_confusion_with_ignore_and_absent_classes():
    # 4 classes; class 3 never appears in labels nor predictions (skipped), class 2 is predicted but absent (IoU 0).
    label = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 2], [0, 3, 1, 0]])  # predictions under ignore pixels do not count
    m = SegMetrics(4)
    m.update(pred, label)
    # confusion [label, pred]: label 0 -> pred 0,1,0 ; label 1 -> pred 1,2,1
    assert m.confusion.tolist() == [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    r = m.compute(["a", "b", "c", "d"])
    assert r["aAcc"] == pytest.approx(4 / 6)
    iou = [2 / 3, 2 / 4, 0.0]  # class 0: tp2 / (3 + 2 - 2); class 1: tp2 / (3 + 3 - 2); class 2: 0 / 1
    assert [r["IoU"][k] for k in "abc"] == pytest.approx(iou)
    assert math.isnan(r["IoU"]["d"])
    assert r["mIoU"] == pytest.approx(sum(iou) / 3)
    assert r["mAcc"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # classes c, d have no labelled pixels
    assert math.isnan(r["Acc"]["c"])
    assert "mIoU 38.89" in format_table(r)


def test_metrics_accumulate_over_batches_not_per_image():
    m = SegMetrics(2)
    m.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))
    m.update(torch.tensor([1]), torch.tensor([1]))
    r = m.compute()
    assert r["IoU"]["0"] == pytest.approx(3 / 4) and r["IoU"]["1"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match=r"\[7\]"):
        m.update(torch.tensor([0]), torch.tensor([7]))


def test_no_weight_decay_on_norms_and_position_tables():
    model = semask.create_model("test_semask_swin_fpn")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    free = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.05
    assert all(("norm" in n) or ("relative_position_bias_table" in n) for n in free)
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in free
    assert "backbone.norm0.weight" in free and "backbone.patch_embed.norm.bias" in free
    assert "decode_head.scale_heads.0.0.bn.weight" in decayed  # as the original: 'bn' does not contain 'norm'
    assert len(decayed) + len(free) == len(list(model.parameters()))


def test_detectron2_groups_for_mask_models():
    """MaskFormer-family models get the groups of their original `build_optimizer`: no decay for the parameters of
    any norm module (GroupNorm included, whatever its name), of nn.Embedding (queries) and the position tables;
    the backbone at lr x backbone_lr_mult. Shared parameters are one entry."""
    from semask.train.optim import family_rule, param_groups

    model = semask.create_model("test_semask_mask2former")
    assert family_rule(model) == "detectron2" and family_rule(semask.create_model("test_semask_swin_fpn")) == "mmseg"
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.05, rule="detectron2", backbone_lr_mult=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    group_of = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert len(group_of) == len(names) == sum(len(g["params"]) for g in opt.param_groups)
    gn = "sem_seg_head.pixel_decoder.input_proj.0.1.weight"  # a GroupNorm without 'norm' in its name
    assert isinstance(model.get_submodule(gn.rpartition(".")[0]), torch.nn.GroupNorm)
    assert group_of[gn] == (1e-4, 0.0)
    assert group_of["sem_seg_head.predictor.query_embed.weight"] == (1e-4, 0.0)  # an nn.Embedding
    assert group_of["sem_seg_head.predictor.class_embed.weight"] == (1e-4, 0.05)
    assert group_of["backbone.layers.0.blocks.0.attn.relative_position_bias_table"][1] == 0.0
    assert group_of["backbone.layers.0.blocks.0.attn.qkv.weight"] == (pytest.approx(1e-5), 0.05)
    assert group_of["backbone.layers.0.semantic_layer.norm1.weight"] == (pytest.approx(1e-5), 0.0)
    # the mmseg rule (FPN): names, so the FPN head's `bn` is decayed; head_lr_mult scales the non-backbone part
    fpn = semask.create_model("test_semask_swin_fpn")
    groups = param_groups(fpn, 0.01, head_lr_mult=10.0)
    head = {id(p) for n, p in fpn.named_parameters() if not n.startswith("backbone.")}
    assert all((g["lr_mult"] == 10.0) == (id(g["params"][0]) in head) for g in groups)
    with pytest.raises(ValueError, match="must be one of"):
        param_groups(fpn, 0.01, rule="timm")


def test_poly_schedule_with_linear_warmup_matches_mmcv():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = build_scheduler(opt, 100, power=1.0, warmup_iters=10, warmup_ratio=1e-6)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    def mmcv(i):  # PolyLrUpdaterHook(power=1, min_lr=0) + linear warmup
        regular = 1e-4 * (1 - i / 100)
        return regular * (1 - (1 - i / 10) * (1 - 1e-6)) if i < 10 else regular

    assert lrs == pytest.approx([mmcv(i) for i in range(100)], rel=1e-9, abs=1e-15)
    assert lrs[0] == pytest.approx(1e-10) and lrs[10] == pytest.approx(9e-5)
    assert PolyWarmup(10, warmup_iters=0)(10) == 0.0


def test_metrics_json_is_strict_json():
    import json

    from semask.train.metrics import metrics_json

    text = metrics_json({"mIoU": 0.5, "IoU": {"a": float("nan"), "b": 1.0}, "per": [float("nan")]})
    assert "NaN" not in text and json.loads(text) == {"mIoU": 0.5, "IoU": {"a": None, "b": 1.0}, "per": [None]}
