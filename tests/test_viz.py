"""Palettes, overlays, prior grids, save_prediction, `semask segment` and the quickstart example."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semask.cli import main as cli_main
from semask.data.palettes import DATASETS, generate_palette, get_class_info
from semask.infer import Prediction
from semask.viz import colorize, label_png, legend, overlay, prior_grid, save_prediction

ROOT = Path(__file__).resolve().parent.parent


def test_dataset_tables():
    sizes = {name: (len(info.names), info.palette.shape, info.label_offset) for name, info in DATASETS.items()}
    assert sizes == {"ade20k": (150, (150, 3), 1), "cityscapes": (19, (19, 3), 0), "coco_stuff10k": (171, (171, 3), 1)}
    ade = DATASETS["ade20k"]
    assert ade.names[:3] == ("wall", "building", "sky") and ade.names[-1] == "flag"
    assert ade.palette[0].tolist() == [120, 120, 120] and ade.palette[-1].tolist() == [92, 0, 255]
    assert DATASETS["cityscapes"].palette[0].tolist() == [128, 64, 128]  # road
    assert DATASETS["coco_stuff10k"].names[-1] == "wood"
    assert len(set(ade.names)) == 150
    assert get_class_info(num_classes=19) is DATASETS["cityscapes"]
    with pytest.raises(ValueError, match="choose from"):
        get_class_info("voc")


def test_generated_palette():
    pal = generate_palette(300)
    assert pal.shape == (300, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 300  # distinct colours
    custom = get_class_info(num_classes=7)
    assert custom.names[6] == "class_6" and np.array_equal(custom.palette, generate_palette(7))


def _prediction(h: int = 21, w: int = 34) -> Prediction:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 150, (h, w))
    priors = [torch.randn(150, -(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    return Prediction(labels=labels, confidence=rng.random((h, w), dtype=np.float32),
                      image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), priors=priors,
                      classes=DATASETS["ade20k"])


def test_overlay_follows_the_palette():
    pred = _prediction()
    pal = pred.classes.palette
    assert np.array_equal(overlay(pred.image, pred.labels, 1.0, palette=pal), pal[pred.labels])
    assert np.array_equal(overlay(pred.image, pred.labels, 0.0, palette=pal), pred.image)
    half = overlay(pred.image, pred.labels, 0.5, palette=pal).astype(int)
    assert np.abs(half - (pred.image.astype(int) + pal[pred.labels]) / 2).max() <= 0.5
    assert colorize(np.array([[255]]), pal).tolist() == [[[0, 0, 0]]]  # ignore index: black
    with pytest.raises(ValueError, match="same H x W"):
        overlay(pred.image, pred.labels[:5], 0.5)
    # tensors as the model gives them: a [3, H, W] float image and a label tensor
    chw = torch.from_numpy(pred.image).permute(2, 0, 1).float() / 255
    assert np.array_equal(overlay(chw, torch.from_numpy(pred.labels), 1.0, palette=pal), pal[pred.labels])
    # negative ids (e.g. -1 for "none") are black, as ids outside the palette; no palette is needed for them
    neg = np.full(pred.labels.shape, -1)
    assert not overlay(pred.image, neg, 1.0).any() and colorize(np.array([[-1, 0]]), pal)[0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="integer map"):
        overlay(pred.image, pred.labels.astype(np.float32), 0.5)


def test_save_prediction_writes_real_pngs(tmp_path):
    pred = _prediction()
    paths = save_prediction(pred, tmp_path, "x", priors_png=True, alpha=1.0)
    raw = np.asarray(Image.open(paths["labels"]))
    assert Image.open(paths["labels"]).format == "PNG"
    assert np.array_equal(raw, pred.labels + 1)  # ADE20K ids: 1..150, lossless
    ov = Image.open(paths["overlay"])
    assert (ov.format, ov.mode, ov.size) == ("PNG", "RGB", (34, 21))
    assert np.array_equal(np.asarray(ov), pred.classes.palette[pred.labels])
    grid = Image.open(paths["priors"])
    assert grid.format == "PNG" and grid.width > 5 * 256 and grid.height > 2 * 150
    colours = {tuple(c) for c in np.asarray(grid.convert("RGB")).reshape(-1, 3)}
    stage4 = torch.softmax(pred.priors[3], 0).argmax(0).unique().tolist()
    assert all(tuple(pred.classes.palette[k]) in colours for k in stage4)  # prior arg-max drawn in palette colours


def test_label_png_widths():
    assert label_png(np.array([[0, 255]])).mode == "L"
    wide = label_png(np.array([[0, 300]]))
    assert np.asarray(wide).tolist() == [[0, 300]]
    with pytest.raises(ValueError, match="0..65535"):
        label_png(np.array([[-1]]))


def test_legend_lists_present_classes():
    img = legend(DATASETS["cityscapes"].names, DATASETS["cityscapes"].palette, np.array([[0, 0, 13]]))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (128, 64, 128) in colours and (0, 0, 142) in colours and (244, 35, 232) not in colours


def test_prior_grid_without_priors_is_a_clear_error(tmp_path):
    pred = _prediction()
    pred.priors = []
    assert prior_grid(pred).width > 0
    with pytest.raises(ValueError, match="no semantic-prior"):
        save_prediction(pred, tmp_path, priors_png=True)


def test_cli_segment_folder_skips_unreadable_files(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(np.full((9, 13, 3), 100, np.uint8)).save(src / "ok.png")
    Image.fromarray(np.full((7, 5, 3), 30, np.uint8)).save(src / "sub" / "ok2.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    (src / "empty.png").write_bytes(b"")
    rc = cli_main(["segment", str(src), "--model", "test_semask_swin_fpn", "--out", str(tmp_path / "out"),
                   "--overlay", "--priors", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "segmented 2/4" in captured.out
    assert "broken.jpg" in captured.err and "empty.png" in captured.err
    out = tmp_path / "out"
    assert Image.open(out / "ok.png").size == (13, 9) and Image.open(out / "sub" / "ok2.png").size == (5, 7)
    assert (out / "ok_overlay.png").is_file() and (out / "sub" / "ok2_priors.png").is_file()
    assert cli_main(["segment", str(tmp_path / "nope.png"), "--model", "test_semask_swin_fpn", "--out", "x"]) == 2


def test_cli_segment_keeps_every_output_and_skips_its_own(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((9, 13, 3), 100, np.uint8)).save(src / "x.png")
    Image.fromarray(np.full((7, 5, 3), 30, np.uint8)).save(src / "x.jpg")
    Image.fromarray(np.full((6, 6, 3), 60, np.uint8)).save(src / "y.png")
    args = ["segment", str(src), "--model", "test_semask_swin_fpn", "--out", str(src / "seg"), "--device", "cpu"]
    for _ in range(2):  # the second run must not segment the first run's outputs inside the input folder
        assert cli_main(args) == 0
        assert "segmented 3/3" in capsys.readouterr().out
    out = src / "seg"
    assert sorted(p.name for p in out.iterdir()) == ["x.jpg.png", "x.png.png", "y.png"]
    assert Image.open(out / "x.jpg.png").size == (5, 7) and Image.open(out / "x.png.png").size == (13, 9)


def test_cli_segment_never_overwrites_inputs_or_its_own_outputs(tmp_path, capsys):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(np.full((9, 13, 3), 100, np.uint8)).save(src / "a.png")
    Image.fromarray(np.full((7, 5, 3), 30, np.uint8)).save(src / "a_overlay.png")  # a name an output would take
    Image.fromarray(np.full((6, 8, 3), 60, np.uint8)).save(src / "sub" / "s.jpg")
    before = (src / "a.png").read_bytes()
    base = ["--model", "test_semask_swin_fpn", "--device", "cpu"]
    # --out beside the input: the label map would replace the photo
    assert cli_main(["segment", str(src / "a.png"), "--out", str(src), *base]) == 2
    assert "would overwrite an input image" in capsys.readouterr().err and (src / "a.png").read_bytes() == before
    # a.png's overlay and the label map of the input a_overlay.png would be one file: both keep their suffix
    assert cli_main(["segment", str(src), "--out", str(tmp_path / "seg"), "--overlay", *base]) == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "a.png.png", "a.png_overlay.png", "a_overlay.png.png", "a_overlay.png_overlay.png", "sub"]
    # --out a parent of the input folder: every image is still found (not mistaken for an earlier output)
    assert cli_main(["segment", str(src / "sub"), "--out", str(src), *base, "--test-scale", "original",
                     "--max-pixels", "0"]) == 0
    assert "segmented 1/1" in capsys.readouterr().out and Image.open(src / "s.png").size == (8, 6)
    assert (src / "a.png").read_bytes() == before
    with pytest.raises(SystemExit):  # argparse: a malformed scale
        cli_main(["segment", str(src), "--out", str(tmp_path / "o"), *base, "--test-scale", "512"])


def test_quickstart_runs_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--out", str(tmp_path)])
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert "label map (240, 320)" in capsys.readouterr().out
    assert Image.open(tmp_path / "demo_overlay.png").size == (320, 240)
    assert Image.open(tmp_path / "demo_priors.png").format == "PNG"
