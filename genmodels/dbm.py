"""DBM: the Deep Boltzmann Machine (Salakhutdinov & Hinton 2009, AISTATS,
https://proceedings.mlr.press/v5/salakhutdinov09a.html), with two binary hidden layers.

An undirected model of binary v and hidden h1, h2 with energy
E(v, h1, h2) = -v'W1 h1 - h1'W2 h2 - a'v - b1'h1 - b2'h2. Learning follows the paper's
stochastic approximation: data-dependent statistics from a fully factorised mean-field posterior
q(h1) q(h2) (fixed-point iterations), model statistics from persistent Gibbs chains. The mean-field
q also gives the variational lower bound log p*(v) >= E_q[-E(v, h)] + H(q) on the unnormalised
log-probability, and log Z is estimated by annealed importance sampling (``genmodels.ais``), so
``log_prob`` is an estimate (a bound minus a stochastic lower bound on log Z).

Choices here:
* Training is one optimiser phase whose loss is the surrogate mean E(v, mu) - mean E(chains), with
  mu and the chains detached: its gradient is minus the paper's stochastic-approximation gradient,
  so Adam follows it. The persistent chains (``num_chains`` per data-parallel rank, started from
  the first batch) and their random stream are plain attributes exposed by ``rank_state``.
* The visible biases are ``bias_v`` + a ``base_rate`` buffer that the first training forward sets
  to the log-odds of its batch's pixel means (the usual RBM start; a forward may not write
  parameters). Starting from zero instead, Adam's equal per-weight steps make the weights of
  always-on hidden units carry the pixel marginals: huge energies, a hard AIS and a worse fit
  (binarised MNIST, 800 steps: test log-likelihood -183 instead of -158 nats).
* Optional greedy pre-training (``pretrain_steps`` per layer, counted by the ``step`` buffer so a
  restart resumes it): first the paper's RBM with doubled bottom-up input (CD-``gibbs_steps``), then
  the top RBM with doubled top-down input on samples of the first, with b1 kept from the first;
  then joint training. Parameters a stage does not train get a zero gradient (DDP needs one).
* log Z by AIS over h1 alone: v and h2 are independent given h1, so both are summed out in closed
  form. The path scales the two weight matrices by beta and keeps the target's biases, so the base
  (beta = 0) is independent units with log Z_0 = sum softplus(a) + sum softplus(b1) + sum
  softplus(b2) (thanks to the base rate, close to the data's pixel marginals on v); the transition
  is one Gibbs sweep h1 -> (v, h2) -> h1 at beta. When
  min(H1, D + H2) <= ``exact_max_units`` log Z is enumerated instead, and when min(H1, H2) <=
  ``exact_max_units`` log p*(v) is summed exactly instead of bounded.
* The AIS temperatures (``annealing_schedule``) are ``ais_schedule = "tuned"`` by default (even
  steps of thermodynamic length from a pilot run, ``ais.tuned_schedule``) or ``"paper"``. The base
  keeps the model's own biases (weights scaled to 0); its visible biases include the data-fitted
  ``base_rate``, so the v marginal at beta = 0 starts near the pixel marginals, as the RBM's b_A.
  On a 10-8-4 DBM with N(0, 2.25) weights, 400 chains at 50 temperatures, the tuned schedule
  kept an ESS of about 316 against 150; on a 784-500-500 MNIST DBM (120 CPU-s of training), 100
  chains at 2,000 temperatures: ESS 62.2 tuned against 18.0 paper, log Z 463.64 ± 0.08 against
  463.39 ± 0.21 (22 CPU-s each on a loaded machine, plus 11 CPU-s for the 1,000-temperature pilot).
* ``log_prob_bounds(x)``: ``lower`` = RAISE (``raise_log_prob``, ``ais.reverse_anneal``): the
  annealing model runs the h1 chain of AIS and emits v ~ p(v | h1); each reverse chain starts at
  h1 ~ q(h1 | x), the mean-field posterior, with log w_0 = log sum_{h2} exp(-E(x, h1, h2)) - log
  q(h1 | x), and walks back through the same sweeps (``raise_chains`` = 2 per example,
  ``raise_betas`` = 3,000, as the RBM's). A stochastic lower bound on the annealing model's log-likelihood
  (tested against enumeration). ``upper`` = ``score`` (mean-field bound - forward-AIS log Z):
  the AIS part leans high but the bound part low, so for the DBM it is an estimate, not a side.
* ``prepare_scoring`` stores log Z in buffers (with its standard error, settings and a digest of
  the weights) so a reloaded model scores without re-running AIS; a training forward marks it
  stale, and ``score`` re-estimates a stale one with the validation settings and a fixed seed.
* ``sample``: ``sample_steps`` (1,000) Gibbs sweeps from uniformly random states. Where the
  chains start was measured not to matter (issue 17; yardstick FD of 500 samples, lower is
  better): on a 784-500-500 DBM after 120 CPU-s of training, random starts scored FD 73.8,
  annealed starts (the AIS h1 chain through 1,000 tuned temperatures, then v ~ p(v | h1)) 86.6,
  and the same re-sampled by their importance weights (ESS 175 of 500) 87.2; on a second such
  model, random starts 110.4 and starts at the persistent training chains plus 100 sweeps 113.5
  (the persistent chains themselves: 264). What limits the samples is the model, and three
  training choices fixed it (below).
* **Stable training for random-start samples** (issue 17). Validation FD of 500 random-start
  samples, one thread, the benchmark's 784-500-500 model, measured every 40 CPU-s of training
  (about 1,100 steps):
  - with Adam's momentum (beta1 = 0.9, the earlier default) the FD swung between 182 and 480:
    most chains froze in a noisy high-entropy "phase" (blobs) that the PCD chains, which start
    at data and move with the weights, never visit, so learning never removes it. Chains
    started at validation digits stay digits for 5,000 sweeps on the same weights;
  - ``adam_beta1 = 0`` (no momentum, as the RBM): 68-501, still swinging;
  - plus ``chain_restart = 0.01`` (each update, 1 % of the persistent chains go back to the
    uniform noise ``sample`` starts from, so the negative phase sees where random starts go,
    as EBM replay buffers do; a chain lives ~500 sweeps on average): 78-266 with the raw weights;
  - plus ``average_decay = 0.999``: the weights that score, sample, embed and impute are an
    exponential moving average of the trained ones (``genmodels.averaging``; training reads
    the raw weights inside ``forward``): **FD 61, 20, 7.3, 11.6, 18.0, 15.0** at 40..240 CPU-s
    (a plain EMA of the same run: 6.5-13 from 120 CPU-s on). All three are the defaults;
    ``chain_restart = 0`` and ``average_decay = 0`` give the plain PCD DBM back.
* ``embed`` = the mean-field posterior means of h2 (the top layer).
* Defaults, measured on binarised MNIST (4,000 training digits, 800 Adam steps of batch 100, about
  0.05 CPU-s a step on one thread): hidden sizes (500, 500) rather than the paper's (500, 1000)
  (test log-likelihood -158 against -181 nats, and 1.5x cheaper steps: that budget cannot use a
  1,000-unit top layer); no pre-training by default (100 steps per layer gave -155, within the
  noise of the comparison; the search space tries it); final scoring with 100 AIS chains and
  10,000 betas (about 55 CPU-s on one thread, standard error about 0.1 nats), validation with 1,000
  (about 5 CPU-s; it reads log Z about 1.5 nats low, which only shifts the selection metric).

Imputation (``impute``): clamped block Gibbs sampling, h1 | (v, h2), then (v_mis, h2) | h1,
the observed visibles clamped to x at every step: the stationary distribution is the DBM's exact
conditional, so the draws are exact in the limit of many sweeps (checked by enumeration on an
8-visible model). Each of the S imputations is its own chain, started from a Bernoulli draw of
``impute_mean_field`` (default 10) clamped mean-field sweeps and run ``impute_sweeps`` (default
200) sweeps, ``impute_chunk`` chains at a time; the method string states both. A row with nothing
observed is drawn by ``sample``, a row with nothing missing is x. ``log_prob_missing`` = log
p*(x) - log sum_{v_mis} p*(x_obs, v_mis) is exact (h1 enumerated, v and h2 summed out) when h1
has at most ``exact_max_units`` units, else a difference of two AIS estimates over h1 per example
(``impute_ais_chains`` = 4, ``impute_ais_betas`` = 100; base: the factorial mean-field posterior
of h1) with its standard error; 0 chains: None. Cost at 784-500-500, one thread: 2.3 CPU-s per
100 imputations, plus 11 CPU-s per 100 examples for the estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import averaging
from .ais import (
    AISResult,
    LogProbBounds,
    RAISEResult,
    anneal,
    reverse_anneal,
    schedule,
    tuned_schedule,
)
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
from .rbm import bernoulli, binary_codes

Params = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # (W1, W2, a, b1, b2)
# (h1, W1 h1, W2' h1): the AIS state with the two products it is read through, computed once.
AISState = tuple[Tensor, Tensor, Tensor]
_AVERAGED = ("w1", "w2", "bias_v", "bias_h1", "bias_h2")  # averaged for inference (averaging)


@dataclass(frozen=True)
class DBMConfig(BaseConfig):
    hidden_sizes: tuple[int, ...] = (500, 500)
    mean_field_steps: int = 10  # fixed-point sweeps per training batch
    score_mean_field_steps: int = 50  # ... for the bound that scores
    num_chains: int = 100  # persistent Gibbs chains per data-parallel rank
    gibbs_steps: int = 5  # Gibbs sweeps per update (persistent chains and CD pre-training)
    pretrain_steps: int = 0  # steps for each greedy RBM stage; 0 = joint training from the start
    sample_steps: int = 1000
    ais_chains: int = 100
    ais_betas: int = 10000  # final (published) scoring
    ais_betas_validation: int = 1000
    ais_schedule: str = "tuned"  # "paper": Salakhutdinov & Murray's spacing (ais.schedule)
    ais_pilot_chains: int = 100
    ais_pilot_betas: int = 1000
    raise_chains: int = 2  # RAISE chains per example (log_prob_bounds)
    raise_betas: int = 3000
    raise_chunk: int = 2000  # RAISE rows advanced together
    exact_max_units: int = 16  # enumerate 2^units states instead of bounding / annealing
    init_std: float = 0.01
    lr: float = 1e-3
    adam_beta1: float = 0.0  # Adam without momentum: momentum makes PCD oscillate (as the RBM)
    chain_restart: float = 0.01  # share of persistent chains restarted from noise per update
    average_decay: float = 0.999  # inference weights: EMA of the trained ones (0: the raw weights)
    impute_sweeps: int = 200  # clamped Gibbs sweeps per imputation chain
    impute_mean_field: int = 10  # clamped mean-field iterations that start the chains
    impute_ais_chains: int = 4  # per example, for log p(x_mis | x_obs); 0: no estimate
    impute_ais_betas: int = 100
    impute_chunk: int = 1024  # chains advanced together (bounds memory)


def _energy(params: Params, v: Tensor, h1: Tensor, h2: Tensor) -> Tensor:
    w1, w2, a, b1, b2 = params
    return -((v @ w1) * h1).sum(1) - ((h1 @ w2) * h2).sum(1) - v @ a - h1 @ b1 - h2 @ b2


def _log_f_h1(params: Params, state: AISState, beta: float) -> Tensor:
    """log sum_{v, h2} exp(-E_beta(v, h1, h2)) ``(M,)`` in float64, where E_beta scales both weight
    matrices by beta; ``state`` = (h1, W1 h1, W2' h1)."""
    _, _, a, b1, b2 = params
    h1, pre_v, pre_h2 = state
    return (
        (h1 @ b1).double()
        + F.softplus(a + beta * pre_v).sum(1, dtype=torch.float64)
        + F.softplus(b2 + beta * pre_h2).sum(1, dtype=torch.float64)
    )


def _entropy(mu: Tensor) -> Tensor:
    """Entropy of independent Bernoulli(mu) units, summed over the last dimension."""
    return -(torch.xlogy(mu, mu) + torch.xlogy(1 - mu, 1 - mu)).sum(-1)


def _binary_states(k: int, chunk: int, like: Tensor) -> Iterator[Tensor]:
    """Every binary vector of length ``k`` in chunks of ``(<= chunk, k)``."""
    for start in range(0, 2**k, chunk):
        yield binary_codes(start, min(start + chunk, 2**k), k, like.dtype, like.device)


@register
class DBM(GenerativeModel):
    family = "dbm"
    likelihood = "estimate"
    data_kinds = ("binary",)
    Config = DBMConfig
    capabilities = frozenset({"log_prob", "embed", "impute"})
    sample_limit = 256
    search_space = {
        "hidden_sizes": SearchSpec("choice", ((250, 250), (500, 500), (500, 1000))),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
        "gibbs_steps": SearchSpec("choice", (1, 5)),
        "pretrain_steps": SearchSpec("choice", (0, 100, 200)),
        "mean_field_steps": SearchSpec("choice", (5, 10, 20)),
        "weight_decay": SearchSpec("choice", (0.0, 1e-5, 1e-4)),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: DBMConfig) -> None:
        super().__init__(input_shape, levels, config)
        if len(config.hidden_sizes) != 2:
            raise ValueError(f"dbm: hidden_sizes must be two sizes, got {config.hidden_sizes}")
        for key in ("num_chains", "gibbs_steps", "sample_steps", "ais_chains", "ais_betas"):
            if getattr(config, key) < 1:
                raise ValueError(f"dbm: {key} must be >= 1, got {getattr(config, key)}")
        for key in ("impute_sweeps", "impute_chunk", "impute_ais_betas"):
            if getattr(config, key) < 1 + (key == "impute_ais_betas"):
                raise ValueError(f"dbm: {key} must be >= {1 + (key == 'impute_ais_betas')}")
        for key in ("impute_mean_field", "impute_ais_chains"):
            if getattr(config, key) < 0:
                raise ValueError(f"dbm: {key} must be >= 0, got {getattr(config, key)}")
        for key in ("ais_pilot_chains", "raise_chains", "raise_chunk"):
            if getattr(config, key) < 1:
                raise ValueError(f"dbm: {key} must be >= 1, got {getattr(config, key)}")
        if config.ais_schedule not in ("paper", "tuned"):
            raise ValueError(
                f"dbm: ais_schedule must be 'paper' or 'tuned', got {config.ais_schedule}"
            )
        for key in ("ais_pilot_betas", "raise_betas"):
            if getattr(config, key) < 2:
                raise ValueError(f"dbm: {key} must be >= 2, got {getattr(config, key)}")
        for key in ("ais_betas_validation", "score_mean_field_steps"):
            if getattr(config, key) < 1:
                raise ValueError(f"dbm: {key} must be >= 1, got {getattr(config, key)}")
        for key in ("mean_field_steps", "pretrain_steps", "exact_max_units"):
            if getattr(config, key) < 0:
                raise ValueError(f"dbm: {key} must be >= 0, got {getattr(config, key)}")
        if not config.init_std > 0:
            raise ValueError(f"dbm: init_std must be > 0, got {config.init_std}")
        if not 0 <= config.adam_beta1 < 1:
            raise ValueError(f"dbm: adam_beta1 must be in [0, 1), got {config.adam_beta1}")
        if not 0 <= config.average_decay < 1:
            raise ValueError(f"dbm: average_decay must be in [0, 1), got {config.average_decay}")
        if not 0 <= config.chain_restart <= 1:
            raise ValueError(f"dbm: chain_restart must be in [0, 1], got {config.chain_restart}")
        d, (h1, h2) = self.num_dims, config.hidden_sizes
        self.w1 = nn.Parameter(torch.randn(d, h1) * config.init_std)
        self.w2 = nn.Parameter(torch.randn(h1, h2) * config.init_std)
        self.bias_v = nn.Parameter(torch.zeros(d))
        self.bias_h1 = nn.Parameter(torch.zeros(h1))
        self.bias_h2 = nn.Parameter(torch.zeros(h2))
        averaging.register(self, _AVERAGED)
        self._raw = False  # True inside a forward: training reads the raw weights
        # The visible biases are bias_v + base_rate, the log-odds of the first training batch's
        # means (set by the first training forward, which may not write parameters).
        self.register_buffer("base_rate", torch.zeros(d))
        self.register_buffer("base_rate_set", torch.tensor(False))
        # Training progress (drives pre-training) and the settled log Z: saved with the weights.
        self.register_buffer("step", torch.tensor(0))
        self.register_buffer("log_z", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("log_z_stderr", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("log_z_valid", torch.tensor(False))
        self.register_buffer("log_z_chains", torch.tensor(0))  # 0 chains and betas: enumerated
        self.register_buffer("log_z_betas", torch.tensor(0))
        self.register_buffer("log_z_ess", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("log_z_digest", torch.zeros(15, dtype=torch.float64))
        # Per-rank state (never a buffer: DDP would broadcast rank 0's copy): created lazily.
        self._chains: tuple[Tensor, Tensor, Tensor] | None = None
        self._chain_generator: torch.Generator | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # weights saved before log_z_ess existed load with an unknown ESS (0)
        state_dict.setdefault(prefix + "log_z_ess", torch.tensor(0.0, dtype=torch.float64))
        averaging.fill_missing(self, _AVERAGED, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------- the model
    def params(self, dtype: torch.dtype | None = None) -> Params:
        """(W1, W2, a, b1, b2), cast to ``dtype`` if given: the averaged weights (``average_decay``
        > 0, once trained) everywhere but inside ``forward``, which trains the raw ones."""
        averaged = not self._raw and self.config.average_decay > 0
        w1, w2, bias_v, b1, b2 = (averaging.pick(self, n, averaged) for n in _AVERAGED)
        ps = (w1, w2, bias_v + self.base_rate, b1, b2)
        return ps if dtype is None else tuple(p.to(dtype) for p in ps)  # type: ignore[return-value]

    def energy(self, v: Tensor, h1: Tensor, h2: Tensor) -> Tensor:
        """E(v, h1, h2) ``(B,)``; linear in each layer, so means may stand in for states."""
        return _energy(self.params(), v, h1, h2)

    @torch.no_grad()
    def mean_field(self, v: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """The fully factorised posterior q(h1) q(h2) of ``v`` ``(B, D)``: its means ``(B, H1)``,
        ``(B, H2)`` after ``steps`` fixed-point sweeps from a bottom-up pass. Each update maximises
        the bound over one layer given the other, so the bound never decreases."""
        w1, w2, _, b1, b2 = self.params()
        bottom_up = v @ w1 + b1
        mu1 = torch.sigmoid(bottom_up)
        mu2 = torch.sigmoid(mu1 @ w2 + b2)
        for _ in range(steps):
            mu1 = torch.sigmoid(bottom_up + mu2 @ w2.T)
            mu2 = torch.sigmoid(mu1 @ w2 + b2)
        return mu1, mu2

    def elbo(self, v: Tensor, mu1: Tensor, mu2: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """E_q[-E(v, h)] + H(q) ``(B,)``, a lower bound on log p*(v) = log sum_h exp(-E(v, h)),
        computed in ``dtype`` if given."""
        if dtype is not None:
            v, mu1, mu2 = v.to(dtype), mu1.to(dtype), mu2.to(dtype)
        return -_energy(self.params(dtype), v, mu1, mu2) + _entropy(mu1) + _entropy(mu2)

    @torch.no_grad()
    def gibbs(
        self, v: Tensor, h2: Tensor, steps: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``steps`` sweeps h1 | (v, h2), then (v, h2) | h1 (independent given h1)."""
        w1, w2, a, b1, b2 = self.params()
        for _ in range(steps):
            h1 = bernoulli(torch.sigmoid(v @ w1 + h2 @ w2.T + b1), generator)
            v = bernoulli(torch.sigmoid(h1 @ w1.T + a), generator)
            h2 = bernoulli(torch.sigmoid(h1 @ w2 + b2), generator)
        return v, h1, h2

    # -------------------------------------------------------------------------------- training
    def stage(self) -> str:
        """``"rbm1"``, ``"rbm2"`` (greedy pre-training) or ``"joint"``, from the step counter."""
        steps, p = int(self.step), self.config.pretrain_steps
        return "rbm1" if steps < p else "rbm2" if steps < 2 * p else "joint"

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        v = batch["x"].flatten(1).to(self.w1.dtype)
        stage = self.stage()  # before this step is counted
        if self.training:
            self.step.add_(1)
            self.log_z_valid.fill_(False)  # the optimiser is about to change the weights
            if not self.base_rate_set:
                self.base_rate.copy_(torch.logit((v.sum(0) + 1) / (len(v) + 2)))
                self.base_rate_set.fill_(True)
            if self.config.average_decay > 0:  # the weights the last step left
                averaging.update(self, _AVERAGED, self.config.average_decay)
        self._raw = True
        try:
            return self._forward(v, stage)
        finally:
            self._raw = False

    def _forward(self, v: Tensor, stage: str) -> dict[str, Tensor]:
        w1, w2, a, b1, b2 = self.params()
        if stage == "rbm1":  # the first RBM, bottom-up input doubled
            loss = self._rbm_loss(v, w1, a, b1, copies=(2, 1))
            untrained: tuple[Tensor, ...] = (w2, b2)
        elif stage == "rbm2":  # the top RBM on the first one's samples, top-down input doubled
            with torch.no_grad():
                h1 = bernoulli(torch.sigmoid(2 * v @ w1 + b1), self._generator())
            loss = self._rbm_loss(h1, w2, b1.detach(), b2, copies=(1, 2))
            untrained = (w1, a, b1)
        else:
            mu1, mu2 = self.mean_field(v, self.config.mean_field_steps)
            chains = self._advance_chains(v)
            data_energy = self.energy(v, mu1, mu2)
            loss = data_energy.mean() - self.energy(*chains).mean()
            elbo = -data_energy.detach() + _entropy(mu1) + _entropy(mu2)
            return {"loss": loss, "elbo": elbo.mean()}
        loss = loss + sum(0.0 * p.sum() for p in untrained)
        return {"loss": loss}

    def _rbm_loss(
        self, x: Tensor, w: Tensor, b_bottom: Tensor, b_top: Tensor, copies: tuple[int, int]
    ) -> Tensor:
        """CD-``gibbs_steps`` surrogate loss of an RBM whose bottom / top layer is replicated
        ``copies`` times with tied weights (the paper's doubled inputs). A layer enters only
        through the sum of its copies, which is Binomial(copies, p) given the other layer."""
        nb, nt = copies
        g = self._generator()
        with torch.no_grad():
            bottom0 = nb * x
            mu_top0 = torch.sigmoid(bottom0 @ w + b_top)
            top = bernoulli(mu_top0, g, nt)
            for _ in range(self.config.gibbs_steps):
                bottom = bernoulli(torch.sigmoid(top @ w.T + b_bottom), g, nb)
                mu_top = torch.sigmoid(bottom @ w + b_top)
                top = bernoulli(mu_top, g, nt)

        def energy(s_bottom: Tensor, s_top: Tensor) -> Tensor:
            return -((s_bottom @ w) * s_top).sum(1) - s_bottom @ b_bottom - s_top @ b_top

        return energy(bottom0, nt * mu_top0).mean() - energy(bottom, nt * mu_top).mean()

    def _generator(self) -> torch.Generator:
        """This rank's stream for training noise (chains, CD), seeded from the seed and rank."""
        if self._chain_generator is None:
            rank = 0
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank = torch.distributed.get_rank()
            seed = self.config.seed * 1_000_003 + 7919 * rank + 1
            self._chain_generator = torch.Generator().manual_seed(seed)
        return self._chain_generator

    @torch.no_grad()
    def _advance_chains(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance the persistent chains ``gibbs_steps`` sweeps; start them from the batch."""
        g = self._generator()
        if self._chains is None:
            rows = torch.arange(self.config.num_chains, device=v.device) % len(v)
            mu1, mu2 = self.mean_field(v[rows], self.config.mean_field_steps)
            self._chains = (v[rows], bernoulli(mu1, g), bernoulli(mu2, g))
        cv, _, ch2 = (c.to(device=v.device, dtype=v.dtype) for c in self._chains)
        if self.config.chain_restart > 0:
            cv, ch2 = self._restart(cv, ch2, g)
        self._chains = self.gibbs(cv, ch2, self.config.gibbs_steps, g)
        return self._chains

    def _restart(self, v: Tensor, h2: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Each chain, with probability ``chain_restart``, back to the uniform noise ``sample``
        starts from (h1 is redrawn from v and h2 by the next sweep)."""
        restart = torch.rand(len(v), generator=g) < self.config.chain_restart
        if not restart.any():
            return v, h2
        rows = restart.nonzero().squeeze(1).to(v.device)
        half_v = torch.full((len(rows), v.shape[1]), 0.5, dtype=v.dtype)
        half_h2 = torch.full((len(rows), h2.shape[1]), 0.5, dtype=h2.dtype)
        v, h2 = v.clone(), h2.clone()
        v[rows] = bernoulli(half_v, g).to(v.device)
        h2[rows] = bernoulli(half_h2, g).to(h2.device)
        return v, h2

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam with ``adam_beta1`` (default 0: no momentum, which makes PCD oscillate)."""
        cfg = self.config
        betas = (cfg.adam_beta1, 0.999)
        return {"main": adam(self.parameters(), cfg.lr, betas, weight_decay=cfg.weight_decay)}

    @torch.no_grad()
    def rank_state(self) -> dict[str, Tensor]:
        if self._chains is None:
            return {}
        v, h1, h2 = (c.detach().cpu() for c in self._chains)
        return {"chain_v": v, "chain_h1": h1, "chain_h2": h2, "rng": self._generator().get_state()}

    def load_rank_state(self, state: Mapping[str, Tensor]) -> None:
        if not state:
            self._chains = None
            return
        device = self.w1.device
        self._chains = tuple(state[k].to(device) for k in ("chain_v", "chain_h1", "chain_h2"))
        self._generator().set_state(state["rng"].cpu())

    # ------------------------------------------------------------------------------------ log Z
    def ais_log_f(self, state: AISState, beta: float) -> Tensor:
        """The AIS target at ``beta`` as a function of h1 alone (v and h2 summed out) ``(M,)``."""
        return _log_f_h1(self.params(), state, beta)

    def ais_transition(
        self, state: AISState, beta: float, generator: torch.Generator | None
    ) -> AISState:
        """One Gibbs sweep h1 -> (v, h2) -> h1 of the model with weights scaled by ``beta``."""
        w1, w2, a, b1, b2 = self.params()
        _, pre_v, pre_h2 = state
        v = bernoulli(torch.sigmoid(a + beta * pre_v), generator)
        h2 = bernoulli(torch.sigmoid(b2 + beta * pre_h2), generator)
        h1 = bernoulli(torch.sigmoid(b1 + beta * (v @ w1 + h2 @ w2.T)), generator)
        return h1, h1 @ w1.T, h1 @ w2

    def _ais_base(self, num_chains: int, generator: torch.Generator | None) -> AISState:
        """Exact draws of the base (both weight matrices scaled to 0): h1 ~ sigmoid(b1)."""
        w1, w2, _, b1, _ = self.params()
        h1 = bernoulli(torch.sigmoid(b1).expand(num_chains, -1), generator)
        return h1, h1 @ w1.T, h1 @ w2

    def base_log_z(self) -> float:
        """log Z_0 = sum of softplus(biases): the base's units are independent."""
        _, _, a, b1, b2 = self.params()
        return float(sum(F.softplus(b.double()).sum() for b in (a, b1, b2)))

    @torch.no_grad()
    def annealing_schedule(
        self, num_betas: int, generator: torch.Generator | None = None, kind: str | None = None
    ) -> Tensor:
        """The inverse temperatures of AIS and RAISE: ``ais_schedule`` = "paper" (``schedule``)
        or "tuned" (``tuned_schedule``: even steps of thermodynamic length from a pilot run of
        ``ais_pilot_chains`` chains through ``ais_pilot_betas`` paper-spaced temperatures)."""
        cfg = self.config
        if (kind or cfg.ais_schedule) == "paper":
            return schedule(num_betas)
        initial = self._ais_base(cfg.ais_pilot_chains, generator)
        pilot = max(2, min(cfg.ais_pilot_betas, num_betas))
        return tuned_schedule(
            self.ais_log_f, self.ais_transition, initial, num_betas, pilot, generator=generator
        )

    @torch.no_grad()
    def ais(
        self,
        num_chains: int,
        num_betas: int,
        generator: torch.Generator | None = None,
        betas: Tensor | None = None,
    ) -> AISResult:
        """An AIS estimate of log Z from the base with both weight matrices scaled to 0 (the
        units independent with the model's biases) through ``betas`` (default
        ``annealing_schedule(num_betas)``)."""
        if betas is None:
            betas = self.annealing_schedule(num_betas, generator)
        initial = self._ais_base(num_chains, generator)
        log_z0 = self.base_log_z()
        return anneal(self.ais_log_f, self.ais_transition, initial, log_z0, betas, generator)

    @torch.no_grad()
    def raise_log_prob(
        self,
        x: Tensor,
        num_chains: int | None = None,
        num_betas: int | None = None,
        generator: torch.Generator | None = None,
        betas: Tensor | None = None,
    ) -> RAISEResult:
        """RAISE (``reverse_anneal``) estimates of log p(x) per example, a stochastic lower bound.
        The annealing model runs the h1 chain of ``ais`` and emits v ~ p(v | h1) at the end; each
        reverse chain starts at h1 ~ q(h1 | x), the factorial mean-field posterior
        (``score_mean_field_steps`` sweeps, means kept within 1e-3..1 - 1e-3), with log w_0 =
        log sum_{h2} exp(-E(x, h1, h2)) - log q(h1 | x), and walks back to the base through the
        same sweeps h1 -> (v, h2) -> h1 (reversible). ``raise_chains`` chains per example and
        ``raise_betas`` temperatures by default, ``raise_chunk`` rows at a time."""
        cfg = self.config
        num_chains = num_chains or cfg.raise_chains
        if betas is None:
            betas = self.annealing_schedule(num_betas or cfg.raise_betas, generator)
        w1, w2, a, b1, b2 = self.params()
        v = self.check_input(x).flatten(1).to(w1.dtype)
        parts = []
        for rows in v.split(max(1, cfg.raise_chunk // num_chains)):
            mu1, _ = self.mean_field(rows, cfg.score_mean_field_steps)
            mu1 = mu1.clamp(1e-3, 1 - 1e-3).repeat(num_chains, 1)
            vs = rows.repeat(num_chains, 1)
            h1 = bernoulli(mu1, generator)
            log_q = (h1 * mu1.log() + (1 - h1) * (-mu1).log1p()).sum(1, dtype=torch.float64)
            log_joint = (
                (vs @ a).double()
                + ((vs @ w1) * h1).sum(1, dtype=torch.float64)
                + (h1 @ b1).double()
                + F.softplus(b2 + h1 @ w2).sum(1, dtype=torch.float64)
            )
            start = (h1, h1 @ w1.T, h1 @ w2)
            parts.append(
                reverse_anneal(
                    self.ais_log_f,
                    self.ais_transition,
                    start,
                    log_joint - log_q,
                    self.base_log_z(),
                    betas,
                    num_chains,
                    generator,
                )
            )
        return RAISEResult.concat(parts)

    @torch.no_grad()
    def log_prob_bounds(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        num_chains: int | None = None,
        num_betas: int | None = None,
    ) -> LogProbBounds:
        """The sandwich of log p(x) per example: ``lower`` by RAISE (``raise_log_prob``), ``upper``
        = ``score``'s log p*(x) - log Z with the stored forward-AIS log Z. log p*(x) is exact when
        min(H1, H2) <= ``exact_max_units``; otherwise it is the mean-field bound, so ``upper`` is
        then only an estimate (the AIS side leans high, the bound side low)."""
        self._ensure_log_z()
        res = self.score(x)
        info: dict[str, Any] = {**self._log_z_info(), "ais_ess": float(self.log_z_ess)}
        upper = res.log_prob.double()
        if int(self.log_z_chains) == 0:
            return LogProbBounds(upper, torch.zeros_like(upper), upper, 0.0, "exact", info)
        low = self.raise_log_prob(x, num_chains, num_betas, generator)
        m = low.log_weights.shape[0]
        info.update(
            raise_chains=m,
            raise_betas=low.num_betas,
            raise_ess=float(low.effective_sample_size.mean()),
        )
        method = f"raise-M={m}-K={low.num_betas} / {res.method}"
        return LogProbBounds(
            low.log_prob, low.stderr, upper, float(self.log_z_stderr), method, info
        )

    def exact_sizes(self) -> tuple[bool, bool]:
        """Whether log Z and log p*(v) are small enough to enumerate (``exact_max_units``)."""
        d, (h1, h2), k = self.num_dims, self.config.hidden_sizes, self.config.exact_max_units
        return min(h1, d + h2) <= k, min(h1, h2) <= k

    @torch.no_grad()
    def exact_log_z(self) -> float:
        """log Z in float64, enumerating h1 (v and h2 summed out) or (v, h2) (h1 summed out),
        whichever has fewer units."""
        params = w1, w2, a, b1, b2 = self.params(torch.float64)
        d, h1, h2 = len(a), len(b1), len(b2)
        parts = []
        for s in _binary_states(min(h1, d + h2), 1 << 14, w1):
            if h1 <= d + h2:
                parts.append(_log_f_h1(params, (s, s @ w1.T, s @ w2), 1.0))
            else:
                v, top = s[:, :d], s[:, d:]
                parts.append(v @ a + top @ b2 + F.softplus(b1 + v @ w1 + top @ w2.T).sum(1))
        return float(torch.logsumexp(torch.cat(parts), 0))

    @torch.no_grad()
    def exact_log_unnormalised(self, v: Tensor) -> Tensor:
        """log p*(v) = log sum_{h1, h2} exp(-E(v, h1, h2)) ``(B,)`` in float64, enumerating the
        smaller hidden layer and summing the other out."""
        w1, w2, a, b1, b2 = self.params(torch.float64)
        v = v.double()
        parts = []
        if len(b1) <= len(b2):  # per h1 state: v'W1 h1 + b1'h1 + sum softplus(b2 + W2'h1)
            for s in _binary_states(len(b1), 1 << 12, w1):
                parts.append(v @ w1 @ s.T + s @ b1 + F.softplus(b2 + s @ w2).sum(1))
        else:  # per h2 state: b2'h2 + sum softplus(b1 + W1'v + W2 h2)
            bottom_up = (v @ w1 + b1)[:, None, :]  # (B, 1, H1)
            chunk = max(1, (1 << 22) // (len(v) * len(b1)))
            for s in _binary_states(len(b2), chunk, w1):
                parts.append(F.softplus(bottom_up + s @ w2.T).sum(2) + s @ b2)
        return v @ a + torch.logsumexp(torch.cat(parts, 1), 1)

    def _digest(self) -> Tensor:
        """A fingerprint of the weights, stored with log Z: a stale log Z is never used."""
        out = []
        for p in self.params():
            q = p.detach().double().flatten()
            ramp = torch.linspace(-1.0, 1.0, len(q), dtype=torch.float64, device=q.device)
            out += [q.sum(), q.pow(2).sum(), (q * ramp).sum()]
        return torch.stack(out)

    def log_z_current(self) -> bool:
        """Whether the stored log Z belongs to the current weights."""
        stored = self.log_z_digest  # float32 if someone cast the model with .float()
        digest = self._digest().to(stored.dtype)
        return bool(self.log_z_valid) and torch.allclose(digest, stored, rtol=1e-6, atol=1e-9)

    def _log_z_info(self) -> dict[str, Any]:
        chains, betas = int(self.log_z_chains), int(self.log_z_betas)
        return {
            "log_z": float(self.log_z),
            "log_z_stderr": float(self.log_z_stderr),
            "log_z_method": "exact" if chains == 0 else "ais",
            "ais_chains": chains,
            "ais_betas": betas,
        }

    @torch.no_grad()
    def prepare_scoring(
        self, generator: torch.Generator | None = None, final: bool = False
    ) -> dict[str, Any]:
        """Settle log Z for the current weights (enumerated, or AIS with ``ais_chains`` chains and
        ``ais_betas`` / ``ais_betas_validation`` inverse temperatures) and store it in buffers.
        A stored value for the same weights from at least as many chains and betas is kept."""
        cfg = self.config
        exact, _ = self.exact_sizes()
        chains, betas = cfg.ais_chains, cfg.ais_betas if final else cfg.ais_betas_validation
        stored_chains, stored_betas = int(self.log_z_chains), int(self.log_z_betas)
        if self.log_z_current() and (
            stored_chains == 0 or (not exact and stored_chains >= chains and stored_betas >= betas)
        ):
            return self._log_z_info()
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        if exact:
            log_z, stderr, chains, betas = self.exact_log_z(), 0.0, 0, 0
        else:
            res = self.ais(chains, betas, generator)
            log_z, stderr = res.log_z, res.stderr
            extra["ais_ess"] = res.effective_sample_size
        self.log_z_ess.fill_(extra.get("ais_ess", 0.0))
        if not math.isfinite(log_z) or not math.isfinite(stderr):
            raise RuntimeError(f"dbm: log Z estimate is not finite ({log_z} ± {stderr})")
        self.log_z.fill_(log_z)
        self.log_z_stderr.fill_(stderr)
        self.log_z_chains.fill_(chains)
        self.log_z_betas.fill_(betas)
        self.log_z_digest.copy_(self._digest())
        self.log_z_valid.fill_(True)
        return {**self._log_z_info(), **extra, "log_z_time_s": time.perf_counter() - start}

    # ------------------------------------------------------------------------------- inference
    def _ensure_log_z(self) -> None:
        if not self.log_z_current():  # validation settings and a fixed seed: reproducible
            self.prepare_scoring(torch.Generator().manual_seed(self.config.seed + 4242))

    @torch.no_grad()
    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        self.check_condition(condition)
        v = self.check_input(x).flatten(1).to(self.w1.dtype)
        self._ensure_log_z()
        _, exact_posterior = self.exact_sizes()
        if exact_posterior:
            log_unnormalised, method = self.exact_log_unnormalised(v), "exact-sum"
        else:
            mu1, mu2 = self.mean_field(v, self.config.score_mean_field_steps)
            log_unnormalised = self.elbo(v, mu1, mu2, torch.float64)  # a difference of big terms
            method = "mean-field-bound"
        chains, betas = int(self.log_z_chains), int(self.log_z_betas)
        # log Z enumerable implies log p*(v) enumerable: min(H1, H2) <= min(H1, D + H2)
        method = "exact" if chains == 0 else f"{method}-ais-M={chains}-K={betas}"
        log_p = (log_unnormalised - self.log_z).to(self.w1.dtype)
        se = float(self.log_z_stderr)
        return ScoreResult(log_p, method, torch.full_like(log_p, se), shared_stderr=se)

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        return self.score(x, generator).log_prob

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        v = self.check_input(x).flatten(1).to(self.w1.dtype)
        return self.mean_field(v, self.config.score_mean_field_steps)[1]

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Gibbs sampling for ``sample_steps`` sweeps from uniformly random states."""
        self.check_condition(condition)
        like = self.w1
        v = bernoulli(torch.full((n, self.num_dims), 0.5, dtype=like.dtype), generator)
        h2 = bernoulli(torch.full((n, len(self.bias_h2)), 0.5, dtype=like.dtype), generator)
        v, _, _ = self.gibbs(
            v.to(like.device), h2.to(like.device), self.config.sample_steps, generator
        )
        return v.view(n, *self.input_shape)

    # ------------------------------------------------------------------------------ imputation
    def clamped_mean_field(
        self, x: Tensor, mask: Tensor, steps: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Naive mean-field means of p(v_mis, h1, h2 | v_obs), the observed units (``mask`` = 1)
        fixed at ``x`` (both ``(N, D)``): (mu_v, mu1, mu2) after ``steps`` sweeps from the
        visible biases and a bottom-up pass."""
        w1, w2, a, b1, b2 = self.params()
        observed = mask.bool()
        mu_v = torch.where(observed, x, torch.sigmoid(a).expand_as(x))
        mu1 = torch.sigmoid(mu_v @ w1 + b1)
        mu2 = torch.sigmoid(mu1 @ w2 + b2)
        for _ in range(steps):
            mu1 = torch.sigmoid(mu_v @ w1 + mu2 @ w2.T + b1)
            mu2 = torch.sigmoid(mu1 @ w2 + b2)
            mu_v = torch.where(observed, x, torch.sigmoid(mu1 @ w1.T + a))
        return mu_v, mu1, mu2

    @torch.no_grad()
    def clamped_gibbs(
        self,
        x: Tensor,
        mask: Tensor,
        v: Tensor,
        h2: Tensor,
        sweeps: int,
        generator: torch.Generator | None,
    ) -> Tensor:
        """``sweeps`` sweeps h1 | (v, h2), then (v_mis, h2) | h1, the observed units (``mask`` = 1)
        clamped to ``x``: a chain whose stationary distribution is the DBM's exact conditional
        p(v_mis, h1, h2 | v_obs). Returns the final v ``(N, D)``."""
        w1, w2, a, b1, b2 = self.params()
        observed = mask.bool()
        v = torch.where(observed, x, v)
        for _ in range(sweeps):
            h1 = bernoulli(torch.sigmoid(v @ w1 + h2 @ w2.T + b1), generator)
            v = torch.where(observed, x, bernoulli(torch.sigmoid(h1 @ w1.T + a), generator))
            h2 = bernoulli(torch.sigmoid(h1 @ w2 + b2), generator)
        return v

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        cfg = self.config
        like = self.w1

        def chain(xr: Tensor, mr: Tensor, gen: torch.Generator | None) -> Tensor:
            mu_v, _, mu2 = self.clamped_mean_field(xr, mr, cfg.impute_mean_field)
            v, h2 = bernoulli(mu_v, gen), bernoulli(mu2, gen)
            return self.clamped_gibbs(xr, mr, v, h2, cfg.impute_sweeps, gen)

        samples = impute_rows(self, x, mask, num_samples, chain, like, generator, cfg.impute_chunk)
        log_p, log_p_method, stderr = self.conditional_log_prob(
            x.to(like.device, like.dtype), mask.to(like.device, like.dtype), generator
        )
        method = (
            f"clamped-gibbs-sweeps={cfg.impute_sweeps}-mean-field-init={cfg.impute_mean_field}"
            f" (unobserved rows: sample, {cfg.sample_steps} sweeps)"
        )
        return ImputeResult(samples, method, log_p, log_p_method, stderr)

    @torch.no_grad()
    def exact_log_marginal(self, x: Tensor, mask: Tensor) -> Tensor:
        """log sum_{v_mis, h1, h2} exp(-E(v, h1, h2)) with v_obs = x_obs, ``(B,)`` in float64,
        enumerating h1 (v and h2 are independent given h1 and sum out)."""
        w1, w2, a, b1, b2 = self.params(torch.float64)
        x, m = x.flatten(1).double(), mask.flatten(1).double()
        parts = []
        for s in _binary_states(len(b1), 1 << 12, w1):
            pre = s @ w1.T + a  # (n, D)
            top = F.softplus(s @ w2 + b2).sum(1) + s @ b1  # (n,)
            parts.append((x * m) @ pre.T + (1 - m) @ F.softplus(pre).T + top)
        return torch.logsumexp(torch.cat(parts, 1), 1)

    @torch.no_grad()
    def conditional_log_prob(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor | None, str | None, Tensor | None]:
        """log p(x_mis | x_obs) = log p*(x) - log sum_{v_mis} p*(x_obs, v_mis) of ``x``'s own
        missing values ``(B,)``, what it is, and the standard error of an estimate: ``"exact"``
        by enumerating h1 when it has at most ``exact_max_units`` units, else both terms by AIS
        over h1 (``impute_ais_chains`` chains per example and term, ``impute_ais_betas``
        temperatures; ``None`` if 0 chains). A row with nothing missing scores 0."""
        cfg = self.config
        x, m = x.flatten(1).to(self.w1.dtype), mask.flatten(1).to(self.w1.dtype)
        missing = (m < 1).any(1)
        zero = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        if len(self.bias_h1) <= cfg.exact_max_units:
            ones = torch.ones_like(m)
            log_p = self.exact_log_marginal(x, ones) - self.exact_log_marginal(x, m)
            return torch.where(missing, log_p, zero).to(x.dtype), "exact", None
        if cfg.impute_ais_chains == 0:
            return None, None, None
        log_p, var = zero.clone(), zero.clone()
        rows = missing.nonzero().squeeze(1)
        for chunk in row_chunks(rows, max(1, cfg.impute_chunk // (2 * cfg.impute_ais_chains))):
            xc, mc = x[chunk], m[chunk]
            log_z, se = self._conditional_ais(
                torch.cat([xc, xc]), torch.cat([torch.ones_like(mc), mc]), generator
            )
            n = len(chunk)
            log_p[chunk] = log_z[:n] - log_z[n:]
            var[chunk] = se[:n] ** 2 + se[n:] ** 2
        method = (
            f"estimate: conditional-ais-M={cfg.impute_ais_chains}-K={cfg.impute_ais_betas}"
            f"-mean-field-base={cfg.impute_mean_field} (a difference of two AIS estimates)"
        )
        return log_p.to(x.dtype), method, var.sqrt().to(x.dtype)

    def _conditional_ais(
        self, x: Tensor, m: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """AIS estimates of log sum_{v_mis, h1, h2} exp(-E) per row (v_obs = x_obs) and their
        standard errors (float64), over h1 with v_mis and h2 summed out.

        The path scales both weight matrices by beta and moves h1's biases from r1, the logits of
        the clamped mean-field means (kept within 0.01..0.99), to b1: log f_beta(h1) =
        ((1 - beta) r1 + beta b1)·h1 + sum_obs x_i (a_i + beta (W1 h1)_i) + sum_mis softplus(a_i
        + beta (W1 h1)_i) + sum_k softplus(b2_k + beta (W2' h1)_k), a factorial base at beta = 0;
        the transition is one Gibbs sweep (v_mis, h2) | h1, then h1 | (v, h2), at beta."""
        cfg = self.config
        w1, w2, a, b1, b2 = self.params()
        k, n = cfg.impute_ais_chains, len(x)
        keep = m.bool().repeat(k, 1)
        xs, ms = x.repeat(k, 1), m.repeat(k, 1)
        _, mu1, _ = self.clamped_mean_field(x, m, cfg.impute_mean_field)
        r1 = torch.logit(mu1.clamp(0.01, 0.99)).repeat(k, 1)

        def state(h1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return h1, h1 @ w1.T, h1 @ w2

        def log_f(s: tuple[Tensor, Tensor, Tensor], beta: float) -> Tensor:
            h1, pre_v, pre_h2 = s
            pre = a + beta * pre_v
            visible = (xs * ms * pre).sum(1, dtype=torch.float64) + (
                (1 - ms) * F.softplus(pre)
            ).sum(1, dtype=torch.float64)
            top = F.softplus(b2 + beta * pre_h2).sum(1, dtype=torch.float64)
            return (h1 * ((1 - beta) * r1 + beta * b1)).sum(1, dtype=torch.float64) + visible + top

        def transition(
            s: tuple[Tensor, Tensor, Tensor], beta: float, g: torch.Generator | None
        ) -> tuple[Tensor, Tensor, Tensor]:
            _, pre_v, pre_h2 = s
            v = torch.where(keep, xs, bernoulli(torch.sigmoid(a + beta * pre_v), g))
            h2 = bernoulli(torch.sigmoid(b2 + beta * pre_h2), g)
            logits = (1 - beta) * r1 + beta * (b1 + v @ w1 + h2 @ w2.T)
            return state(bernoulli(torch.sigmoid(logits), g))

        initial = state(bernoulli(torch.sigmoid(r1), generator))
        log_z0 = (
            F.softplus(r1[:n]).sum(1, dtype=torch.float64)
            + ((x * m) @ a).double()
            + ((1 - m) * F.softplus(a)).sum(1, dtype=torch.float64)
            + F.softplus(b2).sum(dtype=torch.float64)
        )
        return anneal_rows(
            log_f, transition, initial, log_z0, schedule(cfg.impute_ais_betas), k, generator
        )
