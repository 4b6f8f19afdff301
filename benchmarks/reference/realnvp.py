"""Real NVP for images as the paper describes it (Dinh et al. 2016, section 3): dequantise,
logit-transform, then per scale checkerboard affine couplings, a squeeze, channel-wise couplings
and half the channels factored out; the last scale has checkerboard couplings only. Conditioners
are small residual conv nets; ActNorm stands in for batch norm, and the log-scale is
``scale * tanh(raw)``, as in ``genmodels.realnvp`` (whose parameter names these follow).
Autograd for the gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ActNorm(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x + self.bias.view(1, -1, 1, 1)) * self.log_scale.exp().view(1, -1, 1, 1)
        return y, self.log_scale.sum() * x.shape[2] * x.shape[3]


class ResNet(nn.Module):
    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "1": nn.Conv2d(hidden, hidden, 3, padding=1),
                    "3": nn.Conv2d(hidden, hidden, 3, padding=1),
                }
            )
            for _ in range(blocks)
        )
        self.out = nn.Conv2d(hidden, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["3"](F.relu(b["1"](F.relu(h))))
        return self.out(F.relu(h))


class Checkerboard(nn.Module):
    def __init__(self, c: int, h: int, w: int, parity: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.net = ResNet(c, 2 * c, hidden, blocks)
        self.scale = nn.Parameter(torch.ones(c))
        ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
        self.register_buffer("mask", ((ij % 2) == parity).float().view(1, 1, h, w))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(x * self.mask).chunk(2, dim=1)
        s = self.scale.view(1, -1, 1, 1) * torch.tanh(raw) * (1 - self.mask)
        return x * s.exp() + shift * (1 - self.mask), s.flatten(1).sum(1)


class ChannelSplit(nn.Module):
    def __init__(self, c: int, flip: bool, hidden: int, blocks: int) -> None:
        super().__init__()
        self.flip, self.half = flip, c // 2
        self.net = ResNet(
            c - self.half if flip else self.half,
            2 * (self.half if flip else c - self.half),
            hidden,
            blocks,
        )
        self.scale = nn.Parameter(torch.ones(self.half if flip else c - self.half))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x[:, : self.half], x[:, self.half :]
        cond, moved = (second, first) if self.flip else (first, second)
        raw, shift = self.net(cond).chunk(2, dim=1)
        s = self.scale.view(1, -1, 1, 1) * torch.tanh(raw)
        moved = moved * s.exp() + shift
        y = torch.cat([moved, cond] if self.flip else [cond, moved], dim=1)
        return y, s.flatten(1).sum(1)


def squeeze(x: Tensor) -> Tensor:
    """Each 2x2 block of pixels into 4 channels: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


class ReferenceRealNVP(nn.Module):
    """``shape`` (C, H, W); ``levels`` values per pixel; couplings interleaved with ActNorms as in
    ``genmodels`` (``flow.scales.i.checker.j`` / ``.channel.j``)."""

    def __init__(self, shape, levels, scales=2, coupling=2, hidden=32, blocks=1, alpha=0.05):
        super().__init__()
        self.levels, self.alpha, self.dims = levels, alpha, math.prod(shape)
        c, h, w = shape
        self.flow = nn.Module()
        self.flow.scales = nn.ModuleList()
        for i in range(scales):
            scale = nn.Module()
            steps = []
            for j in range(coupling):
                steps += [ActNorm(c), Checkerboard(c, h, w, j % 2, hidden, blocks)]
            scale.checker = nn.ModuleList(steps)
            if i < scales - 1:
                steps = []
                for j in range(coupling):
                    steps += [ActNorm(4 * c), ChannelSplit(4 * c, j % 2 == 1, hidden, blocks)]
                scale.channel = nn.ModuleList(steps)
                c, h, w = 2 * c, h // 2, w // 2
            self.flow.scales.append(scale)

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        """The dequantised log-likelihood log p_y((x + u) / L) - D log L ``(B,)``."""
        a = self.alpha
        p = a + (1 - 2 * a) * (x + u) / self.levels
        z = torch.log(p) - torch.log1p(-p)
        log_det = (math.log1p(-2 * a) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        latents = []
        for scale in self.flow.scales:
            for layer in scale.checker:
                z, ld = layer(z)
                log_det = log_det + ld
            if hasattr(scale, "channel"):
                z = squeeze(z)
                for layer in scale.channel:
                    z, ld = layer(z)
                    log_det = log_det + ld
                half = z.shape[1] // 2
                latents.append(z[:, :half])
                z = z[:, half:]
        latents.append(z)
        z = torch.cat([t.flatten(1) for t in latents], 1)
        log_normal = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
        return log_normal + log_det - self.dims * math.log(self.levels)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood in nats, one dequantisation draw per example."""
        return -self.log_prob(x, torch.rand_like(x)).mean()
