"""Weight averaging (``genmodels.averaging``) and where the Boltzmann machines use it: the average
follows its formula, inference reads it, training reads the raw weights, and it survives a
reload; PCD chain restarts put exactly the drawn share of chains back at noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import genmodels
from genmodels import averaging
from tests.genmodels.checks import toy_data


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        averaging.register(self, ("w",))


def reference_average(values: list[torch.Tensor], decay: float) -> torch.Tensor:
    """The debiased EMA written out from its definition, independently of the module."""
    avg = values[0].clone()
    for n, value in enumerate(values[1:], start=2):
        d = min(decay, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * value
    return avg


@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_update_is_the_debiased_moving_average(decay):
    torch.manual_seed(0)
    module, values = Holder(), []
    assert not averaging.active(module)
    assert averaging.pick(module, "w", True) is module.w  # nothing averaged yet: the parameter
    for _ in range(40):
        with torch.no_grad():
            module.w.copy_(torch.randn(3))
        values.append(module.w.detach().clone())
        averaging.update(module, ("w",), decay)
    expected = reference_average(values, decay)
    assert torch.allclose(module.avg_w, expected, atol=1e-6)
    assert torch.equal(averaging.pick(module, "w", True), module.avg_w)
    assert averaging.pick(module, "w", False) is module.w
    if decay > 0.9:  # control: the plain (undebiased) average differs (at 0.5 both forget fast)
        plain = values[0].clone()
        for value in values[1:]:
            plain = decay * plain + (1 - decay) * value
        assert not torch.allclose(plain, module.avg_w, atol=1e-3)


FAMILIES = {
    "dbm": ({"hidden_sizes": (6, 4)}, ("w1", "w2", "bias_v", "bias_h1", "bias_h2")),
    "rbm": ({"hidden_size": 5}, ("weight", "visible_bias", "hidden_bias")),
}


def trained(family: str, steps: int = 20, **cfg) -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    shape = FAMILIES[family][0]
    model = genmodels.build(family, input_shape=(8,), lr=0.05, num_chains=16, **shape, **cfg)
    opt = model.configure_optimizers()["main"]
    x = toy_data(64)
    for _ in range(steps):
        opt.zero_grad()
        model({"x": x})["loss"].backward()
        opt.step()
    return model


def with_weights(model, source: str) -> genmodels.GenerativeModel:
    """A copy of ``model`` with averaging off whose raw weights are ``model``'s averages
    (``source="avg"``) or its raw weights (``"raw"``)."""
    family = model.family
    names = FAMILIES[family][1]
    plain = genmodels.build(family, input_shape=(8,), **FAMILIES[family][0])
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("avg_")}
    if source == "avg":
        for name in names:
            state[name] = getattr(model, f"avg_{name}").clone()
    plain.load_state_dict(state)
    return plain


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_inference_reads_the_averages_and_training_the_raw_weights(family):
    model = trained(family, average_decay=0.9)
    first = FAMILIES[family][1][0]
    assert not torch.allclose(getattr(model, f"avg_{first}"), getattr(model, first))
    x = toy_data(16)
    assert torch.allclose(model.log_prob(x), with_weights(model, "avg").log_prob(x), atol=1e-5)
    # control: the raw weights score differently, so the check above can fail
    assert not torch.allclose(model.log_prob(x), with_weights(model, "raw").log_prob(x), atol=1e-3)
    # training still reaches the raw parameters (the averages are buffers, without gradients)
    model.zero_grad()
    model({"x": x})["loss"].backward()
    grad = getattr(model, first).grad
    assert grad is not None and grad.abs().sum() > 0
    off = trained(family, average_decay=0.0)  # averaging off: nothing is averaged
    assert int(off.avg_count) == 0
    assert torch.equal(off.log_prob(x), with_weights(off, "raw").log_prob(x))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_averages_survive_a_reload_and_old_weights_load_without_them(family):
    model = trained(family, average_decay=0.9)
    clone = genmodels.from_export(model.export_config())
    clone.load_state_dict(model.state_dict())
    x = toy_data(16)
    assert torch.equal(model.log_prob(x), clone.log_prob(x))
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("avg_")}
    legacy = genmodels.from_export(model.export_config())
    legacy.load_state_dict(old)  # weights saved before averaging existed: the raw weights
    assert int(legacy.avg_count) == 0
    assert torch.equal(legacy.log_prob(x), with_weights(model, "raw").log_prob(x))


def test_rbm_chain_restart_puts_chains_back_at_noise():
    """An RBM whose all-on state is sticky (a hidden unit fires only when all 8 visibles are on,
    and turns them all on) and whose other states fall to all-off: chains set to all-on stay on
    without restarts, and fall to about 0 when every chain restarts at base-rate noise."""
    x = toy_data(64)
    runs = {}
    for rate in (0.0, 1.0):
        torch.manual_seed(0)
        model = genmodels.build(
            "rbm", input_shape=(8,), hidden_size=5, num_chains=400, cd_k=1, chain_restart=rate
        )
        model({"x": x})  # sets the base rates (about 1/2 on) and creates the chains
        with torch.no_grad():
            model.weight.fill_(3.0)
            model.hidden_bias.fill_(-22.5)  # 8 on: 24 - 22.5 > 0; 7 on: < 0
            model.visible_bias.fill_(-5.0)
        model.chains = torch.ones(400, 8)
        model({"x": x})
        runs[rate] = float(model.chains.mean())
    assert runs[0.0] > 0.8 and runs[1.0] < 0.2, runs


@pytest.mark.parametrize("rate, expected", [(0.0, 0), (1.0, 200)])
def test_dbm_chain_restart_resets_the_drawn_share(rate, expected):
    model = genmodels.build("dbm", input_shape=(30,), hidden_sizes=(5, 4), chain_restart=rate)
    v, h2 = torch.ones(200, 30), torch.ones(200, 4)
    new_v, new_h2 = model._restart(v, h2, torch.Generator().manual_seed(0))
    changed = ((new_v != v).any(1) | (new_h2 != h2).any(1)).sum()
    assert int(changed) == expected  # an all-ones row redrawn from uniform noise always changes
    assert torch.equal(v, torch.ones(200, 30))  # the input is not modified in place
    half = genmodels.build("dbm", input_shape=(30,), hidden_sizes=(5, 4), chain_restart=0.25)
    share = (half._restart(v, h2, torch.Generator().manual_seed(1))[0] != v).any(1).float().mean()
    assert abs(float(share) - 0.25) < 0.1  # 200 draws: sd 0.03


@pytest.mark.parametrize("key, value", [("average_decay", 1.0), ("chain_restart", 1.5)])
def test_dbm_rejects_bad_settings(key, value):
    with pytest.raises(ValueError, match=key):
        genmodels.build("dbm", input_shape=(8,), **{key: value})
