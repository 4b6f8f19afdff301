"""Weight averaging for the Boltzmann machines: the weights a model scores, samples and imputes
with are an exponential moving average of the ones its training steps produce (Polyak & Juditsky
1992, https://doi.org/10.1137/0330046; for PCD-trained Boltzmann machines the instantaneous
weights keep moving with the persistent chains, the "fast-mixing" effect of Tieleman & Hinton
2009, and their random-start samples swing from digits to noise between nearby steps: see
``genmodels.dbm``).

The owner module registers one buffer ``avg_<name>`` per averaged parameter plus ``avg_count``
(updates so far); its training forward calls ``update`` with the weights the previous optimiser
step left, and its inference code reads ``pick``. Until the first update (a model built or
edited by hand, or weights saved before averaging existed) ``pick`` returns the parameter itself,
so nothing changes for an untrained model. The decay is debiased as min(decay, (1 + n) / (10 +
n)) after n updates, so early averages are not dragged towards the initial weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def register(module: nn.Module, names: tuple[str, ...]) -> None:
    """Add the buffers ``avg_<name>`` (zeros like each parameter) and ``avg_count`` (0)."""
    for name in names:
        module.register_buffer(f"avg_{name}", torch.zeros_like(getattr(module, name).detach()))
    module.register_buffer("avg_count", torch.zeros((), dtype=torch.int64))


def fill_missing(module: nn.Module, names: tuple[str, ...], state_dict, prefix: str) -> None:
    """For ``_load_from_state_dict``: weights saved without averages load with none (count 0)."""
    if prefix + "avg_count" in state_dict:
        return
    state_dict[prefix + "avg_count"] = torch.zeros((), dtype=torch.int64)
    for name in names:
        state_dict[prefix + f"avg_{name}"] = torch.zeros_like(getattr(module, name).detach())


@torch.no_grad()
def update(module: nn.Module, names: tuple[str, ...], decay: float) -> None:
    """Fold the current parameters into the averages (the first update copies them)."""
    module.avg_count.add_(1)
    n = int(module.avg_count)
    rate = 1.0 - min(decay, (1.0 + n) / (10.0 + n)) if n > 1 else 1.0
    for name in names:
        getattr(module, f"avg_{name}").lerp_(getattr(module, name).detach(), rate)


def active(module: nn.Module) -> bool:
    """Whether the averages exist yet (at least one training update)."""
    return bool(module.avg_count > 0)


def pick(module: nn.Module, name: str, averaged: bool) -> Tensor:
    """The averaged value of parameter ``name`` when ``averaged`` and active, else the parameter."""
    if averaged and active(module):
        return getattr(module, f"avg_{name}")
    return getattr(module, name)
