"""The sample-quality yardstick: a useful classifier, an FD that separates real from noise and
diverse from mode-collapsed samples, the Fréchet maths in closed form, reproducible training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genmodels.quality import (
    SampleQuality,
    YardstickClassifier,
    frechet_distance,
    sample_quality,
    train_yardstick,
)

N = 120  # the fixed sample count of every FD comparison below (class 3 has 124 train images)
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """8x8 images are too small to gain from intra-op threads, which only contend on a busy CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    """sklearn's 8x8 digits binarised at 8, shuffled once: 1197 train, 600 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data >= 8, dtype=torch.float32).view(-1, *SHAPE)
    y = torch.tensor(d.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return {"x_train": x[:1197], "y_train": y[:1197], "x_held": x[1197:], "y_held": y[1197:]}


@pytest.fixture(scope="module")
def yardstick(digits) -> tuple[YardstickClassifier, dict]:
    return train_yardstick(
        digits["x_train"],
        digits["y_train"],
        SHAPE,
        levels=2,
        x_val=digits["x_held"],
        y_val=digits["y_held"],
        seed=0,
    )


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(
        torch.full((n, *SHAPE), 0.5), generator=torch.Generator().manual_seed(seed)
    )


def test_classifier_accuracy_well_above_chance(digits, yardstick):
    model, info = yardstick
    with torch.no_grad():
        acc = (model(digits["x_held"]).argmax(1) == digits["y_held"]).float().mean().item()
    assert acc > 0.85  # chance is 0.1
    assert info["val_accuracy"] == pytest.approx(acc)
    assert info["train_accuracy"] > 0.85 and info["epochs"] >= 1
    assert model.features(digits["x_held"][:7]).shape == (7, model.feature_dim)


def test_real_vs_real_far_below_real_vs_noise(digits, yardstick):
    model, _ = yardstick
    half_a, half_b = digits["x_held"][:N], digits["x_held"][300 : 300 + N]
    real = sample_quality(model, half_a, half_b)
    fake = sample_quality(model, noise(N), half_b)
    assert real.num_samples == fake.num_samples == N
    assert real.fd < 0.1 * fake.fd
    assert real.coverage > 0.8 and real.confidence > 0.8


def test_mode_collapse_scores_worse_than_diversity(digits, yardstick):
    model, _ = yardstick
    x, y = digits["x_train"], digits["y_train"]
    reference = digits["x_held"][:300]
    collapsed = sample_quality(model, x[y == 3][:N], reference)  # one class only
    diverse = sample_quality(model, x[:N], reference)  # all classes, same count
    assert collapsed.num_samples == diverse.num_samples == N
    assert collapsed.fd > 3 * diverse.fd
    assert collapsed.coverage < 0.3 < 0.8 < diverse.coverage
    assert max(collapsed.class_histogram) > 0.8 * N and sum(diverse.class_histogram) == N
    assert set(diverse.as_dict()) == {"fd", "confidence", "coverage", "num_samples"}


def test_coverage_and_confidence_extremes():
    """A constant-logit classifier: every sample predicted as class 0 with probability 1/K."""
    model = YardstickClassifier((4,), levels=2, num_classes=5, feature_dim=3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = torch.bernoulli(torch.full((40, 4), 0.5), generator=torch.Generator().manual_seed(0))
    q = sample_quality(model, x, x)
    assert isinstance(q, SampleQuality) and q.class_histogram == (40, 0, 0, 0, 0)
    assert q.confidence == pytest.approx(0.2) and q.coverage == pytest.approx(0.2)
    assert q.fd == pytest.approx(0.0, abs=1e-12) and q.num_samples == 40


def gaussian_points(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """2F points mean ± c std_i e_i whose sample mean is ``mean`` and whose unbiased sample
    covariance is exactly diag(std^2)."""
    f = len(mean)
    c = math.sqrt((2 * f - 1) / 2)
    offsets = torch.diag(c * std)  # (F, F)
    return torch.cat([mean + offsets, mean - offsets]).double()  # (2F, F)


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = torch.randn(6, generator=g), torch.randn(6, generator=g)
    sd_a, sd_b = torch.rand(6, generator=g) + 0.5, torch.rand(6, generator=g) + 0.5
    a = gaussian_points(mu_a, sd_a)
    assert abs(frechet_distance(a, a)) < 1e-9
    shifted = gaussian_points(mu_b, sd_a)
    assert frechet_distance(a, shifted) == pytest.approx((mu_a - mu_b).square().sum().item())
    b = gaussian_points(mu_b, sd_b)
    # Tr(S_a + S_b - 2 sqrt(S_a S_b)) = sum (sd_a - sd_b)^2 for diagonal covariances
    expected = ((mu_a - mu_b).square() + (sd_a - sd_b).square()).sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected)
    # A rotated covariance against an isotropic one: sum (1 - sd_b)^2 + ||dm||^2 still; an
    # elementwise square root of the covariance matrices would get this wrong.
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    rotated = (b - mu_b.double()) @ q.T + mu_b.double()
    iso = gaussian_points(mu_a, torch.ones(6))
    expected = ((mu_a - mu_b).square() + (1 - sd_b).square()).sum().item()
    assert frechet_distance(iso, rotated) == pytest.approx(expected)
    var_b = torch.cov(rotated.T).diagonal()  # a bug that ignores the off-diagonal terms:
    wrong = ((mu_a - mu_b).square() + (1 - var_b.sqrt()).square()).sum().item()
    assert abs(wrong - expected) > 0.01  # differs, so the check above has teeth


def test_frechet_distance_symmetric_and_validates():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 8, generator=g)
    b = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g) + 1.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 1.0
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :5])
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


def test_training_is_deterministic(digits):
    x, y = digits["x_train"][:300], digits["y_train"][:300]
    probe = digits["x_held"][:50]
    rng_before = torch.random.get_rng_state()
    runs = [train_yardstick(x, y, SHAPE, 2, seed=s, epochs=2)[0] for s in (0, 0, 1)]
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    same_a, same_b, other = (m.features(probe) for m in runs)
    assert torch.equal(same_a, same_b)
    assert not torch.allclose(same_a, other)


@pytest.mark.parametrize("shape", [(1, 3, 4), (2, 28, 28), (12,)])
def test_classifier_shapes_and_export(shape):
    torch.manual_seed(0)
    model = YardstickClassifier(shape, levels=4, num_classes=3, feature_dim=5).eval()
    x = torch.randint(0, 4, (6, *shape)).float()
    assert model(x).shape == (6, 3) and model.features(x).shape == (6, 5)
    assert torch.equal(model(x.to(torch.uint8)), model(x))  # integer data works too
    cfg = json.loads(json.dumps(model.export_config()))
    rebuilt = YardstickClassifier(**cfg)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.eval()(x), model(x))
    with pytest.raises(ValueError):
        model(x[..., :-1])
