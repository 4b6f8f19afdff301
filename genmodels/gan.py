"""GAN: generative adversarial networks (Goodfellow, Pouget-Abadie, Mirza, Xu, Warde-Farley, Ozair,
Courville & Bengio 2014, https://arxiv.org/abs/1406.2661) with a DCGAN-style architecture
(Radford, Metz & Chintala 2015, https://arxiv.org/abs/1511.06434).

A generator G maps noise z ~ N(0, I) to data; a discriminator D is trained to tell real data from
G's output (binary cross-entropy on D's logit), while G is trained to fool D. With the minimax
loss G minimises log(1 - D(G(z))); the paper's non-saturating alternative, G minimises
-log D(G(z)), has the same fixed point but strong gradients early on, when D rejects every fake.
There is no tractable likelihood: ``log_prob`` raises ``NoLikelihoodError``.

Choices here:

* two phases, ``("discriminator", "generator")``, one Adam each with betas (0.5, 0.999) as in
  DCGAN. The discriminator phase generates its fakes under ``no_grad`` (no gradient reaches G);
  its loss is BCE(D(real), 1 - label_smoothing) + BCE(D(fake), 0) (one-sided smoothing). The
  generator phase backpropagates through D, but only G's optimiser steps.
* (C, H, W) inputs: G = dense -> (2 * channels, ceil(H/4), ceil(W/4)) -> two stride-2 transposed
  convolutions (4x4) with BatchNorm + ReLU between -> cropped to (H, W) -> sigmoid. D = two
  stride-2 3x3 convolutions with LeakyReLU(0.2) -> linear logit; 3x3 kernels with padding 1 give
  ceil(H/2) rows, so any size works, 1-pixel sides included. D has no BatchNorm: its statistics
  would mix the real and the fake batch and let the discriminator's output for one example depend
  on the others. (D,) inputs: the same design as MLPs. Weights start N(0, 0.02) (DCGAN).
  ``arch="mlp"`` uses the MLP pair on images too (flattened pixels; about 3x the steps per
  CPU-second of the conv pair at ``hidden_size`` 512 on 28 x 28); ``"conv"`` insists on the conv
  pair. ``spectral_norm=True`` divides each of D's weights by its largest singular value (one
  power iteration per step; Miyato et al. 2018), as the projection discriminator's paper does.
* binary data, and the problem that D could reject every fake just because G's probabilities are
  not 0 or 1: D never sees probabilities. Fakes are Bernoulli draws b ~ Bernoulli(G(z)), the very
  samples ``sample`` returns, with a straight-through gradient (forward b, backward as if b were
  G(z)). D compares binary with binary, and the adversarial game's optimum is the model that
  ``sample`` draws from. (Feeding D probabilities and blurring the reals with noise instead
  would push G towards saturated 0/1 outputs, where the sigmoid's gradient vanishes.)
* discrete data, 0..L-1: G's output y in (0, 1) is a continuous value whose bin is the sample,
  x = floor(L y); D sees y for fakes and uniformly dequantised reals (x + u) / L, u ~ U[0, 1), so
  both live on [0, 1) and matching the dequantised distribution recovers the discrete one.
* ``sample`` runs G in eval mode (BatchNorm with its running statistics) and restores the mode;
  all its randomness comes from the given generator. Training noise comes from the global RNG.

Imputation (``impute``): semantic inpainting (Yeh, Chen, Lim, Schwing, Hasegawa-Johnson & Do
2016, https://arxiv.org/abs/1607.07539). Each of the S imputations is a random restart: a code z
from the prior, then ``impute_steps`` (default 30) Adam steps (``impute_lr`` 0.1) on z alone
minimising the contextual loss (the Bernoulli NLL of x's observed entries under G(z); for
discrete data the L1 distance of G(z) to the observed bin centres (x + 1/2) / L), weighted 1 per
observed entry or, with ``impute_window`` > 0, by Yeh's fraction of missing pixels in the window,
plus ``impute_prior_weight`` (default 0.1) x the discriminator's prior loss log(1 - D(G(z)))
(D fed straight-through Bernoulli draws, as in training). G and D run in eval mode with no
parameter gradients (modes restored; no parameter or statistic changes). The missing entries
are then read from G(z): a Bernoulli draw (``impute_output="sample"``) or G(z) > 1/2
(``"mode"``); for discrete data the bin floor(L G(z)), as ``sample`` does. The settings are in the
method string. No likelihood: ``log_prob_missing`` is None. A row with nothing observed is a
plain ``sample``. Cost with the default DCGAN pair on 28 x 28, one thread: 5.3 CPU-s per 100
imputations (each Adam step is a forward and backward pass through G and D).

Class-conditional GAN (``conditional=True``, ``num_classes`` K; see ``genmodels.conditional``):
AC-GAN (Odena, Olah & Shlens 2017, https://arxiv.org/abs/1610.09585). G(z, y) adds a learned
per-label vector (``label_embedding``, = the one-hot y concatenated to z and projected) to its
first layer's output; D has K class logits beside its real/fake logit (one more linear head on the
same features). D's phase adds ``aux_weight`` x the cross-entropy of its class logits on the real
batch's labels; G's phase adds ``aux_weight`` x the cross-entropy of D's class logits on fakes
drawn for the batch's labels, so G is pushed to make images D's classifier reads as the requested
class. D's classifier is trained on real images only (the paper also trains it on fakes; that lets
D learn G's own class cues early, which this variant avoids). Chosen over a projection/concat
cGAN because the auxiliary loss gives G a direct class signal from the first step: the class
accuracy per CPU-second is what matters for the short CPU runs here. Fakes in training carry the
real batch's labels (so D sees one class histogram); ``sample`` without a condition draws y
uniformly. No likelihood; a conditional GAN does not offer ``impute`` (the inpainting searches z
alone).

``projection=True`` (with ``aux_weight=0``: the projection discriminator of Miyato & Koyama 2018,
https://arxiv.org/abs/1802.05637): D's real/fake logit for (x, y) is the shared logit plus the
class-y logit, psi(phi(x)) + v_y . phi(x) + b_y, i.e. D's K class logits serve as the label
embedding's inner products with D's features; D and G play the ordinary adversarial game on that
logit, so D compares (image, label) pairs and G is pushed to match each class's distribution
rather than to make images a classifier reads as the class. ``aux_weight > 0`` adds AC-GAN's
class loss on top (a hybrid).

``latent_temperature`` psi (sampling only; default 1): ``sample`` feeds G codes z ~ N(0, psi^2 I)
(``base.prior_draw``), a softer cousin of BigGAN's truncation trick: psi < 1 trades diversity for
fidelity, and the samples no longer follow the distribution G was trained to match. Training and
``impute`` (whose restarts start from the prior) ignore it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import conditional
from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    SearchSpec,
    check_latent_temperature,
    prior_draw,
    register,
)
from .impute_chains import (
    context_weights,
    contextual_loss,
    frozen,
    impute_rows,
    inpaint_latents,
)
from .layers import adam_per_phase, spectral_normalise

GeneratorLoss = Literal["non_saturating", "minimax"]
ARCHS = ("auto", "conv", "mlp")


@dataclass(frozen=True)
class GANConfig(BaseConfig):
    latent_dim: int = 64
    channels: int = 64  # base channels of the conv pair (D: channels, 2 * channels; G: reverse)
    hidden_size: int = 256  # width of the two hidden layers of the MLP pair, for (D,) inputs
    arch: str = "auto"  # "auto" (conv pair for (C, H, W), MLPs for (D,)), "conv" or "mlp"
    generator_loss: GeneratorLoss = "non_saturating"
    label_smoothing: float = 0.0  # real targets 1 - label_smoothing in D's loss (one-sided)
    beta1: float = 0.5
    lr: float = 2e-4
    impute_steps: int = 30  # Adam steps on the latent codes (Yeh et al.'s inpainting)
    impute_lr: float = 0.1
    impute_prior_weight: float = 0.1  # lambda of the discriminator's prior loss
    impute_window: int = 0  # contextual weights: 0 = every observed pixel 1; > 0 = Yeh's window
    impute_output: str = "sample"  # binary data: "sample" Bernoulli(G(z)) or "mode" G(z) > 1/2
    impute_chunk: int = 512  # codes optimised together (bounds memory)
    conditional: bool = False  # AC-GAN, G(z, y): see genmodels.conditional
    num_classes: int = 10
    aux_weight: float = 1.0  # AC-GAN's class cross-entropy weight, in both phases
    projection: bool = False  # conditional D's real/fake logit projected on the label (Miyato)
    spectral_norm: bool = False  # every weight of D divided by its largest singular value
    latent_temperature: float = 1.0  # sample: z ~ N(0, psi^2 I); 1 = the trained sampler


def generator_loss(fake_logits: Tensor, kind: GeneratorLoss = "non_saturating") -> Tensor:
    """G's loss from D's logits on fakes: ``-log D(G(z))`` (non-saturating) or
    ``log(1 - D(G(z)))`` (minimax), averaged over the batch."""
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()  # -log sigmoid(l)
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # log(1 - sigmoid(l))
    raise ValueError(f"gan: unknown generator_loss {kind!r}")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, smoothing: float = 0.0) -> Tensor:
    """D's loss: BCE of real logits against ``1 - smoothing`` plus BCE of fakes against 0."""
    real = F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, 1.0 - smoothing)
    )
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


class ConvGenerator(nn.Module):
    """z ``(B, Z)`` -> logits ``(B, C, H, W)``: dense to a (2 ch, ceil(H/4), ceil(W/4)) map,
    then two stride-2 transposed convolutions (each doubles the size), cropped to (H, W)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.start = (2 * channels, math.ceil(h / 4), math.ceil(w / 4))
        # No biases before BatchNorm: it would cancel them (and they would get no gradient).
        self.project = nn.Linear(latent_dim, math.prod(self.start), bias=False)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor, shift: Tensor | None = None) -> Tensor:
        """``shift`` ``(B, prod(start))``: a conditioning term added to the projection of z."""
        _, h, w = self.shape
        p = self.project(z) if shift is None else self.project(z) + shift
        out = self.net(p.view(-1, *self.start))  # (B, C, 4 ceil(H/4), 4 ceil(W/4))
        return out[:, :, :h, :w]


class ConvDiscriminator(nn.Module):
    """x ``(B, C, H, W)`` in [-1, 1] -> logit ``(B,)``: two stride-2 3x3 convolutions, then linear
    (``(B, outputs)`` logits when ``outputs`` > 1: AC-GAN's real/fake logit and class logits)."""

    def __init__(self, shape: tuple[int, int, int], channels: int, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs
        c, h, w = shape
        for _ in range(2):  # a 3x3, stride-2, padding-1 convolution maps n to ceil(n / 2)
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * channels * h * w, outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.squeeze(1) if self.outputs == 1 else out


def mlp_generator(latent_dim: int, hidden: int, d: int) -> nn.Sequential:
    """z -> logits ``(B, D)``: two hidden layers with BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Linear(latent_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, d),
    )


def mlp_discriminator(d: int, hidden: int, outputs: int = 1) -> nn.Sequential:
    """x ``(B, D)`` -> logits ``(B, outputs)``: two hidden layers with LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Linear(d, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, outputs),
    )


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@register
class GAN(GenerativeModel):
    family = "gan"
    likelihood = "none"
    data_kinds = ("binary", "discrete")
    Config = GANConfig
    phases = ("discriminator", "generator")
    capabilities = frozenset({"impute"})
    sample_limit = 1024
    search_space = {
        "latent_dim": SearchSpec("choice", (32, 64, 100)),
        "channels": SearchSpec("choice", (32, 64)),
        "hidden_size": SearchSpec("choice", (128, 256, 512)),
        "label_smoothing": SearchSpec("choice", (0.0, 0.1)),
        "lr": SearchSpec("loguniform", low=1e-4, high=6e-4),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: GANConfig) -> None:
        super().__init__(input_shape, levels, config)
        for key in ("latent_dim", "channels", "hidden_size"):
            if getattr(config, key) < 1:
                raise ValueError(f"gan: {key} must be >= 1, got {getattr(config, key)}")
        if config.generator_loss not in ("non_saturating", "minimax"):
            raise ValueError(
                "gan: generator_loss must be 'non_saturating' or 'minimax', "
                f"got {config.generator_loss!r}"
            )
        if not 0.0 <= config.label_smoothing < 0.5:
            raise ValueError(
                f"gan: label_smoothing must be in [0, 0.5), got {config.label_smoothing}"
            )
        if not 0.0 <= config.beta1 < 1.0:
            raise ValueError(f"gan: beta1 must be in [0, 1), got {config.beta1}")
        if config.lr <= 0:
            raise ValueError(f"gan: lr must be > 0, got {config.lr}")
        check_latent_temperature("gan", config.latent_temperature)
        for key in ("impute_steps", "impute_window", "impute_chunk"):
            if getattr(config, key) < (1 if key == "impute_chunk" else 0):
                raise ValueError(
                    f"gan: {key} must be >= 0 (chunk >= 1), got {getattr(config, key)}"
                )
        if not config.impute_lr > 0 or not config.impute_prior_weight >= 0:
            raise ValueError("gan: impute_lr must be > 0 and impute_prior_weight >= 0")
        if config.impute_output not in ("sample", "mode"):
            raise ValueError(
                f"gan: impute_output must be 'sample' or 'mode', got {config.impute_output!r}"
            )
        if config.arch not in ARCHS or (config.arch == "conv" and len(self.input_shape) != 3):
            raise ValueError(
                f"gan: arch must be one of {', '.join(ARCHS)} ('conv' for (C, H, W) inputs), "
                f"got {config.arch!r} for input shape {self.input_shape}"
            )
        self.conv = len(self.input_shape) == 3 and config.arch != "mlp"
        self.num_labels = k = conditional.setup(self)
        if k:
            if not config.aux_weight >= 0:
                raise ValueError(f"gan: aux_weight must be >= 0, got {config.aux_weight}")
            self.capabilities = self.capabilities - {"impute"}  # inpainting searches z alone
        if self.conv:
            shape = self.input_shape
            self.generator = ConvGenerator(config.latent_dim, shape, config.channels)
            self.discriminator = ConvDiscriminator(shape, config.channels, 1 + k)
            first_width = math.prod(self.generator.start)
        else:
            d = self.num_dims
            self.generator = mlp_generator(config.latent_dim, config.hidden_size, d)
            if k:
                self.discriminator = nn.Sequential(mlp_discriminator(d, config.hidden_size, 1 + k))
            else:
                self.discriminator = nn.Sequential(
                    mlp_discriminator(d, config.hidden_size), nn.Flatten(0)
                )
            first_width = config.hidden_size
        dcgan_init(self)
        if config.spectral_norm:
            spectral_normalise(self.discriminator)
        if k:  # created after the initialisation above, so an unconditional GAN's is unchanged
            # = the one-hot y concatenated to z, through G's first (bias-free) linear layer
            self.label_embedding = nn.Embedding(k, first_width)
            nn.init.normal_(self.label_embedding.weight, 0.0, 0.02)
        else:
            self.label_embedding = None

    # ------------------------------------------------------------------------------ networks
    def generator_logits(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """G's logits ``(B, D)`` (flattened) for noise ``z``; a conditional G needs ``labels``."""
        if self.label_embedding is None:
            return self.generator(z).flatten(1)
        if labels is None:
            raise ValueError("gan: a conditional GAN's generator needs labels")
        shift = self.label_embedding(labels.to(z.device))
        if isinstance(self.generator, ConvGenerator):
            return self.generator(z, shift).flatten(1)
        return self.generator[1:](self.generator[0](z) + shift)

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """G's output ``(B, *input_shape)`` in (0, 1) for noise ``z`` ``(B, latent_dim)`` (and
        ``labels`` ``(B,)``, for a conditional G): Bernoulli probabilities (binary data) or
        values y with sample floor(L y) (discrete)."""
        return torch.sigmoid(self.generator_logits(z, labels)).view(len(z), *self.input_shape)

    def discriminator_outputs(self, v: Tensor) -> Tensor:
        """D's raw outputs for ``v`` on D's scale: ``(B,)`` logits, or for AC-GAN ``(B, 1 + K)``
        (the real/fake logit, then the K class logits)."""
        v = v * 2 - 1
        return self.discriminator(v if self.conv else v.flatten(1))

    def discriminate(self, v: Tensor) -> Tensor:
        """D's real/fake logits ``(B,)`` for inputs ``v`` ``(B, *input_shape)`` on D's scale
        [0, 1]: binary values (binary data) or dequantised ones (x + u) / L (discrete; see
        ``dequantize``)."""
        out = self.discriminator_outputs(v)
        return out[:, 0] if self.num_labels else out

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Real data-space ``x`` on D's scale: ``x`` itself for binary data, (x + u) / L with
        u ~ U[0, 1) for discrete data (floor(L v) gives ``x`` back)."""
        if self.levels == 2:
            return x
        if generator is None:
            u = torch.rand_like(x)
        else:
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (x + u) / self.levels

    def _fakes(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Fakes on D's scale from global-RNG noise; binary: straight-through Bernoulli draws."""
        p = next(self.generator.parameters())
        z = torch.randn(n, self.config.latent_dim, device=p.device, dtype=p.dtype)
        y = self.generate(z, labels)
        if self.levels > 2:
            return y
        b = (torch.rand_like(y) < y).to(y.dtype)
        return b + (y - y.detach())  # forward: b; backward: d b / d y := 1

    # ------------------------------------------------------------------------------ training
    def forward(
        self, batch: Mapping[str, Tensor], phase: str = "discriminator"
    ) -> dict[str, Tensor]:
        x = batch["x"]
        if phase not in self.phases:
            raise ValueError(f"gan: unknown phase {phase!r}; phases are {self.phases}")
        if self.num_labels:
            return self._forward_acgan(x, conditional.training_labels(self, batch), phase)
        if phase == "discriminator":
            real = self.dequantize(x.to(next(self.discriminator.parameters()).dtype))
            with torch.no_grad():  # no gradient to G in D's phase
                fake = self._fakes(len(x))
            real_logits, fake_logits = self.discriminate(real), self.discriminate(fake)
            loss = discriminator_loss(real_logits, fake_logits, self.config.label_smoothing)
            return {
                "loss": loss,
                "d_real": torch.sigmoid(real_logits).mean().detach(),
                "d_fake": torch.sigmoid(fake_logits).mean().detach(),
            }
        if phase == "generator":
            fake_logits = self.discriminate(self._fakes(len(x)))
            loss = generator_loss(fake_logits, self.config.generator_loss)
            return {"loss": loss, "d_fake": torch.sigmoid(fake_logits).mean().detach()}
        raise ValueError(f"gan: unknown phase {phase!r}; phases are {self.phases}")

    def _forward_acgan(self, x: Tensor, labels: Tensor, phase: str) -> dict[str, Tensor]:
        """AC-GAN's two phases: the adversarial losses on D's real/fake logit plus
        ``aux_weight`` x the class cross-entropy (D: real images; G: its fakes)."""
        w = self.config.aux_weight

        def real_fake(out: Tensor) -> Tensor:  # D's real/fake logit for (x, its label)
            if not self.config.projection:
                return out[:, 0]
            return out[:, 0] + out.gather(1, 1 + labels[:, None].to(out.device))[:, 0]

        if phase == "discriminator":
            real = self.dequantize(x.to(next(self.discriminator.parameters()).dtype))
            with torch.no_grad():  # no gradient to G in D's phase
                fake = self._fakes(len(x), labels)
            real_out, fake_out = self.discriminator_outputs(real), self.discriminator_outputs(fake)
            real_logit, fake_logit = real_fake(real_out), real_fake(fake_out)
            adv = discriminator_loss(real_logit, fake_logit, self.config.label_smoothing)
            aux = F.cross_entropy(real_out[:, 1:], labels)
            return {
                "loss": adv + w * aux,
                "d_real": torch.sigmoid(real_logit).mean().detach(),
                "d_fake": torch.sigmoid(fake_logit).mean().detach(),
                "d_class_nll": aux.detach(),
                "d_class_acc": (real_out[:, 1:].argmax(1) == labels).float().mean(),
            }
        out = self.discriminator_outputs(self._fakes(len(x), labels))
        fake_logit = real_fake(out)
        adv = generator_loss(fake_logit, self.config.generator_loss)
        aux = F.cross_entropy(out[:, 1:], labels)
        return {
            "loss": adv + w * aux,
            "d_fake": torch.sigmoid(fake_logit).mean().detach(),
            "g_class_nll": aux.detach(),
        }

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "discriminator":
            return self.discriminator.parameters()
        if phase == "generator":
            if self.label_embedding is not None:
                return itertools.chain(
                    self.generator.parameters(), self.label_embedding.parameters()
                )
            return self.generator.parameters()
        raise ValueError(f"gan: unknown phase {phase!r}; phases are {self.phases}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_per_phase(self)

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """``n`` samples; given ``condition={"label": y}`` (one label or one per sample), from
        G(z, y); a conditional GAN without one draws y uniformly first. z ~ N(0, psi^2 I) with
        psi = ``latent_temperature`` (1: the distribution G was trained to push forward)."""
        labels = conditional.labels_from_condition(self, condition, n)
        if labels is None and self.num_labels:
            labels = conditional.uniform_labels(self, n, generator)
        p = next(self.generator.parameters())
        z = prior_draw(n, self.config.latent_dim, self.config.latent_temperature, generator, p)
        was_training = self.generator.training
        self.generator.eval()  # BatchNorm: running statistics, and no update of them
        try:
            y = self.generate(z, labels)
        finally:
            self.generator.train(was_training)
        if self.levels == 2:
            u = torch.rand(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            return (u < y).to(y.dtype)
        return (y * self.levels).floor().clamp(max=self.levels - 1)

    # ---------------------------------------------------------------------------- imputation
    def inpainting_loss(
        self,
        z: Tensor,
        x: Tensor,
        weights: Tensor,
        generator: torch.Generator | None,
        prior_weight: float | None = None,
        context: bool = True,
    ) -> Tensor:
        """Yeh et al.'s loss ``(N,)`` of codes ``z`` for flattened images ``x`` ``(N, D)``: the
        contextual loss at the entries ``weights`` covers (Bernoulli NLL for binary data, L1 to
        the bin centres for discrete) plus ``prior_weight`` (default the config's) x the
        discriminator's prior loss log(1 - D(G(z))). D sees what it was trained on: for binary
        data straight-through Bernoulli draws of G(z) (noise from ``generator``), else G(z).
        ``context=False`` drops the contextual term (a control)."""
        lam = self.config.impute_prior_weight if prior_weight is None else prior_weight
        logits = self.generator(z).flatten(1)
        loss = (
            contextual_loss(logits, x, weights, self.levels)
            if context
            else logits.new_zeros(len(z))
        )
        if lam > 0:
            y = torch.sigmoid(logits)
            if self.levels == 2:
                u = torch.rand(y.shape, generator=generator, dtype=y.dtype).to(y.device)
                y = (u < y).to(y.dtype) + (y - y.detach())
            d_logits = self.discriminate(y.view(len(z), *self.input_shape))
            loss = loss - lam * F.softplus(d_logits)  # log(1 - sigmoid(l)) = -softplus(l)
        return loss

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        cfg = self.config
        like = next(self.generator.parameters())
        samples = impute_rows(self, x, mask, num_samples, self._inpaint, like, generator)
        output = cfg.impute_output if self.levels == 2 else "bin-floor(L*G(z))"
        method = (
            f"yeh-inpainting-adam-steps={cfg.impute_steps}-lr={cfg.impute_lr}"
            f"-prior-weight={cfg.impute_prior_weight}-window={cfg.impute_window}-output={output}"
        )
        return ImputeResult(samples, method)

    def _inpaint(self, x: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
        """Yeh et al.'s inpainting of flattened rows ``x`` ``(N, D)`` under ``mask``: one code
        per row from the prior, ``impute_steps`` Adam steps on the codes alone, then G's values
        (sampled, thresholded, or binned for discrete data) everywhere."""
        cfg = self.config
        like = next(self.generator.parameters())
        with frozen(self):  # eval mode (BatchNorm's running statistics), no parameter gradients
            z0 = torch.randn((len(x), cfg.latent_dim), generator=generator, dtype=like.dtype)
            weights = context_weights(mask, self.input_shape, cfg.impute_window)

            def loss(z: Tensor, xr: Tensor, wr: Tensor) -> Tensor:
                return self.inpainting_loss(z, xr, wr, generator)

            z0 = z0.to(like.device)
            z = inpaint_latents(
                loss, x, weights, z0, cfg.impute_steps, cfg.impute_lr, cfg.impute_chunk
            )
            y = self.generate(z).flatten(1)
        if self.levels > 2:
            return (y * self.levels).floor().clamp(max=self.levels - 1)
        if cfg.impute_output == "mode":
            return (y > 0.5).to(y.dtype)
        u = torch.rand(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        return (u < y).to(y.dtype)
