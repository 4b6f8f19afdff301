"""The contract every registered family passes, built from a tiny config.

Looping over ``genmodels.families()`` means a new family is tested the moment it is registered.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import genmodels

SHAPE = (1, 3, 4)
# Tiny configs keep the suite fast; a family missing here fails test_every_family_has_a_tiny_config.
TINY = {
    "fvsbn": {},
    "nade": {"hidden_size": 8},
    "pixelcnn": {"channels": 8, "num_layers": 2, "kernel_size": 3},
    "realnvp": {
        "num_scales": 1,
        "num_coupling": 2,
        "hidden_channels": 8,
        "num_res_blocks": 1,
        "dequant_samples": 2,
    },
    "made": {"hidden_sizes": (16,), "num_masks": 2},
    "vae": {"latent_dim": 2, "hidden_sizes": (8,), "eval_k": 8, "eval_chunk": 4},
    "gsn": {"hidden_sizes": (8,), "walkback": 2, "burn_in": 3},
    "gan": {"latent_dim": 4, "channels": 4, "hidden_size": 8},
    "rbm": {
        "hidden_size": 8,
        "num_chains": 4,
        "sample_steps": 20,
        "ais_chains": 8,
        "ais_betas": 20,
        "ais_betas_validation": 10,
    },
    "dbm": {
        "hidden_sizes": (6, 4),
        "exact_max_units": 0,
        "num_chains": 8,
        "sample_steps": 20,
        "ais_chains": 16,
        "ais_betas": 100,
        "ais_betas_validation": 50,
    },
    "aae": {"latent_dim": 2, "hidden_sizes": (8,), "disc_hidden": (8,)},
    "avb": {
        "latent_dim": 2,
        "noise_dim": 2,
        "hidden_sizes": (8,),
        "disc_hidden_sizes": (8,),
        "eval_k": 8,
        "eval_chunk": 4,
        "embed_samples": 4,
    },
    "ssgan": {"latent_dim": 4, "gen_hidden": (8,), "disc_hidden": (8, 8)},
    "m2vae": {"latent_dim": 2, "hidden_sizes": (8,), "eval_k": 8, "eval_chunk": 4},
    "pix2pix": {"channels": 4, "depth": 2, "disc_channels": 4},
    "cyclegan": {"channels": 4, "depth": 1, "disc_channels": 4},
    "unit": {"channels": 4, "depth": 1, "latent_channels": 2, "disc_channels": 4},
    "nextframe": {"context": 2, "channels": 4, "depth": 1, "disc_channels": 4},
    "captionvae": {"latent_dim": 2, "channels": 4, "embed_dim": 4, "hidden_size": 8, "eval_k": 8},
}
# A family that models another example shape than SHAPE (a sequence predictor: (T, C, H, W)).
SHAPES = {"nextframe": (3, *SHAPE)}


# Options that change a family's structure get their own contract run: "family+variant".
VARIANTS = {
    "nade+order": ("nade", {"hidden_size": 8, "order_seed": 0}),
    "pixelcnn+gated-mixture": (
        "pixelcnn",
        {**TINY["pixelcnn"], "gated": True, "output": "logistic_mixture", "num_mixtures": 2},
    ),
    "vae+iaf": ("vae", {**TINY["vae"], "iaf_steps": 2, "iaf_hidden": 8}),
    "gsn+hidden-noise": (
        "gsn",
        {
            "hidden_sizes": (8, 4),
            "walkback": 1,
            "burn_in": 2,
            "hidden_noise": 0.5,
            "sample_output": "mode",
        },
    ),
    "gan+minimax": ("gan", {**TINY["gan"], "generator_loss": "minimax", "label_smoothing": 0.1}),
    "dbm+exact": ("dbm", {"hidden_sizes": (6, 4), "num_chains": 8, "sample_steps": 20}),
    "rbm+ais": ("rbm", {**TINY["rbm"], "exact_max_units": 0}),
    "rbm+cd": ("rbm", {**TINY["rbm"], "persistent": False, "cd_k": 1}),
    "aae+gaussian": ("aae", {**TINY["aae"], "encoder": "gaussian"}),
    "avb+iw": ("avb", {**TINY["avb"], "eval": "iw"}),
    "m2vae+m1": ("m2vae", {**TINY["m2vae"], "m1_latent_dim": 2, "m1_hidden_sizes": (8,)}),
    "m2vae+aux": ("m2vae", {**TINY["m2vae"], "aux_dim": 2}),
    "nextframe+adversarial": (
        "nextframe",
        {**TINY["nextframe"], "adv_weight": 0.05, "gdl_weight": 1.0},
    ),
}
CASES = sorted(TINY) + sorted(VARIANTS)


def tiny(name: str, seed: int = 0) -> genmodels.GenerativeModel:
    family, config = VARIANTS.get(name, (name, TINY.get(name, {})))
    torch.manual_seed(seed)
    return genmodels.build(family, input_shape=SHAPES.get(family, SHAPE), **config)


def batch(n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(1))


def train_batch(model: genmodels.GenerativeModel, n: int = 6) -> dict[str, torch.Tensor]:
    """A batch with every column the family trains on (``batch_keys``): images x-shaped, and a
    ``caption`` column as token ids of the model's own vocabulary (every word once over the
    batch, so every word's embedding gets a gradient)."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for k in model.batch_keys:
        if k == "caption":
            words = model.tokenizer.vocabulary
            per = -(-len(words) // n)
            text = [" ".join(words[i * per : (i + 1) * per]) for i in range(n)]
            out[k] = model.tokenizer.encode(text)
        else:
            out[k] = torch.bernoulli(torch.full((n, *model.input_shape), 0.4), generator=g)
    return out


def output(model: genmodels.GenerativeModel, n: int, seed: int, inputs: int = 2) -> torch.Tensor:
    """What a family generates under a seed: ``sample`` or, for a family without an
    unconditional sample (``can_sample = False``), ``translate`` of a fixed input batch
    (``inputs`` seeds it) in its first direction, or ``predict`` (2 steps) after it."""
    g = torch.Generator().manual_seed(seed)
    if model.can_sample:
        return model.sample(n, generator=g)
    x = torch.bernoulli(
        torch.full((n, *model.input_shape), 0.4), generator=torch.Generator().manual_seed(inputs)
    )
    if "predict" in model.capabilities:
        return model.predict(x, steps=2, generator=g)
    return model.translate(x, model.directions[0], generator=g)


def randomise(model: genmodels.GenerativeModel, seed: int) -> genmodels.GenerativeModel:
    """Every parameter drawn from N(0, 1): a freshly initialised GAN's outputs all sit near 1/2,
    so its seeded samples hardly depend on its weights (two initialisations gave the same
    samples); with weights of this size every part of the model shows in the samples."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_every_family_has_a_tiny_config():
    assert set(genmodels.families()) == set(TINY)


@pytest.mark.parametrize("name", CASES)
class TestContract:
    def test_declarations(self, name):
        family = VARIANTS.get(name, (name,))[0]
        cls = genmodels.family_class(family)
        assert cls.family == family
        assert cls.likelihood in ("exact", "bound", "estimate", "none")
        assert cls.phases and cls.sample_limit > 0
        assert "x" in cls.batch_keys
        assert ("translate" in cls.capabilities) == bool(cls.directions)
        shape = SHAPES.get(family, SHAPE)
        assert (
            "sample" in genmodels.build(family, shape, **TINY.get(family, {})).capabilities
        ) == (cls.can_sample)
        if not cls.can_sample and cls.likelihood == "none":  # the trainer must select on something
            assert cls.selection_metric is None or isinstance(cls.selection_metric, str)
        cfg = genmodels.make_config(family)
        for key in cls.search_space:  # the search space only names real config keys
            assert key in {f.name for f in dataclasses.fields(cfg)}

    def test_sample_shape_and_data_space(self, name):
        model = tiny(name)
        x = output(model, 5, seed=0)
        if "predict" in model.capabilities:  # expected values (floats) of 2 predicted frames
            assert x.shape == (5, 2, *model.input_shape[1:])
            assert x.min() >= 0 and x.max() <= model.levels - 1
            return
        assert x.shape == (5, *SHAPE)
        assert set(x.unique().tolist()) <= {0.0, 1.0}

    def test_loss_finite_and_gradient_on_every_parameter(self, name):
        model = tiny(name)
        model.zero_grad()
        for phase in model.phases:  # gradients summed over every phase
            out = model(train_batch(model), phase=phase)
            assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
            out["loss"].backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"

    def test_state_dict_reload_gives_identical_scores(self, name):
        """A clone built from the exported config and loaded with the state dict scores (or,
        without a likelihood, samples under a seed) exactly like the model; a model with other
        weights does not, so a part of the model left out of the state dict is caught."""
        model = tiny(name, seed=3).eval()
        if model.likelihood == "none":  # weights that the samples depend on (see below)
            randomise(model, seed=3)
        exported = json.loads(json.dumps(model.export_config()))
        clone = genmodels.from_export(exported).eval()
        clone.load_state_dict(model.state_dict())
        x = batch()
        if model.likelihood == "none":
            a, b = output(model, 64, seed=5), output(clone, 64, seed=5)
            assert torch.equal(a, b)
            other = randomise(tiny(name, seed=3).eval(), seed=4)
            assert not torch.equal(a, output(other, 64, seed=5))
            return
        a = model.log_prob(x, generator=torch.Generator().manual_seed(5))
        b = clone.log_prob(x, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        other = tiny(name, seed=4).eval()  # a different initialisation scores differently
        c = other.log_prob(x, generator=torch.Generator().manual_seed(5))
        assert not torch.allclose(a, c)

    def test_samples_deterministic_under_seed(self, name):
        model = tiny(name).eval()
        if not model.can_sample:  # a translator is seeded too; another *input* must differ
            randomise(model, seed=3)
            a, b = output(model, 8, seed=7), output(model, 8, seed=7)
            assert torch.equal(a, b) and not torch.equal(a, output(model, 8, seed=7, inputs=3))
            return
        a = model.sample(8, generator=torch.Generator().manual_seed(7))
        b = model.sample(8, generator=torch.Generator().manual_seed(7))
        c = model.sample(8, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_score_and_bad_input(self, name):
        model = tiny(name).eval()
        if model.likelihood == "none":
            with pytest.raises(genmodels.NoLikelihoodError):
                model.log_prob(batch())
            if "translate" in model.capabilities:  # bad input and an unknown direction
                d = model.directions[0]
                with pytest.raises(ValueError, match="shape"):
                    model.translate(torch.zeros(2, 12), d)
                with pytest.raises(ValueError, match=r"integers in 0\.\.1"):
                    model.translate(torch.full((2, *SHAPE), 0.5), d)
                with pytest.raises(ValueError, match="unknown direction 'sideways'; known: "):
                    model.translate(batch(2), "sideways")
            if "predict" in model.capabilities:  # wrong frame size, too few frames, bad values
                t, *frame = model.input_shape
                with pytest.raises(ValueError, match="frames must be"):
                    model.predict(torch.zeros(2, t, 1, 5, 5), steps=1)
                with pytest.raises(ValueError, match="at least"):
                    model.predict(torch.zeros(2, 1, *frame), steps=1)
                with pytest.raises(ValueError, match=r"integers in 0\.\.1"):
                    model.predict(torch.full((2, t, *frame), 0.5), steps=1)
                with pytest.raises(ValueError, match="steps"):
                    model.predict(torch.zeros(2, t, *frame), steps=0)
            return
        res = model.score(batch(4), generator=torch.Generator().manual_seed(0))
        assert res.log_prob.shape == (4,) and (res.log_prob < 0).all()
        assert (res.stderr is None) == (model.likelihood == "exact")
        with pytest.raises(ValueError, match="shape"):
            model.log_prob(torch.zeros(2, 12))
        with pytest.raises(ValueError, match=r"integers in 0\.\.1"):
            model.log_prob(torch.full((2, *SHAPE), 0.5))
        with pytest.raises(ValueError, match="NaN"):
            model.log_prob(torch.full((2, *SHAPE), float("nan")))


def test_build_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown config key 'hiden_sizes'"):
        genmodels.build("made", input_shape=(4,), hiden_sizes=(8,))
    with pytest.raises(ValueError, match="bad value 'x' for 'num_masks'"):
        genmodels.build("made", input_shape=(4,), num_masks="x")
    with pytest.raises(KeyError, match="unknown family 'nope'"):
        genmodels.build("nope", input_shape=(4,))
    with pytest.raises(ValueError, match="input_shape"):
        genmodels.build("vae", input_shape=(2, 3))
    with pytest.raises(ValueError, match="binary"):
        genmodels.build("made", input_shape=(4,), levels=256)
