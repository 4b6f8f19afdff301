"""M2: the semi-supervised VAE of Kingma, Rezende, Mohamed & Welling 2014 ("Semi-supervised learning
with deep generative models", https://arxiv.org/abs/1406.5298), scored like ``genmodels.vae``
with an importance-weighted estimate (Burda, Grosse & Salakhutdinov 2015).

The generative model is p(y) p(z) p(x | y, z): a uniform class prior over K classes, z ~ N(0, I)
and a Bernoulli decoder of (z, one-hot y). The inference model is q(y | x) (a classifier) and
q(z | x, y) = N(mu(x, y), diag sigma^2(x, y)). For a labelled pair the bound is

    log p(x, y) >= ELBO(x, y) = E_q(z|x,y)[log p(x | y, z)] + log p(y) - KL(q(z|x,y) || p(z))

and for an unlabelled x the label is summed out by enumeration:

    log p(x) >= U(x) = sum_y q(y|x) ELBO(x, y) + H(q(y|x)).

Training minimises, per batch row, -ELBO(x, y) + alpha * (-log q(y|x)) for labelled rows
(``y >= 0``) and -U(x) for unlabelled ones (``y = -1``, or no ``y`` key at all), averaged over the
batch: the batch mean of Kingma's J^alpha. The classification term trains q(y|x) on the labels,
which the bound alone would not (q(y|x) only appears in the unlabelled bound). Kingma et al. set
alpha = 0.1 N in units where J sums over N examples; the per-example weight is the same under
any normalisation, so the default ``alpha`` = 400 is 0.1 x 4,000, the bundled MNIST's training
split (set it for other data; it is a per-labelled-row weight, so batches that over-sample the
labelled rows need a smaller one).

Choices here: ReLU MLPs (``hidden_sizes``) for the three networks, latent 50, a single-sample
reparameterised ELBO with the KL in closed form, ``eval_k`` = 20 draws per class (200 decoder
passes per example with K = 10: twice the VAE's 100, as the pipelines score the validation split
every epoch; raise it for a tighter published estimate). ``classify(x)`` = log q(y|x) ``(B, K)``.
``log_prob`` / ``score`` are the importance-weighted estimate with y enumerated: for each class
``eval_k`` draws z ~ q(z|x,y) and

    log p^(x) = log sum_y p(y) (1/k) sum_i p(x, z_i | y) / q(z_i | x, y),

a stochastic lower bound that rises with k and tends to log p(x) (the sum over y is exact);
``score`` gives its delta-method standard error (method ``iwae-enum-y-k=<k>``). ``elbo(x)`` is the
training bound U(x). A condition ``{"label": y}`` (``condition:label``) samples x ~ p(x | y, z) and
scores the conditional log p(x | y) (the same estimate for that class alone, method
``conditional-iwae-k=<k>``); unconditional sampling draws y from the uniform prior.

``shift`` (default 0, Kingma's model): in training, every digit (labelled or not) is translated
by its own random offset of up to ``shift`` pixels each way, zeros shifted in
(``genmodels.layers.random_shift``), as ``ssgan``'s option: the model, classifier and decoder
alike, then learns from translated digits; scoring, ``classify`` and sampling are unchanged.
Not in the paper; for the bundled 4,000 digits, where the labels-only classifier overfits 100
labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    LOG_2PI,
    BaseConfig,
    Condition,
    GenerativeModel,
    ScoreResult,
    SearchSpec,
    importance_weighted,
    register,
    std_normal_log_prob,
)
from .layers import check_shift, random_shift
from .vae import mlp


@dataclass(frozen=True)
class M2Config(BaseConfig):
    num_classes: int = 10
    latent_dim: int = 50
    hidden_sizes: tuple[int, ...] = (500,)
    alpha: float = 400.0  # weight of -log q(y|x) per labelled row (Kingma: 0.1 x N)
    eval_k: int = 20  # draws of z per class: 20 x K importance samples per example
    eval_chunk: int = 10
    lr: float = 1e-3
    shift: int = 0  # training digits randomly translated by up to this many pixels


@register
class M2VAE(GenerativeModel):
    family = "m2vae"
    likelihood = "estimate"
    data_kinds = ("binary",)
    Config = M2Config
    capabilities = frozenset({"log_prob", "classify", "condition:label"})
    sample_limit = 1024
    search_space = {
        "latent_dim": SearchSpec("choice", (20, 50)),
        "hidden_sizes": SearchSpec("choice", ((500,), (500, 500))),
        "alpha": SearchSpec("loguniform", low=10.0, high=1000.0),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: M2Config) -> None:
        super().__init__(input_shape, levels, config)
        if config.num_classes < 2:
            raise ValueError(f"m2vae: num_classes must be >= 2, got {config.num_classes}")
        if config.latent_dim < 1 or config.eval_k < 1 or config.eval_chunk < 1:
            raise ValueError("m2vae: latent_dim, eval_k and eval_chunk must be >= 1")
        if not config.alpha >= 0:
            raise ValueError(f"m2vae: alpha must be >= 0, got {config.alpha}")
        check_shift("m2vae", config.shift, self.input_shape)
        d, h, z, k = self.num_dims, config.hidden_sizes, config.latent_dim, config.num_classes
        self.classifier = mlp((d, *h, k))  # q(y | x)
        self.encoder = mlp((d + k, *h, 2 * z))  # q(z | x, y)
        self.decoder = mlp((z + k, *reversed(h), d))  # p(x | y, z)

    # ------------------------------------------------------------------------------ networks
    @property
    def _dtype(self) -> torch.dtype:
        return self.decoder[0].weight.dtype

    def class_log_probs(self, x: Tensor) -> Tensor:
        """log q(y | x) ``(B, K)`` for flattened ``x``."""
        return self.classifier(x).log_softmax(-1)

    def _onehot(self, y: Tensor) -> Tensor:
        return F.one_hot(y, self.config.num_classes).to(self._dtype)

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x, y) for flattened ``x`` ``(..., D)`` and classes
        ``y`` ``(...)`` (broadcast together)."""
        onehot = self._onehot(y)
        x = x.expand(*onehot.shape[:-1], x.shape[-1])
        out = self.encoder(torch.cat([x, onehot], -1))
        zdim = self.config.latent_dim
        return out[..., :zdim], out[..., zdim:].clamp(-12.0, 8.0)

    def decoder_log_prob(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log p(x | y, z) ``(...)`` for ``x`` ``(..., D)``, ``y`` ``(...)``, ``z`` ``(..., Z)``."""
        onehot = self._onehot(y).expand(*z.shape[:-1], self.config.num_classes)
        logits = self.decoder(torch.cat([z, onehot], -1))
        target = x.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def class_elbo(self, x: Tensor, y: Tensor, eps: Tensor) -> Tensor:
        """ELBO(x, y) with one reparameterised draw: ``x`` ``(B, D)``, ``y`` ``(..., B)``, noise
        ``eps`` ``(..., B, Z)`` → ``(..., B)`` (log p(y) = -log K included; KL in closed form)."""
        mu, logvar = self.encode(x, y)
        z = mu + eps * (0.5 * logvar).exp()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return self.decoder_log_prob(x, y, z) - kl - math.log(self.config.num_classes)

    def all_class_elbos(self, x: Tensor, eps: Tensor) -> Tensor:
        """ELBO(x, y) for every class → ``(B, K)``; ``eps`` is ``(K, B, Z)``."""
        k = self.config.num_classes
        y = torch.arange(k, device=x.device).unsqueeze(1).expand(k, len(x))
        return self.class_elbo(x, y, eps).transpose(0, 1)

    @staticmethod
    def unlabelled_bound(log_q: Tensor, elbos: Tensor) -> Tensor:
        """U(x) = sum_y q(y|x) (ELBO(x, y) - log q(y|x)) ``(B,)`` from ``(B, K)`` inputs."""
        return (log_q.exp() * (elbos - log_q)).sum(1)

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=self._dtype).to(device)

    def _labels(self, batch: Mapping[str, Tensor], n: int, device) -> Tensor:
        y = batch.get("y")
        if y is None:
            return torch.full((n,), -1, dtype=torch.long, device=device)
        y = torch.as_tensor(y).to(device=device, dtype=torch.long).reshape(-1)
        if len(y) != n:
            raise ValueError(f"m2vae: batch has {n} rows of x but {len(y)} labels")
        if ((y < -1) | (y >= self.config.num_classes)).any():
            raise ValueError(
                f"m2vae: labels must be -1 (unlabelled) or 0..{self.config.num_classes - 1}"
            )
        return y

    # ------------------------------------------------------------------------------ training
    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        """Batch mean of -ELBO(x, y) + alpha CE (labelled rows) and -U(x) (unlabelled rows).

        Noise: one ``randn`` of ``(K, B_unlabelled, Z)`` for the unlabelled rows (in row order),
        then one of ``(B_labelled, Z)`` for the labelled rows, from the global RNG (after the
        offsets of ``shift``, when it is on)."""
        x = batch["x"].to(self._dtype)
        if self.config.shift and self.training:  # a fresh translation per row and step
            x = random_shift(x.reshape(len(x), *self.input_shape), self.config.shift)
        x = x.flatten(1)
        y = self._labels(batch, len(x), x.device)
        k, zdim = self.config.num_classes, self.config.latent_dim
        lab, unl = (y >= 0).nonzero().squeeze(1), (y < 0).nonzero().squeeze(1)
        log_q = self.class_log_probs(x)
        total = x.new_zeros(())
        metrics: dict[str, Tensor] = {}
        if len(unl):
            xu = x[unl]
            eps = self._randn((k, len(xu), zdim), None, x.device)
            bound = self.unlabelled_bound(log_q[unl], self.all_class_elbos(xu, eps))
            total = total - bound.sum()
            metrics["bound_unlabelled"] = bound.mean().detach()
        if len(lab):
            xl, yl = x[lab], y[lab]
            elbo = self.class_elbo(xl, yl, self._randn((len(xl), zdim), None, x.device))
            ce = -log_q[lab, yl]
            total = total + (-elbo + self.config.alpha * ce).sum()
            metrics["elbo_labelled"] = elbo.mean().detach()
            metrics["ce_labelled"] = ce.mean().detach()
        loss = total / len(x)
        return {"loss": loss, **metrics}

    # ----------------------------------------------------------------------------- inference
    def _condition_labels(self, condition: Condition, n: int, device) -> Tensor | None:
        cond = self.check_condition(condition)
        if cond is None:
            return None
        y = torch.as_tensor(cond["label"])
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError("m2vae: condition label must be an integer class")
        y = y.long().reshape(-1)
        if len(y) == 1:
            y = y.expand(n)
        if len(y) != n:
            raise ValueError(f"m2vae: condition has {len(y)} labels for {n} rows")
        if ((y < 0) | (y >= self.config.num_classes)).any():
            raise ValueError(f"m2vae: condition label must be in 0..{self.config.num_classes - 1}")
        return y.to(device)

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """log q(y | x) ``(B, K)``."""
        return self.class_log_probs(self.check_input(x).to(self._dtype).flatten(1))

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The enumerated bound U(x) ``(B,)`` with one draw of z per class (a lower bound on
        log p(x) in expectation)."""
        x = self.check_input(x).to(self._dtype).flatten(1)
        k, zdim = self.config.num_classes, self.config.latent_dim
        elbos = self.all_class_elbos(x, self._randn((k, len(x), zdim), generator, x.device))
        return self.unlabelled_bound(self.class_log_probs(x), elbos)

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log p(x, z_i | y) - log q(z_i | x, y) for k draws per class → ``(k, B, K)``."""
        x = x.to(self._dtype).flatten(1)
        kk, zdim = self.config.num_classes, self.config.latent_dim
        y = torch.arange(kk, device=x.device).unsqueeze(1).expand(kk, len(x))  # (K, B)
        mu, logvar = self.encode(x, y)  # (K, B, Z)
        chunks = []
        for start in range(0, k, self.config.eval_chunk):
            m = min(self.config.eval_chunk, k - start)
            eps = self._randn((m, kk, len(x), zdim), generator, x.device)
            z = mu + eps * (0.5 * logvar).exp()
            log_q = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
            log_w = self.decoder_log_prob(x, y, z) + std_normal_log_prob(z) - log_q
            chunks.append(log_w.transpose(1, 2))  # (m, B, K)
        return torch.cat(chunks, 0)

    def _estimate(
        self, x: Tensor, generator: torch.Generator | None, condition: Condition
    ) -> tuple[Tensor, Tensor | None, str]:
        x = self.check_input(x)
        labels = self._condition_labels(condition, len(x), x.device)
        k = self.config.eval_k
        log_w = self.log_weights(x, k, generator)  # (k, B, K)
        if labels is not None:
            rows = torch.arange(len(x), device=x.device)
            estimate, stderr = importance_weighted(log_w[:, rows, labels])
            return estimate, stderr, f"conditional-iwae-k={k}"
        # p^ = sum_y p(y) mean_i w_iy: the per-class means are independent estimates, so
        # var(p^) = sum_y p(y)^2 var_i(w_iy) / k; the delta method gives sd(p^) / p^.
        log_py = -math.log(self.config.num_classes)
        estimate = torch.logsumexp(log_w.logsumexp(0) + log_py, -1) - math.log(k)
        if k == 1:
            return estimate, None, f"iwae-enum-y-k={k}"
        shift = log_w.amax(dim=(0, 2), keepdim=True)
        w = (log_w - shift).exp()  # (k, B, K), scaled by exp(-shift) per row
        var = (w.var(0, unbiased=True) / k).sum(-1) * math.exp(2 * log_py)
        p_hat = w.mean(0).sum(-1) * math.exp(log_py)
        return estimate, var.sqrt() / p_hat, f"iwae-enum-y-k={k}"

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        return self._estimate(x, generator, condition)[0]

    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        estimate, stderr, method = self._estimate(x, generator, condition)
        return ScoreResult(estimate, method=method, stderr=stderr)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        device = self.decoder[0].weight.device
        y = self._condition_labels(condition, n, device)
        if y is None:
            y = torch.randint(self.config.num_classes, (n,), generator=generator).to(device)
        z = self._randn((n, self.config.latent_dim), generator, device)
        onehot = self._onehot(y)
        p = torch.sigmoid(self.decoder(torch.cat([z, onehot], -1)))
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(device)
        return (u < p).to(p.dtype).view(n, *self.input_shape)
