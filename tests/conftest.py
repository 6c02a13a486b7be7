from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_gammas(model: torch.nn.Module, value: float = 0.5) -> None:
    """The original init leaves every semantic-attention gamma at 0, which hides that path from tests."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(value)


def perturb_weights(model: torch.nn.Module, std: float = 0.02) -> None:
    """Move every parameter off its init. Several inits are structurally degenerate on purpose (gamma = 0,
    zero deformable offsets/attention weights, DETR's zero first query): they zero some gradients at step 0,
    which would hide a disconnected parameter. With perturbed weights every parameter must get a gradient."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
