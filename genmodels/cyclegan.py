"""CycleGAN: unpaired image-to-image translation with cycle consistency (Zhu, Park, Isola & Efros
2017, https://arxiv.org/abs/1703.10593).

Two generators, G: A -> B and F: B -> A, and two discriminators, D_B (real b vs G(a)) and D_A
(real a vs F(b)), trained on images of each domain that are *not* paired. The adversarial losses
alone would let G map A onto B's distribution in any way; the cycle-consistency loss
||F(G(a)) - a||_1 + ||G(F(b)) - b||_1 asks each map to be the other's inverse, which keeps the
content of an image through the translation. An identity loss ||G(b) - b||_1 + ||F(a) - a||_1
(the paper's 0.5 x the cycle weight, for photo <-> painting, to keep colours) discourages
needless changes; it is off by default (``identity_weight = 0``): it asks F to leave a digit
unchanged while mapping a negative to a digit, so F must first tell the domains apart, and
here it stalled training (digit <-> negative, 600 CPU-s: IoU 0.68 / 0.00 with it; 0.96 / 0.69
after 51 steps without). With weight 0 its two extra U-Net passes per generator are skipped
(1.43 -> 1.04 CPU-s a step at width 16, batch 64; the loss is the same).

Choices here (shared with ``genmodels.pix2pix``): U-Net generators (per-pixel probabilities),
unconditional PatchGAN discriminators (one logit per patch of one image), Bernoulli draws with a
straight-through gradient as fakes so D compares binary with binary, two phases
``("discriminator", "generator")`` (D_A and D_B step together, G and F together), Adam (0.5,
0.999). The cycle and identity terms compare probabilities with binary images by
``recon`` (``genmodels.pix2pix.reconstruction``): by default the Bernoulli log-loss on the
logits, whose gradient does not vanish when p saturates (the paper's L1, ``recon="l1"``, is
|p - x| per pixel: on sparse edges it drives every p to 0 and learns nothing more); the cycle
goes through the first generator's probabilities (not a draw), so its gradient is exact
(``cycle_draws=True``: through the straight-through draws D sees instead).

Options of the paper, off by default: ``history`` (its pool of 50 past fakes shown to D),
``gan_loss="lsgan"`` (its least-squares GAN loss).

Digit <-> edge (edge = dilate(x) - x, ``benchmarks/translate.py``) is NOT learned, and no option
here changed that. The cycle has a second, shifted solution: G = the *inner* contour
x - erode(x) (a subset of the digit) and F = a dilation (which fills a contour *and* covers it),
since filling the inner contour gives x back exactly and the inner contour of dilate(x) is
the edge again, up to closing(x) != x (IoU 0.94 on the test digits): the cycles close. It
differs from the true pair by one pixel of morphology, which a discriminator can only see
through the spread of stroke widths (the inner contour of a thick digit is the outer contour
of a thinner one). Training falls into it within ~100 steps and stays: on the validation
split, the IoU of G(x) with the inner contour is 0.50-0.76 and with the true edge <= 0.10, and
F(e) matches dilate(x) (IoU 0.51-0.69) rather than x (0.18-0.25), at width 16, 200-450 steps,
at depth 1, for cycle weight 10, 2 or 0.5, a 50-fake history, D twice as wide, the cycle
through draws, or the least-squares loss (README.md, translation, lists each probe). Spectral
norm on both D's (``spectral_norm``, which made the conditional GAN competitive) did not help
either: 600 CPU-s, seed 1, validation IoU digit -> edge 0.002 and edge -> digit label kept 26 %
(0.004 and 30 % with a 50-fake history). At the
defaults (depth 2) 600 CPU-s (420 steps) gave test IoU 0.041 and edge -> digit label kept
42.8 %; 1,200 CPU-s (1,219 steps) 0.052 and 33.8 %, G having collapsed to stripes. Hence the
options stay off.

Batches carry ``x`` (domain a) and ``x_target`` (domain b); in an unpaired dataset they come from
disjoint rows, and nothing here assumes they match. ``translate(x, "a2b" | "b2a")`` is
deterministic (pixels with p > 1/2). Selection: none (``selection_metric = None``, the final
epoch): unpaired training uses no pair, not even to choose its weights; the validation IoU and
L1 of both directions against the paired validation split are reported only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import BaseConfig, GenerativeModel, SearchSpec, register
from .layers import adam_per_phase, spectral_normalise
from .pix2pix import (
    PatchDiscriminator,
    UNet,
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
class CycleGANConfig(BaseConfig):
    channels: int = 32
    depth: int = 2
    disc_channels: int = 32
    recon: str = "bce"  # cycle and identity terms: "bce" or "l1" (see genmodels.pix2pix)
    cycle_weight: float = 10.0
    identity_weight: float = 0.0  # the paper's 0.5 x cycle_weight hurts here: see the docstring
    adv_weight: float = 1.0
    history: int = 0  # fakes kept per domain for D (the paper's 50); 0 = D sees this step's only
    cycle_draws: bool = False  # cycle through the Bernoulli draws D sees, not the probabilities
    gan_loss: str = "bce"  # "bce" (the GAN log-loss) or "lsgan" (least squares, the paper's)
    spectral_norm: bool = False  # every weight of D_A and D_B over its largest singular value
    fakes: str = "draw"  # what D sees of a translation: "draw" (Bernoulli) or "threshold" (p > 1/2)
    beta1: float = 0.5
    lr: float = 1e-3  # not the paper's 2e-4: see the module docstring
    domain_a: str = "a"
    domain_b: str = "b"


GAN_LOSSES = ("bce", "lsgan")


def gan_term(logits: Tensor, real: bool, kind: str) -> Tensor:
    """The adversarial term of patch ``logits`` against all-real or all-fake: ``"bce"``, the
    log-loss (``genmodels.pix2pix.adversarial``), or ``"lsgan"``, the mean of (logit - 1)^2 or
    logit^2 (Mao et al. 2017; the CycleGAN paper's choice)."""
    if kind == "bce":
        return adversarial(logits, real)
    return ((logits - 1.0) ** 2 if real else logits**2).mean()


def cycle_loss(
    a: Tensor, b: Tensor, forward: Callable[[Tensor], Tensor], backward: Callable[[Tensor], Tensor]
) -> Tensor:
    """``mean |backward(forward(a)) - a| + mean |forward(backward(b)) - b|``: zero exactly when
    the two maps invert each other on these images."""
    return (backward(forward(a)) - a).abs().mean() + (forward(backward(b)) - b).abs().mean()


@register
class CycleGAN(GenerativeModel):
    family = "cyclegan"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = CycleGANConfig
    phases = ("discriminator", "generator")
    capabilities = frozenset({"translate"})
    can_sample = False
    batch_keys = ("x", "x_target")
    directions = ("a2b", "b2a")
    selection_metric = None
    search_space = {
        "channels": SearchSpec("choice", (16, 32)),
        "cycle_weight": SearchSpec("choice", (5.0, 10.0)),
        "lr": SearchSpec("loguniform", low=1e-4, high=1e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: CycleGANConfig) -> None:
        super().__init__(input_shape, levels, config)
        check_translator_config(self.family, self.input_shape, config)
        for key in ("cycle_weight", "identity_weight", "history"):
            if getattr(config, key) < 0:
                raise ValueError(f"cyclegan: {key} must be >= 0, got {getattr(config, key)}")
        check_fakes(self.family, config.fakes)
        if config.gan_loss not in GAN_LOSSES:
            known = ", ".join(GAN_LOSSES)
            raise ValueError(f"cyclegan: gan_loss must be one of {known}, got {config.gan_loss!r}")
        c = self.input_shape[0]
        self.g_ab = UNet(c, c, config.channels, config.depth)
        self.g_ba = UNet(c, c, config.channels, config.depth)
        self.d_a = PatchDiscriminator(c, config.disc_channels)
        self.d_b = PatchDiscriminator(c, config.disc_channels)
        gan_init(self)
        if config.spectral_norm:
            spectral_normalise(self.d_a, self.d_b)
        # past fakes shown to D (not weights: not in the state dict), one pool per domain
        self._pools: dict[str, Tensor] = {}

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "discriminator":
            return itertools.chain(self.d_a.parameters(), self.d_b.parameters())
        if phase == "generator":
            return itertools.chain(self.g_ab.parameters(), self.g_ba.parameters())
        raise ValueError(f"cyclegan: unknown phase {phase!r}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_per_phase(self)

    def to_b(self, a: Tensor) -> Tensor:
        """G's probabilities for images of domain a."""
        return torch.sigmoid(self.g_ab(a))

    def to_a(self, b: Tensor) -> Tensor:
        """F's probabilities for images of domain b."""
        return torch.sigmoid(self.g_ba(b))

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        a, b = pair(self.family, batch)
        cfg = self.config
        gl = cfg.gan_loss
        if phase == "discriminator":
            with torch.no_grad():
                fake_b = self._from_pool("b", binary_fake(self.to_b(a), cfg.fakes))
                fake_a = self._from_pool("a", binary_fake(self.to_a(b), cfg.fakes))
            loss = (
                gan_term(self.d_b(b), True, gl)
                + gan_term(self.d_b(fake_b), False, gl)
                + gan_term(self.d_a(a), True, gl)
                + gan_term(self.d_a(fake_a), False, gl)
            )
            return {"loss": loss, "d_loss": loss.detach()}
        if phase == "generator":
            pb, pa = self.to_b(a), self.to_a(b)
            db, da = binary_fake(pb, cfg.fakes), binary_fake(pa, cfg.fakes)
            adv = gan_term(self.d_b(db), True, gl) + gan_term(self.d_a(da), True, gl)
            r = cfg.recon
            if cfg.cycle_draws:  # no channel D cannot see: F reads the same binary image as D_B
                pb, pa = db, da
            cyc = reconstruction(self.g_ba(pb), a, r) + reconstruction(self.g_ab(pa), b, r)
            loss = cfg.adv_weight * adv + cfg.cycle_weight * cyc
            out = {"g_adv": adv.detach(), "cycle": cyc.detach()}
            if cfg.identity_weight > 0:  # two more U-Net passes each way: only when weighted
                idt = reconstruction(self.g_ab(b), b, r) + reconstruction(self.g_ba(a), a, r)
                loss = loss + cfg.identity_weight * idt
                out["idt"] = idt.detach()
            return {"loss": loss, **out}
        raise ValueError(f"cyclegan: unknown phase {phase!r}")

    def _from_pool(self, domain: str, fakes: Tensor) -> Tensor:
        """The paper's image pool: with ``history`` > 0, each fake is, with probability 1/2,
        swapped for a stored one (which the new fake replaces); the pool first fills with the
        fakes it is shown. D then sees fakes from past generators too and cannot win by tracking
        only the current one."""
        size = self.config.history
        if size == 0:
            return fakes
        pool = self._pools.get(domain)
        if pool is None or pool.shape[1:] != fakes.shape[1:]:
            pool = fakes[:0]
        out = fakes.clone()
        for i in range(len(fakes)):
            if len(pool) < size:
                pool = torch.cat([pool, fakes[i : i + 1]])
            elif torch.rand(()) < 0.5:
                j = int(torch.randint(size, ()))
                out[i] = pool[j]
                pool[j] = fakes[i]
        self._pools[domain] = pool
        return out

    def translate(
        self, x: Tensor, direction: str = "a2b", generator: torch.Generator | None = None
    ) -> Tensor:
        self.check_direction(direction)
        x = self.check_input(x)
        net = self.g_ab if direction == "a2b" else self.g_ba
        return run_eval(self, lambda: (net(x) > 0).to(x.dtype))

    def validation_metrics(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """IoU and L1 of both directions against the batch's pairs (reported, not selected on)."""
        return both_ways_metrics(self, batch)
