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


CHUNK_ELEMENTS = 2**18  # a chunk's (K, B, H) block: ~1 MiB of float32, cache-sized
MAX_CHUNK = 16  # the in-chunk GEMM costs K x the elementwise work: keep K small


def chunk_size(batch: int, dims: int, hidden: int) -> int:
    """Steps per chunk K: a ``(K, B, H)`` block near ``CHUNK_ELEMENTS``, 1 <= K <= 16 (and D).

    Measured (H = 500, relu, one thread, examples per CPU-second of a training step): B = 512
    best at K = 1 (420 vs 298 at K = 16), B = 100 at K = 4-8, B = 32 at K = 8-16."""
    return max(1, min(dims, MAX_CHUNK, CHUNK_ELEMENTS // max(1, batch * hidden)))


def _strictly_lower(k: int, like: Tensor) -> Tensor:
    return torch.ones(k, k, dtype=like.dtype, device=like.device).tril_(-1)


def _earlier_inputs(tri: Tensor, xs: Tensor) -> Tensor:
    """``(k, B, k)``: entry ``[i, b, j]`` = x_b,j when step j precedes step i in the chunk, else
    0 (``xs`` = the chunk's inputs ``(k, B)``), as a ``(k * B, k)`` matrix for one GEMM."""
    k, n = xs.shape
    return (tri[:k, None, :k] * xs.T[None]).reshape(k * n, k)


class NADELogits(torch.autograd.Function):
    """NADE's D logits and their exact gradients, in chunks of K steps along the order.

    Forward: a running pre-activation ``a (B, H)``; within a chunk of K steps, step i's
    pre-activation is ``a + sum_{j<i in the chunk} x_j W_j``: ONE matrix product of the
    ``(K*B, K)`` matrix of earlier inputs (``_earlier_inputs``: x masked strictly lower
    triangular) with the chunk's ``(K, H)`` weights, written straight into the ``(K, B, H)``
    block (no cumulative sum, no ``(B, K, H)`` intermediates); then ``a += x_chunk @ W_chunk``.
    h = sigmoid or relu of the block, in place; logit_i = V_i · h_i + b_i by a batched matrix
    product. Only ``h`` is kept for the backward (B·D·H floats).

    Backward (by hand, no autograd graph over D steps): with g_i = dL/dlogit_i,
    dV_i = sum_b g_i h_i, dL/da_i = act'(h_i) (g_i V_i) (one fused ``sigmoid_backward`` /
    ``threshold_backward`` kernel), and since a_i = c + sum_{j<i} W_j x_j,
    dW_j = sum_b x_j (sum_{i>j in the chunk} dL/da_i + ``later``): the transposed earlier-inputs
    matrix times the chunk's dL/da (one GEMM), plus ``x_chunk^T @ later``, where ``later`` is
    the ``(B, H)`` sum of dL/da over the chunks after this one; dc = the final ``later`` summed
    over the batch; and, only when asked (the autoregressive check differentiates by x),
    dx_j = W_j · (sum_{i>j} dL/da_i).

    Cost: the elementwise work of the plain recurrence plus two small GEMMs (K x its flops, at
    BLAS speed) per chunk, with about half the memory passes of a cumulative sum:
    ``benchmarks/reference/nade.py`` is the plain recurrence it is measured against. Inputs:
    ``x (B, D)`` in the model's order, ``w (D, H)`` = W's columns in that order, ``v (D, H)``,
    ``c (H,)``, ``b (D,)`` (ordered), ``chunk`` = K, ``relu`` (else sigmoid).
    """

    @staticmethod
    def forward(ctx, x, w, v, c, b, chunk: int, relu: bool = False):
        n, d = x.shape
        hidden = w.shape[1]
        xt = x.T.contiguous()  # (D, B): a chunk's inputs are contiguous rows
        tri = _strictly_lower(chunk, x)
        a = c.expand(n, -1)
        hs, out = [], x.new_empty(d, n)
        for s in range(0, d, chunk):
            xs, wk = xt[s : s + chunk], w[s : s + chunk]
            k = len(xs)
            h = torch.mm(_earlier_inputs(tri, xs), wk).view(k, n, hidden).add_(a)
            h = h.relu_() if relu else h.sigmoid_()
            out[s : s + k] = torch.bmm(h, v[s : s + k, :, None]).view(k, n)
            a = torch.addmm(a, xs.T, wk)
            hs.append(h)
        ctx.save_for_backward(xt, w, v, *hs)
        ctx.chunk, ctx.relu = chunk, relu
        return out.T + b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        xt, w, v, *hs = ctx.saved_tensors
        chunk, n, hidden = ctx.chunk, g.shape[0], w.shape[1]
        gt = g.T.contiguous()  # (D, B)
        tri = _strictly_lower(chunk, g)
        dw, dv = torch.empty_like(w), torch.empty_like(v)
        dxt = torch.empty_like(xt) if ctx.needs_input_grad[0] else None
        later = g.new_zeros(n, hidden)  # sum of dL/da over the chunks after this one
        for i in reversed(range(len(hs))):
            s, h = i * chunk, hs[i]
            k = len(h)
            gs, xs, wk = gt[s : s + k], xt[s : s + k], w[s : s + k]
            dv[s : s + k] = torch.bmm(gs[:, None, :], h).view(k, hidden)
            gv = gs[:, :, None] * v[s : s + k, None, :]  # (k, B, H)
            if ctx.relu:
                da = torch.ops.aten.threshold_backward(gv, h, 0)
            else:
                da = torch.ops.aten.sigmoid_backward(gv, h)
            flat = da.view(k * n, hidden)
            earlier = _earlier_inputs(tri, xs)
            dw[s : s + k] = torch.addmm(torch.mm(xs, later), earlier.T, flat)
            if dxt is not None:  # dL/dx_j = W_j · (sum_{i>j} dL/da_i), j in this chunk
                seen = torch.mm(flat, wk.T).view(k, n, k) * tri[:k, None, :k]
                dxt[s : s + k] = seen.sum(0).T + torch.mm(wk, later.T)
            later = later + da.sum(0)
        dx = dxt.T if dxt is not None else None
        return dx, dw, dv, later.sum(0), g.sum(0), None, None


@dataclass(frozen=True)
class NADEConfig(BaseConfig):
    """``hidden_size`` = H; ``order_seed`` = -1 for raster order, else the seed of a fixed
    random order; ``impute_proposals`` / ``impute_sweeps`` set the imputation of
    order-incompatible masks (see the module docstring)."""

    hidden_size: int = 500
    order_seed: int = -1
    activation: str = "sigmoid"  # of the hidden units: "sigmoid" (the paper) or "relu"
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
        "activation": SearchSpec("choice", ("sigmoid", "relu")),
        "lr": SearchSpec("loguniform", low=1e-4, high=1e-2),
        "weight_decay": SearchSpec("choice", (0.0, 1e-5, 1e-4)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: NADEConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.hidden_size < 1:
            raise ValueError(f"nade: hidden_size must be >= 1, got {config.hidden_size}")
        if config.activation not in ("sigmoid", "relu"):
            raise ValueError(
                f"nade: activation must be 'sigmoid' or 'relu', got {config.activation!r}"
            )
        ar.validate_settings(self.family, config.impute_proposals, config.impute_sweeps)
        d, h = self.num_dims, config.hidden_size
        if config.order_seed >= 0:
            order = torch.randperm(d, generator=torch.Generator().manual_seed(config.order_seed))
        else:
            order = torch.arange(d)
        self.register_buffer("order", order)  # order[i] = the dimension visited i-th
        gain = math.sqrt(6.0) if config.activation == "relu" else 1.0  # He: var 2 / fan-in
        self.W = nn.Parameter(torch.empty(h, d).uniform_(-gain, gain) / math.sqrt(d))
        self.V = nn.Parameter(torch.empty(d, h).uniform_(-gain, gain) / math.sqrt(h))
        self.b = nn.Parameter(torch.zeros(d))
        self.c = nn.Parameter(torch.zeros(h))

    def _hidden(self, a: Tensor) -> Tensor:
        return a.relu() if self.config.activation == "relu" else a.sigmoid()

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
            self.config.activation == "relu",
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
            p = torch.sigmoid(self.b[d] + self._hidden(a) @ self.V[d])  # (n,)
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
                p = torch.sigmoid(self.b[d] + self._hidden(a) @ self.V[d])
                draw = (ar.uniform(len(x), generator, x) < p).to(x.dtype)
                x[:, d] = torch.where(missing[:, d], draw, x[:, d])
            a += x[:, d, None] * self.W[:, d]
        return x
