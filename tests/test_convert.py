"""Original mmseg checkpoints -> semask: every released config's keys/shapes, round trips, and loud failures."""

from __future__ import annotations

import json
import os
import pickle
import re
import unittest.mock
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import semask
from semask.cli import main as cli_main
from semask.convert.mmseg import infer_mmseg_config, mmseg_to_semask, read_checkpoint
from semask.hub import load_manifest
from semask.segmentor import build_model

from .conftest import FIXTURES, randomize_gammas

KEYS_DIR = FIXTURES / "checkpoint_keys"
INDEX = json.loads((KEYS_DIR / "index_mmseg.json").read_text())
STRUCTURE = ("embed_dim", "depths", "num_heads", "window_size", "semantic_attention", "sem_window_size",
             "decoder_channels", "num_sem_blocks")


def zeros_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Zeros of the released shapes without allocating them (expanded scalars)."""
    out = {}
    for k, shape in shapes.items():
        dtype = torch.int64 if k.endswith(("relative_position_index", "num_batches_tracked")) else torch.float32
        out[k] = torch.zeros((), dtype=dtype).expand(shape)
    return out


def tag_for(source_config: str) -> str:
    tags = [n for n, e in load_manifest().items() if e.get("original_config") == source_config]
    assert len(tags) == 1, f"no single tag for {source_config}: {tags}"
    return tags[0]


@pytest.mark.parametrize("fname", sorted(INDEX))
def test_released_key_manifest_loads_into_its_tag(fname: str) -> None:
    info = INDEX[fname]
    shapes = json.loads((KEYS_DIR / fname).read_text())
    sd = zeros_state_dict(shapes)
    tag = tag_for(info["source_config"])
    config = infer_mmseg_config(sd)
    expected = semask.get_config(tag)
    for field in STRUCTURE:  # the original rule reproduces every tag's layout; classes come from the tensors
        assert getattr(config, field) == getattr(expected, field), field
    assert config.arch == tag.split(".")[0]
    assert config.num_classes == info["decode_head"]["num_classes"]
    with torch.device("meta"):
        model = build_model(config)
    mapped = mmseg_to_semask(sd, model)  # KeyError on any leftover or missing key
    model.load_state_dict(mapped, strict=True, assign=True)
    n_float = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    assert n_float == info["num_params_float"]
    assert len(mapped) + sum(k.endswith("relative_position_index") for k in sd) == info["num_keys"]


def test_coco_stuff_150_class_backbone_is_read_from_tensors() -> None:
    fname = "mmseg__semfpn_semask_swin_tiny_patch4_window7_512x512_80k_coco10k.json"
    sd = zeros_state_dict(json.loads((KEYS_DIR / fname).read_text()))
    model = semask.load_original({"state_dict": sd})  # a real (allocating) load of a full-size model
    assert (model.config.num_classes, model.config.sem_num_classes) == (171, 150)
    assert model.config.semantic_attention == ("window", "window", "global", "global")


def _to_original(model: semask.Segmentor, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our state dict in the original layout (index buffers included)."""
    sd = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if hasattr(m, "relative_position_index"):
            sd[f"{prefix}{name}.relative_position_index"] = m.relative_position_index.clone()
    return sd


@pytest.mark.parametrize("wrap", ["state_dict", "model", "bare", "module_prefix"])
def test_checkpoint_layouts(wrap: str) -> None:
    model = semask.create_model("test_semask_swin_fpn").eval()
    sd = _to_original(model, "module." if wrap == "module_prefix" else "")
    obj = {"bare": sd, "model": {"model": sd, "iteration": 3}}.get(wrap, {"state_dict": sd, "meta": {"CLASSES": []},
                                                                          "optimizer": {"state": {}}})
    loaded = semask.load_original(obj)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"])


def test_convert_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = semask.create_model("test_semask_swin_fpn_global").eval()
    randomize_gammas(model)
    ckpt = tmp_path / "original.pth"
    torch.save({"state_dict": _to_original(model), "meta": {"note": "x"}}, ckpt)
    out = tmp_path / "converted"
    # The tag/arch pins the windowed/global layout that the weights cannot tell.
    assert cli_main(["convert", str(ckpt), str(out), "--model", "test_semask_swin_fpn_global"]) == 0
    assert "test_semask_swin_fpn_global" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json"}
    loaded = semask.create_model("test_semask_swin_fpn_global", pretrained=out).eval()
    # Converted on the fly: without a tag the original rule applies (all windowed for embed_dim 16), so the
    # layout is passed explicitly, as a user would for a non-standard checkpoint.
    layout = ("window", "window", "global", "global")
    direct = semask.create_model("test_semask_swin_fpn_global", pretrained=ckpt, semantic_attention=layout,
                                 sem_window_size=5).eval()
    with pytest.raises(ValueError, match="semantic_attention"):  # the rule's layout differs from the arch's
        semask.create_model("test_semask_swin_fpn_global", pretrained=ckpt)
    x = torch.randn(2, 3, 50, 66)
    with torch.no_grad():
        ref = model(x)
        for other in (loaded, direct):
            for key in ref:
                torch.testing.assert_close(other(x)[key], ref[key])


def test_convert_fixture_loads_back_via_local_dir(tmp_path: Path) -> None:
    out = tmp_path / "fixture"
    assert cli_main(["convert", str(FIXTURES / "semask_fpn_tiny_w7.pth"), str(out)]) == 0
    model = semask.create_model(f"local-dir:{out}").eval()
    original = semask.load_original(FIXTURES / "semask_fpn_tiny_w7.pth")
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["logits"], original(x)["logits"])


def test_local_dir_works_wherever_a_model_name_does(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A `custom` conversion (no registered size matches) is usable by name in the Predictor and every CLI command,
    and a name that does not fit it says which call does."""
    from semask.infer import Predictor

    out = tmp_path / "fixture"
    assert cli_main(["convert", str(FIXTURES / "semask_fpn_tiny_w7.pth"), str(out)]) == 0
    hint = capsys.readouterr().out
    name = f"local-dir:{out}"
    assert f"create_model('{name}')" in hint
    model = semask.create_model(name).eval()
    assert model.config.arch == "custom"
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    pred = Predictor(name, test_scale="original")(image)
    assert pred.labels.shape == (40, 52)
    with torch.no_grad():
        ref = Predictor(model, test_scale="original")(image)
    assert np.array_equal(pred.labels, ref.labels)
    with pytest.raises(ValueError, match="own weights"):
        Predictor(name, weights=str(out))
    with pytest.raises(ValueError, match="own weights"):
        semask.create_model(name, pretrained=str(out))
    # info reads the config only (no weights copied onto meta tensors, no warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli_main(["info", name]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == sum(p.numel() for p in model.parameters())
    Image.fromarray(image).save(tmp_path / "img.png")
    assert cli_main(["segment", str(tmp_path / "img.png"), "--model", name, "--out", str(tmp_path / "seg")]) == 0
    assert (tmp_path / "seg" / "img.png").is_file()
    # weights for another architecture: the error names the call that loads them
    with pytest.raises(ValueError, match=re.escape(f"semask.create_model('{name}')")):
        semask.create_model("test_semask_swin_fpn", pretrained=out)
    with pytest.raises(FileNotFoundError, match="config.json"):
        semask.create_model(f"local-dir:{tmp_path / 'missing'}")
    assert cli_main(["info", f"local-dir:{tmp_path / 'missing'}"]) == 2


def test_convert_with_a_name_checks_the_checkpoint_and_pins_hidden_fields(tmp_path, capsys) -> None:
    # an FPN checkpoint is not a MaskFormer: refused, naming what it is (it took the MaskFormer layout before)
    assert cli_main(["convert", str(FIXTURES / "semask_fpn_tiny_w7.pth"), str(tmp_path / "o"),
                     "--model", "semask_swin_large_maskformer.ade20k"]) == 2
    assert "is not a semask_swin_large_maskformer.ade20k" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # detectron2: the heads of the named architecture (4 for the tiny test model; the original's default is 8)
    ckpt = FIXTURES / "semask_maskformer_tiny_w7.pth"
    assert cli_main(["convert", str(ckpt), str(tmp_path / "mf"), "--model", "test_semask_maskformer"]) == 0
    assert json.loads((tmp_path / "mf" / "config.json").read_text())["nheads"] == 4
    cfg = semask.get_config("test_semask_maskformer")
    ref = semask.load_original(ckpt, nheads=4, semantic_attention=cfg.semantic_attention,
                               sem_window_size=cfg.sem_window_size).eval()
    converted = semask.create_model(f"local-dir:{tmp_path / 'mf'}").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x)["logits"], ref(x)["logits"])
    # and on the fly, by name: the same heads
    direct = semask.create_model("test_semask_maskformer", pretrained=ckpt)
    assert direct.config.nheads == 4
    # an output path that is a file: a reported error, not a traceback
    (tmp_path / "afile").write_text("x")
    assert cli_main(["convert", str(FIXTURES / "semask_fpn_tiny_w7.pth"), str(tmp_path / "afile")]) == 2
    assert "afile" in capsys.readouterr().err


def test_pretrained_with_new_num_classes_keeps_other_weights(tmp_path: Path) -> None:
    model = semask.create_model("test_semask_swin_fpn").eval()
    semask.save_pretrained(model, tmp_path)
    new = semask.create_model("test_semask_swin_fpn", pretrained=tmp_path, num_classes=3)
    assert new.config.num_classes == 3 and new.decode_head.conv_seg.out_channels == 3
    old, fresh = model.state_dict(), new.state_dict()
    same = [k for k in fresh if fresh[k].shape == old[k].shape]
    assert all(torch.equal(fresh[k], old[k]) for k in same)
    assert {k for k in fresh if k not in same} == {k for k in fresh if "conv_seg" in k or "mlp_cls_" in k}


def test_pretrained_for_another_architecture_fails(tmp_path: Path) -> None:
    semask.save_pretrained(semask.create_model("test_semask_swin_fpn"), tmp_path)
    with pytest.raises(ValueError, match="different architecture"):
        semask.create_model("test_semask_swin_fpn_global", pretrained=tmp_path)


# --- loud failures -------------------------------------------------------------------------------------------------
@pytest.fixture
def original_sd() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "semask_fpn_tiny_w7.pth", map_location="cpu")["state_dict"]


def test_unmapped_key_is_named(original_sd: dict) -> None:
    original_sd["auxiliary_head.conv_seg.weight"] = torch.zeros(5, 8, 1, 1)
    with pytest.raises(KeyError, match="auxiliary_head.conv_seg.weight"):
        semask.load_original(original_sd)


def test_missing_key_is_named(original_sd: dict) -> None:
    del original_sd["backbone.norm2.bias"]
    with pytest.raises(KeyError, match="backbone.norm2.bias"):
        semask.load_original(original_sd)


def test_shape_mismatch_is_named(original_sd: dict) -> None:
    original_sd["backbone.layers.1.blocks.0.mlp.fc2.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="fc2.bias"):
        semask.load_original(original_sd)


@pytest.mark.parametrize("keys, match", [
    ({"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4), "head.weight": torch.zeros(1000, 768)},
     "not an mmseg Swin checkpoint"),
    ({"backbone.layers.0.blocks.0.norm1.weight": torch.zeros(4), "decode_head.psp_modules.0.1.conv.weight":
      torch.zeros(1)}, "not a Semantic FPN"),
    ({"backbone.layers.0.blocks.0.norm1.weight": torch.zeros(4), "sem_seg_head.predictor.query_embed.weight":
      torch.zeros(1)}, "detectron2"),
])
def test_other_model_families(keys: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        semask.load_original(keys)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        semask.load_original(tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        semask.load_original(empty)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((FIXTURES / "semask_fpn_tiny_w7.pth").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated"):
        semask.load_original(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        semask.load_original(text)
    # what `curl` saves from a Google-Drive link: not a file with unsafe objects, so no advice to unpickle it
    page = tmp_path / "semask_tiny_ade20k.pth"
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 20)
    for path, what in ((page, "HTML page"), (noise, "not a PyTorch checkpoint")):
        for unsafe in (False, True):
            with pytest.raises(ValueError, match=what) as err:
                semask.load_original(path, allow_unsafe=unsafe)
            assert "allow_unsafe" not in str(err.value)


class _Custom:  # a pickled object weights_only loading refuses
    pass


def test_unsafe_pickle_needs_opt_in(tmp_path: Path, original_sd: dict) -> None:
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": original_sd, "meta": _Custom()}, path)
    with pytest.raises(ValueError, match="allow_unsafe"):
        semask.load_original(path)
    assert semask.load_original(path, allow_unsafe=True).config.num_classes == 5


@pytest.mark.skipif(torch.__version__ < "2.6", reason="torch < 2.6 cannot allowlist numpy 1's global names")
@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
def test_numpy_metadata_needs_no_opt_in(tmp_path: Path, original_sd: dict, numpy_names: str) -> None:
    """mmcv keeps e.g. the best mIoU (a numpy float) in `meta['hook_msgs']`: data, not code."""
    path = tmp_path / "with_numpy.pth"
    meta = {"hook_msgs": {"best_score": np.float64(0.42), "best_iter": np.int64(8000)},
            "PALETTE": np.zeros((5, 3), dtype=np.uint8), "CLASSES": np.array(["a", "b", "c", "d", "e"])}
    torch.save({"state_dict": original_sd, "meta": meta}, path)
    if numpy_names == "numpy 1":  # what a file saved under numpy < 2 names: numpy.core.multiarray
        with zipfile.ZipFile(path) as src:
            members = [(info.filename, src.read(info.filename)) for info in src.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
            for name, data in members:
                if name.endswith("data.pkl"):
                    assert b"numpy._core.multiarray" in data
                    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                dst.writestr(name, data)
    assert read_checkpoint(path)["meta"]["hook_msgs"]["best_score"] == 0.42
    assert semask.load_original(path).config.num_classes == 5


def _d2_pickle(path: Path, state_dict: dict, *, layout: str, protocol: int) -> Path:
    """A detectron2 `.pkl` as its conversion scripts write it: numpy arrays (model zoo, torchvision converter) or
    pickled torch tensors (the Swin converter behind the SeMask D2 configs' backbone files)."""
    model = {k: v.numpy() if layout == "numpy" else v for k, v in state_dict.items()}
    with path.open("wb") as f:
        pickle.dump({"model": model, "__author__": "third_party", "matching_heuristics": True}, f, protocol=protocol)
    return path


@pytest.mark.parametrize("fixture, kwargs", [("semask_fpn_tiny_w7.pth", {}),
                                             ("semask_maskformer_tiny_w7.pth", {"nheads": 4})])
@pytest.mark.parametrize("layout, protocol", [("numpy", 2), ("numpy", 4), ("torch", 2), ("torch", 4)])
def test_detectron2_pickles_load_like_the_pth(tmp_path: Path, fixture: str, kwargs: dict, layout: str,
                                              protocol: int) -> None:
    obj = torch.load(FIXTURES / fixture, map_location="cpu")
    sd = obj.get("state_dict", obj.get("model"))
    path = _d2_pickle(tmp_path / "model.pkl", sd, layout=layout, protocol=protocol)
    ref = semask.load_original(FIXTURES / fixture, **kwargs).state_dict()
    got = semask.load_original(path, **kwargs).state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)


def test_numpy1_pickles_load(tmp_path: Path, original_sd: dict) -> None:
    """numpy < 2 pickles name `numpy.core.multiarray` (numpy 2 writes `numpy._core`)."""
    path = _d2_pickle(tmp_path / "old.pkl", original_sd, layout="numpy", protocol=2)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert semask.load_original(path).config.num_classes == 5


class _RunsCode:  # unpickling it calls os.mkdir: what an allowlist must refuse
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return os.mkdir, (str(self.target),)


def test_pickle_that_runs_code_is_refused(tmp_path: Path, original_sd: dict) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in original_sd.items()}, "x": _RunsCode(marker)}, f, protocol=2)
    with pytest.raises(ValueError, match="allow_unsafe") as err:
        semask.load_original(path)
    assert "mkdir" in str(err.value) and not marker.exists()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(_d2_pickle(tmp_path / "ok.pkl", original_sd, layout="numpy", protocol=4).read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        semask.load_original(truncated)


def test_safetensors_and_torch_files_are_not_taken_for_pickles(tmp_path: Path, original_sd: dict) -> None:
    """A safetensors header length can begin with the pickle PROTO bytes (0x80, 0x02 for a 640-byte header)."""
    from semask.convert.formats import sniff_format

    fake = tmp_path / "w.safetensors"
    fake.write_bytes((640).to_bytes(8, "little") + b'{"__metadata__": {}}')
    assert fake.read_bytes()[:2] == b"\x80\x02" and sniff_format(fake) == "safetensors"
    torch.save(original_sd, tmp_path / "zip.pth")
    torch.save(original_sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "zip.pth") == sniff_format(tmp_path / "legacy.pth") == "torch"
    assert semask.load_original(tmp_path / "legacy.pth").config.num_classes == 5
    assert sniff_format(_d2_pickle(tmp_path / "d2.pkl", original_sd, layout="numpy", protocol=2)) == "pickle"
    # an original state dict stored as safetensors reads on any torch (torch.load itself reads them only lately)
    save_file({k: v.contiguous() for k, v in original_sd.items()}, str(tmp_path / "original.safetensors"))
    with unittest.mock.patch.object(torch, "load", side_effect=AssertionError("torch.load used")):
        got = semask.load_original(tmp_path / "original.safetensors").state_dict()
    ref = semask.load_original(tmp_path / "zip.pth").state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_non_tensor_entries_rejected() -> None:
    with pytest.raises(ValueError, match="not a tensor"):
        semask.load_original({"state_dict": {"backbone.x": [1, 2]}})


def test_per_stage_semantic_block_counts_round_trip() -> None:
    """The original takes `num_sem_blocks` per stage (chained blocks, last one's Q is the prior map)."""
    model = semask.create_model("test_semask_swin_fpn", num_sem_blocks=(1, 2, 1, 3)).eval()
    randomize_gammas(model)
    loaded = semask.load_original({"state_dict": _to_original(model)})
    assert loaded.config.num_sem_blocks == (1, 2, 1, 3)
    assert len(loaded.backbone.layers[3].semantic_layer.class_injection) == 3
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        for key, value in model(x).items():
            torch.testing.assert_close(loaded(x)[key], value)


def test_pretrained_files_are_read_by_content_not_name(tmp_path: Path) -> None:
    """`pretrained=` tells files apart by their bytes and keys: a .pth renamed .safetensors and an original state
    dict saved as safetensors are converted; our own tensors in a bare safetensors file (no config.json) load, and
    with other shapes fail naming the tensors, not with load_state_dict's list."""
    import shutil

    original = FIXTURES / "semask_fpn_tiny_w7.pth"
    ref = semask.load_original(original)
    arch = dict(embed_dim=ref.config.embed_dim, decoder_channels=ref.config.decoder_channels,
                num_classes=ref.config.num_classes)
    shutil.copy(original, tmp_path / "renamed.safetensors")
    save_file({k: v.contiguous() for k, v in read_checkpoint(original)["state_dict"].items()},
              str(tmp_path / "original.safetensors"))
    (tmp_path / "ours").mkdir()
    save_file(ref.state_dict(), str(tmp_path / "ours" / "weights.pth"))  # safetensors bytes, a .pth name
    for name in ("renamed.safetensors", "original.safetensors", "ours/weights.pth"):
        got = semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / name, **arch).state_dict()
        assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items()), name
    with pytest.raises(ValueError, match=r"is not a test_semask_swin_fpn checkpoint.*load_original\(.*original\.safet"):
        semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "original.safetensors")
    with pytest.raises(ValueError, match=r"do not fit .test_semask_swin_fpn. \(\d+ tensor\(s\) differ.*save_pre"):
        semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "ours" / "weights.pth")


def test_a_tag_checks_the_class_count_and_records_its_preprocessing(tmp_path: Path, monkeypatch, capsys) -> None:
    """Under a tag, weights of another class count are refused (the tag's semantic layout would be pinned onto
    another dataset's weights), naming the tag that fits; converting / publishing under a tag records its
    preprocessing in config.json; a folder's own record wins over the tag it is loaded under."""
    from semask.publish import publish_one

    manifest = load_manifest()
    pre = {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0], "test_scale": [64, 32], "crop_size": [32, 32]}
    base = {"arch": "test_semask_maskformer", "dataset": "ade20k", "preprocessing": pre,
            "source": {"url": "https://example.invalid/x.pth"}}
    monkeypatch.setitem(manifest, "test_semask_maskformer.five", dict(base, num_classes=5, model={"num_classes": 5}))
    monkeypatch.setitem(manifest, "test_semask_maskformer.nine", dict(base, num_classes=9, model={"num_classes": 9}))
    ckpt = FIXTURES / "semask_maskformer_tiny_w7.pth"  # 5 classes
    fits = r"has 5 classes but test_semask_maskformer\.nine is a 9-class tag.*name test_semask_maskformer\.five"
    with pytest.raises(ValueError, match=fits):
        semask.create_model("test_semask_maskformer.nine", pretrained=ckpt)
    with pytest.raises(ValueError, match=fits):
        publish_one(ckpt, tmp_path / "pub9", repo_id="me/x", name="test_semask_maskformer.nine", dry_run=True)
    assert cli_main(["convert", str(ckpt), str(tmp_path / "x"), "--model", "test_semask_maskformer.nine"]) == 2
    assert "9-class tag" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="is not a test_semask_maskformer.five checkpoint"):  # an FPN checkpoint
        publish_one(FIXTURES / "semask_fpn_tiny_w7.pth", tmp_path / "pubf", repo_id="me/x",
                    name="test_semask_maskformer.five", dry_run=True)
    assert cli_main(["convert", str(ckpt), str(tmp_path / "five"), "--model", "test_semask_maskformer.five"]) == 0
    record = json.loads((tmp_path / "five" / "config.json").read_text())["pretrained_cfg"]
    assert record["name"] == "test_semask_maskformer.five" and record["preprocessing"] == pre
    name, _ = publish_one(ckpt, tmp_path / "pub5", repo_id="me/x", name="test_semask_maskformer.five", dry_run=True)
    assert json.loads((tmp_path / "pub5" / "config.json").read_text())["pretrained_cfg"]["preprocessing"] == pre
    # a run fine-tuned from the tag records its own preprocessing: loading it under the tag keeps that record
    tuned = semask.create_model(f"local-dir:{tmp_path / 'five'}")
    tuned.pretrained_cfg = {"dataset": "mine", "preprocessing": dict(pre, mean=[0.0, 0.0, 0.0])}
    semask.save_pretrained(tuned, tmp_path / "tuned")
    again = semask.create_model("test_semask_maskformer.five", pretrained=tmp_path / "tuned")
    assert again.pretrained_cfg["preprocessing"]["mean"] == [0.0, 0.0, 0.0]
    assert semask.create_model("test_semask_maskformer.five", pretrained=tmp_path / "five").pretrained_cfg[
        "source"] == base["source"]  # the tag's own record: the whole manifest entry
    # structure-changing overrides of a folder: a clear error, not load_state_dict's list
    with pytest.raises(ValueError, match=r"overrides of \['embed_dim'\] change their tensors"):
        semask.create_model(f"local-dir:{tmp_path / 'five'}", embed_dim=32)


def test_bare_safetensors_with_another_class_count(tmp_path: Path) -> None:
    model = semask.create_model("test_semask_swin_fpn", num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    got = semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "w.safetensors", num_classes=3)
    assert all(torch.equal(got.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="pass num_classes="):
        semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "w.safetensors")
    # another architecture's names (plain SegFormer under SeMask-MiT): the differing tensors, not only the converter's
    save_file(semask.create_model("test_mit_segformer").state_dict(), str(tmp_path / "mit.safetensors"))
    with pytest.raises(ValueError, match=r"neither 'test_semask_mit_segformer''s tensors \(\d+ differ, e\.g\. "
                                         r"missing backbone\..*nor an original checkpoint"):
        semask.create_model("test_semask_mit_segformer", pretrained=tmp_path / "mit.safetensors")


def test_foreign_weights_name_the_call_that_loads_them(tmp_path: Path) -> None:
    """timm / transformers folders and ImageNet backbone files passed as pretrained=, and a semask folder passed to
    `semask convert`: errors that say what they are and which call loads them."""
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text(json.dumps({"architecture": "swin_tiny_patch4_window7_224"}))
    save_file({"patch_embed.proj.weight": torch.zeros(1)}, str(tmp_path / "timm" / "model.safetensors"))
    with pytest.raises(ValueError, match="timm / transformers.*pretrained_backbone="):
        semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "timm")
    (tmp_path / "timm" / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    with pytest.raises(ValueError, match="SegFormer folder.*load_segformer"):
        semask.create_model("test_semask_mit_segformer", pretrained=tmp_path / "timm")
    torch.save({"patch_embed.proj.weight": torch.zeros(1), "layers.0.blocks.0.norm1.weight": torch.zeros(1)},
               tmp_path / "swin.pth")
    with pytest.raises(ValueError, match="ImageNet Swin backbone weights.*pretrained_backbone="):
        semask.create_model("test_semask_swin_fpn", pretrained=tmp_path / "swin.pth")
    semask.save_pretrained(semask.create_model("test_semask_swin_fpn"), tmp_path / "ours")
    with pytest.raises(ValueError, match="already converted.*local-dir:"):
        semask.load_original(tmp_path / "ours")
    with pytest.raises(ValueError, match=r"prefixes a model name.*pretrained='.*ours'"):
        semask.create_model("test_semask_swin_fpn", pretrained=f"local-dir:{tmp_path / 'ours'}")


_PRETTY_TEXT = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained=None,
    backbone=dict(
        type='SeMaskSwinTransformer',
        embed_dim=24,
        window_size=7,
        num_cls=5,
        sem_window_size={sem},
        num_sem_blocks=[1, 1, 1, 1]),
    decode_head=dict(type='BranchFPNHead', channels=32, num_classes=5, norm_cfg=norm_cfg))
"""


@pytest.mark.parametrize("config, expected", [
    (_PRETTY_TEXT.format(sem=5), 5),  # mmseg's tools/train.py: cfg.pretty_text
    ({"model": {"backbone": {"type": "SeMaskSwinTransformer", "sem_window_size": 3}}}, 3),  # a config dict
    (_PRETTY_TEXT.format(sem=7), 7),
    ("this is not python (", 7),  # unreadable: the tensors' rule (the attention window) with a warning
    (None, 7),  # the released files record no config
])
def test_semantic_window_read_from_the_recorded_training_config(tmp_path, config, expected):
    """The semantic window is invisible in the weights; a checkpoint that records its training config gives it."""
    obj = torch.load(FIXTURES / "semask_fpn_tiny_w7.pth", map_location="cpu")
    if config is not None:
        obj["meta"]["config"] = config
    torch.save(obj, tmp_path / "run.pth")
    model = semask.load_original(tmp_path / "run.pth")
    assert (model.config.window_size, model.config.sem_window_size) == (7, expected)
    assert semask.load_original(tmp_path / "run.pth", sem_window_size=7).config.sem_window_size == 7  # override wins
    if expected != 7:  # the recorded window is used, not just recorded: outputs change
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            a = model(x)["logits"]
            b = semask.load_original(tmp_path / "run.pth", sem_window_size=7)(x)["logits"]
        assert not torch.allclose(a, b)
