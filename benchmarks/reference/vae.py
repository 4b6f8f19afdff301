"""The VAE of Kingma & Welling (2014): MLP encoder to (mu, log sigma^2), one reparameterised
draw z = mu + sigma * eps, MLP decoder to Bernoulli logits, loss = -(log p(x | z) - KL(q || N(0,
I))) with the Gaussian KL in closed form; autograd for the gradients. The log-variance is clamped
to [-12, 8] as in ``genmodels`` VAE, whose parameter names (``encoder.i``, ``decoder.i``) these
follow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def relu_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class ReferenceVAE(nn.Module):
    def __init__(self, d: int, hidden: tuple[int, ...], latent: int) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = relu_mlp([d, *hidden, 2 * latent])
        self.decoder = relu_mlp([latent, *reversed(hidden), d])

    def loss(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        mu, logvar = self.encoder(x).split(self.latent, dim=1)
        logvar = logvar.clamp(-12.0, 8.0)
        z = mu + torch.randn(mu.shape, dtype=mu.dtype) * (0.5 * logvar).exp()
        rec = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (rec + kl).mean()
