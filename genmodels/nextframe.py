"""nextframe: next-frame prediction, trained with MSE alone or with MSE + adversarial + gradient
difference loss (Mathieu, Couprie & LeCun 2016, https://arxiv.org/abs/1511.05440; the blur of the
MSE predictor: Lotter, Kreiman & Cox 2016, https://arxiv.org/abs/1605.08104).

An example is a whole sequence ``x`` of shape ``(T, C, H, W)`` (``input_ranks = (4,)``) in the
data space 0..L-1 (grey: the moving digits have L = 256). A predictor maps the last ``context``
frames to the next one; rolled out, its own predictions become its input. A model trained with
mean squared error predicts the conditional *mean* of the next frame, which averages every future
it cannot tell apart into a blur; an adversarial term (a discriminator that sees the past and a
frame and tells a real next frame from a predicted one) and the gradient difference loss push it
to commit to one sharp future.

Choices here:

* **Predictor**: the U-Net of ``genmodels.pix2pix`` (stride-2 3x3 convolutions down, nearest
  upsampling + 3x3 convolution up, skips), on the ``context`` frames stacked as channels, one
  sigmoid output per pixel: the next frame's expected value on [0, 1] (times L-1 in the data
  space). A conv encoder-decoder over stacked frames (Mathieu's multi-scale net without the
  scales) is the smallest model that can see a motion: ``depth`` levels give a receptive field
  well beyond the 3 px/frame the digits move. The output is *residual*: the last frame plus the
  U-Net's (linear) output, so an untrained model starts as the copy-last-frame baseline; a
  sigmoid output under MSE was seen to collapse to an all-black frame (the mean of a mostly black
  target) within 50 steps and never leave it. The loss sees the unclipped prediction (so every
  pixel keeps a gradient); what is fed back in a rollout and returned is clipped to [0, 1].
* **Teacher forcing** (the default): every window of ``context`` true frames in a sequence
  predicts its next frame, all windows in one batched pass (T = 10, context 5: five targets per
  sequence); at test time the model is rolled out on its own predictions. ``train_rollout=true``
  instead back-propagates through the model's own rollout of the ``T - context`` frames (used
  as at test time). It was tried first and left off: on moving-mnist-1 it fell into the
  erase-the-digit optimum (per-pixel MSE 0.020, the all-black frame's) within 50 steps and had
  not left it after 300, while teacher forcing reached 0.011 at t+1 (copy-last: 0.024) in 300
  steps of the same cost.
* **Losses** (every frame on the [0, 1] scale, means over pixels): MSE; the gradient difference
  loss, mean | |dY| - |dŶ| | over horizontal and vertical neighbour differences (alpha = 1), with
  ``gdl_weight``; the non-saturating adversarial loss with ``adv_weight``. ``adv_weight = 0`` (the
  default) is variant (a), MSE only: no discriminator is built and there is one phase.
  ``adv_weight > 0`` is variant (b): two phases ``("discriminator", "generator")``, one Adam each
  (``beta1``), and a conditional PatchGAN discriminator (``genmodels.pix2pix``) on the *true*
  ``context`` frames before a frame and that frame (true, or predicted): it asks whether the
  frame is a plausible continuation of the real past. Mathieu's weights are lambda_adv = 0.05,
  lambda_gdl = 1 (the recipe: ``adv_weight=0.05 gdl_weight=1``).
* **predict(frames, steps)** rolls out ``steps`` frames after ``frames`` ``(B, T', C, H, W)``
  (``T' >= context``; the last ``context`` are used) and returns ``(B, steps, C, H, W)``
  expected values in 0..L-1 as floats, not rounded or thresholded, so blur is visible. It is
  deterministic (the seed changes nothing).
* **No likelihood, no sample** (``can_sample = False``): ``validation_metrics`` gives, per
  sequence, the per-pixel MSE of the rollout at t+1 and at its last step, the same for the
  copy-last-frame baseline, the PSNR at t+1, and ``neg_mse`` (minus the per-pixel MSE over the
  whole rollout), which the trainer selects on (``selection_metric``). Both variants are
  selected by the same rule, so a comparison between them is fair; it may favour a blurrier
  epoch of the adversarial variant.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BaseConfig, GenerativeModel, SearchSpec, register
from .layers import adam_per_phase
from .pix2pix import PatchDiscriminator, UNet, adversarial, gan_init, run_eval


@dataclass(frozen=True)
class NextFrameConfig(BaseConfig):
    context: int = 5  # frames the predictor sees
    channels: int = 16  # the U-Net's first width (doubling per level)
    depth: int = 3  # stride-2 levels of the U-Net
    adv_weight: float = 0.0  # 0: variant (a), MSE only; > 0: (b), with a discriminator
    gdl_weight: float = 0.0  # gradient difference loss (Mathieu: 1 with the adversarial term)
    disc_channels: int = 16
    train_rollout: bool = False  # True: back-propagate through the model's own rollout
    head: str = "filter"  # "filter": a per-pixel filter of the last frame; "residual"
    kernel_size: int = 9  # the filter's window (odd): displacements up to kernel_size // 2 px
    beta1: float = 0.5
    lr: float = 2e-3


def gradient_difference(pred: Tensor, truth: Tensor) -> Tensor:
    """Per-example gradient difference loss ``(B,)`` (alpha = 1): the mean over pixels of
    | |truth_i - truth_j| - |pred_i - pred_j| | for horizontal and vertical neighbours."""
    out = 0.0
    for dim in (-1, -2):
        gt = truth.diff(dim=dim).abs()
        gp = pred.diff(dim=dim).abs()
        out = out + (gt - gp).abs().flatten(1).mean(1)
    return out


@register
class NextFrame(GenerativeModel):
    family = "nextframe"
    likelihood = "none"
    data_kinds = ("binary", "discrete")
    Config = NextFrameConfig
    phases = ("main",)
    capabilities = frozenset({"predict"})
    can_sample = False
    input_ranks = (4,)
    selection_metric = "neg_mse"
    search_space = {
        "channels": SearchSpec("choice", (16, 32)),
        "lr": SearchSpec("loguniform", low=2e-4, high=2e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: NextFrameConfig) -> None:
        super().__init__(input_shape, levels, config)
        t, c = self.input_shape[:2]
        if not 1 <= config.context < t:
            raise ValueError(
                f"nextframe: context must be in 1..{t - 1} (sequences have {t} frames), "
                f"got {config.context}"
            )
        for key in ("channels", "depth", "disc_channels"):
            if getattr(config, key) < 1:
                raise ValueError(f"nextframe: {key} must be >= 1, got {getattr(config, key)}")
        for key in ("adv_weight", "gdl_weight"):
            if getattr(config, key) < 0:
                raise ValueError(f"nextframe: {key} must be >= 0, got {getattr(config, key)}")
        if not 0.0 <= config.beta1 < 1.0:
            raise ValueError(f"nextframe: beta1 must be in [0, 1), got {config.beta1}")
        if config.head not in ("filter", "residual"):
            raise ValueError(f"nextframe: head must be 'filter' or 'residual', got {config.head!r}")
        if config.kernel_size < 1 or config.kernel_size % 2 == 0:
            raise ValueError(f"nextframe: kernel_size must be odd, got {config.kernel_size}")
        out = config.kernel_size**2 if config.head == "filter" else c
        self.predictor = UNet(config.context * c, out, config.channels, config.depth)
        if config.head == "filter":  # start as copy-last: the centre tap carries the weight
            with torch.no_grad():
                self.predictor.head.weight.mul_(0.1)
                self.predictor.head.bias.zero_()
                self.predictor.head.bias[config.kernel_size**2 // 2] = 4.0
        self.discriminator = None
        if config.adv_weight > 0:
            self.discriminator = PatchDiscriminator((config.context + 1) * c, config.disc_channels)
            self.phases = ("discriminator", "generator")
            gan_init(self.discriminator)  # DCGAN's N(0, 0.02); the predictor keeps torch's

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self.input_shape[1:]

    # ------------------------------------------------------------------------------- the maths
    def step(self, window: Tensor) -> Tensor:
        """``(B, K, C, H, W)`` frames on [0, 1] → the next frame ``(B, C, H, W)``.

        ``head="filter"``: a dynamic filter (De Brabandere et al. 2016; Finn et al. 2016's
        pixel-motion kernels): per pixel, the U-Net's ``k*k`` logits are softmax weights over the
        last frame's ``k x k`` neighbourhood, so the prediction is a convex combination of
        last-frame pixels (in [0, 1]). Motion is where the weight sits; uncertainty spreads it,
        which is exactly the blur of an MSE predictor. ``"residual"``: the last frame plus the
        U-Net's output (unbounded: the loss sees it as is; rollouts and ``predict`` clip it)."""
        last = window[:, -1]
        out = self.predictor(window.flatten(1, 2))
        if self.config.head == "residual":
            return last + out
        k = self.config.kernel_size
        b, c, h, w = last.shape
        weights = out.softmax(1)  # (B, k*k, H, W)
        patches = F.unfold(last, k, padding=k // 2).view(b, c, k * k, h, w)
        return (patches * weights[:, None]).sum(2)

    def rollout(self, past: Tensor, steps: int) -> Tensor:
        """``steps`` frames after ``past`` ``(B, T', C, H, W)`` on [0, 1], each predicted from the
        previous ``context`` frames (its own predictions once past the input) → ``(B, steps,
        C, H, W)``."""
        k = self.config.context
        frames = list(past[:, -k:].unbind(1))
        out = []
        for _ in range(steps):
            nxt = self.step(torch.stack(frames[-k:], 1))
            out.append(nxt)
            frames.append(nxt.clamp(0.0, 1.0))
        return torch.stack(out, 1)

    def _scaled(self, x: Tensor) -> Tensor:
        return x.float() / (self.levels - 1)

    def _predictions(self, x01: Tensor) -> Tensor:
        """The training predictions of frames ``context..T-1`` ``(B, S, C, H, W)``."""
        k, t = self.config.context, x01.shape[1]
        if self.config.train_rollout:
            return self.rollout(x01[:, :k], t - k)
        windows = x01.unfold(1, k, 1)[:, : t - k]  # (B, S, C, H, W, k)
        windows = windows.permute(0, 1, 5, 2, 3, 4).flatten(0, 1)  # (B*S, k, C, H, W)
        return self.step(windows).unflatten(0, (len(x01), t - k))

    def _conditions(self, x01: Tensor) -> Tensor:
        """The true ``context`` frames before each predicted frame, ``(B*S, k*C, H, W)``."""
        k, t = self.config.context, x01.shape[1]
        windows = x01.unfold(1, k, 1)[:, : t - k].permute(0, 1, 5, 2, 3, 4)
        return windows.flatten(0, 1).flatten(1, 2)

    # ------------------------------------------------------------------------------- training
    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        if phase in ("main", "generator"):
            return self.predictor.parameters()
        if phase == "discriminator" and self.discriminator is not None:
            return self.discriminator.parameters()
        raise ValueError(f"nextframe: unknown phase {phase!r}")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_per_phase(self)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"]
        if x.dim() != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"nextframe trains on sequences (B, {self.input_shape}); got {tuple(x.shape)}"
            )
        x01 = self._scaled(x)
        k = self.config.context
        target = x01[:, k:]
        cfg = self.config
        if phase == "discriminator":
            with torch.no_grad():
                fake = self._predictions(x01).flatten(0, 1)
            cond = self._conditions(x01)
            real = target.flatten(0, 1)
            loss = adversarial(self.discriminator(cond, real), True) + adversarial(
                self.discriminator(cond, fake), False
            )
            return {"loss": loss, "d_loss": loss.detach()}
        if phase not in ("main", "generator"):
            raise ValueError(f"nextframe: unknown phase {phase!r}")
        pred = self._predictions(x01)
        mse = (pred - target).pow(2).mean()
        loss, out = mse, {"mse": mse.detach()}
        if cfg.gdl_weight > 0:
            gdl = gradient_difference(pred.flatten(0, 1), target.flatten(0, 1)).mean()
            loss = loss + cfg.gdl_weight * gdl
            out["gdl"] = gdl.detach()
        if self.discriminator is not None:
            adv = adversarial(self.discriminator(self._conditions(x01), pred.flatten(0, 1)), True)
            loss = loss + cfg.adv_weight * adv
            out["g_adv"] = adv.detach()
        return {"loss": loss, **out}

    # ------------------------------------------------------------------------------- inference
    def check_frames(self, frames: Tensor) -> Tensor:
        """Validate a batch of sequences ``(B, T', *frame_shape)`` with ``T' >= context`` in the
        data space; ``ValueError`` (a 422 over HTTP) names what is wrong."""
        frames = torch.as_tensor(frames)
        want = ", ".join(str(s) for s in self.frame_shape)
        if frames.dim() != 2 + len(self.frame_shape) or tuple(frames.shape[2:]) != self.frame_shape:
            raise ValueError(
                f"nextframe: frames must be (B, T, {want}) with T >= {self.config.context}; "
                f"got shape {tuple(frames.shape)}"
            )
        if len(frames) < 1 or frames.shape[1] < self.config.context:
            raise ValueError(
                f"nextframe: needs at least {self.config.context} frames per sequence (its "
                f"context), got {frames.shape[1]}"
            )
        if not frames.is_floating_point():
            frames = frames.float()
        if not torch.isfinite(frames).all():
            raise ValueError("frames contain NaN or infinite values")
        if ((frames < 0) | (frames > self.levels - 1) | (frames != frames.round())).any():
            raise ValueError(f"frames values must be integers in 0..{self.levels - 1}")
        return frames

    def predict(
        self, frames: Tensor, steps: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """The ``steps`` frames after ``frames`` ``(B, T', C, H, W)``, rolled out from the last
        ``context`` frames: ``(B, steps, C, H, W)`` expected values in 0..L-1 (floats)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        frames = self.check_frames(frames)
        scale = self.levels - 1
        return run_eval(self, lambda: self.rollout(frames / scale, steps).clamp(0, 1) * scale)

    def validation_metrics(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x01 = self._scaled(batch["x"])
        k = self.config.context
        target = x01[:, k:]
        pred = run_eval(self, lambda: self.rollout(x01[:, :k], target.shape[1]).clamp(0, 1))
        err = (pred - target).pow(2).flatten(2).mean(2)  # (B, S) per pixel
        copy = (x01[:, k - 1 : k] - target).pow(2).flatten(2).mean(2)
        return {
            "neg_mse": -err.mean(1),
            "mse_t1": err[:, 0],
            "mse_last": err[:, -1],
            "copy_mse_t1": copy[:, 0],
            "copy_mse_last": copy[:, -1],
            "psnr_t1": -10 * torch.log10(err[:, 0].clamp(min=1e-10)),
        }


def psnr(pred: Tensor, truth: Tensor, peak: float = 1.0) -> Tensor:
    """Per-example PSNR in dB ``(B,)`` from the per-pixel MSE (``peak``: the value range)."""
    mse = (pred.float() - truth.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak**2 / mse.clamp(min=1e-10))


def ssim(pred: Tensor, truth: Tensor, peak: float = 1.0, window: int = 7) -> Tensor:
    """Per-example mean SSIM ``(B,)`` of ``(B, C, H, W)`` images (Wang et al. 2004) with a
    uniform ``window`` x ``window`` window (no padding), K1 = 0.01, K2 = 0.03."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    x, y = pred.float(), truth.float()
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx = pool(x * x) - mx * mx
    vy = pool(y * y) - my * my
    cxy = pool(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def edge_energy(images: Tensor) -> Tensor:
    """sum_ij dY_x^2 + dY_y^2 per example ``(B,)``: squared neighbour differences over both
    axes. Squared, so blur lowers it: a step of height 1 gives 1, the same rise as a ramp over
    three pixels 3 x (1/3)^2 = 1/3 (absolute differences would sum to 1 for both)."""
    x = images.float()
    return x.diff(dim=-2).pow(2).flatten(1).sum(1) + x.diff(dim=-1).pow(2).flatten(1).sum(1)


def edge_ratio(pred: Tensor, truth: Tensor) -> Tensor:
    """The prediction's edge energy over the truth's ``(B,)``: 1 = as much contrast between
    neighbours as the true frame, below 1 = blurred (the mean of two equally likely futures
    halves each edge: 1/2), wherever the edges sit (unlike ``sharpness_difference``, which
    compares the edge images pixel by pixel, so a sharp edge in the wrong place costs twice)."""
    return edge_energy(pred) / edge_energy(truth).clamp(min=1e-10)


def sharpness_difference(pred: Tensor, truth: Tensor, peak: float = 1.0) -> Tensor:
    """Mathieu et al.'s sharpness difference in dB ``(B,)`` of ``(B, C, H, W)`` images:
    10 log10(peak^2 / mean_ij |(|dY_x| + |dY_y|) - (|dŶ_x| + |dŶ_y|)|), neighbour differences
    over both axes; higher = the prediction's edges are closer to the truth's."""
    dy_t = truth.float().diff(dim=-2).abs()[..., :, :-1]
    dx_t = truth.float().diff(dim=-1).abs()[..., :-1, :]
    dy_p = pred.float().diff(dim=-2).abs()[..., :, :-1]
    dx_p = pred.float().diff(dim=-1).abs()[..., :-1, :]
    grad_diff = ((dx_t + dy_t) - (dx_p + dy_p)).abs().flatten(1).mean(1)
    return 10 * torch.log10(peak**2 / grad_diff.clamp(min=1e-10))
