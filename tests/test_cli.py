"""The `semask` command line and the README quickstart, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import semask
from semask.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_list_and_info(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "semask_*"]) == 0
    names = capsys.readouterr().out.split()
    assert "semask_swin_large_fpn" in names and "swin_tiny_fpn" not in names
    assert main(["list", "--pretrained"]) == 0
    pretrained = capsys.readouterr().out.split()
    assert "mit_b4_segformer.ade20k" in pretrained  # SegFormer's own release
    # no trained SeMask MiT weights exist: only the starting points
    assert all(n.endswith("_init") for n in pretrained if n.startswith("semask_mit_"))
    assert not [n for n in pretrained if n.startswith("semask_swin_")]  # released, but not converted on the hub yet
    assert main(["list", "--pretrained", "--unpublished", "semask_swin_*"]) == 0
    assert len(capsys.readouterr().out.split()) == 17  # all released SeMask Swin checkpoints
    assert main(["list", "--unpublished"]) == 2
    assert main(["list", "--pretrained", "mit_b0_segformer"]) == 0  # an architecture name lists its tags
    assert capsys.readouterr().out.split() == ["mit_b0_segformer.ade20k", "mit_b0_segformer.imagenet_init"]
    assert main(["list", "semask_swin_tiny_fpn.*"]) == 0  # a pattern with "." lists tags
    assert capsys.readouterr().out.split() == [f"semask_swin_tiny_fpn.{d}" for d in ("ade20k", "cityscapes",
                                                                                    "coco_stuff10k")]
    assert main(["list", "--pretrained", "semask_swin_tiny_fpn"]) == 0  # nothing published: says where to look
    out = capsys.readouterr()
    assert out.out == "" and "--unpublished" in out.err
    assert main(["list", "nothing_like_this"]) == 0 and "nothing matches" in capsys.readouterr().err
    assert semask.list_models("mit_b0*", pretrained=True) == ["mit_b0_segformer"]  # timm's spelling
    # every listed architecture loads with pretrained=True (SeMask MiT has starting points only: tags, not archs)
    assert all(semask.registry.default_tag(a) for a in semask.list_models(pretrained=True))
    assert "semask_mit_b0_segformer.imagenet_init" in semask.list_models("semask_mit_b0*", pretrained=True,
                                                                         include_tags=True)
    assert semask.list_models("mit_b0*", pretrained=True, include_tags=True) == semask.list_pretrained("mit_b0*")
    assert main(["info", "semask_swin_tiny_fpn.ade20k"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["semantic_attention"] == ["window", "window", "global", "global"]


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["info", "nope_fpn"]) == 2


def test_quickstart_runs(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the checkout under test, installed or not
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"demo.png", "demo_overlay.png", "demo_priors.png"}


def test_python_dash_m_semask(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "semask", "list", "test_swin_*"], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.split() == ["test_swin_fpn"], result.stderr


def test_documented_submodules_load_after_import_semask_alone() -> None:
    """README writes `semask.kernels.attention_kernels(...)`, `semask.train.MaskClassificationLoss`: they work
    after a bare `import semask` (a fresh interpreter, so no other test has imported them)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import semask; semask.kernels.attention_kernels; semask.train.MaskClassificationLoss; "
            "semask.export.export_onnx; semask.viz.overlay")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
