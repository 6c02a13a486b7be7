"""Checkpoint file formats besides `torch.save`: sniffing, and detectron2 `.pkl` files read through an allowlist.

detectron2 and the SeMask-Mask2Former / FaPN forks take `MODEL.WEIGHTS` as `.pkl` files of the form
``{"model": {name: array}, "__author__": ..., "matching_heuristics": True}``: numpy arrays (detectron2's model zoo,
`convert-torchvision-to-d2.py`) or pickled torch tensors (`convert-pretrained-swin-model-to-d2.py`, which made the
Swin ImageNet files the SeMask D2 configs start from). `torch.load` cannot read them (no torch header), and plain
`pickle.load` runs whatever code the file names, so `read_pickle` unpickles with only the globals those two layouts
use; tensors' storages go through `torch.load(weights_only=True)`. Arrays come back as tensors.
"""

from __future__ import annotations

import codecs
import collections
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

_log = logging.getLogger(__name__)

# torch.save's legacy (non-zip) format is a pickle too, but it opens with its pickled magic number.
_TORCH_LEGACY_HEADER = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def sniff_format(path: Path) -> str:
    """Which reader a file needs, from its first bytes alone: "safetensors"; "pickle" (a plain pickle, protocol
    2-5: detectron2's .pkl); or "torch" (`torch.save`'s zip or legacy format, or a file torch.load will reject)."""
    with path.open("rb") as f:
        head = f.read(len(_TORCH_LEGACY_HEADER))
    if head[8:10] == b'{"':  # safetensors: a little-endian u64 header length, then the JSON header. Checked first:
        return "safetensors"  # that length can begin with the same bytes as a pickle (0x80 0x02 for 640)
    if len(head) > 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head != _TORCH_LEGACY_HEADER:
        return "pickle"
    return "torch"


def _load_storage(data: bytes) -> Any:
    """What `torch.storage._load_from_bytes` does for a pickled tensor's storage, but without running code."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def numpy_globals() -> dict[tuple[str, str], Any]:
    """What pickled numpy arrays, scalars and dtypes name (data only: nothing here runs code), under numpy 1's
    `numpy.core` and numpy 2's `numpy._core` alike."""
    core = np._core if hasattr(np, "_core") else np.core
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = core.multiarray._reconstruct
        table[(module, "scalar")] = core.multiarray.scalar
    # dtype instances are rebuilt with BUILD (__setstate__), which torch's weights_only unpickler allows only for
    # listed types: their classes (numpy >= 1.25: numpy.dtypes.Float64DType, ...)
    for name in getattr(getattr(np, "dtypes", None), "__all__", ()):
        table[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return table


def _globals() -> dict[tuple[str, str], Any]:
    from torch._utils import _rebuild_parameter, _rebuild_tensor_v2

    return {
        **numpy_globals(),
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # protocol 2 spells bytes as encode(str, "latin1")
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage,
    }


class _AllowlistUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="latin1")  # as detectron2 reads them (Python 2 era files too)
        self._allowed = _globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}") from None


def _to_tensors(obj: Any) -> Any:
    """numpy arrays anywhere in dicts / lists -> tensors (copied: unpickled arrays may be read-only views)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, dict):
        return type(obj)((k, _to_tensors(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_tensors(v) for v in obj)
    return obj


def read_pickle(path: Path, *, allow_unsafe: bool = False) -> Any:
    """Unpickle a detectron2 `.pkl` checkpoint (allowlisted globals only unless `allow_unsafe`); arrays -> tensors.

    Raises pickle.UnpicklingError naming a refused global, or EOFError / UnpicklingError for a broken file.
    """
    with path.open("rb") as f:
        if allow_unsafe:
            _log.warning("loading %s with plain pickle: this runs any code the file contains", path)
            obj = pickle.load(f, encoding="latin1")
        else:
            obj = _AllowlistUnpickler(f).load()
    return _to_tensors(obj)
