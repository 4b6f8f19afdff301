"""Shared machinery of the imputers of the chain families (RBM, DBM, GSN) and of the latent
inpainting families (GAN, AAE); the maths of each family's method lives in its own module.

* ``tile`` lays out ``S`` copies of a batch as ``S * B`` rows (row ``s * B + b`` is example
  ``b``), so that S independent chains or restarts run as one batch;
* ``impute_rows`` is the scaffolding of every such ``_impute``: tiling, the family's fill of the
  partly observed rows, plain samples for the unobserved ones;
* ``anneal_rows`` is annealed importance sampling (``genmodels.ais``) with one estimate per
  example: ``M`` chains per example, the weights averaged per example, each with its delta-method
  standard error. The Boltzmann machines use it for the normaliser of their conditional
  distributions p(x_missing | x_observed), which differs per example;
* ``frozen`` puts a module in eval mode with its parameters' ``requires_grad`` off for the
  duration of an imputation and restores both afterwards (BatchNorm uses its running statistics
  and none of them, nor any parameter, changes);
* ``optimise_latents`` runs Adam on latent codes alone (``torch.autograd.grad`` with respect to
  the codes: no parameter's ``.grad`` is touched);
* ``neighbourhood_weights`` are Yeh et al.'s (2016) contextual weights: an observed pixel counts
  by the fraction of missing pixels in the window around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import importance_weighted

State = Any


def tile(x: Tensor, num_samples: int) -> Tensor:
    """``(S * B, D)``: ``num_samples`` copies of ``x`` ``(B, ...)`` flattened, copy-major."""
    return x.flatten(1).repeat(num_samples, 1)


def row_chunks(rows: Tensor, size: int) -> Iterator[Tensor]:
    """The indices ``rows`` (1-D) in consecutive chunks of at most ``size`` (none if empty)."""
    if len(rows):
        yield from rows.split(max(1, int(size)))


def impute_rows(
    model: Any,
    x: Tensor,
    mask: Tensor,
    num_samples: int,
    fill_partial: Callable[[Tensor, Tensor, torch.Generator | None], Tensor],
    like: Tensor,
    generator: torch.Generator | None,
    chunk: int | None = None,
) -> Tensor:
    """The imputations ``(S, B, *x.shape[1:])`` (``x``'s dtype) of ``model``'s ``_impute``:
    ``x`` and ``mask`` flattened, cast to ``like``'s device and dtype and tiled ``num_samples``
    times (``tile``); the rows with some entries observed and some missing filled by
    ``fill_partial(x_rows, mask_rows, generator)`` ``(n, D)``, then the rows with nothing observed
    drawn by ``model.sample``, each in chunks of ``chunk`` rows (all at once if ``None``); the
    rows with nothing missing are ``x``."""
    xs = tile(x.to(like.device, like.dtype), num_samples)
    ms = tile(mask.to(like.device, like.dtype), num_samples)
    out = xs.clone()
    observed = ms.sum(1)
    partial = ((observed > 0) & (observed < model.num_dims)).nonzero().squeeze(1)
    unobserved = (observed == 0).nonzero().squeeze(1)
    whole = max(1, len(xs))
    for rows in row_chunks(partial, whole if chunk is None else chunk):  # one fill per imputation
        out[rows] = fill_partial(xs[rows], ms[rows], generator)
    for rows in row_chunks(unobserved, whole if chunk is None else chunk):  # nothing to clamp
        out[rows] = model.sample(len(rows), generator).flatten(1).to(out.dtype)
    return out.view(num_samples, *x.shape).to(x.dtype)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode with no parameter requiring a gradient; both restored on exit."""
    modes = [(m, m.training) for m in module.modules()]
    grads = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def optimise_latents(loss: Callable[[Tensor], Tensor], z0: Tensor, steps: int, lr: float) -> Tensor:
    """Adam on ``z`` (initial value ``z0`` ``(N, Z)``) for ``steps`` steps minimising
    ``loss(z).sum()``, where ``loss`` gives ``(N,)`` per-row losses that depend on their own row
    only (so the rows are optimised independently: Adam's moments are per coordinate). Only ``z``
    gets gradients. Returns the final ``z``, detached."""
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            (grad,) = torch.autograd.grad(loss(z).sum(), [z])
            z.grad = grad
            opt.step()
    return z.detach()


def neighbourhood_weights(mask: Tensor, window: int) -> Tensor:
    """Yeh et al.'s weights ``(N, C, H, W)`` for a mask ``(N, C, H, W)`` (1 = observed): an
    observed pixel weighs the fraction of missing pixels in the ``window`` x ``window``
    neighbourhood around it (cut at the border), a missing pixel 0."""
    pad = window // 2
    missing = F.avg_pool2d(1.0 - mask, window, stride=1, padding=pad, count_include_pad=False)[
        ..., : mask.shape[-2], : mask.shape[-1]
    ]
    return mask * missing


def anneal_rows(
    log_f: Callable[[State, float], Tensor],
    transition: Callable[[State, float, torch.Generator | None], State],
    initial: State,
    log_z0: Tensor,
    betas: Tensor,
    num_chains: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """AIS with one partition function per example (``genmodels.ais.anneal`` pools every chain
    into one estimate).

    The state holds ``num_chains * B`` chains, chain-major (row ``m * B + b`` belongs to example
    ``b``); ``log_f(state, beta)`` gives their unnormalised log densities ``(M * B,)`` and
    ``transition`` leaves the ``beta`` distribution of each row invariant; ``initial`` are exact
    draws of the base (beta = 0) whose log normalisers are ``log_z0`` ``(B,)``.

    Returns ``(log_z, stderr)``, each ``(B,)`` (float64): log Z_0 + log mean_m w_m per example
    (a stochastic lower bound on log Z, as every AIS estimate) and its delta-method standard error.
    """
    b = len(log_z0)
    state, previous = initial, 0.0
    log_w = torch.zeros_like(log_f(state, 0.0), dtype=torch.float64)
    betas_list = [float(v) for v in betas]
    for k, beta in enumerate(betas_list):
        log_w += (log_f(state, beta) - log_f(state, previous)).double()
        if k < len(betas_list) - 1:
            state = transition(state, beta, generator)
        previous = beta
    estimate, stderr = importance_weighted(log_w.view(num_chains, b))
    if stderr is None:
        stderr = torch.full_like(estimate, math.inf)
    return log_z0.double() + estimate, stderr


def contextual_loss(logits: Tensor, x: Tensor, weights: Tensor, levels: int = 2) -> Tensor:
    """Yeh et al.'s contextual loss ``(N,)`` of generated ``logits`` ``(N, D)`` against ``x``
    ``(N, D)`` at the weighted (observed) entries: the Bernoulli negative log-likelihood for
    binary data, the L1 distance of sigmoid(logits) to the bin centres (x + 1/2) / L for L-level
    data."""
    if levels == 2:
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return (weights * nll).sum(1)
    return (weights * (torch.sigmoid(logits) - (x + 0.5) / levels).abs()).sum(1)


def context_weights(mask: Tensor, input_shape: tuple[int, ...], window: int) -> Tensor:
    """The contextual weights ``(N, D)`` of flattened masks ``(N, D)``: the mask itself (every
    observed entry counts 1) for ``window`` 0 or (D,) inputs, else ``neighbourhood_weights``."""
    if window == 0 or len(input_shape) != 3:
        return mask
    return neighbourhood_weights(mask.view(len(mask), *input_shape), window).flatten(1)


def inpaint_latents(
    loss: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    mask: Tensor,
    z0: Tensor,
    steps: int,
    lr: float,
    chunk: int,
) -> Tensor:
    """Optimise one latent code per row of ``x`` ``(N, D)`` (flattened, with ``mask``), from
    ``z0`` ``(N, Z)``, in chunks of ``chunk`` rows: ``loss(z, x_rows, mask_rows)`` ``(n,)``."""
    out = torch.empty_like(z0)
    for start in range(0, len(z0), chunk):
        s = slice(start, start + chunk)
        out[s] = optimise_latents(lambda z, s=s: loss(z, x[s], mask[s]), z0[s], steps, lr)
    return out
