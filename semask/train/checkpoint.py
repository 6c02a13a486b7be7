"""Training checkpoints: atomic writes (temp file in the same folder + fsync + os.replace, so a crash leaves the old
file or the new one, never half of one), keep the last N plus `best.pt`, and the RNG states for exact resume."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ITER_RE = re.compile(r"^iter_(\d+)\.pt$")


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path) -> dict:
    """Our own checkpoints hold tensors, numbers, strings and lists only: read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged files
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a semask training checkpoint (no 'model' entry)")
    return ckpt


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of `iter_*.pt` files in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ITER_RE.match(p.name))]
    return sorted(found)


def prune(folder: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` iter_*.pt files (best.pt is separate)."""
    for _, path in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(), "python": list(_to_lists(random.getstate())),
             "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]}})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x
