"""The capability layer of the protocol: the table, the per-instance sets, ``condition`` and the
checks every ``impute`` goes through (the family-specific imputation maths is tested per family)."""

from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels import base
from tests.genmodels.test_contract import SHAPE, SHAPES, TINY


def _model(name: str) -> genmodels.GenerativeModel:
    return genmodels.build(name, SHAPES.get(name, SHAPE), **TINY[name])


@pytest.mark.parametrize("name", genmodels.families())
def test_every_family_declares_known_implemented_capabilities(name):
    model = _model(name)
    assert ("sample" in model.capabilities) == model.can_sample  # a translator has no sample
    for cap in model.capabilities:
        assert cap in base.CAPABILITIES
    if "log_prob" in model.capabilities:
        assert model.likelihood != "none"


def test_declaring_a_capability_without_its_method_is_refused():
    class Liar(base.GenerativeModel):
        family = "liar-for-test"
        likelihood = "none"
        capabilities = frozenset({"impute"})

    with pytest.raises(TypeError, match="does not implement _impute"):
        base.register(Liar)
    Liar.capabilities = frozenset({"teleport"})
    with pytest.raises(ValueError, match="unknown capability 'teleport'"):
        base.register(Liar)
    assert "liar-for-test" not in genmodels.families()


@pytest.mark.parametrize("name", genmodels.families())
def test_unconditional_families_reject_a_condition(name):
    model = _model(name).eval()
    g = torch.Generator().manual_seed(0)
    if not model.can_sample:  # no unconditional sample (pix2pix): nothing to condition
        with pytest.raises(NotImplementedError):
            model.sample(2, generator=g)
        return
    x = model.sample(2, generator=g, condition=None)  # None and {} mean "no condition"
    model.sample(2, generator=g, condition={})
    if "condition:label" in model.capabilities:  # conditional by design (m2vae): other keys only
        with pytest.raises(ValueError, match="accepts only label; got condition key"):
            model.sample(2, generator=g, condition={"caption": "3 left of 7"})
        return
    if "condition:caption" in model.capabilities:  # conditional by design (captionvae)
        with pytest.raises(ValueError, match="accepts only caption; got condition key"):
            model.sample(2, generator=g, condition={"label": 3})
        return
    with pytest.raises(ValueError, match="unconditional; got condition key\\(s\\) label"):
        model.sample(2, generator=g, condition={"label": 3})
    if model.likelihood != "none":
        model.score(x, generator=g, condition={})
        with pytest.raises(ValueError, match="unconditional"):
            model.score(x, generator=g, condition={"label": 1})
        with pytest.raises(ValueError, match="unconditional"):
            model.log_prob(x, generator=g, condition={"caption": "3 left of 7"})


def test_a_conditional_instance_accepts_only_its_keys():
    model = _model("made")
    model.capabilities = model.capabilities | {"condition:label"}
    assert model.check_condition({"label": 3}) == {"label": 3}
    with pytest.raises(ValueError, match="accepts only label; got condition key\\(s\\) caption"):
        model.check_condition({"caption": "a"})
    with pytest.raises(ValueError, match="must be a mapping"):
        model.check_condition(3)


class _Echo(base.GenerativeModel):
    """A stand-in whose imputation overwrites everything with 1s (observed entries included)."""

    family = "echo-for-test"
    likelihood = "none"
    capabilities = frozenset({"impute"})

    def _impute(self, x, mask, generator, num_samples):
        return base.ImputeResult(torch.ones(num_samples, *x.shape), method="ones")


def test_impute_keeps_observed_entries_and_validates_its_inputs():
    model = _Echo((4,), 2, base.BaseConfig())
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0]])
    out = model.impute(x, mask, num_samples=3)
    assert out.samples.shape == (3, 2, 4)
    want = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(out.samples, want.expand(3, 2, 4))
    assert torch.equal(model.impute(x, torch.ones(2, 4)).samples[0], x)  # nothing missing
    with pytest.raises(base.MaskError, match="shape"):
        model.impute(x, torch.ones(2, 3))
    with pytest.raises(base.MaskError, match="0 \\(missing\\) or 1"):
        model.impute(x, torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="num_samples"):
        model.impute(x, mask, num_samples=0)
    with pytest.raises(ValueError, match=r"integers in 0\.\.1"):
        model.impute(x + 2, mask)


def test_a_family_returning_the_wrong_shape_is_a_bug_not_a_result():
    class Short(_Echo):
        def _impute(self, x, mask, generator, num_samples):
            return base.ImputeResult(torch.ones(*x.shape), method="ones")

    with pytest.raises(RuntimeError, match="expected \\(2, 1, 4\\)"):
        Short((4,), 2, base.BaseConfig()).impute(torch.zeros(1, 4), torch.zeros(1, 4), None, 2)


def test_image_masks_may_be_flat():
    model = _Echo((1, 2, 2), 2, base.BaseConfig())
    out = model.impute(torch.zeros(1, 1, 2, 2), torch.tensor([[1, 0, 0, 1]]))
    assert out.samples[0, 0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
