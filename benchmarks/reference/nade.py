"""NADE as the paper writes it: a running pre-activation ``a (B, H)`` updated one input at a
time, autograd for the gradients (Larochelle & Murray 2011, eq. 1-2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceNADE(nn.Module):
    """Raster order; W (H, D), V (D, H), b (D,), c (H,): the parameters of ``genmodels`` NADE."""

    def __init__(self, dims: int, hidden: int, activation: str = "sigmoid") -> None:
        super().__init__()
        self.act = torch.relu if activation == "relu" else torch.sigmoid
        self.W = nn.Parameter(torch.empty(hidden, dims).uniform_(-1, 1) / math.sqrt(dims))
        self.V = nn.Parameter(torch.empty(dims, hidden).uniform_(-1, 1) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(dims))
        self.c = nn.Parameter(torch.zeros(hidden))

    def logits(self, x: Tensor) -> Tensor:
        """``(B, D)`` logits of p(x_d = 1 | x_<d)."""
        a = self.c.expand(len(x), -1)
        out = []
        for d in range(x.shape[1]):
            out.append(self.act(a) @ self.V[d] + self.b[d])
            a = a + x[:, d, None] * self.W[:, d]
        return torch.stack(out, 1)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood in nats."""
        x = x.flatten(1)
        logits = self.logits(x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()
