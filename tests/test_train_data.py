"""Datasets (layouts, label mappings, bad-data errors) and the paired transforms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semask.data import ResumableSampler, ade20k, cityscapes, coco_stuff10k, default_splits, folder
from semask.data.loader import worker_error_message, worker_errors_unwrapped
from semask.data.transforms import (
    PAPER_RATIOS,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    Resize,
    _hsv8_to_rgb,
    _rgb_to_hsv8,
    rescale_size,
    train_transforms,
)
from semask.infer import _resize as infer_resize
from semask.infer import load_image
from tests._trainkit import one_thread  # noqa: F401


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _folder(root: Path, labels: dict[str, np.ndarray], classes=("a", "b", "c")) -> Path:
    for name, lab in labels.items():
        _save(root / "images" / f"{name}.png", np.full((*lab.shape, 3), 100, np.uint8))
        _save(root / "masks" / f"{name}.png", lab.astype(np.uint8))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_folder_dataset_loads_pairs(tmp_path):
    ds = _folder(tmp_path, {"x": np.array([[0, 1], [2, 255]]), "y": np.zeros((2, 2))})
    ds = folder(ds)
    assert len(ds) == 2 and ds.classes == ("a", "b", "c")
    s = ds.load(0)
    assert s["image"].shape == (2, 2, 3) and s["label"].tolist() == [[0, 1], [2, 255]]


def test_16_bit_images_train_as_they_are_segmented(tmp_path):
    """A 16-bit grey PNG is scaled to 8 bits (as the Predictor reads it), not clipped to white by Pillow's RGB
    conversion: training, `semask eval` and `semask segment` see the same pixels."""
    root = _folder(tmp_path, {"x": np.zeros((2, 2))})
    grey16 = np.array([[0, 65535], [32896, 2570]], dtype=np.uint16)
    Image.fromarray(grey16).save(root / "images" / "x.png")
    image = folder(root).load(0)["image"]
    assert image[..., 0].tolist() == [[0, 255], [128, 10]] and (image == image[..., :1]).all()
    assert np.array_equal(image, load_image(root / "images" / "x.png"))


def test_label_out_of_range_names_file_and_values(tmp_path):
    ds = folder(_folder(tmp_path, {"bad": np.array([[0, 3], [7, 255]])}))
    with pytest.raises(ValueError, match=r"bad\.png.*\[3, 7\]"):
        ds.load(0)


def test_wrong_class_list_is_reported(tmp_path):
    root = _folder(tmp_path, {"x": np.array([[0, 2]])}, classes=("a", "b"))  # label 2 but only 2 classes
    with pytest.raises(ValueError, match=r"x\.png.*\[2\].*2 classes.*classes\.txt"):
        folder(root).load(0)
    (root / "classes.txt").write_text("a\na\n")
    with pytest.raises(ValueError, match="duplicate"):
        folder(root)
    (root / "classes.txt").write_text("# only comments\n")
    with pytest.raises(ValueError, match="empty"):
        folder(root)
    (root / "classes.txt").write_text("sky\n\nroad\ncar\n")  # skipping line 2 would call id 2 'car'
    with pytest.raises(ValueError, match="line 2 is blank"):
        folder(root)
    (root / "classes.txt").write_text("# names\nsky\nroad\n\n\n")  # comments and trailing blank lines are fine
    assert folder(root).classes == ("sky", "road")


def test_corrupt_image_size_mismatch_rgb_mask(tmp_path):
    root = _folder(tmp_path, {"a": np.zeros((4, 4)), "b": np.zeros((4, 4)), "c": np.zeros((4, 4))})
    (root / "images" / "a.png").write_bytes(b"not a png")
    _save(root / "masks" / "b.png", np.zeros((5, 4), np.uint8))
    _save(root / "masks" / "c.png", np.zeros((4, 4, 3), np.uint8))
    ds = folder(root)
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        ds.load(0)
    with pytest.raises(ValueError, match=r"size mismatch.*b\.png.*4x4.*b\.png.*4x5"):
        ds.load(1)
    with pytest.raises(ValueError, match=r"c\.png has mode RGB"):
        ds.load(2)


def test_verify_lists_every_bad_pair_in_one_error(tmp_path):
    """`verify` checks all pairs (mask values, mode, size against the image's EXIF-aware size; unreadable images) and
    names every bad file with the valid values. `decode_images=False` (the trainer's check) reads only the images'
    headers: a truncated image is then left to `load`."""
    labels = {n: np.zeros((4, 6)) for n in ("a", "b", "c", "d", "e", "f", "g")}
    labels["d"][0, 0] = 3
    root = _folder(tmp_path, labels)
    (root / "images" / "a.png").write_bytes(b"not a png")
    _save(root / "masks" / "b.png", np.zeros((5, 6), np.uint8))
    _save(root / "masks" / "c.png", np.zeros((4, 6, 3), np.uint8))
    exif = Image.Image().getexif()
    exif[0x0112] = 6  # displayed rotated: 4x6 (WxH); the mask was drawn on the stored 6x4 pixels
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images" / "f.png", exif=exif)
    png = (root / "images" / "g.png").read_bytes()
    (root / "images" / "g.png").write_bytes(png[: png.index(b"IDAT") + 6])  # the header reads, the pixels do not
    ds = folder(root)
    assert sorted(ds.pair_problems()) == [0, 1, 2, 3, 5]
    with pytest.raises(ValueError) as err:
        ds.verify()
    text = str(err.value)
    assert "6 of 7 image/mask pair(s) are bad; valid mask values 0..2, 255 (255 = ignore)" in text
    for pattern in (r"cannot read image .*a\.png", r"image .*b\.png is 6x4 \(WxH\) but mask .*b\.png is 6x5",
                    r"c\.png has mode RGB", r"d\.png has label values \[3\]", r"f\.png is 4x6 .*EXIF orientation 6",
                    r"cannot read image .*g\.png", r"fix or remove these files"):
        assert re.search(pattern, text), pattern
    ds.verify([4, 6], decode_images=False)  # the good one, and the truncated one by its header
    with pytest.raises(ValueError, match=r"cannot read image .*g\.png"):
        ds.load(6)
    reduced = folder(root, reduce_zero_label=True)
    assert reduced.valid_mask_values() == "0..3, 255 (0, 255 = ignore)"
    assert 3 not in reduced.pair_problems()  # with the zero label reduced, 3 is class 2 (and 0 is ignored)
    many = _folder(tmp_path / "many", {f"{i:02d}": np.full((2, 2), 9) for i in range(25)})
    with pytest.raises(ValueError, match=r"25 of 25 image/mask pair\(s\)[\s\S]*19\.png has[\s\S]*\.\.\. and 5 more\n"):
        folder(many).verify()


def test_jpeg_masks_are_named_as_the_problem(tmp_path):
    root = _folder(tmp_path, {"x": np.zeros((2, 2)), "y": np.zeros((2, 2))})
    (root / "masks" / "y.png").unlink()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "masks" / "y.jpg")
    with pytest.raises(ValueError, match=r"holds 1 \.jpg mask\(s\) \(e\.g\. .*y\.jpg\) but masks must be lossless "
                                         r"PNG files"):
        folder(root)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "masks" / "y.png")
    assert len(folder(root)) == 2  # a JPEG beside its PNG (a preview) is not read, and not in the way


class _Failing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise ValueError(f"mask {index}.png is bad:\n  second line")


def test_loader_worker_errors_keep_their_message():
    """The main process re-raises a worker's error as 'Caught ValueError in DataLoader worker process 0. Original
    Traceback ...'; `worker_errors_unwrapped` gives it back its own (multi-line) message."""
    loader = torch.utils.data.DataLoader(_Failing(), num_workers=1)
    with pytest.raises(ValueError) as err, worker_errors_unwrapped():
        next(iter(loader))
    assert str(err.value) == "mask 0.png is bad:\n  second line"
    assert "DataLoader worker process" in str(err.value.__cause__)  # the worker's traceback stays chained
    same = ValueError("not from a worker")
    with pytest.raises(ValueError) as err, worker_errors_unwrapped():
        raise same
    assert err.value is same and worker_error_message(same) is None


def test_empty_and_missing_pairs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(ValueError, match="empty"):
        folder(tmp_path)
    _save(tmp_path / "images" / "lonely.jpg", np.zeros((2, 2, 3), np.uint8))
    _save(tmp_path / "masks" / "orphan.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"image without mask: .*lonely\.jpg[\s\S]*mask without image: .*orphan"):
        folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"images folder .*masks[/\\]images does not exist"):
        folder(tmp_path / "masks", classes=["a"])
    # a missing root is named as such (not as its missing classes.txt)
    with pytest.raises(FileNotFoundError, match=r"folder dataset root .*nowhere does not exist"):
        folder(tmp_path / "nowhere")


def test_folder_with_split_folders_needs_a_split(tmp_path):
    for split in ("train", "val"):
        _save(tmp_path / "images" / split / "x.jpg", np.zeros((2, 2, 3), np.uint8))
        _save(tmp_path / "masks" / split / "x.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"split folders \['train', 'val'\]: pass split="):
        folder(tmp_path)
    assert len(folder(tmp_path, "val")) == 1
    assert default_splits("folder", tmp_path, None, None) == ("train", "val")
    assert default_splits("folder", tmp_path, "val", "train") == ("val", "train")
    assert default_splits("ade20k", tmp_path, None, None) == (None, None)


def test_ade20k_reduces_zero_label(tmp_path):
    _save(tmp_path / "images/training/ADE_1.jpg", np.zeros((2, 2, 3), np.uint8))
    _save(tmp_path / "annotations/training/ADE_1.png", np.array([[0, 1], [150, 151]], np.uint8))
    ds = ade20k(tmp_path)
    assert ds.num_classes == 150 and ds.classes[:2] == ("wall", "building")  # the names of semask.data.palettes
    with pytest.raises(ValueError, match=r"ADE_1\.png.*\[151\]"):
        ds.load(0)
    _save(tmp_path / "annotations/training/ADE_1.png", np.array([[0, 1], [150, 2]], np.uint8))
    assert ds.load(0)["label"].tolist() == [[255, 0], [149, 1]]


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    _save(tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", np.zeros((2, 3, 3), np.uint8))
    _save(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
          np.array([[7, 26, 33], [0, 6, 255]], np.uint8))
    _save(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_color.png", np.zeros((2, 3, 3), np.uint8))
    ds = cityscapes(tmp_path)
    assert ds.num_classes == 19 and ds.load(0)["label"].tolist() == [[0, 13, 18], [255, 255, 255]]


def test_coco_stuff10k_layout(tmp_path):
    _save(tmp_path / "images/train2014/COCO_1.jpg", np.zeros((1, 2, 3), np.uint8))
    _save(tmp_path / "annotations/train2014/COCO_1_labelTrainIds.png", np.array([[0, 171]], np.uint8))
    ds = coco_stuff10k(tmp_path)
    assert ds.num_classes == 171 and ds.load(0)["label"].tolist() == [[255, 170]] and ds.classes[-1] == "wood"


def test_resize_uses_paper_ratios_and_keeps_aspect():
    assert rescale_size((512, 1024), (2048, 512)) == (1024, 512)
    r = Resize((64, 32), ratios=PAPER_RATIOS)
    sizes = set()
    for seed in range(40):
        out = r({"image": np.zeros((20, 40, 3), np.uint8), "label": np.zeros((20, 40), np.uint8)},
                np.random.default_rng(seed))
        assert out["image"].shape[:2] == out["label"].shape and out["label"].shape[1] == 2 * out["label"].shape[0]
        sizes.add(out["label"].shape[0])
    assert sizes == {int(20 * min(int(64 * r) / 40, int(32 * r) / 20) + 0.5) for r in PAPER_RATIOS}
    assert len(sizes) == 6


def test_crop_flip_pad_are_paired():
    rng = np.random.default_rng(0)
    img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    lab = (img[..., 0] % 7).astype(np.uint8)
    s = RandomCrop((4, 5))({"image": img, "label": lab}, rng)
    assert s["image"].shape == (4, 5, 3) and np.array_equal(s["label"], s["image"][..., 0] % 7)
    s = RandomFlip(1.0)(s, rng)
    assert np.array_equal(s["label"], s["image"][..., 0] % 7)
    s = Pad((6, 6))({"image": s["image"].astype(np.float32), "label": s["label"]})
    assert s["image"].shape == (6, 6, 3) and (s["image"][4:] == 0).all() and (s["label"][4:] == 255).all()


def test_cat_max_ratio_avoids_single_class_crops():
    lab = np.zeros((40, 40), np.uint8)
    lab[:, 36:] = 1  # a thin strip of class 1
    crop = RandomCrop((8, 8), cat_max_ratio=0.75)
    hits = [len(np.unique(crop({"image": np.zeros((40, 40, 3), np.uint8), "label": lab},
                               np.random.default_rng(s))["label"])) > 1 for s in range(30)]
    plain = RandomCrop((8, 8))
    base = [len(np.unique(plain({"image": np.zeros((40, 40, 3), np.uint8), "label": lab},
                                np.random.default_rng(s))["label"])) > 1 for s in range(30)]
    assert sum(hits) > sum(base)


def test_resize_rule_bilinear_or_pil():
    """"bilinear" (mmseg, the default) gives the pixels `semask.infer` gives for the same size: bilinear, half-pixel
    centres, no antialiasing, rounded; "pil" (detectron2) gives Pillow's antialiased BILINEAR. Labels are NEAREST."""
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    lab = np.random.default_rng(1).integers(0, 5, (37, 53), dtype=np.uint8)
    size_wh = rescale_size(img.shape[:2], (20, 10))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    size_hw = (size_wh[1], size_wh[0])
    flat = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False, antialias=False)
    flat = flat.round().clamp(0, 255)
    assert torch.equal(infer_resize(x, size_hw).round().clamp(0, 255), flat)  # what the Predictor feeds the model
    flat = flat[0].permute(1, 2, 0).to(torch.uint8).numpy()
    pil = np.asarray(Image.fromarray(img).resize(size_wh, Image.Resampling.BILINEAR))
    nearest = np.asarray(Image.fromarray(lab).resize(size_wh, Image.Resampling.NEAREST))
    assert not np.array_equal(flat, pil)  # shrinking a noisy image: antialiasing shows
    for rule, want in (("bilinear", flat), ("pil", pil)):
        out = Resize((20, 10), resize=rule)({"image": img, "label": lab}, np.random.default_rng(0))
        assert out["image"].dtype == np.uint8 and np.array_equal(out["image"], want), rule
        assert np.array_equal(out["label"], nearest), rule
    assert Resize((20, 10)).resize == "bilinear"
    assert np.array_equal(Resize((20, 10))({"image": img}, np.random.default_rng(0))["image"], flat)
    for bad in ("nearest", "PIL", None):
        with pytest.raises(ValueError, match=r"resize must be one of 'bilinear', 'pil'"):
            Resize((20, 10), resize=bad)
    # train_transforms passes the rule to its Resize (fixed ratio, no crop/flip/colour, identity normalisation)
    for rule, want in (("bilinear", flat), ("pil", pil), (None, flat)):
        kw = {} if rule is None else {"resize": rule}
        t = train_transforms(crop_size=size_hw, scale=(20, 10), ratios=None, flip=0.0, photometric=False,
                             mean=(0, 0, 0), std=(1, 1, 1), **kw)
        out = t({"image": img, "label": lab}, np.random.default_rng(3))
        assert np.array_equal(out["image"], want.astype(np.float32)) and np.array_equal(out["label"], nearest)
    with pytest.raises(ValueError, match="resize must be one of"):
        train_transforms(crop_size=(8, 8), scale=(20, 10), resize="bicubic")


def test_hsv8_matches_opencv():
    """The 8-bit HSV conversions give OpenCV's `cvtColor` values (mmcv's bgr2hsv / hsv2bgr in mmseg's pipeline),
    reference values from opencv-python 4.5.5 (HSV -> RGB on a wide row: its vector path truncates)."""
    rgb = np.array([[250, 10, 10], [12, 200, 99], [0, 1, 58], [108, 144, 141], [213, 73, 178], [77, 77, 77],
                    [255, 251, 23], [3, 3, 90]], np.uint8)
    hsv = [[0, 245, 250], [74, 240, 200], [120, 255, 58], [87, 64, 144], [157, 168, 213], [0, 0, 77],
           [30, 232, 255], [120, 246, 90]]
    assert np.stack(_rgb_to_hsv8(rgb), -1).tolist() == hsv
    hsv = np.array([[1, 90, 85], [5, 204, 63], [44, 102, 75], [50, 153, 15], [117, 85, 30], [177, 85, 210],
                    [0, 0, 200], [120, 255, 255]], np.uint8)
    out = _hsv8_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    assert out.dtype == np.uint8 and out.tolist() == [[85, 56, 55], [63, 20, 12], [61, 75, 44], [9, 15, 6],
                                                      [20, 21, 30], [210, 140, 147], [200, 200, 200], [0, 0, 255]]
    img = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    back = _hsv8_to_rgb(*_rgb_to_hsv8(img))
    assert np.abs(back.astype(int) - img).max() <= 4  # 2-degree hue steps, 8-bit saturation
    out = PhotoMetricDistortion()({"image": img.copy()}, np.random.default_rng(2))["image"]
    assert out.dtype == np.uint8 and out.shape == img.shape


class _Draws:
    """Stands in for the np.random.Generator a transform is given: hands out scripted values, in order."""

    def __init__(self, *values) -> None:
        self.values = list(values)

    def integers(self, *args, **kwargs):
        return self.values.pop(0)

    uniform = integers


def test_photometric_clips_and_truncates_after_each_step():
    """As mmseg's `convert`: every step clips to 0..255 and truncates to uint8 before the next. Brightness +30 then
    contrast 0.5 turns 250 into 127 (255 // 2), not 140 (280 * 0.5); 101 into 98 (131 * 0.75 truncated)."""
    img = np.array([[[250, 250, 250], [101, 40, 7], [10, 3, 0]]], np.uint8)
    draws = _Draws(1, 30.0, 1, 1, 0.5, 0, 0)  # brightness on (+30), contrast first and on (x0.5), no sat, no hue
    out = PhotoMetricDistortion()({"image": img.copy()}, draws)["image"]
    assert not draws.values and out.dtype == np.uint8
    assert out.tolist() == [[[127, 127, 127], [65, 35, 18], [20, 16, 15]]]
    draws = _Draws(1, -20.0, 1, 1, 0.75, 0, 0)
    out = PhotoMetricDistortion()({"image": img.copy()}, draws)["image"]
    assert out.tolist() == [[[172, 172, 172], [60, 15, 0], [0, 0, 0]]]
    draws = _Draws(1, 30.0, 1, 1, 0.75, 0, 0)
    assert PhotoMetricDistortion()({"image": img.copy()}, draws)["image"][0, 1, 0] == 98
    # contrast last, after saturation and hue, each through 8-bit HSV and back to uint8: mmseg's draw order
    img = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    draws = _Draws(1, 12.5, 0, 1, 1.4, 1, -7, 1, 0.6)
    out = PhotoMetricDistortion()({"image": img.copy()}, draws)["image"]
    assert not draws.values
    want = np.clip(img.astype(np.float32) + 12.5, 0, 255).astype(np.uint8)
    h, s, v = _rgb_to_hsv8(want)
    want = _hsv8_to_rgb(h, np.clip(s.astype(np.float32) * 1.4, 0, 255).astype(np.uint8), v)
    h, s, v = _rgb_to_hsv8(want)
    want = _hsv8_to_rgb((h - 7) % 180, s, v)
    want = np.clip(want.astype(np.float32) * 0.6, 0, 255).astype(np.uint8)
    assert np.array_equal(out, want)


def test_train_pipeline_is_a_function_of_the_seed():
    t = train_transforms(crop_size=(16, 16), scale=(32, 16))
    img = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lab = np.random.default_rng(2).integers(0, 3, (20, 30), dtype=np.uint8)
    a = t({"image": img, "label": lab}, np.random.default_rng(5))
    b = t({"image": img, "label": lab}, np.random.default_rng(5))
    assert a["image"].shape == (16, 16, 3) and a["image"].dtype == np.float32
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])


def test_sampler_shards_match_one_process_and_resume():
    data = list(range(10))
    one = list(ResumableSampler(data, seed=4))
    two = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=4)) for r in range(2)]
    assert sorted(one) == sorted(two[0] + two[1])  # same (index, augmentation seed) pairs
    assert [p for pair in zip(*two, strict=True) for p in pair] == one  # global order interleaves the ranks
    s = ResumableSampler(data, seed=4)
    s.start = 3
    assert list(s) == one[3:]
