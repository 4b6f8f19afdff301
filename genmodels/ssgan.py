"""SSGAN: a semi-supervised GAN whose discriminator is a (K+1)-class classifier (Odena 2016,
https://arxiv.org/abs/1606.01583; Salimans, Goodfellow, Zaremba, Cheung, Radford & Chen 2016,
"Improved techniques for training GANs", https://arxiv.org/abs/1606.03498).

D outputs K class logits l_1..l_K for real classes; the (K+1)-th class, "fake", has its logit
fixed at 0 (the softmax is invariant to a shift, so nothing is lost). With Z(x) = sum_k exp l_k(x)
the probability that x is real is D(x) = Z / (Z + 1) and, given real, p(y | x) = softmax(l). D's
loss is Salimans et al.'s:

* labelled rows (``y >= 0``): cross-entropy of the K real classes, lse(l) - l_y;
* every real row (labelled ones included): -log D(x) = softplus(lse(l)) - lse(l);
* fakes G(z): -log(1 - D(G(z))) = softplus(lse(l));

loss_D = CE_labelled + ``unsupervised_weight`` x (real term + fake term), each a batch mean
(0.5 as in the paper's code: the mean of the two halves of the real/fake cross-entropy). A batch
may be all unlabelled (no ``y`` key, or every ``y`` = -1) or all labelled. G is trained by feature
matching: ||mean f(x_real) - mean f(G(z))||^2 with f = D's last hidden layer (real features carry
no gradient), which is what makes the discriminator a good classifier (a worse sampler).

Choices here (the paper's MNIST recipe as the default config):

* D = MLP D-1000-500-250-250-250-K with weight normalisation (w = g v / ||v||), ReLU, and
  Gaussian noise on its input (sigma 0.3) and on each hidden layer's output (sigma 0.5), in
  training mode only. The paper's data-dependent initialisation is not used (it would make ranks
  differ under data parallelism); g starts at sqrt(2) (ReLU layers) so activations keep their scale.
* G = MLP 100-500-500-D, batch norm + softplus, sigmoid output (Bernoulli probabilities); its
  noise is uniform on [0, 1)^100 as in the paper's code.
* binary data: D never sees probabilities. Fakes are Bernoulli draws with a straight-through
  gradient, as in ``genmodels.gan`` (``fake_input="probabilities"`` feeds G's output instead).
* two phases, ``("discriminator", "generator")``, Adam lr 3e-3, betas (0.5, 0.999).
* Polyak averaging: an exponential moving average of D's parameters, kept in buffers (so a
  checkpoint and the state dict carry it, DDP broadcasts it, and no optimiser touches it),
  updated at the start of every generator phase, i.e. after each D step, with decay
  min(``ema_decay``, (1 + n) / (10 + n)) after n updates (so early averages are not dominated by
  the initial weights). ``classify`` and ``embed`` use the averaged D, in eval mode (no noise).
* ``shift`` (default 0, the paper's recipe): in training, every real image D sees (labelled or
  not, in both phases) is translated by its own random offset of up to ``shift`` pixels in each
  direction, zeros shifted in (``genmodels.layers.random_shift``); fakes are not. Not in the
  paper. Why: the bundled MNIST has 4,000 train digits, not 60,000, and on them the paper's
  recipe plateaued: with 100 labels (a dev label draw, validation accuracy as a monitor only, lr
  constant) it stayed at 0.75-0.88 from 400 to 1,500 CPU-s (3,000-12,000 steps); with
  ``shift=2`` the same run read 0.83, 0.86, 0.88, 0.93 at 100-400 CPU-s.

``classify(x)`` → ``(B, K)`` log p(y | x, real): the log-softmax of the K real logits (the fake
class excluded and the rest renormalised). ``embed`` = the averaged D's last hidden layer. There
is no likelihood (``log_prob`` raises ``NoLikelihoodError``); sampling draws x ~ Bernoulli(G(z)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .base import BaseConfig, Condition, GenerativeModel, SearchSpec, register
from .layers import adam_per_phase, check_shift, random_shift


@dataclass(frozen=True)
class SSGANConfig(BaseConfig):
    num_classes: int = 10
    latent_dim: int = 100
    gen_hidden: tuple[int, ...] = (500, 500)
    disc_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250)
    input_noise: float = 0.3  # sigma of D's Gaussian input noise (training only)
    hidden_noise: float = 0.5  # sigma of the noise on D's hidden layers (training only)
    unsupervised_weight: float = 0.5
    fake_input: str = "sample"  # D sees straight-through Bernoulli draws, or "probabilities"
    ema_decay: float = 0.999
    beta1: float = 0.5
    lr: float = 3e-3
    shift: int = 0  # real images randomly translated by up to this many pixels (training only)


def discriminator_loss(
    real_logits: Tensor, labels: Tensor, fake_logits: Tensor, unsupervised_weight: float = 0.5
) -> dict[str, Tensor]:
    """The (K+1)-class discriminator loss with the fake logit fixed at 0.

    Args:
        real_logits: ``(B, K)`` D's logits on real rows.
        labels: ``(B,)`` int64 classes, -1 for unlabelled rows.
        fake_logits: ``(M, K)`` D's logits on fakes.
        unsupervised_weight: the weight of the real/fake terms.

    Returns ``{"loss", "supervised", "real", "fake"}``: the supervised term is the mean
    cross-entropy over labelled rows (0 when there are none), ``real`` the mean of
    -log D(x) = softplus(lse) - lse over every real row, ``fake`` the mean of
    -log(1 - D(G(z))) = softplus(lse) over the fakes.
    """
    lse_real = torch.logsumexp(real_logits, 1)
    lse_fake = torch.logsumexp(fake_logits, 1)
    labelled = labels >= 0
    if labelled.any():
        rows = labelled.nonzero().squeeze(1)
        supervised = (lse_real[rows] - real_logits[rows, labels[rows]]).mean()
    else:
        supervised = real_logits.sum() * 0.0  # keeps the graph (and the dtype) uniform
    real = (F.softplus(lse_real) - lse_real).mean()
    fake = F.softplus(lse_fake).mean()
    loss = supervised + unsupervised_weight * (real + fake)
    return {"loss": loss, "supervised": supervised, "real": real, "fake": fake}


def feature_matching_loss(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """||mean f(x_real) - mean f(G(z))||^2 over the batch (the real side carries no gradient)."""
    return (real_features.detach().mean(0) - fake_features.mean(0)).pow(2).sum()


class WNLinear(nn.Module):
    """A weight-normalised linear layer (Salimans & Kingma 2016): W = g v / ||v|| (rows)."""

    def __init__(self, in_features: int, out_features: int, gain: float = 1.0) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_features, in_features) * 0.05)
        self.g = nn.Parameter(torch.full((out_features,), float(gain)))
        self.b = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.g / self.v.norm(dim=1).clamp_min(1e-12)
        return F.linear(x, self.v * scale.unsqueeze(1), self.b)


class NoisyDiscriminator(nn.Module):
    """x ``(B, D)`` → (K logits, last hidden features): weight-normalised ReLU MLP with Gaussian
    noise on the input and on every hidden layer's output when ``noise`` is true."""

    def __init__(
        self, d: int, hidden: tuple[int, ...], k: int, input_noise: float, hidden_noise: float
    ) -> None:
        super().__init__()
        sizes = (d, *hidden)
        self.hidden = nn.ModuleList(
            WNLinear(a, b, gain=math.sqrt(2.0)) for a, b in itertools.pairwise(sizes)
        )
        self.out = WNLinear(sizes[-1], k)
        self.input_noise, self.hidden_noise = input_noise, hidden_noise

    def forward(self, x: Tensor, noise: bool = False) -> tuple[Tensor, Tensor]:
        h = x
        if noise and self.input_noise > 0:
            h = h + self.input_noise * torch.randn_like(h)
        for layer in self.hidden:
            h = F.relu(layer(h))
            features = h
            if noise and self.hidden_noise > 0:
                h = h + self.hidden_noise * torch.randn_like(h)
        return self.out(h), features


def mlp_generator(latent_dim: int, hidden: tuple[int, ...], d: int) -> nn.Sequential:
    """z → logits ``(B, D)``: batch-normalised softplus hidden layers."""
    layers: list[nn.Module] = []
    width = latent_dim
    for h in hidden:
        layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.Softplus()]
        width = h
    layers.append(nn.Linear(width, d))
    return nn.Sequential(*layers)


def _buffer_name(param_name: str) -> str:
    return param_name.replace(".", "__")


@register
class SSGAN(GenerativeModel):
    family = "ssgan"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = SSGANConfig
    phases = ("discriminator", "generator")
    capabilities = frozenset({"classify", "embed"})
    sample_limit = 1024
    search_space = {
        "lr": SearchSpec("loguniform", low=1e-3, high=6e-3),
        "unsupervised_weight": SearchSpec("choice", (0.5, 1.0)),
        "hidden_noise": SearchSpec("choice", (0.3, 0.5)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: SSGANConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.num_classes < 2:
            raise ValueError(f"ssgan: num_classes must be >= 2, got {config.num_classes}")
        if config.latent_dim < 1 or not config.gen_hidden or not config.disc_hidden:
            raise ValueError("ssgan: latent_dim >= 1 and non-empty gen_hidden, disc_hidden needed")
        if config.input_noise < 0 or config.hidden_noise < 0 or config.unsupervised_weight < 0:
            raise ValueError("ssgan: noise levels and unsupervised_weight must be >= 0")
        if config.fake_input not in ("sample", "probabilities"):
            raise ValueError(
                f"ssgan: fake_input must be 'sample' or 'probabilities', got {config.fake_input!r}"
            )
        if not 0.0 <= config.ema_decay < 1.0 or not 0.0 <= config.beta1 < 1.0:
            raise ValueError("ssgan: ema_decay and beta1 must be in [0, 1)")
        check_shift("ssgan", config.shift, self.input_shape)
        d = self.num_dims
        self.generator = mlp_generator(config.latent_dim, config.gen_hidden, d)
        self.discriminator = NoisyDiscriminator(
            d, config.disc_hidden, config.num_classes, config.input_noise, config.hidden_noise
        )
        # Polyak average of D's parameters: buffers, not parameters (no optimiser, no gradient).
        self.averaged = nn.Module()
        for name, p in self.discriminator.named_parameters():
            self.averaged.register_buffer(_buffer_name(name), p.detach().clone())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------------------ networks
    def generate(self, z: Tensor) -> Tensor:
        """G's Bernoulli probabilities ``(B, D)`` for noise ``z``."""
        return torch.sigmoid(self.generator(z))

    def _noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        like = self.generator[0].weight
        z = torch.rand((n, self.config.latent_dim), generator=generator, dtype=like.dtype)
        return z.to(like.device)

    def _fakes(self, n: int) -> Tensor:
        """Fakes as D sees them (training noise from the global RNG)."""
        y = self.generate(self._noise(n))
        if self.config.fake_input == "probabilities":
            return y
        b = (torch.rand_like(y) < y).to(y.dtype)
        return b + (y - y.detach())  # forward: b; backward: as if b were y

    def averaged_parameters(self) -> dict[str, Tensor]:
        return {
            name: getattr(self.averaged, _buffer_name(name))
            for name, _ in self.discriminator.named_parameters()
        }

    def averaged_discriminator(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The Polyak-averaged D on flattened ``x`` without noise → (logits, features)."""
        return functional_call(self.discriminator, self.averaged_parameters(), (x,))

    @torch.no_grad()
    def update_average(self) -> None:
        """One step of the exponential moving average of D's parameters."""
        n = int(self.ema_updates)
        decay = min(self.config.ema_decay, (1.0 + n) / (10.0 + n))
        for name, p in self.discriminator.named_parameters():
            getattr(self.averaged, _buffer_name(name)).lerp_(p.detach(), 1.0 - decay)
        self.ema_updates.add_(1)

    def _labels(self, batch: Mapping[str, Tensor], n: int, device: torch.device) -> Tensor:
        y = batch.get("y")
        if y is None:
            return torch.full((n,), -1, dtype=torch.long, device=device)
        y = torch.as_tensor(y).to(device=device, dtype=torch.long).reshape(-1)
        if len(y) != n:
            raise ValueError(f"ssgan: batch has {n} rows of x but {len(y)} labels")
        if ((y < -1) | (y >= self.config.num_classes)).any():
            raise ValueError(
                f"ssgan: labels must be -1 (unlabelled) or 0..{self.config.num_classes - 1}"
            )
        return y

    # ------------------------------------------------------------------------------ training
    def forward(
        self, batch: Mapping[str, Tensor], phase: str = "discriminator"
    ) -> dict[str, Tensor]:
        like = self.discriminator.out.v
        x = batch["x"].to(like.dtype)
        if self.config.shift and self.training:  # a fresh translation per row and phase
            x = random_shift(x.reshape(len(x), *self.input_shape), self.config.shift)
        x = x.flatten(1)
        if phase == "discriminator":
            y = self._labels(batch, len(x), x.device)
            with torch.no_grad():  # no gradient to G in D's phase
                fake = self._fakes(len(x))
            real_logits, _ = self.discriminator(x, noise=True)
            fake_logits, _ = self.discriminator(fake, noise=True)
            out = discriminator_loss(real_logits, y, fake_logits, self.config.unsupervised_weight)
            with torch.no_grad():
                d_real = torch.sigmoid(torch.logsumexp(real_logits, 1)).mean()
                d_fake = torch.sigmoid(torch.logsumexp(fake_logits, 1)).mean()
            return {
                "loss": out["loss"],
                "supervised": out["supervised"].detach(),
                "d_real": d_real,
                "d_fake": d_fake,
            }
        if phase == "generator":
            self.update_average()  # D has just been stepped
            with torch.no_grad():
                _, real_features = self.discriminator(x, noise=True)
            _, fake_features = self.discriminator(self._fakes(len(x)), noise=True)
            loss = feature_matching_loss(real_features, fake_features)
            return {"loss": loss, "feature_matching": loss.detach()}
        raise ValueError(f"ssgan: unknown phase {phase!r}; phases are {self.phases}")

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "discriminator":
            return self.discriminator.parameters()
        if phase == "generator":
            return self.generator.parameters()
        raise ValueError(f"ssgan: unknown phase {phase!r}; phases are {self.phases}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_per_phase(self)

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """``(B, K)`` log p(y | x, real) under the Polyak-averaged D (fake class excluded)."""
        x = self.check_input(x).to(self.discriminator.out.v.dtype).flatten(1)
        logits, _ = self.averaged_discriminator(x)
        return logits.log_softmax(1)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """The Polyak-averaged D's last hidden layer ``(B, H)``."""
        x = self.check_input(x).to(self.discriminator.out.v.dtype).flatten(1)
        return self.averaged_discriminator(x)[1]

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        z = self._noise(n, generator)
        was_training = self.generator.training
        self.generator.eval()  # BatchNorm: running statistics, and no update of them
        try:
            p = self.generate(z)
        finally:
            self.generator.train(was_training)
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        return (u < p).to(p.dtype).view(n, *self.input_shape)
