"""The AIS sandwich (``genmodels.ais``) on an RBM small enough to enumerate: forward AIS's log Z
and RAISE's log p(v) against the exact values, with controls that break the temperature schedule
and must be caught by the same checks.

The model: 12 visible x 6 hidden units, weights N(0, 3^2) and biases that centre each unit, so
the distribution is multimodal and far from the base rates (the paper schedule's ESS at 50
temperatures is about 60 of 400 chains). The checks:

* forward AIS: |log Z_AIS - log Z| <= 3 se;
* the sandwich on 30 exact draws of the model: mean(RAISE log p(v)) <= mean(log p(v)) + 3 se
  (RAISE is a stochastic lower bound) and mean(-F(v) - log Z_AIS) >= mean(log p(v)) - 3 se (forward
  AIS makes it an upper bound), i.e. the exact value lies inside;
* controls: a transition run at the wrong inverse temperature (the target's in forward AIS, the
  base's in RAISE) and weights whose schedule stops short of 1 each miss by far more than 3 se.
"""

from __future__ import annotations

import math

import pytest
import torch

import genmodels
from genmodels import ais
from genmodels.rbm import binary_codes


@pytest.fixture(scope="module")
def rbm():
    g = torch.Generator().manual_seed(0)
    model = genmodels.build("rbm", (12,), 2, hidden_size=6, exact_max_units=0)
    with torch.no_grad():
        model.weight.copy_(torch.randn(6, 12, generator=g) * 3.0)
        model.hidden_bias.copy_(-0.5 * model.weight.sum(1))
        model.base_bias.copy_(torch.randn(12, generator=g))
        model.visible_bias.copy_(-0.5 * model.weight.sum(0) - model.base_bias)
    model.requires_grad_(False).eval()
    log_z = model.exact_log_z()
    codes = binary_codes(0, 2**12, 12, torch.float32, "cpu")
    log_p = -model.free_energy(codes).double() - log_z
    pick = torch.multinomial(log_p.exp(), 30, True, generator=torch.Generator().manual_seed(3))
    x = codes[pick]
    return model, log_z, x, log_p[pick]


def forward(model, transition=None, log_f=None, kind="tuned", chains=400, betas=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    schedule = model.annealing_schedule(betas, g, kind)
    initial = model._ais_state(model._base_noise(chains, g))
    return ais.anneal(
        log_f or model._ais_log_f,
        transition or model._ais_transition,
        initial,
        model.base_log_z(),
        schedule,
        g,
    )


def mean_and_se(d: torch.Tensor) -> tuple[float, float]:
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


@pytest.mark.parametrize("kind", ["paper", "tuned"])
def test_forward_ais_matches_exact_log_z(rbm, kind):
    model, log_z, _, _ = rbm
    res = forward(model, kind=kind)
    assert abs(res.log_z - log_z) <= 3 * res.stderr, (res.log_z, log_z, res.stderr)
    assert 0 < res.stderr < 0.2  # non-trivial but informative


def test_tuned_schedule_is_a_valid_schedule_and_raises_ess(rbm):
    model, _, _, _ = rbm
    g = torch.Generator().manual_seed(1)
    betas = model.annealing_schedule(50, g, "tuned")
    assert len(betas) == 50 and betas[-1] == 1.0 and betas[0] > 0
    assert bool((betas[1:] > betas[:-1]).all())
    ess_paper = forward(model, kind="paper").effective_sample_size
    ess_tuned = forward(model, kind="tuned").effective_sample_size
    assert ess_tuned > 2 * ess_paper, (ess_tuned, ess_paper)


def test_sandwich_contains_exact_log_likelihood(rbm):
    model, _, x, exact = rbm
    res = model.raise_log_prob(x, 10, 50, torch.Generator().manual_seed(2))
    low, low_se = mean_and_se(res.log_prob - exact)
    assert low <= 3 * low_se, (low, low_se)  # RAISE: a lower bound ...
    assert low >= -1.0  # ... and a tight one
    fwd = forward(model)
    upper = -model.free_energy(x).double() - fwd.log_z
    high = float((upper - exact).mean())  # = log Z - log Z_AIS, shared by every example
    assert high >= -3 * fwd.stderr, (high, fwd.stderr)
    assert high <= 1.0


def test_log_prob_bounds_reports_both_sides(rbm):
    small, _, x, _ = rbm
    settings = {"ais_chains": 200, "ais_betas": 50, "raise_chains": 5, "raise_betas": 50}
    model = genmodels.build("rbm", (12,), 2, hidden_size=6, exact_max_units=0, **settings)
    model.load_state_dict(small.state_dict())
    model.eval().prepare_scoring(torch.Generator().manual_seed(5), final=True)
    bounds = model.log_prob_bounds(x, torch.Generator().manual_seed(6))
    assert bounds.lower.shape == bounds.upper.shape == (30,)
    assert float(bounds.lower.mean()) < float(bounds.upper.mean()) + 3 * bounds.upper_stderr
    assert {"ais_ess", "raise_ess", "raise_chains", "raise_betas"} <= set(bounds.info)
    assert bounds.info["raise_chains"] == 5 and bounds.method.startswith("raise-M=5-K=50")
    assert 0 < bounds.info["ais_ess"] <= 200


def test_control_forward_transition_at_wrong_beta_is_caught(rbm):
    """The transition after each weight step runs at beta = 1 instead of the step's beta: the
    chains sit at the target too early, log Z comes out far too high."""
    model, log_z, _, _ = rbm
    res = forward(model, transition=lambda s, b, g: model._ais_transition(s, 1.0, g))
    assert abs(res.log_z - log_z) > 10 * res.stderr, (res.log_z, log_z, res.stderr)


def test_control_schedule_stopping_short_is_caught(rbm):
    """The weights follow a schedule that ends at 0.9 (the last steps' weight skipped): the
    check catches the missing part of log Z."""
    model, log_z, _, _ = rbm
    res = forward(model, log_f=lambda s, b: model._ais_log_f(s, 0.9 * b))
    assert abs(res.log_z - log_z) > 10 * res.stderr, (res.log_z, log_z, res.stderr)


def test_control_raise_transition_at_wrong_beta_is_caught(rbm):
    """RAISE whose reverse transitions run at the base (beta = 0): the chains leave the model's
    distribution at once and the estimate lands far above the exact log p(v)."""
    model, _, x, exact = rbm
    start = model._ais_state(x.repeat(10, 1))
    betas = model.annealing_schedule(50, torch.Generator().manual_seed(1))
    res = ais.reverse_anneal(
        model._ais_log_f,
        lambda s, b, g: model._ais_transition(s, 0.0, g),
        start,
        model._ais_log_f(start, 1.0),
        model.base_log_z(),
        betas,
        10,
        torch.Generator().manual_seed(2),
    )
    low, low_se = mean_and_se(res.log_prob - exact)
    assert low > 10 * low_se, (low, low_se)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raise_is_a_lower_bound_even_on_a_coarse_schedule_and_a_lag_is_caught(rbm, seed):
    """At 10 temperatures RAISE is loose (about -0.6 nats) but still below the exact mean log
    p(v) of 200 draws; the same run with each reverse transition at the previous (lower) beta
    lands about 2.5 nats above it (50 se on seeds 0-2): the check catches a lagging transition."""
    model, log_z, _, _ = rbm
    codes = binary_codes(0, 2**12, 12, torch.float32, "cpu")
    log_p = -model.free_energy(codes).double() - log_z
    pick = torch.multinomial(log_p.exp(), 200, True, generator=torch.Generator().manual_seed(seed))
    x, exact = codes[pick], log_p[pick]
    betas = model.annealing_schedule(10, kind="paper")
    previous = dict(zip(betas.tolist(), [0.0, *betas[:-1].tolist()]))
    start = model._ais_state(x.repeat(20, 1))
    lagging = lambda s, b, g: model._ais_transition(s, previous[b], g)  # noqa: E731
    for transition, lag in ((model._ais_transition, False), (lagging, True)):
        g = torch.Generator().manual_seed(seed + 10)
        res = ais.reverse_anneal(
            model._ais_log_f,
            transition,
            start,
            model._ais_log_f(start, 1.0),
            model.base_log_z(),
            betas,
            20,
            g,
        )
        low, low_se = mean_and_se(res.log_prob - exact)
        if lag:
            assert low > 10 * low_se, (low, low_se)
        else:
            assert -2.0 < low <= 3 * low_se, (low, low_se)


def test_reverse_anneal_validates_and_aggregates_per_example():
    with pytest.raises(ValueError):
        ais.reverse_anneal(None, None, None, torch.zeros(2), 0.0, torch.tensor([0.5, 0.9]), 1)
    # f_beta(x) = exp(beta * x) on one state: Z_beta = exp(beta x), the weights are exact
    state = torch.tensor([1.0, 2.0, 1.0, 2.0])
    res = ais.reverse_anneal(
        lambda s, b: b * s.double(),
        lambda s, b, g: s,
        state,
        state.double(),
        0.0,
        torch.tensor([0.3, 1.0]),
        2,
    )
    assert torch.allclose(res.log_prob, torch.zeros(2, dtype=torch.float64))
    assert res.log_weights.shape == (2, 2)


@pytest.fixture(scope="module")
def dbm():
    """A 10-8-4 DBM with weights N(0, 1.5^2): log Z and log p*(v) enumerable, AIS forced."""
    g = torch.Generator().manual_seed(0)
    model = genmodels.build("dbm", (10,), 2, hidden_sizes=(8, 4), exact_max_units=0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5)
    model.requires_grad_(False).eval()
    log_z = model.exact_log_z()
    codes = binary_codes(0, 2**10, 10, torch.float32, "cpu")
    log_p = model.exact_log_unnormalised(codes) - log_z
    pick = torch.multinomial(log_p.exp(), 30, True, generator=torch.Generator().manual_seed(3))
    return model, log_z, codes[pick], log_p[pick]


def test_dbm_forward_ais_and_raise_bracket_the_exact_values(dbm):
    model, log_z, x, exact = dbm
    g = torch.Generator().manual_seed(1)
    betas = model.annealing_schedule(50, g)
    fwd = model.ais(400, 50, g, betas=betas)
    assert abs(fwd.log_z - log_z) <= 3 * fwd.stderr, (fwd.log_z, log_z, fwd.stderr)
    res = model.raise_log_prob(x, 10, 50, torch.Generator().manual_seed(2), betas=betas)
    low, low_se = mean_and_se(res.log_prob - exact)
    assert -1.0 <= low <= 3 * low_se, (low, low_se)
    # control: RAISE's reverse transitions at the base's beta land far above log p(v)
    bad = model.raise_log_prob  # same start, broken transition
    model.ais_transition = lambda s, b, g: type(model).ais_transition(model, s, 0.0, g)
    try:
        wrong = bad(x, 10, 50, torch.Generator().manual_seed(2), betas=betas)
    finally:
        del model.ais_transition
    low, low_se = mean_and_se(wrong.log_prob - exact)
    assert low > 10 * low_se, (low, low_se)


def test_dbm_log_prob_bounds(dbm):
    small, _, x, _ = dbm
    settings = {"ais_chains": 200, "ais_betas": 50, "raise_chains": 5, "raise_betas": 50}
    model = genmodels.build("dbm", (10,), 2, hidden_sizes=(8, 4), exact_max_units=0, **settings)
    model.load_state_dict(small.state_dict())
    model.eval().prepare_scoring(torch.Generator().manual_seed(5), final=True)
    bounds = model.log_prob_bounds(x, torch.Generator().manual_seed(6))
    assert bounds.lower.shape == bounds.upper.shape == (30,)
    assert {"ais_ess", "raise_ess", "raise_chains", "raise_betas"} <= set(bounds.info)
    assert bounds.method.startswith("raise-M=5-K=50 / mean-field-bound-ais-M=200-K=50")
    assert 0 < bounds.info["ais_ess"] <= 200
