"""VAE: the variational auto-encoder (Kingma & Welling 2013, https://arxiv.org/abs/1312.6114),
scored with the importance-weighted estimate of Burda, Grosse & Salakhutdinov 2015
(https://arxiv.org/abs/1509.00519).

A Gaussian encoder q(z|x) = N(mu(x), diag sigma^2(x)), a standard normal prior and a Bernoulli
decoder p(x|z) for binary data. Training maximises the ELBO with the reparameterisation trick
(KL in closed form). The ELBO is only a bound, so ``log_prob`` reports the importance-weighted
estimate log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q: a stochastic lower bound that rises with k
and tends to log p(x); ``score`` gives its delta-method standard error.

With ``iaf_steps > 0`` the posterior is refined by an inverse autoregressive flow (Kingma,
Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, https://arxiv.org/abs/1606.04934): each
step is z <- sigma * z + (1 - sigma) * m with (m, s) from a MADE-style masked network of z and a
context h(x), sigma = sigmoid(s + 1.5), so log q(z_T|x) = log q(z_0|x) - sum log sigma; the
ordering is reversed between steps. The KL term is then estimated by Monte Carlo.

Choices here: MLP encoder and decoder (ReLU), ``eval_k`` importance samples (default 100, drawn
in chunks to bound memory), ``embed`` = the posterior mean (of z_0: the flow's input).

Imputation (``impute``): not "encode the zero-filled image, decode the mean", but sampling
importance resampling over the posterior, MIWAE-style multiple imputation (Mattei & Frellsen
2019, https://arxiv.org/abs/1812.02633); the maths is in ``genmodels.impute_latent``. The proposal
is q(z|x~) on the input with its missing pixels filled (first by the model's marginal pixel
means, then ``impute_refine`` times by the weighted posterior-predictive mean), the IAF included
when ``iaf_steps > 0``, mixed defensively with the prior (a fraction ``impute_prior_mix`` of the
draws, drawn before the IAF); ``impute_k`` draws are weighted by p(x_obs|z) p(z) / q(z|x~), one is
resampled per imputation and x_mis ~ p(x_mis|z). Consistent as K -> ∞, approximate at finite K;
rows with nothing observed are exact ancestral samples (prior proposal, equal weights). Defaults:
K = 500, 2 refinement rounds (method ``vae-sir-k=500-refine=2``, ``iaf-...`` with the IAF), ~0.5-0.8
CPU-s per 100 imputations on MNIST (784 dims, latent 32, hidden 512-256, S = 10 per digit).
``log_prob_missing`` = log p^(x) - log p^(x_obs), importance-weighted estimates with
``impute_score_k`` draws from q(z|x) and the K final SIR draws: an estimate with a standard error,
neither a lower nor an upper bound (0 to switch it off).

Conditional VAE (``conditional=True``, ``num_classes`` K; Sohn, Lee & Yan 2015, "Learning
Structured Output Representation using Deep Conditional Generative Models"; Kingma, Rezende,
Mohamed & Welling 2014's M2 with the label observed; see ``genmodels.conditional``): the encoder
sees [x, one-hot y], the decoder [z, one-hot y], the prior stays N(0, I), and the ELBO bounds
log p(x | y). ``log_prob(x, condition={"label": y})`` is the importance-weighted estimate of the
conditional log p(x | y) (method ``"iwae-k=100-conditional:label"``); without a condition it
estimates the uniform label mixture's log (1/K) sum_y p(x | y) with ceil(eval_k / K) draws per
label (stratified over labels, so the cost is the unconditional one; method
``"iwae-k=10x10-marginal:uniform-label"``). ``embed`` and ``impute`` need a label-free posterior,
so a conditional VAE does not offer them (its capabilities drop both).

Three options for sample quality (all off by default; the model, its bound and its estimates are
otherwise unchanged):

* ``kl_weight`` beta (Higgins et al. 2017's beta-VAE): the training loss is
  -(log p(x|z) - beta KL). The reported ``elbo`` and the IWAE ``log_prob`` stay the true bound and
  estimate of the trained model (beta only changes which model training finds). Why: in a CVAE
  with beta = 1 the code z also carries the class (the encoder sees x), so a prior draw z decoded
  with label y is often a digit of another class; beta > 1 makes z costly, and the decoder takes
  the class from y. Measured (``benchmarks/conditional.py``, NOTES): see the README.
* ``ar_kernel`` k: the local autoregressive head of ``genmodels.layers.LocalARHead`` on the
  decoder's logits (images only): p(x | z) = prod_i Bernoulli(x_i; sigmoid(decode(z)_i +
  head(x_<i)_i)), exact given z, so the IWAE estimate is unchanged in kind; ``sample`` draws the
  pixels in raster order. Why: independent pixels give every sample salt-and-pepper noise at the
  strokes' edges. A VAE with a head does not offer ``impute`` (p(x_mis | z) no longer factorises).
* ``latent_temperature`` psi (sampling only; training, ``log_prob``, ``impute`` and ``embed``
  ignore it): ``sample`` draws z ~ N(0, psi^2 I) instead of the prior (``base.prior_draw``).
  psi < 1 keeps the codes near the prior's core, where the decoder has seen the most posterior
  mass: fewer misdrawn digits, less diversity, and samples that no longer come from the model
  ``log_prob`` scores (so 1, the exact ancestral sampler, is the default). Measured on the
  conditional benchmark as a fidelity/diversity trade-off (class accuracy beside class FD): see
  the README.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import conditional
from .base import (
    LOG_2PI,
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    ScoreResult,
    SearchSpec,
    check_latent_temperature,
    importance_weighted,
    log_mean_exp,
    prior_draw,
    register,
    std_normal_kl,
    std_normal_log_prob,
)
from .impute_latent import Proposal, base_mixture_proposal, sir_impute
from .layers import LocalARHead, MaskedLinear, made_degrees, made_masks


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class VAEConfig(BaseConfig):
    latent_dim: int = 32
    hidden_sizes: tuple[int, ...] = (512, 256)
    eval_k: int = 100
    eval_chunk: int = 25
    iaf_steps: int = 0
    iaf_hidden: int = 128
    impute_k: int = 500
    impute_refine: int = 2
    impute_score_k: int = 100
    impute_prior_mix: float = 0.2
    lr: float = 1e-3
    kl_weight: float = 1.0  # beta: the training loss is -(log p(x|z) - beta KL); see the docstring
    ar_kernel: int = 0  # a local autoregressive decoder head (k x k, odd >= 3); 0: none
    conditional: bool = False  # a CVAE, p(x | y): see genmodels.conditional
    num_classes: int = 10
    latent_temperature: float = 1.0  # sample: z ~ N(0, psi^2 I); 1 = the model's own sampler


class IAFStep(nn.Module):
    """One inverse-autoregressive step: z -> sigma * z + (1 - sigma) * m, (m, s) = AR(z, h).

    ``forward`` returns the new z and log|det dz_new/dz| = sum log sigma (the Jacobian is
    triangular in the step's order because m_i and s_i depend only on z_<i).
    """

    def __init__(self, dim: int, hidden: int, context: int, reverse: bool) -> None:
        super().__init__()
        order = torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)
        degrees = made_degrees(dim, (hidden,), order, torch.Generator(), random_connectivity=False)
        masks = made_masks(degrees, num_outputs_per_input=2)
        self.inp = MaskedLinear(dim, hidden, masks[0])
        self.ctx = nn.Linear(context, hidden)
        self.out = MaskedLinear(hidden, 2 * dim, masks[1])
        self.register_buffer("order", order)
        with torch.no_grad():  # start close to the identity
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def shift_and_scale(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.out(F.elu(self.inp(z) + self.ctx(h)))
        m, s = out.view(*z.shape, 2).unbind(-1)  # outputs are grouped input-major
        return m, s + 1.5  # a positive bias: sigma starts near 0.82, an easy start

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.shift_and_scale(z, h)
        sigma = torch.sigmoid(s)
        return sigma * z + (1 - sigma) * m, F.logsigmoid(s).sum(-1)

    def inverse(self, z_new: Tensor, h: Tensor) -> Tensor:
        """Solve for z one dimension at a time, in the step's order (D passes)."""
        z = torch.zeros_like(z_new)
        for i in torch.argsort(self.order).tolist():
            m, s = self.shift_and_scale(z, h)
            sigma = torch.sigmoid(s[..., i])
            z[..., i] = (z_new[..., i] - (1 - sigma) * m[..., i]) / sigma
        return z


@register
class VAE(GenerativeModel):
    family = "vae"
    likelihood = "estimate"
    data_kinds = ("binary",)
    Config = VAEConfig
    capabilities = frozenset({"log_prob", "embed", "impute"})
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
        if config.iaf_steps < 0 or config.iaf_hidden < 1:
            raise ValueError("vae: iaf_steps must be >= 0 and iaf_hidden >= 1")
        if config.impute_k < 1 or config.impute_refine < 0 or config.impute_score_k < 0:
            raise ValueError("vae: impute_k must be >= 1, impute_refine and impute_score_k >= 0")
        if not 0.0 <= config.impute_prior_mix < 1.0:
            raise ValueError(
                f"vae: impute_prior_mix must be in [0, 1), got {config.impute_prior_mix}"
            )
        if not (config.kl_weight > 0 and math.isfinite(config.kl_weight)):
            raise ValueError(f"vae: kl_weight must be a positive number, got {config.kl_weight}")
        check_latent_temperature("vae", config.latent_temperature)
        if config.ar_kernel and len(self.input_shape) != 3:
            raise ValueError(
                f"vae: ar_kernel needs image inputs (C, H, W), got input_shape {self.input_shape}"
            )
        self.num_labels = k = conditional.setup(self)
        # The local head couples the pixels given z: the SIR imputation's p(x_mis | z) would no
        # longer factorise, so a VAE with a head does not offer impute.
        if config.ar_kernel:
            self.capabilities = self.capabilities - {"impute"}
        if k:  # the posterior needs a label: no label-free code or imputation
            self.capabilities = self.capabilities - {"embed", "impute"}
        d, h, z = self.num_dims, config.hidden_sizes, config.latent_dim
        ctx = config.iaf_hidden if config.iaf_steps else 0
        self.encoder = mlp((d + k, *h, 2 * z + ctx))
        self.decoder = mlp((z + k, *reversed(h), d))
        self.iaf = nn.ModuleList(
            IAFStep(z, config.iaf_hidden, ctx, reverse=t % 2 == 1) for t in range(config.iaf_steps)
        )
        # created last, so a VAE without a head initialises exactly as before
        self.ar = LocalARHead(self.input_shape[0], config.ar_kernel) if config.ar_kernel else None

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of z_0, each ``(B, Z)`` (given ``labels``, for a
        conditional model)."""
        return self._encode(x, labels)[:2]

    def _with_labels(self, v: Tensor, labels: Tensor | None) -> Tensor:
        """``v`` ``(..., B, F)`` with the labels' one-hot appended (a conditional model)."""
        if not self.num_labels:
            return v
        if labels is None:
            raise ValueError("vae: a conditional VAE needs labels")
        hot = conditional.one_hot(labels, self.num_labels, v)
        return torch.cat([v, hot.expand(*v.shape[:-1], self.num_labels)], -1)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Bernoulli logits ``(..., B, D)`` of p(x | z) (or p(x | z, y)) for ``z`` ``(..., B, Z)``."""
        return self.decoder(self._with_labels(z, labels))

    def _encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        out = self.encoder(self._with_labels(x.flatten(1), labels))
        zdim = self.config.latent_dim
        mu, logvar, context = out[:, :zdim], out[:, zdim : 2 * zdim], out[:, 2 * zdim :]
        return mu, logvar.clamp(-12.0, 8.0), context

    def posterior(
        self, x: Tensor, eps: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """z ~ q(z|x) (q(z|x, y)) from standard-normal noise ``eps`` ``(..., B, Z)`` → (z, log q)."""
        mu, logvar, context = self._encode(x, labels)
        z = mu + eps * (0.5 * logvar).exp()
        log_q = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
        context = context.expand(*eps.shape[:-1], context.shape[-1])
        for step in self.iaf:
            z, log_det = step(z, context)
            log_q = log_q - log_det
        return z, log_q

    def decoder_log_prob(self, x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x | z) (p(x | z, y)) for ``x`` ``(B, D)`` and ``z`` ``(..., B, Z)`` → ``(..., B)``."""
        logits = self.decode(z, labels)
        if self.ar is not None:  # the same shift for every z: x's own drawn neighbours
            logits = logits + self.ar(x.view(len(x), *self.input_shape)).flatten(1)
        target = x.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].flatten(1).to(self.decoder[0].weight.dtype)
        labels = conditional.training_labels(self, batch) if self.num_labels else None
        elbo, kl = self._elbo(x, None, labels)
        loss = -elbo.mean() + (self.config.kl_weight - 1.0) * kl.mean()
        return {"loss": loss, "elbo": elbo.mean().detach(), "kl": kl.mean().detach()}

    def _elbo(
        self, x: Tensor, generator: torch.Generator | None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Single-sample ELBO and KL term ``(B,)``: analytic KL without IAF, Monte Carlo with."""
        mu, logvar, _ = self._encode(x, labels)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        if self.iaf:
            z, log_q = self.posterior(x, eps, labels)
            kl = log_q - std_normal_log_prob(z)
        else:
            z = mu + eps * (0.5 * logvar).exp()
            kl = std_normal_kl(mu, logvar)
        return self.decoder_log_prob(x, z, labels) - kl, kl

    def elbo(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """A single-sample Monte-Carlo ELBO ``(B,)`` (analytic KL where there is no IAF); a
        conditional model's bounds log p(x | y) and needs ``condition={"label": y}``."""
        x = self.check_input(x).flatten(1)
        labels = conditional.labels_from_condition(self, condition, len(x))
        return self._elbo(x, generator, labels)[0]

    def log_weights(
        self,
        x: Tensor,
        k: int,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior samples → ``(k, B)`` (given
        ``labels``: log p(x, z_i | y) - log q(z_i | x, y))."""
        x = x.flatten(1)
        shape, dtype = (len(x), self.config.latent_dim), x.dtype
        chunks = []
        for start in range(0, k, self.config.eval_chunk):
            m = min(self.config.eval_chunk, k - start)
            eps = torch.randn((m, *shape), generator=generator, dtype=dtype).to(x.device)
            z, log_q = self.posterior(x, eps, labels)  # (m, B, Z), (m, B)
            chunks.append(self.decoder_log_prob(x, z, labels) + std_normal_log_prob(z) - log_q)
        return torch.cat(chunks, 0)

    def _weights(
        self, x: Tensor, k: int, generator: torch.Generator | None, condition: Condition
    ) -> tuple[Tensor, str]:
        """The log importance weights ``(k', B)`` behind ``log_prob`` / ``score``, and the
        method: k draws from q(z|x) (q(z|x, y) given a label); a conditional model without a
        label: ceil(k / K) draws per label, stratified, for the uniform label mixture."""
        given = self.check_condition(condition)
        x = self.check_input(x)
        if given is not None:
            labels = conditional.check_labels(self, given["label"], len(x))
            return self.log_weights(x, k, generator, labels), f"iwae-k={k}-conditional:label"
        if not self.num_labels:
            return self.log_weights(x, k, generator), f"iwae-k={k}"
        per = math.ceil(k / self.num_labels)
        log_w = [
            self.log_weights(x, per, generator, torch.full((len(x),), y, dtype=torch.long))
            for y in range(self.num_labels)
        ]
        return torch.cat(log_w, 0), f"iwae-k={per}x{self.num_labels}-marginal:uniform-label"

    def log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        k: int | None = None,
        condition: Condition = None,
    ) -> Tensor:
        log_w, _ = self._weights(x, k or self.config.eval_k, generator, condition)
        return log_mean_exp(log_w, dim=0)

    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        log_w, method = self._weights(x, self.config.eval_k, generator, condition)
        estimate, stderr = importance_weighted(log_w)
        return ScoreResult(estimate, method=method, stderr=stderr)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Ancestral samples z ~ N(0, I), x ~ p(x | z); given ``condition={"label": y}`` (one
        label or one per sample), x ~ p(x | z, y); a conditional model without one draws y
        uniformly first. With ``latent_temperature`` psi != 1, z ~ N(0, psi^2 I) (see the
        module docstring): not the distribution ``log_prob`` scores."""
        labels = conditional.labels_from_condition(self, condition, n)
        if labels is None and self.num_labels:
            labels = conditional.uniform_labels(self, n, generator)
        weight = self.decoder[0].weight
        device = weight.device
        z = prior_draw(n, self.config.latent_dim, self.config.latent_temperature, generator, weight)
        logits = self.decode(z, labels)
        u = torch.rand(logits.shape, generator=generator).to(device)
        if self.ar is not None:
            shape = (n, *self.input_shape)
            return self.ar.sample(logits.view(shape), u.view(shape)).float()
        return (u < torch.sigmoid(logits)).float().view(n, *self.input_shape)

    def embed(self, x: Tensor) -> Tensor:
        return self.encode(self.check_input(x))[0]

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        """SIR over the posterior with q(z|x~) (the IAF included) as proposal; see the module
        docstring and ``genmodels.impute_latent``."""
        cfg = self.config
        dtype = self.decoder[0].weight.dtype

        def make_proposal(x_fill: Tensor, gen: torch.Generator | None) -> Proposal:
            mu, logvar, context = self._encode(x_fill)

            def flow(z: Tensor) -> tuple[Tensor, Tensor]:
                log_det = z.new_zeros(z.shape[:-1])
                ctx = context.expand(*z.shape[:-1], context.shape[-1])
                for step in self.iaf:
                    z, ld = step(z, ctx)
                    log_det = log_det + ld
                return z, log_det

            return base_mixture_proposal(
                mu, (0.5 * logvar).exp(), gen, cfg.impute_prior_mix, flow if self.iaf else None
            )

        return sir_impute(
            x.to(dtype), mask.to(dtype), generator, num_samples,
            make_proposal=make_proposal, decoder=self.decoder, latent_dim=cfg.latent_dim,
            k=cfg.impute_k, chunk=cfg.eval_chunk, refine=cfg.impute_refine,
            score_k=cfg.impute_score_k, fill_draws=100, label="iaf" if self.iaf else "vae",
        )  # fmt: skip
