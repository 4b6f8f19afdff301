"""Invertible layers for normalising flows: ActNorm, affine couplings, squeeze, and their nets.

Every layer maps ``x -> (y, log|det dy/dx|)`` in ``forward`` (the log-det is ``(B,)``) and back in
``inverse``. Couplings follow Real NVP (Dinh, Sohl-Dickstein & Bengio 2016,
https://arxiv.org/abs/1605.08803): half of the units pass through unchanged and condition an
elementwise affine map of the other half, so the Jacobian is triangular and the inverse is exact.
ActNorm is Glow's per-channel affine normalisation (Kingma & Dhariwal 2018,
https://arxiv.org/abs/1807.03039), initialised from the statistics of one batch and then an
ordinary parameter, so a density never depends on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class FlowSequence(nn.ModuleList):
    """Invertible layers applied in order; the log-dets add up."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self):
            y = layer.inverse(y)
        return y


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale), per channel (dim 1) of ``(B, C)`` or ``(B, C, H, W)``.

    Starts as the identity. Inside ``data_init`` its first call sets ``bias`` and ``log_scale`` so
    that the batch it sees leaves with zero mean and unit variance per channel (averaged over
    ranks when ``torch.distributed`` is initialised, so data-parallel replicas stay identical);
    ``initialized`` (a buffer, saved with the weights) then stops any further data dependence.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.init_pending = False

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def _initialise(self, x: Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        moments = torch.stack([x.mean(dims), x.pow(2).mean(dims)])  # (2, C)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean, sq = moments
        std = (sq - mean.pow(2)).clamp_min(0.0).sqrt().clamp_min(1e-3)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.init_pending:
            self._initialise(x)
            self.init_pending = False
        y = (x + self._view(self.bias, x)) * self._view(self.log_scale, x).exp()
        log_det = self.log_scale.sum() * x.shape[2:].numel()
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * self._view(-self.log_scale, y).exp() - self._view(self.bias, y)


@contextmanager
def data_init(module: nn.Module) -> Iterator[None]:
    """Within this block, every not-yet-initialised ``ActNorm`` of ``module`` initialises itself
    from the first batch that reaches it (in order, so each sees already-normalised inputs)."""
    norms = [m for m in module.modules() if isinstance(m, ActNorm)]
    for m in norms:
        m.init_pending = not bool(m.initialized)
    try:
        yield
    finally:
        for m in norms:
            m.init_pending = False


class ResidualNet(nn.Module):
    """The conditioner of a coupling: in -> hidden -> residual blocks -> out.

    ``spatial`` picks 3x3 convolutions ("same" padding) over ``(B, C, H, W)``, else linear layers
    over ``(B, D)``. The output layer starts small (not zero: every weight gets a gradient from
    the first step), so a fresh coupling is close to the identity.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: int, num_blocks: int, spatial: bool
    ) -> None:
        super().__init__()

        def layer(i: int, o: int) -> nn.Module:
            return nn.Conv2d(i, o, 3, padding=1) if spatial else nn.Linear(i, o)

        self.inp = layer(in_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), layer(hidden, hidden), nn.ReLU(), layer(hidden, hidden))
            for _ in range(num_blocks)
        )
        self.out = layer(hidden, out_features)
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.relu(h))


class AffineCoupling(nn.Module):
    """Shared by the couplings: (log-scale, shift) of the transformed units from the conditioner.

    The log-scale is ``scale * tanh(raw)`` with a learned per-channel ``scale`` (init 1): bounded
    at first, so early training cannot blow up, yet free to grow.
    """

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.net = net
        self.scale = nn.Parameter(torch.ones(channels))

    def log_scale_and_shift(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(cond).chunk(2, dim=1)
        scale = self.scale.view(1, -1, *([1] * (raw.dim() - 2)))
        return scale * torch.tanh(raw), shift


class CheckerboardCoupling(AffineCoupling):
    """Real NVP's spatial checkerboard coupling on ``(B, C, H, W)``: the sites where
    ``(i + j) % 2 == parity`` condition an affine map of the others."""

    def __init__(self, channels: int, height: int, width: int, parity: int, net: nn.Module):
        super().__init__(net, channels)
        ij = torch.arange(height)[:, None] + torch.arange(width)[None, :]
        self.register_buffer("mask", ((ij % 2) == parity).float().view(1, 1, height, width))

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.log_scale_and_shift(x * self.mask)
        return s * (1 - self.mask), t * (1 - self.mask)  # the conditioning sites stay put

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._params(x)
        return x * s.exp() + t, s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._params(y)  # y * mask == x * mask
        return (y - t) * (-s).exp()


class SplitCoupling(AffineCoupling):
    """Coupling over a split of dim 1 into two halves (channels of an image, or the units of a
    flat vector): one half conditions an affine map of the other; ``flip`` swaps the roles."""

    def __init__(
        self, features: int, flip: bool, net_factory: Callable[[int, int], nn.Module]
    ) -> None:
        sizes = (features // 2, features - features // 2)
        cond, moved = (sizes[1], sizes[0]) if flip else sizes
        super().__init__(net_factory(cond, 2 * moved), moved)  # net: cond -> (log-scale, shift)
        self.sizes, self.flip = sizes, flip

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x.split(self.sizes, dim=1)
        return (second, first) if self.flip else (first, second)  # (conditioning, moved)

    def _merge(self, cond: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([moved, cond] if self.flip else [cond, moved], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cond, moved = self._split(x)
        s, t = self.log_scale_and_shift(cond)
        return self._merge(cond, moved * s.exp() + t), s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        cond, moved = self._split(y)
        s, t = self.log_scale_and_shift(cond)
        return self._merge(cond, (moved - t) * (-s).exp())


def squeeze(x: Tensor) -> Tensor:
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``, each 2x2 block into channels."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of ``squeeze``."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)
