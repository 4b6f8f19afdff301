"""RBM: the binary restricted Boltzmann machine (Smolensky 1986; Hinton 2002,
https://doi.org/10.1162/089976602760128018), trained by contrastive divergence (CD-k) or
persistent contrastive divergence (Tieleman 2008, https://doi.org/10.1145/1390156.1390290) and
scored with annealed importance sampling (Salakhutdinov & Murray 2008,
https://doi.org/10.1145/1390156.1390266).

An energy model of binary visibles v and hiddens h, E(v, h) = -b·v - c·h - h·Wv. The hiddens sum
out in closed form: p(v) = exp(-F(v)) / Z with the free energy F(v) = -b·v - sum_j softplus(c_j +
W_j·v), and both conditionals factorise, so block Gibbs sampling alternates h ~ p(h|v), v ~ p(v|h).
The log-likelihood gradient is E_model[dF/dθ] - E_data[dF/dθ]; CD-k estimates the model term with
k Gibbs steps started at the data, PCD with persistent chains carried across updates. Z is
intractable for real sizes: AIS anneals from a base-rate RBM (zero weights) to the model, with
the hiddens summed out of the intermediate densities and one Gibbs sweep at each inverse
temperature.

Choices here: ``forward`` returns mean F(v_data) - mean F(v_model) with v_model detached, whose
gradient is the CD/PCD gradient, stepped by Adam without momentum (``adam_beta1 = 0``: momentum
makes PCD oscillate); PCD-5 by default. Each update sends ``chain_restart`` (1 %) of the
persistent chains back to base-rate noise, where ``sample`` starts, and the weights that score,
sample, embed and impute are an exponential moving average (``average_decay = 0.999``,
``genmodels.averaging``) of the trained ones, which ``forward`` alone reads (issue 17, as the
DBM's; the benchmark's 784 x 500 RBM, one thread, measured every 60 CPU-s up to 240): plain PCD
gave validation FD 54-99 of 500 random-start samples with collapsed classes (coverage
0.33-0.62; the README's grid was mostly 2s, 3s and 6s) and -107 to -118 validation nats (log Z
by AIS at 5,000 temperatures, ESS 3-44 of 100, so these lean optimistic); with restarts, its
raw weights FD 38-97 and -113 to -115 nats; their average FD 14.1 / 7.7 / 6.4 at 120 / 180 /
240 CPU-s and -99.3 / -99.3 / -101.7 nats. The first training batch sets b_A, the smoothed log-odds
of its pixels: the base of AIS, where the chains start, and the origin of the visible biases
(stored as b - b_A, so they start at the data's log-odds as Hinton's practical guide advises;
Adam's bounded steps would take thousands of updates to get there). PCD chains (``num_chains``
per worker) are plain tensors, not buffers, checkpointed per rank through ``rank_state``; training
noise comes from the global CPU generator, which the trainer seeds per rank and checkpoints.
``prepare_scoring`` computes log Z once per set of weights — exactly, by enumerating the smaller
layer, when it has at most ``exact_max_units`` units, else by AIS with ``ais_chains`` chains and
``ais_betas`` temperatures (``final=True``; 100 x 14,500 as in the paper, about 50 CPU-seconds
single-threaded for 784 x 500) or ``ais_betas_validation`` — into buffers, so a reloaded model
scores without redoing it. A training step marks it stale, and scoring a stale model recomputes
it with the validation settings and a fixed seed. ``score``'s standard error is log Z's, shared by
every example. AIS is a stochastic lower bound on log Z, so its log-likelihoods lean optimistic,
the more so the lower its effective sample size (``ais_ess``, stored in the ``log_z_ess`` buffer).
The temperatures (``annealing_schedule``) are ``ais_schedule = "tuned"`` by default: even steps of
thermodynamic length measured by a pilot run (``ais_pilot_chains`` x ``ais_pilot_betas``, about
4 % of the final run's cost; ``ais.tuned_schedule``), or ``"paper"``, Salakhutdinov & Murray's
spacing. On a 12 x 6 RBM with N(0, 9) weights, 400 chains at 50 temperatures, the tuned schedule
kept an ESS of about 230 against 60; on a 784 x 500 MNIST RBM (120 CPU-s of PCD) at 14,500
temperatures the two were within noise (ESS 27.7 tuned vs 31.8 paper of 100 chains, 107-117
CPU-s on a loaded machine, log Z 384.23 ± 0.16 vs 384.07 ± 0.15). The benchmark's 240-CPU-s RBM,
whose paper-schedule ESS was 2.4, was not re-measured.

The other side: ``log_prob_bounds(x)`` returns per-example ``lower`` = RAISE (``raise_log_prob``,
``ais.reverse_anneal``: each reverse chain starts at the example itself, hiddens summed out, and
walks back to the base-rate RBM through the same schedule and Gibbs sweeps; ``raise_chains`` = 2
chains per example, ``raise_betas`` = 3,000: the measurements below found temperatures worth more
than chains, the per-example ESS being 1.8-2.5 of 5; about 3e6 row-sweeps for 500 digits, a few
CPU-minutes) and ``upper`` = -F(x) - log Z with the stored
forward-AIS log Z, plus both ESS. RAISE is a stochastic lower bound on the log-likelihood of the
annealing model (forward AIS read as a generative process), which tends to the RBM's as the
schedule gets finer; on enumerable models it sits below the exact value (tested, also at 10
temperatures). Measured on the MNIST RBM above (20 test digits): at 1,000 temperatures RAISE
read -98.96 ± 0.16 nats (5 chains each; -99.31 ± 0.12 at 3,000, 31 CPU-s) against the forward-AIS
value -100.71 ± 0.15, i.e. ABOVE it (unless both forward runs over-estimated log Z by 1.7 nats,
each with probability <= e^-1.7 by Markov's inequality): the
annealing model of a short schedule fits these digits better than the RBM (which puts mass on
modes a 1,000-sweep anneal does not reach), so a RAISE number above the forward one means the
schedule is too short for the lower side to be conservative, not that the truth lies between. ``sample`` runs ``sample_steps``
Gibbs sweeps from base-rate noise; ``embed`` is p(h = 1 | v).

Imputation (``impute``): clamped block Gibbs sampling. The observed visibles are clamped to x at
every step; h ~ p(h | v) and the missing visibles v_mis ~ p(v_mis | h) are resampled, so the
chain's stationary distribution is the RBM's exact conditional p(v_mis | v_obs): the draws are
exact in the limit of many sweeps (checked against enumeration on an 8-unit model). Each of the S
imputations is its own chain, started from a Bernoulli draw of ``impute_mean_field`` clamped
naive mean-field iterations (0: the base rates) and run ``impute_sweeps`` sweeps (default 200;
the method string says ``clamped-gibbs-sweeps=200-mean-field-init=10``); ``impute_chunk``
chains move together. A row with nothing observed is drawn by ``sample`` (``sample_steps``
sweeps from base-rate noise), a row with nothing missing is x. ``log_prob_missing`` = log p(x_mis
| x_obs) = -F(x) - log sum_{v_mis} exp(-F(x_obs, v_mis)): exact (enumerating the hidden layer,
or else the visible one) when either layer has at most ``exact_max_units`` units; otherwise an
estimate by AIS per example (``impute_ais_chains`` = 8 chains, ``impute_ais_betas`` = 100
temperatures, from the factorial mean-field base to the conditional RBM), with its standard
error; AIS under-estimates the normaliser on average, so the estimate leans high (measured on a
784-500 RBM, 50 % of pixels missing: 1.4 nats above a 32-chain, 1,000-temperature run, per-example
standard error 0.6; 0.7 CPU-s per 10 examples). 0 chains: None. Cost at 784 x 500, one thread:
1.5 CPU-s per 100 imputations, plus 6 CPU-s per 100 examples for the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ais, averaging
from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    ScoreResult,
    SearchSpec,
    register,
)
from .impute_chains import anneal_rows, impute_rows, row_chunks
from .optim import adam

_AVERAGED = ("weight", "visible_bias", "hidden_bias")  # averaged for inference (averaging)


@dataclass(frozen=True)
class RBMConfig(BaseConfig):
    hidden_size: int = 500
    cd_k: int = 5
    persistent: bool = True
    num_chains: int = 100
    chain_restart: float = 0.01  # share of PCD chains restarted from base-rate noise per update
    average_decay: float = 0.999  # inference weights: EMA of the trained ones (0: the raw weights)
    init_std: float = 0.01
    sample_steps: int = 1000
    ais_chains: int = 100
    ais_betas: int = 14500
    ais_betas_validation: int = 1000
    ais_schedule: str = "tuned"  # "paper": Salakhutdinov & Murray's spacing (ais.schedule)
    ais_pilot_chains: int = 100
    ais_pilot_betas: int = 1000
    raise_chains: int = 2  # RAISE chains per example (log_prob_bounds)
    raise_betas: int = 3000
    raise_chunk: int = 2000  # RAISE rows advanced together
    exact_max_units: int = 20
    adam_beta1: float = 0.0
    lr: float = 1e-3
    impute_sweeps: int = 200  # clamped Gibbs sweeps per imputation chain
    impute_mean_field: int = 10  # mean-field iterations that start the chains (0: base rates)
    impute_ais_chains: int = 8  # per example, for log p(x_mis | x_obs); 0: no estimate
    impute_ais_betas: int = 100
    impute_chunk: int = 1024  # chains advanced together (bounds memory)


def bernoulli(p: Tensor, generator: torch.Generator | None, trials: int = 1) -> Tensor:
    """Binomial(trials, p) draws (binary for 1); uniform noise made on the CPU from ``generator``
    (the global CPU generator when ``None``) so results do not depend on the device."""
    if trials == 1:
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        return (u < p).to(p.dtype)
    u = torch.rand((trials, *p.shape), generator=generator, dtype=p.dtype).to(p.device)
    return (u < p).to(p.dtype).sum(0)


def binary_codes(start: int, stop: int, bits: int, dtype: torch.dtype, device) -> Tensor:
    """The binary expansions of start..stop-1 → ``(stop - start, bits)``, most significant first."""
    idx = torch.arange(start, stop, device=device)
    shifts = torch.arange(bits - 1, -1, -1, device=device)
    return ((idx[:, None] >> shifts) & 1).to(dtype)


@register
class RBM(GenerativeModel):
    family = "rbm"
    likelihood = "estimate"
    data_kinds = ("binary",)
    Config = RBMConfig
    capabilities = frozenset({"log_prob", "embed", "impute"})
    sample_limit = 512
    search_space = {
        "hidden_size": SearchSpec("choice", (100, 250, 500)),
        "cd_k": SearchSpec("choice", (1, 3, 10)),
        "persistent": SearchSpec("choice", (True, False)),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
        "adam_beta1": SearchSpec("choice", (0.0, 0.5)),
        "weight_decay": SearchSpec("choice", (0.0, 1e-5, 1e-4)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: RBMConfig) -> None:
        super().__init__(input_shape, levels, config)
        for key in (
            "hidden_size", "cd_k", "num_chains", "sample_steps", "ais_chains", "impute_sweeps",
            "impute_chunk",
        ):  # fmt: skip
            if getattr(config, key) < 1:
                raise ValueError(f"rbm: {key} must be >= 1, got {getattr(config, key)}")
        for key in ("ais_pilot_chains", "raise_chains", "raise_chunk"):
            if getattr(config, key) < 1:
                raise ValueError(f"rbm: {key} must be >= 1, got {getattr(config, key)}")
        if config.ais_schedule not in ("paper", "tuned"):
            raise ValueError(
                f"rbm: ais_schedule must be 'paper' or 'tuned', got {config.ais_schedule}"
            )
        for key in ("ais_betas", "ais_betas_validation", "ais_pilot_betas", "raise_betas"):
            if getattr(config, key) < 2:
                raise ValueError(f"rbm: {key} must be >= 2, got {getattr(config, key)}")
        for key in ("impute_mean_field", "impute_ais_chains"):
            if getattr(config, key) < 0:
                raise ValueError(f"rbm: {key} must be >= 0, got {getattr(config, key)}")
        if config.impute_ais_betas < 2:
            raise ValueError(f"rbm: impute_ais_betas must be >= 2, got {config.impute_ais_betas}")
        if not 0 <= config.exact_max_units <= 30:
            raise ValueError(f"rbm: exact_max_units must be in 0..30, got {config.exact_max_units}")
        if not 0 <= config.average_decay < 1:
            raise ValueError(f"rbm: average_decay must be in [0, 1), got {config.average_decay}")
        if not 0 <= config.chain_restart <= 1:
            raise ValueError(f"rbm: chain_restart must be in [0, 1], got {config.chain_restart}")
        if not config.init_std >= 0:
            raise ValueError(f"rbm: init_std must be >= 0, got {config.init_std}")
        if not 0 <= config.adam_beta1 < 1:
            raise ValueError(f"rbm: adam_beta1 must be in [0, 1), got {config.adam_beta1}")
        d, h = self.num_dims, config.hidden_size
        self.weight = nn.Parameter(torch.randn(h, d) * config.init_std)  # W, (H, V)
        self.visible_bias = nn.Parameter(torch.zeros(d))  # b - b_A: relative to the base rates
        self.hidden_bias = nn.Parameter(torch.zeros(h))  # c
        averaging.register(self, _AVERAGED)
        self._raw = False  # True inside a forward: training reads the raw weights
        # b_A, the data's log-odds: the AIS base (W = 0, c = 0) and the visible biases' origin.
        self.register_buffer("base_bias", torch.zeros(d))
        self.register_buffer("base_set", torch.zeros((), dtype=torch.int64))
        # log Z of the current weights; valid == 0 means stale. chains == 0 means exact.
        self.register_buffer("log_z", torch.zeros((), dtype=torch.float64))
        self.register_buffer("log_z_stderr", torch.zeros((), dtype=torch.float64))
        self.register_buffer("log_z_valid", torch.zeros((), dtype=torch.int64))
        self.register_buffer("log_z_chains", torch.zeros((), dtype=torch.int64))
        self.register_buffer("log_z_betas", torch.zeros((), dtype=torch.int64))
        self.register_buffer("log_z_ess", torch.zeros((), dtype=torch.float64))
        self.chains: Tensor | None = None  # PCD chains (num_chains, V): per rank, not a buffer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # weights saved before log_z_ess existed load with an unknown ESS (0)
        state_dict.setdefault(prefix + "log_z_ess", torch.zeros((), dtype=torch.float64))
        averaging.fill_missing(self, _AVERAGED, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------- energy, Gibbs
    @property
    def full_visible_bias(self) -> Tensor:
        """b = b_A + (b - b_A), the visible biases of the energy."""
        return self.base_bias + self.vbias

    @property
    def W(self) -> Tensor:
        """W ``(H, V)``: the averaged weights (``average_decay`` > 0, once trained) everywhere but
        inside ``forward``, which trains the raw ones (``genmodels.averaging``)."""
        return averaging.pick(self, "weight", self._averaged)

    @property
    def vbias(self) -> Tensor:
        """b - b_A, averaged like ``W``."""
        return averaging.pick(self, "visible_bias", self._averaged)

    @property
    def hbias(self) -> Tensor:
        """c, averaged like ``W``."""
        return averaging.pick(self, "hidden_bias", self._averaged)

    @property
    def _averaged(self) -> bool:
        return not self._raw and self.config.average_decay > 0

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -b·v - sum_j softplus(c_j + W_j·v) → ``(B,)``; ``v`` is ``(B, ...)``."""
        v = v.flatten(1).to(self.weight.dtype)
        hidden = F.softplus(F.linear(v, self.W, self.hbias)).sum(-1)
        return -(v @ self.full_visible_bias) - hidden

    def hidden_probs(self, v: Tensor) -> Tensor:
        """p(h_j = 1 | v) → ``(B, H)``."""
        return torch.sigmoid(F.linear(v, self.W, self.hbias))

    def visible_probs(self, h: Tensor) -> Tensor:
        """p(v_i = 1 | h) → ``(B, V)``."""
        return torch.sigmoid(F.linear(h, self.W.t(), self.full_visible_bias))

    @torch.no_grad()
    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """``steps`` block Gibbs sweeps v → h → v from ``v`` ``(B, V)``; returns binary v."""
        for _ in range(steps):
            h = bernoulli(self.hidden_probs(v), generator)
            v = bernoulli(self.visible_probs(h), generator)
        return v

    def _base_noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` exact draws from the base-rate distribution, ``(n, V)``."""
        return bernoulli(torch.sigmoid(self.base_bias).expand(n, -1), generator)

    @torch.no_grad()
    def set_base_rates(self, x: Tensor) -> None:
        """Set b_A, the AIS base and the chains' starting point, to the log-odds of the smoothed
        marginals (count + 1/2) / (n + 1) of the binary batch ``x``. The visible biases are
        stored relative to b_A, so this moves them too: done before the first training step (as
        ``forward`` does), it starts them at the data's log-odds (Hinton 2010's advice), which
        Adam's bounded steps would otherwise take thousands of updates to reach."""
        v = x.flatten(1).to(self.base_bias.dtype)
        p = (v.sum(0) + 0.5) / (len(v) + 1.0)
        self.base_bias.copy_(torch.log(p) - torch.log1p(-p))
        self.base_set.fill_(1)
        self.log_z_valid.zero_()

    # --------------------------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        cfg = self.config
        v = batch["x"].flatten(1).to(self.weight.dtype)
        if self.training:
            self.log_z_valid.zero_()  # the weights are about to change
            if not self.base_set:
                self.set_base_rates(v)
            if cfg.average_decay > 0:  # the weights the last step left
                averaging.update(self, _AVERAGED, cfg.average_decay)
        self._raw = True
        try:
            return self._forward(v)
        finally:
            self._raw = False

    def _forward(self, v: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        with torch.no_grad():
            if cfg.persistent:
                chains = self.chains
                if chains is None or chains.shape != (cfg.num_chains, self.num_dims):
                    chains = self._base_noise(cfg.num_chains, None)
                elif cfg.chain_restart > 0:  # some chains back to where ``sample`` starts
                    restart = torch.rand(len(chains), device=chains.device) < cfg.chain_restart
                    if restart.any():
                        chains = torch.where(
                            restart[:, None], self._base_noise(len(chains), None), chains
                        )
                chains = self.gibbs(chains.to(v.device, v.dtype), cfg.cd_k)
                if self.training:
                    self.chains = chains
                v_model = chains
            else:
                v_model = self.gibbs(v, cfg.cd_k)
            recon = self.visible_probs(self.hidden_probs(v))  # mean-field reconstruction
            recon_error = (recon - v).pow(2).sum(1).mean()
        f_data = self.free_energy(v).mean()
        loss = f_data - self.free_energy(v_model).mean()
        return {"loss": loss, "free_energy": f_data.detach(), "recon_error": recon_error}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam with ``adam_beta1`` (default 0: no momentum, which makes PCD oscillate)."""
        cfg = self.config
        betas = (cfg.adam_beta1, 0.999)
        return {"main": adam(self.parameters(), cfg.lr, betas, weight_decay=cfg.weight_decay)}

    def rank_state(self) -> dict[str, Tensor]:
        return {} if self.chains is None else {"chains": self.chains.detach().cpu().clone()}

    def load_rank_state(self, state: Mapping[str, Tensor]) -> None:
        chains = state.get("chains")
        if chains is None:
            self.chains = None
        elif chains.shape[1:] != (self.num_dims,):
            raise ValueError(f"rbm: chains of shape {tuple(chains.shape)} for {self.num_dims} dims")
        else:
            self.chains = chains.to(self.weight.device, self.weight.dtype).clone()

    # ----------------------------------------------------------------------------------- log Z
    @torch.no_grad()
    def exact_log_z(self, chunk: int = 4096) -> float:
        """log Z by enumerating the 2^n states of the smaller layer (float64, in chunks)."""
        w = self.W.double()  # (H, V)
        b, c = self.full_visible_bias.double(), self.hbias.double()
        if w.shape[1] <= w.shape[0]:  # enumerate v: log Z = logsumexp_v -F(v)
            n, lin, bias, other = w.shape[1], w, c, b
        else:  # enumerate h: -F(h) = c·h + sum_i softplus(b_i + W_i·h)
            n, lin, bias, other = w.shape[0], w.t(), b, c
        if n > 30:
            raise ValueError(f"rbm: 2^{n} states are too many to enumerate")
        parts = []
        for start in range(0, 2**n, chunk):
            s = binary_codes(start, min(start + chunk, 2**n), n, torch.float64, w.device)
            parts.append(s @ other + F.softplus(F.linear(s, lin, bias)).sum(-1))
        return float(torch.logsumexp(torch.cat(parts), 0))

    def _ais_state(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """An AIS state: v ``(M, V)``, with c + Wv ``(M, H)`` and (b_A·v, (b - b_A)·v) ``(M, 2)``
        in float64, computed once per state (``log_f`` evaluates each state at two betas)."""
        pre = F.linear(v, self.W, self.hbias).double()
        lin = torch.stack([v @ self.base_bias, v @ self.vbias], 1).double()
        return v, pre, lin

    def _ais_log_f(self, state: tuple[Tensor, Tensor, Tensor], beta: float) -> Tensor:
        """log f_beta(v) = (b_A + beta (b - b_A))·v + sum_j softplus(beta (c + Wv)_j): the RBM
        of energy (1 - beta) E_A(v, h) + beta E(v, h) with its hiddens summed out."""
        _, pre, lin = state
        return lin[:, 0] + beta * lin[:, 1] + F.softplus(beta * pre).sum(-1)

    def _ais_transition(
        self, state: tuple[Tensor, Tensor, Tensor], beta: float, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One Gibbs sweep h ~ p_beta(h|v), v ~ p_beta(v|h) of that intermediate RBM."""
        _, pre, _ = state
        h = bernoulli(torch.sigmoid((beta * pre).to(self.weight.dtype)), generator)
        logits = self.base_bias + beta * F.linear(h, self.W.t(), self.vbias)
        return self._ais_state(bernoulli(torch.sigmoid(logits), generator))

    @torch.no_grad()
    def annealing_schedule(
        self, num_betas: int, generator: torch.Generator | None = None, kind: str | None = None
    ) -> Tensor:
        """The ``num_betas`` inverse temperatures of AIS and RAISE: ``ais_schedule`` = "paper"
        (``ais.schedule``, Salakhutdinov & Murray's spacing) or "tuned" (``ais.tuned_schedule``:
        even steps of thermodynamic length, measured by a pilot run of ``ais_pilot_chains``
        chains through ``ais_pilot_betas`` paper-spaced temperatures)."""
        cfg = self.config
        kind = kind or cfg.ais_schedule
        if kind == "paper":
            return ais.schedule(num_betas)
        initial = self._ais_state(self._base_noise(cfg.ais_pilot_chains, generator))
        return ais.tuned_schedule(
            self._ais_log_f,
            self._ais_transition,
            initial,
            num_betas,
            max(2, min(cfg.ais_pilot_betas, num_betas)),
            generator=generator,
        )

    @torch.no_grad()
    def ais_log_z(
        self,
        num_chains: int,
        num_betas: int,
        generator: torch.Generator | None = None,
        betas: Tensor | None = None,
    ) -> ais.AISResult:
        """AIS estimate of log Z with ``num_chains`` chains through ``betas`` (default
        ``ais_betas(num_betas)``)."""
        if betas is None:
            betas = self.annealing_schedule(num_betas, generator)
        initial = self._ais_state(self._base_noise(num_chains, generator))
        return ais.anneal(
            self._ais_log_f, self._ais_transition, initial, self.base_log_z(), betas, generator
        )

    @torch.no_grad()
    def raise_log_prob(
        self,
        x: Tensor,
        num_chains: int | None = None,
        num_betas: int | None = None,
        generator: torch.Generator | None = None,
        betas: Tensor | None = None,
    ) -> ais.RAISEResult:
        """RAISE (``ais.reverse_anneal``) estimates of log p(x) per example: a stochastic lower
        bound. The state is v with the hiddens summed out, so each reverse chain starts at the
        example itself (q = 1, log w_0 = -F(x)) and walks back to the base-rate RBM through the
        same path and Gibbs sweeps as ``ais_log_z`` (a v -> h -> v sweep is reversible). Chains
        (``raise_chains`` per example, ``raise_betas`` temperatures by default) run
        ``raise_chunk`` rows at a time."""
        cfg = self.config
        num_chains = num_chains or cfg.raise_chains
        if betas is None:
            betas = self.annealing_schedule(num_betas or cfg.raise_betas, generator)
        v = self.check_input(x).flatten(1).to(self.weight.dtype)
        parts = []
        for rows in v.split(max(1, cfg.raise_chunk // num_chains)):
            start = self._ais_state(rows.repeat(num_chains, 1))
            log_w0 = self._ais_log_f(start, 1.0)
            parts.append(
                ais.reverse_anneal(
                    self._ais_log_f,
                    self._ais_transition,
                    start,
                    log_w0,
                    self.base_log_z(),
                    betas,
                    num_chains,
                    generator,
                )
            )
        return ais.RAISEResult.concat(parts)

    @torch.no_grad()
    def log_prob_bounds(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        num_chains: int | None = None,
        num_betas: int | None = None,
    ) -> ais.LogProbBounds:
        """The sandwich of log p(x) per example: ``lower`` by RAISE (``raise_log_prob``), ``upper``
        = -F(x) - log Z with the stored forward-AIS log Z (``prepare_scoring``; the validation
        settings if stale). With log Z enumerable both are exact."""
        if not self.log_z_valid:
            self.prepare_scoring(torch.Generator().manual_seed(self.config.seed + 4242))
        v = self.check_input(x).flatten(1).to(self.weight.dtype)
        upper = -self.free_energy(v).double() - self.log_z
        info: dict[str, Any] = {
            "log_z": float(self.log_z),
            "log_z_stderr": float(self.log_z_stderr),
            "ais_chains": int(self.log_z_chains),
            "ais_betas": int(self.log_z_betas),
            "ais_ess": float(self.log_z_ess),
        }
        if self.uses_exact_log_z:
            zero = torch.zeros_like(upper)
            return ais.LogProbBounds(upper, zero, upper, 0.0, "exact-logz", info)
        res = self.raise_log_prob(x, num_chains, num_betas, generator)
        m = res.log_weights.shape[0]
        info.update(
            raise_chains=m,
            raise_betas=res.num_betas,
            raise_ess=float(res.effective_sample_size.mean()),
        )
        method = f"raise-M={m}-K={res.num_betas} / {self.scoring_method}"
        return ais.LogProbBounds(
            res.log_prob, res.stderr, upper, float(self.log_z_stderr), method, info
        )

    def base_log_z(self) -> float:
        """log Z_A = H log 2 + sum_i softplus(b_A_i) of the base-rate RBM (W = 0, c = 0: its
        visibles are independent and its hiddens uniform)."""
        bias = self.base_bias.double()
        return self.config.hidden_size * math.log(2.0) + float(F.softplus(bias).sum())

    @property
    def uses_exact_log_z(self) -> bool:
        return min(self.num_dims, self.config.hidden_size) <= self.config.exact_max_units

    @torch.no_grad()
    def prepare_scoring(
        self, generator: torch.Generator | None = None, final: bool = False
    ) -> dict[str, Any]:
        """Compute log Z (exact, or AIS with the final / validation settings) into buffers."""
        cfg = self.config
        if self.uses_exact_log_z:
            info: dict[str, Any] = {"log_z": self.exact_log_z(), "log_z_stderr": 0.0}
            chains = betas = 0
        else:
            betas = cfg.ais_betas if final else cfg.ais_betas_validation
            if generator is None:
                generator = torch.Generator().manual_seed(cfg.seed + 4242)
            result = self.ais_log_z(cfg.ais_chains, betas, generator)
            info = result.as_dict()
            chains, betas = result.num_chains, result.num_betas
        self.log_z_ess.fill_(info.get("ais_ess", 0.0))
        self.log_z.fill_(info["log_z"])
        self.log_z_stderr.fill_(info["log_z_stderr"])
        self.log_z_chains.fill_(chains)
        self.log_z_betas.fill_(betas)
        self.log_z_valid.fill_(1)
        return {**info, "method": self.scoring_method}

    @property
    def scoring_method(self) -> str:
        m, k = int(self.log_z_chains), int(self.log_z_betas)
        return "exact-logz" if m == 0 else f"ais-M={m}-K={k}"

    # ------------------------------------------------------------------------------- inference
    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        self.check_condition(condition)
        x = self.check_input(x)
        if not self.log_z_valid:  # stale: the validation settings, a fixed seed
            self.prepare_scoring(torch.Generator().manual_seed(self.config.seed + 4242))
        log_p = -self.free_energy(x) - self.log_z.to(self.weight.dtype)
        stderr = float(self.log_z_stderr)
        return ScoreResult(
            log_p, self.scoring_method, torch.full_like(log_p, stderr), shared_stderr=stderr
        )

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        return self.score(x, generator).log_prob

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        v = self._base_noise(n, generator)
        return self.gibbs(v, self.config.sample_steps, generator).view(n, *self.input_shape)

    def embed(self, x: Tensor) -> Tensor:
        return self.hidden_probs(self.check_input(x).flatten(1).to(self.weight.dtype))

    # ------------------------------------------------------------------------------ imputation
    def clamped_mean_field(self, x: Tensor, mask: Tensor, steps: int) -> Tensor:
        """Naive mean-field means ``(N, V)`` of p(v_mis, h | v_obs), the observed units (``mask``
        = 1) fixed at ``x`` (both ``(N, V)``): from the base rates, ``steps`` fixed-point updates
        mu_h = sigmoid(c + W mu_v), mu_v = sigmoid(b + W' mu_h) on the missing units."""
        observed = mask.bool()
        mu = torch.where(observed, x, torch.sigmoid(self.base_bias).expand_as(x))
        for _ in range(steps):
            mu = torch.where(observed, x, self.visible_probs(self.hidden_probs(mu)))
        return mu

    @torch.no_grad()
    def clamped_gibbs(
        self, x: Tensor, mask: Tensor, v: Tensor, sweeps: int, generator: torch.Generator | None
    ) -> Tensor:
        """``sweeps`` block Gibbs sweeps h ~ p(h | v), v_mis ~ p(v_mis | h) from ``v``, with the
        observed units (``mask`` = 1) clamped to ``x`` (all ``(N, V)``): a chain whose stationary
        distribution is p(v_mis | v_obs), the RBM's exact conditional."""
        observed = mask.bool()
        v = torch.where(observed, x, v)
        for _ in range(sweeps):
            h = bernoulli(self.hidden_probs(v), generator)
            v = torch.where(observed, x, bernoulli(self.visible_probs(h), generator))
        return v

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        cfg = self.config
        like = self.weight

        def chain(xr: Tensor, mr: Tensor, gen: torch.Generator | None) -> Tensor:
            start = bernoulli(self.clamped_mean_field(xr, mr, cfg.impute_mean_field), gen)
            return self.clamped_gibbs(xr, mr, start, cfg.impute_sweeps, gen)

        samples = impute_rows(self, x, mask, num_samples, chain, like, generator, cfg.impute_chunk)
        log_p, log_p_method, stderr = self.conditional_log_prob(
            x.to(like.device, like.dtype), mask.to(like.device, like.dtype), generator
        )
        method = (
            f"clamped-gibbs-sweeps={cfg.impute_sweeps}-mean-field-init={cfg.impute_mean_field}"
            f" (unobserved rows: sample, {cfg.sample_steps} sweeps)"
        )
        return ImputeResult(samples, method, log_p, log_p_method, stderr)

    def _neg_free_energy64(self, v: Tensor) -> Tensor:
        """-F(v) ``(N,)`` in float64."""
        v = v.double()
        w, b, c = self.W.double(), self.full_visible_bias.double(), self.hbias.double()
        return v @ b + F.softplus(F.linear(v, w, c)).sum(-1)

    @torch.no_grad()
    def exact_log_marginal(self, x: Tensor, mask: Tensor) -> Tensor:
        """log sum_{v_mis} exp(-F(v_obs, v_mis)) ``(B,)`` in float64, by enumerating the hidden
        layer (if it has at most ``exact_max_units`` units) or else the visible one."""
        x, m = x.flatten(1).double(), mask.flatten(1).double()
        w, b, c = self.W.double(), self.full_visible_bias.double(), self.hbias.double()
        hidden, visible = w.shape
        parts = []
        if hidden <= self.config.exact_max_units:
            # given h, each visible unit sums out: observed ones give x_i pre_i, missing ones
            # softplus(pre_i), with pre = b + W'h; linear in the mask, so matrix products do it
            for start in range(0, 2**hidden, 4096):
                s = binary_codes(start, min(start + 4096, 2**hidden), hidden, w.dtype, w.device)
                pre = s @ w + b  # (n, V)
                parts.append((x * m) @ pre.T + (1 - m) @ F.softplus(pre).T + s @ c)
        elif visible <= self.config.exact_max_units:
            for start in range(0, 2**visible, 4096):
                s = binary_codes(start, min(start + 4096, 2**visible), visible, w.dtype, w.device)
                clash = (x * m) @ (1 - s).T + ((1 - x) * m) @ s.T  # (B, n) observed mismatches
                log_f = self._neg_free_energy64(s)[None, :].expand_as(clash)
                parts.append(log_f.masked_fill(clash > 0, -math.inf))
        else:
            raise ValueError(f"rbm: 2^{min(hidden, visible)} states are too many to enumerate")
        return torch.logsumexp(torch.cat(parts, 1), 1)

    @torch.no_grad()
    def conditional_log_prob(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor | None, str | None, Tensor | None]:
        """log p(x_mis | x_obs) of ``x``'s own missing values ``(B,)``, what it is, and the
        standard error of an estimate: ``"exact"`` by enumeration when either layer has at most
        ``exact_max_units`` units, else an AIS estimate (``impute_ais_chains`` chains per example,
        ``impute_ais_betas`` temperatures; ``None`` if 0 chains). A row with nothing missing
        scores 0."""
        cfg = self.config
        x, m = x.flatten(1).to(self.weight.dtype), mask.flatten(1).to(self.weight.dtype)
        missing = (m < 1).any(1)
        if min(self.num_dims, cfg.hidden_size) <= cfg.exact_max_units:
            log_p = self._neg_free_energy64(x) - self.exact_log_marginal(x, m)
            log_p = torch.where(missing, log_p, torch.zeros_like(log_p))
            return log_p.to(x.dtype), "exact", None
        if cfg.impute_ais_chains == 0:
            return None, None, None
        log_p = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        stderr = torch.zeros_like(log_p)
        rows = missing.nonzero().squeeze(1)
        for chunk in row_chunks(rows, max(1, cfg.impute_chunk // cfg.impute_ais_chains)):
            log_p[chunk], stderr[chunk] = self._conditional_ais(x[chunk], m[chunk], generator)
        method = (
            f"estimate: conditional-ais-M={cfg.impute_ais_chains}-K={cfg.impute_ais_betas}"
            f"-mean-field-base={cfg.impute_mean_field} (AIS reads log p(x_obs) low on average,"
            " so this leans high)"
        )
        return log_p.to(x.dtype), method, stderr.to(x.dtype)

    def _conditional_ais(
        self, x: Tensor, m: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """AIS estimate of log p(x_mis | x_obs) per row, with its standard error (float64).

        The target is f_1(v_mis) = exp(b_mis·v_mis + sum_j softplus((c + W v)_j)) with v_obs =
        x_obs; the base is the factorial Bernoulli of logits r, the clamped mean-field solution
        (kept within 0.01..0.99), and the path f_beta(v_mis) = exp(((1 - beta) r + beta b)_mis·
        v_mis + sum_j softplus(beta (c + W v)_j)) is the hidden-summed RBM of energy
        beta E + (1 - beta) E_base; one Gibbs sweep at each beta. Then log p(x_mis | x_obs) =
        b_mis·x_mis + sum_j softplus((c + W x)_j) - log Z_1."""
        cfg = self.config
        k, n = cfg.impute_ais_chains, len(x)
        keep = m.bool().repeat(k, 1)
        xs = x.repeat(k, 1)
        miss = (~keep).to(x.dtype)
        mu = self.clamped_mean_field(x, m, cfg.impute_mean_field).clamp(0.01, 0.99)
        r = torch.logit(mu).repeat(k, 1)
        b = self.full_visible_bias

        def state(v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            vm = v * miss
            return v, F.linear(v, self.W, self.hbias), vm @ b, (vm * r).sum(1)

        def log_f(s: tuple[Tensor, Tensor, Tensor, Tensor], beta: float) -> Tensor:
            _, pre, lin_b, lin_r = s
            hid = F.softplus(beta * pre).sum(1, dtype=torch.float64)
            return (1 - beta) * lin_r.double() + beta * lin_b.double() + hid

        def transition(
            s: tuple[Tensor, Tensor, Tensor, Tensor], beta: float, g: torch.Generator | None
        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            h = bernoulli(torch.sigmoid(beta * s[1]), g)
            logits = (1 - beta) * r + beta * (F.linear(h, self.W.t()) + b)
            return state(torch.where(keep, xs, bernoulli(torch.sigmoid(logits), g)))

        initial = state(torch.where(keep, xs, bernoulli(torch.sigmoid(r), generator)))
        hidden = cfg.hidden_size * math.log(2.0)
        log_z0 = hidden + (F.softplus(r[:n]) * miss[:n]).sum(1, dtype=torch.float64)
        betas = ais.schedule(cfg.impute_ais_betas)
        log_z1, stderr = anneal_rows(log_f, transition, initial, log_z0, betas, k, generator)
        pre = F.linear(x, self.W, self.hbias)
        log_f1 = ((x * miss[:n]) @ b).double() + F.softplus(pre).sum(1, dtype=torch.float64)
        return log_f1 - log_z1, stderr
