"""Real NVP's maths: exact inverse, log-det vs the autograd Jacobian, densities that integrate to 1,
the discrete likelihood's accounting (dequantisation, logit, -D log L), batch independence and
sampling in the data space."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import genmodels
import genmodels.realnvp
from genmodels.base import log_mean_exp
from genmodels.flows import ActNorm, CheckerboardCoupling, ResidualNet, SplitCoupling, data_init

TINY = {"hidden_channels": 8, "num_res_blocks": 1, "num_coupling": 2}


def build(shape, levels=2, seed=0, **overrides) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    return genmodels.build("realnvp", input_shape=shape, levels=levels, **{**TINY, **overrides})


def perturb(model, std=0.2, seed=0):
    """Random ActNorms and larger coupling outputs: a flow far from the identity (about 2 nats
    of KL from the base density for the flat D = 2 model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ResidualNet):
                for p in m.out.parameters():
                    p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif isinstance(m, ActNorm):
                m.log_scale.copy_(0.1 * torch.randn(m.log_scale.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def to_identity(model):
    """Zero every conditioner's output layer: s = t = 0; fresh ActNorms are the identity too."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ResidualNet):
                m.out.weight.zero_()
                m.out.bias.zero_()
    return model


def train_steps(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(n):
        x = torch.randint(0, model.levels, (16, *model.input_shape), generator=g)
        opt.zero_grad()
        model({"x": x.float()})["loss"].backward()
        opt.step()
    return model


def grid_rule(lo_t: float, hi_t: float, n: int, alpha: float, breaks=()):
    """Quadrature over the logit transform's image, (-alpha, 1 - alpha) / (1 - 2 alpha): nodes
    y = (sigmoid(t) - alpha) / (1 - 2 alpha) for evenly spaced t (dense near the edges, where
    the density piles up), plus ``breaks``; returns cell midpoints and widths (no Jacobian)."""
    t = torch.linspace(lo_t, hi_t, n + 1, dtype=torch.float64)
    nodes = (torch.sigmoid(t) - alpha) / (1 - 2 * alpha)
    nodes = torch.cat([nodes, torch.tensor(breaks, dtype=torch.float64)]).sort().values
    return (nodes[1:] + nodes[:-1]) / 2, nodes[1:] - nodes[:-1]


def integrate_2d(log_density, mids, widths) -> float:
    """sum over the product grid of exp(log_density(point)) * cell area."""
    a, b = torch.meshgrid(mids, mids, indexing="ij")
    with torch.no_grad():
        dens = log_density(torch.stack([a.flatten(), b.flatten()], 1)).exp()
    return (dens * torch.outer(widths, widths).flatten()).sum().item()


# ----------------------------------------------------------------------------------- the flow
@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 4, 8), (5,)])
@pytest.mark.parametrize("trained", [False, True])
def test_inverse_recovers_input(shape, trained):
    model = perturb(build(shape, num_scales=2))
    if trained:
        train_steps(model)
        norms = [m for m in model.modules() if isinstance(m, ActNorm)]
        assert norms and all(bool(m.initialized) for m in norms)
    model.eval()
    z0 = 2 * torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, _ = model.flow_forward(z0)
        assert z.shape == (7, math.prod(shape))
        assert (model.flow_inverse(z) - z0).abs().max() < 1e-4
        assert (model.flow_forward(model.flow_inverse(z))[0] - z).abs().max() < 1e-4


def logdet_error(model, z0: torch.Tensor) -> float:
    """max |flow log-det - log|det J|| over the rows of z0, J by autograd."""
    worst = 0.0
    for row in z0:

        def f(v, row=row):
            return model.flow_forward(v.view(1, *row.shape))[0].squeeze(0)

        jac = torch.autograd.functional.jacobian(f, row.flatten())
        _, log_abs_det = torch.linalg.slogdet(jac)
        log_det = model.flow_forward(row.unsqueeze(0))[1].squeeze(0)
        worst = max(worst, (log_det - log_abs_det).abs().item())
    return worst


@pytest.mark.parametrize("shape", [(1, 4, 4), (4,)])
def test_logdet_matches_autograd_jacobian(shape, monkeypatch):
    model = perturb(train_steps(build(shape)).double()).eval()
    z0 = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert logdet_error(model, z0) < 1e-4

    # Control: a flow that forgets one coupling's log-det term fails the same check.
    coupling = next(
        m for m in model.modules() if isinstance(m, CheckerboardCoupling | SplitCoupling)
    )
    forward = coupling.forward
    monkeypatch.setattr(coupling, "forward", lambda x: (forward(x)[0], x.new_zeros(len(x))))
    assert logdet_error(model, z0) > 1e-3


def test_flow_density_integrates_to_one_on_the_plane():
    model = perturb(build((2,)).double()).eval()
    x = torch.linspace(-10, 10, 401, dtype=torch.float64)  # cells of width 0.05
    mids, widths = (x[1:] + x[:-1]) / 2, x[1:] - x[:-1]
    assert integrate_2d(model.log_density_z0, mids, widths) == pytest.approx(1.0, abs=1e-2)

    # Control: the same density without the flow's log-det does not integrate to 1.
    def no_log_det(z0):
        return genmodels.realnvp.std_normal_log_prob(model.flow_forward(z0)[0])

    assert abs(integrate_2d(no_log_det, mids, widths) - 1.0) > 0.05
    # ... and the flow is far from the base density.
    base = genmodels.realnvp.std_normal_log_prob(torch.tensor([[0.0, 0.0]], dtype=torch.float64))
    assert abs(model.log_density_z0(torch.zeros(1, 2, dtype=torch.float64)) - base).item() > 0.2


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_density_of_y_integrates_to_one(alpha):
    """p_y, logit Jacobian included, over the image of the logit transform: the open unit square
    when alpha = 0."""
    model = perturb(build((2,), alpha=alpha).double()).eval()
    mids, widths = grid_rule(-25.0, 25.0, 400, alpha)
    assert integrate_2d(model.log_density_y, mids, widths) == pytest.approx(1.0, abs=1e-2)

    # Control: dropping the logit transform's Jacobian breaks normalisation.
    def no_logit_jacobian(y):
        p = alpha + (1 - 2 * alpha) * y
        return model.log_density_z0(torch.logit(p))

    assert abs(integrate_2d(no_logit_jacobian, mids, widths) - 1.0) > 0.05


# ------------------------------------------------------------------ the discrete likelihood
def test_identity_flow_log_prob_has_the_closed_form():
    """With s = t = 0 and ActNorm at the identity, z = z0 (up to the order of the latents)."""
    levels, alpha = 256, 0.05
    model = to_identity(build((1, 4, 4), levels=levels, num_scales=2).double()).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, levels, (5, 1, 4, 4), generator=g).double()
    u = torch.rand(x.shape, generator=g, dtype=torch.float64)

    def by_hand(u):
        y = (x + u) / levels
        p = alpha + (1 - 2 * alpha) * y
        z = torch.log(p / (1 - p))
        log_normal = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
        log_dz_dy = math.log(1 - 2 * alpha) - torch.log(p * (1 - p))
        return (log_normal + log_dz_dy).flatten(1).sum(1) - 16 * math.log(levels)

    expected = by_hand(u)
    with torch.no_grad():
        assert torch.allclose(model.dequant_log_prob(x, u), expected, atol=1e-9)
        # log_prob = log-mean-exp over k draws of u, one (k, B, ...) block from the generator.
        got = model.log_prob(x, generator=torch.Generator().manual_seed(4), k=3)
    u3 = torch.rand((3, *x.shape), generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    assert torch.allclose(got, log_mean_exp(torch.stack([by_hand(u) for u in u3]), 0), atol=1e-9)


@pytest.mark.parametrize("std", [None, 0.2])
def test_discrete_probabilities_match_cell_masses_and_sum_below_one(std):
    """D = 2, L = 3: P(x) is p_y's mass on x's cell; the IW estimate with many draws matches the
    mass by quadrature, and the 9 probabilities sum to at most 1 (alpha > 0 leaks some mass out
    of the unit square: little near the identity, more for the perturbed flow)."""
    levels = 3
    model = build((2,), levels=levels, dequant_samples=4000).double().eval()
    if std is not None:
        perturb(model, std)
    states = torch.tensor(list(itertools.product(range(levels), repeat=2)), dtype=torch.float64)
    with torch.no_grad():
        res = model.score(states, generator=torch.Generator().manual_seed(5))
    t = (torch.arange(100, dtype=torch.float64) + 0.5) / 100
    quad = []
    for x in states:
        a, b = torch.meshgrid((x[0] + t) / levels, (x[1] + t) / levels, indexing="ij")
        with torch.no_grad():
            dens = model.log_density_y(torch.stack([a.flatten(), b.flatten()], 1)).exp()
        quad.append(dens.mean().item() / levels**2)
    quad = torch.tensor(quad, dtype=torch.float64)
    assert ((res.log_prob - quad.log()).abs() < 4 * res.stderr + 1e-3).all()
    est = res.log_prob.exp()
    assert quad.sum() <= 1.0 and est.sum() <= 1.0 + 5e-3
    if std is None:
        assert est.sum() > 0.95


def test_eval_density_does_not_depend_on_the_batch():
    model = train_steps(perturb(build((1, 4, 4), levels=4)), n=2)
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 4, (6, 1, 4, 4), generator=g).float()
    u = torch.rand(x.shape, generator=g)
    for mode in (model.eval, model.train):
        mode()
        with torch.no_grad():
            alone = model.dequant_log_prob(x[:1], u[:1])
            in_batch = model.dequant_log_prob(x, u)[:1]
            assert torch.allclose(alone, in_batch, atol=1e-4)

    # Control: ActNorm's data-dependent initialisation does depend on the batch it sees.
    def first_batch_density(rows):
        fresh = build((1, 4, 4), levels=4)
        with torch.no_grad(), data_init(fresh):
            return fresh.dequant_log_prob(x[:rows], u[:rows])[:1]

    assert not torch.allclose(first_batch_density(1), first_batch_density(6), atol=1e-2)


@pytest.mark.parametrize("shape", [(64, 3), (16, 3, 4, 4)])
def test_actnorm_data_init_normalises_its_first_batch(shape):
    norm = ActNorm(3)
    x = 3 + 2 * torch.randn(shape, generator=torch.Generator().manual_seed(13))
    with data_init(norm):
        y, log_det = norm(x)
    dims = [0, *range(2, len(shape))]
    assert torch.allclose(y.mean(dims), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dims, unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(log_det, (norm.log_scale.sum() * math.prod(shape[2:])).expand(len(x)))
    assert torch.allclose(norm.inverse(y), x, atol=1e-5)


def test_actnorm_initialises_once_from_the_first_training_batch():
    model = build((3,), levels=5)
    first = model.flow[0]
    x = torch.randint(0, 5, (64, 3), generator=torch.Generator().manual_seed(7)).float()
    model({"x": x})
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert bool(state["initialized"]) and state["log_scale"].abs().sum() > 0
    model({"x": x[:8] * 0})  # a second batch, very different: no re-initialisation
    assert all(torch.equal(state[k], v) for k, v in first.state_dict().items())


def test_score_reports_the_method_and_stderr():
    model = perturb(build((1, 4, 4), levels=4)).eval()
    x = torch.randint(0, 4, (3, 1, 4, 4), generator=torch.Generator().manual_seed(8)).float()
    with torch.no_grad():
        res = model.score(x, generator=torch.Generator().manual_seed(0))
        same = model.log_prob(x, generator=torch.Generator().manual_seed(0))
        one = build((1, 4, 4), levels=4, dequant_samples=1).score(x)
    assert res.method == "dequant-iw-k=4" and torch.equal(res.log_prob, same)
    assert res.stderr is not None and (res.stderr > 0).all() and torch.isfinite(res.stderr).all()
    assert one.method == "dequant-k=1" and one.stderr is None


# ------------------------------------------------------------------------- sampling, embedding
@pytest.mark.parametrize(("shape", "levels"), [((1, 4, 4), 4), ((3,), 5)])
def test_samples_are_integers_in_the_data_space(shape, levels):
    model = perturb(build(shape, levels=levels)).eval()
    x = model.sample(50, generator=torch.Generator().manual_seed(9))
    assert x.shape == (50, *shape) and x.dtype == torch.float32
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= levels - 1
    assert len(x.unique()) > 1
    y = model.sample_continuous(50, generator=torch.Generator().manual_seed(9))
    assert torch.equal(x, (y * levels).floor().clamp(0, levels - 1))
    # Temperature 0: z = 0, the same "mean" image whatever the generator.
    mean_a = model.sample(3, generator=torch.Generator().manual_seed(1), temperature=0.0)
    mean_b = model.sample(3, generator=torch.Generator().manual_seed(2), temperature=0.0)
    assert torch.equal(mean_a, mean_b) and torch.equal(mean_a[0], mean_a[1])
    # For the identity flow it is the centre of the cube, y = 1/2.
    ident = to_identity(build(shape, levels=levels)).eval()
    assert torch.allclose(ident.sample_continuous(2, temperature=0.0), torch.tensor(0.5))


def test_sample_frequencies_match_the_model():
    """D = 2, L = 3: sample frequencies = p_y's mass on each cell, the edge cells extended to
    the logit's image (samples there are clipped into 0..L-1)."""
    levels, alpha, n = 3, 0.05, 20000
    model = perturb(build((2,), levels=levels).double(), std=0.3).eval()
    x = model.sample(n, generator=torch.Generator().manual_seed(10))
    freq = torch.zeros(levels, levels, dtype=torch.float64)
    freq.index_put_((x[:, 0].long(), x[:, 1].long()), torch.ones(n, dtype=torch.float64), True)
    freq /= n
    mids, widths = grid_rule(-25.0, 25.0, 600, alpha, breaks=(1 / 3, 2 / 3))
    a, b = torch.meshgrid(mids, mids, indexing="ij")
    with torch.no_grad():
        dens = model.log_density_y(torch.stack([a.flatten(), b.flatten()], 1)).exp()
    mass = (dens * torch.outer(widths, widths).flatten()).view(len(mids), len(mids))
    cell = (mids * levels).floor().clamp(0, levels - 1).long()
    expected = torch.zeros(levels, levels, dtype=torch.float64)
    for i, j in itertools.product(range(levels), repeat=2):
        expected[i, j] = mass[cell == i][:, cell == j].sum()
    assert expected.sum().item() == pytest.approx(1.0, abs=1e-2)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() < 5 * se + 3e-3).all()


def test_embed_is_the_latent_at_the_cell_centre():
    """The embedding is the latent of x's cell centre: the flow's inverse takes it back to a
    point y with L y = x + 1/2 (the sampler's floor(L y) then gives x back), different inputs
    get different latents, and nothing in it is random."""
    model = perturb(build((1, 4, 4), levels=4)).eval()
    x = torch.randint(0, 4, (3, 1, 4, 4), generator=torch.Generator().manual_seed(11)).float()
    a = model.config.alpha
    with torch.no_grad():
        e = model.embed(x)
        assert e.shape == (3, 16)
        y = (torch.sigmoid(model.flow_inverse(e)) - a) / (1 - 2 * a)  # latent -> data space
        torch.testing.assert_close(4 * y, x + 0.5, atol=1e-4, rtol=0)
        assert torch.equal((4 * y).floor(), x)
        assert torch.cdist(e, e).add(torch.eye(3)).min() > 0.1  # injective on these inputs
        assert torch.equal(e, model.embed(x))
        # The latent is the flow's output, not its input: it differs from the logit itself.
        assert (e - torch.logit(a + (1 - 2 * a) * (x + 0.5) / 4).flatten(1)).abs().max() > 0.1


def test_training_lowers_the_negative_log_likelihood():
    g = torch.Generator().manual_seed(12)
    data = torch.stack([torch.randint(0, 2, (256,), generator=g).float() * 3, torch.zeros(256)], 1)
    model = build((2,), levels=4, lr=1e-2)
    opt = model.configure_optimizers()["main"]
    with torch.no_grad():
        before = -model.eval().log_prob(data, generator=torch.Generator().manual_seed(0)).mean()
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model({"x": data})["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = -model.eval().log_prob(data, generator=torch.Generator().manual_seed(0)).mean()
    assert after < before - 0.5  # the data have ln 2 = 0.69 nats of entropy; chance is ln 16


def test_rejects_shapes_and_values_it_cannot_handle():
    with pytest.raises(ValueError, match="divisible by 2"):
        build((1, 3, 4), num_scales=2)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        build((1, 2, 2), num_scales=2)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        build((1,))
    with pytest.raises(ValueError, match="alpha"):
        build((4,), alpha=0.5)
    build((1, 3, 4), num_scales=1)  # one scale needs no squeeze: any shape with 2+ pixels
