from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def randomize_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial affine params and running stats, so norm numerics are really compared."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
                if isinstance(m, torch.nn.BatchNorm2d):
                    assert m.running_mean is not None and m.running_var is not None
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
