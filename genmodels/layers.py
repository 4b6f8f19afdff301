"""Layers shared by several families: masked linear and masked convolution layers, and MADE-style
connectivity masks.

Masks are buffers applied inside ``forward`` (``F.linear(x, W * M)``); the weights themselves are
never overwritten, so a mask can change (several orderings) without touching the parameters.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .optim import adam


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask ``(out, in)`` in ``forward``.

    Several masks can be stored (``(K, out, in)``); ``mask_index`` selects the one in use.
    """

    def __init__(self, in_features: int, out_features: int, masks: Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if masks.dim() == 2:
            masks = masks.unsqueeze(0)
        if tuple(masks.shape[1:]) != (out_features, in_features):
            raise ValueError(
                f"mask shape {tuple(masks.shape)} != (K, {out_features}, {in_features})"
            )
        self.register_buffer("masks", masks.float())
        self.mask_index = 0

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.masks[self.mask_index], self.bias)


def made_degrees(
    num_inputs: int,
    hidden_sizes: tuple[int, ...],
    order: Tensor,
    generator: torch.Generator,
    random_connectivity: bool = True,
) -> list[Tensor]:
    """Degrees of MADE's units (Germain et al. 2015, eq. 12-13).

    ``order[d]`` is the position (1..D) of input d in the autoregressive order. A hidden unit of
    degree m may see inputs of degree <= m; hidden degrees lie in [min degree of the layer below,
    D - 1], drawn at random (connectivity-agnostic) or spread evenly.
    """
    degrees = [order.long()]
    for size in hidden_sizes:
        low = min(int(degrees[-1].min()), num_inputs - 1)
        if random_connectivity:
            deg = torch.randint(low, num_inputs, (size,), generator=generator)
        else:
            deg = (torch.arange(size) % max(1, num_inputs - low)) + low
        degrees.append(deg)
    return degrees


def made_masks(degrees: list[Tensor], num_outputs_per_input: int = 1) -> list[Tensor]:
    """Masks ``(out, in)`` for each layer from the degrees: hidden ``>=``, output strictly ``>``.

    The output layer has ``num_outputs_per_input`` units per input, grouped input-major.
    """
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in itertools.pairwise(degrees)]
    out_deg = degrees[0].repeat_interleave(num_outputs_per_input)
    masks.append(out_deg[:, None] > degrees[-1][None, :])
    return [m.float() for m in masks]


def conv_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: int,
    mask_type: str,
    data_channels: int = 1,
) -> Tensor:
    """PixelCNN's causal mask ``(out, in, k, k)`` (van den Oord et al. 2016, Figure 2).

    A pixel sees the rows above and the pixels to its left; at the centre, channels follow the
    within-pixel order of the ``data_channels`` data channels (R then G then B): channel ``i``
    belongs to group ``i % data_channels`` and an output of group ``g`` sees input groups ``< g``
    (type ``"A"``, the first layer: a pixel never sees itself) or ``<= g`` (type ``"B"``).
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    c = kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
    mask[:, :, :c, :] = 1.0  # rows above
    mask[:, :, c, :c] = 1.0  # left of the centre, same row
    out_group = torch.arange(out_channels) % data_channels
    in_group = torch.arange(in_channels) % data_channels
    if mask_type == "A":
        centre = out_group[:, None] > in_group[None, :]
    else:
        centre = out_group[:, None] >= in_group[None, :]
    mask[:, :, c, c] = centre.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """Square ``nn.Conv2d`` ("same" padding) whose weight is multiplied by ``conv_mask`` in
    ``forward``, so output ``(i, j)`` depends only on inputs before it in raster order."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        data_channels: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.mask_type = mask_type
        mask = conv_mask(out_channels, in_channels, kernel_size, mask_type, data_channels)
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def adam_per_phase(model, weight_decay: float | None = None) -> dict[str, torch.optim.Optimizer]:
    """One Adam per phase of an adversarial model, over ``model.phase_parameters(phase)``, with the
    config's ``lr``, ``beta1`` (beta2 0.999, the DCGAN choice) and ``weight_decay``."""
    cfg = model.config
    decay = cfg.weight_decay if weight_decay is None else weight_decay
    return {
        phase: adam(
            model.phase_parameters(phase), lr=cfg.lr, betas=(cfg.beta1, 0.999), weight_decay=decay
        )
        for phase in model.phases
    }
