"""GSN: the chain's samples learn the data's structure, walkback follows the chain, and the
Parzen-window estimate is a normalised density computed stably."""

from __future__ import annotations

import math

import pytest
import torch

import genmodels
import genmodels.gsn
from genmodels.base import bernoulli_log_prob
from genmodels.parzen import parzen_estimate, parzen_log_prob, select_sigma

D, NUM_PROTOS = 20, 4


def prototypes() -> torch.Tensor:
    """Four random 20-bit prototypes, pairwise at Hamming distance >= 6."""
    g = torch.Generator().manual_seed(0)
    while True:
        protos = (torch.rand(NUM_PROTOS, D, generator=g) < 0.5).float()
        dist = torch.cdist(protos, protos, p=1) + 100 * torch.eye(NUM_PROTOS)
        if dist.min() >= 6:
            return protos


def proto_data(n: int, seed: int, flip: float = 0.05) -> torch.Tensor:
    """Prototypes (uniformly chosen) with each bit flipped with probability ``flip``."""
    g = torch.Generator().manual_seed(seed)
    x = prototypes()[torch.randint(NUM_PROTOS, (n,), generator=g)]
    return torch.where(torch.rand(n, D, generator=g) < flip, 1 - x, x)


def near_prototype(x: torch.Tensor, radius: int = 2) -> tuple[float, torch.Tensor]:
    """The fraction of rows within Hamming ``radius`` of a prototype, and the share of those
    rows that each prototype claims ``(NUM_PROTOS,)``."""
    dist = torch.cdist(x.flatten(1), prototypes(), p=1)  # (N, P)
    near = dist.min(1).values <= radius
    which = dist.argmin(1)[near]
    share = torch.bincount(which, minlength=NUM_PROTOS).float() / max(int(near.sum()), 1)
    return near.float().mean().item(), share


def gsn(**config) -> genmodels.gsn.GSN:
    torch.manual_seed(0)
    defaults = {"hidden_sizes": (64,), "walkback": 3, "burn_in": 30, "lr": 1e-2}
    return genmodels.build("gsn", input_shape=(D,), **{**defaults, **config})


def train(model, x: torch.Tensor, steps: int = 300) -> None:
    opt = model.configure_optimizers()["main"]
    torch.manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model({"x": x})["loss"].backward()
        opt.step()


# ------------------------------------------------------------------------------ the chain learns
def test_trained_chain_beats_independent_bernoullis_and_untrained_does_not():
    x = proto_data(500, seed=1)
    data_frac, _ = near_prototype(proto_data(1000, seed=2))  # ≈ 0.92: 20 bits, 5% flips
    g = torch.Generator().manual_seed(3)
    baseline = (torch.rand(1000, D, generator=g) < x.mean(0)).float()  # per-pixel Bernoullis
    base_frac, _ = near_prototype(baseline)

    # noise 0.2: on 20 bits, heavier corruption often leaves the prototype ambiguous, and a
    # factorial P(x | x~) then mixes prototypes (the papers' 0.4 suits 784-pixel digits).
    untrained = gsn(noise=0.2)
    untrained_frac, _ = near_prototype(untrained.sample(1000, torch.Generator().manual_seed(4)))

    model = gsn(noise=0.2)
    train(model, x)
    frac, share = near_prototype(model.sample(1000, torch.Generator().manual_seed(4)))

    assert base_frac < 0.1 and untrained_frac < base_frac + 0.05, (base_frac, untrained_frac)
    assert frac > data_frac - 0.15 and frac > base_frac + 0.5, (frac, data_frac, base_frac)
    assert (share > 0.1).all(), share  # every prototype is generated: no mode collapse
    # The embedding carries what the model reconstructs from: decoding the code of a clean
    # prototype gives it back after training, and not before.
    with torch.no_grad():
        for m, ok in ((model, True), (untrained, False)):
            recon = (m.decode(m.embed(prototypes())) > 0).float()
            assert torch.equal(recon, prototypes()) is ok


# ------------------------------------------------------------------------------------- walkback
def disagreement(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    return (a != b)[where].float().mean().item()


def test_walkback_pairs_corrupt_the_chain_states_not_the_data():
    """x~_1 corrupts x; x~_t (t >= 2) corrupts the model's draw x_{t-1}. Salt-and-pepper with
    p = 0.4 flips a bit with probability 0.2: where x_{t-1} != x, x~_t disagrees with x_{t-1} at
    rate ≈ 0.2 and with x at rate ≈ 0.8."""
    model = gsn(walkback=4)  # untrained: its draws x_t are far from the data
    x = proto_data(2000, seed=5)
    walk = model.walkback_pairs(x, torch.Generator().manual_seed(0))
    assert len(walk.corrupted) == len(walk.states) == len(walk.logits) == 4
    assert torch.equal(walk.states[0], x)
    assert disagreement(walk.corrupted[0], x, torch.ones_like(x, dtype=torch.bool)) == (
        pytest.approx(0.2, abs=0.02)
    )
    for t in range(1, 4):
        prev, xt = walk.states[t], walk.corrupted[t]
        moved = prev != x
        assert moved.float().mean() > 0.3  # the chain has left the data
        assert disagreement(xt, prev, moved) == pytest.approx(0.2, abs=0.03)
        assert disagreement(xt, x, moved) == pytest.approx(0.8, abs=0.03)
    # Control: k independent corruptions of the data (no walkback) fail the second check.
    fake = model.corrupt(x, torch.Generator().manual_seed(1))
    moved = walk.states[1] != x
    assert disagreement(fake, x, moved) == pytest.approx(0.2, abs=0.03)


def test_chain_states_are_draws_of_the_model():
    """Pin P(x | x~) to 'all ones': every chain state x_t (t >= 1) is all ones, whatever x."""
    model = gsn(walkback=3)
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.fill_(30.0)
    x = proto_data(500, seed=6)
    walk = model.walkback_pairs(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(s, torch.ones_like(x)) for s in walk.states[1:])
    assert (walk.corrupted[1] == 0).float().mean().item() == pytest.approx(0.2, abs=0.03)


def test_no_walkback_gives_one_pair_and_forward_is_the_mean_over_pairs():
    x = proto_data(64, seed=7)
    plain = gsn(walkback=1)
    walk = plain.walkback_pairs(x)
    assert len(walk.corrupted) == len(walk.states) == len(walk.logits) == 1
    for k in (1, 3):
        model = gsn(walkback=k, hidden_noise=0.5)
        torch.manual_seed(11)
        loss = model({"x": x})["loss"]
        torch.manual_seed(11)
        walk = model.walkback_pairs(x)
        targets_clean = torch.stack([-bernoulli_log_prob(lg, x).mean() for lg in walk.logits])
        assert loss.item() == pytest.approx(targets_clean.mean().item(), rel=1e-6)
        if k > 1:  # the targets are the clean x, not the chain states
            chained = [-bernoulli_log_prob(lg, s).mean() for lg, s in zip(walk.logits, walk.states)]
            assert loss.item() != pytest.approx(torch.stack(chained).mean().item(), rel=1e-3)


def test_sampling_config_and_validation():
    """burn_in and sample_steps mean what they say: state t of a chain is where the same chain
    (same seed) stands after burn_in + t * sample_steps steps; the embedding is noise-free."""
    model = gsn(sample_steps=2)
    traj = model.chain(3, 4, torch.Generator().manual_seed(0), burn_in=5)
    assert traj.shape == (4, 3, D) and set(traj.unique().tolist()) <= {0.0, 1.0}
    for t in range(4):
        alone = model.chain(3, 1, torch.Generator().manual_seed(0), burn_in=5 + 2 * t)[0]
        assert torch.equal(traj[t], alone), t
    assert not torch.equal(traj[0], traj[1])  # the chain moves between the states it returns
    assert not torch.equal(traj[0], model.chain(3, 1, torch.Generator().manual_seed(0), 4)[0])
    # Trained with hidden noise, the embedding still has none: the same input, the same code.
    noisy = gsn(hidden_noise=2.0)
    x = proto_data(5, seed=8)
    assert model.embed(x).shape == (5, 64)
    assert torch.equal(noisy.embed(x), noisy.embed(x))
    assert not torch.equal(noisy.encode(x), noisy.encode(x))  # its training code is noisy
    for key, value in [("noise", 0.0), ("walkback", 0), ("hidden_noise", -1.0), ("burn_in", 0)]:
        with pytest.raises(ValueError, match=key):
            gsn(**{key: value})
    with pytest.raises(genmodels.NoLikelihoodError):
        model.log_prob(proto_data(2, seed=9))


# --------------------------------------------------------------------------------------- Parzen
def test_parzen_matches_the_formula_and_is_stable_far_away():
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    x = torch.tensor([[0.5, 0.5], [1e3, -1e3]])
    sigma = 0.7
    lp = parzen_log_prob(s, x, sigma)
    norm = 2 * math.pi * sigma**2
    by_hand = math.log((math.exp(-0.5 / (2 * sigma**2)) + math.exp(-2.5 / (2 * sigma**2))) / 2)
    assert lp[0].item() == pytest.approx(by_hand - math.log(norm), rel=1e-10)
    # Far away, exp underflows; the log-sum-exp is still the nearest kernel's exponent.
    nearest = -(2 * 1e3**2) / (2 * sigma**2) - math.log(2)  # the kernel at (0, 0)
    assert torch.isfinite(lp[1]) and lp[1].item() == pytest.approx(nearest - math.log(norm))


def test_parzen_integrates_to_one_in_1d_and_2d_and_chunks_agree():
    s1 = torch.tensor([[-1.0], [0.3], [2.0]])
    grid = torch.linspace(-8, 10, 20001, dtype=torch.float64)[:, None]
    mass = parzen_log_prob(s1, grid, 0.4).exp().sum() * (grid[1] - grid[0])
    assert mass.item() == pytest.approx(1.0, abs=1e-6)

    s2 = torch.tensor([[0.0, 0.0], [1.0, -1.0], [0.5, 2.0]])
    axis = torch.linspace(-5, 6, 441, dtype=torch.float64)
    grid2 = torch.cartesian_prod(axis, axis)
    lp = parzen_log_prob(s2, grid2, 0.5, batch_size=1000, sample_chunk=2)
    assert (lp.exp().sum() * (axis[1] - axis[0]) ** 2).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(lp, parzen_log_prob(s2, grid2, 0.5), rtol=0, atol=1e-12)
    # Control: the unnormalised kernel sum does not integrate to one.
    unnormalised = (lp + math.log(2 * math.pi * 0.25)).exp().sum() * (axis[1] - axis[0]) ** 2
    assert abs(unnormalised.item() - 1.0) > 0.1


def test_parzen_prefers_samples_of_the_data_distribution_and_selects_a_sensible_sigma():
    g = torch.Generator().manual_seed(0)
    x_val, x_test = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g)
    good = torch.randn(2000, 5, generator=g)
    shifted = good + 1.0
    sigmas = (0.03, 0.1, 0.3, 0.5, 1.0, 3.0)
    best, scores = select_sigma(good, x_val, sigmas)
    assert best in (0.3, 0.5, 1.0) and scores[best] == max(scores.values())
    assert scores[0.03] < scores[best] - 5 and scores[3.0] < scores[best]
    r_good = parzen_estimate(good, x_val, x_test, sigmas)
    r_shift = parzen_estimate(shifted, x_val, x_test, sigmas)
    assert r_good["method"] == "parzen" and r_good["sigma"] == best
    assert r_good["stderr"] == pytest.approx(
        parzen_log_prob(good, x_test, best).std().item() / math.sqrt(300)
    )
    assert r_good["log_prob"] > r_shift["log_prob"] + 5 * max(r_good["stderr"], r_shift["stderr"])
