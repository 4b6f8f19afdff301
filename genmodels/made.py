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
connection (masked, strictly autoregressive).

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
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import impute_autoregressive as ar
from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
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
    lr: float = 1e-3
    impute_proposals: int = IMPUTE_PROPOSALS
    impute_sweeps: int = IMPUTE_SWEEPS


@register
class MADE(ar.AutoregressiveImpute, GenerativeModel):
    family = "made"
    likelihood = "exact"
    data_kinds = ("binary",)
    Config = MADEConfig
    capabilities = frozenset({"log_prob", "impute"})
    sample_limit = 256
    search_space = {
        "hidden_sizes": SearchSpec("choice", ((256,), (500,), (500, 500))),
        "num_masks": SearchSpec("choice", (1, 4, 8)),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
        "weight_decay": SearchSpec("choice", (0.0, 1e-5, 1e-4)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: MADEConfig) -> None:
        super().__init__(input_shape, levels, config)
        if config.num_masks < 1:
            raise ValueError(f"made: num_masks must be >= 1, got {config.num_masks}")
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

    def set_mask(self, k: int) -> None:
        for layer in self.masked_layers():
            layer.mask_index = k

    def masked_layers(self) -> list[MaskedLinear]:
        return [*self.layers, *([self.direct] if self.direct is not None else [])]

    def logits(self, x: Tensor) -> Tensor:
        """Bernoulli logits ``(B, D)`` of p(x_d | x_<d) under the current mask."""
        h = x.flatten(1)
        out_direct = self.direct(h) if self.direct is not None else 0.0
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return self.layers[-1](h) + out_direct

    def _log_prob_mask(self, x: Tensor, k: int) -> Tensor:
        self.set_mask(k)
        return bernoulli_log_prob(self.logits(x), x)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].float()
        k = int(torch.randint(self.config.num_masks, (1,), generator=self._mask_generator))
        nll = -self._log_prob_mask(x, k).mean()
        return {"loss": nll, "nll": nll.detach()}

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        x = self.check_input(x)
        per_mask = torch.stack([self._log_prob_mask(x, k) for k in range(self.config.num_masks)], 1)
        return log_mean_exp(per_mask, dim=1)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        d = self.num_dims
        device = self.orders.device
        # The mixture: each sample picks one mask uniformly, then is drawn in that mask's order.
        which = torch.randint(self.config.num_masks, (n,), generator=generator)
        x = torch.zeros(n, d, device=device)
        for k in which.unique().tolist():
            rows = (which == k).nonzero().squeeze(1).to(device)
            xk = torch.zeros(len(rows), d, device=device)
            self.set_mask(k)
            for dim in torch.argsort(self.orders[k]).tolist():
                p = torch.sigmoid(self.logits(xk)[:, dim])
                u = torch.rand(len(rows), generator=generator).to(device)
                xk[:, dim] = (u < p).float()
            x[rows] = xk
        return x.view(n, *self.input_shape)

    # ------------------------------------------------------------------------------ imputation
    @property
    def _ar_rows(self) -> int:
        return max(1, 2**22 // max(self.num_dims, *self.config.hidden_sizes))

    def _ar_positions(self) -> Tensor:
        return self.orders - 1  # (K, D), positions 0..D-1

    def _ar_log_conditionals(self, xf: Tensor, k: int) -> Tensor:
        self.set_mask(k)
        logits = self.logits(xf)
        return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], -1)

    def _ar_fill(
        self, xf: Tensor, missing: Tensor, k: int, generator: torch.Generator | None
    ) -> Tensor:
        """Sequential sampling under mask k; the first layer's pre-activation is updated one
        input column at a time (O(H1) per step), the layers above run on every step."""
        self.set_mask(k)
        x = torch.where(missing, 0.0, xf)
        any_missing = missing.any(0).tolist()
        first, last = self.layers[0], self.layers[-1]
        w_first = first.weight * first.masks[k]  # (H1, D)
        w_last = last.weight * last.masks[k]  # (D, H_last)
        w_direct = self.direct.weight * self.direct.masks[k] if self.direct is not None else None
        a = first(x) if len(self.layers) > 1 else None  # (N, H1), unfilled inputs are 0
        for d in torch.argsort(self.orders[k]).tolist():
            if any_missing[d]:
                if a is None:  # no hidden layer
                    logit = x @ w_last[d] + last.bias[d]
                else:
                    h = F.relu(a)
                    for layer in self.layers[1:-1]:
                        h = F.relu(layer(h))
                    logit = h @ w_last[d] + last.bias[d]
                if w_direct is not None:
                    logit = logit + x @ w_direct[d]
                draw = (ar.uniform(len(x), generator, x) < torch.sigmoid(logit)).to(x.dtype)
                new = torch.where(missing[:, d], draw, x[:, d])
                if a is not None:
                    a += (new - x[:, d])[:, None] * w_first[:, d]
                x[:, d] = new
        return x
