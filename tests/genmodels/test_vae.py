"""The VAE's bounds: ELBO <= IWAE-k, rising with k, converging to the exact marginal likelihood."""

from __future__ import annotations

import math

import pytest
import torch

import genmodels


def tiny_vae(seed: int = 0) -> genmodels.GenerativeModel:
    """A 1-D latent VAE on 5 binary dims: log p(x) is computable by quadrature over z."""
    torch.manual_seed(seed)
    model = (
        genmodels.build("vae", input_shape=(5,), latent_dim=1, hidden_sizes=(16,), eval_chunk=500)
        .double()
        .eval()
    )
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(2.5)  # a decoder far from uniform
    return model


def exact_log_marginal(model, x: torch.Tensor) -> torch.Tensor:
    """log ∫ N(z; 0, 1) p(x|z) dz by the trapezoid rule on a fine grid (z ∈ [-10, 10])."""
    z = torch.linspace(-10.0, 10.0, 40001, dtype=torch.float64)
    dz = z[1] - z[0]
    log_joint = model.decoder_log_prob(x.double(), z[:, None, None].expand(-1, len(x), 1))
    log_joint = log_joint - 0.5 * (z[:, None] ** 2 + math.log(2 * math.pi))  # (G, B)
    weights = torch.full_like(z, dz.item())
    weights[[0, -1]] *= 0.5
    return torch.logsumexp(log_joint + weights.log()[:, None], dim=0)


X = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]]).double()


def test_quadrature_reference_normalises():
    """The reference itself: summed over all 32 states, p(x) by quadrature totals 1."""
    import itertools

    model = tiny_vae()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5))).double()
    with torch.no_grad():
        assert exact_log_marginal(model, states).exp().sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_iwae_converges_to_exact_marginal(seed):
    model = tiny_vae(seed)
    with torch.no_grad():
        exact = exact_log_marginal(model, X)
        est = model.score(X, generator=torch.Generator().manual_seed(0))  # eval_k default
        big = model.log_prob(X, generator=torch.Generator().manual_seed(1), k=20000)
    assert (big - exact).abs().max() < 0.02
    # IWAE is a (stochastic) lower bound: on average below the exact value, within a few stderr.
    assert ((est.log_prob - exact) < 3 * est.stderr + 1e-3).all()


def test_elbo_below_iwae_which_rises_with_k():
    model = tiny_vae(2)
    g = torch.Generator().manual_seed(0)
    reps = 2000
    with torch.no_grad():
        exact = exact_log_marginal(model, X)
        elbo_draws = model.elbo(X.repeat(20000, 1), generator=g).view(20000, len(X))
        iwae1_draws = model.log_weights(X, 20000, generator=g)
        elbo = elbo_draws.mean(0)
        means = []
        for k in (1, 5, 50):  # E[IWAE-k] from `reps` independent k-sample estimates
            lw = model.log_weights(X, reps * k, generator=g).view(reps, k, len(X))
            means.append((torch.logsumexp(lw, 1) - math.log(k)).mean(0))
    # IWAE-1 is the ELBO (here estimated two ways: analytic KL vs the plain Monte-Carlo weight).
    se = ((elbo_draws.var(0) + iwae1_draws.var(0)) / 20000).sqrt()
    assert ((elbo - iwae1_draws.mean(0)).abs() < 4 * se).all()
    assert (elbo <= means[1] + 1e-3).all() and (means[0] < means[1]).all()
    assert (means[1] < means[2]).all() and (means[2] <= exact + 1e-3).all()
    assert ((exact - elbo) > 0.01).any()  # the gap is real: the posterior is not exact


def exact_posterior_mean(model, x: torch.Tensor) -> torch.Tensor:
    """E[z | x] under the model's prior and decoder, by quadrature on a grid (``(B,)``)."""
    z = torch.linspace(-10.0, 10.0, 4001, dtype=torch.float64)
    log_joint = model.decoder_log_prob(x.double(), z[:, None, None].expand(-1, len(x), 1))
    weights = torch.softmax(log_joint - 0.5 * z[:, None] ** 2, dim=0)  # (G, B)
    return (weights * z[:, None]).sum(0)


def test_embed_is_the_posterior_mean():
    """Once the encoder is fitted to the decoder (300 ELBO steps on the encoder alone), the
    embedding is the true posterior mean E[z | x] (by quadrature) to within a fraction of the
    posterior's spread (sd 0.56-1.0 here; measured error <= 0.07); before fitting it is not
    (error 1.1). An embedding that returned the log-variance instead is off by 1.05."""
    model = tiny_vae(2)
    with torch.no_grad():
        target = exact_posterior_mean(model, X)
        assert model.embed(X).shape == (4, 1)
        unfitted = (model.embed(X)[:, 0] - target).abs().max().item()
    opt = torch.optim.Adam(model.encoder.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        opt.zero_grad()
        (-model.elbo(X.repeat(16, 1), generator=g).mean()).backward()
        opt.step()
    with torch.no_grad():
        error = (model.embed(X)[:, 0] - target).abs().max().item()
    assert error < 0.15 and unfitted > 0.5, (error, unfitted)
    assert target.max() - target.min() > 1.0  # the inputs' posteriors are far apart


# ---------------------------------------------------------------- VAE with an IAF posterior
def iaf_vae(seed: int = 0, steps: int = 2) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    model = genmodels.build(
        "vae", input_shape=(6,), latent_dim=4, hidden_sizes=(16,), iaf_steps=steps, iaf_hidden=8
    ).double()
    with torch.no_grad():
        for step in model.iaf:
            step.out.weight.normal_(0.0, 1.0)  # far from the near-identity initialisation
            step.out.bias.normal_(0.0, 1.0)
    return model.eval()


@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_step_inverts_and_log_det_matches_autograd(reverse):
    from genmodels.vae import IAFStep

    torch.manual_seed(0)
    step = IAFStep(dim=5, hidden=12, context=3, reverse=reverse).double()
    with torch.no_grad():
        step.out.weight.normal_(0.0, 1.0)
        step.out.bias.normal_(0.0, 1.0)
    z, h = torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    z_new, log_det = step(z, h)
    assert torch.allclose(step.inverse(z_new, h), z, atol=1e-9)
    jac = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], z)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det, atol=1e-9)
    # Autoregressive: triangular in the step's order, so the determinant is the diagonal's.
    order = step.order
    later = order[None, :] > order[:, None]  # input j comes after output i
    assert (jac[later].abs() < 1e-12).all() and (jac[~later].abs() > 0).any()


def test_iaf_log_det_check_catches_a_wrong_log_det():
    """Control: a log-det that forgets the (1 - sigma) * m coupling is still right (it only
    shifts), but one that uses sigma instead of log sigma is caught by the same check."""
    from genmodels.vae import IAFStep

    torch.manual_seed(1)
    step = IAFStep(dim=4, hidden=8, context=2, reverse=False).double()
    z, h = torch.randn(4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    _, s = step.shift_and_scale(z, h)
    wrong = torch.sigmoid(s).sum()
    jac = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], z)
    assert not torch.allclose(torch.linalg.slogdet(jac).logabsdet, wrong, atol=1e-3)


def test_iaf_posterior_log_density_matches_change_of_variables():
    """log q(z_T|x) from the model equals log q(z_0|x) - log|det dz_T/dz_0| by autograd."""
    model = iaf_vae()
    x = torch.tensor([[0, 1, 1, 0, 1, 0]], dtype=torch.float64)
    eps = torch.randn(1, 4, dtype=torch.float64)
    _, log_q = model.posterior(x, eps)
    mu, logvar, context = model._encode(x)

    def flow(z0):
        z = z0
        for step in model.iaf:
            z = step(z, context[0])[0]
        return z

    z0 = (mu + eps * (0.5 * logvar).exp())[0]
    log_q0 = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum()
    jac = torch.autograd.functional.jacobian(flow, z0)
    assert torch.allclose(log_q[0], log_q0 - torch.linalg.slogdet(jac).logabsdet, atol=1e-9)


def test_iaf_elbo_below_iwae_and_training_works():
    model = iaf_vae(seed=2)
    x = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = model.elbo(x.repeat(4000, 1), generator=g).view(4000, 2).mean(0)
        lw = model.log_weights(x, 200 * 50, generator=g).view(200, 50, 2)
        iwae50 = (torch.logsumexp(lw, 1) - math.log(50)).mean(0)
    assert (elbo < iwae50).all()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = x.repeat(32, 1)
    first = model({"x": data})["loss"].item()
    for _ in range(150):
        opt.zero_grad()
        model({"x": data})["loss"].backward()
        opt.step()
    assert model({"x": data})["loss"].item() < first - 1.0


# ------------------------------------------------------------ the local head and kl_weight
def tiny_headed_vae(seed: int = 0) -> genmodels.GenerativeModel:
    """A 1-D latent VAE on a (1, 2, 3) image with a 3x3 local autoregressive head whose weights
    are far from zero: log p(x) by quadrature over z, over all 64 states."""
    torch.manual_seed(seed)
    model = genmodels.build(
        "vae", input_shape=(1, 2, 3), latent_dim=1, hidden_sizes=(16,), ar_kernel=3
    ).double()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(2.5)
        model.ar.weight.normal_(0.0, 2.0)
    return model.eval()


def test_local_head_keeps_the_marginal_normalised_and_the_sampler_exact():
    """p(x) = int N(z) p(x | z) dz with the causal head sums to one over all 64 states, and the
    raster sampler's state frequencies match it; controls: a head that also sees the pixel itself
    and those after it does not normalise, and a sampler that skips the head is caught."""
    from tests.genmodels.checks import binary_states

    model = tiny_headed_vae()
    states = binary_states((1, 2, 3)).double()
    flat = states.flatten(1)
    with torch.no_grad():
        probs = exact_log_marginal(model, flat).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert probs.max() - probs.min() > 0.05  # far from uniform: the comparison has teeth

    n, weights = 40000, 2.0 ** torch.arange(5, -1, -1, dtype=torch.float64)

    def frequencies(x: torch.Tensor) -> torch.Tensor:
        idx = (x.double().flatten(1) @ weights).long()
        return torch.bincount(idx, minlength=64).double() / n

    x = model.sample(n, generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, 1, 2, 3)
    assert (frequencies(x) - probs).abs().max() < 0.01
    # control: the same draws without the head (independent pixels given z)
    g = torch.Generator().manual_seed(1)
    z = torch.randn((n, 1), generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model.decode(z)
    u = torch.rand(logits.shape, generator=g)
    headless = (u < torch.sigmoid(logits)).double()
    assert (frequencies(headless) - probs).abs().max() > 0.02
    with torch.no_grad():
        model.ar.mask.fill_(1.0)  # control: a head that leaks the pixel itself and later ones
        leaky = exact_log_marginal(model, flat).exp().sum().item()
    assert abs(leaky - 1.0) > 0.05


def test_kl_weight_changes_the_training_loss_not_the_reported_bound():
    """loss = -(log p(x|z) - beta KL) while the reported elbo stays the bound (beta = 1: the
    control, loss = -elbo); the same seed draws the same z, so the terms compare exactly."""
    x = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]).float()
    outs = {}
    for beta in (1.0, 3.0):
        torch.manual_seed(0)
        model = genmodels.build("vae", input_shape=(5,), latent_dim=2, kl_weight=beta)
        torch.manual_seed(1)
        outs[beta] = model({"x": x})
    for beta, out in outs.items():
        assert out["loss"].item() == pytest.approx(
            -out["elbo"].item() + (beta - 1.0) * out["kl"].item(), rel=1e-5
        )
    assert outs[3.0]["elbo"].item() == pytest.approx(outs[1.0]["elbo"].item(), rel=1e-6)
    assert outs[3.0]["loss"].item() > outs[1.0]["loss"].item() + outs[1.0]["kl"].item()


@pytest.mark.parametrize(
    ("shape", "config", "message"),
    [
        ((5,), {"kl_weight": 0.0}, "kl_weight"),
        ((5,), {"kl_weight": float("nan")}, "kl_weight"),
        ((5,), {"ar_kernel": 3}, "ar_kernel needs image inputs"),
        ((1, 4, 4), {"ar_kernel": 4}, "ar_kernel must be 0 or odd"),
    ],
)
def test_bad_options_are_refused(shape, config, message):
    with pytest.raises(ValueError, match=message):
        genmodels.build("vae", input_shape=shape, **config)


def test_a_headed_vae_does_not_offer_impute():
    assert "impute" in genmodels.build("vae", input_shape=(1, 4, 4)).capabilities
    assert "impute" not in genmodels.build("vae", input_shape=(1, 4, 4), ar_kernel=3).capabilities
