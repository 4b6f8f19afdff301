"""The RBM's maths: the free energy sums out the hiddens, AIS agrees with log Z by enumeration,
Gibbs sampling reaches the model's distribution, CD-1 and PCD raise the exact likelihood, and
log Z and the persistent chains are stored where the pipelines expect them."""

from __future__ import annotations

import math

import pytest
import torch

import genmodels
import genmodels.rbm
from tests.genmodels.checks import binary_states, toy_data


def random_rbm(seed: int, visible: int = 10, hidden: int = 8, **config) -> genmodels.rbm.RBM:
    """Weights and biases N(0, 1): a peaked, multimodal model far from the base rates."""
    torch.manual_seed(seed)
    model = genmodels.build(
        "rbm", input_shape=(visible,), hidden_size=hidden, init_std=1.0, seed=seed, **config
    )
    with torch.no_grad():
        model.visible_bias.normal_()
        model.hidden_bias.normal_()
    return model.eval()


def joint_energy(model, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v, h) = -b·v - c·h - h·Wv for every pair → ``(len(v), len(h))``, float64."""
    w, b, c = model.weight.double(), model.full_visible_bias.double(), model.hidden_bias.double()
    v, h = v.double(), h.double()
    return -(v @ b)[:, None] - (h @ c)[None, :] - v @ w.t() @ h.t()


def exact_probs(model) -> torch.Tensor:
    """p(v) over every visible state, by enumeration (float64)."""
    with torch.no_grad():
        neg_f = -model.free_energy(binary_states(model.input_shape)).double()
    return (neg_f - model.exact_log_z()).exp()


# ------------------------------------------------------------------- free energy, exact log Z
@pytest.mark.parametrize(("visible", "hidden"), [(5, 4), (4, 6)])  # log Z sums h, then v
def test_free_energy_sums_out_the_hiddens(visible, hidden):
    model = random_rbm(0, visible, hidden)
    v, h = binary_states((visible,)), binary_states((hidden,))
    neg_energy = -joint_energy(model, v, h)
    with torch.no_grad():
        neg_f = -model.free_energy(v).double()
    assert neg_f.max() - neg_f.min() > 2.0  # far from uniform: the identity has teeth
    torch.testing.assert_close(neg_f, torch.logsumexp(neg_energy, 1), atol=1e-5, rtol=0)
    log_z = torch.logsumexp(neg_energy.flatten(), 0).item()
    assert model.exact_log_z() == pytest.approx(log_z, abs=1e-9)
    assert model.exact_log_z(chunk=3) == pytest.approx(log_z, abs=1e-9)  # chunking is exact
    # Control: a free energy summing the hiddens at half the weights does not match.
    with torch.no_grad():
        model.weight.mul_(0.5)
        assert not torch.allclose(-model.free_energy(v).double(), neg_f, atol=1e-2)


# --------------------------------------------------------------------------------------- AIS
@pytest.mark.parametrize(("seed", "base_from_data"), [(0, False), (1, False), (2, True)])
def test_ais_agrees_with_exact_log_z(seed, base_from_data):
    """Many chains through a coarse schedule (4000 x 50): the estimate is as precise as with
    200 x 1500, in a tenth of the time, and each step's transition matters. A transition taken
    at beta_{k-1} instead of beta_k (the chains one temperature behind) reads log Z 0.2-0.8
    nats low here, 17-28 standard errors on every seed; with 200 x 1500 it was -3.3, +0.6 and
    -1.7 standard errors, caught by luck."""
    model = random_rbm(seed)
    if base_from_data:  # a base with nonzero visible biases (as after the first training batch)
        g = torch.Generator().manual_seed(seed)
        data = torch.bernoulli(torch.rand(10, generator=g).expand(50, 10), generator=g)
        model.set_base_rates(data)
        assert model.base_bias.abs().max() > 0.5
    exact = model.exact_log_z()
    res = model.ais_log_z(4000, 50, torch.Generator().manual_seed(seed))
    assert 0 < res.stderr < 0.05 and res.effective_sample_size > 50
    assert abs(res.log_z - exact) < 3 * res.stderr and abs(res.log_z - exact) < 0.1
    # Far too few temperatures: the reported error says the estimate is much less precise.
    rough = model.ais_log_z(4000, 3, torch.Generator().manual_seed(seed))
    assert rough.stderr > 1.5 * res.stderr  # measured 2.0-2.7x


def test_ais_controls_disagree_with_exact_log_z(monkeypatch):
    model = random_rbm(0)
    exact = model.exact_log_z()

    def off_by(res) -> float:
        return abs(res.log_z - exact) / max(res.stderr, 1e-3)

    # A Gibbs sweep at the wrong temperature (the target's, at every beta) breaks invariance.
    right = model._ais_transition
    monkeypatch.setattr(model, "_ais_transition", lambda s, beta, g: right(s, 1.0, g))
    res = model.ais_log_z(200, 1500, torch.Generator().manual_seed(0))
    assert off_by(res) > 10 and abs(res.log_z - exact) > 0.3
    monkeypatch.undo()
    # A base log Z that forgets the base's hiddens (2^H states) is off by H log 2.
    right_z0 = model.base_log_z()
    monkeypatch.setattr(model, "base_log_z", lambda: right_z0 - 8 * math.log(2.0))
    res = model.ais_log_z(200, 1500, torch.Generator().manual_seed(0))
    assert off_by(res) > 10 and abs(res.log_z - exact) > 0.3


# ------------------------------------------------------------------------------------ Gibbs
def test_gibbs_samples_follow_the_exact_distribution():
    model = random_rbm(3, visible=6, hidden=4, sample_steps=30)
    p = exact_probs(model).float()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert p.max() > 0.1 and p.max() - p.min() > 0.1  # peaked: the check has teeth
    weights = 2.0 ** torch.arange(5, -1, -1)

    def tv(x: torch.Tensor, target: torch.Tensor) -> float:
        freq = torch.bincount((x.flatten(1) @ weights).long(), minlength=64).float() / len(x)
        return 0.5 * (freq - target).abs().sum().item()

    # Independent chains (the public sampler) and the time average of a few long chains.
    x = model.sample(40000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (40000, 6) and tv(x, p) < 0.03
    g = torch.Generator().manual_seed(1)
    v, visited = model.gibbs(torch.zeros(20, 6), 20, g), []
    for _ in range(500):
        v = model.gibbs(v, 1, g)
        visited.append(v)
    assert tv(torch.cat(visited), p) < 0.04
    # Controls: one sweep from the base is not yet at equilibrium; another model differs.
    unmixed = random_rbm(3, visible=6, hidden=4, sample_steps=1)
    assert tv(unmixed.sample(40000, generator=torch.Generator().manual_seed(0)), p) > 0.05
    other = random_rbm(4, visible=6, hidden=4)
    assert tv(x, exact_probs(other).float()) > 0.2


# --------------------------------------------------------------------------------- training
def train(model, steps: int, sign: float = 1.0) -> None:
    opt = model.configure_optimizers()["main"]
    x = toy_data()
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = x[torch.randint(len(x), (64,), generator=g)]
        opt.zero_grad()
        out = model({"x": batch})
        assert set(out) == {"loss", "free_energy", "recon_error"}
        (sign * out["loss"]).backward()
        opt.step()
    model.eval()


def exact_nll(model) -> float:
    with torch.no_grad():
        res = model.score(toy_data())
    assert res.method == "exact-logz" and torch.equal(res.stderr, torch.zeros(len(res.stderr)))
    return -res.log_prob.mean().item()


@pytest.mark.parametrize("persistent", [False, True], ids=["cd1", "pcd"])
def test_cd_and_pcd_raise_the_exact_likelihood(persistent):
    torch.manual_seed(0)
    config = {"hidden_size": 8, "cd_k": 1, "persistent": persistent, "num_chains": 64, "lr": 0.01}
    model = genmodels.build("rbm", input_shape=(8,), **config)
    before = exact_nll(model)
    train(model, 300)
    after = exact_nll(model)
    # uniform = 8 ln 2 ≈ 5.5 nats; the data's entropy ≈ 2.3 nats
    assert before > 5.4 and after < 3.2, (before, after)
    # Control: ascending the same loss instead lowers the likelihood.
    torch.manual_seed(0)
    control = genmodels.build("rbm", input_shape=(8,), **config)
    train(control, 100, sign=-1.0)
    assert exact_nll(control) > before + 0.5


# -------------------------------------------------------------------- stored log Z, rank state
def test_log_z_is_saved_with_the_weights_and_goes_stale_on_training(monkeypatch):
    config = {"exact_max_units": 0, "ais_chains": 50, "ais_betas": 200, "ais_betas_validation": 40}
    model = random_rbm(0, **config)
    model.set_base_rates(binary_states((10,)))  # set: training will not reset it
    x = binary_states((10,))[::97]
    info = model.prepare_scoring(torch.Generator().manual_seed(0), final=True)
    assert info["method"] == "ais-M=50-K=200" and info["ais_chains"] == 50
    assert info["ais_betas"] == 200 and info["log_z_stderr"] > 0 and info["ais_ess"] > 1
    assert abs(info["log_z"] - model.exact_log_z()) < 0.3
    res = model.score(x)
    assert res.method == info["method"] and res.shared_stderr == info["log_z_stderr"]
    torch.testing.assert_close(res.stderr, torch.full((len(x),), info["log_z_stderr"]))
    # The scores are the exact log-probabilities (joint energies summed over every (v, h)),
    # all shifted by the one AIS error in log Z: the same for every example.
    neg_energy = -joint_energy(model, binary_states((10,)), binary_states((8,)))
    exact_log_p = torch.logsumexp(-joint_energy(model, x, binary_states((8,))), 1)
    exact_log_p -= torch.logsumexp(neg_energy.flatten(), 0)
    shift = exact_log_p - res.log_prob.double()
    assert shift.max() - shift.min() < 1e-4, shift
    assert shift.mean().item() == pytest.approx(info["log_z"] - model.exact_log_z(), abs=1e-4)
    for key in ("log_z", "log_z_stderr", "log_z_valid", "log_z_chains", "log_z_betas"):
        assert key in model.state_dict()

    def no_ais(*args, **kwargs):
        raise AssertionError("AIS re-ran")

    # A fresh model with the state dict scores identically without re-running AIS.
    clone = genmodels.from_export(model.export_config()).eval()
    clone.load_state_dict(model.state_dict())
    monkeypatch.setattr(clone, "ais_log_z", no_ais)
    again = clone.score(x)
    assert torch.equal(again.log_prob, res.log_prob) and torch.equal(again.stderr, res.stderr)
    assert again.method == res.method and again.shared_stderr == res.shared_stderr
    monkeypatch.undo()
    # A training-mode forward marks it stale; scoring then recomputes it (validation settings,
    # a fixed seed, the caller's global generator untouched).
    clone.train()
    clone({"x": x})
    assert int(clone.log_z_valid) == 0
    clone.eval()
    rng = torch.get_rng_state()
    stale = clone.score(x)
    assert torch.equal(torch.get_rng_state(), rng) and stale.method == "ais-M=50-K=40"
    assert int(clone.log_z_valid) == 1
    # Control: an evaluation-mode forward leaves the stored log Z alone.
    model({"x": x})
    assert int(model.log_z_valid) == 1


def test_rank_state_round_trip_continues_the_same_chains():
    config = {"hidden_size": 6, "persistent": True, "num_chains": 16, "cd_k": 2}
    torch.manual_seed(0)
    a = genmodels.build("rbm", input_shape=(8,), **config)
    x = toy_data(32)
    assert a.rank_state() == {}
    torch.manual_seed(1)
    a({"x": x})  # starts (from the data's base rates) and advances the chains
    torch.testing.assert_close(a.base_bias, torch.logit((x.sum(0) + 0.5) / 33))
    state = a.rank_state()
    assert set(state) == {"chains"} and state["chains"].shape == (16, 8)
    assert "chains" not in a.state_dict()  # per rank: DDP must not broadcast rank 0's
    b = genmodels.from_export(a.export_config())
    b.load_state_dict(a.state_dict())
    b.load_rank_state(state)
    c = genmodels.from_export(a.export_config())  # control: no rank state restored
    c.load_state_dict(a.state_dict())
    outs = []
    for model in (a, b, c):
        torch.manual_seed(2)
        outs.append(model({"x": x})["loss"])
    assert torch.equal(a.chains, b.chains) and torch.equal(outs[0], outs[1])
    assert not torch.equal(a.chains, c.chains)
    state["chains"].fill_(0.0)  # the rank state is a copy
    assert not torch.equal(a.chains, state["chains"])
    # An evaluation-mode forward does not advance the chains.
    before = a.chains.clone()
    a.eval()
    a({"x": x})
    assert torch.equal(a.chains, before)


def test_embed_and_config_validation():
    model = random_rbm(0)
    x = binary_states((10,))[:5]
    torch.testing.assert_close(
        model.embed(x), torch.sigmoid(x @ model.weight.t() + model.hidden_bias)
    )
    for key, value in [("hidden_size", 0), ("cd_k", 0), ("ais_betas", 1), ("exact_max_units", 31)]:
        with pytest.raises(ValueError, match=key):
            genmodels.build("rbm", input_shape=(4,), **{key: value})
