"""Layers shared by several families: masked linear layers and MADE-style connectivity masks.

Masks are buffers applied inside ``forward`` (``F.linear(x, W * M)``); the weights themselves are
never overwritten, so a mask can change (several orderings) without touching the parameters.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
