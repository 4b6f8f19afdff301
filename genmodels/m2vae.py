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

``classifier_noise`` (default 0, Kingma's model): in training, q(y | x) reads its input plus
Gaussian noise of this sd (a fresh draw per row and step, after ``shift``), in both the
unlabelled bound and the labelled cross-entropy; the encoder and decoder read the input as it
is, and ``classify`` reads it without noise. Not in the paper: the regulariser of the K+1 GAN's
classifier (``ssgan``'s ``input_noise``), for a classifier fitted to 100 labels.
``classifier_channels`` > 0 (default 0: the MLP) makes q(y | x) a small CNN (``ConvClassifier``:
a 3x3 convolution of that width, two of twice the width at stride 2, a hidden layer of 128) on image
inputs; the encoder and decoder stay MLPs.

``m1_latent_dim`` > 0 (default 0: M2 alone) is Kingma's stacked model **M1+M2**: an M1 VAE
q(z1 | x) = N(mu1(x), diag sigma1^2(x)), p(x | z1) Bernoulli (``m1_hidden_sizes``; its own prior
N(0, I) in its bound), and M2 above it with the continuous z1 as its data: the networks above take
z1 for x, and p(z1 | y, z2) is a diagonal Gaussian with learned mean and log-variance. Training
minimises, per batch row, M1's negative ELBO on the pixels plus M2's loss (as above) on one draw
z1 ~ q(z1 | x) with the gradient stopped at z1: M1 is the unsupervised VAE of the paper, fitted
on every digit, and M2 learns from its codes; the paper fits M1 first, here both train from the
first step (one model, one optimiser, the pipelines' phases unchanged). ``classify(x)`` =
log q(y | mu1(x)), the classifier on the code's mean. The generative model is the stack,
p(x) = sum_y p(y) int p(z2) p(z1 | y, z2) p(x | z1) dz2 dz1: ``sample`` draws down it, and the
estimate draws z1_i ~ q(z1 | x) and, for each class, z2 ~ q(z2 | z1_i, y):

    p^(x) = (1/k) sum_i [p(x | z1_i) / q(z1_i | x)] sum_y p(y) p(z1_i | y, z2_iy) p(z2_iy)
                                                              / q(z2_iy | z1_i, y),

unbiased for p(x) (the inner sum is unbiased for M2's p(z1_i)), so its log is a stochastic lower
bound; the condition ``{"label": y}`` keeps one class. ``elbo(x)`` is the stack's bound with one
draw: log p(x | z1) - log q(z1 | x) + U(z1).

``aux_dim`` > 0 (default 0) is the **auxiliary deep generative model** (ADGM) of Maaloe,
Sonderby, Sonderby & Winther 2016 ("Auxiliary deep generative models",
https://arxiv.org/abs/1602.05473): an auxiliary variable a of this size, with q(a | x) and
p(a | x, y, z) diagonal Gaussians (MLPs of ``hidden_sizes``). The generative model of x is M2's,
p(y) p(z) p(x | y, z), extended by p(a | x, y, z), which leaves p(x) unchanged; the inference
model becomes q(a | x) q(y | a, x) q(z | a, x, y), so the classifier q(y | x) = E_q(a|x) q(y | a,
x) is a continuous mixture, and a draw of a is shared by the enumerated classes:

    ELBO(x, y) = E[log p(x | y, z) + log p(y) + log p(z) + log p(a | x, y, z) - log q(a | x)
                   - log q(z | a, x, y)],
    U(x) = E_q(a|x)[sum_y q(y | a, x) (ELBO_a(x, y) - log q(y | a, x))],

and the labelled cross-entropy is -log q(y | a, x) at the same draw of a. ``classify`` reads the
classifier at the mean of q(a | x) (deterministic; the paper averages 100 draws); the estimate's
draw i shares a_i ~ q(a | x) across the classes, with weight p(x, z | y) p(a_i | x, y, z) /
(q(a_i | x) q(z | a_i, x, y)): unbiased for p(x) as p(a | x, y, z) integrates to one.
``classifier_noise`` perturbs the pixels q(y | a, x) reads, not a. ADGM goes with the MLP
classifier on the pixels (no M1, no ``classifier_channels``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    LOG_2PI,
    BaseConfig,
    Condition,
    GenerativeModel,
    ScoreResult,
    SearchSpec,
    importance_weighted,
    register,
    std_normal_kl,
    std_normal_log_prob,
)
from .layers import check_shift, random_shift
from .vae import mlp


def gaussian_params(out: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance (clamped to [-12, 8]) from a network's output ``(..., 2Z)``."""
    mean, logvar = out.chunk(2, -1)
    return mean, logvar.clamp(-12.0, 8.0)


def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """z = mu + eps sigma and log N(z; mu, diag sigma^2) summed over the last dimension."""
    z = mu + eps * (0.5 * logvar).exp()
    return z, -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)


def gaussian_log_prob(v: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(v; mean, diag exp(logvar)) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (v - mean).pow(2) / logvar.exp()).sum(-1)


def cat_last(*parts: Tensor) -> Tensor:
    """Concatenate on the last dimension after broadcasting the leading ones."""
    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], -1)


def bernoulli_log_lik(logits: Tensor, x: Tensor) -> Tensor:
    """sum_d log Bernoulli(x_d; sigmoid(logits_d)) ``(...)``, ``x`` broadcast to the logits."""
    target = x.expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


class ConvClassifier(nn.Module):
    """Logits ``(..., K)`` of flattened images ``(..., D)``: three 3x3 convolutions (width c,
    then 2c twice at stride 2), ReLU, a hidden layer of 128 and the K outputs."""

    def __init__(self, shape: tuple[int, ...], channels: int, k: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * ((h + 3) // 4) * ((w + 3) // 4), 128),
            nn.ReLU(),
            nn.Linear(128, k),
        )

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, *self.shape)).reshape(*lead, -1)


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
    m1_latent_dim: int = 0  # > 0: M1+M2, M2 on the codes z1 of an M1 VAE with this many dims
    m1_hidden_sizes: tuple[int, ...] = (600, 600)  # M1's encoder (its decoder: reversed)
    classifier_noise: float = 0.0  # sd of Gaussian noise on q(y|x)'s input in training
    classifier_channels: int = 0  # > 0: q(y|x) is a small CNN of this width (an MLP at 0)
    aux_dim: int = 0  # > 0: ADGM (Maaloe et al. 2016), an auxiliary a of this size


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
        if config.classifier_channels < 0:
            raise ValueError(
                f"m2vae: classifier_channels must be >= 0, got {config.classifier_channels}"
            )
        if not config.classifier_noise >= 0:
            raise ValueError(f"m2vae: classifier_noise must be >= 0, got {config.classifier_noise}")
        if config.m1_latent_dim < 0:
            raise ValueError(f"m2vae: m1_latent_dim must be >= 0, got {config.m1_latent_dim}")
        if config.aux_dim < 0:
            raise ValueError(f"m2vae: aux_dim must be >= 0, got {config.aux_dim}")
        if config.aux_dim and (config.m1_latent_dim or config.classifier_channels):
            raise ValueError(
                "m2vae: aux_dim (ADGM) goes with the MLP classifier on the pixels: set "
                f"m1_latent_dim and classifier_channels to 0, got {config.m1_latent_dim} and "
                f"{config.classifier_channels}"
            )
        check_shift("m2vae", config.shift, self.input_shape)
        d, h, z, k = self.num_dims, config.hidden_sizes, config.latent_dim, config.num_classes
        z1 = config.m1_latent_dim
        if z1:  # M1+M2: M1 on the pixels, M2 on its codes (a Gaussian p(z1 | y, z2))
            m1h = config.m1_hidden_sizes
            self.m1_encoder = mlp((d, *m1h, 2 * z1))  # q(z1 | x)
            self.m1_decoder = mlp((z1, *reversed(m1h), d))  # p(x | z1)
        u = z1 or d  # M2's data: the pixels, or the codes
        if config.classifier_channels:  # a small CNN for q(y | x) on image inputs
            if z1 or len(self.input_shape) != 3:
                raise ValueError(
                    "m2vae: classifier_channels needs image inputs (C, H, W) and no M1 "
                    f"(m1_latent_dim = 0), got shape {self.input_shape}, m1_latent_dim {z1}"
                )
            self.classifier = ConvClassifier(self.input_shape, config.classifier_channels, k)
        else:
            self.classifier = mlp((u + config.aux_dim, *h, k))  # q(y | u) (ADGM: q(y | a, u))
        a = config.aux_dim
        if a:  # ADGM: q(a | x) and p(a | x, y, z), both diagonal Gaussians
            self.aux_encoder = mlp((u, *h, 2 * a))
            self.aux_decoder = mlp((u + k + z, *h, 2 * a))
        self.encoder = mlp((u + a + k, *h, 2 * z))  # q(z | u, y) (ADGM: q(z | a, u, y))
        self.decoder = mlp((z + k, *reversed(h), 2 * u if z1 else u))  # p(u | y, z)

    # ------------------------------------------------------------------------------ networks
    @property
    def _dtype(self) -> torch.dtype:
        return self.decoder[0].weight.dtype

    def class_log_probs(self, x: Tensor, a: Tensor | None = None) -> Tensor:
        """log q(y | x) ``(..., K)`` for flattened ``x`` (ADGM: log q(y | a, x))."""
        return self.classifier(x if a is None else cat_last(x, a)).log_softmax(-1)

    def _onehot(self, y: Tensor) -> Tensor:
        return F.one_hot(y, self.config.num_classes).to(self._dtype)

    def encode(self, x: Tensor, y: Tensor, a: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x, y) (ADGM: q(z | a, x, y)) for flattened ``x``
        ``(..., D)``, classes ``y`` ``(...)`` and ``a`` ``(..., A)`` (broadcast together)."""
        parts = (x, self._onehot(y)) if a is None else (x, a, self._onehot(y))
        return gaussian_params(self.encoder(cat_last(*parts)))

    def aux_encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ADGM's q(a | x) for flattened ``x``."""
        return gaussian_params(self.aux_encoder(x))

    def aux_log_prob(self, a: Tensor, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log p(a | x, y, z) ``(...)``: ADGM's generative model of the auxiliary variable."""
        out = self.aux_decoder(cat_last(x, self._onehot(y), z))
        return gaussian_log_prob(a, *gaussian_params(out))

    def decoder_log_prob(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log p(x | y, z) ``(...)`` for M2's data ``x`` ``(..., D)`` (the pixels; with M1, the
        codes z1 under a Gaussian), ``y`` ``(...)``, ``z`` ``(..., Z)``."""
        out = self.decoder(cat_last(z, self._onehot(y)))
        if self.config.m1_latent_dim:
            return gaussian_log_prob(x, *gaussian_params(out))
        return bernoulli_log_lik(out, x)

    # ------------------------------------------------------------------------------- M1 (stack)
    def m1_encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of M1's q(z1 | x) for flattened ``x``."""
        return gaussian_params(self.m1_encoder(x))

    def m1_log_lik(self, x: Tensor, z1: Tensor) -> Tensor:
        """log p(x | z1) ``(...)``: M1's Bernoulli decoder, ``x`` ``(B, D)``, ``z1`` ``(..., B, Z1)``."""
        return bernoulli_log_lik(self.m1_decoder(z1), x)

    def features(self, x: Tensor) -> Tensor:
        """What M2's classifier reads for flattened ``x``: the pixels, or (M1+M2) mu1(x)."""
        return self.m1_encode(x)[0] if self.config.m1_latent_dim else x

    def class_elbo(
        self, x: Tensor, y: Tensor, eps: Tensor, aux: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """ELBO(x, y) with one reparameterised draw: ``x`` ``(B, D)``, ``y`` ``(..., B)``, noise
        ``eps`` ``(..., B, Z)`` → ``(..., B)`` (log p(y) = -log K included; KL in closed form).
        ADGM: ``aux`` = (a, log q(a | x)) ``((B, A), (B,))``, a draw shared by the classes, and
        the bound adds log p(a | x, y, z) - log q(a | x)."""
        a = None if aux is None else aux[0]
        mu, logvar = self.encode(x, y, a)
        z = mu + eps * (0.5 * logvar).exp()
        kl = std_normal_kl(mu, logvar)
        elbo = self.decoder_log_prob(x, y, z) - kl - math.log(self.config.num_classes)
        if aux is not None:
            elbo = elbo + self.aux_log_prob(a, x, y, z) - aux[1]
        return elbo

    def all_class_elbos(
        self, x: Tensor, eps: Tensor, aux: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """ELBO(x, y) for every class → ``(B, K)``; ``eps`` is ``(K, B, Z)``."""
        k = self.config.num_classes
        y = torch.arange(k, device=x.device).unsqueeze(1).expand(k, len(x))
        return self.class_elbo(x, y, eps, aux).transpose(0, 1)

    def draw_aux(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """ADGM: a = mu_a(x) + eps sigma_a(x) and log q(a | x), ``eps`` ``(..., B, A)``."""
        return reparameterise(*self.aux_encode(x), eps)

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
        """Batch mean of -ELBO(x, y) + alpha CE (labelled rows) and -U(x) (unlabelled rows);
        with M1, plus M1's -ELBO(x) on every row, M2's terms read on z1 ~ q(z1 | x).

        Noise: one ``randn`` of ``(K, B_unlabelled, Z)`` for the unlabelled rows (in row order),
        then one of ``(B_labelled, Z)`` for the labelled rows, from the global RNG (after the
        offsets of ``shift``, when it is on, with M1 after one ``(B, Z1)`` for z1, with ADGM after
        one ``(B, A)`` for a, then the classifier's noise when it is on)."""
        x = batch["x"].to(self._dtype)
        if self.config.shift and self.training:  # a fresh translation per row and step
            x = random_shift(x.reshape(len(x), *self.input_shape), self.config.shift)
        x = x.flatten(1)
        y = self._labels(batch, len(x), x.device)
        k, zdim = self.config.num_classes, self.config.latent_dim
        lab, unl = (y >= 0).nonzero().squeeze(1), (y < 0).nonzero().squeeze(1)
        total = x.new_zeros(())
        metrics: dict[str, Tensor] = {}
        if self.config.m1_latent_dim:  # M1's bound on every row; M2 below reads a draw of z1
            mu1, logvar1 = self.m1_encode(x)
            z1 = mu1 + torch.randn_like(mu1) * (0.5 * logvar1).exp()
            elbo1 = self.m1_log_lik(x, z1) - std_normal_kl(mu1, logvar1)
            total = total - elbo1.sum()
            metrics["elbo_m1"] = elbo1.mean().detach()
            x = z1.detach()  # the gradient stops here: M1 is fitted by its own bound alone
        a = aux_u = aux_l = None
        if self.config.aux_dim:  # ADGM: one draw a ~ q(a | x) per row, shared by the classes
            a, log_qa = self.draw_aux(x, self._randn((len(x), self.config.aux_dim), None, x.device))
            aux_u, aux_l = (a[unl], log_qa[unl]), (a[lab], log_qa[lab])
        noisy = x
        if self.config.classifier_noise > 0 and self.training:  # q(y | x) reads a noisy copy
            noisy = x + self.config.classifier_noise * torch.randn_like(x)
        log_q = self.class_log_probs(noisy, a)
        if len(unl):
            xu = x[unl]
            eps = self._randn((k, len(xu), zdim), None, x.device)
            bound = self.unlabelled_bound(log_q[unl], self.all_class_elbos(xu, eps, aux_u))
            total = total - bound.sum()
            metrics["bound_unlabelled"] = bound.mean().detach()
        if len(lab):
            xl, yl = x[lab], y[lab]
            eps = self._randn((len(xl), zdim), None, x.device)
            elbo = self.class_elbo(xl, yl, eps, aux_l)
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
        """log q(y | x) ``(B, K)`` (M1+M2: log q(y | mu1(x)); ADGM: log q(y | mu_a(x), x), the
        classifier at the mean of q(a | x): deterministic, whatever the batch)."""
        x = self.check_input(x).to(self._dtype).flatten(1)
        u = self.features(x)
        return self.class_log_probs(u, self.aux_encode(u)[0] if self.config.aux_dim else None)

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The enumerated bound U(x) ``(B,)`` with one draw of z per class (a lower bound on
        log p(x) in expectation); M1+M2: log p(x | z1) - log q(z1 | x) + U(z1), one draw of z1
        (drawn first); ADGM: one draw a ~ q(a | x) (drawn first) shared by the classes."""
        x = self.check_input(x).to(self._dtype).flatten(1)
        k, zdim = self.config.num_classes, self.config.latent_dim
        outer, aux = x.new_zeros(len(x)), None
        if self.config.m1_latent_dim:
            mu1, logvar1 = self.m1_encode(x)
            eps1 = self._randn(tuple(mu1.shape), generator, x.device)
            z1, log_q1 = reparameterise(mu1, logvar1, eps1)
            outer = self.m1_log_lik(x, z1) - log_q1
            x = z1
        if self.config.aux_dim:
            aux = self.draw_aux(x, self._randn((len(x), self.config.aux_dim), generator, x.device))
        elbos = self.all_class_elbos(x, self._randn((k, len(x), zdim), generator, x.device), aux)
        log_q = self.class_log_probs(x, None if aux is None else aux[0])
        return outer + self.unlabelled_bound(log_q, elbos)

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """Log importance weights for k draws per class → ``(k, B, K)``: log p(x, z_i | y) -
        log q(z_i | x, y); M1+M2: the draw i shares z1_i ~ q(z1 | x) across the classes and the
        weight is log p(x | z1_i) - log q(z1_i | x) + log p(z1_i, z2_iy | y) - log q(z2_iy |
        z1_i, y); ADGM: the draw i shares a_i ~ q(a | x) across the classes and the weight is
        log p(x, z_iy | y) + log p(a_i | x, y, z_iy) - log q(a_i | x) - log q(z_iy | a_i, x, y)
        (p(a | x, y, z) integrates to 1: the same p(x) in expectation). Noise per chunk of
        draws: ``(m, B, Z1)`` for z1 (M1+M2) or ``(m, B, A)`` for a (ADGM), ``(m, K, B, Z)``."""
        x = x.to(self._dtype).flatten(1)
        kk, zdim = self.config.num_classes, self.config.latent_dim
        y = torch.arange(kk, device=x.device).unsqueeze(1).expand(kk, len(x))  # (K, B)
        stacked, adgm = bool(self.config.m1_latent_dim), bool(self.config.aux_dim)
        if stacked:
            mu1, logvar1 = self.m1_encode(x)
        elif adgm:
            mu_a, logvar_a = self.aux_encode(x)
        else:
            mu, logvar = self.encode(x, y)  # (K, B, Z)
        chunks = []
        for start in range(0, k, self.config.eval_chunk):
            m = min(self.config.eval_chunk, k - start)
            outer, u, a = 0.0, x, None
            if stacked:
                eps1 = self._randn((m, *mu1.shape), generator, x.device)
                z1, log_q1 = reparameterise(mu1, logvar1, eps1)  # (m, B, Z1), (m, B)
                u = z1.unsqueeze(1)  # (m, 1, B, Z1)
                outer = (self.m1_log_lik(x, z1) - log_q1).unsqueeze(1)  # (m, 1, B)
                mu, logvar = self.encode(u, y.expand(m, kk, len(x)))  # (m, K, B, Z)
            elif adgm:
                eps_a = self._randn((m, *mu_a.shape), generator, x.device)
                a, log_qa = reparameterise(mu_a, logvar_a, eps_a)  # (m, B, A), (m, B)
                a, outer = a.unsqueeze(1), -log_qa.unsqueeze(1)  # (m, 1, B, A), (m, 1, B)
                mu, logvar = self.encode(x, y.expand(m, kk, len(x)), a)  # (m, K, B, Z)
            eps = self._randn((m, kk, len(x), zdim), generator, x.device)
            z, log_q = reparameterise(mu, logvar, eps)
            log_w = outer + self.decoder_log_prob(u, y, z) + std_normal_log_prob(z) - log_q
            if adgm:
                log_w = log_w + self.aux_log_prob(a, x, y, z)
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
        # p^ = (1/k) sum_i s_i with s_i = sum_y p(y) w_iy, independent over the draws i (for M2
        # alone as well, where the classes' draws are independent too): the delta-method
        # standard error of log p^ is that of the k log s_i.
        log_py = -math.log(self.config.num_classes)
        estimate, stderr = importance_weighted(torch.logsumexp(log_w + log_py, -1))
        return estimate, stderr, f"iwae-enum-y-k={k}"

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
        out = self.decoder(torch.cat([z, self._onehot(y)], -1))
        if self.config.m1_latent_dim:  # z1 ~ p(z1 | y, z2), then x ~ p(x | z1)
            mean, logvar = gaussian_params(out)
            eps = self._randn(tuple(mean.shape), generator, device)
            out = self.m1_decoder(reparameterise(mean, logvar, eps)[0])
        p = torch.sigmoid(out)
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(device)
        return (u < p).to(p.dtype).view(n, *self.input_shape)
