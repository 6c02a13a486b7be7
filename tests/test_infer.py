"""Predictor: sizes, whole vs slide, flip and multi-scale averaging (mmseg protocol), inputs of every kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import semask
from semask.infer import Predictor, load_image, model_preprocessing, rescale_size, slide_windows, to_rgb_list

from .conftest import perturb_weights, randomize_gammas

SMALL = (64, 32)  # test scale (long, short) that keeps the forwards tiny


@pytest.fixture(scope="module")
def model() -> semask.Segmentor:
    torch.manual_seed(0)
    return semask.create_model("test_semask_swin_fpn").eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(37, 91), (91, 37), (33, 33), (1, 1)])
def test_labels_have_the_input_size(model, hw):
    pred = Predictor(model, test_scale=SMALL)(_image(*hw), probs=True)
    assert pred.labels.shape == hw and pred.confidence.shape == hw
    assert pred.probs.shape == (5, *hw) and pred.labels.dtype == np.int64
    assert torch.allclose(pred.probs.sum(0), torch.ones(hw), atol=1e-5)
    assert len(pred.priors) == 4 and pred.priors[0].shape[0] == 5


@pytest.mark.parametrize("hw", [(37, 91), (300, 7)])
def test_single_pass_labels_without_a_probability_map(model, hw):
    """One scale, no flip, no probs: labels and confidence come from the logits in bands of rows (no [K, H, W]
    probability map) and agree with the averaged-probability path."""
    from semask.infer import _max_softmax

    img = _image(*hw, seed=3)
    fast = Predictor(model, test_scale="original")(img)
    full = Predictor(model, test_scale="original")(img, probs=True)
    assert fast.probs is None and fast.labels.dtype == np.int64 and fast.confidence.dtype == np.float32
    np.testing.assert_array_equal(fast.labels, full.labels)
    np.testing.assert_allclose(fast.confidence, full.confidence, rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(fast.priors, full.priors, strict=True))
    logits = torch.randn(6, 29, 13) * 4  # bands of one row, and one band for all: the same as one softmax
    for band in (1, 10 ** 9):
        conf, labels = _max_softmax(logits, (29, 13), band_bytes=band)
        ref_conf, ref_labels = logits.softmax(0).max(0)
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(conf, ref_conf, atol=1e-7, rtol=0)


def test_softmax_is_accumulated_in_bands():
    """Multi-scale / flip averaging adds each view's softmax (mirrored for flipped views) in bands of rows: the sums
    of whole probability maps (a band's softmax may round differently in the last bit)."""
    from semask.infer import _add_softmax

    torch.manual_seed(0)
    views = [torch.randn(6, 29, 13) * 4 for _ in range(3)]
    ref = views[0].softmax(0) + views[1].softmax(0).flip(-1) + views[2].softmax(0)
    for band in (1, 10 ** 9):
        total = torch.zeros(6, 29, 13)
        for i, v in enumerate(views):
            _add_softmax(total, v, flip=i == 1, band_bytes=band)
        torch.testing.assert_close(total, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(29, 13), (61, 40), (10, 7)])  # same size, upsampled, downsampled
@pytest.mark.parametrize("classes_per_chunk", [1, 3, 7])
def test_large_outputs_fold_class_chunks_without_a_full_map(size, classes_per_chunk):
    """Above `full_map_bytes` the classes are resized a chunk at a time into a running max and rescaled sum of
    exponentials (7 classes: chunks of 1 or 3 + 3 + 1; a budget of all 7 takes the resize + row-band path): the
    labels and confidence of the full map's softmax."""
    from semask.infer import _max_softmax

    torch.manual_seed(0)
    logits = torch.randn(7, 29, 13) * 6
    logits[3, :5] = logits[5, :5] = 50.0  # exact ties (across chunks of 1, within one of 3): the lower class wins
    before = logits.clone()
    full = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    ref_conf, ref_labels = full.softmax(0).max(0)
    budget = classes_per_chunk * size[0] * size[1] * 4
    conf, labels = _max_softmax(logits, size, full_map_bytes=budget)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(conf, ref_conf, atol=1e-6, rtol=0)
    assert torch.equal(logits, before)  # unresized chunks are views of the logits: never written


def test_predictor_bounds_the_single_pass_output_map(model, monkeypatch):
    """A photo far above the test scale: the single pass gives the same result with the full-map budget forced
    down to one class per chunk (as a 150-class map above the default 512 MiB is folded, 11 classes at a time for
    12 megapixels)."""
    import semask.infer as infer

    img = _image(120, 90, seed=5)
    whole = Predictor(model, test_scale=SMALL)(img)
    monkeypatch.setattr(infer, "FULL_MAP_BYTES", 120 * 90 * 4)
    resized = []
    resize = infer._resize
    monkeypatch.setattr(infer, "_resize", lambda x, size: resized.append(x.shape[1]) or resize(x, size))
    chunked = Predictor(model, test_scale=SMALL)(img)
    assert resized[-5:] == [1] * 5  # the logits went to the original size one class at a time
    np.testing.assert_array_equal(chunked.labels, whole.labels)
    np.testing.assert_allclose(chunked.confidence, whole.confidence, rtol=0, atol=1e-6)


def test_rescale_size_is_mmcv_keep_ratio():
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # short side -> 512
    assert rescale_size(500, 375, (2048, 512)) == (683, 512)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long side bound wins
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)


def test_slide_with_crop_at_least_the_image_equals_whole(model):
    img = _image(40, 57)
    whole = Predictor(model, test_scale=SMALL)(img, probs=True)
    slide = Predictor(model, test_scale=SMALL, mode="slide", crop=64, stride=40)(img, probs=True)
    assert torch.equal(whole.probs, slide.probs)
    assert np.array_equal(whole.labels, slide.labels)
    # the priors too: 32 x 46 -> a 2-cell stride-32 map, once squeezed into round(46/32) = 1 cell
    assert all(torch.equal(a, b) for a, b in zip(whole.priors, slide.priors, strict=True))


@pytest.mark.parametrize("h,w,crop,stride", [(45, 64, (32, 32), (21, 21)), (100, 37, (32, 24), (16, 20)),
                                             (10, 10, (32, 32), (21, 21)), (64, 64, (32, 32), (32, 32))])
def test_slide_windows_cover_every_pixel(h, w, crop, stride):
    count = np.zeros((h, w), int)
    for y0, y1, x0, x1 in slide_windows(h, w, crop, stride):
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(crop[0], h), min(crop[1], w))
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1


def test_slide_with_overlapping_windows(model):
    p = Predictor(model, test_scale=(96, 48), mode="slide", crop=32, stride=21)
    pred = p(_image(30, 77), probs=True)
    assert pred.labels.shape == (30, 77)
    whole = Predictor(model, test_scale=(96, 48))(_image(30, 77), probs=True)
    assert [q.shape for q in pred.priors] == [q.shape for q in whole.priors]  # stitched on each stage's grid
    assert not torch.allclose(pred.probs, whole.probs)  # the windows do change the result


def test_flip_tta_is_symmetric_on_a_mirror_symmetric_input(model):
    half = _image(24, 20, seed=3)
    img = np.concatenate([half, half[:, ::-1]], axis=1)  # mirror-symmetric 24x40
    plain = Predictor(model, test_scale=SMALL)(img, probs=True).probs
    flipped = Predictor(model, test_scale=SMALL, flip=True)(img, probs=True).probs
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-4)  # the model itself is not flip-equivariant
    assert torch.allclose(flipped, flipped.flip(-1), atol=1e-5)


def test_multi_scale_flip_averages_softmax_as_mmseg(model):
    img = _image(23, 31, seed=1)
    scales = (0.5, 1.0, 1.5)
    pred = Predictor(model, test_scale=SMALL, scales=scales, flip=True)(img, probs=True)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    probs, logits = [], []
    with torch.no_grad():
        for r in scales:
            size = rescale_size(23, 31, (int(SMALL[0] * r), int(SMALL[1] * r)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
            xs = (xs - mean) / std
            for flip in (False, True):
                out = model(xs.flip(-1) if flip else xs)["logits"]
                out = F.interpolate(out, size=(23, 31), mode="bilinear", align_corners=False)
                out = out.flip(-1) if flip else out
                probs.append(out.softmax(1))
                logits.append(out)
    ref = torch.stack(probs).mean(0)[0]
    assert torch.allclose(pred.probs, ref, atol=1e-5)
    assert not torch.allclose(pred.probs, torch.stack(logits).mean(0)[0].softmax(0), atol=1e-4)  # not logit-mean


def test_batch_of_different_sizes(model):
    p = Predictor(model, test_scale=SMALL)
    preds = p([_image(20, 30), Image.fromarray(_image(31, 17)), torch.rand(3, 9, 12)])
    assert [r.labels.shape for r in preds] == [(20, 30), (31, 17), (9, 12)]
    single = p(_image(31, 17))
    assert np.array_equal(single.labels, preds[1].labels)
    assert [r.labels.shape for r in p(torch.rand(2, 3, 10, 14))] == [(10, 14), (10, 14)]


def test_predictor_from_names_uses_the_tag_preprocessing(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        p = Predictor("semask_swin_tiny_fpn.cityscapes", weights=False, device="cpu")
    assert "assuming" not in caplog.text  # the tag records its dataset: nothing is guessed
    assert p.model.pretrained_cfg["dataset"] == "cityscapes"
    assert (p.test_scale, p.crop, p.stride, p.dataset) == ((2048, 1024), (768, 768), (512, 512), "cityscapes")
    assert p.classes.names[0] == "road" and p.classes.label_offset == 0
    plain = Predictor("test_semask_swin_fpn", weights=False, device="cpu")
    assert plain.test_scale == (2048, 512) and plain.crop == (512, 512) and plain.classes.name == "custom"
    with pytest.raises(ValueError, match="not published"):
        Predictor("semask_swin_tiny_fpn.ade20k")
    with pytest.raises(ValueError, match="mode"):
        Predictor(plain.model, mode="sliding")


# --- inputs ----------------------------------------------------------------------------------------------------
def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "fake.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "fake.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_image(tmp_path / "empty.png")
    path = _save(Image.fromarray(_image(40, 50)), tmp_path / "big.png")
    with pytest.raises(ValueError, match="max_pixels=1000"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(ValueError, match="max_pixels"):
        to_rgb_list(torch.rand(3, 40, 50), max_pixels=1000)


@pytest.mark.parametrize("shape", [(5, 5), (2, 1, 3, 5, 5), (4, 5, 5), (1, 2, 5, 5)])
def test_wrong_rank_tensor(shape):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        to_rgb_list(torch.rand(shape))


@pytest.mark.parametrize("empty", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint8), torch.rand(3, 0, 4),
                                   Image.new("RGB", (0, 0))])
def test_empty_images_are_refused(empty, model):
    with pytest.raises(ValueError, match="empty"):
        Predictor(model)(empty)


def test_tensor_value_range_is_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb_list(torch.rand(3, 4, 4) * 255)
    (img,), _ = to_rgb_list(torch.full((3, 2, 2), 255, dtype=torch.uint8))
    assert img.dtype == np.uint8 and (img == 255).all()


def test_image_modes_are_converted_to_rgb(tmp_path):
    grey16 = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    path = _save(Image.fromarray(grey16), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.shape == (2, 2, 3) and out[..., 0].tolist() == [[0, 255], [128, 1]]

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the colour is kept, alpha dropped
    assert (load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))[..., 0] == 200).all()

    cmyk = Image.new("CMYK", (6, 5), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(cmyk, tmp_path / "c.jpg", quality=95))
    assert out.shape == (5, 6, 3) and out[..., 0].min() > 200 and out[..., 1:].max() < 60

    pal = Image.new("P", (3, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert load_image(_save(pal, tmp_path / "p.png"))[0, 0].tolist() == [10, 20, 30]
    assert load_image(_save(Image.new("L", (3, 2), 77), tmp_path / "l.png")).shape == (2, 3, 3)
    assert to_rgb_list(np.full((4, 5), 9, np.uint8))[0][0].shape == (4, 5, 3)
    # float ("F") TIFFs: values in [0, 1] are read as a float tensor would be, larger ones as 0..255
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    assert load_image(_save(Image.fromarray(unit, "F"), tmp_path / "f.tif"))[..., 0].tolist() == [[0, 128], [255, 64]]
    assert load_image(_save(Image.fromarray(unit * 200, "F"), tmp_path / "f2.tif"))[..., 0].tolist() == \
        [[0, 100], [200, 50]]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_image(10, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    (tmp_path / "rot.jpg").write_bytes(buf.getvalue())
    assert load_image(tmp_path / "rot.jpg").shape == (30, 10, 3)


def test_one_pixel_file(tmp_path, model):
    path = _save(Image.new("RGB", (1, 1), (9, 99, 199)), tmp_path / "one.png")
    pred = Predictor(model, test_scale=SMALL)(path)
    assert pred.labels.shape == (1, 1) and pred.image.tolist() == [[[9, 99, 199]]]


def test_weights_folders_keep_their_classes_and_preprocessing(tmp_path, caplog):
    """A model trained on custom data keeps its class table, label ids and test scale through save_pretrained /
    local-dir:, instead of being taken for ADE20K because it has 150 classes."""
    from semask.data.palettes import ClassInfo, generate_palette
    from semask.export import deployment_metadata
    from semask.hub import training_pretrained_cfg

    model = semask.create_model("test_semask_swin_fpn", num_classes=150).eval()
    names = tuple(f"thing{i}" for i in range(150))
    model.pretrained_cfg = training_pretrained_cfg(ClassInfo("mine", names, generate_palette(150)), mean=(1, 2, 3),
                                                   std=(4, 5, 6), test_scale=None, crop_size=(64, 64), dataset="mine")
    semask.save_pretrained(model, tmp_path / "w")
    with caplog.at_level("WARNING"):
        p = Predictor(f"local-dir:{tmp_path / 'w'}")
    assert "assuming" not in caplog.text and p.dataset == "mine"  # nothing guessed: the record says
    assert p.classes.names == names and p.classes.label_offset == 0 and p.test_scale is None
    assert p.mean.flatten().tolist() == [1, 2, 3] and p.crop == (64, 64)
    again = semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "w")
    assert again.pretrained_cfg == p.model.pretrained_cfg
    meta = deployment_metadata(again)
    assert meta["class_names"] == list(names) and meta["input"]["test_scale"] is None
    # re-headed: the class table no longer fits, so it is not kept
    assert semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "w", num_classes=3).pretrained_cfg is None
    # without a record the class count decides, and the Predictor says what it assumed
    semask.save_pretrained(semask.create_model("test_semask_swin_fpn", num_classes=150), tmp_path / "bare")
    with caplog.at_level("WARNING"):
        bare = Predictor(f"local-dir:{tmp_path / 'bare'}")
    assert bare.classes.name == "ade20k" and "assuming ade20k" in caplog.text


def test_a_re_headed_model_says_its_class_table_is_guessed(caplog):
    """reset_classifier keeps only the weights' preprocessing: the class table is chosen by count again, and the
    Predictor and ONNX metadata say so (the preprocessing stays the record's, so it is not named as assumed)."""
    from semask.export import deployment_metadata

    model = semask.create_model("semask_swin_tiny_fpn.ade20k", depths=(1, 1, 1, 1), decoder_channels=8)
    model.reset_classifier(19)
    assert list(model.pretrained_cfg) == ["preprocessing"]
    with caplog.at_level("WARNING"):
        p = Predictor(model, device="cpu")
    assert "19 classes and no recorded dataset: assuming cityscapes (class names, palette, label ids as written to " \
           "label PNGs); pass dataset=" in caplog.text
    assert p.classes.name == "cityscapes" and p.test_scale == (2048, 512)  # ADE20K weights' preprocessing kept
    caplog.clear()
    with caplog.at_level("WARNING"):
        meta = deployment_metadata(model)
    assert "assuming cityscapes" in caplog.text and "semask export --dataset" in caplog.text
    assert (meta["dataset"], meta["dataset_guessed"], meta["input"]["test_scale"]) == ("cityscapes", True, [2048, 512])
    caplog.clear()
    with caplog.at_level("WARNING"):
        meta = deployment_metadata(model, dataset="cityscapes")
    assert "assuming" not in caplog.text and (meta["dataset"], meta["dataset_guessed"]) == ("cityscapes", False)
    with pytest.raises(ValueError, match="ade20k has 150 classes, the model 19"):
        deployment_metadata(model, dataset="ade20k")
    tagged = deployment_metadata(semask.create_model("semask_swin_tiny_fpn.ade20k", depths=(1, 1, 1, 1)))
    assert (tagged["dataset"], tagged["dataset_guessed"]) == ("ade20k", False)


@pytest.mark.parametrize("scale", [512, (64,), (0, 5), "native", (64.0, 32)])
def test_bad_test_scale_is_refused(model, scale):
    with pytest.raises(ValueError, match="test_scale must be"):
        Predictor(model, test_scale=scale)


def test_untagged_models_get_the_preprocessing_of_their_class_count():
    from types import SimpleNamespace

    pre, dataset = model_preprocessing(SimpleNamespace(config=semask.get_config("semask_swin_large_fpn")))
    assert (dataset, tuple(pre["test_scale"]), tuple(pre["crop_size"])) == ("ade20k", (2560, 640), (640, 640))
    cfg = semask.get_config("semask_swin_base_fpn", num_classes=19)
    pre, dataset = model_preprocessing(SimpleNamespace(config=cfg))
    assert (dataset, tuple(pre["test_scale"])) == ("cityscapes", (2048, 1024))
    pre, dataset = model_preprocessing(SimpleNamespace(config=semask.get_config("test_swin_fpn")))
    assert dataset is None and tuple(pre["test_scale"]) == (2048, 512)


def test_bad_slide_and_device_arguments_fail_at_construction(model, monkeypatch):
    with pytest.raises(ValueError, match="stride <= crop"):  # a stride beyond the crop leaves pixels uncovered
        Predictor(model, mode="slide", crop=64, stride=100)
    with pytest.raises(ValueError, match="stride <= crop"):
        Predictor(model, mode="slide", crop=(64, 32), stride=(32, 48))
    with pytest.raises(ValueError, match="not a torch device"):
        Predictor(model, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        Predictor(model, device="cuda")
    assert Predictor(model, device="cpu").device == torch.device("cpu")


def test_resolve_device_gives_each_rank_its_gpu(monkeypatch):
    from semask.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # torch.cuda.set_device needs an index
    assert resolve_device("auto", local_rank=1) == resolve_device(None, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


# --- mask classification: semantic scores, priors -------------------------------------------------------------
@pytest.fixture(scope="module")
def mask_model() -> semask.Segmentor:
    """Mask2Former off its init (a random head gives near-uniform scores) with the semantic path on; conv_dim 64,
    as the released models more than one channel per GroupNorm group (see the tiny-input test below)."""
    torch.manual_seed(0)
    # semantic_init="mmseg": the random weights these tests were written against (the family's own init is
    # another random draw; what is tested here is the Predictor)
    m = semask.create_model("test_semask_mask2former", conv_dim=64, semantic_init="mmseg").eval()
    perturb_weights(m, std=0.3)
    randomize_gammas(m)
    return m


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    return scores / scores.sum(0, keepdim=True)


def test_mask_classification_scores_are_averaged_and_normalised_not_softmaxed(mask_model):
    """MaskFormer-family "logits" are semantic scores (softmax(class) x sigmoid(mask) summed over queries): no
    softmax on top (that flattened confidence to ~1/K); views are averaged as scores (detectron2's TTA), and
    confidence / probs are the averaged scores over their per-pixel sum. Single-view labels are the scores' argmax."""
    img = _image(23, 31, seed=2)
    scales = (0.5, 1.0, 1.5)
    views = []
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        for r in scales:
            size = rescale_size(23, 31, (int(SMALL[0] * r), int(SMALL[1] * r)))
            # detectron2's resize (Pillow's bilinear filter on the uint8 image), as `input_resize` says
            resized = np.array(Image.fromarray(img).resize(size[::-1], Image.Resampling.BILINEAR))
            xs = (torch.from_numpy(resized).permute(2, 0, 1)[None].float() - mean) / std
            for flip in (False, True):
                out = F.interpolate(mask_model(xs.flip(-1) if flip else xs)["logits"], size=(23, 31),
                                    mode="bilinear", align_corners=False)[0]
                views.append(out.flip(-1) if flip else out)
    single = Predictor(mask_model, test_scale=SMALL)
    for pred in (single(img), single(img, probs=True)):  # one view: the fast path and the probability map
        np.testing.assert_array_equal(pred.labels, views[2].argmax(0).numpy())
        np.testing.assert_allclose(pred.confidence, _normalised(views[2]).max(0).values.numpy(), rtol=0, atol=1e-5)
    assert single(img).confidence.mean() > 2 / 5  # 5 classes: a softmax of the scores gave ~1/5 everywhere
    tta = Predictor(mask_model, test_scale=SMALL, scales=scales, flip=True)(img, probs=True)
    ref = _normalised(torch.stack(views).mean(0))
    torch.testing.assert_close(tta.probs, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(tta.labels, ref.argmax(0).numpy())
    np.testing.assert_allclose(tta.confidence, ref.max(0).values.numpy(), rtol=0, atol=1e-5)


def test_large_score_maps_fold_class_chunks_without_a_full_map():
    """The chunked single pass for semantic scores: a running max and a plain running sum."""
    from semask.infer import _max_softmax

    scores = torch.rand(7, 29, 13) * torch.rand(7, 1, 1) * 3
    full = _normalised(F.interpolate(scores[None], size=(61, 40), mode="bilinear", align_corners=False)[0])
    for budget in (61 * 40 * 4, 3 * 61 * 40 * 4, 10 ** 9):
        conf, labels = _max_softmax(scores, (61, 40), full_map_bytes=budget, scores=True)
        assert torch.equal(labels, full.argmax(0))
        torch.testing.assert_close(conf, full.max(0).values, atol=1e-6, rtol=0)


def test_mask_classification_priors_have_the_unpadded_grid(mask_model):
    """The model pads its input to a multiple of 32: the hooked prior maps are cropped to ceil(h/s) x ceil(w/s) of
    the unpadded input (as the FPN models' priors), also per sliding window (no squeezing of the padded maps)."""
    img = _image(100, 150, seed=4)
    whole = Predictor(mask_model, test_scale="original")(img)
    assert [tuple(p.shape[1:]) for p in whole.priors] == [(25, 38), (13, 19), (7, 10), (4, 5)]
    fpn = Predictor(semask.create_model("test_semask_swin_fpn").eval(), test_scale="original")(img)
    assert [p.shape[1:] for p in fpn.priors] == [p.shape[1:] for p in whole.priors]
    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - torch.tensor([123.675, 116.28, 103.53]).view(
        1, 3, 1, 1)) / torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        _, padded = mask_model.backbone(F.pad(x, (0, 10, 0, 28)))  # 128 x 160, as the model pads
    for got, ref in zip(whole.priors, padded, strict=True):
        assert torch.equal(got, ref[0, :, :got.shape[1], :got.shape[2]])
    one_window = Predictor(mask_model, test_scale="original", mode="slide", crop=(128, 160), stride=(64, 80))(img)
    assert all(torch.equal(a, b) for a, b in zip(one_window.priors, whole.priors, strict=True))


def test_mask_classification_tiny_inputs_need_more_than_one_channel_per_group():
    """GroupNorm(32, C) on a 1 x 1 stride-32 map (inputs up to 32 px, padded to 32) sees one value per group when
    C = 32: the tiny test configs (conv_dim 32) refuse such inputs, torch's 'Expected more than 1 value per channel'.
    The released models (conv_dim 256: 8 channels per group) have no such limit; neither has a tiny one with 64."""
    img = _image(20, 20, seed=1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        Predictor(semask.create_model("test_semask_mask2former").eval(), test_scale="original")(img)
    wider = semask.create_model("test_semask_mask2former", conv_dim=64).eval()
    for hw in [(20, 20), (1, 1)]:
        assert Predictor(wider, test_scale="original")(_image(*hw)).labels.shape == hw


# --- argument checks, small inputs, dtypes ---------------------------------------------------------------------
def test_classes_mean_and_std_must_fit_the_model(model):
    from semask.data.palettes import get_class_info

    with pytest.raises(ValueError, match="19 names.*predicts 5 classes"):
        Predictor(model, classes=get_class_info("cityscapes", 19))
    assert Predictor(model, classes=get_class_info(None, 5)).classes.names == get_class_info(None, 5).names
    with pytest.raises(ValueError, match="mean needs 3 values"):
        Predictor(model, mean=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="std needs 3 values.*> 0"):
        Predictor(model, std=(1, 0, 1))
    p = Predictor(model, mean=np.array([1.0, 2.0, 3.0]), std=torch.tensor([4.0, 5.0, 6.0]))  # any sequence
    assert p.mean.flatten().tolist() == [1, 2, 3] and p.std.flatten().tolist() == [4, 5, 6]


def test_mit_inputs_below_its_smallest_size_are_padded():
    """SegFormer's MiT cannot take a side below 29 px (its key/value reduction): the Predictor zero-pads the network
    input (the mean colour, as the mask-classification models pad) and crops the logits and priors back; it used to
    fail with the internal size, e.g. a 3 x 500 image resized to 12 x 2048."""
    torch.manual_seed(0)
    mit = semask.create_model("test_semask_mit_segformer").eval()
    randomize_gammas(mit)
    img = _image(10, 40, seed=6)
    pred = Predictor(mit, test_scale="original")(img, probs=True)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)) / torch.tensor([58.395, 57.12, 57.375]).view(
        1, 3, 1, 1)
    with torch.no_grad():
        ref = mit(F.pad(x, (0, 0, 0, 19)))["logits"][0, :, :10]  # 29 x 40
    torch.testing.assert_close(pred.probs, ref.softmax(0), atol=1e-6, rtol=0)
    assert [tuple(p.shape[1:]) for p in pred.priors] == [(3, 10), (2, 5), (1, 3), (1, 2)]
    assert Predictor(mit)(_image(3, 500)).labels.shape == (3, 500)  # resized to 12 x 2048
    assert Predictor(mit, mode="slide", crop=20, stride=20, test_scale="original")(_image(50, 70)).labels.shape == \
        (50, 70)


def test_dtype_is_an_autocast_dtype_and_cast_models_get_their_dtype(model):
    for bad in (torch.float64, "bfloat16"):
        with pytest.raises(ValueError, match="dtype is the autocast dtype"):
            Predictor(model, dtype=bad)
    assert Predictor(model, dtype=torch.float32).dtype is None  # float32: no autocast, as None
    torch.manual_seed(0)
    bf16 = semask.create_model("test_semask_swin_fpn").eval().to(torch.bfloat16)  # no dtype=: inputs follow
    pred = Predictor(bf16, test_scale=SMALL)(_image(20, 30))
    assert pred.labels.shape == (20, 30) and pred.confidence.dtype == np.float32


def test_max_pixels_zero_is_no_limit_and_negatives_are_refused(model, tmp_path, capsys):
    from semask.cli import main

    img = _image(40, 50)
    assert Predictor(model, test_scale=SMALL, max_pixels=0)(img).labels.shape == (40, 50)  # as the CLI's 0
    assert load_image(_save(Image.fromarray(img), tmp_path / "a.png"), max_pixels=0).shape == (40, 50, 3)
    for bad in (-5, 2.5):
        with pytest.raises(ValueError, match="max_pixels must be a whole, positive pixel count.*or 0 / None"):
            Predictor(model, max_pixels=bad)
    assert Predictor(model, max_pixels=1e8).max_pixels == 100_000_000  # a whole float, as 4096 * 4096.0
    assert main(["segment", str(tmp_path / "a.png"), "--model", "test_swin_fpn", "--out", str(tmp_path / "o"),
                 "--max-pixels", "-5"]) == 2
    assert "max_pixels must be a whole, positive" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["mps", "xpu"])
def test_devices_torch_cannot_use_here_are_a_clear_error(name, monkeypatch):
    from semask.devices import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"device '{name}'.*not available.*'cpu'"):
        resolve_device(name)


def test_input_resize_follows_each_family_original_pipeline(model, mask_model, monkeypatch):
    """Mask-classification models see the test-scale image as detectron2 makes it (Pillow's bilinear filter on the
    uint8 image, antialiased when shrinking); the FPN family as mmseg does (bilinear without antialiasing). Both
    sizes from the same keep-ratio rule; an image already at its size is not resized."""
    rng = np.random.default_rng(0)
    image = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    seen = []

    def capture(self, x):
        seen.append(x)
        return original(self, x)

    original = Predictor._run
    monkeypatch.setattr(Predictor, "_run", capture)
    for m, rule in ((mask_model, "pil"), (model, "bilinear")):
        p = Predictor(m, test_scale=(64, 48), device="cpu")
        assert p.resize == rule
        p(image)
        x = seen.pop() * p.std + p.mean  # back to 0..255
        assert tuple(x.shape[-2:]) == rescale_size(90, 120, (64, 48)) == (48, 64)
        pil = torch.from_numpy(np.array(Image.fromarray(image).resize((64, 48), Image.Resampling.BILINEAR)))
        plain = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(48, 64), mode="bilinear",
                              align_corners=False).round()
        want = pil.permute(2, 0, 1)[None].float() if rule == "pil" else plain
        torch.testing.assert_close(x, want, atol=1e-4, rtol=0)
        assert (pil.permute(2, 0, 1)[None].float() - plain).abs().max() > 10  # a 1.9x shrink: the rules differ


def test_onnx_example_resizes_by_the_metadata_rule():
    """examples/onnx_segment.py follows metadata["input"]["resize"]: Pillow's filter for "pil" (mask models)."""
    pytest.importorskip("onnxruntime", reason="the example imports onnxruntime (pip install semask[export])")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "onnx_segment.py"
    spec = importlib.util.spec_from_file_location("onnx_segment", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    image = (np.random.default_rng(1).random((90, 120, 3)) * 255).astype(np.uint8)
    pil = np.asarray(Image.fromarray(image).resize((64, 48), Image.Resampling.BILINEAR)).transpose(2, 0, 1)

    class Session:  # records the graph's input; logits of 2 classes
        def run(self, _names, feeds):
            self.x = next(iter(feeds.values()))
            return [np.zeros((1, 2, *self.x.shape[-2:]), np.float32)]

    for rule in ("pil", "bilinear"):
        meta = {"input": {"name": "images", "test_scale": [64, 48], "mean": [0, 0, 0], "std": [1, 1, 1],
                          "pad_to_min": 1, "resize": rule}}
        session = Session()
        assert example.segment(session, meta, image).shape == (90, 120)
        assert session.x.shape == (1, 3, 48, 64)
        assert np.array_equal(session.x[0], pil) == (rule == "pil")
