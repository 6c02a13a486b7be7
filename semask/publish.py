"""Publish converted weights: original checkpoint -> `model.safetensors` + `config.json` + model card -> the hub.

`publish_one` returns the manifest entry to commit (hub repo id, revision = the upload's commit, sha256 of the
safetensors file); a dry run writes the same files and leaves `revision` null.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .hub import WEIGHTS_NAME, convert_original, file_sha256, load_manifest, save_pretrained, tag_pretrained_cfg

_log = logging.getLogger(__name__)


def count_params(model: torch.nn.Module) -> int:
    """The manifest's `num_params`: parameters only (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def match_tag(config: ModelConfig) -> str | None:
    """The released `arch.tag` whose architecture, classes and semantic layout equal `config`'s, if exactly one."""
    from .registry import get_config

    hits = []
    for name, entry in load_manifest().items():
        if not entry.get("source") or entry["arch"] != config.arch:
            continue
        tag = get_config(name)
        if (tag.num_classes, tag.semantic_attention, tag.sem_window_size) == \
                (config.num_classes, config.semantic_attention, config.sem_window_size):
            hits.append(name)
    return hits[0] if len(hits) == 1 else None


def model_card(name: str, entry: dict[str, Any], repo_id: str) -> str:
    """README.md of the hub repo: license front matter, provenance, metrics, usage, verification."""
    license_id = "-".join((entry.get("license") or "unknown").lower().split())  # "CC BY-NC 4.0" -> cc-by-nc-4.0
    metrics = entry.get("metrics") or {}
    source = (entry.get("source") or {}).get("url", "n/a")
    sha = entry["hub"]["sha256"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items()) or "| – | – |"
    usage = f'model = semask.create_model("hf-hub:{repo_id}").eval()  # the architecture from config.json'
    if name in load_manifest():  # a tag: its pinned, verified weights once the manifest entry is committed
        usage = (f'model = semask.create_model("{name}", pretrained=True).eval()  # pinned revision, sha256-checked'
                 f"\n{usage}")
    pre = entry.get("preprocessing") or {}
    inputs = (f"Inputs: RGB, normalised with mean {pre['mean']} and std {pre['std']} (0–255 scale)."
              if pre.get("mean") else "Inputs: RGB; no preprocessing is recorded for these weights (the "
              "`semask.Predictor` assumes that of the dataset their class count matches, and says so).")
    return f"""---
license: {license_id}
library_name: semask
pipeline_tag: image-segmentation
tags:
- semantic-segmentation
- semask
- swin
datasets:
- {entry.get("dataset") or "unknown"}
---

# {name}

SeMask weights converted from the [original release](https://github.com/Picsart-AI-Research/SeMask-Segmentation)
to safetensors with `semask publish`. Architecture `{entry.get("arch")}`, {entry.get("num_classes")} classes
({entry.get("class_names") or "see config.json"}), {entry.get("num_params")} parameters.

- Original checkpoint: {source}
- License: {entry.get("license") or "unknown"} (as the original release)
- `model.safetensors` sha256: `{sha}`

## Reported results (original paper / repository)

| metric | value |
|---|---|
{rows}

## Usage

```python
import semask
{usage}
```

{inputs}
"""


def publish_one(original: str | Path, out_dir: str | Path, *, repo_id: str | None = None, name: str | None = None,
                dry_run: bool = False, allow_unsafe: bool = False) -> tuple[str, dict[str, Any]]:
    """Convert one original checkpoint into `out_dir` (and upload it unless `dry_run`); returns (name, entry).

    Args:
        repo_id: target repo; may use `{arch}`, `{dataset}`, `{name}` fields. Default: the manifest's `hub.repo_id`.
        name: the `arch.tag` the checkpoint is; default: the one released tag that matches the converted config.
    """
    from .convert import load_original
    from .registry import get_config

    if name:  # checked against the name, its hidden fields pinned (as `semask convert --model`)
        model = convert_original(original, name, get_config(name), allow_unsafe=allow_unsafe, pin_layout=True)
    else:
        model = load_original(original, allow_unsafe=allow_unsafe)
        name = match_tag(model.config) or model.config.arch
        if (cfg := tag_pretrained_cfg(name)) is not None:
            model.pretrained_cfg = cfg
    manifest = load_manifest()
    entry = copy.deepcopy(manifest[name]) if name in manifest else {
        "arch": model.config.arch, "dataset": None, "num_classes": model.config.num_classes,
        "model": {k: v for k, v in model.config.to_dict().items() if k != "arch"}, "license": None, "source": None}
    arch, _, dataset = name.partition(".")
    planned = (entry.get("hub") or {}).get("repo_id")
    repo_id = (repo_id or planned or "").format(arch=arch, dataset=dataset, name=name.replace(".", "-"))
    if not repo_id:
        raise ValueError(f"no hub repo known for {name!r}; pass --repo-id OWNER/NAME")
    out = Path(out_dir)
    weights = save_pretrained(model, out)
    entry["num_params"] = count_params(model)
    entry["hub"] = {"repo_id": repo_id, "revision": None, "filename": WEIGHTS_NAME, "sha256": file_sha256(weights)}
    (out / "README.md").write_text(model_card(name, entry, repo_id), encoding="utf-8")
    if not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message=f"semask publish {name}")
        entry["hub"]["revision"] = info.oid
        _log.info("uploaded %s to %s at %s", name, repo_id, info.oid)
    return name, entry
