"""Captions through the pipelines: ``genmodels sample --caption`` (no Ray) and ``/sample`` /
``/log_prob`` with ``"condition": {"caption": ...}`` on a real Serve app.

The models are untrained ``captionvae``s on a small (1, 4, 8) canvas whose caption maps are set
to large random values, so what a caption selects shows in the samples; what a trained caption
model draws is tested in ``tests/genmodels/test_captionvae.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import genmodels
from pipelines import registry
from pipelines.cli import main
from tests.pipelines.serving import error_message, serve_app

SHAPE = (1, 4, 8)
META = {"dataset": "toy", "fingerprint": "f1", "preprocessing": {}, "method": "m"}


def caption_model() -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    model = genmodels.build(
        "captionvae", SHAPE, latent_dim=2, channels=4, embed_dim=8, hidden_size=8, eval_k=4
    )
    with torch.no_grad():
        # captions that change the distribution a lot: slot vectors far apart for different
        # words (an untrained encoder's nearly coincide) and large maps from slots to the grid
        model.text.value.weight.normal_(0.0, 3.0)
        model.dec_slots.normal_(0.0, 3.0)
    return model.eval()


def register(uri: str, model, name: str) -> None:
    exp = registry.ensure_experiment(uri, "caption-uses")
    run_id = registry.client(uri).create_run(exp).info.run_id
    registry.register_model(uri, run_id, model, META, {"val_score": 0.0}, name=name)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('captions') / 'mlflow.db'}"
    cap = caption_model()
    register(uri, cap, "captionvae-toy")
    torch.manual_seed(0)
    plain = genmodels.build("made", SHAPE, hidden_sizes=(8,)).eval()
    register(uri, plain, "made-toy")
    return SimpleNamespace(uri=uri, cap=cap, plain=plain)


# ------------------------------------------------------------------------------------------ CLI
def _sample_cli(uri: str, out, *extra: str) -> int:
    return main(["sample", "--tracking-uri", uri, "--out", str(out), *extra])


def test_cli_sample_with_a_caption(store, tmp_path, capsys):
    args = ("--model", "captionvae-toy", "--n", "20", "--seed", "2")
    assert _sample_cli(store.uri, tmp_path / "a.npy", *args, "--caption", "3 left of 7") == 0
    out = capsys.readouterr().out
    assert "20 samples of captionvae-toy v1 given caption '3 left of 7' written to" in out
    got = np.load(tmp_path / "a.npy")
    g = torch.Generator().manual_seed(2)  # the CLI samples in chunks of 16 from one generator
    want = torch.cat(
        [store.cap.sample(m, generator=g, condition={"caption": "3 left of 7"}) for m in (16, 4)]
    )
    assert np.array_equal(got, want.numpy())
    # The control: another caption, other samples under the same seed.
    assert _sample_cli(store.uri, tmp_path / "b.npy", *args, "--caption", "1 left of 2") == 0
    assert not np.array_equal(np.load(tmp_path / "b.npy"), got)


def test_cli_caption_errors_exit_2_with_one_line(store, tmp_path, capsys):
    cases = [
        ("made-toy", ["--caption", "3 left of 7"], "made-toy v1 is not caption-conditional"),
        ("captionvae-toy", ["--caption", "3 above 7"], "unknown word(s) in caption: 'above'"),
        ("captionvae-toy", ["--caption", "1 2 3 4 5 6 7 8 9"], "has 9 words; at most 8"),
        ("captionvae-toy", ["--label", "3"], "is not label-conditional"),
        ("captionvae-toy", ["--label", "3", "--caption", "1 left of 2"], "not both"),
    ]
    for name, extra, message in cases:
        out = tmp_path / f"{name}-{len(extra)}-{extra[-1][:3]}.npy"
        assert _sample_cli(store.uri, out, "--model", name, "--n", "3", *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("genmodels sample: error: ") and message in err, err
        assert not out.exists()


# ---------------------------------------------------------------------------------------- Serve
APP = "genmodels-captions-test"


@pytest.fixture(scope="module")
def http(ray_session, serve_port, store):
    with serve_app(store.uri, serve_port, APP, "/captions") as client:
        yield client


_error = error_message


@pytest.mark.ray
def test_sample_and_log_prob_given_captions(http, store):
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert "condition:caption" in models["captionvae-toy"]["versions"]["1"]["capabilities"]
    url = "/v1/models/captionvae-toy/sample"
    body = {"n": 4, "seed": 7, "condition": {"caption": "3 left of 7"}}
    r = http.post(url, json=body)
    assert r.status_code == 200, r.text
    one = torch.tensor(r.json()["samples"]).float()
    g = torch.Generator().manual_seed(7)
    assert torch.equal(one, store.cap.sample(4, generator=g, condition={"caption": "3 left of 7"}))
    per_row = ["3 left of 7", "1 left of 2", "one right of two", "3 left of 7"]
    body = {"n": 4, "seed": 7, "condition": {"caption": per_row}}
    got = torch.tensor(http.post(url, json=body).json()["samples"]).float()
    g = torch.Generator().manual_seed(7)
    assert torch.equal(got, store.cap.sample(4, generator=g, condition={"caption": per_row}))
    assert not torch.equal(got, one)  # the per-row captions reached the model
    x = one.int().tolist()
    out = http.post(
        "/v1/models/captionvae-toy/log_prob",
        json={"x": x, "seed": 1, "condition": {"caption": "3 left of 7"}},
    ).json()
    assert out["method"] == "iwae-k=4-conditional:caption"
    marginal = http.post("/v1/models/captionvae-toy/log_prob", json={"x": x, "seed": 1}).json()
    assert marginal["method"] == "iwae-k=4-marginal:empty-caption"


@pytest.mark.ray
def test_caption_errors_are_422(http):
    def sample(name: str, condition, n: int = 2):
        return http.post(f"/v1/models/{name}/sample", json={"n": n, "condition": condition})

    msg = _error(sample("captionvae-toy", {"caption": "3 above 7"}), 422)
    assert "unknown word(s) in caption: 'above'" in msg and "known: 0 1 2" in msg
    assert "no capability 'condition:caption'" in _error(sample("made-toy", {"caption": "1"}), 422)
    assert "condition:label" in _error(sample("captionvae-toy", {"label": 3}), 422)
    r = sample("captionvae-toy", {"caption": ["1 left of 2"] * 3})
    assert "one value or one per row" in _error(r, 422)
    assert "at most 8" in _error(sample("captionvae-toy", {"caption": "1 " * 9}), 422)
