"""MADE's maths: the density normalises (also as a mixture of masks) and is autoregressive."""

from __future__ import annotations

import itertools

import pytest
import torch

import genmodels
from tests.genmodels.checks import assert_samples_follow_log_prob

ALL_STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8))).view(256, 1, 2, 4)


def far_from_uniform(seed: int, **config) -> genmodels.GenerativeModel:
    torch.manual_seed(seed)
    model = genmodels.build("made", input_shape=(1, 2, 4), seed=seed, **config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # large weights: a peaked, far-from-uniform distribution
    return model


def total_mass(model) -> float:
    with torch.no_grad():
        return model.log_prob(ALL_STATES).double().exp().sum().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_masks", [1, 3])
@pytest.mark.parametrize("hidden_sizes", [(12,), (16, 16)])
def test_sums_to_one_over_all_states(seed, num_masks, hidden_sizes):
    model = far_from_uniform(seed, num_masks=num_masks, hidden_sizes=hidden_sizes)
    lp = model.log_prob(ALL_STATES)
    assert lp.max() - lp.min() > 3.0  # the check is not trivially passed by a uniform model
    assert total_mass(model) == pytest.approx(1.0, abs=1e-5)


def test_broken_mask_fails_normalisation():
    """Control: letting logit d see x_d (the direct connection's diagonal) breaks normalisation."""
    model = far_from_uniform(0, num_masks=1, hidden_sizes=(12,))
    model.direct.masks[0].fill_diagonal_(1.0)
    assert abs(total_mass(model) - 1.0) > 1e-2


def test_mean_of_log_probs_over_masks_would_not_normalise():
    """The mixture (log-mean-exp) normalises; the mean of per-mask log-probs does not."""
    model = far_from_uniform(1, num_masks=3, hidden_sizes=(12,))
    with torch.no_grad():
        per_mask = torch.stack([model._log_prob_mask(ALL_STATES, k) for k in range(3)], 1)
    assert abs(per_mask.mean(1).double().exp().sum().item() - 1.0) > 1e-3
    assert total_mass(model) == pytest.approx(1.0, abs=1e-5)


def jacobian_dependencies(model, k: int) -> torch.Tensor:
    """(D, D) boolean: logit i depends on input j."""
    model.set_mask(k)
    x = torch.rand(1, 8)
    jac = torch.autograd.functional.jacobian(lambda v: model.logits(v), x)  # (1, D, 1, D)
    return jac[0, :, 0, :].abs() > 0


@pytest.mark.parametrize("num_masks", [1, 4])
def test_autoregressive_property_by_jacobian(num_masks):
    model = far_from_uniform(0, num_masks=num_masks, hidden_sizes=(32, 32))
    for k in range(num_masks):
        deps = jacobian_dependencies(model, k)
        order = model.orders[k]  # position of each input in the order
        allowed = order[None, :] < order[:, None]  # input j precedes output i
        assert not (deps & ~allowed).any(), f"mask {k}: an output sees a later input"
        assert deps[allowed].float().mean() > 0.5  # the masks are not trivially empty


def test_jacobian_check_catches_a_broken_mask():
    model = far_from_uniform(0, num_masks=1, hidden_sizes=(32,))
    model.layers[-1].masks[0].fill_(1.0)  # output layer sees every hidden unit
    deps = jacobian_dependencies(model, 0)
    allowed = model.orders[0][None, :] < model.orders[0][:, None]
    assert (deps & ~allowed).any()


def test_samples_follow_the_model():
    """Sampling agrees with log_prob: empirical frequencies over 2^4 states match exp(log_prob)."""
    torch.manual_seed(0)
    model = genmodels.build("made", input_shape=(4,), hidden_sizes=(16,), num_masks=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    assert_samples_follow_log_prob(model)


# ------------------------------------------------------------------ incremental sampling (speed)
def peaked_made(**config) -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    model = genmodels.build("made", input_shape=(1, 6, 6), seed=0, **config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize(
    "config",
    [
        {"hidden_sizes": (40,)},
        {"hidden_sizes": (24, 16), "num_masks": 3},
        {"hidden_sizes": (40,), "direct_connection": False, "natural_order": False},
        {"hidden_sizes": (24, 16), "num_masks": 2, "conditional": True, "num_classes": 3},
    ],
)
def test_incremental_sampler_equals_the_full_recompute(config):
    """``sample`` (first layer updated one column per step) draws the same samples as the sampler
    that recomputes the network per dimension, for a seed; control: the full sampler on a model
    whose first layer lacks one input's column (what a missed incremental update would use) draws
    different samples."""
    model = peaked_made(**config)
    if model.num_labels:  # a conditional model's labels and label biases take part
        with torch.no_grad():
            for emb in model.label_embeddings:
                emb.weight.normal_(0, 2.0)
    fast = model.sample(200, generator=torch.Generator().manual_seed(7))
    full = model._sample_full(200, generator=torch.Generator().manual_seed(7))
    assert torch.equal(fast, full)
    assert 0.05 < fast.mean() < 0.95
    d = int(torch.argsort(model.orders[0])[3])  # an early dimension of mask 0's order
    with torch.no_grad():
        model.layers[0].weight[:, d] = 0.0
    control = model._sample_full(200, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(fast, control)


def test_dropout_is_training_only_and_eval_stays_normalised():
    """With dropout 0.5, training-mode logits are random (control: they differ between two
    calls) while evaluation is deterministic, equal to the same weights without dropout, and
    still sums to one by enumeration."""
    model = far_from_uniform(0, hidden_sizes=(16, 16), dropout=0.5)
    plain = far_from_uniform(0, hidden_sizes=(16, 16))
    x = ALL_STATES.flatten(1)
    model.train()
    with torch.no_grad():
        a, b = model.logits(x), model.logits(x)
    assert not torch.equal(a, b)  # control: dropout is on in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.logits(x), model.logits(x))
        assert torch.equal(model.log_prob(ALL_STATES), plain.log_prob(ALL_STATES))
    assert total_mass(model) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="dropout"):
        genmodels.build("made", input_shape=(1, 2, 4), dropout=1.0)
