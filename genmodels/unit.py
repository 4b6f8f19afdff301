"""UNIT: unpaired image-to-image translation through a shared latent space (Liu, Breuel & Kautz
2017, https://arxiv.org/abs/1703.00848), the VAE-GAN descendant of CoGAN (Liu & Tuzel 2016,
https://arxiv.org/abs/1606.07536, whose digit -> edge task is ``benchmarks/translate.py``'s).

Assumption: a pair of corresponding images (a, b) has one latent code z from which either can be
drawn. Each domain has an encoder E_a, E_b (a -> the mean of q(z|a) = N(mu_a(a), I), and
likewise for b) and a decoder G_a, G_b (z -> Bernoulli logits). The *last* layers of the two
encoders and the *first* layers of the two decoders are one set of weights, shared: the
high-level representation is common, only the low-level rendering (and reading) of each domain is
its own. Translation a -> b is G_b(mu_a(a)); b -> a is G_a(mu_b(b)).

Loss of the generator phase (encoders and decoders together), per batch of a's and b's that are
*not* paired:

* VAE terms, each domain: ``recon_weight`` x the Bernoulli log-loss of a under G_a(z_a),
  z_a = mu_a(a) + eps (eps ~ N(0, I)), + ``kl_weight`` x KL(N(mu_a, I) || N(0, I)) per latent
  element (mean mu^2 / 2), and the same for b;
* adversarial: D_b judges G_b(z_a) (a translated to b), D_a judges G_a(z_b), as binary images
  with a straight-through gradient (``fakes``, below); D_a / D_b are unconditional PatchGANs
  trained in the ``discriminator`` phase;
* cycle: the translation's probabilities are encoded back by the *other* encoder and decoded to
  the source domain: ``cycle_weight`` x the log-loss of a under G_a(mu_b(G_b(z_a)) + eps), plus
  its KL term (``kl_weight``), and the same for b.

Why here: CycleGAN's U-Nets can map digit -> edge at the pixel level in two ways whose cycles both
close (the true outer contour, or the inner contour with a dilation back: ``genmodels.cyclegan``
explains it), and training falls into the wrong one. Here nothing passes from input to output
except a code at 1/2^depth of the resolution that the other domain's decoder must also render,
through the same first layers; the paper's weight sharing is what ties the two domains'
geometry. Choices: domain-specific stride-2 3x3 convolutions down to ``depth`` levels (width
``channels``, doubling), then shared 3x3 + 1x1 convolutions to ``latent_channels``; decoders the
mirror (shared 3x3 convolutions, then domain-specific nearest upsampling + 3x3 convolutions);
LeakyReLU(0.2) in encoders and D's, ReLU in decoders, no normalisation; Adam (0.5, 0.999),
learning rate 1e-3 (the translators' choice here). The log-loss replaces the paper's L1 for the
reason in ``genmodels.pix2pix`` (L1's gradient vanishes as p saturates on sparse images).

Two defaults differ from the paper, each chosen on dev probes of digit <-> edge (the validation
split, seed 1, width 16, 600 CPU-s, lr to 0 over the second half; IoU of G(x) with the true
edge / with the inner contour x - erode(x), the wrong cycle solution):

* ``fakes="threshold"``: D sees p > 1/2, the image ``translate`` returns, not Bernoulli draws
  of p (``"draw"``, the choice of pix2pix and CycleGAN here). With draws, D won on the
  salt-and-pepper noise of unsure pixels (G's adversarial loss rose from 3.7 to 25) and the
  translations decayed (G: 0.28 / 0.39 at 100 CPU-s, 0.11 / 0.14 at 600); with the threshold
  the game stayed balanced (loss ~1.5) and G reached 0.35 / 0.19.
* ``kl_weight=0`` (the paper: 0.01 per element): the codes' unit-variance noise still
  regularises, but the encoder may outgrow it (mean mu^2 reached ~130 against the noise's
  variance 1), which keeps the rendering precise: 0.60 / 0.12 at 500 CPU-s, against 0.35 /
  0.19 with the KL.

At ``depth=1`` (a 14x14 code) the model falls into the inner contour like CycleGAN (0.06 /
0.64): the coarse code is what ties the geometry. CycleGAN with ``fakes="threshold"`` fell into
it too (0.01 / 0.67 at 600 CPU-s).

On test (``benchmarks/translate.py``, width 16, 1,200 CPU-s): digit -> edge IoU 0.612 (CycleGAN
0.052; the issue's target 0.7) and edge -> digit label kept 72.2 % (CycleGAN 33.8 %; target
90 %): better by far, still short. Digit <-> negative at 600 CPU-s: IoU 0.984 / 0.902.

``translate`` is deterministic (the code's mean, pixels with p > 1/2). Selection: none
(``selection_metric = None``: unpaired training uses no pair to choose its weights); the
validation IoU and L1 of both directions are reported only, as for CycleGAN.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BaseConfig, GenerativeModel, SearchSpec, register
from .layers import adam_per_phase
from .pix2pix import (
    DownPath,
    PatchDiscriminator,
    adversarial,
    binary_fake,
    both_ways_metrics,
    check_fakes,
    check_translator_config,
    gan_init,
    pair,
    reconstruction,
    run_eval,
)


@dataclass(frozen=True)
class UNITConfig(BaseConfig):
    channels: int = 32  # first width of the encoders / last of the decoders (doubling per level)
    depth: int = 2  # stride-2 levels: the code is at 1/2^depth of the image's resolution
    latent_channels: int = 16  # channels of the shared code z
    disc_channels: int = 32
    recon: str = "bce"  # "bce" (Bernoulli log-loss) or "l1" (|p - x|), see genmodels.pix2pix
    recon_weight: float = 10.0  # the VAE reconstruction terms (the paper's 10 over its GAN's 1)
    cycle_weight: float = 10.0
    kl_weight: float = 0.0  # per latent element, on all four codes (the paper's 0.01 blurs here)
    adv_weight: float = 1.0
    fakes: str = "threshold"  # what D sees of a translation: "threshold" (p > 1/2) or "draw"
    beta1: float = 0.5
    lr: float = 1e-3
    domain_a: str = "a"
    domain_b: str = "b"


def _sizes(hw: tuple[int, int], depth: int) -> list[tuple[int, int]]:
    """Spatial sizes at each level: a stride-2, padding-1 3x3 convolution maps n to ceil(n / 2)."""
    out = [tuple(hw)]
    for _ in range(depth):
        h, w = out[-1]
        out.append(((h + 1) // 2, (w + 1) // 2))
    return out


class DecoderBack(nn.Module):
    """One domain's own layers: shared features at the code's resolution -> logits."""

    def __init__(self, c_out: int, channels: int, depth: int) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(depth + 1)]
        self.up = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], c_out, 3, padding=1)

    def forward(self, h: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
        for conv, size in zip(self.up, reversed(sizes[:-1]), strict=True):
            h = F.relu(conv(F.interpolate(h, size=size, mode="nearest")))
        return self.head(h)


@register
class UNIT(GenerativeModel):
    family = "unit"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = UNITConfig
    phases = ("discriminator", "generator")
    capabilities = frozenset({"translate"})
    can_sample = False
    batch_keys = ("x", "x_target")
    directions = ("a2b", "b2a")
    selection_metric = None
    search_space = {
        "channels": SearchSpec("choice", (16, 32)),
        "latent_channels": SearchSpec("choice", (8, 16, 32)),
        "cycle_weight": SearchSpec("choice", (1.0, 10.0)),
        "lr": SearchSpec("loguniform", low=1e-4, high=1e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: UNITConfig) -> None:
        super().__init__(input_shape, levels, config)
        check_translator_config(self.family, self.input_shape, config)
        if config.latent_channels < 1:
            raise ValueError(f"unit: latent_channels must be >= 1, got {config.latent_channels}")
        check_fakes(self.family, config.fakes)
        for key in ("cycle_weight", "kl_weight"):
            if getattr(config, key) < 0:
                raise ValueError(f"unit: {key} must be >= 0, got {getattr(config, key)}")
        c, width, depth = self.input_shape[0], config.channels, config.depth
        top = width * 2**depth
        self.enc_a, self.enc_b = DownPath(c, width, depth), DownPath(c, width, depth)
        self.enc_shared = nn.Sequential(
            nn.Conv2d(top, top, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(top, config.latent_channels, 1),
        )
        self.dec_shared = nn.Sequential(
            nn.Conv2d(config.latent_channels, top, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(top, top, 3, padding=1),
            nn.ReLU(),
        )
        self.dec_a, self.dec_b = DecoderBack(c, width, depth), DecoderBack(c, width, depth)
        self.d_a = PatchDiscriminator(c, config.disc_channels)
        self.d_b = PatchDiscriminator(c, config.disc_channels)
        gan_init(self)
        self._sizes = _sizes(self.input_shape[1:], depth)

    def generator_modules(self) -> tuple[nn.Module, ...]:
        return (self.enc_a, self.enc_b, self.enc_shared, self.dec_shared, self.dec_a, self.dec_b)

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "discriminator":
            return itertools.chain(self.d_a.parameters(), self.d_b.parameters())
        if phase == "generator":
            return itertools.chain(*(m.parameters() for m in self.generator_modules()))
        raise ValueError(f"unit: unknown phase {phase!r}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_per_phase(self)

    def encode(self, x: Tensor, domain: str) -> Tensor:
        """The mean of q(z | x) for images of ``domain`` ("a" or "b")."""
        front = self.enc_a if domain == "a" else self.enc_b
        return self.enc_shared(front(x))

    def decode(self, z: Tensor, domain: str) -> Tensor:
        """Bernoulli logits of ``domain``'s image for codes ``z``."""
        back = self.dec_a if domain == "a" else self.dec_b
        return back(self.dec_shared(z), self._sizes)

    def _both(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of both domains for the same codes (the shared layers run once)."""
        h = self.dec_shared(z)
        return self.dec_a(h, self._sizes), self.dec_b(h, self._sizes)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        a, b = pair(self.family, batch)
        cfg = self.config
        if phase == "discriminator":
            with torch.no_grad():
                za = self.encode(a, "a")
                zb = self.encode(b, "b")
                fake_b = self._fake(torch.sigmoid(self.decode(za + torch.randn_like(za), "b")))
                fake_a = self._fake(torch.sigmoid(self.decode(zb + torch.randn_like(zb), "a")))
            loss = (
                adversarial(self.d_b(b), True)
                + adversarial(self.d_b(fake_b), False)
                + adversarial(self.d_a(a), True)
                + adversarial(self.d_a(fake_a), False)
            )
            return {"loss": loss, "d_loss": loss.detach()}
        if phase == "generator":
            r = cfg.recon
            mu_a, mu_b = self.encode(a, "a"), self.encode(b, "b")
            aa, ab = self._both(mu_a + torch.randn_like(mu_a))  # a's reconstruction, a -> b
            ba, bb = self._both(mu_b + torch.randn_like(mu_b))  # b -> a, b's reconstruction
            p_ab, p_ba = torch.sigmoid(ab), torch.sigmoid(ba)
            adv = adversarial(self.d_b(self._fake(p_ab)), True) + adversarial(
                self.d_a(self._fake(p_ba)), True
            )
            rec = reconstruction(aa, a, r) + reconstruction(bb, b, r)
            mu_aba, mu_bab = self.encode(p_ab, "b"), self.encode(p_ba, "a")
            cyc = reconstruction(
                self.decode(mu_aba + torch.randn_like(mu_aba), "a"), a, r
            ) + reconstruction(self.decode(mu_bab + torch.randn_like(mu_bab), "b"), b, r)
            kl = 0.5 * sum((m**2).mean() for m in (mu_a, mu_b, mu_aba, mu_bab))
            loss = (
                cfg.adv_weight * adv
                + cfg.recon_weight * rec
                + cfg.cycle_weight * cyc
                + cfg.kl_weight * kl
            )
            return {
                "loss": loss,
                "g_adv": adv.detach(),
                "recon": rec.detach(),
                "cycle": cyc.detach(),
                "kl": kl.detach(),
            }
        raise ValueError(f"unit: unknown phase {phase!r}")

    def _fake(self, p: Tensor) -> Tensor:
        """The binary image D sees of probabilities ``p``, with a straight-through gradient."""
        return binary_fake(p, self.config.fakes)

    def translate(
        self, x: Tensor, direction: str = "a2b", generator: torch.Generator | None = None
    ) -> Tensor:
        self.check_direction(direction)
        x = self.check_input(x)
        src, dst = ("a", "b") if direction == "a2b" else ("b", "a")
        return run_eval(self, lambda: (self.decode(self.encode(x, src), dst) > 0).to(x.dtype))

    def validation_metrics(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """IoU and L1 of both directions against the batch's pairs (reported, not selected on)."""
        return both_ways_metrics(self, batch)
