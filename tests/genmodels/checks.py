"""Checks shared by the families' maths tests."""

from __future__ import annotations

import itertools

import torch


def binary_states(shape: tuple[int, ...]) -> torch.Tensor:
    """Every binary tensor of ``shape``, ``(2^D, *shape)``, in binary-counting order."""
    d = int(torch.tensor(shape).prod())
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d))).view(2**d, *shape)


def assert_samples_follow_log_prob(model, n: int = 20000, tol: float = 0.015) -> None:
    """Empirical frequencies of ``n`` samples over every binary state match exp(log_prob)."""
    states = binary_states(model.input_shape)
    with torch.no_grad():
        probs = model.log_prob(states).exp().float()
    assert probs.max() - probs.min() > 0.1  # not near-uniform: the check has teeth
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, *model.input_shape)
    weights = 2.0 ** torch.arange(model.num_dims - 1, -1, -1)
    idx = (x.flatten(1) @ weights).long()
    freq = torch.bincount(idx, minlength=len(states)).float() / n
    assert (freq - probs).abs().max() < tol
