"""VAE: the variational auto-encoder (Kingma & Welling 2013, https://arxiv.org/abs/1312.6114),
scored with the importance-weighted estimate of Burda, Grosse & Salakhutdinov 2015
(https://arxiv.org/abs/1509.00519).

A Gaussian encoder q(z|x) = N(mu(x), diag sigma^2(x)), a standard normal prior and a Bernoulli
decoder p(x|z) for binary data. Training maximises the ELBO with the reparameterisation trick
(KL in closed form). The ELBO is only a bound, so ``log_prob`` reports the importance-weighted
estimate log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q: a stochastic lower bound that rises with k
and tends to log p(x); ``score`` gives its delta-method standard error.

Choices here: MLP encoder and decoder (ReLU), ``eval_k`` importance samples (default 100, drawn
in chunks to bound memory), ``embed`` = the posterior mean.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BaseConfig, GenerativeModel, ScoreResult, SearchSpec, log_mean_exp, register

LOG_2PI = math.log(2 * math.pi)


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def std_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


@dataclass(frozen=True)
class VAEConfig(BaseConfig):
    latent_dim: int = 32
    hidden_sizes: tuple[int, ...] = (512, 256)
    eval_k: int = 100
    eval_chunk: int = 25
    lr: float = 1e-3


@register
class VAE(GenerativeModel):
    family = "vae"
    likelihood = "estimate"
    data_kinds = ("binary",)
    Config = VAEConfig
    capabilities = frozenset({"log_prob", "embed"})
    sample_limit = 1024
    search_space = {
        "latent_dim": SearchSpec("choice", (16, 32, 64)),
        "hidden_sizes": SearchSpec("choice", ((256,), (512, 256), (512, 512))),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: VAEConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.latent_dim < 1 or config.eval_k < 1 or config.eval_chunk < 1:
            raise ValueError("vae: latent_dim, eval_k and eval_chunk must be >= 1")
        d, h, z = self.num_dims, config.hidden_sizes, config.latent_dim
        self.encoder = mlp((d, *h, 2 * z))
        self.decoder = mlp((z, *reversed(h), d))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each ``(B, Z)``."""
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for ``x`` ``(B, D)`` and ``z`` ``(..., B, Z)`` → ``(..., B)``."""
        logits = self.decoder(z)
        target = x.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].float().flatten(1)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = self.decoder_log_prob(x, z)  # (B,)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        elbo = rec - kl
        loss = -elbo.mean()
        return {"loss": loss, "elbo": elbo.mean().detach(), "kl": kl.mean().detach()}

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A single-sample Monte-Carlo ELBO ``(B,)`` (analytic KL)."""
        x = self.check_input(x).flatten(1)
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        z = mu + eps * (0.5 * logvar).exp()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return self.decoder_log_prob(x, z) - kl

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior samples → ``(k, B)``."""
        x = x.flatten(1)
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        chunks = []
        for start in range(0, k, self.config.eval_chunk):
            m = min(self.config.eval_chunk, k - start)
            eps = torch.randn((m, *mu.shape), generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + eps * std  # (m, B, Z)
            log_q = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
            chunks.append(self.decoder_log_prob(x, z) + std_normal_log_prob(z) - log_q)
        return torch.cat(chunks, 0)

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, k: int | None = None
    ) -> Tensor:
        x = self.check_input(x)
        return log_mean_exp(self.log_weights(x, k or self.config.eval_k, generator), dim=0)

    def score(self, x: Tensor, generator: torch.Generator | None = None) -> ScoreResult:
        x = self.check_input(x)
        k = self.config.eval_k
        lw = self.log_weights(x, k, generator)  # (k, B)
        w = (lw - lw.max(0, keepdim=True).values).exp()
        # Delta method: sd(log mean w) ~= sd(w) / (sqrt(k) * mean(w)).
        stderr = w.std(0, unbiased=True) / (math.sqrt(k) * w.mean(0)) if k > 1 else None
        return ScoreResult(log_mean_exp(lw, dim=0), method=f"iwae-k={k}", stderr=stderr)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        z = torch.randn((n, self.config.latent_dim), generator=generator).to(device)
        p = torch.sigmoid(self.decoder(z))
        u = torch.rand(p.shape, generator=generator).to(device)
        return (u < p).float().view(n, *self.input_shape)

    def embed(self, x: Tensor) -> Tensor:
        return self.encode(self.check_input(x))[0]
