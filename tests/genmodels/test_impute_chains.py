"""Imputation by clamped chains: the RBM and DBM (clamped block Gibbs, exact in the limit: checked
against the enumerated conditional of 8-unit models) and the GSN (clamped walkback chain,
approximate), plus the protocol checks shared with the inpainting families (GAN, AAE)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

import genmodels
from genmodels.rbm import binary_codes
from tests.genmodels.test_contract import SHAPE, TINY

FAMILIES = ["rbm", "dbm", "gsn", "gan", "aae"]
CODES = binary_codes(0, 256, 8, torch.float64, "cpu")  # every 8-bit state, (256, 8)
POWERS = 2 ** torch.arange(7, -1, -1)


def tiny(name: str, seed: int = 0, **overrides) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    return genmodels.build(name, SHAPE, **{**TINY[name], **overrides}).eval()


def digits(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary batch and a random mask with some of everything in every row."""
    g = torch.Generator().manual_seed(11)
    x = torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=g)
    mask = torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=g)
    mask.view(n, -1)[:, 0], mask.view(n, -1)[:, 1] = 1, 0
    return x, mask


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ protocol, per family
@pytest.mark.parametrize("name", FAMILIES)
def test_impute_keeps_observed_entries_in_the_data_space_and_reproduces(name):
    model = tiny(name)
    assert "impute" in model.capabilities
    x, mask = digits()
    a = model.impute(x, mask, seeded(3), num_samples=4)
    assert a.samples.shape == (4, *x.shape)
    assert set(a.samples.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.samples * mask, (x * mask).expand_as(a.samples))
    assert a.method and any(ch.isdigit() for ch in a.method)  # its settings are stated
    b = model.impute(x, mask, seeded(3), num_samples=4)
    assert torch.equal(a.samples, b.samples)
    c = model.impute(x, mask, seeded(4), num_samples=4)
    assert not torch.equal(a.samples, c.samples)
    # the S imputations of one example differ (independent chains / restarts)
    assert any(not torch.equal(a.samples[0, i], a.samples[1, i]) for i in range(len(x)))


@pytest.mark.parametrize("name", FAMILIES)
def test_all_observed_rows_come_back_and_all_missing_rows_are_plain_samples(name):
    model = tiny(name)
    x, mask = digits(4)
    full = model.impute(x, torch.ones_like(mask), seeded(0), num_samples=2)
    assert torch.equal(full.samples, x.expand(2, *x.shape))
    if full.log_prob_missing is not None:
        assert torch.equal(full.log_prob_missing, torch.zeros(len(x)))
    # nothing observed: exactly the family's sampler, drawn from the same seed
    none = model.impute(x, torch.zeros_like(mask), seeded(5), num_samples=3)
    plain = model.sample(3 * len(x), generator=seeded(5))
    assert torch.equal(none.samples, plain.view(3, *x.shape))


@pytest.mark.parametrize("name", FAMILIES)
def test_impute_leaves_the_model_untouched(name):
    model = tiny(name).train()  # BatchNorm in train mode would update its statistics
    before = hashlib.sha256(
        b"".join(v.detach().numpy().tobytes() for v in model.state_dict().values())
    ).hexdigest()
    x, mask = digits()
    model.impute(x, mask, seeded(0), num_samples=2)
    after = hashlib.sha256(
        b"".join(v.detach().numpy().tobytes() for v in model.state_dict().values())
    ).hexdigest()
    assert before == after
    assert all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------- exactness: RBM, DBM
def strong_rbm(hidden: int = 4, **config) -> genmodels.GenerativeModel:
    """An 8-visible RBM with random weights big enough that conditioning matters."""
    torch.manual_seed(0)
    config = {"sample_steps": 100, **config}  # plenty for 8 units; the control samples from it
    model = genmodels.build("rbm", (8,), hidden_size=hidden, **config).eval()
    g = seeded(1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(hidden, 8, generator=g) * 1.5)
        model.visible_bias.copy_(torch.randn(8, generator=g) * 0.5)
        model.hidden_bias.copy_(torch.randn(hidden, generator=g) * 0.5)
    return model


def strong_dbm(**config) -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    config = {"sample_steps": 100, **config}
    model = genmodels.build("dbm", (8,), hidden_sizes=(4, 3), **config).eval()
    g = seeded(2)
    with torch.no_grad():
        model.w1.copy_(torch.randn(8, 4, generator=g) * 2.0)
        model.w2.copy_(torch.randn(4, 3, generator=g) * 3.0)
        model.bias_v.copy_(torch.randn(8, generator=g) * 0.5)
        model.bias_h1.copy_(torch.randn(4, generator=g) * 0.5)
        model.bias_h2.copy_(torch.randn(3, generator=g) * 0.5)
    return model


@torch.no_grad()
def log_joint(model) -> torch.Tensor:
    """log p(v) of all 256 states by brute force, ``(256,)``."""
    if model.family == "rbm":
        log_f = -model.free_energy(CODES.float()).double()
    else:  # sum the 2^7 hidden states out directly
        hidden = binary_codes(0, 2**7, 7, torch.float64, "cpu")
        h1, h2 = hidden[:, :4], hidden[:, 4:]
        w1, w2, a, b1, b2 = model.params(torch.float64)
        energy = -(
            (CODES @ w1 @ h1.T)
            + (h1 @ w2 * h2).sum(1)
            + (CODES @ a)[:, None]
            + (h1 @ b1 + h2 @ b2)[None, :]
        )
        log_f = torch.logsumexp(-energy, 1)
    return log_f - torch.logsumexp(log_f, 0)


def conditional(log_p: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """p(v | v_obs = x_obs) over the 256 states, by enumeration."""
    consistent = ((CODES - x.double()).abs() * mask.double()).sum(1) == 0
    cond = log_p.masked_fill(~consistent, -math.inf)
    return (cond - torch.logsumexp(cond, 0)).exp()


def total_variation(draws: torch.Tensor, p: torch.Tensor) -> float:
    codes = (draws.long() * POWERS).sum(1)
    empirical = torch.bincount(codes, minlength=256).double() / len(draws)
    return 0.5 * float((empirical - p).abs().sum())


X8 = torch.tensor([1.0, 0, 1, 0, 0, 0, 0, 0])
MASK8 = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 0])  # 3 observed, 5 missing: 32 states


@pytest.mark.parametrize("make", [strong_rbm, strong_dbm], ids=["rbm", "dbm"])
def test_clamped_gibbs_samples_the_exact_conditional(make):
    model = make()
    target = conditional(log_joint(model), X8, MASK8)
    out = model.impute(X8[None], MASK8[None], seeded(0), num_samples=20_000)
    assert total_variation(out.samples[:, 0], target) <= 0.03
    # the wrong sampler, the model's unconditional draws of the missing units, is caught
    wrong = torch.where(MASK8.bool(), X8, model.sample(20_000, generator=seeded(1)))
    assert total_variation(wrong, target) >= 0.1


def test_rbm_clamped_gibbs_exact_for_a_second_mask_with_few_sweeps():
    model = strong_rbm(impute_sweeps=20, impute_mean_field=0)  # base-rate start, short chains
    x, mask = torch.tensor([0.0, 1, 1, 0, 1, 0, 0, 1]), torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1])
    target = conditional(log_joint(model), x, mask)
    out = model.impute(x[None], mask[None], seeded(2), num_samples=20_000)
    assert total_variation(out.samples[:, 0], target) <= 0.03
    wrong = torch.where(mask.bool(), x, model.sample(20_000, generator=seeded(1)))
    assert total_variation(wrong, target) >= 0.1


ROWS = torch.tensor(
    [[1.0, 0, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 1, 1, 0, 1], [0] * 8]
)
ROW_MASKS = torch.tensor(
    [[1.0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1, 0, 1], [0] * 8, [1, 0, 1, 1, 1, 1, 0, 1]]
)


def exact_log_prob_missing(model) -> torch.Tensor:
    log_p = log_joint(model)
    out = []
    for x, mask in zip(ROWS, ROW_MASKS):
        idx = int((x.long() * POWERS).sum())
        out.append(math.log(conditional(log_p, x, mask)[idx]))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(
    "make",
    [strong_rbm, lambda: strong_rbm(hidden=24), strong_dbm],
    ids=["rbm-hidden-enumerated", "rbm-visible-enumerated", "dbm"],
)
def test_log_prob_missing_is_exact_when_enumerable(make):
    model = make()
    out = model.impute(ROWS, ROW_MASKS, seeded(0))
    assert out.log_prob_method == "exact" and out.stderr is None
    torch.testing.assert_close(
        out.log_prob_missing.double(), exact_log_prob_missing(model), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("make", [strong_rbm, strong_dbm], ids=["rbm", "dbm"])
def test_log_prob_missing_estimate_by_conditional_ais(make):
    model = make(exact_max_units=0, impute_ais_chains=32, impute_ais_betas=300)
    out = model.impute(ROWS, ROW_MASKS, seeded(0))
    assert out.log_prob_method.startswith("estimate: conditional-ais-M=32-K=300")
    exact = exact_log_prob_missing(model)
    err = (out.log_prob_missing.double() - exact).abs()
    assert (err <= 0.05 + 4 * out.stderr.double()).all(), (out.log_prob_missing, exact)
    assert out.log_prob_missing[2] != 0 and out.stderr[2] >= 0
    off = make(exact_max_units=0, impute_ais_chains=0).impute(ROWS, ROW_MASKS, seeded(0))
    assert off.log_prob_missing is None and off.log_prob_method is None


# ---------------------------------------------------------------------------------------- GSN
def test_gsn_clamped_chain_completes_the_pattern_the_observed_half_implies():
    """A GSN trained on two complementary 16-pixel patterns: given one half, the clamped chain
    fills in the other half of the matching pattern; the unclamped chain cannot know which."""
    torch.manual_seed(0)
    model = genmodels.build("gsn", (16,), hidden_sizes=(32,), walkback=2, noise=0.3, lr=3e-3)
    pattern = (torch.arange(16) % 3 == 0).float()
    data = torch.stack([pattern, 1 - pattern]).repeat(32, 1)
    opt = model.configure_optimizers()["main"]
    for _ in range(300):
        opt.zero_grad()
        model({"x": data})["loss"].backward()
        opt.step()
    model.eval()
    x = torch.stack([pattern, 1 - pattern])
    mask = torch.zeros(2, 16)
    mask[:, :8] = 1
    out = model.impute(x, mask, seeded(0), num_samples=50)
    hits = (out.samples[..., 8:] == x[:, 8:]).float().mean()
    free = model.sample(100, generator=seeded(1)).view(50, 2, 16)
    free_hits = (free[..., 8:] == x[:, 8:]).float().mean()
    assert hits >= 0.9 and free_hits <= 0.7, (hits, free_hits)
    assert "clamped-walkback-chain-steps=100" in out.method
