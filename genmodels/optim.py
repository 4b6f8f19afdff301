"""Adam, fused where PyTorch can fuse it.

PyTorch's default Adam on CPU steps each parameter with a dozen separate element-wise kernels
(``foreach`` is only its default on accelerators), each a pass over the parameter and its two
moments. ``fused=True`` does one pass. Profiled on a one-hidden-layer MADE with 8,000 units
(12.6 M parameters, batch 100, one thread), the optimiser step took 123 ms of a 297 ms training
step by default and 15-17 ms fused: the step became 1.6x faster. Same update, same state dict
(``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints load either way; the parameters after a
few steps agree to float32 rounding (``tests/genmodels/test_optim.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_FUSED_DEVICES = ("cpu", "cuda")


def fusable(params: list[torch.nn.Parameter]) -> bool:
    """Whether ``fused=True`` applies: every parameter a floating tensor on a device it supports."""
    return all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)


def adam(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params``, fused when every parameter allows it."""
    params = list(params)
    return torch.optim.Adam(
        params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fusable(params)
    )
