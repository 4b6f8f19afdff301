"""FVSBN's maths: the density normalises, is autoregressive, samples follow it, and it trains."""

from __future__ import annotations

import itertools

import pytest
import torch

import genmodels
import genmodels.fvsbn  # registers the family
from tests.genmodels.checks import assert_samples_follow_log_prob, assert_training_fits_toy_data

ALL_STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8))).view(256, 1, 2, 4)


def far_from_uniform(seed: int, shape: tuple[int, ...] = (1, 2, 4), scale: float = 4.0):
    torch.manual_seed(seed)
    model = genmodels.build("fvsbn", input_shape=shape, seed=seed).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # large weights: a peaked, far-from-uniform distribution
    return model


def total_mass(model) -> float:
    with torch.no_grad():
        return model.log_prob(ALL_STATES).double().exp().sum().item()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sums_to_one_over_all_states(seed):
    model = far_from_uniform(seed)
    with torch.no_grad():
        lp = model.log_prob(ALL_STATES)
    assert lp.max() - lp.min() > 3.0  # the check is not trivially passed by a uniform model
    assert total_mass(model) == pytest.approx(1.0, abs=1e-5)


def test_broken_mask_fails_normalisation():
    """Control: letting logit d see x_d (the mask's diagonal) breaks normalisation."""
    model = far_from_uniform(0)
    model.linear.masks[0].fill_diagonal_(1.0)
    assert abs(total_mass(model) - 1.0) > 1e-2


def dependencies(model) -> torch.Tensor:
    """(D, D) boolean: logit i depends on input j (by the autograd Jacobian)."""
    x = torch.rand(1, model.num_dims)
    jac = torch.autograd.functional.jacobian(model.logits, x)  # (1, D, 1, D)
    return jac[0, :, 0, :].abs() > 0


def test_autoregressive_property_by_jacobian():
    model = far_from_uniform(0)
    deps = dependencies(model)
    allowed = torch.ones(8, 8, dtype=torch.bool).tril(-1)  # input j < output i (raster order)
    assert not (deps & ~allowed).any(), "an output sees its own or a later input"
    assert deps[allowed].all()  # every earlier input is used


def test_jacobian_check_catches_a_broken_mask():
    model = far_from_uniform(0)
    model.linear.masks[0].fill_(1.0)
    deps = dependencies(model)
    assert (deps & ~torch.ones(8, 8, dtype=torch.bool).tril(-1)).any()


def test_samples_follow_the_model():
    """Sampling agrees with log_prob: empirical frequencies over 2^4 states match exp(log_prob)."""
    model = far_from_uniform(0, shape=(4,), scale=3.0)
    assert_samples_follow_log_prob(model)


def test_training_lowers_the_nll():
    torch.manual_seed(0)
    assert_training_fits_toy_data(genmodels.build("fvsbn", input_shape=(8,), lr=3e-2))
