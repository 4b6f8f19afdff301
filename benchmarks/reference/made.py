"""MADE with one mask (Germain et al. 2015): an MLP whose weights are multiplied by fixed 0/1
connectivity masks, ReLU hidden layers, a masked direct input-to-output connection, Bernoulli
logits; autograd for the gradients. The masks are given (the family draws them from its seed)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceMADE(nn.Module):
    """``masks``: one ``(out, in)`` 0/1 mask per layer, then the direct connection's ``(D, D)``;
    parameters named as in ``genmodels`` MADE (``layers.i``, ``direct``)."""

    def __init__(self, masks: list[Tensor]) -> None:
        super().__init__()
        *layer_masks, direct = masks
        self.layers = nn.ModuleList(nn.Linear(m.shape[1], m.shape[0]) for m in layer_masks)
        self.direct = nn.Linear(direct.shape[1], direct.shape[0], bias=False)
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.clone())
        self.own_buffers = [f"mask{i}" for i in range(len(masks))]

    def loss(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        h = x
        for i, layer in enumerate(self.layers):
            h = F.linear(h, layer.weight * getattr(self, f"mask{i}"), layer.bias)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        logits = h + x @ (self.direct.weight * getattr(self, f"mask{len(self.layers)}")).T
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()


def masks_of(model) -> list[Tensor]:
    """The first mask of each layer of a ``genmodels`` MADE, then its direct connection's."""
    return [layer.masks[0] for layer in model.layers] + [model.direct.masks[0]]
