"""FVSBN (fully visible sigmoid belief net; Frey 1998): p(x_d = 1 | x_<d) = sigmoid(b_d + W_d·x_<d)
with W strictly lower triangular in raster order; autograd for the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceFVSBN(nn.Module):
    """``linear.weight (D, D)``, ``linear.bias (D,)``, named as in ``genmodels`` FVSBN."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, d)
        self.register_buffer("lower", torch.ones(d, d).tril(diagonal=-1))
        self.own_buffers = ["lower"]

    def loss(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        logits = F.linear(x, self.linear.weight * self.lower, self.linear.bias)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()
