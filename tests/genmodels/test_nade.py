"""NADE's maths: the density normalises, is autoregressive in its order, the O(D·H) recurrence
equals the naive O(D²·H) one, samples follow the density, and it trains."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.nade import NADE  # importing the module registers the family
from tests.genmodels.checks import assert_samples_follow_log_prob, assert_training_fits_toy_data

ALL_STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8))).view(256, 1, 2, 4)


class LeakyNADE(NADE):
    """A broken NADE for the controls: h_d is computed from x_<=d, so p(x_d | ...) sees x_d."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x_ordered = x.flatten(1)[:, self.order]
        pre = self.c + (x_ordered[:, :, None] * self.W[:, self.order].T).cumsum(1)  # inclusive
        out = torch.einsum("bdh,dh->bd", torch.sigmoid(pre), self.V[self.order])
        out = out + self.b[self.order]
        return torch.empty_like(out).index_copy_(1, self.order, out)


def far_from_uniform(
    seed: int,
    shape: tuple[int, ...] = (1, 2, 4),
    scale: float = 4.0,
    cls: type[NADE] = NADE,
    **config,
) -> NADE:
    torch.manual_seed(seed)
    cfg = genmodels.make_config("nade", {"hidden_size": 16, "seed": seed, **config})
    model = cls(shape, 2, cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # large weights: a peaked, far-from-uniform distribution
        model.b.normal_(0.0, 1.0)  # biases start at zero: give them a value too
        model.c.normal_(0.0, 1.0)
    return model


def total_mass(model) -> float:
    with torch.no_grad():
        return model.log_prob(ALL_STATES).double().exp().sum().item()


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("order_seed", [-1, 5])
def test_sums_to_one_over_all_states(seed, order_seed, activation):
    model = far_from_uniform(seed, order_seed=order_seed, activation=activation)
    with torch.no_grad():
        lp = model.log_prob(ALL_STATES)
    assert lp.max() - lp.min() > 3.0  # the check is not trivially passed by a uniform model
    assert total_mass(model) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("order_seed", [-1, 5])
def test_leaky_hidden_layer_fails_normalisation(seed, order_seed):
    """Control: h_d computed from x_<=d (not x_<d) breaks normalisation."""
    model = far_from_uniform(seed, order_seed=order_seed, cls=LeakyNADE)
    assert abs(total_mass(model) - 1.0) > 1e-2


def test_order_seed_gives_a_fixed_random_order():
    raster = far_from_uniform(0).order
    a, b = far_from_uniform(0, order_seed=5).order, far_from_uniform(1, order_seed=5).order
    assert torch.equal(raster, torch.arange(8))
    assert torch.equal(a, b) and not torch.equal(a, raster)
    assert torch.equal(a.sort().values, raster)


@pytest.mark.parametrize("order_seed", [-1, 0, 3, 5])
def test_without_input_weights_each_dimension_keeps_its_own_bias(order_seed):
    """With W = 0 every hidden state is sigmoid(c), so the model factorises whatever the order:
    p(x_d = 1) = sigmoid(b_d + V_d . sigmoid(c)), dimension d's own bias and output row. A bias
    or output row taken by step instead of by dimension (only a random order can show it:
    raster order visits dimension i at step i) gives another, still normalised, density."""
    model = far_from_uniform(1, order_seed=order_seed)
    with torch.no_grad():
        model.W.zero_()
        model.b.copy_(torch.linspace(-3.0, 3.0, 8))  # distinct biases: a swap changes p
        logits = model.b + model.V @ torch.sigmoid(model.c)  # (D,), in dimension order
        x = ALL_STATES.flatten(1)
        expected = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(1)
        torch.testing.assert_close(model.log_prob(ALL_STATES), expected, atol=1e-5, rtol=0)
        freq = model.sample(20000, generator=torch.Generator().manual_seed(0)).flatten(1).mean(0)
    assert (freq - torch.sigmoid(logits)).abs().max() < 0.02


def dependencies(model) -> torch.Tensor:
    """(D, D) boolean: logit i depends on input j (by the autograd Jacobian)."""
    x = torch.rand(1, model.num_dims)
    jac = torch.autograd.functional.jacobian(model.logits, x)  # (1, D, 1, D)
    return jac[0, :, 0, :].abs() > 0


def allowed_dependencies(model) -> torch.Tensor:
    """(D, D) boolean: input j precedes output i in the model's order."""
    position = torch.argsort(model.order)  # position[d] = when dimension d is visited
    return position[None, :] < position[:, None]


@pytest.mark.parametrize("order_seed", [-1, 5])
def test_autoregressive_property_by_jacobian(order_seed):
    model = far_from_uniform(0, order_seed=order_seed)
    deps, allowed = dependencies(model), allowed_dependencies(model)
    assert not (deps & ~allowed).any(), "an output sees its own or a later input"
    assert deps[allowed].all()  # every earlier input is used


def test_jacobian_check_catches_a_leaky_hidden_layer():
    model = far_from_uniform(0, order_seed=5, cls=LeakyNADE)
    assert (dependencies(model) & ~allowed_dependencies(model)).any()


def naive_log_prob(model, x: torch.Tensor) -> torch.Tensor:
    """The definition, term by term: h_d recomputed from scratch from x_<d for each d."""
    x = x.flatten(1)
    total = torch.zeros(len(x))
    for i, d in enumerate(model.order.tolist()):
        seen = model.order[:i]
        h = model._hidden(model.c + x[:, seen] @ model.W[:, seen].T)  # (B, H)
        p = torch.sigmoid(model.b[d] + h @ model.V[d])
        total += torch.where(x[:, d] == 1, p, 1 - p).log()
    return total


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("order_seed", [-1, 5])
def test_fast_log_prob_equals_the_naive_loop(order_seed, activation):
    model = far_from_uniform(2, scale=1.0, order_seed=order_seed, activation=activation)
    with torch.no_grad():
        fast, naive = model.log_prob(ALL_STATES), naive_log_prob(model, ALL_STATES)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    leaky = far_from_uniform(2, scale=1.0, order_seed=order_seed, cls=LeakyNADE)
    with torch.no_grad():  # control: the comparison can tell a leaky model apart
        assert (leaky.log_prob(ALL_STATES) - naive_log_prob(leaky, ALL_STATES)).abs().max() > 1e-2


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("order_seed", [-1, 3])
def test_samples_follow_the_model(order_seed, activation):
    """Sampling agrees with log_prob: empirical frequencies over 2^4 states match exp(log_prob)."""
    model = far_from_uniform(0, shape=(4,), scale=3.0, order_seed=order_seed, activation=activation)
    assert_samples_follow_log_prob(model)


def test_training_lowers_the_nll():
    torch.manual_seed(0)
    assert_training_fits_toy_data(
        genmodels.build("nade", input_shape=(8,), hidden_size=16, lr=3e-2)
    )


def loop_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The plain recurrence with autograd, one step at a time (the reference the chunked
    forward and hand-written backward must equal)."""
    xo, w = x.flatten(1)[:, model.order], model.W[:, model.order]
    a, out = model.c.expand(len(x), -1), []
    for i, d in enumerate(model.order.tolist()):
        out.append(model._hidden(a) @ model.V[d] + model.b[d])
        a = a + xo[:, i, None] * w[:, i]
    ordered = torch.stack(out, 1)
    return torch.empty_like(ordered).index_copy_(1, model.order, ordered)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
@pytest.mark.parametrize("order_seed", [-1, 5])
def test_chunked_logits_and_gradients_equal_the_plain_recurrence(
    chunk, order_seed, activation, monkeypatch
):
    """Any chunk size (one step, chunks that do not divide D, one chunk) gives the loop's logits
    and the gradients of every parameter, in float64."""
    import genmodels.nade as nade_module

    monkeypatch.setattr(nade_module, "chunk_size", lambda *a: chunk)
    model = far_from_uniform(3, scale=1.0, order_seed=order_seed, activation=activation).double()
    x = torch.bernoulli(torch.full((5, 1, 2, 4), 0.5, dtype=torch.float64))
    r = torch.randn(5, 8, dtype=torch.float64)  # a generic linear functional of the logits
    params = list(model.parameters())
    fast = model.logits(x)
    slow = loop_logits(model, x)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0)
    g_fast = torch.autograd.grad((fast * r).sum(), params)
    g_slow = torch.autograd.grad((slow * r).sum(), params)
    for name, a, b in zip([n for n, _ in model.named_parameters()], g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)
    # control: the same comparison tells a leaky model (h_d sees x_d) from the loop
    leaky = far_from_uniform(3, scale=1.0, order_seed=order_seed, cls=LeakyNADE).double()
    assert (leaky.logits(x) - slow).abs().max() > 1e-3


def test_hand_written_backward_passes_gradcheck_and_a_broken_one_does_not():
    from genmodels.nade import NADELogits

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 7, dtype=torch.float64, generator=g, requires_grad=True)  # dx too
    w, v = (torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in "wv")
    c = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    for chunk, relu in itertools.product((1, 3, 7), (False, True)):
        assert torch.autograd.gradcheck(
            lambda *p, k=chunk, r=relu: NADELogits.apply(x, *p, k, r), (w, v, c, b)
        )

    class Broken(NADELogits):  # control: the input weights' gradient forgets later chunks
        @staticmethod
        def backward(ctx, grad):
            out = NADELogits.backward(ctx, grad)
            dw = out[1].clone()
            dw[0] = 0.0
            return (out[0], dw, *out[2:])

    assert not torch.autograd.gradcheck(
        lambda *p: Broken.apply(*p, 3), (x, w, v, c, b), raise_exception=False
    )
