"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray & Larochelle, 2015,
https://arxiv.org/abs/1502.03509).

An MLP whose weight matrices are masked so that output d depends only on inputs that precede d in
an autoregressive order; the outputs are the Bernoulli logits of p(x_d | x_<d), so one pass gives
an exact log-likelihood. Training over several masks (orderings and connectivities) makes the
network order-agnostic; the model is then the uniform *mixture* of the K per-mask densities, and
``log_prob`` is log-mean-exp over masks, which normalises (the mean of per-mask log-probs would
not).

Choices here: binary data; ``num_masks`` masks drawn once from the seed and stored as buffers;
training draws one mask per step (from the module's own generator, so it is reproducible);
``natural_order`` keeps the first mask in raster order; an optional direct input-to-output
connection (masked, strictly autoregressive); optional ``dropout`` on the hidden units in
training only (default 0: off), so evaluation and sampling use the whole, exact network.

Imputation (``impute``, see ``genmodels.impute_autoregressive``). The model is the mixture
p = (1/K) sum_k p_k, so its conditional is p(x_mis | x_obs) = sum_k w_k p_k(x_mis | x_obs) with
w_k ∝ p_k(x_obs). When every mask's order puts the observed entries first (always so for
K = 1 with a compatible mask, and for rows with nothing observed), p_k(x_obs) is exact, the mask
is drawn by w_k and the missing entries are sampled ancestrally under it: exact for the mixture
(``"mask-posterior+ancestral-exact"``; ``"ancestral-exact"`` for K = 1), and so is
``log_prob_missing``. Sampling from one compatible mask alone would be exact for that component,
not for the model, so a row that is compatible with only some masks takes the general route:
P sequential proposals per imputation from the compatible masks (all masks if none), resampled by
the mixture importance weight p(x) / q(x_mis), then S Gibbs sweeps with the mixture's exact full
conditionals (K forward passes per missing entry) — ``"sir-k=P+gibbs-sweeps=S"``, approximate —
and an importance *estimate* of ``log_prob_missing`` with its standard error. Sequential sampling
updates the first layer one input column at a time. Defaults P = 4, S = 0 (``impute_proposals``,
``impute_sweeps``), sized for 784-dim digits with one hidden layer of 500: about 0.5-0.9 CPU-s per
100 imputations on an incompatible mask with K = 1 (0.1 s ancestral-exact).

Class-conditional MADE (``conditional=True``, ``num_classes`` K; see ``genmodels.conditional``):
the label's one-hot is an extra input connected to every hidden unit and every output, with no
mask (it precedes every dimension in every order), i.e. a learned per-label bias
``label_embeddings[l][y]`` added to layer l's pre-activation (zero at initialisation). Each
p(x | y) is then an exact, normalised autoregressive model: ``log_prob(x, condition={"label": y})``
is exact (method ``"exact-conditional:label"``) and ``sample`` draws from it. Without a condition
the model is the uniform label mixture (1/K) sum_y p(x | y) (exact, K passes per mask); imputation
treats it as a mixture of K x ``num_masks`` components (label-major), so the mask-posterior
algorithm above also weighs the labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import conditional
from . import impute_autoregressive as ar
from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ScoreResult,
    SearchSpec,
    bernoulli_log_prob,
    log_mean_exp,
    register,
)
from .layers import MaskedLinear, made_degrees, made_masks

IMPUTE_PROPOSALS, IMPUTE_SWEEPS = 4, 0  # sized for 784-dim digits (see the docstring)


@dataclass(frozen=True)
class MADEConfig(BaseConfig):
    hidden_sizes: tuple[int, ...] = (500,)
    num_masks: int = 1
    natural_order: bool = True
    direct_connection: bool = True
    dropout: float = 0.0  # on each hidden layer's output, in training only
    lr: float = 1e-3
    impute_proposals: int = IMPUTE_PROPOSALS
    impute_sweeps: int = IMPUTE_SWEEPS
    conditional: bool = False  # p(x | y): see genmodels.conditional
    num_classes: int = 10


@register
class MADE(ar.AutoregressiveImpute, GenerativeModel):
    family = "made"
    likelihood = "exact"
    data_kinds = ("binary",)
    Config = MADEConfig
    capabilities = frozenset({"log_prob", "impute"})
    sample_limit = 256
    search_space = {
        # (2000,) / (8000,) with early stopping: the issue-16 protocol (benchmarks/nll_threshold)
        "hidden_sizes": SearchSpec("choice", ((256,), (500,), (500, 500), (2000,), (8000,))),
        "num_masks": SearchSpec("choice", (1, 4, 8)),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
        "weight_decay": SearchSpec("choice", (0.0, 1e-5, 1e-4)),
        # issue 16, 8000 units at 200 CPU-s: validation NLL 84.06 / 83.63 / 83.28 / 82.21 / 81.83 /
        # 81.86 nats at dropout 0.1 / 0.2 / 0.3 / 0.5 / 0.6 / 0.7 (a wide layer overfits early)
        "dropout": SearchSpec("choice", (0.0, 0.1, 0.3, 0.5, 0.6)),
        # the first mask's order: raster, or a random permutation (issue 16: one hidden layer
        # of 8000 units reached 84.3 nats of validation NLL with a random order, 91.1 raster)
        "natural_order": SearchSpec("choice", (True, False)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: MADEConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.num_masks < 1:
            raise ValueError(f"made: num_masks must be >= 1, got {config.num_masks}")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"made: dropout must be in [0, 1), got {config.dropout}")
        ar.validate_settings(self.family, config.impute_proposals, config.impute_sweeps)
        d = self.num_dims
        g = torch.Generator().manual_seed(config.seed)
        per_mask: list[list[Tensor]] = []
        orders = []
        for k in range(config.num_masks):
            if k == 0 and config.natural_order:
                order = torch.arange(1, d + 1)
            else:
                order = torch.randperm(d, generator=g) + 1
            orders.append(order)
            per_mask.append(made_masks(made_degrees(d, config.hidden_sizes, order, g)))
        sizes = (d, *config.hidden_sizes, d)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            masks = torch.stack([m[i] for m in per_mask])
            layers.append(MaskedLinear(n_in, n_out, masks))
        self.layers = nn.ModuleList(layers)
        self.register_buffer("orders", torch.stack(orders))  # (K, D), positions 1..D
        if config.direct_connection:
            direct = torch.stack([(o[:, None] > o[None, :]).float() for o in orders])
            self.direct = MaskedLinear(d, d, direct, bias=False)
        else:
            self.direct = None
        self._mask_generator = torch.Generator().manual_seed(config.seed + 1)
        self.num_labels = conditional.setup(self)
        if self.num_labels:
            # One-hot label -> every hidden unit and every output, unmasked: a per-label bias
            # per layer. Created last, so the other parameters' initialisation is unchanged.
            self.label_embeddings = nn.ModuleList(
                nn.Embedding(self.num_labels, n_out) for n_out in sizes[1:]
            )
            for emb in self.label_embeddings:
                nn.init.zeros_(emb.weight)
        else:
            self.label_embeddings = None

    def set_mask(self, k: int) -> None:
        for layer in self.masked_layers():
            layer.mask_index = k

    def masked_layers(self) -> list[MaskedLinear]:
        return [*self.layers, *([self.direct] if self.direct is not None else [])]

    def label_biases(self, labels: Tensor | None) -> list[Tensor | float]:
        """Per layer, the label's additive term ``(B, size)`` (0.0 for an unconditional model)."""
        if self.label_embeddings is None:
            return [0.0] * len(self.layers)
        if labels is None:
            raise ValueError("made: a conditional MADE's logits need labels")
        labels = labels.to(self.orders.device)
        return [emb(labels) for emb in self.label_embeddings]

    def logits(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Bernoulli logits ``(B, D)`` of p(x_d | x_<d) (given ``labels``, for a conditional
        model) under the current mask."""
        h = x.flatten(1)
        bias = self.label_biases(labels)
        out_direct = self.direct(h) if self.direct is not None else 0.0
        p = self.config.dropout
        for layer, b in zip(self.layers[:-1], bias):
            h = F.relu(layer(h) + b)
            if p > 0.0 and self.training:  # training only: log_prob (eval) stays exact
                h = F.dropout(h, p, training=True)
        return self.layers[-1](h) + bias[-1] + out_direct

    def _log_prob_mask(self, x: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        self.set_mask(k)
        return bernoulli_log_prob(self.logits(x, labels), x)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].float()
        labels = conditional.training_labels(self, batch) if self.num_labels else None
        k = int(torch.randint(self.config.num_masks, (1,), generator=self._mask_generator))
        nll = -self._log_prob_mask(x, k, labels).mean()
        return {"loss": nll, "nll": nll.detach()}

    def _log_prob_given(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """The mask mixture's exact log p(x) (or log p(x | labels)) ``(B,)``."""
        masks = range(self.config.num_masks)
        per_mask = torch.stack([self._log_prob_mask(x, k, labels) for k in masks], 1)
        return log_mean_exp(per_mask, dim=1)

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Exact log p(x); given ``condition={"label": y}``, the exact conditional log p(x | y);
        a conditional model without one gives the uniform label mixture's log p(x)."""
        return conditional.exact_log_prob(self, x, condition, self._log_prob_given)

    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        method = conditional.method_name(self, "exact", condition)
        return ScoreResult(self.log_prob(x, generator, condition), method=method)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Ancestral samples of the mask mixture; given ``condition={"label": y}`` (one label or
        one per sample), of p(x | y); a conditional model without one draws y uniformly first.

        Each step updates the first layer's pre-activation by one input column (O(H1)) and
        computes only the next output (``_sequential_fill``); the draws are those of
        ``_sample_full``, which recomputes the whole network per dimension."""
        return self._sample(n, generator, condition, incremental=True)

    @torch.no_grad()
    def _sample_full(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """The full-recompute sampler (one network pass per dimension): the reference for
        tests and ``benchmarks/sampling.py``; same draws, same samples as ``sample``."""
        return self._sample(n, generator, condition, incremental=False)

    def _sample(
        self,
        n: int,
        generator: torch.Generator | None,
        condition: Condition,
        incremental: bool,
    ) -> Tensor:
        labels = conditional.labels_from_condition(self, condition, n)
        if labels is None and self.num_labels:
            labels = conditional.uniform_labels(self, n, generator)
        d = self.num_dims
        device = self.orders.device
        # The mixture: each sample picks one mask uniformly, then is drawn in that mask's order.
        which = torch.randint(self.config.num_masks, (n,), generator=generator)
        x = torch.zeros(n, d, device=device)
        for k in which.unique().tolist():
            rows = (which == k).nonzero().squeeze(1).to(device)
            xk = torch.zeros(len(rows), d, device=device)
            yk = labels[rows.cpu()] if labels is not None else None
            self.set_mask(k)
            if incremental:
                xk = self._sequential_fill(xk, None, k, yk, generator)
            else:
                for dim in torch.argsort(self.orders[k]).tolist():
                    p = torch.sigmoid(self.logits(xk, yk)[:, dim])
                    u = torch.rand(len(rows), generator=generator).to(device)
                    xk[:, dim] = (u < p).float()
            x[rows] = xk
        return x.view(n, *self.input_shape)

    # ------------------------------------------------------------------------------ imputation
    @property
    def _ar_rows(self) -> int:
        return max(1, 2**22 // max(self.num_dims, *self.config.hidden_sizes))

    def _ar_positions(self) -> Tensor:
        # (components, D), positions 0..D-1; a conditional model's components are label-major
        # (label c // num_masks, mask c % num_masks), the uniform mixture of its marginal.
        return (self.orders - 1).repeat(max(1, self.num_labels), 1)

    def _ar_component(self, c: int, n: int) -> tuple[int, Tensor | None]:
        """Component ``c`` → (mask index, ``n`` labels or None), after selecting the mask."""
        k = c % self.config.num_masks
        self.set_mask(k)
        if not self.num_labels:
            return k, None
        return k, torch.full((n,), c // self.config.num_masks, dtype=torch.long)

    def _ar_log_conditionals(self, xf: Tensor, k: int) -> Tensor:
        _, labels = self._ar_component(k, len(xf))
        logits = self.logits(xf, labels)
        return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], -1)

    def _ar_fill(
        self, xf: Tensor, missing: Tensor, k: int, generator: torch.Generator | None
    ) -> Tensor:
        """Sequential sampling of the missing entries under component k (``_sequential_fill``)."""
        k, labels = self._ar_component(k, len(xf))
        return self._sequential_fill(torch.where(missing, 0.0, xf), missing, k, labels, generator)

    def _sequential_fill(
        self,
        x: Tensor,
        missing: Tensor | None,
        k: int,
        labels: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Draw the entries of ``x (N, D)`` where ``missing`` (every entry if None) in mask k's
        order, in place, one uniform per dimension. The first layer's pre-activation is updated
        one input column at a time (O(H1) per step) and only output d is computed (O(H_last));
        layers between the first and the last hidden one run in full on every step."""
        bias = self.label_biases(labels)
        any_missing = missing.any(0).tolist() if missing is not None else [True] * x.shape[1]
        first, last = self.layers[0], self.layers[-1]
        w_first = first.weight * first.masks[k]  # (H1, D)
        w_last = last.weight * last.masks[k]  # (D, H_last)
        w_direct = self.direct.weight * self.direct.masks[k] if self.direct is not None else None
        # (N, H1), unfilled inputs are 0
        a = first(x) + bias[0] if len(self.layers) > 1 else None
        out_bias = bias[-1] if isinstance(bias[-1], Tensor) else None  # (N, D)
        for d in torch.argsort(self.orders[k]).tolist():
            if any_missing[d]:
                if a is None:  # no hidden layer
                    logit = x @ w_last[d] + last.bias[d]
                else:
                    h = F.relu(a)
                    for layer, b in zip(self.layers[1:-1], bias[1:-1]):
                        h = F.relu(layer(h) + b)
                    logit = h @ w_last[d] + last.bias[d]
                if out_bias is not None:
                    logit = logit + out_bias[:, d]
                if w_direct is not None:
                    logit = logit + x @ w_direct[d]
                draw = (ar.uniform(len(x), generator, x) < torch.sigmoid(logit)).to(x.dtype)
                new = draw if missing is None else torch.where(missing[:, d], draw, x[:, d])
                if a is not None:
                    a += (new - x[:, d])[:, None] * w_first[:, d]
                x[:, d] = new
        return x
