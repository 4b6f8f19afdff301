"""``genmodels translate`` (no Ray) and ``POST /v1/models/{name}/translate`` (Serve) against a
real registry, with a pix2pix trained in-process for a few steps on digit -> negative (the
plumbing is under test; the learning is tested in tests/genmodels/test_pix2pix.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import genmodels
from pipelines import registry
from pipelines.cli import main
from pipelines.data import prepare_dataset
from tests.genmodels.test_contract import TINY


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('translate') / 'mlflow.db'}"
    data = prepare_dataset("digits-negative-paired", seed=0)
    exp = registry.ensure_experiment(uri, "translate")
    c = registry.client(uri)
    torch.manual_seed(0)
    model = genmodels.build(
        "pix2pix", data.input_shape, 2, **TINY["pix2pix"], domain_a="digit", domain_b="negative"
    )
    train = data.arrays("train")
    opts = model.configure_optimizers()
    batch = {k: torch.from_numpy(train[k][:200]) for k in ("x", "x_target")}
    for _ in range(30):
        for p in model.phases:
            opts[p].zero_grad()
            model(batch, phase=p)["loss"].backward()
            opts[p].step()
    model.eval()
    meta = {
        "dataset": data.name,
        "source": data.source,
        "fingerprint": data.fingerprint,
        "preprocessing": data.preprocessing,
        "method": "none",
    }
    registry.register_model(uri, c.create_run(exp).info.run_id, model, meta, {"val_score": 0.5})
    made = genmodels.build("made", (1, 8, 8), hidden_sizes=(8,))
    meta_made = {**meta, "dataset": "digits"}
    registry.register_model(
        uri, c.create_run(exp).info.run_id, made, meta_made, {"val_log_prob": -5.0}
    )
    return SimpleNamespace(uri=uri, data=data, model=model)


def test_translate_writes_source_translated_truth_strip(store, tmp_path, capsys):
    out = tmp_path / "strip.png"
    argv = ["translate", "--model", "pix2pix-digits-negative-paired", "--n", "5"]
    argv += ["--out", str(out), "--tracking-uri", store.uri, "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    test = store.data.arrays("test")
    x, t = torch.from_numpy(test["x"][:5]), test["x_target"][:5]
    mine = store.model.translate(x, "a2b").numpy()
    from genmodels.pix2pix import foreground_iou

    want = foreground_iou(torch.from_numpy(mine), torch.from_numpy(t)).mean().item()
    assert res["direction"] == "a2b" and res["n"] == 5
    assert res["iou"] == pytest.approx(want) and res["l1"] == pytest.approx(np.abs(mine - t).mean())
    img = np.asarray(Image.open(out).convert("L"))
    assert img.shape[0] < img.shape[1]  # a strip: 3 rows of 5
    npz = tmp_path / "a.npz"
    assert main([*argv[:-3], "--out", str(npz), "--tracking-uri", store.uri]) == 0
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["translated"], mine)
    np.testing.assert_array_equal(saved["truth"], t)
    np.testing.assert_array_equal(saved["source"], test["x"][:5])
    assert "digit -> negative" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (
            ["--direction", "b2a"],
            "bad value 'b2a' for --direction: pix2pix-digits-negative-paired v1 translates a2b",
        ),
        (["--n", "0"], "bad value 0 for --n"),
        (["--dataset", "digits"], "'digits' is not a pair dataset"),
    ],
)
def test_translate_errors_are_one_line_exit_2(store, tmp_path, capsys, extra, fragment):
    argv = [
        "translate",
        "--model",
        "pix2pix-digits-negative-paired",
        "--out",
        str(tmp_path / "s.png"),
    ]
    assert main(argv + extra + ["--tracking-uri", store.uri]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_translate_on_a_model_without_it_exits_2(store, capsys):
    assert main(["translate", "--model", "made-digits", "--tracking-uri", store.uri]) == 2
    assert "no capability 'translate'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- Serve
APP = "translate-test"


@pytest.fixture(scope="module")
def http(ray_session, serve_port, store):
    from tests.pipelines.serving import serve_app

    with serve_app(store.uri, serve_port, APP, "/tr", timeout=120) as client:
        yield client


def _error(r, status: int) -> str:
    from tests.pipelines.serving import error_message

    return error_message(r, status)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_serve_translate_and_its_errors(http, store):
    x = store.data.arrays("test")["x"][:4]
    r = http.post(
        "/v1/models/pix2pix-digits-negative-paired/translate",
        json={"x": x.astype(int).tolist(), "direction": "a2b"},
    )
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["images"], np.float32)
    np.testing.assert_array_equal(got, store.model.translate(torch.from_numpy(x), "a2b").numpy())
    msg = _error(
        http.post(
            "/v1/models/pix2pix-digits-negative-paired/translate",
            json={"x": x.astype(int).tolist(), "direction": "sideways"},
        ),
        422,
    )
    assert "unknown direction 'sideways'; known: a2b" in msg
    msg = _error(
        http.post(
            "/v1/models/made-digits/translate",
            json={"x": x.astype(int).tolist(), "direction": "a2b"},
        ),
        422,
    )
    assert "no capability 'translate'" in msg
