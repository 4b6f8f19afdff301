"""The AAE: each phase steps only its networks, the adversarial phases pull the aggregate posterior
onto N(0, I) (a plain autoencoder's codes stay far from it), and prior draws decode to data."""

from __future__ import annotations

import pytest
import torch

import genmodels
import genmodels.aae  # registers the family (the lead adds it to genmodels/__init__)

NETS = {
    "reconstruction": {"encoder", "decoder"},
    "discriminator": {"discriminator"},
    "generator": {"encoder"},
}


def small_aae(seed: int = 0, **config) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    kw = {"latent_dim": 2, "hidden_sizes": (32,), "disc_hidden": (32,), "lr": 3e-3}
    return genmodels.build("aae", input_shape=(16,), **{**kw, "adv_lr": 3e-3, **config})


def thermometer_data(n: int = 512) -> torch.Tensor:
    """Two 8-bit thermometer codes of independent N(0, 1) variables cut at their ninths: 81
    equally likely patterns on a 2-D grid, each half a run of ones followed by zeros."""
    z = torch.randn(n, 2, 1, generator=torch.Generator().manual_seed(0))
    cuts = torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, 9) / 9.0)
    return (z > cuts).float().flatten(1)  # (n, 16)


def is_thermometer(x: torch.Tensor) -> torch.Tensor:
    """``(B,)``: both 8-bit halves are non-increasing (ones, then zeros)."""
    halves = x.view(-1, 2, 8)
    return (halves[..., 1:] <= halves[..., :-1]).all(-1).all(-1)


def nets_of(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name.split(".")[0] for name, p in model.named_parameters() if id(p) in ids}


# ------------------------------------------------------------------------------------ phases
@pytest.mark.parametrize("phase", list(NETS))
def test_phase_parameters_are_exactly_the_intended_networks(phase):
    model = small_aae()
    params = list(model.phase_parameters(phase))
    assert nets_of(model, params) == NETS[phase]
    expected = [p for name in NETS[phase] for p in getattr(model, name).parameters()]
    assert len(params) == len(expected)


@pytest.mark.parametrize("encoder", ["deterministic", "gaussian"])
def test_each_phase_backward_and_step_touch_only_their_networks(encoder):
    model = small_aae(encoder=encoder)
    opts = model.configure_optimizers()
    x = thermometer_data(64)
    # Backward reaches: reconstruction the autoencoder; discriminator only D (codes detached);
    # generator the encoder through D (D's gradient is left unused: its optimiser is not stepped).
    reached = {"reconstruction": NETS["reconstruction"], "discriminator": {"discriminator"}}
    reached["generator"] = {"encoder", "discriminator"}
    for phase in model.phases:
        model.zero_grad(set_to_none=True)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model({"x": x}, phase=phase)["loss"].backward()
        with_grad = {
            name.split(".")[0]
            for name, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert with_grad == reached[phase], phase
        opts[phase].step()
        changed = {k.split(".")[0] for k, v in model.state_dict().items() if not v.equal(before[k])}
        assert changed == NETS[phase], phase


def test_adversarial_steps_move_in_the_right_directions():
    """One discriminator step lowers D's loss; one generator step raises D(code) (fools D)."""
    model = small_aae(adv_lr=1e-2)
    opts = model.configure_optimizers()
    x = {"x": thermometer_data(256)}

    def d_loss():
        torch.manual_seed(5)  # the same prior draws each time
        return model(x, phase="discriminator")["loss"]

    before = d_loss().item()
    opts["discriminator"].zero_grad()
    d_loss().backward()
    opts["discriminator"].step()
    assert d_loss().item() < before - 1e-3
    with torch.no_grad():
        d_code = model.discriminator(model.embed(x["x"])).mean().item()
    opts["generator"].zero_grad()
    model(x, phase="generator")["loss"].backward()
    opts["generator"].step()
    with torch.no_grad():
        assert model.discriminator(model.embed(x["x"])).mean().item() > d_code + 1e-3


# --------------------------------------------------------------------------------- training
def train(model, x: torch.Tensor, phases: tuple[str, ...], steps: int = 300):
    """Full-batch training stepping ``phases`` in order, as the trainer does."""
    opts = model.configure_optimizers()
    for _ in range(steps):
        for phase in phases:
            opts[phase].zero_grad(set_to_none=True)
            model({"x": x}, phase=phase)["loss"].backward()
            opts[phase].step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """An AAE and a control with the same networks trained without the adversarial phases."""
    x = thermometer_data()
    aae = train(small_aae(), x, genmodels.family_class("aae").phases)
    autoencoder = train(small_aae(), x, ("reconstruction",))
    return x, aae, autoencoder


def gaussian_kl_to_standard(z: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """KL(N(mean, cov) || N(0, I)) of the moment-matched Gaussian, and the mean and covariance."""
    mean, cov = z.mean(0), torch.cov(z.T)
    kl = 0.5 * (cov.trace() + mean @ mean - len(mean) - torch.logdet(cov))
    return kl.item(), mean, cov


def test_aggregate_posterior_matches_the_prior(trained):
    x, aae, autoencoder = trained
    with torch.no_grad():
        kl, mean, cov = gaussian_kl_to_standard(aae.embed(x))
        kl_control, _, _ = gaussian_kl_to_standard(autoencoder.embed(x))
    # Tolerances cover 16 seeds (worst: |mean| 0.30, |cov - I| 0.44, KL 0.23): the adversarial
    # game oscillates around the prior. The control's KL was 39 to 144.
    assert mean.abs().max() < 0.35, mean
    assert (cov - torch.eye(2)).abs().max() < 0.5, cov
    assert kl < 0.3
    assert kl_control > 10.0 and kl_control > 20 * kl, (kl_control, kl)


def test_reconstructions_accurate_and_prior_samples_data_like(trained):
    x, aae, autoencoder = trained
    untrained = small_aae(seed=1).eval()
    g = torch.Generator

    def reconstruction_accuracy(model) -> float:
        with torch.no_grad():
            probs = model.decode_probs(model.embed(x))
        return ((probs > 0.5).float() == x).float().mean().item()

    assert reconstruction_accuracy(aae) > 0.94  # 0.96 to 0.99 over 16 seeds
    assert reconstruction_accuracy(untrained) < 0.8
    samples = aae.sample(2000, generator=g().manual_seed(1))
    assert is_thermometer(samples).float().mean() > 0.5  # valid patterns: 81 of 65,536
    assert is_thermometer(untrained.sample(2000, generator=g().manual_seed(1))).float().mean() < 0.1
    # The samples follow the data's distribution: every bit's frequency matches. Decoding prior
    # draws through the plain autoencoder does not (its codes live elsewhere).
    assert (samples.mean(0) - x.mean(0)).abs().max() < 0.15
    control = autoencoder.sample(2000, generator=g().manual_seed(1))
    assert (control.mean(0) - x.mean(0)).abs().max() > 0.25  # AAE: <= 0.09, control: >= 0.34


def test_sample_decodes_standard_normal_codes_through_bernoulli_draws():
    """With a linear decoder, P(x_i = 1) and P(x_i = x_j = 1) are expectations of sigmoids under
    the prior: the samples' frequencies match them (and not those of a prior twice as wide)."""
    torch.manual_seed(0)
    model = genmodels.build("aae", input_shape=(3,), latent_dim=2, hidden_sizes=())
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.tensor([[1.5, 0.0], [0.0, -1.0], [1.0, 1.0]]))
        model.decoder[0].bias.copy_(torch.tensor([-1.0, 0.5, -2.0]))

    def moments(x: torch.Tensor) -> torch.Tensor:  # first and pairwise second moments (6,)
        return torch.cat([x.mean(0), (x[:, [0, 0, 1]] * x[:, [1, 2, 2]]).mean(0)])

    x = model.sample(200_000, generator=torch.Generator().manual_seed(0))
    z = torch.randn(500_000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, wide = moments(model.decode_probs(z)), moments(model.decode_probs(2 * z))
    assert (moments(x) - expected).abs().max() < 0.006  # ~4 standard errors
    assert (wide - expected).abs().max() > 0.03  # the check tells the priors apart


# ------------------------------------------------------------------------------------ embed
@pytest.mark.parametrize("encoder", ["deterministic", "gaussian"])
def test_embed_shape_and_determinism(encoder):
    model = small_aae(encoder=encoder, latent_dim=3)  # stays in train mode: embed is still fixed
    x = thermometer_data(10)
    z = model.embed(x)
    assert z.shape == (10, 3) and torch.equal(z, model.embed(x))
    mu = model.encoder(x)[:, :3]  # the code, or the Gaussian encoder's mean
    assert torch.equal(z, mu)
    torch.manual_seed(0)
    a = model({"x": x}, phase="reconstruction")["loss"]
    b = model({"x": x}, phase="reconstruction")["loss"]
    assert torch.equal(a, b) == (encoder == "deterministic")  # training codes are noisy q(z|x)
    with pytest.raises(ValueError, match="shape"):
        model.embed(torch.zeros(2, 15))
    with pytest.raises(ValueError, match="integers"):
        model.embed(torch.full((2, 16), 0.5))


def test_config_validation_names_the_key():
    for key, value in [("latent_dim", 0), ("encoder", "flow"), ("adv_lr", 0.0), ("lr", -1.0)]:
        with pytest.raises(ValueError, match=key):
            genmodels.build("aae", input_shape=(4,), **{key: value})
    with pytest.raises(genmodels.NoLikelihoodError):
        small_aae().log_prob(thermometer_data(2))
