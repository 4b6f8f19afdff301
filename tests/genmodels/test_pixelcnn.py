"""PixelCNN's maths: the density normalises (Bernoulli, softmax, discretised logistic mixture, one
or several channels), the network is autoregressive in raster-then-channel order, the cropped
sampler matches the full recompute and the model's own log_prob, and training learns."""

from __future__ import annotations

import itertools

import pytest
import torch

import genmodels
import genmodels.pixelcnn  # registers the family
from genmodels.layers import conv_mask
from tests.genmodels.checks import assert_samples_follow_log_prob

TINY = {"channels": 8, "num_layers": 2}


def far_from_uniform(shape, levels=2, seed=0, scale=3.0, **config) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    config = {**TINY, **config}
    model = genmodels.build("pixelcnn", input_shape=shape, levels=levels, seed=seed, **config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # large weights: a peaked, far-from-uniform distribution
    return model.eval()


def all_states(shape, levels) -> torch.Tensor:
    values = itertools.product(range(levels), repeat=shape[0] * shape[1] * shape[2])
    return torch.tensor(list(values), dtype=torch.float).view(-1, *shape)


def log_probs_of_all_states(model) -> torch.Tensor:
    with torch.no_grad():
        return model.log_prob(all_states(model.input_shape, model.levels)).double()


def break_first_mask(model) -> None:
    """Control: the first layer gets a type-B mask, so each pixel's output sees the pixel."""
    first = model.trunk[0]
    first.mask.copy_(conv_mask(*first.weight.shape[:3], "B", model.input_shape[0]))


# ---------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gated", [False, True])
def test_binary_sums_to_one_over_all_states(seed, gated):
    model = far_from_uniform((1, 2, 4), seed=seed, gated=gated)
    lp = log_probs_of_all_states(model)
    assert lp.max() - lp.min() > 3.0  # the check is not trivially passed by a uniform model
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_first_layer_with_mask_b_fails_normalisation():
    model = far_from_uniform((1, 2, 4))
    break_first_mask(model)
    assert abs(log_probs_of_all_states(model).exp().sum().item() - 1.0) > 1e-2


DISCRETE_CASES = {
    "softmax": ((1, 2, 3), 3, {"output": "softmax"}),
    "mixture": ((1, 2, 3), 3, {"output": "logistic_mixture", "num_mixtures": 2}),
    "mixture-2ch": ((2, 1, 3), 3, {"output": "logistic_mixture", "num_mixtures": 3}),
    "softmax-2ch-gated": ((2, 1, 3), 3, {"output": "softmax", "gated": True}),
    "binary-3ch": ((3, 1, 2), 2, {"channels": 9, "kernel_size": 3}),
}


@pytest.mark.parametrize("case", sorted(DISCRETE_CASES))
def test_discrete_and_multichannel_sum_to_one(case):
    shape, levels, config = DISCRETE_CASES[case]
    model = far_from_uniform(shape, levels, **config)
    lp = log_probs_of_all_states(model)
    assert lp.max() - lp.min() > 3.0
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    break_first_mask(model)  # the same check catches a pixel (or channel) that sees itself
    assert abs(log_probs_of_all_states(model).exp().sum().item() - 1.0) > 1e-3


def test_discretized_logistic_bins_sum_to_one_with_extreme_parameters():
    """All L bins of one mixture sum to one, also for tiny/huge scales and far-off means."""
    levels = 256
    params = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, -20.0, 1.0],  # mean near -1 and one far outside
            [3.0, -1.0, 0.99, 0.2, -7.0, -8.0],  # a very sharp component (log-scale clamped)
            [1.0, 1.0, 1.0, 30.0, 7.0, 9.0],  # a very wide component
        ]
    ).unsqueeze(1)  # (3, 1, 3K) with K = 2
    values = torch.arange(levels, dtype=torch.float)[None, :]
    lp = genmodels.pixelcnn.discretized_logistic_mixture_log_prob(params, values, levels)
    assert torch.isfinite(lp).all()
    assert lp.double().exp().sum(-1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


# ------------------------------------------------------------------------------ autoregression
def dependencies(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, D) booleans: output i depends on input j, and input j precedes output i, where the
    D = C * H * W values are ordered by (row, column, channel)."""
    c, h, w = model.input_shape
    x = torch.rand(1, c, h, w) * (model.levels - 1)
    jac = torch.autograd.functional.jacobian(lambda v: model.params(v), x)  # (1,C,H,W,P,1,C,H,W)
    deps = jac[0].abs().sum(3)[..., 0, :, :, :].reshape(c * h * w, c * h * w) > 0
    ch, row, col = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    order = ((row * w + col) * c + ch).flatten()
    return deps, order[None, :] < order[:, None]


JACOBIAN_CASES = {
    "binary": ((1, 2, 4), 2, {}),
    "deep-3x3": ((1, 4, 5), 2, {"kernel_size": 3, "num_layers": 3, "gated": True}),
    "2ch-mixture": ((2, 2, 3), 4, {"output": "logistic_mixture", "num_mixtures": 2}),
}


@pytest.mark.parametrize("case", sorted(JACOBIAN_CASES))
def test_autoregressive_property_by_jacobian(case):
    shape, levels, config = JACOBIAN_CASES[case]
    model = far_from_uniform(shape, levels, scale=1.0, **config)
    deps, allowed = dependencies(model)
    assert not (deps & ~allowed).any(), "an output sees its own input or a later one"
    assert deps[allowed].float().mean() > 0.5  # the masks are not trivially empty
    break_first_mask(model)
    deps, allowed = dependencies(model)
    assert (deps & ~allowed).any()


# ----------------------------------------------------------------------------------- sampling
def test_cropped_rows_equal_the_full_pass():
    """params(x, row=r) computes row r from the rows it sees; it must equal the full pass."""
    model = far_from_uniform((2, 7, 3), 3, scale=1.0, kernel_size=3, num_layers=3, gated=True)
    assert model.receptive_rows < 7  # the crop really drops rows
    x = torch.randint(0, 3, (4, 2, 7, 3)).float()
    with torch.no_grad():
        full = model.params(x)
        for r in range(7):
            torch.testing.assert_close(model.params(x, row=r), full[:, :, r : r + 1])


@pytest.mark.parametrize(
    "shape, levels, config",
    [
        ((1, 6, 3), 2, {"kernel_size": 3}),
        ((2, 5, 2), 3, {"kernel_size": 3, "output": "logistic_mixture", "num_mixtures": 2}),
    ],
)
def test_cropped_sampler_equals_full_recompute(shape, levels, config):
    model = far_from_uniform(shape, levels, **config)
    fast = model.sample(64, generator=torch.Generator().manual_seed(3))
    naive = model._sample(64, generator=torch.Generator().manual_seed(3), cropped=False)
    assert torch.equal(fast, naive)
    assert fast.shape == (64, *shape) and set(fast.unique().tolist()) == set(range(levels))


@pytest.mark.parametrize(
    "shape, levels, config",
    [
        ((1, 9, 7), 2, {"kernel_size": 5, "num_layers": 3}),
        ((2, 6, 5), 3, {"kernel_size": 3, "output": "logistic_mixture", "num_mixtures": 2}),
        ((3, 5, 4), 4, {"kernel_size": 3, "gated": True, "channels": 6, "block_kernel_size": 5}),
        ((1, 7, 6), 2, {"kernel_size": 3, "conditional": True, "num_classes": 3}),
    ],
)
def test_cached_sampler_equals_the_cropped_and_full_samplers(shape, levels, config):
    """``sample`` (every layer's activations cached, one position per layer per step) draws the
    samples of the row-cropped and the full-recompute samplers for a seed; control: the cropped
    sampler on a model whose first convolution differs in one tap above-left of the centre (a
    value the cached sampler reads from its cache) draws different samples."""
    model = far_from_uniform(shape, levels, **config)
    if model.num_labels:
        with torch.no_grad():
            for emb in model.label_embeddings:
                emb.weight.normal_(0, 2.0)
    labels = torch.arange(64) % 3 if model.num_labels else None
    cond = {"label": labels} if model.num_labels else None
    cached = model.sample(64, generator=torch.Generator().manual_seed(4), condition=cond)
    gen = torch.Generator().manual_seed(4)
    cropped = model._sample(64, generator=gen, cropped=True, labels=labels)
    full = model._sample(
        64, generator=torch.Generator().manual_seed(4), cropped=False, labels=labels
    )
    assert torch.equal(cached, cropped) and torch.equal(cached, full)
    assert set(cached.unique().tolist()) == set(range(levels))
    with torch.no_grad():
        model.trunk[0].weight[:, :, 0, 0] += 2.0
    control = model._sample(
        64, generator=torch.Generator().manual_seed(4), cropped=True, labels=labels
    )
    assert not torch.equal(cached, control)


def test_samples_follow_the_model():
    """Empirical frequencies of samples over the 2^4 states match exp(log_prob)."""
    model = far_from_uniform((1, 2, 2), scale=4.0)
    assert_samples_follow_log_prob(model)


# ----------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "levels, steps, config",
    [
        (2, 30, {"lr": 1e-2}),
        (4, 60, {"lr": 3e-3, "output": "logistic_mixture", "num_mixtures": 2, "gated": True}),
    ],
)
def test_training_learns_repeated_rows(levels, steps, config):
    """Toy data: a random first row copied down the image; after row 0 every pixel is
    predictable from the one above, so the NLL can fall from ~16 log L to ~4 log L."""
    gen = torch.Generator().manual_seed(0)

    def data(n):
        return torch.randint(0, levels, (n, 1, 1, 4), generator=gen).float().expand(n, 1, 4, 4)

    torch.manual_seed(0)
    model = genmodels.build(
        "pixelcnn", (1, 4, 4), levels, channels=16, num_layers=2, kernel_size=3, **config
    )
    opt = model.configure_optimizers()["main"]
    test = data(256)
    with torch.no_grad():
        before = -model.log_prob(test).mean().item()
    for _ in range(steps):
        opt.zero_grad()
        model({"x": data(64)})["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = -model.log_prob(test).mean().item()
    floor = 4 * torch.log(torch.tensor(float(levels))).item()
    assert after < 0.5 * before and after < floor + 0.3 * (before - floor)


# ----------------------------------------------------------------------------------- config
def test_config_and_input_errors():
    with pytest.raises(ValueError, match="multiple of the number of data channels"):
        genmodels.build("pixelcnn", (3, 4, 4), channels=8)
    with pytest.raises(ValueError, match="odd"):
        genmodels.build("pixelcnn", (1, 4, 4), kernel_size=4)
    with pytest.raises(ValueError, match="output"):
        genmodels.build("pixelcnn", (1, 4, 4), output="gaussian")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        genmodels.build("pixelcnn", (16,))
    model = genmodels.build("pixelcnn", (1, 2, 2), levels=256, **TINY)
    assert model.log_prob(torch.full((1, 1, 2, 2), 255.0)).shape == (1,)
    with pytest.raises(ValueError, match=r"integers in 0\.\.255"):
        model.log_prob(torch.full((1, 1, 2, 2), 256.0))
