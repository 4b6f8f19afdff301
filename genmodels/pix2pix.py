"""pix2pix: paired image-to-image translation with a conditional GAN (Isola, Zhu, Zhou & Efros
2017, https://arxiv.org/abs/1611.07004).

Given pairs (x, y) of the same scene in two domains, a generator G maps x to y. It is trained on
L1(G(x), y), which gets the low frequencies right but blurs, plus a conditional adversarial loss:
a PatchGAN discriminator D sees (x, y) or (x, G(x)) and classifies each patch real or fake, which
penalises structure at the patch scale. G is a U-Net: an encoder-decoder whose skip connections
carry the input's detail straight to the output, since input and output share their layout.

Choices here:

* a small U-Net for small images: ``depth`` stride-2 3x3 convolutions down (``channels``,
  doubling), nearest-neighbour upsampling to the skip's size + 3x3 convolution up, skips
  concatenated, a 1x1 convolution to logits; LeakyReLU(0.2) down, ReLU up, no normalisation (any
  H, W works, odd sizes included). D: (x, y) concatenated, two stride-2 3x3 convolutions and a
  3x3 head to one logit per patch. Weights N(0, 0.02) (as DCGAN/pix2pix).
* binary data: G's output is a probability p per pixel. The paper's L1 term is, for a pixel in
  {0, 1}, |p - y|: linear in p, so through the sigmoid its gradient is p (1 - p) times a constant
  and vanishes once p saturates. On sparse targets (edges: 13% of pixels) G first drives every
  p towards 0, the majority, and stays there: 720 steps of digit -> edge gave IoU 0.000 (and
  170 steps at the learning rate below, where the log-loss reached 0.79). So the
  reconstruction term is, by default (``recon="bce"``), the Bernoulli log-loss of the target
  under p (cross-entropy on the logits: the per-pixel likelihood of binary data, as L1 is the
  Laplace likelihood of grey values), whose gradient in the logit is p - y and never vanishes;
  ``recon="l1"`` keeps the paper's term. Weight ``recon_weight`` (100, the paper's). D never
  sees probabilities, only Bernoulli draws of them with a
  straight-through gradient (as ``genmodels.gan``), so it compares binary with binary.
* two phases, ``("discriminator", "generator")``, one Adam each (betas (0.5, 0.999)), learning
  rate 1e-3 rather than the paper's 2e-4 (batch 1 on 256x256 photos there): on 28x28 digits
  in batches of 64, 60 CPU-s of digit -> edge reached a test IoU of 0.79 at 1e-3 and 0.02 at
  2e-4 (``benchmarks/translate.py`` settings).
* ``translate(x, "a2b")`` is deterministic: the pixels where p > 1/2 (the paper's test-time
  dropout noise is left out; a seed changes nothing). pix2pix maps one way only: ``"b2a"`` is a
  ``ValueError`` naming ``a2b``. ``domain_a`` / ``domain_b`` name the domains (labels recorded
  with the config, e.g. "digit" / "edge"; the data's ``x`` is a, ``x_target`` is b).
* no likelihood and no unconditional sample (``can_sample = False``): the trainer selects on the
  validation IoU of the foreground pixels against the true target (``validation_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BaseConfig, GenerativeModel, SearchSpec, register
from .layers import adam_per_phase


@dataclass(frozen=True)
class Pix2PixConfig(BaseConfig):
    channels: int = 32  # the U-Net's first width (doubling per level)
    depth: int = 2  # stride-2 levels of the U-Net
    disc_channels: int = 32
    recon: str = "bce"  # "bce" (Bernoulli log-loss of the target) or "l1" (|p - y|)
    recon_weight: float = 100.0
    adv_weight: float = 1.0
    beta1: float = 0.5
    lr: float = 1e-3  # not the paper's 2e-4: see the module docstring
    domain_a: str = "a"
    domain_b: str = "b"


def foreground_iou(pred: Tensor, truth: Tensor) -> Tensor:
    """Per-example IoU ``(B,)`` of the foreground (pixels = 1) of two binary batches; two empty
    foregrounds count as 1."""
    p, t = pred.flatten(1) > 0.5, truth.flatten(1) > 0.5
    inter, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mean_l1(pred: Tensor, truth: Tensor) -> Tensor:
    """Per-example mean absolute difference ``(B,)``."""
    return (pred.flatten(1).float() - truth.flatten(1).float()).abs().mean(1)


RECON = ("bce", "l1")


def reconstruction(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """The mean per-pixel reconstruction term of G's ``logits`` against a binary ``target``:
    ``"bce"``, the Bernoulli log-loss (gradient p - y in the logit), or ``"l1"``, |p - y|."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return (torch.sigmoid(logits) - target).abs().mean()


def straight_through_bernoulli(p: Tensor) -> Tensor:
    """Bernoulli draws of ``p`` forward, the gradient of ``p`` backward."""
    return torch.bernoulli(p.detach()) + (p - p.detach())  # exactly 0 or 1 forward


FAKES = ("draw", "threshold")


def straight_through_threshold(p: Tensor) -> Tensor:
    """``p > 1/2`` forward (the image ``translate`` returns), the gradient of ``p`` backward."""
    return (p.detach() > 0.5).to(p.dtype) + (p - p.detach())  # exactly 0 or 1 forward


def binary_fake(p: Tensor, kind: str) -> Tensor:
    """The binary image a discriminator sees of probabilities ``p``, with a straight-through
    gradient: ``"draw"``, Bernoulli draws (salt-and-pepper where p is unsure), or
    ``"threshold"``, p > 1/2 (no noise for D to spot: the image the translator returns)."""
    return straight_through_threshold(p) if kind == "threshold" else straight_through_bernoulli(p)


def check_fakes(family: str, kind: str) -> None:
    if kind not in FAKES:
        raise ValueError(f"{family}: fakes must be one of {', '.join(FAKES)}, got {kind!r}")


class DownPath(nn.Module):
    """A 3x3 stem and ``depth`` stride-2 3x3 convolutions (width ``channels``, doubling), with
    LeakyReLU(0.2): the U-Net's encoder, and each UNIT domain's own encoder layers."""

    def __init__(self, c_in: int, channels: int, depth: int) -> None:
        super().__init__()
        self.widths = [channels * 2**i for i in range(depth + 1)]
        self.stem = nn.Conv2d(c_in, self.widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(self.widths[i], self.widths[i + 1], 3, stride=2, padding=1)
            for i in range(depth)
        )

    def levels(self, x: Tensor) -> list[Tensor]:
        """The features of every level, the full resolution first."""
        h = F.leaky_relu(self.stem(2 * x - 1), 0.2)
        out = [h]
        for conv in self.down:
            h = F.leaky_relu(conv(h), 0.2)
            out.append(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The deepest level's features."""
        return self.levels(x)[-1]


class UNet(DownPath):
    """``(B, C, H, W)`` → logits of the same shape, with skips at every level."""

    def __init__(self, c_in: int, c_out: int, channels: int, depth: int) -> None:
        super().__init__(c_in, channels, depth)
        widths = self.widths
        self.up = nn.ModuleList(
            nn.Conv2d(
                widths[i + 1] if i == depth - 1 else 2 * widths[i + 1], widths[i], 3, padding=1
            )
            for i in range(depth)
        )
        self.head = nn.Conv2d(2 * widths[0], c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = self.levels(x)
        h = skips.pop()
        for conv in reversed(self.up):
            skip = skips.pop()
            h = F.relu(conv(F.interpolate(h, size=skip.shape[-2:], mode="nearest")))
            h = torch.cat([h, skip], 1)
        return self.head(h)


class PatchDiscriminator(nn.Module):
    """``(x, y)`` → one logit per patch ``(B, h, w)``."""

    def __init__(self, c_in: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * channels, 1, 3, padding=1),
        )

    def forward(self, *images: Tensor) -> Tensor:
        return self.net(torch.cat([2 * i - 1 for i in images], 1)).squeeze(1)


def gan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


def adversarial(logits: Tensor, real: bool) -> Tensor:
    """BCE of patch logits against all-real or all-fake."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def check_translator_config(family: str, input_shape, config) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{family}: translates images (C, H, W), got input_shape {input_shape}")
    for key in ("channels", "depth", "disc_channels"):
        if getattr(config, key) < 1:
            raise ValueError(f"{family}: {key} must be >= 1, got {getattr(config, key)}")
    if config.recon not in RECON:
        raise ValueError(f"{family}: recon must be one of {', '.join(RECON)}, got {config.recon!r}")
    for key in ("recon_weight", "adv_weight"):
        if getattr(config, key, 0.0) < 0:
            raise ValueError(f"{family}: {key} must be >= 0, got {getattr(config, key)}")
    if not 0.0 <= config.beta1 < 1.0:
        raise ValueError(f"{family}: beta1 must be in [0, 1), got {config.beta1}")


@register
class Pix2Pix(GenerativeModel):
    family = "pix2pix"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = Pix2PixConfig
    phases = ("discriminator", "generator")
    capabilities = frozenset({"translate"})
    can_sample = False
    batch_keys = ("x", "x_target")
    directions = ("a2b",)
    selection_metric = "iou"
    search_space = {
        "channels": SearchSpec("choice", (16, 32, 64)),
        "recon_weight": SearchSpec("choice", (10.0, 100.0)),
        "lr": SearchSpec("loguniform", low=1e-4, high=1e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: Pix2PixConfig) -> None:
        super().__init__(input_shape, levels, config)
        check_translator_config(self.family, self.input_shape, config)
        c = self.input_shape[0]
        self.generator_net = UNet(c, c, config.channels, config.depth)
        self.discriminator = PatchDiscriminator(2 * c, config.disc_channels)
        gan_init(self)

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase == "discriminator":
            return self.discriminator.parameters()
        if phase == "generator":
            return self.generator_net.parameters()
        raise ValueError(f"pix2pix: unknown phase {phase!r}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_per_phase(self)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x, t = pair(self.family, batch)
        cfg = self.config
        if phase == "discriminator":
            with torch.no_grad():
                fake = torch.bernoulli(torch.sigmoid(self.generator_net(x)))
            loss = adversarial(self.discriminator(x, t), True) + adversarial(
                self.discriminator(x, fake), False
            )
            return {"loss": loss, "d_loss": loss.detach()}
        if phase == "generator":
            logits = self.generator_net(x)
            rec = reconstruction(logits, t, cfg.recon)
            adv = adversarial(
                self.discriminator(x, straight_through_bernoulli(logits.sigmoid())), True
            )
            loss = cfg.recon_weight * rec + cfg.adv_weight * adv
            return {"loss": loss, "recon": rec.detach(), "g_adv": adv.detach()}
        raise ValueError(f"pix2pix: unknown phase {phase!r}")

    def translate(
        self, x: Tensor, direction: str = "a2b", generator: torch.Generator | None = None
    ) -> Tensor:
        self.check_direction(direction)
        x = self.check_input(x)
        return run_eval(self, lambda: (self.generator_net(x) > 0).to(x.dtype))

    def validation_metrics(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, t = pair(self.family, batch)
        out = self.translate(x, "a2b")
        return {"iou": foreground_iou(out, t), "l1": mean_l1(out, t)}


def both_ways_metrics(model, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """IoU and L1 of a two-way translator's ``a2b`` and ``b2a`` against the batch's pairs
    (CycleGAN, UNIT: reported, not selected on)."""
    a, b = pair(model.family, batch)
    to_b, to_a = model.translate(a, "a2b"), model.translate(b, "b2a")
    return {
        "iou_a2b": foreground_iou(to_b, b),
        "iou_b2a": foreground_iou(to_a, a),
        "l1_a2b": mean_l1(to_b, b),
        "l1_b2a": mean_l1(to_a, a),
    }


def pair(family: str, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(x, x_target)`` of a training batch as floats; a batch without ``x_target`` is an error
    that says the family needs a pair dataset."""
    if "x_target" not in batch:
        raise ValueError(
            f"{family} trains on batches with x and x_target (a pair dataset such as "
            f"mnist-edge-paired); this batch has {', '.join(sorted(batch))}"
        )
    return batch["x"].float(), batch["x_target"].float()


def run_eval(module: nn.Module, fn):
    """``fn()`` in eval mode without gradients, the module's mode restored."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            return fn()
    finally:
        module.train(was)
