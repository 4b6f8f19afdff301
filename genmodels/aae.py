"""AAE: the adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2015,
https://arxiv.org/abs/1511.05644).

An autoencoder whose code's aggregate posterior q(z) = E_x q(z|x) is pushed onto a prior p(z) by
a GAN played in the latent space: a discriminator D(z) learns to tell prior draws from codes, and
the encoder, acting as the generator, learns to fool it. Once q(z) matches p(z), decoding prior
draws gives samples from the data distribution. There is no tractable likelihood.

Choices here: three phases per step, one optimiser each. ``reconstruction`` steps the encoder and
decoder on the Bernoulli negative log-likelihood of x given its code; ``discriminator`` steps D on
prior draws versus (detached) codes; ``generator`` steps the encoder alone on the non-saturating
loss -log D(code). Standard normal prior; MLP networks (ReLU). The encoder is deterministic by
default (``encoder="deterministic"``) or Gaussian (``"gaussian"``: z = mu + sigma * eps with the
reparameterisation trick, as in the paper's second option); ``embed`` is the code, i.e. mu for
the Gaussian encoder. The adversarial phases use their own ``adv_lr`` and Adam betas (0.5, 0.999).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BaseConfig, Condition, GenerativeModel, SearchSpec, bernoulli_log_prob, register
from .vae import mlp

ENCODERS = ("deterministic", "gaussian")


@dataclass(frozen=True)
class AAEConfig(BaseConfig):
    latent_dim: int = 8
    hidden_sizes: tuple[int, ...] = (512, 256)
    disc_hidden: tuple[int, ...] = (256, 256)
    encoder: str = "deterministic"  # "deterministic" | "gaussian"
    lr: float = 1e-3
    adv_lr: float = 2e-4


@register
class AAE(GenerativeModel):
    family = "aae"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = AAEConfig
    phases = ("reconstruction", "discriminator", "generator")
    capabilities = frozenset({"embed"})
    sample_limit = 1024
    search_space = {
        "latent_dim": SearchSpec("choice", (4, 8, 16)),
        "hidden_sizes": SearchSpec("choice", ((256,), (512, 256), (1000, 1000))),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
        "adv_lr": SearchSpec("loguniform", low=5e-5, high=1e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: AAEConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.latent_dim < 1:
            raise ValueError(f"aae: latent_dim must be >= 1, got {config.latent_dim}")
        if config.encoder not in ENCODERS:
            raise ValueError(f"aae: encoder must be one of {ENCODERS}, got {config.encoder!r}")
        if not config.lr > 0:
            raise ValueError(f"aae: lr must be > 0, got {config.lr}")
        if not config.adv_lr > 0:
            raise ValueError(f"aae: adv_lr must be > 0, got {config.adv_lr}")
        d, h, z = self.num_dims, config.hidden_sizes, config.latent_dim
        out = 2 * z if config.encoder == "gaussian" else z
        self.encoder = mlp((d, *h, out))
        self.decoder = mlp((z, *reversed(h), d))
        self.discriminator = mlp((z, *config.disc_hidden, 1))

    # ------------------------------------------------------------------------------- networks
    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The code's mean and (Gaussian encoder) log-variance, each ``(B, Z)``."""
        out = self.encoder(x.flatten(1))
        if self.config.encoder == "deterministic":
            return out, None
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def encode(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """The code ``(B, Z)`` of ``x``: a draw from q(z|x) using standard-normal ``eps`` for the
        Gaussian encoder (``eps=None`` gives its mean), the deterministic code otherwise."""
        mu, logvar = self._stats(x)
        if logvar is None or eps is None:
            return mu
        return mu + eps * (0.5 * logvar).exp()

    def _code(self, x: Tensor) -> Tensor:
        """A training-time code: fresh encoder noise for the Gaussian encoder."""
        eps = None
        if self.config.encoder == "gaussian":
            eps = torch.randn(len(x), self.config.latent_dim, device=x.device, dtype=x.dtype)
        return self.encode(x, eps)

    # ------------------------------------------------------------------------------- training
    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "reconstruction":
            return iter([*self.encoder.parameters(), *self.decoder.parameters()])
        if phase == "discriminator":
            return self.discriminator.parameters()
        if phase == "generator":
            return self.encoder.parameters()
        raise ValueError(f"aae: unknown phase {phase!r}; phases are {self.phases}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        lrs = {"reconstruction": cfg.lr, "discriminator": cfg.adv_lr, "generator": cfg.adv_lr}
        betas = {"reconstruction": (0.9, 0.999)}
        return {
            p: torch.optim.Adam(
                self.phase_parameters(p),
                lr=lrs[p],
                betas=betas.get(p, (0.5, 0.999)),
                weight_decay=cfg.weight_decay,
            )
            for p in self.phases
        }

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].flatten(1).to(self.decoder[0].weight.dtype)
        if phase == "reconstruction":
            nll = -bernoulli_log_prob(self.decoder(self._code(x)), x).mean()
            return {"loss": nll, "nll": nll.detach()}
        if phase == "discriminator":
            with torch.no_grad():
                fake = self._code(x)
            real = torch.randn_like(fake)  # prior draws
            d_real, d_fake = self.discriminator(real), self.discriminator(fake)
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()  # -log D - log(1 - D)
            acc = 0.5 * ((d_real > 0).float().mean() + (d_fake < 0).float().mean())
            return {"loss": loss, "d_loss": loss.detach(), "d_accuracy": acc.detach()}
        if phase == "generator":
            d_fake = self.discriminator(self._code(x))
            loss = F.softplus(-d_fake).mean()  # non-saturating: -log D(code)
            return {"loss": loss, "g_loss": loss.detach()}
        raise ValueError(f"aae: unknown phase {phase!r}; phases are {self.phases}")

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def decode_probs(self, z: Tensor) -> Tensor:
        """Bernoulli means p(x = 1 | z) ``(B, *input_shape)`` of codes ``z`` ``(B, Z)``."""
        return torch.sigmoid(self.decoder(z)).view(len(z), *self.input_shape)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        weight = self.decoder[0].weight
        z = torch.randn((n, self.config.latent_dim), generator=generator, dtype=weight.dtype)
        p = self.decode_probs(z.to(weight.device))
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        return (u < p).to(p.dtype)

    def embed(self, x: Tensor) -> Tensor:
        return self.encode(self.check_input(x).flatten(1).to(self.decoder[0].weight.dtype))
