"""Class-conditional generation through the pipelines: ``genmodels sample --label`` (no Ray) and
``/sample`` / ``/log_prob`` with ``"condition": {"label": ...}`` on a real Serve app.

The models are untrained MADEs whose label embeddings are set to large random values, so what a
label selects is visible in the samples (a fresh conditional MADE starts label-blind); the
conditional maths is tested in ``tests/genmodels/test_conditional.py``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import genmodels
from pipelines import registry
from pipelines.cli import main
from pipelines.data import prepare_dataset
from tests.pipelines.serving import error_message, serve_app

NUM_CLASSES = 4


def conditional_made(shape, levels: int = 2) -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    model = genmodels.build(
        "made", shape, levels, hidden_sizes=(16,), conditional=True, num_classes=NUM_CLASSES
    )
    with torch.no_grad():
        for emb in model.label_embeddings:
            emb.weight.normal_(0.0, 3.0)  # labels that change the distribution a lot
    return model.eval()


def register(uri: str, model, meta: dict, name: str) -> None:
    exp = registry.ensure_experiment(uri, "conditional-uses")
    run_id = registry.client(uri).create_run(exp).info.run_id
    registry.register_model(uri, run_id, model, meta, {"val_score": 0.0}, name=name)


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli_store(tmp_path_factory):
    """A conditional and an unconditional MADE on the 8x8 digits, with the data's lineage."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('cond-cli') / 'mlflow.db'}"
    data = prepare_dataset("digits", binarize="fixed", seed=0)
    meta = {
        "dataset": data.name,
        "source": data.source,
        "fingerprint": data.fingerprint,
        "preprocessing": data.preprocessing,
        "method": "m",
    }
    register(uri, conditional_made(data.input_shape, data.levels), meta, "made-cond-digits")
    torch.manual_seed(0)
    plain = genmodels.build("made", data.input_shape, data.levels, hidden_sizes=(16,))
    register(uri, plain, meta, "made-digits")
    torch.manual_seed(0)
    vae = genmodels.build("vae", data.input_shape, data.levels, latent_dim=2, hidden_sizes=(8,))
    register(uri, vae, meta, "vae-digits")
    return uri


def _sample_cli(uri: str, out, *extra: str) -> int:
    return main(["sample", "--tracking-uri", uri, "--out", str(out), *extra])


def test_cli_sample_with_a_label_draws_from_that_class(cli_store, tmp_path, capsys):
    uri = cli_store
    model, _ = registry.load_version(uri, "made-cond-digits", "champion")
    args = ("--model", "made-cond-digits", "--n", "5", "--seed", "2")
    assert _sample_cli(uri, tmp_path / "a.npy", *args, "--label", "3") == 0
    assert "5 samples of made-cond-digits v1 given label 3 written to" in capsys.readouterr().out
    got = np.load(tmp_path / "a.npy")
    g = torch.Generator().manual_seed(2)
    want = model.sample(5, generator=g, condition={"label": torch.full((5,), 3)})
    assert np.array_equal(got, want.numpy())
    # A comma list is used in turn: 1, 2, 1, 2, 1.
    assert _sample_cli(uri, tmp_path / "b.npy", *args, "--label", "1,2") == 0
    g = torch.Generator().manual_seed(2)
    want = model.sample(5, generator=g, condition={"label": torch.tensor([1, 2, 1, 2, 1])})
    assert np.array_equal(np.load(tmp_path / "b.npy"), want.numpy())
    # The control: the label reached the model (another label, other samples, same seed).
    assert not np.array_equal(np.load(tmp_path / "b.npy"), got)


def test_cli_label_errors_exit_2_with_one_line(cli_store, tmp_path, capsys):
    uri = cli_store
    cases = [
        ("made-digits", "3", "made-digits v1 is not label-conditional (no condition:label"),
        ("made-cond-digits", "4", "label 4 is out of range: this model has num_classes=4"),
        ("made-cond-digits", "-1", "label -1 is out of range"),
        ("made-cond-digits", "two", "bad value 'two' for --label"),
    ]
    for name, label, message in cases:
        _check_cli_error(uri, tmp_path, capsys, name, ("--label", label), message)


def _check_cli_error(uri, tmp_path, capsys, name: str, flag: tuple, message: str) -> None:
    """``genmodels sample --model name *flag`` exits 2 with one line holding ``message`` and
    writes nothing."""
    out = tmp_path / f"{name}{''.join(flag)}.npy"
    assert _sample_cli(uri, out, "--model", name, "--n", "3", *flag) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("genmodels sample: error: ") and message in err, err
    assert not out.exists()


def test_cli_sample_at_a_latent_temperature(cli_store, tmp_path, capsys):
    uri = cli_store
    model, _ = registry.load_version(uri, "vae-digits", "champion")
    args = ("--model", "vae-digits", "--n", "6", "--seed", "4")
    assert _sample_cli(uri, tmp_path / "t.npy", *args, "--temperature", "0.25") == 0
    assert "at latent temperature 0.25 written to" in capsys.readouterr().out
    model.config = dataclasses.replace(model.config, latent_temperature=0.25)
    want = model.sample(6, generator=torch.Generator().manual_seed(4))
    assert np.array_equal(np.load(tmp_path / "t.npy"), want.numpy())
    # The control: without the flag the same seed draws other samples (the codes are 4x larger).
    assert _sample_cli(uri, tmp_path / "one.npy", *args) == 0
    assert not np.array_equal(np.load(tmp_path / "one.npy"), want.numpy())
    for name, value, message in [
        ("vae-digits", "-1", "bad value -1.0 for --temperature"),
        ("vae-digits", "nan", "bad value nan for --temperature"),
        ("made-digits", "0.5", "made-digits v1 (made) has no latent temperature"),
    ]:
        _check_cli_error(uri, tmp_path, capsys, name, ("--temperature", value), message)


# ---------------------------------------------------------------------------------------- Serve
SHAPE = (1, 3, 4)
APP = "genmodels-conditional-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('cond-serve') / 'mlflow.db'}"
    meta = {"dataset": "toy", "fingerprint": "f1", "preprocessing": {}, "method": "m"}
    cond = conditional_made(SHAPE)
    register(uri, cond, meta, "made-cond-toy")
    torch.manual_seed(0)
    plain = genmodels.build("made", SHAPE, hidden_sizes=(16,)).eval()
    register(uri, plain, meta, "made-toy")
    return SimpleNamespace(uri=uri, cond=cond, plain=plain)


@pytest.fixture(scope="module")
def http(ray_session, serve_port, store):
    with serve_app(store.uri, serve_port, APP, "/conditional") as client:
        yield client


_error = error_message


@pytest.mark.ray
def test_sample_with_one_label_or_one_per_sample(http, store):
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert "condition:label" in models["made-cond-toy"]["versions"]["1"]["capabilities"]
    assert "condition:label" not in models["made-toy"]["versions"]["1"]["capabilities"]
    r = http.post(
        "/v1/models/made-cond-toy/sample", json={"n": 6, "seed": 7, "condition": {"label": 3}}
    )
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["samples"]).float()
    g = torch.Generator().manual_seed(7)
    assert torch.equal(got, store.cond.sample(6, generator=g, condition={"label": 3}))
    labels = [0, 1, 2, 3, 2, 1]
    body = {"n": 6, "seed": 7, "condition": {"label": labels}}
    per_row = torch.tensor(
        http.post("/v1/models/made-cond-toy/sample", json=body).json()["samples"]
    )
    g = torch.Generator().manual_seed(7)
    want = store.cond.sample(6, generator=g, condition={"label": torch.tensor(labels)})
    assert torch.equal(per_row.float(), want)
    assert not torch.equal(per_row.float(), got)  # the labels reached the model


@pytest.mark.ray
def test_conditional_log_prob_is_labelled(http, store):
    x = store.cond.sample(3, generator=torch.Generator().manual_seed(0), condition={"label": 1})
    body = {"x": x.int().tolist(), "condition": {"label": [1, 2, 1]}}
    out = http.post("/v1/models/made-cond-toy/log_prob", json=body).json()
    want = store.cond.score(x, condition={"label": torch.tensor([1, 2, 1])})
    assert out["method"] == "exact-conditional:label" == want.method
    assert out["log_prob"] == pytest.approx(want.log_prob.tolist(), abs=1e-5)
    marginal = http.post("/v1/models/made-cond-toy/log_prob", json={"x": x.int().tolist()}).json()
    assert marginal["method"] == "exact-marginal:uniform-label"
    assert marginal["log_prob"] == pytest.approx(store.cond.log_prob(x).tolist(), abs=1e-5)


@pytest.mark.ray
def test_label_errors_are_422(http):
    def sample(name: str, condition, n: int = 2):
        return http.post(f"/v1/models/{name}/sample", json={"n": n, "condition": condition})

    msg = _error(sample("made-toy", {"label": 3}), 422)
    assert "no capability 'condition:label'" in msg
    x = torch.zeros(1, *SHAPE).int().tolist()
    r = http.post("/v1/models/made-toy/log_prob", json={"x": x, "condition": {"label": 1}})
    assert "condition:label" in _error(r, 422)
    msg = _error(sample("made-cond-toy", {"label": NUM_CLASSES}), 422)
    assert f"label {NUM_CLASSES} is out of range: this model has num_classes={NUM_CLASSES}" in msg
    assert "out of range" in _error(sample("made-cond-toy", {"label": [0, -1]}), 422)
    assert "one value or one per row" in _error(sample("made-cond-toy", {"label": [0, 1, 2]}), 422)
    assert "condition:caption" in _error(sample("made-cond-toy", {"caption": "a 3"}), 422)
    r = http.post("/v1/models/made-cond-toy/log_prob", json={"x": x, "condition": {"label": 9}})
    assert "out of range" in _error(r, 422)
