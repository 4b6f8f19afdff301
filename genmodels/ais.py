"""Annealed importance sampling (Neal 2001, https://arxiv.org/abs/physics/9803008), as used for
Boltzmann machines by Salakhutdinov & Murray 2008 (https://doi.org/10.1145/1390156.1390266).

To estimate the partition function Z_K of an unnormalised density f_K, anneal from a tractable
f_0 (known Z_0) through f_k, k = 1..K, with inverse temperatures 0 = beta_0 < ... < beta_K = 1.
M independent chains start from exact samples of f_0; at step k each chain's log weight gains
log f_k(x) - log f_{k-1}(x) and then x moves by a transition that leaves f_k invariant. Then
E[w] = Z_K / Z_0, so log Z_K ≈ log Z_0 + log mean w, with the delta-method standard error
sd(w) / (sqrt(M) mean(w)) (``base.importance_weighted``). In log space the estimate is biased
low (Jensen): it is a stochastic lower bound on log Z, which makes log-likelihoods derived from it
optimistic; the standard error and the effective sample size say how far to trust it.

``anneal`` is generic: the family supplies ``log_f(state, beta)`` (``(M,)``), ``transition``
and exact samples from the base. The state may be a tensor or a tuple of tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import importance_weighted

State = Any


@dataclass(frozen=True)
class AISResult:
    """An AIS estimate of log Z.

    Attributes:
        log_z: the estimate log Z_0 + log mean w.
        stderr: its delta-method standard error.
        log_weights: ``(M,)`` the chains' final log importance weights (for diagnostics).
        num_chains: M.
        num_betas: K, the number of intermediate distributions (including beta = 1).
    """

    log_z: float
    stderr: float
    log_weights: Tensor
    num_chains: int
    num_betas: int

    @property
    def effective_sample_size(self) -> float:
        """(sum w)^2 / sum w^2: how many of the M chains effectively count."""
        w = (self.log_weights - self.log_weights.max()).double().exp()
        return float(w.sum() ** 2 / w.pow(2).sum())

    def as_dict(self) -> dict[str, float | int]:
        return {
            "log_z": self.log_z,
            "log_z_stderr": self.stderr,
            "ais_chains": self.num_chains,
            "ais_betas": self.num_betas,
            "ais_ess": self.effective_sample_size,
        }


def schedule(num_betas: int) -> Tensor:
    """Inverse temperatures beta_1..beta_K (``(K,)``, float64, ending at 1), spaced like
    Salakhutdinov & Murray's 500 / 4,000 / 10,000 steps over [0, 0.5] / [0.5, 0.9] / [0.9, 1]:
    fine steps where the distribution changes fastest, scaled to ``num_betas``."""
    if num_betas < 3:
        return torch.linspace(0.0, 1.0, num_betas + 1, dtype=torch.float64)[1:]
    n1 = max(1, round(num_betas * 500 / 14500))
    n2 = max(1, round(num_betas * 4000 / 14500))
    n3 = max(1, num_betas - n1 - n2)
    parts = [
        torch.linspace(0.0, 0.5, n1 + 1, dtype=torch.float64)[1:],
        torch.linspace(0.5, 0.9, n2 + 1, dtype=torch.float64)[1:],
        torch.linspace(0.9, 1.0, n3 + 1, dtype=torch.float64)[1:],
    ]
    return torch.cat(parts)


@torch.no_grad()
def anneal(
    log_f: Callable[[State, float], Tensor],
    transition: Callable[[State, float, torch.Generator | None], State],
    initial: State,
    log_z0: float,
    betas: Tensor,
    generator: torch.Generator | None = None,
) -> AISResult:
    """Run AIS from exact base samples ``initial`` through the inverse temperatures ``betas``.

    Args:
        log_f: unnormalised log density of the intermediate distribution at ``beta`` → ``(M,)``.
        transition: one Markov step leaving the ``beta`` distribution invariant.
        initial: M exact samples of the base distribution (beta = 0).
        log_z0: the base's log partition function.
        betas: ``(K,)`` increasing inverse temperatures ending at 1 (see ``schedule``).
    """
    betas = [float(b) for b in betas]
    if not betas or betas[-1] != 1.0 or any(b1 <= b0 for b0, b1 in zip([0.0, *betas], betas)):
        raise ValueError("betas must increase strictly from above 0 to exactly 1")
    state = initial
    log_w = torch.zeros_like(log_f(state, 0.0), dtype=torch.float64)
    previous = 0.0
    for k, beta in enumerate(betas):
        log_w += (log_f(state, beta) - log_f(state, previous)).double()
        if k < len(betas) - 1:  # the last transition would not change the weights
            state = transition(state, beta, generator)
        previous = beta
    estimate, stderr = importance_weighted(log_w[:, None])
    return AISResult(
        log_z=log_z0 + float(estimate),
        stderr=float(stderr) if stderr is not None else float("inf"),
        log_weights=log_w,
        num_chains=len(log_w),
        num_betas=len(betas),
    )
