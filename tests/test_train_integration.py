"""The trainer's evaluation goes through `semask.Predictor`: whole / slide / multi-scale + flip, one resize path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import semask
from semask.cli import main
from semask.data import folder
from semask.hub import save_pretrained
from semask.infer import MS_RATIOS, Predictor
from semask.train import Trainer
from semask.train.evaluate import EvalProtocol, evaluate, parse_size
from semask.train.metrics import SegMetrics
from tests._trainkit import TINY, one_thread, tiny_config, tiny_data  # noqa: F401


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tiny_data(tmp_path_factory.mktemp("data"), train=2, val=3, size=32)
    torch.manual_seed(0)
    model = semask.create_model("test_semask_swin_fpn", num_classes=5, **dict(TINY, drop_path_rate=0.0))
    return model.eval(), folder(root, "val")


def _metrics(model, dataset, protocol=None, test_scale=None):
    return evaluate(model, dataset, protocol=protocol or EvalProtocol(), test_scale=test_scale, crop_size=(32, 32))


def _same(a: dict, b: dict) -> bool:
    """Equal metrics, NaN (skipped classes) included."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_slide_with_a_crop_covering_the_image_equals_whole_and_tta_runs(setup):
    model, dataset = setup
    whole = _metrics(model, dataset)
    assert _same(_metrics(model, dataset, EvalProtocol(mode="slide", crop=48, stride=16)), whole)
    overlapping = _metrics(model, dataset, EvalProtocol(mode="slide", crop=16, stride=8))
    tta = _metrics(model, dataset, EvalProtocol(scales=MS_RATIOS, flip=True))
    for m in (whole, overlapping, tta):
        assert 0 <= m["aAcc"] <= 1 and set(m["IoU"]) == set(dataset.classes)
    assert not _same(tta, whole)  # six scales and flips averaged: not the single-scale prediction


def test_evaluation_is_the_predictor_on_the_raw_image(setup):
    """The Predictor does the only resize (to data.test_scale, keep-ratio), so `evaluate` scores exactly what a
    Predictor with the same settings returns, at the labels' original size."""
    model, dataset = setup
    predictor = Predictor(model, test_scale=(48, 48), max_pixels=None)
    ref = SegMetrics(dataset.num_classes)
    for i in range(len(dataset)):
        sample = dataset.load(i)
        labels = predictor(sample["image"]).labels
        assert labels.shape == sample["label"].shape
        ref.update(torch.from_numpy(labels), torch.from_numpy(sample["label"]).long())
    assert _same(_metrics(model, dataset, test_scale=(48, 48)), ref.compute(dataset.classes))
    model.train()
    _metrics(model, dataset)
    assert model.training  # the caller's mode is restored
    model.eval()


def test_cli_eval_modes(setup, tmp_path, capsys):
    model, dataset = setup
    save_pretrained(model, tmp_path / "weights")
    cfg = tiny_config(dataset.pairs[0][0].parents[2], tmp_path / "run", model_overrides=dict(TINY))
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    results = {}
    for name, flags in {"whole": [], "slide": ["--mode", "slide", "--crop", "32,40"],
                        "tta": ["--mode", "slide", "--crop", "16", "--stride", "8", "--tta"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--config", str(cfg_file), "--checkpoint", str(tmp_path / "weights"), "--json", str(out),
                     *flags]) == 0
        results[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "slide (crop 16, stride 8), scales 0.5, 0.75, 1, 1.25, 1.5, 1.75, flip" in printed
    assert _same(results["slide"], results["whole"])  # a window covering the 32x32 images is whole inference
    assert results["whole"]["mIoU"] == pytest.approx(_metrics(model, dataset)["mIoU"])
    assert main(["eval", "--config", str(cfg_file), "--checkpoint", str(tmp_path / "weights"), "--crop", "0"]) == 2
    assert "a size is N or H,W" in capsys.readouterr().err


def test_cli_eval_follows_the_configs_protocol(setup, tmp_path, capsys):
    """Without flags `semask eval --config` predicts as the run's periodic evaluations did (eval_mode, eval_crop,
    eval_stride, eval_tta); each flag overrides its key (--no-tta turns the config's TTA off)."""
    model, dataset = setup
    save_pretrained(model, tmp_path / "weights")
    cfg = tiny_config(dataset.pairs[0][0].parents[2], tmp_path / "run", model_overrides=dict(TINY), eval_mode="slide",
                      eval_crop=16, eval_stride=8, eval_tta=True)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    results, printed = {}, {}
    for name, flags in {"config": [], "flags": ["--mode", "slide", "--crop", "16", "--stride", "8", "--tta"],
                        "whole": ["--mode", "whole", "--no-tta"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--config", str(cfg_file), "--checkpoint", str(tmp_path / "weights"), "--json", str(out),
                     *flags]) == 0
        results[name], printed[name] = json.loads(out.read_text()), capsys.readouterr().out
    assert "slide (crop 16, stride 8), scales 0.5, 0.75, 1, 1.25, 1.5, 1.75, flip" in printed["config"]
    assert _same(results["config"], results["flags"])
    assert "images; whole; test scale" in printed["whole"]
    assert results["whole"]["mIoU"] == pytest.approx(_metrics(model, dataset)["mIoU"])


@pytest.mark.parametrize("arch", ["test_semask_mask2former", "test_semask_maskformer"])
def test_bf16_autocast_trains_mask_classification_models(tmp_path, arch):
    """Autocast outputs reach the set criterion in float32, the deep supervision (`aux_outputs`, a list of dicts)
    included: bf16 used to fail in the matcher with 'expected scalar type BFloat16 but found Float'."""
    pytest.importorskip("scipy", reason="Hungarian matching needs scipy (the train extra)")
    root = tiny_data(tmp_path / "data", train=2, val=1, size=64)  # stride 32 must leave > 1 pixel for GroupNorm
    config = tiny_config(root, tmp_path / "out", model=arch, model_overrides={}, iters=1, amp="bf16",
                         eval_interval=100, ckpt_interval=100)
    config.data.crop_size, config.data.scale = (64, 64), (64, 64)
    trainer = Trainer(config, progress=False)
    trainer.fit()
    train = [r for r in trainer.records if "loss" in r]
    assert len(train) == 1 and np.isfinite(train[0]["loss"]) and "loss_ce_0" in train[0]


def test_parse_size_and_protocol_errors():
    assert (parse_size("512"), parse_size("512,1024"), parse_size(None)) == (512, (512, 1024), None)
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        EvalProtocol(mode="sliding")


def test_standard_datasets_carry_the_palette_tables(tmp_path):
    from semask.data import ade20k
    from semask.data.palettes import DATASETS

    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "validation" / "a.jpg")
    Image.fromarray(np.ones((2, 2), np.uint8)).save(tmp_path / "annotations" / "validation" / "a.png")
    info = ade20k(tmp_path, "validation").class_info
    assert info.names == DATASETS["ade20k"].names and info.label_offset == 1
    assert np.array_equal(info.palette, DATASETS["ade20k"].palette)


def test_config_sets_the_periodic_evaluation_protocol(tmp_path):
    root = tiny_data(tmp_path / "data", train=2, val=1, size=32)
    config = tiny_config(root, tmp_path / "out", eval_mode="slide", eval_crop=[16, 24], eval_stride=8, eval_tta=True)
    trainer = Trainer(config, model=semask.create_model("test_semask_swin_fpn", num_classes=5), progress=False)
    assert trainer.eval_protocol == EvalProtocol(mode="slide", crop=(16, 24), stride=8, scales=MS_RATIOS, flip=True)
    with pytest.raises(ValueError, match="whole.*slide"):
        Trainer(tiny_config(root, tmp_path / "bad", eval_mode="tiles"), progress=False)


def test_predictor_original_scale_and_overrides(setup):
    model, dataset = setup
    image = dataset.load(0)["image"]
    p = Predictor(model, test_scale="original", mean=(0, 0, 0), std=(1, 1, 1), max_pixels=None)
    assert p.test_scale is None and p.mean.flatten().tolist() == [0, 0, 0]
    assert p(image).labels.shape == image.shape[:2]
    with pytest.raises(ValueError, match="original"):
        Predictor(model, test_scale="native")


def test_trainer_trains_mask_classification_models(tmp_path):
    """MaskFormer-style models train through the bundled trainer with the set criterion (deep supervision)."""
    pytest.importorskip("scipy", reason="Hungarian matching needs scipy (the train extra)")
    root = tiny_data(tmp_path / "data", train=4, val=1, size=64)  # stride 32 must leave > 1 pixel for GroupNorm
    config = tiny_config(root, tmp_path / "out", model="test_semask_mask2former", model_overrides={}, iters=3,
                         eval_interval=100, ckpt_interval=100)
    config.data.crop_size, config.data.scale = (64, 64), (64, 64)
    model = semask.create_model("test_semask_mask2former", num_classes=5)
    trainer = Trainer(config, model=model, progress=False)
    assert type(trainer.criterion).__name__ == "MaskClassificationLoss" and trainer.full_res_outputs
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss_mask" in r]
    assert train and all(np.isfinite(r["loss"]) and "loss_prior" in r and "loss_ce_0" in r for r in train)
