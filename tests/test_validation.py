"""Input validation: EXIF orientation of dataset images, ModelConfig field checks, TrainConfig types and ranges."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.config import ModelConfig
from semask.data import folder
from semask.data.datasets import EXIF_ORIENTATION, read_image, read_mask
from semask.hub import load_manifest
from semask.infer import load_image
from semask.registry import ARCHS
from semask.train import DataConfig, TrainConfig, config_from_dict
from semask.train.config import load_config, validate_config

# --- EXIF orientation -------------------------------------------------------------------------------------------


def _pixels(h: int, w: int) -> np.ndarray:
    """Smooth (JPEG-friendly) pixels whose rotation is visible."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], -1).astype(np.uint8)


def _tagged_jpeg(path: Path, h: int, w: int, orientation: int = 6) -> Path:
    """A JPEG stored as [h, w] with an EXIF orientation tag (6: rotate 90° clockwise to display)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    Image.fromarray(_pixels(h, w)).save(buf, format="JPEG", exif=exif.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def _exif_folder(root: Path, mask_hw: tuple[int, int]) -> Path:
    _tagged_jpeg(root / "images" / "phone.jpg", 40, 60)
    (root / "masks").mkdir(parents=True)
    Image.fromarray(np.zeros(mask_hw, np.uint8)).save(root / "masks" / "phone.png")
    (root / "classes.txt").write_text("a\nb\n")
    return root


def test_read_image_applies_exif_orientation_as_inference(tmp_path):
    path = _tagged_jpeg(tmp_path / "rot.jpg", 40, 60)
    image = read_image(path)
    assert image.shape == (60, 40, 3)  # displayed (upright), not stored (40, 60)
    np.testing.assert_array_equal(image, load_image(path))  # trained as it is segmented


def test_read_image_untagged_is_unchanged(tmp_path):
    Image.fromarray(_pixels(40, 60)).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_image(tmp_path / "plain.png"), _pixels(40, 60))


def test_masks_ignore_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "m.png", exif=exif.tobytes())
    assert read_mask(tmp_path / "m.png").shape == (40, 60)  # class ids as stored (mmseg: IMREAD_UNCHANGED)


def test_dataset_reads_tagged_images_upright(tmp_path):
    sample = folder(_exif_folder(tmp_path, (60, 40))).load(0)
    assert sample["image"].shape == (60, 40, 3) and sample["label"].shape == (60, 40)


def test_mask_of_the_stored_pixels_is_reported_naming_exif(tmp_path):
    dataset = folder(_exif_folder(tmp_path, (40, 60)))  # mask drawn on the stored (sideways) pixels
    with pytest.raises(ValueError, match=r"size mismatch: image .*phone\.jpg is 40x60 .*mask .*phone\.png is 60x40; "
                                         r"the image has EXIF orientation 6"):
        dataset.load(0)


def test_untagged_size_mismatch_does_not_blame_exif(tmp_path):
    root = tmp_path
    for sub, array in (("images", _pixels(4, 4)), ("masks", np.zeros((5, 4), np.uint8))):
        (root / sub).mkdir()
        Image.fromarray(array).save(root / sub / "a.png")
    (root / "classes.txt").write_text("a\n")
    with pytest.raises(ValueError, match="size mismatch") as err:
        folder(root).load(0)
    assert "EXIF" not in str(err.value)


# --- ModelConfig ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "match"), [
    ({"num_classes": True}, r"num_classes must be a whole number .*got True \(bool\)"),
    ({"num_classes": 2.5}, r"num_classes must be a whole number .*got 2\.5"),
    ({"num_classes": 0}, r"num_classes must be >= 1, got 0"),
    ({"sem_num_classes": 0}, r"sem_num_classes must be >= 1, got 0"),
    ({"drop_path_rate": 2.0}, r"drop_path_rate must be a number in \[0\.0, 1\.0\), got 2\.0"),
    ({"drop_path_rate": -0.1}, r"drop_path_rate must be a number in \[0\.0, 1\.0\)"),
    ({"decoder_dropout": 1.0}, r"decoder_dropout must be a number in \[0\.0, 1\.0\)"),
    ({"drop_path_rate": "0.1"}, r"drop_path_rate must be a number"),
    ({"embed_dim": 0}, r"embed_dim must be >= 1"),
    ({"window_size": 0}, r"window_size must be >= 1"),
    ({"mlp_ratio": 0}, r"mlp_ratio must be a number > 0"),
    ({"depths": (2, -1, 2, 2)}, r"depths\[1\] must be >= 0, got -1"),
    ({"depths": 4}, r"depths must be a non-empty list of ints"),
    ({"num_heads": (1, 0, 4, 8)}, r"num_heads\[1\] must be >= 1"),
    ({"num_sem_blocks": 0}, r"num_sem_blocks must be >= 1"),
    ({"semantic_attention": ("window", "sideways", "global", "global")}, r"semantic_attention must be None or"),
    ({"decoder": "maskformer", "dec_layers": 0}, r"dec_layers must be >= 1 for decoder='maskformer'"),
    ({"num_heads": (3, 2, 4, 8)}, r"num_heads: stage 0 has 16 channels .*not divisible by its 3 heads"),
    ({"decoder": "mask2former", "nheads": 3}, r"hidden_dim \(256\) must be divisible by nheads \(3\)"),
    ({"decoder": "mask2former", "conv_dim": 48}, r"conv_dim must be a multiple of 32"),
    ({"attn_impl": "flash"}, r"attn_impl must be 'sdpa', 'eager' or 'math'"),
])
def test_bad_model_fields_are_refused_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        semask.get_config("test_semask_swin_fpn", **changes)


def test_create_model_refuses_a_bool_class_count_before_building():
    with pytest.raises(ValueError, match="model config field num_classes"):
        semask.create_model("test_semask_swin_fpn", num_classes=True)


def test_from_dict_validates_and_normalises():
    fields = semask.get_config("test_semask_swin_fpn").to_dict()
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ModelConfig.from_dict(dict(fields, num_classes=0))
    config = ModelConfig.from_dict(dict(fields, num_classes=np.int64(7), mlp_ratio=4, num_sem_blocks=[1, 1, 1, 1]))
    assert type(config.num_classes) is int and config.mlp_ratio == 4.0 and config.num_sem_blocks == (1, 1, 1, 1)
    assert isinstance(config.depths, tuple)
    json.dumps(config.to_dict())  # numpy ints would not serialise


def test_every_registered_config_is_valid():
    for name in [*ARCHS, *load_manifest()]:
        config = semask.get_config(name)
        assert dataclasses.replace(config) == config


def test_zero_layer_counts_that_build_are_accepted():
    assert semask.get_config("test_semask_mask2former", dec_layers=0, enc_layers=0).dec_layers == 0
    assert semask.get_config("test_semask_swin_fpn", depths=(1, 0, 1, 1)).depths == (1, 0, 1, 1)


def test_meta_device_build_still_works():
    with torch.device("meta"):
        model = semask.create_model("test_semask_swin_fpn")
    assert next(model.parameters()).device.type == "meta"


# --- TrainConfig ------------------------------------------------------------------------------------------------


def _file_error(values: dict) -> str:
    with pytest.raises(ValueError) as err:
        config_from_dict(values)
    return str(err.value)


@pytest.mark.parametrize(("build", "values"), [
    (lambda: TrainConfig(data=DataConfig(crop_size=32)), {"data": {"crop_size": 32}}),
    (lambda: TrainConfig(lr="fast"), {"lr": "fast"}),
    (lambda: TrainConfig(iters=1.5), {"iters": 1.5}),
    (lambda: TrainConfig(amp=True), {"amp": True}),
    (lambda: TrainConfig(data=DataConfig(mean=[1, 2])), {"data": {"mean": [1, 2]}}),
])
def test_python_built_config_gets_the_file_type_errors(build, values):
    config = build()
    with pytest.raises(ValueError, match="^config key ") as err:
        validate_config(config)
    assert str(err.value) == _file_error(values)


def test_python_built_config_is_normalised_in_place(tmp_path):
    config = TrainConfig(out_dir=tmp_path, iters=1e3, lr=1, betas=[0.9, 0.99],
                         data={"crop_size": [64, 64], "ratios": [1, 2], "flip": 0})
    validate_config(config)
    assert config.out_dir == str(tmp_path) and config.iters == 1000 and type(config.lr) is float
    assert isinstance(config.data, DataConfig) and config.data.crop_size == (64, 64)
    assert config.betas == (0.9, 0.99) and config.data.ratios == (1.0, 2.0) and config.data.flip == 0.0


def test_trainer_checks_the_types_of_a_python_config():
    from semask.train import Trainer

    with pytest.raises(ValueError, match=re.escape("config key data.crop_size must be a list of 2 ints, got 32")):
        Trainer(TrainConfig(data=DataConfig(crop_size=32)), progress=False)


@pytest.mark.parametrize(("override", "match"), [
    ("data.ratio_range=[2,1]", r"data\.ratio_range must be \[low, high\] with 0 < low <= high, got \[2\.0, 1\.0\]"),
    ("data.ratio_range=[0,1]", r"data\.ratio_range must be"),
    ("data.std=[0,0,0]", r"data\.std must be positive, got \[0\.0, 0\.0, 0\.0\]"),
    ("data.std=[58,-1,57]", r"data\.std must be positive"),
    ("data.ratios=[0.5,0]", r"data\.ratios must be positive"),
    ("data.ratios=[-1]", r"data\.ratios must be positive"),
    ("data.flip=1.5", r"data\.flip must be in \[0, 1\], got 1\.5"),
    ("data.flip=-0.5", r"data\.flip must be in \[0, 1\]"),
    ("data.cat_max_ratio=2", r"data\.cat_max_ratio must be in \[0, 1\], got 2\.0"),
    ("data.test_scale=[0,512]", r"data\.test_scale must be positive sizes"),
])
def test_bad_augmentation_values_are_refused(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_bad_augmentation_in_a_python_config_is_refused():
    with pytest.raises(ValueError, match=r"data\.ratio_range must be"):
        validate_config(TrainConfig(data=DataConfig(ratios=None, ratio_range=(2.0, 1.0))))


@pytest.mark.parametrize("override", ["data.ratio_range=[1,1]", "data.flip=0", "data.flip=1",
                                      "data.cat_max_ratio=0.75", "data.ratios=null", "data.test_scale=null"])
def test_boundary_augmentation_values_are_accepted(override):
    load_config(None, [override])
