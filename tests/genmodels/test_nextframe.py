"""nextframe: a tiny predictor learns constant-velocity motion (beats copying the last frame) and
a control fed shuffled frames does not; rollout shapes and values; the adversarial variant's
phases and losses; the metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genmodels
from genmodels.nextframe import (
    edge_ratio,
    gradient_difference,
    psnr,
    sharpness_difference,
    ssim,
)

SIDE, BOX, T, CONTEXT = 12, 5, 5, 3
TINY = {"context": CONTEXT, "channels": 8, "depth": 2, "lr": 3e-3, "beta1": 0.9}


def squares(n: int, seed: int) -> torch.Tensor:
    """``(n, T, 1, 12, 12)`` binary sequences: a 5x5 square, random start, a constant velocity of
    1 px per frame on each axis (-1, 0 or 1, not both 0), reflected at the borders."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, T, 1, SIDE, SIDE), np.float32)
    room = SIDE - BOX
    for i in range(n):
        p = rng.integers(0, room + 1, 2)
        v = np.zeros(2, np.int64)
        while not v.any():
            v = rng.integers(-1, 2, 2)
        for t in range(T):
            out[i, t, 0, p[0] : p[0] + BOX, p[1] : p[1] + BOX] = 1
            p = p + v
            low, high = p < 0, p > room
            p = np.where(low, -p, np.where(high, 2 * room - p, p))
            v = np.where(low | high, -v, v)
    return torch.from_numpy(out)


def shuffled(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The control: every context frame replaced by a context frame drawn from the whole batch
    (any sequence, any time), so the past says nothing about the sequence to predict; the
    frames after the context (the targets) are kept."""
    past = x[:, :CONTEXT].flatten(0, 1)
    pick = torch.randint(0, len(past), (len(x), CONTEXT), generator=g)
    return torch.cat([past[pick], x[:, CONTEXT:]], 1)


def train(control: bool, steps: int = 250) -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    model = genmodels.build("nextframe", (T, 1, SIDE, SIDE), 2, **TINY)
    opt = model.configure_optimizers()["main"]
    g = torch.Generator().manual_seed(1)
    data = squares(2000, seed=1)
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (32,), generator=g)]
        if control:
            x = shuffled(x, g)
        opt.zero_grad()
        model({"x": x})["loss"].backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    return {"real": train(False), "control": train(True)}


def t1_mse(model, x: torch.Tensor) -> float:
    pred = model.predict(x[:, :CONTEXT], steps=1)[:, 0]
    return float((pred - x[:, CONTEXT]).pow(2).mean())


def test_predictor_beats_copy_last_and_the_shuffled_control_does_not(trained):
    test = squares(400, seed=99)  # other sequences than training's
    copy = float((test[:, CONTEXT - 1] - test[:, CONTEXT]).pow(2).mean())
    real = t1_mse(trained["real"], test)
    g = torch.Generator().manual_seed(5)
    control = t1_mse(trained["control"], shuffled(test, g))
    assert real < 0.5 * copy, (real, copy)
    assert control > copy, (control, copy)
    # the real model's metrics agree with the hand computation
    m = trained["real"].validation_metrics({"x": test})
    assert m["mse_t1"].mean().item() == pytest.approx(real, rel=1e-5)
    assert m["copy_mse_t1"].mean().item() == pytest.approx(copy, rel=1e-5)
    assert (m["neg_mse"] <= 0).all()


def test_rollout_shapes_values_and_determinism(trained):
    model = trained["real"]
    x = squares(3, seed=7)
    out = model.predict(x, steps=7)  # more frames than the context: the last 3 are used
    assert out.shape == (3, 7, 1, SIDE, SIDE) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, out.round())  # expected values, not thresholded
    same = model.predict(x[:, -CONTEXT:], steps=7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, same)  # deterministic; only the last `context` frames count
    # the rollout feeds its own prediction back: step 2 = one step from (frames, step 1)
    first = model.predict(x, steps=1)
    again = model.predict(torch.cat([x[:, 1:], first.clamp(0, 1).round()], 1), steps=1)
    assert first.shape == (3, 1, 1, SIDE, SIDE) and again.shape == first.shape
    grey = genmodels.build("nextframe", (10, 1, 32, 32), 256, context=5, channels=4, depth=1)
    frames = torch.randint(0, 256, (2, 5, 1, 32, 32))
    y = grey.predict(frames, steps=5)
    assert y.shape == (2, 5, 1, 32, 32) and y.max() <= 255 and y.min() >= 0


def test_rollout_of_step_two_uses_the_first_prediction():
    torch.manual_seed(0)
    model = genmodels.build("nextframe", (T, 1, SIDE, SIDE), 2, **TINY).eval()
    x = squares(2, seed=3)[:, :CONTEXT]
    two = model.predict(x, steps=2)
    with torch.no_grad():
        s1 = model.step(x).clamp(0, 1)
        s2 = model.step(torch.cat([x[:, 1:], s1[:, None]], 1)).clamp(0, 1)
    torch.testing.assert_close(two[:, 0], s1)
    torch.testing.assert_close(two[:, 1], s2)


def test_adversarial_variant_has_two_phases_and_its_losses():
    mse = genmodels.build("nextframe", (T, 1, SIDE, SIDE), 2, **TINY)
    assert mse.phases == ("main",) and mse.discriminator is None
    adv = genmodels.build(
        "nextframe", (T, 1, SIDE, SIDE), 2, **TINY, adv_weight=0.05, gdl_weight=1.0
    )
    assert adv.phases == ("discriminator", "generator")
    opts = adv.configure_optimizers()
    assert set(opts) == {"discriminator", "generator"}
    x = squares(4, seed=2)
    out = adv({"x": x}, phase="generator")
    assert {"mse", "gdl", "g_adv"} <= set(out)
    assert out["loss"].item() == pytest.approx(
        (out["mse"] + out["gdl"] + 0.05 * out["g_adv"]).item(), rel=1e-5
    )
    # the discriminator's phase steps only the discriminator
    d_params = {id(p) for p in adv.phase_parameters("discriminator")}
    g_params = {id(p) for p in adv.phase_parameters("generator")}
    assert d_params and g_params and not d_params & g_params
    with pytest.raises(ValueError, match="adv_weight must be >= 0"):
        genmodels.build("nextframe", (T, 1, SIDE, SIDE), 2, adv_weight=-1.0, context=2)
    with pytest.raises(ValueError, match=r"context must be in 1\.\.4"):
        genmodels.build("nextframe", (T, 1, SIDE, SIDE), 2, context=5)
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        genmodels.build("nextframe", (1, SIDE, SIDE), 2)


def test_image_metrics_against_hand_values():
    a = torch.zeros(1, 1, 8, 8)
    b = a.clone()
    b[..., 2:6, 2:6] = 1.0
    # PSNR: MSE = 16/64 = 1/4 → 10 log10(4)
    assert psnr(a, b).item() == pytest.approx(10 * np.log10(4), rel=1e-5)
    assert ssim(b, b).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, b).item() < 0.5
    # a blurred copy is less sharp than the truth: a higher sharpness difference is better
    blurred = torch.nn.functional.avg_pool2d(b, 3, stride=1, padding=1)
    assert sharpness_difference(b, b).item() > sharpness_difference(blurred, b).item()
    assert gradient_difference(b, b).item() == 0.0
    assert gradient_difference(blurred, b).item() > 0
    # edge ratio: a moved copy is as sharp as the truth (1) though the sharpness difference
    # punishes its place; the mean of two futures, a 4x4 square and the same moved 5 to the
    # right (no shared edge), has each of the 2 x 16 unit steps at height 1/2: energy 32/4 = 8 of
    # 16; the 3x3 blur spreads each step over 3 pixels; zeros have none
    sq = torch.zeros(1, 1, 8, 12)
    sq[..., 2:6, 1:5] = 1.0
    moved = torch.roll(sq, shifts=5, dims=-1)
    assert edge_ratio(sq, sq).item() == pytest.approx(1.0)
    assert edge_ratio(moved, sq).item() == pytest.approx(1.0)
    assert sharpness_difference(moved, sq).item() < sharpness_difference(sq, sq).item()
    assert edge_ratio(0.5 * sq + 0.5 * moved, sq).item() == pytest.approx(0.5)
    assert edge_ratio(blurred, b).item() < 0.5
    assert edge_ratio(a, b).item() == 0.0


@pytest.mark.parametrize("shift", [(0, 1), (-2, 3)])
def test_the_filter_head_moves_the_last_frame_where_its_weight_sits(shift):
    """head="filter": with every pixel's weight on one tap (dy, dx) the prediction is the last
    frame read at (i + dy, j + dx) (zeros outside), exactly, and always within [0, 1] (a convex
    combination). Control: the same check against another displacement fails."""
    model = genmodels.build("nextframe", (3, 1, 8, 8), 256, channels=4, depth=1, context=2)
    k = model.config.kernel_size
    g = torch.Generator().manual_seed(0)
    window = torch.rand(2, 2, 1, 8, 8, generator=g)
    last = window[:, -1]
    with torch.no_grad():
        first = model.step(window)
        assert first.min() >= 0 and first.max() <= 1
        dy, dx = shift
        tap = (dy + k // 2) * k + (dx + k // 2)
        model.predictor.head.weight.zero_()
        model.predictor.head.bias.fill_(-50.0)
        model.predictor.head.bias[tap] = 50.0
        out = model.step(window)
    padded = torch.nn.functional.pad(last, (k // 2,) * 4)
    want = padded[..., k // 2 + dy : k // 2 + dy + 8, k // 2 + dx : k // 2 + dx + 8]
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    other = padded[..., k // 2 : k // 2 + 8, k // 2 + dx + 1 : k // 2 + dx + 9]
    assert (out - other).abs().max() > 0.1
