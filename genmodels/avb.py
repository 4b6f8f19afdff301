"""AVB: Adversarial Variational Bayes (Mescheder, Nowozin & Geiger 2017,
https://arxiv.org/abs/1701.04722), with the paper's adaptive contrast (its Section 3.3).

A VAE whose approximate posterior is implicit: the encoder maps data and noise to a code,
z = g(x, eps) with eps ~ N(0, I), so q(z|x) can be sampled but log q(z|x) is unknown. A
discriminator T, trained by logistic regression to tell draws of q from draws of a known
contrast distribution, learns their log density ratio; with it the ELBO
E_q[log p(x|z) + log p(z) - log q(z|x)] is estimated and maximised through the reparameterised z.

Adaptive contrast (``adaptive_contrast=True``, the default): the contrast is r(z|x) =
N(mu(x), diag sd(x)^2), the mean and per-dimension sd of g(x, eps_j) over ``contrast_samples``
fresh noise draws per example (constants: no gradient through them). Then
KL(q || p) = KL(q || r) + E_q[log r(z|x) - log p(z)]: the second term is exact per draw, and T(x,
z~) at the normalised code z~ = (z - mu) / sd, trained to tell q's normalised draws from N(0, I),
estimates log q(z|x) - log r(z|x), which is small when q is near Gaussian. Per draw the objective
is log p(x|z) - T(x, z~) - [log r(z|x) - log p(z)]. Without it (``adaptive_contrast=False``) T(x,
z) contrasts q with p(z) and the objective is log p(x|z) - T(x, z); when q(z|x) is much narrower
than p(z) the logistic loss is small long before T reaches log q - log p on q's draws, T stays far
below it, and the encoder exploits that.

Training has two phases, stepped in order: ``"discriminator"`` (the logistic loss of T, with the
encoder's draws detached; only T's parameters are stepped) and ``"main"`` (encoder and decoder
maximise the objective above; gradients flow through T but its parameters are not stepped there).

Scoring. The default, ``eval="is"``, is a **bound**: importance sampling of the decoder with
a tractable proposal, the Gaussian r fitted to q's draws at x (the proposal of imputation, below:
``impute_moment_samples`` draws, ``impute_proposal_scale``, a fraction ``impute_prior_mix`` from
the prior), log (1/k) sum_i p(x, z_i) / r(z_i|x) with z_i ~ r. It uses neither T nor q, so its
expectation is <= log p(x) for any trained network (Jensen; Burda et al. 2016), approaching it as
k grows, with the delta-method standard error; method ``avb-is-gauss-k=...``, ``likelihood =
"bound"``, and the trainer selects on it. The learned T swung the T-based estimate by 150 nats
between epochs; the bound does not depend on T at all.

The T-based estimates remain as options (``likelihood = "estimate"`` then): ``eval="elbo"`` is
the mean over ``eval_k`` draws of the training objective above, with standard error
sd / sqrt(k); with adaptive contrast each draw gets its own r (so the k terms are independent;
it costs about 4x the plain variant's at the defaults). It would be the ELBO, a lower bound on
log p(x), only if T were exact; with a learned T it can land on either side of log p(x), by as
much as T is wrong. ``eval="iw"`` gives the importance-weighted variant log (1/k) sum_i
exp(term_i) (= log mean of p(x, z_i) / q(z_i|x) when T is exact), with the delta-method standard
error; it is never below the "elbo" estimate from the same draws. Method labels:
``avb[-ac]-{elbo,iw}-T-k=...``.

Choices here: binary data, a Bernoulli decoder and a standard normal prior; MLP networks (ReLU)
in which the encoder's noise and T's latent enter additively at the first layer (so the part
that depends on x alone is computed once for many draws); one discriminator step per main step,
each phase with its own Adam (``disc_lr`` for T, by default faster than the main ``lr``: T must
track its optimum as q moves). r's moments are drawn afresh for every use, not from fixed noise:
with fixed draws r is a function of x whose per-example misfit T cannot follow, and on MNIST the
encoder exploited exactly that (q turned far from Gaussian, T's part grew to ~14 nats, the score
fell 100 nats below a Gaussian importance-sampling bound); letting gradients flow through the
moments diverged. ``embed`` = the posterior mean of z, estimated from ``embed_samples`` noise draws
that are fixed (seed 0) and shared by every example, so it is deterministic and batch-independent.

What remains (measured on 4,000 binarised MNIST digits, defaults, 20 epochs = ~40 CPU-s, 500 test
digits, against importance sampling the same decoder with k = 1,000 draws from a diagonal Gaussian
fitted to q's draws, a stochastic lower bound on log p(x)): with adaptive contrast the estimate was
-108.0 vs -109.0 (seed 0; one seed only); without it -109.0 vs -120.6 (T's
KL ~6 nats where the Gaussian fit's is ~21; posterior sd ~0.08). Two known sources of the
remaining optimism: T sees z~ alone, so it learns the ratio averaged over r's sampling noise and
misses what z~ says about that noise (for a Gaussian q, up to ~0.08 nats per latent dimension at
16 draws, ~0.05-0.07 measured); and the learned q is far from a diagonal Gaussian (strongly
correlated codes: T's part was ~5-7 of the ~11-12 nats of KL), which T, a logistic regression,
still underestimates a little where q puts rarely-seen mass. Read the score as an estimate.

Imputation (``impute``): sampling importance resampling over the posterior (MIWAE-style multiple
imputation, Mattei & Frellsen 2019; the maths is in ``genmodels.impute_latent``). q(z|x) is
implicit (no density), so the proposal is the adaptive contrast's Gaussian r(z|x~): the mean and
per-dimension sd of g(x~, eps_j) over ``impute_moment_samples`` draws (sd times
``impute_proposal_scale``), on the input with its missing pixels filled (marginal pixel means,
then ``impute_refine`` rounds of the weighted posterior-predictive mean), mixed with the prior (a
fraction ``impute_prior_mix`` of the draws). Its density is exact, so the weights p(x_obs|z) p(z)
/ r(z|x~) involve neither T nor q, and the imputations are consistent as ``impute_k`` -> ∞ (exact
ancestral samples for rows with nothing observed). Defaults: K = 500, 2 refinement rounds
(``avb-sir-k=500-refine=2``), ~0.5-0.75 CPU-s per 100 imputations on MNIST. ``log_prob_missing`` =
log p^(x) - log p^(x_obs), each importance-weighted with the Gaussian proposal (at x for p(x),
``impute_score_k`` draws): an estimate with a standard error, neither bound, and free of T.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    ScoreResult,
    SearchSpec,
    importance_weighted,
    register,
    std_normal_log_prob,
)
from .impute_latent import Proposal, gaussian_proposal, sir_impute
from .optim import adam
from .vae import mlp

SD_FLOOR = 1e-6  # r's standard deviation, where the encoder ignores its noise


@dataclass(frozen=True)
class AVBConfig(BaseConfig):
    latent_dim: int = 8
    noise_dim: int = 32
    hidden_sizes: tuple[int, ...] = (512, 256)
    disc_hidden_sizes: tuple[int, ...] = (512, 256)
    disc_lr: float = 3e-3
    eval: Literal["is", "elbo", "iw"] = "is"
    eval_k: int = 100
    eval_chunk: int = 25  # draws per chunk; with adaptive contrast, encoder passes per chunk
    embed_samples: int = 32
    adaptive_contrast: bool = True  # contrast q with r(z|x), the Gaussian fit, not with p(z)
    contrast_samples: int = 16  # draws per example (and per use) for r's moments
    impute_k: int = 500
    impute_refine: int = 2
    impute_score_k: int = 100
    impute_moment_samples: int = 64  # draws of g(x~, eps) for the proposal's moments
    impute_proposal_scale: float = 1.0  # the proposal's sd = this x the moment-matched sd
    impute_prior_mix: float = 0.2  # the fraction of proposal draws from the prior (defensive)
    lr: float = 1e-3


class TwoInputMLP(nn.Module):
    """An MLP of (a, b) whose first layer is W_a a + W_b b + c: ``a`` ``(B, A)`` is projected
    once and broadcast over any leading dimensions of ``b`` ``(..., B, Bd)`` → ``(..., B, out)``."""

    def __init__(self, a_dim: int, b_dim: int, hidden: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.first_a = nn.Linear(a_dim, hidden[0])
        self.first_b = nn.Linear(b_dim, hidden[0], bias=False)
        self.rest = mlp((*hidden, out_dim))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.rest(F.relu(self.first_a(a) + self.first_b(b)))


@register
class AVB(GenerativeModel):
    family = "avb"
    likelihood = "bound"  # eval="is" (the default); "elbo" / "iw" make it an "estimate"
    data_kinds = ("binary",)
    Config = AVBConfig
    phases = ("discriminator", "main")
    capabilities = frozenset({"log_prob", "embed", "impute"})
    sample_limit = 1024
    search_space = {
        "latent_dim": SearchSpec("choice", (4, 8, 16)),
        "hidden_sizes": SearchSpec("choice", ((256,), (512, 256), (512, 512))),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
        "disc_lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: AVBConfig) -> None:
        super().__init__(input_shape, levels, config)
        for key in ("latent_dim", "noise_dim", "eval_chunk", "embed_samples"):
            if getattr(config, key) < 1:
                raise ValueError(f"avb: {key} must be >= 1, got {getattr(config, key)}")
        if config.contrast_samples < 4:  # z~ is t-like with m - 1 dof: E z~^2 needs m >= 4
            raise ValueError(
                f"avb: contrast_samples must be >= 4 (below, the estimate has no finite mean), "
                f"got {config.contrast_samples}"
            )
        if config.eval_k < 2:
            raise ValueError(
                f"avb: eval_k must be >= 2 (for a standard error), got {config.eval_k}"
            )
        for key in ("hidden_sizes", "disc_hidden_sizes"):
            if not getattr(config, key):
                raise ValueError(f"avb: {key} must name at least one hidden layer")
        if config.eval not in ("is", "elbo", "iw"):
            raise ValueError(f"avb: eval must be 'is', 'elbo' or 'iw', got {config.eval!r}")
        self.likelihood = "bound" if config.eval == "is" else "estimate"
        if not config.disc_lr > 0:
            raise ValueError(f"avb: disc_lr must be > 0, got {config.disc_lr}")
        if config.impute_k < 1 or config.impute_refine < 0 or config.impute_score_k < 0:
            raise ValueError("avb: impute_k must be >= 1, impute_refine and impute_score_k >= 0")
        if config.impute_moment_samples < 2 or not config.impute_proposal_scale > 0:
            raise ValueError("avb: impute_moment_samples must be >= 2, impute_proposal_scale > 0")
        if not 0.0 <= config.impute_prior_mix < 1.0:
            raise ValueError(
                f"avb: impute_prior_mix must be in [0, 1), got {config.impute_prior_mix}"
            )
        d, h, z = self.num_dims, config.hidden_sizes, config.latent_dim
        self.encoder = TwoInputMLP(d, config.noise_dim, h, z)  # z = g(x, eps)
        self.decoder = mlp((z, *reversed(h), d))  # Bernoulli logits of p(x|z)
        self.discriminator = TwoInputMLP(d, z, config.disc_hidden_sizes, 1)  # T(x, z)

    # ---------------------------------------------------------------------------------- pieces
    def encode(self, x: Tensor, eps: Tensor) -> Tensor:
        """z = g(x, eps) for ``x`` ``(B, D)`` and noise ``eps`` ``(..., B, E)`` → ``(..., B, Z)``."""
        return self.encoder(x, eps)

    def log_ratio(self, x: Tensor, z: Tensor) -> Tensor:
        """The discriminator T(x, z) for ``z`` ``(..., B, Z)`` → ``(..., B)``: the learned
        log q(z|x) - log r(z|x) at normalised codes z~ = (z - mu) / sd with adaptive contrast,
        else the learned log q(z|x) - log p(z) at z itself."""
        return self.discriminator(x, z).squeeze(-1)

    @torch.no_grad()
    def contrast(
        self, x: Tensor, generator: torch.Generator | None = None, shape: tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        """The mean and standard deviation ``(*shape, B, Z)`` of r(z|x), the Gaussian of
        adaptive contrast: the moments of g(x, eps_j) over ``contrast_samples`` fresh noise draws
        per example (independent ones for each index of ``shape``). Constants: no gradient flows
        through them."""
        m, e = self.config.contrast_samples, self.config.noise_dim
        z = self.encode(x, self._noise((*shape, m, len(x), e), generator, x))  # (*shape, m, B, Z)
        return z.mean(-3), z.std(-3).clamp_min(SD_FLOOR)

    def log_ratio_parts(
        self, x: Tensor, z: Tensor, moments: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The estimate of log q(z|x) - log p(z) at ``z`` ``(..., B, Z)``, in two parts
        ``(..., B)``: (learned, Gaussian). With adaptive contrast they are T(x, z~) ≈
        log q(z|x) - log r(z|x) and the exact log r(z|x) - log p(z); without, T(x, z) and 0.

        Args:
            x: ``(B, D)`` data.
            z: codes ``(..., B, Z)``.
            moments: r's ``(mu, sd)`` from ``contrast(x)``, to compute them once for many z.
        """
        if not self.config.adaptive_contrast:
            return self.log_ratio(x, z), z.new_zeros(z.shape[:-1])
        mu, sd = self.contrast(x) if moments is None else moments
        z_tilde = (z - mu) / sd
        gauss = 0.5 * (z.pow(2) - z_tilde.pow(2)).sum(-1) - sd.log().sum(-1)  # 2 pi cancels
        return self.log_ratio(x, z_tilde), gauss

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for ``x`` ``(B, D)`` and ``z`` ``(..., B, Z)`` → ``(..., B)``."""
        logits = self.decoder(z)
        target = x.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor):
        if generator is None:  # training: draw on the device
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)

    # -------------------------------------------------------------------------------- training
    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "discriminator":
            return self.discriminator.parameters()
        if phase == "main":
            return iter([*self.encoder.parameters(), *self.decoder.parameters()])
        raise ValueError(f"avb: unknown phase {phase!r}; phases are {self.phases}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        lrs = {"discriminator": cfg.disc_lr, "main": cfg.lr}
        return {
            p: adam(self.phase_parameters(p), lr=lrs[p], weight_decay=cfg.weight_decay)
            for p in self.phases
        }

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].flatten(1).to(self.decoder[0].weight.dtype)
        n, cfg = len(x), self.config
        eps = torch.randn(n, cfg.noise_dim, dtype=x.dtype, device=x.device)
        if phase == "discriminator":
            with torch.no_grad():
                z_q = self.encode(x, eps)  # (B, Z), pairs labelled 1
                if cfg.adaptive_contrast:  # contrast q with r: normalised, r becomes N(0, I)
                    mu, sd = self.contrast(x)
                    z_q = (z_q - mu) / sd
            z_p = torch.randn(n, cfg.latent_dim, dtype=x.dtype, device=x.device)  # labelled 0
            t_q, t_p = self.log_ratio(x, z_q), self.log_ratio(x, z_p)
            loss = F.softplus(-t_q).mean() + F.softplus(t_p).mean()
            accuracy = 0.5 * ((t_q > 0).float().mean() + (t_p < 0).float().mean())
            return {"loss": loss, "disc_accuracy": accuracy.detach()}
        if phase == "main":
            z = self.encode(x, eps)
            recon = self.decoder_log_prob(x, z)
            t, gauss = self.log_ratio_parts(x, z)
            elbo = (recon - t - gauss).mean()
            return {
                "loss": -elbo,
                "elbo_T": elbo.detach(),
                "recon": recon.mean().detach(),
                "kl": (t + gauss).mean().detach(),
                "kl_T": t.mean().detach(),
                "kl_gauss": gauss.mean().detach(),
            }
        raise ValueError(f"avb: unknown phase {phase!r}; phases are {self.phases}")

    # ------------------------------------------------------------------------------- inference
    def terms(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log p(x|z_i) + log p(z_i) - [estimated log q(z_i|x)] for k draws z_i ~ q(z|x)
        → ``(k, B)`` (``x`` is ``(B, D)``); see ``log_ratio_parts``. With adaptive contrast each
        draw gets its own r (moments of ``contrast_samples`` further draws), as in training, so
        the k terms are independent."""
        cfg = self.config
        ac = cfg.adaptive_contrast
        chunk = max(1, cfg.eval_chunk // cfg.contrast_samples) if ac else cfg.eval_chunk
        chunks = []
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            z = self.encode(x, self._noise((c, len(x), cfg.noise_dim), generator, x))  # (c, B, Z)
            moments = self.contrast(x, generator, (c,)) if ac else None
            t, gauss = self.log_ratio_parts(x, z, moments)
            chunks.append(self.decoder_log_prob(x, z) - t - gauss)
        return torch.cat(chunks, 0)

    def proposal(self, x: Tensor, generator: torch.Generator | None) -> Proposal:
        """A tractable stand-in for q(z|x): the defensive mixture (1 - pi) N(mu, diag (c sd)^2)
        + pi N(0, I), with mu, sd the moments of g(x, eps_j) over ``impute_moment_samples``
        fresh draws, c = ``impute_proposal_scale``, pi = ``impute_prior_mix``. Its density is
        exact: importance weights against it involve neither T nor q."""
        cfg = self.config
        m, e = cfg.impute_moment_samples, cfg.noise_dim
        z = self.encode(x, self._noise((m, len(x), e), generator, x))  # (m, B, Z)
        sd = z.std(0).clamp_min(SD_FLOOR) * cfg.impute_proposal_scale
        return gaussian_proposal(z.mean(0), sd, generator, cfg.impute_prior_mix)

    def is_terms(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log p(x|z_i) + log p(z_i) - log r(z_i|x) for k draws z_i ~ r, the Gaussian proposal
        (``proposal``) → ``(k, B)``: exact log importance weights, T unused."""
        draw = self.proposal(x, generator)
        chunks = []
        for start in range(0, k, self.config.eval_chunk):
            z, log_r = draw(min(self.config.eval_chunk, k - start))  # (c, B, Z), (c, B)
            chunks.append(self.decoder_log_prob(x, z) + std_normal_log_prob(z) - log_r)
        return torch.cat(chunks, 0)

    def score(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        k: int | None = None,
        condition: Condition = None,
    ) -> ScoreResult:
        """log p(x): a stochastic lower bound (``eval="is"``) or the T-based estimate.

        Args:
            x: ``(B, *input_shape)`` binary data.
            generator: the source of the posterior draws (same generator, same result).
            k: the number of draws (default ``config.eval_k``; at least 2).
        """
        self.check_condition(condition)
        x = self.check_input(x).flatten(1).to(self.decoder[0].weight.dtype)
        k = self.config.eval_k if k is None else k
        if k < 2:
            raise ValueError(f"avb: k must be >= 2 (for a standard error), got {k}")
        if self.config.eval == "is":
            estimate, stderr = importance_weighted(self.is_terms(x, k, generator))
            return ScoreResult(estimate, method=f"avb-is-gauss-k={k}", stderr=stderr)
        terms = self.terms(x, k, generator)
        if self.config.eval == "iw":
            estimate, stderr = importance_weighted(terms)
        else:
            estimate, stderr = terms.mean(0), terms.std(0, unbiased=True) / math.sqrt(k)
        ac = "-ac" if self.config.adaptive_contrast else ""
        return ScoreResult(estimate, method=f"avb{ac}-{self.config.eval}-T-k={k}", stderr=stderr)

    def log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        k: int | None = None,
        condition: Condition = None,
    ) -> Tensor:
        self.check_condition(condition)
        return self.score(x, generator, k).log_prob

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        device = self.decoder[0].weight.device
        z = torch.randn((n, self.config.latent_dim), generator=generator).to(device)
        p = torch.sigmoid(self.decoder(z.to(self.decoder[0].weight.dtype)))
        u = torch.rand(p.shape, generator=generator).to(device)
        return (u < p).float().view(n, *self.input_shape)

    def embed(self, x: Tensor) -> Tensor:
        """The posterior mean of z ``(B, Z)``: the average of g(x, eps_j) over ``embed_samples``
        fixed noise draws (seed 0), the same for every example."""
        x = self.check_input(x).flatten(1).to(self.decoder[0].weight.dtype)
        g = torch.Generator().manual_seed(0)
        eps = self._noise((self.config.embed_samples, 1, self.config.noise_dim), g, x)
        return self.encode(x, eps.expand(-1, len(x), -1)).mean(0)

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        """SIR over the posterior with the Gaussian r(z|x~) as proposal; see the module docstring
        and ``genmodels.impute_latent``."""
        cfg = self.config
        dtype = self.decoder[0].weight.dtype

        return sir_impute(
            x.to(dtype), mask.to(dtype), generator, num_samples,
            make_proposal=self.proposal, decoder=self.decoder, latent_dim=cfg.latent_dim,
            k=cfg.impute_k, chunk=cfg.eval_chunk, refine=cfg.impute_refine,
            score_k=cfg.impute_score_k, fill_draws=100, label="avb",
        )  # fmt: skip
