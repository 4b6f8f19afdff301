"""NADE: the Neural Autoregressive Distribution Estimator (Larochelle & Murray, 2011, AISTATS,
https://proceedings.mlr.press/v15/larochelle11a.html).

An autoregressive model of binary data whose conditionals share one hidden layer:
h_d = sigmoid(c + W[:, <d] x_<d) and p(x_d = 1 | x_<d) = sigmoid(b_d + V_d · h_d). Because the
weights W are tied across d, the pre-activation grows by one column per step,
a_{d+1} = a_d + W[:, d] x_d, so the exact log-likelihood of all D conditionals costs O(D·H)
rather than the O(D²·H) of D separate networks.

Choices here: binary data; one fixed order, raster (``order_seed=-1``) or a random permutation
drawn once from ``order_seed``; ``log_prob`` computes every a_d with an exclusive
cumulative sum over the order, in cache-sized chunks with a hand-written backward
(``NADELogits``; memory B·D·H for the hidden states); sampling runs the same recurrence, O(D·H) per
sample; W and V initialised uniformly at the fan-in scale, biases at zero.

Imputation (``impute``, see ``genmodels.impute_autoregressive``): exact ancestral sampling
(``"ancestral-exact"``, exact ``log_prob_missing``) when every missing entry comes after every
observed one in the model's order; otherwise P sequential proposals per imputation resampled by
importance weight, then S Gibbs sweeps with the exact full conditionals
(``"sir-k=P+gibbs-sweeps=S"``; one O(D·H) forward pass per missing entry and sweep) and an
importance *estimate* of ``log_prob_missing`` with its standard error. Defaults P = 2, S = 0
(``impute_proposals``, ``impute_sweeps``), sized for 784-dim digits with H = 500: about 1.3-2 CPU-s
per 100 imputations on an incompatible mask (0.2 s when ancestral-exact); Gibbs costs ~392
forward passes per sweep there, so it is for small models or a larger budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import impute_autoregressive as ar
from .base import (
    BaseConfig,
    BernoulliAutoregressive,
    Condition,
    SearchSpec,
    register,
)

IMPUTE_PROPOSALS, IMPUTE_SWEEPS = 2, 0  # sized for 784-dim digits (see the docstring)


CHUNK_ELEMENTS = 2**18  # a chunk's (B, K, H) block: ~1 MiB of float32, cache-sized


def chunk_size(batch: int, dims: int, hidden: int) -> int:
    """Steps per chunk K, so that a ``(B, K, H)`` block stays near ``CHUNK_ELEMENTS``."""
    return max(1, min(dims, CHUNK_ELEMENTS // max(1, batch * hidden)))


class NADELogits(torch.autograd.Function):
    """NADE's D logits and their exact gradients, in chunks of K steps along the order.

    Forward: a running pre-activation ``a (B, H)``; per chunk, the chunk's pre-activations are
    ``a`` plus the *exclusive* cumulative sum of its steps ``x_i W_i`` (step i never sees x_i),
    h = sigmoid of them, logit_i = V_i · h_i + b_i. Only ``h`` is kept for the backward
    (B·D·H floats, as the one-shot cumulative sum needed), never the sums themselves.

    Backward (by hand, no autograd graph over D steps): with g_i = dL/dlogit_i,
    dV_i = sum_b g_i h_i, dL/da_i = g_i V_i h_i (1 - h_i), and since a_i = c + sum_{j<i} W_j x_j,
    dW_j = sum_b x_j sum_{i>j} dL/da_i (a reverse exclusive sum, carried across chunks in one
    ``(B, H)`` accumulator), dc = sum_{b,i} dL/da_i, and, only when asked (the autoregressive
    check differentiates by x), dx_j = W_j · sum_{i>j} dL/da_i.

    Cost: the same O(B·D·H) work as the one-shot version, but over cache-sized blocks with no
    ``(B, D, H)`` cumulative sum, flip or concatenation: 4x fewer CPU-seconds per training step
    at B = 100, D = 784, H = 500 (``benchmarks/throughput.py``). Inputs: ``x (B, D)`` in the
    model's order, ``w (D, H)`` = W's columns in that order, ``v (D, H)``, ``c (H,)``, ``b (D,)``
    (ordered), ``chunk`` = K.
    """

    @staticmethod
    def forward(ctx, x, w, v, c, b, chunk: int):
        n, d = x.shape
        a = c.expand(n, -1)
        hs, out = [], x.new_empty(n, d)
        for s in range(0, d, chunk):
            steps = x[:, s : s + chunk, None] * w[s : s + chunk]  # (B, K, H)
            inclusive = steps.cumsum(1)
            h = (inclusive - steps).add_(a[:, None, :]).sigmoid_()  # exclusive: not x_i
            out[:, s : s + chunk] = torch.einsum("bkh,kh->bk", h, v[s : s + chunk])
            a = a + inclusive[:, -1]
            hs.append(h)
        ctx.save_for_backward(x, w, v, *hs)
        ctx.chunk = chunk
        return out + b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, w, v, *hs = ctx.saved_tensors
        k = ctx.chunk
        dw, dv = torch.empty_like(w), torch.empty_like(v)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        later = g.new_zeros(x.shape[0], w.shape[1])  # sum of dL/da over the steps after a chunk
        for i in reversed(range(len(hs))):
            s, h = i * k, hs[i]
            gs = g[:, s : s + k]
            dv[s : s + k] = torch.einsum("bk,bkh->kh", gs, h)
            da = (1 - h).mul_(h).mul_(gs[:, :, None] * v[s : s + k])  # (B, K, H)
            after = da.flip(1).cumsum(1).flip(1)  # inclusive sums from the end
            total = after[:, 0].clone()
            after.sub_(da).add_(later[:, None, :])  # exclusive, plus the later chunks
            dw[s : s + k] = torch.einsum("bk,bkh->kh", x[:, s : s + k], after)
            if dx is not None:  # dL/dx_j = W_j · sum_{i>j} dL/da_i (Jacobian checks use it)
                dx[:, s : s + k] = torch.einsum("bkh,kh->bk", after, w[s : s + k])
            later = later + total
        return dx, dw, dv, later.sum(0), g.sum(0), None


@dataclass(frozen=True)
class NADEConfig(BaseConfig):
    """``hidden_size`` = H; ``order_seed`` = -1 for raster order, else the seed of a fixed
    random order; ``impute_proposals`` / ``impute_sweeps`` set the imputation of
    order-incompatible masks (see the module docstring)."""

    hidden_size: int = 500
    order_seed: int = -1
    lr: float = 1e-3
    impute_proposals: int = IMPUTE_PROPOSALS
    impute_sweeps: int = IMPUTE_SWEEPS


@register
class NADE(ar.AutoregressiveImpute, BernoulliAutoregressive):
    """NADE with tied input weights ``W (H, D)``, output weights ``V (D, H)`` and one order."""

    family = "nade"
    Config = NADEConfig
    capabilities = frozenset({"log_prob", "impute"})
    sample_limit = 256
    search_space = {
        "hidden_size": SearchSpec("choice", (100, 250, 500)),
        "lr": SearchSpec("loguniform", low=1e-4, high=1e-2),
        "weight_decay": SearchSpec("choice", (0.0, 1e-5, 1e-4)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: NADEConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.hidden_size < 1:
            raise ValueError(f"nade: hidden_size must be >= 1, got {config.hidden_size}")
        ar.validate_settings(self.family, config.impute_proposals, config.impute_sweeps)
        d, h = self.num_dims, config.hidden_size
        if config.order_seed >= 0:
            order = torch.randperm(d, generator=torch.Generator().manual_seed(config.order_seed))
        else:
            order = torch.arange(d)
        self.register_buffer("order", order)  # order[i] = the dimension visited i-th
        self.W = nn.Parameter(torch.empty(h, d).uniform_(-1.0, 1.0) / math.sqrt(d))
        self.V = nn.Parameter(torch.empty(d, h).uniform_(-1.0, 1.0) / math.sqrt(h))
        self.b = nn.Parameter(torch.zeros(d))
        self.c = nn.Parameter(torch.zeros(h))

    def logits(self, x: Tensor) -> Tensor:
        """Bernoulli logits ``(B, D)`` of p(x_d | x_<d), in the flattened input's dimension order."""
        order = self.order
        x_ordered = x.flatten(1)[:, order].to(self.W.dtype)  # (B, D)
        out = NADELogits.apply(
            x_ordered,
            self.W[:, order].T,
            self.V[order],
            self.c,
            self.b[order],
            chunk_size(*x_ordered.shape, self.config.hidden_size),
        )
        return torch.empty_like(out).index_copy_(1, order, out)  # back to dimension order

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        device, dtype = self.W.device, self.W.dtype
        x = torch.zeros(n, self.num_dims, device=device, dtype=dtype)
        a = self.c.expand(n, -1).clone()  # (n, H), the running pre-activation
        for d in self.order.tolist():
            p = torch.sigmoid(self.b[d] + torch.sigmoid(a) @ self.V[d])  # (n,)
            u = torch.rand(n, generator=generator).to(device=device, dtype=dtype)
            x[:, d] = (u < p).to(dtype)
            a += x[:, d, None] * self.W[:, d]  # one column: O(H) per sample per step
        return x.view(n, *self.input_shape)

    # ------------------------------------------------------------------------------ imputation
    @property
    def _ar_rows(self) -> int:
        return max(1, 2**22 // (self.num_dims * self.config.hidden_size))  # logits is B*D*H

    def _ar_positions(self) -> Tensor:
        return torch.argsort(self.order)[None]  # position of dimension d = its index in order

    def _ar_log_conditionals(self, xf: Tensor, k: int) -> Tensor:
        logits = self.logits(xf)
        return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], -1)

    def _ar_fill(
        self, xf: Tensor, missing: Tensor, k: int, generator: torch.Generator | None
    ) -> Tensor:
        x = torch.where(missing, 0.0, xf)
        a = self.c.expand(len(x), -1).clone()  # (N, H), the running pre-activation
        any_missing = missing.any(0).tolist()
        for d in self.order.tolist():
            if any_missing[d]:
                p = torch.sigmoid(self.b[d] + torch.sigmoid(a) @ self.V[d])
                draw = (ar.uniform(len(x), generator, x) < p).to(x.dtype)
                x[:, d] = torch.where(missing[:, d], draw, x[:, d])
            a += x[:, d, None] * self.W[:, d]
        return x
