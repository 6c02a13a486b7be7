"""What every converter shares: the loud failure when a checkpoint does not map onto a model."""

from __future__ import annotations

from collections.abc import Sequence


def fail_on_unmapped(what: str, leftover: Sequence[str], missing: Sequence[str], *, show: int = 20) -> None:
    """Raise a `KeyError` naming the checkpoint keys left unmapped and the model keys left missing (if any)."""
    if not leftover and not missing:
        return

    def listed(keys: Sequence[str]) -> str:
        return f"{list(keys)[:show]}{' ...' if len(keys) > show else ''} ({len(keys)})"

    raise KeyError(f"{what} does not map: unmapped checkpoint keys {listed(leftover)}; missing model keys "
                   f"{listed(missing)}")
