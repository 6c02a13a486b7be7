"""Which attention kernel each attention module ran: the benchmarks assert the fused path with it, the tests check it.

`scaled_dot_product_attention` picks its backend per call (device, dtype, shapes, mask, grad) and falls back to the
unfused "math" kernel silently; a layout or dtype change can therefore cost the fused path without any error. The
profiler records the backend's aten op; a record_function range opened by forward hooks attributes it to a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch.nn as nn
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

# aten op recorded by the profiler -> SDPA backend.
SDPA_BACKENDS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "aten::_scaled_dot_product_attention_math": "math",
}
FUSED = frozenset(set(SDPA_BACKENDS.values()) - {"math"})
PLAIN = "plain"  # the module ran without any SDPA call (the unfused formula)
_RANGE = "semask.kernels:"


def sdpa_backends(fn: Callable[[], object]) -> set[str]:
    """The SDPA backends `fn()` ran (empty if it called no SDPA)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {SDPA_BACKENDS[ev.name] for ev in prof.events() if ev.name in SDPA_BACKENDS}


def attention_kernels(model: nn.Module, fn: Callable[[], object],
                      module_types: Iterable[type[nn.Module]]) -> dict[str, set[str]]:
    """Run `fn()` once under the profiler -> {class name: backends its calls ran} for every module of `model` of
    one of `module_types` that ran: e.g. {"WindowAttention": {"flash_cpu"}, "SemanticAttention": {"plain"}}.

    A module call with no SDPA inside counts as "plain"; types whose modules did not run are absent.
    """
    types = tuple(module_types)
    ranges: list[record_function] = []
    handles = []

    def enter(mod: nn.Module, _args: object) -> None:
        rf = record_function(_RANGE + type(mod).__name__)
        rf.__enter__()
        ranges.append(rf)

    def leave(_mod: nn.Module, _args: object, _out: object) -> None:
        ranges.pop().__exit__(None, None, None)

    for m in model.modules():
        if isinstance(m, types):
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for h in handles:
            h.remove()
        while ranges:  # fn raised inside a module: close what is open
            ranges.pop().__exit__(None, None, None)

    calls: dict[int, tuple[str, set[str]]] = {}  # each module call's range id -> (class name, backends inside)

    def call(ev: FunctionEvent) -> set[str]:
        return calls.setdefault(ev.id, (ev.name[len(_RANGE):], set()))[1]

    for ev in prof.events():
        if ev.name.startswith(_RANGE):
            call(ev)
        elif ev.name in SDPA_BACKENDS:
            parent = ev.cpu_parent
            while parent is not None and not parent.name.startswith(_RANGE):
                parent = parent.cpu_parent
            if parent is not None:
                call(parent).add(SDPA_BACKENDS[ev.name])
    out: dict[str, set[str]] = {}
    for name, backends in calls.values():
        out.setdefault(name, set()).update(backends or {PLAIN})
    return out
