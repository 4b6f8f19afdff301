"""A test-only family with the ``classify`` capability, for the generic classify plumbing (CLI,
Serve) without depending on a real semi-supervised family.

It is *not* registered on import (``genmodels.families()`` would then include it in every
family-wide test of the session): ``install()`` registers it, ``uninstall()`` removes it again.
A Serve replica that must load it calls ``install()`` in its own process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels import base

FAMILY = "probeclf"


@dataclass(frozen=True)
class ProbeClassifierConfig(base.BaseConfig):
    num_classes: int = 10


class ProbeClassifier(base.GenerativeModel):
    """Multinomial logistic regression on the scaled pixels: ``classify`` and nothing else."""

    family = FAMILY
    likelihood = "none"
    data_kinds = ("binary", "discrete")
    Config = ProbeClassifierConfig
    capabilities = frozenset({"classify"})
    can_sample = False

    def __init__(self, input_shape, levels, config: ProbeClassifierConfig) -> None:
        super().__init__(input_shape, levels, config)
        self.linear = nn.Linear(self.num_dims, config.num_classes)

    def logits(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1) / (self.levels - 1))

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x, y = batch["x"].float(), batch["y"].long()
        keep = y >= 0
        logits = self.logits(x)
        if keep.any():
            loss = F.cross_entropy(logits[keep], y[keep])
        else:
            loss = 0.0 * logits.sum()
        return {"loss": loss}

    def classify(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.logits(self.check_input(x)), dim=1)


def install() -> None:
    """Register the family in this process (idempotent)."""
    if FAMILY not in base.families():
        base.register(ProbeClassifier)


def uninstall() -> None:
    base._FAMILIES.pop(FAMILY, None)


def fit(model: ProbeClassifier, x: Tensor, y: Tensor, steps: int = 200) -> ProbeClassifier:
    """A few full-batch Adam steps on labelled rows (a classifier better than chance)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        model({"x": x, "y": y})["loss"].backward()
        opt.step()
    return model.eval()
