"""UNIT (genmodels/unit.py): the generator loss is the hand-written sum of its terms (with broken
controls), the shared layers are shared and only they, translation is deterministic, and bad
configs are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import genmodels

SMALL = {"channels": 4, "depth": 1, "latent_channels": 2, "disc_channels": 4}


def _images(seed: int, n: int = 8, hw: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, hw, hw), 0.3), generator=g)


def _hand_loss(model, a, b, wrong_cycle_domain=False, no_noise_in_cycle=False, no_kl=False):
    """The generator loss written out from the paper's terms, drawing the noise in the model's
    order: z_a's, z_b's, the draws D sees of a->b then b->a (``fakes="draw"``), the cycle
    codes' noise."""
    cfg = model.config
    bce = F.binary_cross_entropy_with_logits
    mu_a, mu_b = model.encode(a, "a"), model.encode(b, "b")
    za = mu_a + torch.randn_like(mu_a)
    zb = mu_b + torch.randn_like(mu_b)
    p_ab = torch.sigmoid(model.decode(za, "b"))
    p_ba = torch.sigmoid(model.decode(zb, "a"))
    if cfg.fakes == "draw":
        draw_ab, draw_ba = torch.bernoulli(p_ab), torch.bernoulli(p_ba)
    else:
        draw_ab, draw_ba = (p_ab > 0.5).float(), (p_ba > 0.5).float()
    la, lb = model.d_b(draw_ab), model.d_a(draw_ba)
    adv = bce(la, torch.ones_like(la)) + bce(lb, torch.ones_like(lb))
    rec = bce(model.decode(za, "a"), a) + bce(model.decode(zb, "b"), b)
    mu_aba, mu_bab = model.encode(p_ab, "b"), model.encode(p_ba, "a")
    e1, e2 = torch.randn_like(mu_aba), torch.randn_like(mu_bab)
    if no_noise_in_cycle:
        e1, e2 = 0 * e1, 0 * e2
    back_a, back_b = ("b", "a") if wrong_cycle_domain else ("a", "b")
    cyc = bce(model.decode(mu_aba + e1, back_a), a if back_a == "a" else b) + bce(
        model.decode(mu_bab + e2, back_b), b if back_b == "b" else a
    )
    kl = 0.5 * sum((m**2).mean() for m in (mu_a, mu_b, mu_aba, mu_bab))
    total = cfg.adv_weight * adv + cfg.recon_weight * rec + cfg.cycle_weight * cyc
    return total if no_kl else total + cfg.kl_weight * kl


@pytest.mark.parametrize("fakes", ["threshold", "draw"])
def test_generator_loss_is_the_sum_of_its_terms_and_broken_versions_are_caught(fakes):
    torch.manual_seed(0)
    model = genmodels.build(
        "unit",
        (1, 6, 6),
        **SMALL,
        fakes=fakes,
        adv_weight=0.7,
        recon_weight=3.0,
        cycle_weight=2.0,
        kl_weight=5.0,  # large enough that leaving the KL out shows
    )
    with torch.no_grad():  # away from GAN init's near-zero logits, where the domains look alike
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    a, b = _images(0), _images(1)
    torch.manual_seed(7)
    got = model({"x": a, "x_target": b}, phase="generator")
    with torch.no_grad():
        torch.manual_seed(7)
        want = _hand_loss(model, a, b)
        assert got["loss"].item() == pytest.approx(want.item(), rel=1e-5)
        for broken in ("wrong_cycle_domain", "no_noise_in_cycle", "no_kl"):
            torch.manual_seed(7)
            control = _hand_loss(model, a, b, **{broken: True})
            assert abs(control.item() - got["loss"].item()) > 1e-3, broken


def test_only_the_shared_layers_are_shared():
    """Changing the shared encoder layers changes the codes of both domains; changing a's own
    layers changes only a's; the decoders likewise. Each phase trains its own networks only."""
    torch.manual_seed(0)
    model = genmodels.build("unit", (1, 6, 6), **SMALL)
    x = _images(2)
    z = torch.randn(8, 2, 3, 3)

    def snapshot():
        with torch.no_grad():
            return [
                model.encode(x, "a"),
                model.encode(x, "b"),
                model.decode(z, "a"),
                model.decode(z, "b"),
            ]

    def changed(module):
        before = snapshot()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.5)
        return [not torch.allclose(u, v) for u, v in zip(before, snapshot(), strict=True)]

    assert changed(model.enc_shared) == [True, True, False, False]
    assert changed(model.enc_a) == [True, False, False, False]
    assert changed(model.dec_shared) == [False, False, True, True]
    assert changed(model.dec_b) == [False, False, False, True]
    gen = {id(p) for p in model.phase_parameters("generator")}
    disc = {id(p) for p in model.phase_parameters("discriminator")}
    assert not gen & disc
    assert gen | disc == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.d_a.parameters()} <= disc


def test_translate_is_deterministic_and_checks_its_direction():
    torch.manual_seed(0)
    model = genmodels.build("unit", (1, 7, 5), **{**SMALL, "depth": 2})  # odd sizes
    x = _images(3, hw=7)[..., :5]
    for d in ("a2b", "b2a"):
        torch.manual_seed(1)
        first = model.translate(x, d)
        torch.manual_seed(2)
        assert torch.equal(first, model.translate(x, d))
        assert first.shape == x.shape and set(first.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="unknown direction 'forward'; known: a2b, b2a"):
        model.translate(x, "forward")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("latent_channels", 0, "latent_channels must be >= 1"),
        ("cycle_weight", -1.0, "cycle_weight must be >= 0"),
        ("kl_weight", -0.1, "kl_weight must be >= 0"),
        ("depth", 0, "depth must be >= 1"),
        ("recon", "l2", "recon must be one of bce, l1"),
        ("fakes", "soft", "fakes must be one of draw, threshold"),
    ],
)
def test_bad_configs_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        genmodels.build("unit", (1, 6, 6), **{**SMALL, key: value})


def test_fakes_d_sees_are_binary_with_the_probabilities_gradient():
    """``fakes="threshold"``: D sees p > 1/2 (what ``translate`` returns); ``"draw"``: Bernoulli
    draws (not the threshold on most seeds). Both pass the gradient of p through unchanged."""
    p = torch.tensor([0.1, 0.45, 0.55, 0.9], requires_grad=True)
    for fakes in ("threshold", "draw"):
        model = genmodels.build("unit", (1, 6, 6), **SMALL, fakes=fakes)
        torch.manual_seed(3)
        seen = model._fake(p)
        assert set(seen.tolist()) <= {0.0, 1.0}
        (grad,) = torch.autograd.grad((seen * torch.arange(4.0)).sum(), p)
        assert torch.equal(grad, torch.arange(4.0))
        if fakes == "threshold":
            assert seen.tolist() == [0.0, 0.0, 1.0, 1.0]
    draws = [
        genmodels.build("unit", (1, 6, 6), **SMALL, fakes="draw")._fake(p).tolist()
        for _ in range(20)
    ]
    assert any(d != [0.0, 0.0, 1.0, 1.0] for d in draws)  # control: draws are not the threshold
