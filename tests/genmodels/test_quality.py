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


def gaussian_points(mean: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """2F points mean ± c L_i (L_i the columns of ``factor``, or ``diag(factor)`` when it is a
    vector) whose sample mean is ``mean`` and whose unbiased sample covariance is exactly L L^T."""
    f = len(mean)
    factor = torch.diag(factor) if factor.dim() == 1 else factor
    c = math.sqrt((2 * f - 1) / 2)
    offsets = c * factor.T.double()  # (F, F): row i = c L_i
    return torch.cat([mean + offsets, mean - offsets]).double()  # (2F, F)


def trace_sqrt_2x2(s_a: torch.Tensor, s_b: torch.Tensor) -> float:
    """Tr (S_a S_b)^{1/2} for 2x2 covariances without any matrix square root: the eigenvalues
    l1, l2 >= 0 of S_a S_b give sqrt(l1) + sqrt(l2) = sqrt(l1 + l2 + 2 sqrt(l1 l2))."""
    det = torch.linalg.det(s_a) * torch.linalg.det(s_b)
    return math.sqrt((s_a @ s_b).trace().item() + 2 * math.sqrt(det.item()))


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = (torch.randn(6, generator=g, dtype=torch.float64) for _ in "ab")
    sd_a, sd_b = (torch.rand(6, generator=g, dtype=torch.float64) + 0.5 for _ in "ab")
    a = gaussian_points(mu_a, sd_a)
    assert abs(frechet_distance(a, a)) < 1e-9
    shifted = gaussian_points(mu_b, sd_a)
    assert frechet_distance(a, shifted) == pytest.approx((mu_a - mu_b).square().sum().item())
    # Commuting covariances Q diag(sd^2) Q^T (one random rotation Q, far from diagonal): the
    # distance is ||dm||^2 + sum (sd_a - sd_b)^2, the eigenvalues' square roots compared.
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a, b = gaussian_points(mu_a, q * sd_a), gaussian_points(mu_b, q * sd_b)
    cov_a = torch.cov(a.T)
    assert (cov_a - torch.diag(cov_a.diagonal())).abs().max() > 0.1  # truly not diagonal
    expected = ((mu_a - mu_b).square() + (sd_a - sd_b).square()).sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    # Non-commuting 2x2 covariances: Tr sqrt(S_a S_b) from the eigenvalues' closed form.
    l_a = torch.tensor([[1.5, 0.0], [1.2, 0.4]], dtype=torch.float64)
    l_b = torch.tensor([[0.3, 0.0], [-0.9, 1.1]], dtype=torch.float64)
    m_a, m_b = torch.tensor([0.5, -1.0]).double(), torch.tensor([-0.2, 0.3]).double()
    s_a, s_b = l_a @ l_a.T, l_b @ l_b.T
    assert not torch.allclose(s_a @ s_b, s_b @ s_a)  # they do not commute
    expected = (m_a - m_b).square().sum().item() + (s_a + s_b).trace().item()
    expected -= 2 * trace_sqrt_2x2(s_a, s_b)
    p_a, p_b = gaussian_points(m_a, l_a), gaussian_points(m_b, l_b)
    assert frechet_distance(p_a, p_b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(p_b, p_a) == pytest.approx(expected, rel=1e-9)
    # Control: an elementwise square root of the covariance gives another value, so the checks
    # above catch it (S^{1/2} is not sqrt(S_ij) unless S is diagonal).
    elementwise = s_a.sqrt() @ s_b @ s_a.sqrt()
    wrong = (m_a - m_b).square().sum().item() + (s_a + s_b).trace().item()
    wrong -= 2 * torch.linalg.eigvalsh((elementwise + elementwise.T) / 2).clamp_min(0).sqrt().sum()
    assert abs(wrong.item() - expected) > 0.05


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
