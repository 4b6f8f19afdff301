"""Imputation by the autoregressive families (FVSBN, NADE, MADE, PixelCNN): the contract of
``impute``, and exactness against the conditional p(x_mis | x_obs) ∝ p(x) enumerated over the
256 states of 8 binary dimensions, for an order-compatible mask (ancestral sampling, exact), for
incompatible ones (SIR + Gibbs, which must mix) and for MADE's mixture of masks (component drawn
by its posterior weight). Each exactness test also scores a deliberately wrong sampler (the
model's unconditional samples, which ignore the observed entries) and requires it to fail."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import genmodels
from genmodels.layers import made_degrees, made_masks

SHAPE = (1, 2, 4)  # 8 dimensions; flat index = raster position for FVSBN, MADE[0], PixelCNN
D = 8
STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # (256, 8), dim 0 high bit
BITS = 2 ** torch.arange(D - 1, -1, -1)
DRAWS = 20_000

FAMILIES = {
    "fvsbn": {},
    "nade": {"hidden_size": 16},
    "nade+order": {"hidden_size": 16, "order_seed": 3},
    "made": {"hidden_sizes": (24,)},
    "made+mixture": {"hidden_sizes": (24,), "num_masks": 2},
    "pixelcnn": {"channels": 8, "num_layers": 2, "kernel_size": 3},
}
SCALE = {"fvsbn": 3.0, "nade": 8.0, "made": 3.0, "pixelcnn": 2.5}
# MADE+mixture: the second mask visits 2, 0, 1 first, then the rest in a shuffled order, so
# observing {0, 1, 2} is order-compatible with both masks and observing {0} with the first only.
SECOND_ORDER = [2, 0, 1, 6, 3, 7, 5, 4]  # dimensions in visiting order


def model_for(name: str, seed: int = 0, **settings) -> genmodels.GenerativeModel:
    family = name.split("+")[0]
    torch.manual_seed(seed)
    model = genmodels.build(family, SHAPE, seed=seed, **FAMILIES[name], **settings)
    if name == "made+mixture":
        position = torch.empty(D, dtype=torch.long)
        position[torch.tensor(SECOND_ORDER)] = torch.arange(1, D + 1)
        masks = made_masks(made_degrees(D, (24,), position, torch.Generator().manual_seed(seed)))
        with torch.no_grad():
            model.orders[1] = position
            for layer, m in zip(model.layers, masks):
                layer.masks[1] = m
            model.direct.masks[1] = (position[:, None] > position[None, :]).float()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(SCALE[family])  # peaked, so that conditioning matters
    return model.eval()


def mask_of(observed: list[int]) -> torch.Tensor:
    m = torch.zeros(D)
    m[observed] = 1.0
    return m


def state_index(flat: torch.Tensor) -> torch.Tensor:
    return (flat.long() * BITS).sum(-1)


def joint(model) -> torch.Tensor:
    with torch.no_grad():
        return model.log_prob(STATES.view(-1, *SHAPE)).double().softmax(0)  # sums to 1 already


def hardest_x(model, observed: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed values whose exact conditional is farthest (TV) from the missing entries'
    marginal, and that conditional over all 256 states (zero off the observed values)."""
    p = joint(model)
    missing = [d for d in range(D) if d not in observed]
    miss_code = (STATES[:, missing].long() * 2 ** torch.arange(len(missing) - 1, -1, -1)).sum(-1)
    marginal = torch.zeros(2 ** len(missing), dtype=torch.double).index_add_(0, miss_code, p)
    best = None
    for i in range(len(STATES)):
        x = STATES[i]
        consistent = (STATES[:, observed] == x[observed]).all(1)
        cond = torch.where(consistent, p, 0.0)
        cond = cond / cond.sum()
        tv = 0.5 * (cond[consistent] - marginal[miss_code[consistent]]).abs().sum().item()
        if best is None or tv > best[0]:
            best = (tv, x, cond)
    assert best[0] >= 0.2, "the test model is too weakly coupled for conditioning to matter"
    return best[1], best[2]


def tv_of(samples_flat: torch.Tensor, target: torch.Tensor) -> float:
    counts = torch.bincount(state_index(samples_flat), minlength=len(STATES)).double()
    return 0.5 * (counts / counts.sum() - target).abs().sum().item()


def impute_flat(model, x_flat, mask_flat, n, seed=0):
    out = model.impute(
        x_flat.view(1, *SHAPE),
        mask_flat.view(1, *SHAPE),
        generator=torch.Generator().manual_seed(seed),
        num_samples=n,
    )
    return out, out.samples.reshape(n, D)


def conditional_given(model, x: torch.Tensor, observed: list[int]) -> torch.Tensor:
    p = joint(model)
    cond = torch.where((STATES[:, observed] == x[observed]).all(1), p, 0.0)
    return cond / cond.sum()


def check_against_enumeration(model, observed, draws=DRAWS, tol=0.03, flip=False):
    """Impute the hardest observed values (or, with ``flip``, their complement, which the
    control need not fail on) and compare with the exact conditional."""
    x, cond = hardest_x(model, observed)
    if flip:
        x = 1 - x
        cond = conditional_given(model, x, observed)
    out, flat = impute_flat(model, x, mask_of(observed), draws)
    tv = tv_of(flat, cond)
    if not flip:
        # The wrong sampler: unconditional samples, observed entries overwritten by x's.
        wrong = model.sample(draws, generator=torch.Generator().manual_seed(99))
        wrong = wrong.reshape(draws, D)
        wrong[:, observed] = x[observed]
        tv_wrong = tv_of(wrong, cond)
        assert tv_wrong >= 0.1, f"control sampler is not wrong enough ({tv_wrong:.3f})"
    assert tv <= tol, f"TV {tv:.4f} from the exact conditional ({out.method})"
    exact_lp = math.log(cond[state_index(x)].item())  # log p(x_mis | x_obs) of x's own values
    return out, exact_lp


# ------------------------------------------------------------------------ exactness: compatible
def first_in_order(model, count: int) -> list[int]:
    order = torch.argsort(model._ar_positions()[0]).tolist()
    return sorted(order[:count])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_order_compatible_mask_is_exact(name):
    model = model_for(name)
    observed = [0, 1, 2] if name == "made+mixture" else first_in_order(model, 3)
    want = "ancestral-exact" if name != "made+mixture" else "mask-posterior+ancestral-exact"
    for flip in (False, True):  # two sets of observed values (not only zeros, say)
        out, exact_lp = check_against_enumeration(model, observed, flip=flip)
        assert out.method == want
        assert out.log_prob_method == "exact" and out.stderr is None
        assert out.log_prob_missing.item() == pytest.approx(exact_lp, abs=1e-4)


@pytest.mark.parametrize("name", ["fvsbn", "made+mixture"])
def test_nothing_observed_gives_plain_samples(name):
    """Over all 256 states sampling noise alone is ~0.03 TV at 20,000 draws: the imputations
    must be as close to p(x) as the model's own sampler, and samples of another model are not."""
    model = model_for(name)
    out, flat = impute_flat(model, torch.zeros(D), torch.zeros(D), DRAWS)
    assert out.method.endswith("ancestral-exact")
    p = joint(model)
    own = model.sample(DRAWS, generator=torch.Generator().manual_seed(3)).reshape(DRAWS, D)
    other = model_for(name, seed=1).sample(DRAWS, generator=torch.Generator().manual_seed(3))
    assert tv_of(flat, p) <= tv_of(own, p) + 0.015
    assert tv_of(other.reshape(DRAWS, D), p) >= 0.1
    assert out.log_prob_missing.item() == pytest.approx(math.log(joint(model)[0].item()), abs=1e-4)


# ----------------------------------------------------------------------- exactness: incompatible
INCOMPATIBLE = [1, 4, 6]  # missing 0, 2, 3, 5, 7: a missing entry precedes an observed one


@pytest.mark.parametrize(
    "name, observed",
    [
        ("fvsbn", INCOMPATIBLE),
        ("nade+order", INCOMPATIBLE),
        ("made+mixture", INCOMPATIBLE),
        ("made+mixture", [0, 1]),  # compatible with the first mask only: still needs MCMC
    ],
)
def test_gibbs_mixes_to_the_exact_conditional(name, observed):
    # One proposal = no resampling: the start is the sequential proposal, wrong on its own.
    model = model_for(name, impute_proposals=1, impute_sweeps=6)
    out, *_ = check_against_enumeration(model, observed)
    assert out.method == "sir-k=1+gibbs-sweeps=6"


@pytest.mark.parametrize("name", ["fvsbn", "made+mixture"])
def test_importance_resampling_alone_and_the_log_prob_estimate(name):
    model = model_for(name, impute_proposals=64, impute_sweeps=0)
    out, exact_lp = check_against_enumeration(model, INCOMPATIBLE, draws=5000, tol=0.05)
    assert out.method == "sir-k=64+gibbs-sweeps=0"
    assert out.log_prob_method.startswith("estimate:")
    est, se = out.log_prob_missing.item(), out.stderr.item()
    assert 0 < se < 0.05
    assert abs(est - exact_lp) <= 4 * se + 1e-3, (est, exact_lp, se)


def test_the_proposal_alone_is_not_the_conditional():
    """Zero sweeps and one proposal is the plain sequential proposal: the Gibbs test above
    would fail without its sweeps (this is what makes it able to fail)."""
    model = model_for("fvsbn", impute_proposals=1, impute_sweeps=0)
    x, cond = hardest_x(model, INCOMPATIBLE)
    _, flat = impute_flat(model, x, mask_of(INCOMPATIBLE), DRAWS)
    assert tv_of(flat, cond) > 0.1


# ---------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", list(FAMILIES))
def test_contract_of_impute(name):
    model = model_for(name, impute_sweeps=2, impute_proposals=3)
    assert "impute" in model.capabilities
    g = torch.Generator().manual_seed(5)
    x = torch.bernoulli(torch.full((5, *SHAPE), 0.5), generator=g)
    mask = torch.bernoulli(torch.full((5, *SHAPE), 0.5), generator=g)
    mask[0] = 1  # nothing missing
    mask[1] = 0  # nothing observed
    mask[2] = mask_of(first_in_order(model, 3)).view(SHAPE)  # compatible with the first order
    mask[3] = torch.tensor([0.0, 1, 0, 0, 1, 0, 1, 0]).view(SHAPE)  # incompatible everywhere
    out = model.impute(x, mask, generator=torch.Generator().manual_seed(1), num_samples=4)
    again = model.impute(x, mask, generator=torch.Generator().manual_seed(1), num_samples=4)
    other = model.impute(x, mask, generator=torch.Generator().manual_seed(2), num_samples=4)
    assert out.samples.shape == (4, 5, *SHAPE)
    assert set(out.samples.unique().tolist()) <= {0.0, 1.0}
    keep = mask.bool().expand_as(out.samples)
    assert torch.equal(out.samples[keep], x.expand_as(out.samples)[keep])
    assert torch.equal(out.samples[:, 0], x[0].expand(4, *SHAPE))
    assert torch.equal(out.samples, again.samples)
    assert torch.equal(out.log_prob_missing, again.log_prob_missing)
    assert not torch.equal(out.samples, other.samples)
    assert "sir-k=3+gibbs-sweeps=2" in out.method
    assert out.log_prob_missing.shape == (5,) and torch.isfinite(out.log_prob_missing).all()
    assert out.log_prob_missing[0] == 0 and (out.log_prob_missing[1:] < 0).all()
    assert out.log_prob_method.startswith("estimate:") and out.stderr.shape == (5,)
    # The compatible row alone is exact, and the same under its own call.
    alone = model.impute(x[2:3], mask[2:3], generator=torch.Generator().manual_seed(1))
    if name != "made+mixture":
        assert alone.method == "ancestral-exact" and alone.log_prob_method == "exact"
        assert alone.log_prob_missing.item() == pytest.approx(out.log_prob_missing[2].item())
    nothing = model.impute(x, torch.ones_like(x), generator=torch.Generator().manual_seed(1))
    assert torch.equal(nothing.samples[0], x)


@pytest.mark.parametrize("family", ["fvsbn", "nade", "made", "pixelcnn"])
def test_settings_are_validated(family):
    with pytest.raises(ValueError, match="impute_sweeps"):
        genmodels.build(family, SHAPE, impute_sweeps=-1)
    with pytest.raises(ValueError, match="impute_proposals"):
        genmodels.build(family, SHAPE, impute_proposals=0)


def test_discrete_pixelcnn_mh_gibbs_targets_the_conditional():
    """8-bit-style data (L = 4 levels, 4 pixels = 256 states): Metropolis-within-Gibbs with the
    autoregressive conditional as proposal mixes to the exact conditional."""
    torch.manual_seed(0)
    model = genmodels.build(
        "pixelcnn", (1, 2, 2), levels=4, channels=8, num_layers=2, kernel_size=3,
        impute_proposals=1, impute_sweeps=6,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.5)
    model.eval()
    states = torch.tensor(list(itertools.product(range(4), repeat=4)), dtype=torch.float)
    with torch.no_grad():
        p = model.log_prob(states.view(-1, 1, 2, 2)).double().softmax(0)
    best = None
    for v in range(4):
        consistent = states[:, 3] == v
        cond = torch.where(consistent, p, 0.0)
        cond = cond / cond.sum()
        marg = p.view(64, 4).sum(1)  # the first three pixels' marginal
        tv = 0.5 * (cond.view(64, 4)[:, v] - marg).abs().sum().item()
        if best is None or tv > best[0]:
            best = (tv, v, cond)
    _, v, cond = best
    x = torch.tensor([0.0, 0, 0, v]).view(1, 1, 2, 2)
    mask = torch.tensor([0.0, 0, 0, 1]).view(1, 1, 2, 2)  # every missing pixel precedes it
    out = model.impute(x, mask, generator=torch.Generator().manual_seed(0), num_samples=DRAWS)
    assert out.method == "sir-k=1+mh-gibbs-sweeps=6"
    flat = out.samples.reshape(DRAWS, 4)
    emp = torch.bincount((flat.long() * 4 ** torch.arange(3, -1, -1)).sum(-1), minlength=256)
    tv = 0.5 * (emp.double() / DRAWS - cond).abs().sum().item()
    wrong = model.sample(DRAWS, generator=torch.Generator().manual_seed(9)).reshape(DRAWS, 4)
    wrong[:, 3] = v
    emp_w = torch.bincount((wrong.long() * 4 ** torch.arange(3, -1, -1)).sum(-1), minlength=256)
    assert 0.5 * (emp_w.double() / DRAWS - cond).abs().sum().item() >= 0.1
    assert tv <= 0.03, tv
