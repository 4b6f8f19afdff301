"""PixelCNN as the paper draws it, for one binary channel: a 7x7 type-A masked convolution, residual
blocks ``h + conv1x1(relu(conv3x3_B(relu(h))))``, a relu-1x1-relu-1x1 head giving one Bernoulli
logit per pixel (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", Figure 2 and
section 3.5), autograd for the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(k: int, centre: bool) -> Tensor:
    """``(k, k)``: rows above the centre, pixels left of it, and the centre itself for type B."""
    m = torch.zeros(k, k)
    m[: k // 2] = 1
    m[k // 2, : k // 2] = 1
    m[k // 2, k // 2] = float(centre)
    return m


class Block(nn.Module):
    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, k, padding=k // 2)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.register_buffer("mask_b", causal_mask(k, centre=True))

    def forward(self, h: Tensor) -> Tensor:
        inner = F.conv2d(F.relu(h), self.conv.weight * self.mask_b, self.conv.bias, padding="same")
        return h + self.proj(F.relu(inner))


class ReferencePixelCNN(nn.Module):
    """Names follow ``genmodels`` PixelCNN (``trunk.0``, ``trunk.i.conv`` / ``.proj``, ``head.1``
    / ``head.3``), so ``reference.load_from`` can copy its weights."""

    def __init__(self, channels: int, num_layers: int, kernel_size: int = 7, block_k: int = 3):
        super().__init__()
        first = nn.Conv2d(1, channels, kernel_size, padding=kernel_size // 2)
        self.trunk = nn.ModuleList([first, *(Block(channels, block_k) for _ in range(num_layers))])
        self.head = nn.ModuleList(
            [
                nn.Identity(),
                nn.Conv2d(channels, channels, 1),
                nn.Identity(),
                nn.Conv2d(channels, 1, 1),
            ]
        )
        self.register_buffer("mask_a", causal_mask(kernel_size, centre=False))
        self.own_buffers = ["mask_a", *(f"trunk.{i}.mask_b" for i in range(1, num_layers + 1))]

    def logits(self, x: Tensor) -> Tensor:
        first = self.trunk[0]
        h = F.conv2d(2 * x - 1, first.weight * self.mask_a, first.bias, padding="same")
        for block in self.trunk[1:]:
            h = block(h)
        return self.head[3](F.relu(self.head[1](F.relu(h))))

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood in nats of binary images ``(B, 1, H, W)``."""
        nll = F.binary_cross_entropy_with_logits(self.logits(x), x, reduction="none")
        return nll.flatten(1).sum(1).mean()
