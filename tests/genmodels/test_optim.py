"""Fused Adam (``genmodels.optim.adam``) is the update PyTorch's default Adam makes."""

from __future__ import annotations

import copy

import pytest
import torch

import genmodels
from genmodels.optim import adam


def _made():
    torch.manual_seed(0)
    return genmodels.build("made", (1, 6, 6), 2, hidden_sizes=(32,), weight_decay=1e-4)


def _steps(model, opt, x, n=5):
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model({"x": x})["loss"].backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("family", ["made", "rbm", "gan", "aae", "avb"])
def test_families_step_with_fused_adam_on_cpu(family):
    model = genmodels.build(family, (1, 6, 6), 2)
    for opt in model.configure_optimizers().values():
        assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"]


def test_fused_adam_makes_the_default_update():
    x = (torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    a, b = _made(), _made()
    fused = a.configure_optimizers()["main"]
    assert fused.defaults["fused"]
    plain = torch.optim.Adam(b.parameters(), lr=a.config.lr, weight_decay=1e-4)
    assert not plain.defaults["fused"]
    after_fused, after_plain = _steps(a, fused, x), _steps(b, plain, x)
    assert torch.allclose(after_fused, after_plain, rtol=1e-5, atol=1e-6)
    # Control: a 1% different learning rate is caught at this tolerance.
    c = _made()
    off = torch.optim.Adam(c.parameters(), lr=a.config.lr * 1.01, weight_decay=1e-4)
    assert not torch.allclose(after_fused, _steps(c, off, x), rtol=1e-5, atol=1e-6)
    # The state dicts are interchangeable: a checkpoint of either resumes in the other.
    resumed = torch.optim.Adam(copy.deepcopy(a).parameters(), lr=a.config.lr)
    resumed.load_state_dict(fused.state_dict())
    assert resumed.state_dict()["state"].keys() == plain.state_dict()["state"].keys()


def test_adam_falls_back_where_fusing_does_not_apply():
    double = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    assert adam([double], lr=1e-3).defaults["fused"]
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))  # a device fused Adam lacks
    assert not adam([meta], lr=1e-3).defaults["fused"]
