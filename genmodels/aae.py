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

Imputation (``impute``): Yeh et al.'s (2016) latent inpainting with the decoder as the
generator. Each of the S imputations is a random restart: z from the prior, then
``impute_steps`` (default 100) Adam steps (``impute_lr`` 0.05) on z alone minimising the
Bernoulli NLL of the observed entries under the decoder (weights 1, or Yeh's window weights with
``impute_window`` > 0) plus ``impute_prior_weight`` x -log N(z; 0, I). The AAE has no image
discriminator; its prior term is the prior's own log-density, known in closed form (the latent
discriminator only approximates the log-ratio of the aggregate posterior to it), and with weight
1 and uniform contextual weights the optimum is the MAP code given the observed pixels. The
missing entries are a Bernoulli draw of the decoder's means (``impute_output="sample"``) or
their threshold at 1/2 (``"mode"``). Networks in eval mode, no parameter gradients; no
likelihood (``log_prob_missing`` None); a row with nothing observed is a plain ``sample``. Cost
with the default networks on 784 dims, one thread: 1.0 CPU-s per 100 imputations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    SearchSpec,
    bernoulli_log_prob,
    register,
)
from .impute_chains import (
    context_weights,
    contextual_loss,
    frozen,
    impute_rows,
    inpaint_latents,
)
from .optim import adam
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
    impute_steps: int = 100  # Adam steps on the latent codes (Yeh et al.'s inpainting)
    impute_lr: float = 0.05
    impute_prior_weight: float = 1.0  # lambda of the prior term -log N(z; 0, I) (1: MAP of z)
    impute_window: int = 0  # contextual weights: 0 = every observed pixel 1; > 0 = Yeh's window
    impute_output: str = "sample"  # "sample" Bernoulli(p(x|z)) or "mode" p(x = 1|z) > 1/2
    impute_chunk: int = 1024  # codes optimised together (bounds memory)


@register
class AAE(GenerativeModel):
    family = "aae"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = AAEConfig
    phases = ("reconstruction", "discriminator", "generator")
    capabilities = frozenset({"embed", "impute"})
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
        for key in ("impute_steps", "impute_window"):
            if getattr(config, key) < 0:
                raise ValueError(f"aae: {key} must be >= 0, got {getattr(config, key)}")
        if config.impute_chunk < 1:
            raise ValueError(f"aae: impute_chunk must be >= 1, got {config.impute_chunk}")
        if not config.impute_lr > 0 or not config.impute_prior_weight >= 0:
            raise ValueError("aae: impute_lr must be > 0 and impute_prior_weight >= 0")
        if config.impute_output not in ("sample", "mode"):
            raise ValueError(
                f"aae: impute_output must be 'sample' or 'mode', got {config.impute_output!r}"
            )
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
            p: adam(
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

    # ----------------------------------------------------------------------------- imputation
    def inpainting_loss(
        self,
        z: Tensor,
        x: Tensor,
        weights: Tensor,
        prior_weight: float | None = None,
        context: bool = True,
    ) -> Tensor:
        """The inpainting loss ``(N,)`` of codes ``z`` for flattened images ``x`` ``(N, D)``: the
        Bernoulli NLL of the decoder at the entries ``weights`` covers, plus ``prior_weight``
        (default the config's) x -log N(z; 0, I) (up to a constant). ``context=False`` drops
        the contextual term (a control)."""
        lam = self.config.impute_prior_weight if prior_weight is None else prior_weight
        loss = 0.5 * lam * z.pow(2).sum(1)
        if context:
            loss = loss + contextual_loss(self.decoder(z), x, weights)
        return loss

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        cfg = self.config
        like = self.decoder[0].weight
        samples = impute_rows(self, x, mask, num_samples, self._inpaint, like, generator)
        method = (
            f"latent-inpainting-adam-steps={cfg.impute_steps}-lr={cfg.impute_lr}"
            f"-prior=gaussian-weight={cfg.impute_prior_weight}-window={cfg.impute_window}"
            f"-output={cfg.impute_output}"
        )
        return ImputeResult(samples, method)

    def _inpaint(self, x: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
        """Latent inpainting of flattened rows ``x`` ``(N, D)`` under ``mask``: one code per row
        from the prior, ``impute_steps`` Adam steps on the codes alone, then the decoder's
        Bernoulli means sampled (or thresholded) everywhere."""
        cfg = self.config
        like = self.decoder[0].weight
        with frozen(self):
            z0 = torch.randn((len(x), cfg.latent_dim), generator=generator, dtype=like.dtype)
            weights = context_weights(mask, self.input_shape, cfg.impute_window)
            z = inpaint_latents(
                lambda z, xr, wr: self.inpainting_loss(z, xr, wr),
                x,
                weights,
                z0.to(like.device),
                cfg.impute_steps,
                cfg.impute_lr,
                cfg.impute_chunk,
            )
            p = torch.sigmoid(self.decoder(z))
        if cfg.impute_output == "mode":
            return (p > 0.5).to(p.dtype)
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        return (u < p).to(p.dtype)
