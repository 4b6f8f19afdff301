"""A two-hidden-layer DBM trained as Salakhutdinov & Hinton (2009) describe: mean-field posterior
q(h1) q(h2) for the data (fixed-point updates from a bottom-up pass), persistent Gibbs chains for
the model (h1 | v, h2, then v, h2 | h1), loss mean E(v, mu) - mean E(chains) with both detached,
so its gradient is minus the paper's stochastic-approximation gradient; autograd for it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ReferenceDBM(nn.Module):
    """``w1 (D, H1)``, ``w2 (H1, H2)``, biases ``bias_v`` (plus the buffer ``base_rate``),
    ``bias_h1``, ``bias_h2``, named as in ``genmodels`` DBM; chain noise from ``generator``."""

    def __init__(self, d: int, h1: int, h2: int, chains=100, gibbs=5, mean_field=10, seed=0):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(d, h1) * 0.01)
        self.w2 = nn.Parameter(torch.randn(h1, h2) * 0.01)
        self.bias_v = nn.Parameter(torch.zeros(d))
        self.bias_h1 = nn.Parameter(torch.zeros(h1))
        self.bias_h2 = nn.Parameter(torch.zeros(h2))
        self.register_buffer("base_rate", torch.zeros(d))
        self.num_chains, self.gibbs_steps, self.mf_steps = chains, gibbs, mean_field
        self.generator = torch.Generator().manual_seed(seed)
        self.chains: tuple[Tensor, Tensor, Tensor] | None = None

    def energy(self, v: Tensor, h1: Tensor, h2: Tensor) -> Tensor:
        a = self.bias_v + self.base_rate
        return (
            -((v @ self.w1) * h1).sum(1) - ((h1 @ self.w2) * h2).sum(1)
            - v @ a - h1 @ self.bias_h1 - h2 @ self.bias_h2
        )  # fmt: skip

    def mean_field(self, v: Tensor) -> tuple[Tensor, Tensor]:
        bottom_up = v @ self.w1 + self.bias_h1  # the same in every update
        mu1 = torch.sigmoid(bottom_up)
        mu2 = torch.sigmoid(mu1 @ self.w2 + self.bias_h2)
        for _ in range(self.mf_steps):
            mu1 = torch.sigmoid(bottom_up + mu2 @ self.w2.T)
            mu2 = torch.sigmoid(mu1 @ self.w2 + self.bias_h2)
        return mu1, mu2

    def draw(self, p: Tensor) -> Tensor:
        return (torch.rand(p.shape, generator=self.generator, dtype=p.dtype) < p).to(p.dtype)

    def loss(self, x: Tensor) -> Tensor:
        v = x.flatten(1)
        with torch.no_grad():
            mu1, mu2 = self.mean_field(v)
            if self.chains is None:  # start the chains from the batch
                start = v[torch.arange(self.num_chains) % len(v)]
                s1, s2 = self.mean_field(start)
                self.chains = (start, self.draw(s1), self.draw(s2))
            cv, _, c2 = self.chains
            for _ in range(self.gibbs_steps):
                c1 = self.draw(torch.sigmoid(cv @ self.w1 + c2 @ self.w2.T + self.bias_h1))
                cv = self.draw(torch.sigmoid(c1 @ self.w1.T + self.bias_v + self.base_rate))
                c2 = self.draw(torch.sigmoid(c1 @ self.w2 + self.bias_h2))
            self.chains = (cv, c1, c2)
        return self.energy(v, mu1, mu2).mean() - self.energy(cv, c1, c2).mean()
