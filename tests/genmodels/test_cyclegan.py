"""CycleGAN (genmodels/cyclegan.py): the cycle loss is zero for a pair of exact inverse maps and
positive otherwise, both as a function and inside the model's generator phase; directions."""

from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.cyclegan import cycle_loss
from tests.genmodels.checks import top_singular_values


def _images(seed: int, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 6, 6), 0.3), generator=g)


def test_cycle_loss_is_zero_for_inverse_maps_and_positive_otherwise():
    a, b = _images(0), _images(1)
    neg = lambda x: 1 - x  # noqa: E731 - its own inverse
    shift = lambda x: torch.roll(x, 1, dims=-1)  # noqa: E731
    unshift = lambda x: torch.roll(x, -1, dims=-1)  # noqa: E731
    assert cycle_loss(a, b, neg, neg).item() == 0.0
    assert cycle_loss(a, b, shift, unshift).item() == 0.0
    assert cycle_loss(a, b, neg, lambda x: x).item() > 0.5  # not inverses
    assert cycle_loss(a, b, shift, shift).item() > 0.1


def test_the_models_cycle_term_vanishes_for_inverse_generators():
    """G and F replaced by saturated negatives (logits 20 (1 - 2x)): F(G(a)) = a to 2e-9, so the
    generator phase's cycle term is ~0; the control F = a saturated identity gives ~2."""
    model = genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, disc_channels=4)
    batch = {"x": _images(0), "x_target": 1 - _images(1)}
    model.g_ab.forward = lambda x: 20 * (1 - 2 * x)
    model.g_ba.forward = lambda x: 20 * (1 - 2 * x)
    assert model(batch, phase="generator")["cycle"].item() < 1e-6
    model.g_ba.forward = lambda x: 20 * (2 * x - 1)
    assert model(batch, phase="generator")["cycle"].item() > 1.5


def test_directions():
    model = genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, disc_channels=4)
    x = _images(2, 3)
    assert model.translate(x, "a2b").shape == model.translate(x, "b2a").shape == x.shape
    with pytest.raises(ValueError, match="unknown direction 'forward'; known: a2b, b2a"):
        model.translate(x, "forward")
    assert len(list(model.phase_parameters("discriminator"))) == 2 * len(
        list(model.d_a.parameters())
    )


def test_the_identity_term_is_computed_only_when_weighted():
    """identity_weight 0 (the default) skips the two extra U-Net passes: no ``idt`` reported."""
    batch = {"x": _images(0), "x_target": _images(1)}
    off = genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, disc_channels=4)
    on = genmodels.build(
        "cyclegan", (1, 6, 6), channels=4, depth=1, disc_channels=4, identity_weight=1.0
    )
    assert "idt" not in off(batch, phase="generator")
    assert on(batch, phase="generator")["idt"].item() > 0


def test_history_pool_fills_then_mixes_past_fakes():
    model = genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, disc_channels=4, history=5)
    first = torch.ones(3, 1, 6, 6)
    assert torch.equal(model._from_pool("b", first), first)  # filling: the fakes pass through
    second = torch.zeros(3, 1, 6, 6)
    torch.manual_seed(0)
    outs = [model._from_pool("b", second) for _ in range(4)]
    assert len(model._pools["b"]) == 5  # full, never larger
    assert any(o.sum() > 0 for o in outs)  # some stored ones (all ones) shown instead
    batch = {"x": _images(0), "x_target": _images(1)}
    assert torch.isfinite(model(batch, phase="discriminator")["loss"])
    with pytest.raises(ValueError, match="history must be >= 0"):
        genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, history=-1)


def test_lsgan_term():
    from genmodels.cyclegan import gan_term

    logits = torch.tensor([0.0, 1.0, 2.0])
    assert gan_term(logits, True, "lsgan").item() == pytest.approx((1 + 0 + 1) / 3)
    assert gan_term(logits, False, "lsgan").item() == pytest.approx((0 + 1 + 4) / 3)
    with pytest.raises(ValueError, match="gan_loss must be one of bce, lsgan"):
        genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, gan_loss="wgan")


def test_spectral_norm_bounds_both_discriminators_only():
    """``spectral_norm``: every conv of D_A and D_B has top singular value ~1 after a few power
    iterations, the generators are untouched; the default D's are not normalised (control)."""

    small = {"channels": 4, "depth": 1, "disc_channels": 4}
    torch.manual_seed(0)
    normed = genmodels.build("cyclegan", (1, 6, 6), spectral_norm=True, **small)
    plain = genmodels.build("cyclegan", (1, 6, 6), **small)
    batch = {"x": _images(0), "x_target": _images(1)}
    for _ in range(30):
        normed(batch, phase="discriminator")
    normed.eval()
    for d in (normed.d_a, normed.d_b):
        assert all(abs(s - 1) < 0.05 for s in top_singular_values(d))
    assert not any(
        abs(s - 1) < 0.05 for d in (plain.d_a, plain.d_b) for s in top_singular_values(d)
    )
    assert not any(abs(s - 1) < 0.05 for s in top_singular_values(normed.g_ab))


def _fakes_d_b_sees(fakes: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What D_B is shown as fakes in one discriminator and one generator step, and G(a)."""
    a, b = _images(0), _images(1)
    torch.manual_seed(0)
    model = genmodels.build(
        "cyclegan", (1, 6, 6), channels=4, depth=1, disc_channels=4, fakes=fakes
    )
    with torch.no_grad():
        for p in model.g_ab.parameters():
            p.normal_(0.0, 0.5)  # unsure pixels, where draws and threshold differ
    seen: list[torch.Tensor] = []
    model.d_b.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model({"x": a, "x_target": b}, phase="discriminator")
    model({"x": a, "x_target": b}, phase="generator")
    return [s for s in seen if not torch.equal(s, b)], model.translate(a, "a2b")


def test_threshold_fakes_show_d_the_translations():
    """``fakes="threshold"``: in both phases D_B sees exactly ``translate(a, "a2b")`` (p > 1/2);
    with the default Bernoulli draws it does not (control)."""
    for fakes, expected in (("threshold", [True, True]), ("draw", [False, False])):
        shown, translated = _fakes_d_b_sees(fakes)
        assert [torch.equal(s, translated) for s in shown] == expected
    with pytest.raises(ValueError, match="fakes must be one of draw, threshold"):
        genmodels.build("cyclegan", (1, 6, 6), channels=4, depth=1, fakes="soft")
