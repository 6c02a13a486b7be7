"""`semask publish --dry-run` on the tiny original fixture: files, sha256, the printed manifest entry, loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import semask
from semask.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "semask_fpn_tiny_w7.pth"


def test_publish_dry_run(tmp_path, capsys):
    assert main(["publish", str(FIXTURE), "--repo-id", "someone/semask-{name}", "--dry-run", "--out",
                 str(tmp_path)]) == 0
    entries = json.loads(capsys.readouterr().out)
    (name, entry), = entries.items()
    folder = tmp_path / FIXTURE.stem
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    weights = (folder / "model.safetensors").read_bytes()
    assert entry["hub"] == {"repo_id": "someone/semask-custom", "revision": None, "filename": "model.safetensors",
                            "sha256": hashlib.sha256(weights).hexdigest()}
    assert entry["num_classes"] == 5 and entry["model"]["embed_dim"] == 24
    card = (folder / "README.md").read_text()
    assert entry["hub"]["sha256"] in card and "license:" in card
    # untagged: the card loads it by repo (its config.json is the architecture), and says no preprocessing is known
    assert 'semask.create_model("hf-hub:someone/semask-custom")' in card and "pretrained=True" not in card
    assert "no preprocessing is recorded" in card and "None" not in card

    # The folder loads through create_model (the fixture's sizes as overrides of the tiny test architecture) and
    # gives exactly the original checkpoint's model.
    model = semask.create_model("test_semask_swin_fpn", pretrained=folder, embed_dim=24, decoder_channels=32).eval()
    ref = semask.load_original(FIXTURE)
    assert sum(p.numel() for p in ref.parameters()) == entry["num_params"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["logits"], ref(x)["logits"], atol=0, rtol=0)


def test_publish_uses_tag_metadata(tmp_path, monkeypatch, capsys):
    # A checkpoint that matches a released tag gets that tag's entry (metrics, license, planned repo id).
    from semask import publish

    monkeypatch.setattr(publish, "match_tag", lambda config: "semask_swin_tiny_fpn.ade20k")
    name, entry = publish.publish_one(FIXTURE, tmp_path, dry_run=True)
    assert name == "semask_swin_tiny_fpn.ade20k"
    assert entry["hub"]["repo_id"] == "semask/semask-swin-tiny-fpn-ade20k" and entry["license"] == "Apache-2.0"
    card = (tmp_path / "README.md").read_text()
    assert "42.06" in card and 'create_model("semask_swin_tiny_fpn.ade20k", pretrained=True)' in card
    assert "mean [123.675, 116.28, 103.53]" in card
