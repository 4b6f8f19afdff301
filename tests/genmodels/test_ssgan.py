"""The K+1 GAN: its discriminator loss is the (K+1)-class cross-entropy with the fake logit at 0,
each phase trains its own network, ``classify`` uses the Polyak-averaged discriminator, and a
few labels on a toy set give a classifier far above chance (uninformative labels do not)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.ssgan import SSGAN, discriminator_loss, feature_matching_loss
from tests.genmodels.checks import is_a_shift

TINY = {"latent_dim": 4, "gen_hidden": (8,), "disc_hidden": (8, 8)}


def build(shape=(6,), seed: int = 0, **config) -> SSGAN:
    torch.manual_seed(seed)
    return genmodels.build("ssgan", input_shape=shape, **{**TINY, **config})


def binary(n: int, shape=(6,), seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(
        torch.full((n, *shape), 0.4), generator=torch.Generator().manual_seed(seed)
    )


def k_plus_1_by_hand(real_logits, labels, fake_logits, w):
    """The (K+1)-class softmax written out: the fake class is an appended logit 0."""

    def probs(logits):
        return torch.cat([logits, torch.zeros(len(logits), 1, dtype=logits.dtype)], 1).softmax(1)

    p_real, p_fake = probs(real_logits), probs(fake_logits)
    k = real_logits.shape[1]
    lab = labels >= 0
    # labelled: -log p(y | x, real) = -log(p_y / (1 - p_fake))
    sup = -(p_real[lab, labels[lab]] / (1 - p_real[lab, k])).log().mean()
    real = -(1 - p_real[:, k]).log().mean()  # -log D(x): "not fake"
    fake = -p_fake[:, k].log().mean()  # -log(1 - D(G(z))): "fake"
    return sup + w * (real + fake)


def test_discriminator_loss_equals_the_k_plus_1_formula():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(7, 4, generator=g, dtype=torch.float64) * 2
    fake = torch.randn(5, 4, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([2, -1, 0, -1, 3, 3, -1])
    want = k_plus_1_by_hand(real, labels, fake, 0.5)
    got = discriminator_loss(real, labels, fake, 0.5)["loss"]
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    # Controls: a sign error in the fake term, or the labelled term with the fake class left in
    # the softmax, give other values (so the comparison has teeth).
    lse_r, lse_f = real.logsumexp(1), fake.logsumexp(1)
    sup = (lse_r - real[torch.arange(7), labels.clamp_min(0)])[labels >= 0].mean()
    wrong_sign = sup + 0.5 * ((F.softplus(lse_r) - lse_r).mean() + F.softplus(-lse_f).mean())
    assert abs(wrong_sign.item() - want.item()) > 0.1
    ce_k_plus_1 = (F.softplus(lse_r) - real[torch.arange(7), labels.clamp_min(0)])[labels >= 0]
    wrong_sup = ce_k_plus_1.mean() + 0.5 * (
        (F.softplus(lse_r) - lse_r).mean() + F.softplus(lse_f).mean()
    )
    assert abs(wrong_sup.item() - want.item()) > 0.01


def test_all_unlabelled_and_all_labelled_batches():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    none = torch.full((4,), -1)
    out = discriminator_loss(real, none, fake, 1.0)
    assert out["supervised"].item() == 0.0
    assert out["loss"].item() == pytest.approx((out["real"] + out["fake"]).item())
    every = torch.tensor([0, 1, 2, 0])
    out = discriminator_loss(real, every, fake, 0.0)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(real, every).item(), rel=1e-6)


def test_feature_matching_is_the_squared_distance_of_the_means():
    a, b = torch.randn(5, 3), torch.randn(7, 3, requires_grad=True)
    loss = feature_matching_loss(a, b)
    assert loss.item() == pytest.approx(((a.mean(0) - b.mean(0)) ** 2).sum().item(), rel=1e-6)


def test_each_phase_reaches_only_its_network_and_labels_are_checked():
    model = build()
    x = binary(6)
    y = torch.tensor([0, -1, 1, -1, -1, 9])
    model({"x": x, "y": y}, phase="discriminator")["loss"].backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters()
    )
    assert all(p.grad is None for p in model.generator.parameters())
    model.zero_grad(set_to_none=True)
    model({"x": x}, phase="generator")["loss"].backward()  # control: G's phase reaches G
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert model.discriminator.out.v.grad is None  # feature matching stops below the logits
    with pytest.raises(ValueError, match=r"labels must be -1 \(unlabelled\) or 0\.\.9"):
        model({"x": x, "y": torch.tensor([0, 0, 0, 0, 0, 10])}, phase="discriminator")


def test_classify_is_normalised_and_uses_the_averaged_discriminator():
    model = build(num_classes=3).eval()
    x = binary(5)
    out = model.classify(x)
    assert out.shape == (5, 3)
    assert torch.allclose(out.logsumexp(1), torch.zeros(5), atol=1e-6)
    with torch.no_grad():  # D changes; the average does not until it is updated
        for p in model.discriminator.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(model.classify(x), out)
    before = {k: v.clone() for k, v in model.averaged_parameters().items()}
    model.update_average()  # first update: decay min(0.999, 1/10) = 0.1
    for name, p in model.discriminator.named_parameters():
        want = 0.1 * before[name] + 0.9 * p
        assert torch.allclose(model.averaged_parameters()[name], want, atol=1e-6), name
    assert not torch.allclose(model.classify(x), out)
    assert int(model.ema_updates) == 1
    # The average travels with the state dict (a clone classifies identically; a fresh model not).
    clone = genmodels.from_export(model.export_config()).eval()
    assert not torch.allclose(clone.classify(x), model.classify(x))
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.classify(x), model.classify(x))
    assert model.embed(x).shape == (5, 8)


PROTOS = torch.tensor([[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8])


def two_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prototypes on 16 dims with 15% bit flips."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    x = PROTOS[y]
    flips = torch.rand(n, 16, generator=g) < 0.15
    return torch.where(flips, 1 - x, x), y


def train_few_labels(labels: torch.Tensor, steps: int = 25, swap: bool = False) -> float:
    """``steps`` steps on 256 unlabelled rows + 8 labelled rows; the mean probability the classifier
    gives the true class of 400 held-out rows."""
    torch.manual_seed(0)
    model = genmodels.build(
        "ssgan", input_shape=(16,), num_classes=2, latent_dim=4, gen_hidden=(16,),
        disc_hidden=(32, 16), ema_decay=0.9,
    )  # fmt: skip
    opt = model.configure_optimizers()
    x_unl, _ = two_classes(256, seed=1)
    x_lab = PROTOS[[0, 0, 0, 0, 1, 1, 1, 1]]
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(len(x_unl), (32,), generator=g)
        batch = {
            "x": torch.cat([x_unl[idx], x_lab]),
            "y": torch.cat([torch.full((32,), -1), labels]),
        }
        for phase in model.phases:
            opt[phase].zero_grad()
            model(batch, phase=phase)["loss"].backward()
            opt[phase].step()
    x_test, y_test = two_classes(400, seed=3)
    log_p = model.eval().classify(x_test)
    truth = 1 - y_test if swap else y_test  # swap: the labels name the prototypes the other way
    return log_p[torch.arange(400), truth].exp().mean().item()


def test_few_labels_classify_far_above_chance_and_uninformative_labels_do_not():
    right = train_few_labels(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert right > 0.9, right
    # The classes follow the labels, not a lucky split of the clusters: labels that name the
    # prototypes the other way round give the other classifier.
    swapped = train_few_labels(torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]), swap=True)
    assert swapped > 0.9, swapped
    # Control: the same rows with labels independent of the class (half of each prototype
    # labelled 0, half 1) teach nothing about the class.
    noise = train_few_labels(torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))
    assert 0.3 < noise < 0.7, noise


# ------------------------------------------------------------------------ shift augmentation
def test_random_shift_translates_each_image_with_zeros_shifted_in():
    from genmodels.layers import random_shift

    x = torch.rand(400, 2, 5, 7) + 0.1  # no zero pixel: a wrapped-in value is never 0
    assert random_shift(x, 0) is x
    torch.manual_seed(0)
    out = random_shift(x, 2)
    offsets = [is_a_shift(out[i], x[i], 2) for i in range(len(x))]
    assert None not in offsets
    assert len(set(offsets)) == 25  # every offset in -2..2 x -2..2 is drawn
    # controls: a wrap-around shift, and a shift farther than k, are not such translations
    assert is_a_shift(torch.roll(x[0], 1, dims=-1), x[0], 2) is None
    assert is_a_shift(F.pad(x[0], (0, 0, 3, 0))[..., :5, :], x[0], 2) is None


def test_shift_moves_the_real_images_d_sees_in_training_only():
    shape = (1, 6, 6)
    x = binary(8, shape)
    seen = []
    for shift, train in ((2, True), (0, True), (2, False)):
        model = build(shape, shift=shift).train(train)
        hook = model.discriminator.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        torch.manual_seed(3)
        model({"x": x}, phase="discriminator")
        hook.remove()
    shifted, plain, evaluated = (seen[i][: len(x)].view(len(x), *shape) for i in (0, 2, 4))
    assert all(is_a_shift(shifted[i], x[i], 2) is not None for i in range(len(x)))
    assert not torch.equal(shifted, x)  # control: they moved ...
    assert torch.equal(plain, x) and torch.equal(evaluated, x)  # ... and not without shift
    with pytest.raises(ValueError, match="shift must be >= 0"):
        build(shape, shift=-1)
    with pytest.raises(ValueError, match=r"shift needs image inputs \(C, H, W\)"):
        build((6,), shift=1)
