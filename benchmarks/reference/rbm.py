"""A binary RBM trained by persistent contrastive divergence, as Tieleman (2008) and Hinton's
practical guide write it: free energy F(v) = -b·v - sum_j softplus(c_j + W_j·v), persistent
chains advanced k block-Gibbs sweeps per update, loss mean F(data) - mean F(chains) (chains
detached), autograd for the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceRBM(nn.Module):
    """``weight (H, V)``, ``visible_bias`` (relative to the buffer ``base_bias``, the data's
    log-odds, as in ``genmodels`` RBM), ``hidden_bias``; ``chains`` persistent chains, ``k``
    sweeps per update, noise from the global generator."""

    def __init__(self, visible: int, hidden: int, chains: int = 100, k: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(hidden, visible) * 0.01)
        self.visible_bias = nn.Parameter(torch.zeros(visible))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("base_bias", torch.zeros(visible))
        self.num_chains, self.k = chains, k
        self.chains: Tensor | None = None

    def free_energy(self, v: Tensor) -> Tensor:
        b = self.base_bias + self.visible_bias
        return -(v @ b) - F.softplus(v @ self.weight.T + self.hidden_bias).sum(1)

    def loss(self, x: Tensor) -> Tensor:
        v = x.flatten(1)
        with torch.no_grad():
            if self.chains is None:  # start from the base rates
                p = torch.sigmoid(self.base_bias).expand(self.num_chains, -1)
                self.chains = (torch.rand(p.shape, dtype=p.dtype) < p).to(p.dtype)
            s = self.chains
            for _ in range(self.k):
                p_h = torch.sigmoid(s @ self.weight.T + self.hidden_bias)
                h = (torch.rand(p_h.shape, dtype=v.dtype) < p_h).to(v.dtype)
                p_v = torch.sigmoid(h @ self.weight + self.base_bias + self.visible_bias)
                s = (torch.rand(p_v.shape, dtype=v.dtype) < p_v).to(v.dtype)
            self.chains = s
        return self.free_energy(v).mean() - self.free_energy(s).mean()
