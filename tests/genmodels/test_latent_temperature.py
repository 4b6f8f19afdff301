"""The latent temperature option (``latent_temperature`` psi) of the latent-variable samplers.

* ``base.prior_draw`` at psi is psi times the draw at 1 from the same generator, and its
  empirical standard deviation is psi (a draw that scales the variance by psi, the control, fails);
* in GAN, VAE and the caption VAE, ``sample`` hands the decoder psi times the codes it hands it at
  psi = 1 under the same seed (a family that ignores the option, the control, fails), and the
  default is psi = 1;
* a negative, infinite or NaN temperature is refused with an error naming the option;
* the VAE's likelihood does not depend on it (sampling only).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import genmodels
from genmodels import base

FAMILIES = {
    "gan": ((1, 3, 4), {"latent_dim": 4, "channels": 4, "hidden_size": 8}, "generate"),
    "vae": ((1, 3, 4), {"latent_dim": 3, "hidden_sizes": (8,), "eval_k": 8}, "decode"),
    "captionvae": (
        (1, 4, 8),
        {"latent_dim": 4, "channels": 8, "embed_dim": 8, "hidden_size": 16, "eval_k": 8},
        "decode",
    ),
}


def check_draw_scale(draw, psi: float) -> None:
    """``draw(n, dim, psi, generator, like)`` scales the psi = 1 draw by psi, sd psi."""
    like = torch.zeros(1)
    one = draw(20_000, 2, 1.0, torch.Generator().manual_seed(3), like)
    scaled = draw(20_000, 2, psi, torch.Generator().manual_seed(3), like)
    torch.testing.assert_close(scaled, psi * one)
    # sd of 40,000 N(0, psi^2) draws: relative standard error 1 / sqrt(2 * 40,000) = 0.35 %
    assert abs(scaled.std().item() / psi - 1.0) < 0.02


def test_prior_draw_scales_the_codes_by_the_temperature():
    for psi in (0.5, 0.8, 1.3):
        check_draw_scale(base.prior_draw, psi)
    zero = base.prior_draw(5, 3, 0.0, torch.Generator().manual_seed(0), torch.zeros(1))
    assert torch.equal(zero, torch.zeros(5, 3))


def test_a_draw_scaling_the_variance_is_caught():
    def variance_scaled(n, dim, psi, generator, like):  # the control: N(0, psi I)
        return base.prior_draw(n, dim, 1.0, generator, like) * math.sqrt(psi)

    with pytest.raises(AssertionError):
        check_draw_scale(variance_scaled, 0.5)


def codes_seen(model: genmodels.GenerativeModel, hook: str, psi: float) -> torch.Tensor:
    """The codes ``sample`` hands the decoder (``hook``) at temperature psi, seed 7."""
    model.config = dataclasses.replace(model.config, latent_temperature=psi)
    seen = []
    inner = getattr(model, hook)

    def spy(z, *rest):
        seen.append(z.clone())
        return inner(z, *rest)

    setattr(model, hook, spy)
    try:
        model.sample(6, generator=torch.Generator().manual_seed(7))
    finally:
        delattr(model, hook)  # the class's method again
    assert len(seen) == 1
    return seen[0]


def check_family_scales(name: str) -> None:
    shape, config, hook = FAMILIES[name]
    torch.manual_seed(0)
    model = genmodels.build(name, shape, **config).eval()
    assert model.config.latent_temperature == 1.0  # the default: the model's own sampler
    one = codes_seen(model, hook, 1.0)
    torch.testing.assert_close(codes_seen(model, hook, 0.5), 0.5 * one)
    assert torch.equal(codes_seen(model, hook, 0.0), torch.zeros_like(one))


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_feeds_the_decoder_scaled_codes(name):
    check_family_scales(name)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_ignoring_the_temperature_is_caught(name, monkeypatch):
    module = type(genmodels.build(name, FAMILIES[name][0], **FAMILIES[name][1])).__module__

    def ignores(n, dim, temperature, generator, like):  # the control
        return base.prior_draw(n, dim, 1.0, generator, like)

    monkeypatch.setattr(f"{module}.prior_draw", ignores)
    with pytest.raises(AssertionError):
        check_family_scales(name)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan])
def test_bad_temperatures_are_refused_by_name(name, bad):
    shape, config, _ = FAMILIES[name]
    with pytest.raises(ValueError, match=f"{name}: .*latent_temperature"):
        genmodels.build(name, shape, **config, latent_temperature=bad)


def test_the_vae_likelihood_ignores_the_temperature():
    shape, config, _ = FAMILIES["vae"]
    torch.manual_seed(0)
    model = genmodels.build("vae", shape, **config).eval()
    x = (torch.rand(4, *shape) < 0.5).float()
    before = model.log_prob(x, generator=torch.Generator().manual_seed(1))
    model.config = dataclasses.replace(model.config, latent_temperature=0.3)
    after = model.log_prob(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(before, after)


def test_set_latent_temperature_checks_the_value_and_the_family():
    shape, config, _ = FAMILIES["vae"]
    vae = genmodels.build("vae", shape, **config)
    genmodels.set_latent_temperature(vae, 0.5)
    assert vae.config.latent_temperature == 0.5
    with pytest.raises(ValueError, match="vae: latent_temperature"):
        genmodels.set_latent_temperature(vae, -1.0)
    assert vae.config.latent_temperature == 0.5  # a refused value changes nothing
    made = genmodels.build("made", shape, hidden_sizes=(8,))
    with pytest.raises(ValueError, match="made: has no latent_temperature"):
        genmodels.set_latent_temperature(made, 0.5)
