"""torch.hub entrypoints, and the manifest kept consistent with the registry."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

import semask
from semask.hub import is_published, load_manifest
from semask.registry import ARCHS, BACKBONE_WEIGHTS, get_config

ROOT = Path(__file__).parents[1]


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_one_keyword_only_entrypoint_per_architecture():
    hub = _hubconf()
    assert "torch" in hub.dependencies and "huggingface_hub" in hub.dependencies
    names = sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_"))
    assert names == [a for a in semask.list_models() if not a.startswith("test_")]
    fn = hub.semask_swin_tiny_fpn
    assert "cityscapes" in fn.__doc__ and fn.__name__ == "semask_swin_tiny_fpn"
    with pytest.raises(TypeError):
        fn(True)  # keyword-only
    with torch.device("meta"):
        assert fn(weights="cityscapes").config.num_classes == 19


def test_torch_hub_load_local_file(tmp_path):
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_tiny_fpn")
    semask.save_pretrained(model, tmp_path)
    loaded = torch.hub.load(str(ROOT), "semask_swin_tiny_fpn", source="local", trust_repo=True,
                            pretrained=str(tmp_path / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_manifest_consistent_with_registry():
    for name, entry in load_manifest().items():
        arch, _, tag = name.partition(".")
        assert arch in ARCHS and tag and entry["arch"] == arch, name
        config = get_config(name)  # every model override is a valid config field
        assert config.num_classes == entry["num_classes"], name
        hub = entry["hub"]
        with torch.device("meta"):
            model = semask.create_model(name)
        # num_params counts our model's parameters (not buffers), for every family.
        n = sum(p.numel() for p in model.parameters())
        assert n == entry["num_params"], (name, n, entry["num_params"])
        if entry["source"] is None:  # architecture-only tag
            assert hub is None, name
            continue
        assert re.match(r"https?://", entry["source"]["url"]), name
        # FPN family / detectron2-derived weights / NVIDIA's SegFormer weights
        assert entry["license"] in ("Apache-2.0", "CC BY-NC 4.0") or \
            entry["license"].startswith("NVIDIA Source Code License for SegFormer"), name
        assert tag.startswith(entry["dataset"]), name
        if entry["source"]["format"] == "hf-transformers":  # third-party weights, converted on the fly
            assert hub is None and re.fullmatch(r"[\w.-]+/[\w.-]+", entry["source"]["repo_id"]), name
            continue
        for ref in ("class_names", "palette"):  # a label set name (semask.data), when given
            assert entry.get(ref, entry["dataset"]) in ("ade20k", "cityscapes", "coco_stuff10k"), name
        assert set(hub) == {"repo_id", "revision", "filename", "sha256"} and hub["filename"].endswith(".safetensors")
        assert hub["repo_id"] is None or re.fullmatch(r"[\w.-]+/[\w.-]+", hub["repo_id"]), name
        # revision and sha256 are both known (published) or both null (not yet)
        assert (hub["revision"] is None) == (hub["sha256"] is None), name
        if is_published(entry):
            assert re.fullmatch(r"[0-9a-f]{40}", hub["revision"]) and re.fullmatch(r"[0-9a-f]{64}", hub["sha256"])
    assert len(semask.list_pretrained(include_unpublished=True)) >= 12
    assert set(BACKBONE_WEIGHTS) <= set(ARCHS)
