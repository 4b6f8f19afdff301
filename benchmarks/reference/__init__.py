"""Minimal, obviously-correct PyTorch versions of the families' models: what a user would write
from the paper in an afternoon. ``benchmarks/throughput.py`` times a training step of each family
beside its reference here (same parameters, same batch); they are never imported by the
package. Each reference names its parameters as the family does, so ``load_from`` can give it a
family model's weights, and ``tests/benchmarks/test_references.py`` checks that both compute the
same loss on the same weights, batch and noise."""

from __future__ import annotations

import torch
from torch import nn


def load_from(reference: nn.Module, model: nn.Module) -> nn.Module:
    """Copy ``model``'s tensors into every parameter and persistent buffer of ``reference`` with
    the same name; a name the model lacks or a shape that differs is an error (the reference's
    own buffers listed in ``reference.own_buffers`` are left alone)."""
    theirs = model.state_dict()
    own = set(getattr(reference, "own_buffers", ()))
    with torch.no_grad():
        for name, tensor in reference.state_dict(keep_vars=True).items():
            if name in own:
                continue
            if name not in theirs:
                raise KeyError(f"{type(model).__name__} has no tensor {name!r}")
            if theirs[name].shape != tensor.shape:
                raise ValueError(
                    f"{name}: shape {tuple(theirs[name].shape)} != {tuple(tensor.shape)}"
                )
            tensor.copy_(theirs[name])
    return reference
