"""Class-conditional variants (``conditional=True``) of GAN (AC-GAN), VAE (CVAE), MADE and PixelCNN.

* the exact conditional likelihoods (MADE, PixelCNN) normalise over every binary state for each
  label, and the unconditional marginal too; a leaky mask and the mean-over-labels marginal fail;
* samples for label y follow exp(log_prob(. | y)) (exact families), not another label's;
* the CVAE's importance-weighted log p(x | y) converges to quadrature over z;
* trained briefly on two classes, each family generates the requested class far above chance by a
  nearest-prototype judge (the yardstick), and the same model with its label input zeroed (the
  control) is at chance;
* labels are checked (range, count, dtype; unlabelled training data is refused), the default
  config adds nothing, and a conditional model saves and reloads exactly.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import genmodels
from tests.genmodels.checks import binary_states

FAMILIES = ("gan", "vae", "made", "pixelcnn")
TINY = {
    "gan": {"latent_dim": 4, "channels": 4, "hidden_size": 8},
    "vae": {"latent_dim": 2, "hidden_sizes": (8,), "eval_k": 8, "eval_chunk": 4},
    "made": {"hidden_sizes": (16,), "num_masks": 2},
    "pixelcnn": {"channels": 8, "num_layers": 2, "kernel_size": 3},
}
SHAPE = (1, 3, 4)


def build(name: str, shape=SHAPE, seed: int = 0, **config) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    return genmodels.build(name, shape, **{**TINY[name], **config})


def zero_label_inputs(model: genmodels.GenerativeModel) -> None:
    """The control: every weight that carries the label into the model set to zero (the
    CVAE's are the one-hot's columns of its first encoder and decoder layers)."""
    with torch.no_grad():
        if model.family == "vae":
            model.encoder[0].weight[:, model.num_dims :].zero_()
            model.decoder[0].weight[:, model.config.latent_dim :].zero_()
            return
        names = [n for n, _ in model.named_parameters() if "label" in n]
        assert names, "the model has no label parameters to zero"
        for n, p in model.named_parameters():
            if "label" in n:
                p.zero_()


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("name", FAMILIES)
def test_default_is_unconditional_and_conditional_adds_the_capability(name):
    plain = build(name)
    assert "condition:label" not in plain.capabilities
    assert not any("label" in n for n, _ in plain.named_parameters())
    model = build(name, conditional=True, num_classes=3)
    assert "condition:label" in model.capabilities
    assert model.check_condition({"label": 1}) == {"label": 1}
    with pytest.raises(ValueError, match="accepts only label"):
        model.sample(2, condition={"caption": "a 3"})
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build(name, conditional=True, num_classes=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_labels_are_checked(name):
    model = build(name, conditional=True, num_classes=3).eval()
    g = torch.Generator().manual_seed(0)
    for bad, match in [
        (3, "label 3 is out of range: this model has num_classes=3 \\(labels 0..2\\)"),
        (-1, "label -1 is out of range"),
        ([0, 1], "one class or one per row \\(4\\)"),
        (1.0, "integer class"),
        (torch.tensor([0.0, 1.0, 0.0, 1.0]), "must be integers"),
        (True, "integer class"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.sample(4, generator=g, condition={"label": bad})
    x = model.sample(4, generator=g, condition={"label": [0, 1, 2, 1]})
    assert x.shape == (4, *SHAPE)
    if model.likelihood != "none":
        with pytest.raises(ValueError, match="out of range"):
            model.score(x, generator=g, condition={"label": torch.tensor([0, 1, 7, 1])})
    phase = model.phases[0]
    with pytest.raises(ValueError, match="unlabelled example\\(s\\) \\(y = -1\\)"):
        model({"x": x, "y": torch.tensor([0, -1, 2, 1])}, phase=phase)
    with pytest.raises(ValueError, match="has no 'y'"):
        model({"x": x}, phase=phase)
    with pytest.raises(ValueError, match="training label 5 is out of range"):
        model({"x": x, "y": torch.tensor([0, 5, 2, 1])}, phase=phase)


@pytest.mark.parametrize("name", FAMILIES)
def test_conditional_model_trains_saves_and_reloads(name):
    model = build(name, conditional=True, num_classes=3)
    x = torch.bernoulli(torch.full((6, *SHAPE), 0.4), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for phase in model.phases:
        model.zero_grad(set_to_none=True)
        model({"x": x, "y": y}, phase=phase)["loss"].backward()
        stepped = list(model.phase_parameters(phase))
        assert all(p.grad is not None for p in stepped), phase
    assert all(p.grad is not None for p in model.parameters())  # every parameter trains
    copy = genmodels.from_export(model.export_config())
    copy.load_state_dict(model.state_dict())
    model.eval(), copy.eval()
    cond = {"label": torch.tensor([2, 0, 1, 1, 0, 2])}
    s1 = model.sample(6, generator=torch.Generator().manual_seed(3), condition=cond)
    s2 = copy.sample(6, generator=torch.Generator().manual_seed(3), condition=cond)
    assert torch.equal(s1, s2)
    # No condition: the uniform label mixture, reproducible under a seed.
    m1 = model.sample(6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(m1, copy.sample(6, generator=torch.Generator().manual_seed(4)))
    if model.likelihood != "none":
        a = model.score(x, generator=torch.Generator().manual_seed(5), condition=cond)
        b = copy.score(x, generator=torch.Generator().manual_seed(5), condition=cond)
        assert torch.equal(a.log_prob, b.log_prob)
        assert a.method.endswith("-conditional:label")
        marginal = model.score(x, generator=torch.Generator().manual_seed(5))
        assert marginal.method.endswith("-marginal:uniform-label")


# ----------------------------------------------------------------- exact conditional likelihoods
ALL8 = binary_states((1, 2, 4))


def peaked(name: str, seed: int, shape=(1, 2, 4), **config) -> genmodels.GenerativeModel:
    """A conditional model with large random weights (label embeddings included): far from
    uniform, with label-dependent distributions."""
    model = build(name, shape, seed=seed, conditional=True, num_classes=3, **config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (2.0 if "label" in n else 0.5))
    return model


def masses(model, states=ALL8) -> list[float]:
    with torch.no_grad():
        return [
            model.log_prob(states, condition={"label": y}).double().exp().sum().item()
            for y in range(model.config.num_classes)
        ]


EXACT = [
    ("made", {"hidden_sizes": (12,), "num_masks": 1}),
    ("made", {"hidden_sizes": (12, 12), "num_masks": 3}),
    ("pixelcnn", {"gated": False}),
    ("pixelcnn", {"gated": True}),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("name", "config"), EXACT)
def test_conditional_likelihood_normalises_for_each_label(name, config, seed):
    model = peaked(name, seed, **config)
    with torch.no_grad():
        per_label = torch.stack(
            [model.log_prob(ALL8, condition={"label": y}) for y in range(3)], 1
        ).double()
        marginal = model.log_prob(ALL8).double()
    assert masses(model) == pytest.approx([1.0] * 3, abs=1e-5)
    # The labels matter: total variation between p(. | 0) and p(. | 1) is large.
    tv = 0.5 * (per_label[:, 0].exp() - per_label[:, 1].exp()).abs().sum().item()
    assert tv > 0.2, tv
    # No condition: the uniform mixture, which normalises; the mean of the per-label log-probs
    # (a plausible bug) does not (Jensen: strictly below 1 when the labels differ).
    want = torch.logsumexp(per_label, 1) - math.log(3)
    assert torch.allclose(marginal, want, atol=1e-5)
    assert marginal.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert per_label.mean(1).exp().sum().item() < 0.99


@pytest.mark.parametrize("name", ["made", "pixelcnn"])
def test_leaky_conditional_model_fails_normalisation(name):
    """Control: a mask that lets an output see its own input breaks every label's sum."""
    model = peaked(name, 0)
    with torch.no_grad():
        if name == "made":
            model.direct.masks[0].fill_diagonal_(1.0)
        else:
            model.trunk[0].mask.fill_(1.0)  # the type-A layer sees the centre and beyond
    # Measured: label masses 1.10, 1.09, 1.001 (MADE) and 0.998, 1.06, 1.04 (PixelCNN).
    assert max(abs(m - 1.0) for m in masses(model)) > 0.03, masses(model)


@pytest.mark.parametrize(("name", "config"), [EXACT[1], EXACT[3]])
def test_samples_for_a_label_follow_its_conditional_likelihood(name, config):
    model = peaked(name, 2, **config)
    n, y = 20000, 2
    with torch.no_grad():
        probs = [model.log_prob(ALL8, condition={"label": k}).exp() for k in range(3)]
        x = model.sample(n, generator=torch.Generator().manual_seed(0), condition={"label": y})
    idx = (x.flatten(1) @ 2.0 ** torch.arange(7, -1, -1)).long()
    freq = torch.bincount(idx, minlength=256).float() / n
    # Multinomial sd of a frequency is <= 0.5 / sqrt(n) = 0.0035: 0.015 is > 4 sd.
    assert (freq - probs[y]).abs().max() < 0.015
    # Control: another label's distribution is far from these samples.
    assert (freq - probs[0]).abs().max() > 0.05


def test_conditional_impute_weighs_the_labels_exactly():
    """A conditional MADE's imputation without a label is the marginal's conditional: its exact
    log p(x_mis | x_obs) equals the enumeration over the missing entries."""
    model = peaked("made", 3, hidden_sizes=(12,), num_masks=2)
    x = ALL8[[5, 77, 200]]
    mask = torch.ones_like(x)
    mask[:, :, 1] = 0  # the second row missing: after the observed ones in the natural order
    model_one = peaked("made", 3, hidden_sizes=(12,), num_masks=1)
    for m in (model, model_one):
        r = m.impute(x, mask, generator=torch.Generator().manual_seed(0), num_samples=2)
        with torch.no_grad():
            lp_all = m.log_prob(ALL8)
        obs = ALL8[:, :, 0].flatten(1)  # (256, 4)
        want = []
        for row in x:
            same = (obs == row[:, 0].flatten()).all(1)
            want.append(m.log_prob(row[None])[0] - torch.logsumexp(lp_all[same], 0))
        if m.config.num_masks == 1:  # every component's order puts the observed row first
            assert r.log_prob_method == "exact"
            assert torch.allclose(r.log_prob_missing, torch.stack(want), atol=1e-4)
        assert torch.equal(r.samples[:, :, :, 0], x[None, :, :, 0].expand(2, -1, -1, -1))


# --------------------------------------------------------------------------------------- CVAE
def tiny_cvae(seed: int = 0) -> genmodels.GenerativeModel:
    """A 1-D latent CVAE on 5 binary dims: log p(x | y) is computable by quadrature over z."""
    torch.manual_seed(seed)
    model = genmodels.build(
        "vae", (5,), latent_dim=1, hidden_sizes=(16,), eval_chunk=500,
        conditional=True, num_classes=3,
    ).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(2.5)  # a decoder far from uniform
        model.decoder[0].weight[:, 1:].mul_(2.0)  # ... whose label input matters
    return model


def quadrature(model, x: torch.Tensor, y: int) -> torch.Tensor:
    """log ∫ N(z; 0, 1) p(x | z, y) dz by the trapezoid rule on z ∈ [-10, 10]."""
    z = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)
    labels = torch.full((len(x),), y)
    log_joint = model.decoder_log_prob(x, z[:, None, None].expand(-1, len(x), 1), labels)
    log_joint = log_joint - 0.5 * (z[:, None] ** 2 + math.log(2 * math.pi))
    w = torch.full_like(z, (z[1] - z[0]).item())
    w[[0, -1]] *= 0.5
    return torch.logsumexp(log_joint + w.log()[:, None], 0)


def test_cvae_conditional_estimate_converges_to_quadrature():
    model = tiny_cvae()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5))).double()
    x = states[[0, 9, 22, 31]]
    with torch.no_grad():
        exact = torch.stack([quadrature(model, states, y) for y in range(3)], 1)  # (32, 3)
        assert exact.exp().sum(0).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
        assert (exact[:, 0] - exact[:, 2]).abs().max() > 0.5  # the label changes p(x | y)
        for y in range(3):
            big = model.log_prob(
                x, generator=torch.Generator().manual_seed(y), k=20000, condition={"label": y}
            )
            want = exact[[0, 9, 22, 31], y]
            assert (big - want).abs().max() < 0.02, (big, want)
            # Control: scored under another label, the estimate misses the exact value.
            other = model.log_prob(
                x, generator=torch.Generator().manual_seed(y), k=2000,
                condition={"label": (y + 1) % 3},
            )  # fmt: skip
            assert (other - want).abs().max() > 0.1
        marginal = model.log_prob(x, generator=torch.Generator().manual_seed(9), k=30000)
        want = torch.logsumexp(exact[[0, 9, 22, 31]], 1) - math.log(3)
        assert (marginal - want).abs().max() < 0.02


# ------------------------------------------------------- yardstick: the requested class is made
PROTOTYPES = torch.tensor(
    [
        [1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1],  # a checkerboard (label 1)
        [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0],  # two-wide vertical stripes (label 3)
    ]
).float()
LABELS = (1, 3)  # of num_classes=4: not 0/1, so an off-by-one in the one-hot shows


def two_class_data(n: int = 512, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """The two prototypes (Hamming distance 8 of 16) with 5% bit flips, half each, on (1, 4, 4)."""
    g = torch.Generator().manual_seed(0)
    which = torch.randint(2, (n,), generator=g)
    x = PROTOTYPES[which]
    x = torch.where(torch.rand(n, 16, generator=g) < noise, 1 - x, x)
    return x.view(n, 1, 4, 4), torch.tensor(LABELS)[which]


def judge(samples: torch.Tensor) -> torch.Tensor:
    """The nearest prototype's label for each sample (Hamming distance)."""
    dist = (samples.flatten(1)[:, None, :] != PROTOTYPES[None]).sum(-1)
    return torch.tensor(LABELS)[dist.argmin(1)]


def class_accuracy(model, n: int = 400) -> float:
    """Share of samples that the judge assigns to the label they were asked for."""
    requested = torch.tensor(LABELS).repeat_interleave(n // 2)
    with torch.no_grad():
        x = model.sample(
            n, generator=torch.Generator().manual_seed(0), condition={"label": requested}
        )
    return (judge(x) == requested).float().mean().item()


TRAIN = {  # steps, batch, config; measured on seeds 0-2 (one thread): accuracy, control, CPU-s
    # GAN image 120 steps: 0.99-1.0, 0.50-0.51, 2.6 s; flat 60 steps: 1.0, 0.48-0.52, 0.8 s
    "gan": (120, 64, {"latent_dim": 8, "hidden_size": 64, "channels": 8, "lr": 2e-3}),
    # 60 steps: 1.0 on both shapes, control 0.46-0.50, 0.3 s
    "vae": (100, 128, {"latent_dim": 4, "hidden_sizes": (64,), "lr": 1e-2}),
    # 120 steps: 0.99-1.0, control 0.52-0.54, 0.6 s
    "made": (120, 128, {"hidden_sizes": (64,), "num_masks": 1, "lr": 1e-2}),
    # 120 steps: 0.99, control 0.48-0.51, 2.3 s
    "pixelcnn": (120, 128, {"channels": 16, "num_layers": 2, "kernel_size": 3, "lr": 1e-2}),
}

# The projection discriminator, no class loss, the GAN's setting otherwise: seeds 0-2, 1.0 on
# both shapes, control 0.48-0.51; 4-8 CPU-s (measured with two other jobs on the two cores).
TRAIN["gan-projection"] = (120, 64, {**TRAIN["gan"][2], "projection": True, "aux_weight": 0.0})


@pytest.mark.parametrize("shape", [(1, 4, 4), (16,)], ids=["image", "flat"])
@pytest.mark.parametrize("entry", list(TRAIN))
def test_trained_on_two_classes_generates_the_requested_class(entry, shape):
    name = entry.split("-")[0]
    if name == "pixelcnn" and len(shape) == 1:
        pytest.skip("PixelCNN models images only")
    steps, batch_size, config = TRAIN[entry]
    model = build(name, shape, conditional=True, num_classes=4, **{**TINY[name], **config})
    x, y = two_class_data()
    x = x.view(len(x), *shape)
    opts = model.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        for phase in model.phases:
            opts[phase].zero_grad(set_to_none=True)
            model({"x": x[idx], "y": y[idx]}, phase=phase)["loss"].backward()
            opts[phase].step()
    model.eval()
    acc = class_accuracy(model)
    # Chance is 0.5; 400 samples give a standard error of 0.025 at chance.
    assert acc > 0.9, acc
    zero_label_inputs(model)  # the control: the same model, blind to the label
    control = class_accuracy(model)
    assert abs(control - 0.5) < 0.1, control
