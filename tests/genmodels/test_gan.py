"""The GAN's two-phase game: each phase trains its own network, the losses are the paper's, and a
few hundred steps on a structured toy set make the samples match it without collapsing."""

from __future__ import annotations

import math

import pytest
import torch

import genmodels
import genmodels.gan
from genmodels.gan import discriminator_loss, generator_loss
from tests.genmodels.checks import top_singular_values, toy_data

PROTOTYPES = torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]]).float()


def build(shape=(1, 3, 4), seed: int = 0, levels: int = 2, **config) -> genmodels.gan.GAN:
    torch.manual_seed(seed)
    tiny = {"latent_dim": 4, "channels": 4, "hidden_size": 8}
    return genmodels.build("gan", input_shape=shape, levels=levels, **{**tiny, **config})


def batch(shape=(1, 3, 4), n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *shape), 0.4), generator=torch.Generator().manual_seed(1))


def last_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The output layer of G or D (linear or transposed convolution)."""
    layers = (torch.nn.Linear, torch.nn.ConvTranspose2d)
    return [m for m in net.modules() if isinstance(m, layers)][-1]


def set_constant_output(net: torch.nn.Module, value: float) -> None:
    """Make ``net`` output ``value`` for every input: zero weights into its last layer."""
    with torch.no_grad():
        last_layer(net).weight.zero_()
        last_layer(net).bias.fill_(value)


# ------------------------------------------------------------------------------------ phases
@pytest.mark.parametrize("shape", [(1, 3, 4), (6,)])
def test_discriminator_phase_gives_no_gradient_to_generator(shape):
    model = build(shape)
    model({"x": batch(shape)}, phase="discriminator")["loss"].backward()
    for name, p in model.discriminator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in model.generator.named_parameters():
        assert p.grad is None, name
    # Control: the generator phase does reach G (so the check above is not vacuous).
    model.zero_grad()
    model({"x": batch(shape)}, phase="generator")["loss"].backward()
    for name, p in model.generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shape", [(1, 3, 4), (6,)])
def test_each_phase_step_changes_only_its_network(shape):
    model = build(shape)
    opts = model.configure_optimizers()
    assert set(opts) == {"discriminator", "generator"}
    for opt in opts.values():
        assert opt.param_groups[0]["betas"] == (0.5, 0.999)
    ids = {phase: {id(p) for g in o.param_groups for p in g["params"]} for phase, o in opts.items()}
    assert ids["discriminator"] == {id(p) for p in model.discriminator.parameters()}
    assert ids["generator"] == {id(p) for p in model.generator.parameters()}
    for phase, stepped, frozen in [
        ("generator", model.generator, model.discriminator),
        ("discriminator", model.discriminator, model.generator),
    ]:
        before_s = [p.detach().clone() for p in stepped.parameters()]
        before_f = [p.detach().clone() for p in frozen.parameters()]
        opts[phase].zero_grad(set_to_none=True)
        model({"x": batch(shape)}, phase=phase)["loss"].backward()
        opts[phase].step()
        assert all(not torch.equal(a, p) for a, p in zip(before_s, stepped.parameters()))
        assert all(torch.equal(a, p) for a, p in zip(before_f, frozen.parameters()))


def test_discriminator_sees_bernoulli_draws_of_binary_fakes(monkeypatch):
    """D must not tell fakes by their non-binary values: in both phases it sees binary inputs,
    the fakes drawn from Bernoulli(G(z)) (here G(z) = 0.2), and the reals as they are."""
    model = build((1, 8, 8))
    set_constant_output(model.generator, math.log(0.2 / 0.8))
    seen = []
    original = model.discriminate
    monkeypatch.setattr(model, "discriminate", lambda v: (seen.append(v.detach()), original(v))[1])
    x = torch.ones(200, 1, 8, 8)
    for phase in model.phases:
        seen.clear()
        model({"x": x}, phase=phase)["loss"].backward()
        if phase == "discriminator":
            assert len(seen) == 2 and torch.equal(seen[0], x)  # the reals, as they are
        fakes = seen[-1]
        assert set(fakes.unique().tolist()) == {0.0, 1.0}, phase
        assert fakes.mean().item() == pytest.approx(0.2, abs=0.02), phase
    # The straight-through gradient reaches G's output layer in the generator phase.
    assert last_layer(model.generator).bias.grad.abs().sum() > 0


def test_unknown_phase_is_an_error():
    model = build()
    with pytest.raises(ValueError, match="phase"):
        model({"x": batch()}, phase="main")


# ------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_losses_match_their_definitions_under_a_constant_discriminator(smoothing):
    d = 0.25  # D(anything) = 1/4
    logit = math.log(d / (1 - d))
    expected_g = {"non_saturating": -math.log(d), "minimax": math.log(1 - d)}
    for kind, value in expected_g.items():
        model = build(generator_loss=kind, label_smoothing=smoothing)
        set_constant_output(model.discriminator, logit)
        out_g = model({"x": batch()}, phase="generator")
        assert out_g["loss"].item() == pytest.approx(value, abs=1e-6)
        out_d = model({"x": batch()}, phase="discriminator")
        # BCE with real target t = 1 - smoothing, fake target 0.
        t = 1 - smoothing
        expected_d = -(t * math.log(d) + (1 - t) * math.log(1 - d)) - math.log(1 - d)
        assert out_d["loss"].item() == pytest.approx(expected_d, abs=1e-6)
        assert out_d["d_real"].item() == pytest.approx(d) and out_d["d_fake"].item() == (
            pytest.approx(d)
        )
    assert discriminator_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(
        2 * math.log(2)
    )


def test_non_saturating_gradient_is_strong_where_minimax_saturates():
    """d loss / d D(G(z)): -1/D for -log D, -1/(1 - D) for log(1 - D). Early in training D(G(z))
    is near 0: the minimax gradient stays ~ -1 (and vanishes w.r.t. D's logit), the
    non-saturating one explodes."""

    def grads(d: float, kind: str) -> tuple[float, float]:
        s = torch.tensor([d], dtype=torch.float64, requires_grad=True)
        logit = torch.log(s) - torch.log1p(-s)
        logit.retain_grad()
        generator_loss(logit, kind).backward()
        return s.grad.item(), logit.grad.item()

    for d in (0.01, 0.3, 0.9):
        ns, ns_logit = grads(d, "non_saturating")
        mm, mm_logit = grads(d, "minimax")
        assert ns == pytest.approx(-1 / d) and mm == pytest.approx(-1 / (1 - d))
        assert ns_logit == pytest.approx(-(1 - d)) and mm_logit == pytest.approx(-d)
    ns, ns_logit = grads(0.01, "non_saturating")
    mm, mm_logit = grads(0.01, "minimax")
    assert abs(ns) > 50 * abs(mm) and abs(ns_logit) > 50 * abs(mm_logit)
    with pytest.raises(ValueError, match="generator_loss"):
        generator_loss(torch.zeros(2), "wasserstein")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- training
def near_prototypes(x: torch.Tensor) -> tuple[float, float]:
    """Share of samples within Hamming distance 1 of a prototype, and of those, the share
    nearest the first prototype."""
    dist = (x.flatten(1)[:, None, :] != PROTOTYPES[None]).sum(-1)  # (n, 2)
    near = dist.min(1).values <= 1
    first = (dist.argmin(1)[near] == 0).float().mean().item() if near.any() else 0.0
    return near.float().mean().item(), first


def train(model, x: torch.Tensor, steps: int, batch_size: int = 64) -> None:
    """The trainer's loop: each step, every phase in order with its own optimiser."""
    opts = model.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        xb = x[torch.randint(len(x), (batch_size,), generator=g)]
        for phase in model.phases:
            opts[phase].zero_grad(set_to_none=True)
            model({"x": xb}, phase=phase)["loss"].backward()
            opts[phase].step()


def test_training_on_toy_data_matches_both_prototypes():
    model = build((8,), latent_dim=8, hidden_size=64, lr=2e-3)
    x = toy_data()
    untrained = near_prototypes(model.sample(1000, generator=torch.Generator().manual_seed(0)))
    assert untrained[0] < 0.3, untrained  # uniform bits: 2 * 9 / 256 ≈ 7%
    train(model, x, steps=300)
    near, first = near_prototypes(model.sample(1000, generator=torch.Generator().manual_seed(0)))
    # The data: 0.95^8 + 8 * 0.05 * 0.95^7 ≈ 94% near a prototype, half at each.
    assert near > 0.8 and 0.25 < first < 0.75, (near, first)


# ----------------------------------------------------------------------------------- samples
@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 8, 8), (1, 28, 28), (2, 5, 3), (1, 1, 7), (5,)])
def test_samples_binary_and_deterministic_under_a_generator(shape):
    model = build(shape)
    model.train()
    stats = [b.clone() for b in model.buffers()]
    a = model.sample(16, generator=torch.Generator().manual_seed(3))
    b = model.sample(16, generator=torch.Generator().manual_seed(3))
    c = model.sample(16, generator=torch.Generator().manual_seed(4))
    assert a.shape == (16, *shape) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Eval-mode BatchNorm during sampling: no running statistic moved, and the mode is restored.
    assert all(torch.equal(s, t) for s, t in zip(stats, model.buffers()))
    assert model.training and model.generator.training
    # Samples are Bernoulli draws from G's probabilities, not thresholds of them.
    set_constant_output(model.generator, math.log(0.2 / 0.8))  # G(z) = 0.2 everywhere
    mean = model.sample(500, generator=torch.Generator().manual_seed(0)).mean().item()
    assert mean == pytest.approx(0.2, abs=0.03)


def test_discrete_dequantisation_round_trips_and_samples_are_g_binned():
    levels = 8
    model = build((1, 3, 4), levels=levels)
    x = torch.randint(levels, (6, 1, 3, 4), generator=torch.Generator().manual_seed(0)).float()
    v = model.dequantize(x, generator=torch.Generator().manual_seed(1))
    assert (v >= 0).all() and (v < 1).all() and torch.equal((v * levels).floor(), x)
    assert len((v * levels).frac().unique()) > 10  # really dequantised, not just scaled
    s = model.sample(20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.generator.eval()
        z = torch.randn(20, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
        y = model.generate(z)
    assert torch.equal(s, (y * levels).floor()) and s.min() >= 0 and s.max() <= levels - 1


def test_training_on_discrete_toy_data_matches_both_prototypes():
    levels = 8
    protos = torch.tensor([[0, 7, 2, 5], [6, 1, 4, 3]]).float()
    g = torch.Generator().manual_seed(0)
    x = protos[torch.randint(2, (512,), generator=g)]

    def near(samples: torch.Tensor) -> tuple[float, float]:
        dev = (samples[:, None, :] - protos[None]).abs().max(-1).values  # (n, 2)
        close = dev.min(1).values <= 1  # every value within one level of a prototype
        return close.float().mean().item(), (dev.argmin(1)[close] == 0).float().mean().item()

    model = build((4,), levels=levels, latent_dim=8, hidden_size=64, lr=2e-3)
    assert near(model.sample(1000, generator=torch.Generator().manual_seed(0)))[0] < 0.2
    train(model, x, steps=300)
    close, first = near(model.sample(1000, generator=torch.Generator().manual_seed(0)))
    assert close > 0.7 and 0.25 < first < 0.75, (close, first)


def test_config_validation_and_no_likelihood():
    for key, value in [
        ("latent_dim", 0),
        ("channels", 0),
        ("label_smoothing", 0.5),
        ("generator_loss", "hinge"),
        ("beta1", 1.0),
        ("arch", "resnet"),
    ]:
        with pytest.raises(ValueError, match=key):
            build(**{key: value})
    with pytest.raises(genmodels.NoLikelihoodError):
        build().log_prob(batch())
    with pytest.raises(ValueError, match="arch"):  # no conv pair for flat inputs
        build((6,), arch="conv")


@pytest.mark.parametrize("conditional", [False, True])
def test_mlp_arch_on_images_is_the_flat_pair_on_flattened_pixels(conditional):
    """``arch="mlp"`` on (C, H, W) inputs builds the MLP pair of a flat GAN of the same size, with
    the same parameters giving the same logits and samples (on flattened pixels, reshaped); the
    default on images is the conv pair (control: it has convolutions, and differs)."""
    cond = {"conditional": True, "num_classes": 3} if conditional else {}
    image = build((1, 3, 4), arch="mlp", **cond)
    flat = build((12,), **cond)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in image.modules())
    assert any(isinstance(m, torch.nn.Conv2d) for m in build((1, 3, 4), **cond).modules())
    flat.load_state_dict(image.state_dict())
    x = batch((1, 3, 4))
    image.eval(), flat.eval()
    assert torch.equal(image.discriminator_outputs(x), flat.discriminator_outputs(x.flatten(1)))
    y = {"label": torch.tensor([0, 1, 2, 0])} if conditional else None
    a = image.sample(4, torch.Generator().manual_seed(3), condition=y)
    b = flat.sample(4, torch.Generator().manual_seed(3), condition=y)
    assert a.shape == (4, 1, 3, 4) and torch.equal(a.flatten(1), b)
    # and it trains: both phases give finite losses and gradients to their own network
    image.train()
    labels = {"y": torch.tensor([0, 1, 2, 0, 1, 2])} if conditional else {}
    for phase in image.phases:
        image.zero_grad()
        loss = image({"x": batch((1, 3, 4)), **labels}, phase=phase)["loss"]
        assert torch.isfinite(loss)
        loss.backward()


@pytest.mark.parametrize("shape", [(1, 6, 6), (12,)])
def test_spectral_norm_bounds_every_discriminator_layer(shape):
    """With ``spectral_norm`` every linear / conv weight D uses has largest singular value ~1
    (after the power iteration has run for a few steps); the default D's do not (control)."""

    normed, plain = build(shape, spectral_norm=True), build(shape)
    for _ in range(30):  # each training-mode forward runs one power iteration per layer
        normed({"x": batch(shape)}, phase="discriminator")
    normed.eval()
    assert all(abs(s - 1.0) < 0.05 for s in top_singular_values(normed.discriminator))
    assert not any(abs(s - 1.0) < 0.05 for s in top_singular_values(plain.discriminator))
    # a saved model comes back: rebuilt from its exported config, its state loads, D agrees
    again = genmodels.from_export(normed.export_config())
    again.load_state_dict(normed.state_dict())
    again.eval()
    x = batch(shape)
    assert torch.equal(again.discriminator_outputs(x), normed.discriminator_outputs(x))
    # and it trains: D's phase reaches D's underlying weights
    normed.train()
    normed({"x": batch(shape)}, phase="discriminator")["loss"].backward()
    assert all(p.grad is not None for p in normed.discriminator.parameters())
