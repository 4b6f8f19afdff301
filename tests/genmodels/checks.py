"""Checks shared by the families' maths tests."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


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


def toy_data(n: int = 512, noise: float = 0.05) -> torch.Tensor:
    """Two prototypes on 8 dims with 5% bit flips: a strongly structured distribution."""
    g = torch.Generator().manual_seed(0)
    protos = torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]]).float()
    x = protos[torch.randint(2, (n,), generator=g)]
    flips = torch.rand(n, 8, generator=g) < noise
    return torch.where(flips, 1.0 - x, x)


def assert_training_fits_toy_data(model, steps: int = 200) -> None:
    """Full-batch Adam on ``toy_data`` takes the NLL from near uniform to near the entropy."""
    opt = model.configure_optimizers()["main"]
    x = toy_data()
    with torch.no_grad():
        before = -model.log_prob(x).mean().item()
    for _ in range(steps):
        opt.zero_grad()
        model({"x": x})["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = -model.log_prob(x).mean().item()
    # uniform = 8 ln 2 ≈ 5.5 nats; the data's entropy ≈ ln 2 + 8 H(0.05) ≈ 2.3 nats
    assert before > 4.5 and after < 3.2, (before, after)


def is_a_shift(out: torch.Tensor, x: torch.Tensor, k: int) -> tuple[int, int] | None:
    """The (dy, dx) in 0..2k with ``out`` = zero-padded ``x`` cropped there, or None."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (k, k, k, k))
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            if torch.equal(padded[..., dy : dy + h, dx : dx + w], out):
                return dy, dx
    return None


def top_singular_values(net: torch.nn.Module) -> list[float]:
    """The largest singular value of each linear / conv weight in ``net`` as used in the forward
    pass (spectrally normalised layers: the normalised weight), in module order."""
    return [
        torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        for m in net.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
