"""``genmodels predict`` (no Ray), ``POST /v1/models/{name}/predict`` (the API in-process, as
``make_api(GenModelsService(cfg))``, over a real sqlite registry) and one tiny nextframe run
through the Ray training path on moving digits. The learning is tested in
tests/genmodels/test_nextframe.py; here the plumbing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import genmodels
from pipelines import registry
from pipelines.cli import main
from pipelines.data import prepare_dataset
from tests.pipelines.raydata import first_batch

TINY = {"channels": 4, "depth": 1, "disc_channels": 4}
NAME = "nextframe-moving-mnist-1"


def _register(uri, exp, model, data, name=None):
    meta = {
        "dataset": data.name,
        "source": data.source,
        "fingerprint": data.fingerprint,
        "preprocessing": data.preprocessing,
        "method": "none",
    }
    c = registry.client(uri)
    registry.register_model(
        uri, c.create_run(exp).info.run_id, model, meta, {"val_score": -0.02}, name=name
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('predict') / 'mlflow.db'}"
    data = prepare_dataset("moving-mnist-1", seed=0, limit=40)
    exp = registry.ensure_experiment(uri, "predict")
    torch.manual_seed(0)
    models = {}
    for key, extra in (("mse", {}), ("adv", {"adv_weight": 0.05, "gdl_weight": 1.0})):
        model = genmodels.build("nextframe", data.input_shape, data.levels, **TINY, **extra)
        opts = model.configure_optimizers()
        batch = {"x": torch.from_numpy(data.arrays("train")["x"][:16])}
        for _ in range(3):
            for p in model.phases:
                opts[p].zero_grad()
                model(batch, phase=p)["loss"].backward()
                opts[p].step()
        models[key] = model.eval()
    _register(uri, exp, models["mse"], data)
    _register(uri, exp, models["adv"], data, name="nextframe-adv")
    made = genmodels.build("made", (1, 8, 8), hidden_sizes=(8,))
    c = registry.client(uri)
    meta = {"dataset": "digits", "source": "digits", "fingerprint": "f1", "preprocessing": {}}
    meta["method"] = "exact"
    registry.register_model(uri, c.create_run(exp).info.run_id, made, meta, {"val_log_prob": -5})
    return SimpleNamespace(uri=uri, data=data, models=models)


def test_predict_writes_a_strip_and_per_step_mse(store, tmp_path, capsys):
    out = tmp_path / "strip.png"
    argv = ["predict", "--model", NAME, "--n", "3", "--steps", "5", "--compare", "nextframe-adv"]
    argv += ["--out", str(out), "--tracking-uri", store.uri]
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    x = store.data.arrays("test")["x"][:3]
    want = store.models["mse"].predict(torch.from_numpy(x[:, :5]), steps=5).numpy()
    mse = ((want - x[:, 5:]) / 255) ** 2
    assert res["steps"] == 5 and res["context_frames"] == 5 and len(res["models"]) == 2
    np.testing.assert_allclose(res["models"][0]["mse"], mse.mean((0, 2, 3, 4)), rtol=1e-5)
    copy = ((x[:, 4:5] - x[:, 5:]) / 255) ** 2
    np.testing.assert_allclose(res["copy_last_mse"], copy.mean((0, 2, 3, 4)), rtol=1e-5)
    img = Image.open(out)
    assert img.width > img.height  # 3 sequences x 3 rows (true, mse, adversarial) of 10 frames
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "copy-last" in text and "t+5" in text and NAME in text
    npz = tmp_path / "a.npz"
    assert main([*argv[:-4], "--out", str(npz), "--tracking-uri", store.uri]) == 0
    saved = np.load(npz)
    np.testing.assert_allclose(saved["predicted_0"], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--n", "0"], "bad value 0 for --n"),
        (["--steps", "10"], "bad value 10 for --steps"),
        (["--steps", "6"], "at least 5 frames"),  # 4 context frames for a context of 5
        (["--dataset", "digits"], "'digits' is not a sequence dataset"),
        (["--compare", "made-digits"], "no capability 'predict'"),
    ],
)
def test_predict_errors_are_one_line_exit_2(store, tmp_path, capsys, extra, fragment):
    argv = ["predict", "--model", NAME, "--out", str(tmp_path / "s.png")]
    assert main(argv + extra + ["--tracking-uri", store.uri]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- Serve
@pytest.fixture(scope="module")
def http(store):
    from fastapi.testclient import TestClient

    from pipelines import serve as gm_serve

    cfg = gm_serve.ServeConfig(tracking_uri=store.uri, max_steps=6)
    with TestClient(gm_serve.make_api(gm_serve.GenModelsService(cfg))) as client:
        yield client


def _error(r, status: int) -> str:
    from tests.pipelines.serving import error_message

    return error_message(r, status)


def test_serve_predict_and_its_422s(http, store):
    url = f"/v1/models/{NAME}/predict"
    x = store.data.arrays("test")["x"][:2].astype(int)
    r = http.post(url, json={"frames": x[:, :5].tolist(), "steps": 3})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["frames"], np.float32)
    want = store.models["mse"].predict(torch.from_numpy(x[:, :5]), steps=3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert got.shape == (2, 3, 1, 32, 32)
    small = x[:, :5, :, :16, :16].tolist()  # wrong frame size
    assert "frames must be (B, T, 1, 32, 32)" in _error(
        http.post(url, json={"frames": small, "steps": 1}), 422
    )
    assert (
        "at least 5 frames"
        in _error(  # wrong count: fewer than the context
            http.post(url, json={"frames": x[:, :3].tolist(), "steps": 1}), 422
        )
    )
    assert "steps=7 is over the limit of 6" in _error(
        http.post(url, json={"frames": x[:, :5].tolist(), "steps": 7}), 422
    )
    assert "integers in 0..255" in _error(
        http.post(url, json={"frames": (x[:, :5] + 0.5).tolist(), "steps": 1}), 422
    )
    assert "no capability 'predict'" in _error(
        http.post("/v1/models/made-digits/predict", json={"frames": x[:, :5].tolist()}), 422
    )
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert "predict" in json.dumps(models[NAME])


# ------------------------------------------------------------------------------------- Ray
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_nextframe_trains_through_the_ray_path(tmp_path: Path, ray_session):
    from pipelines.train import TrainSpec, build_trainer, family_rule, load_best_from_checkpoint

    prepared = prepare_dataset("moving-mnist-1", seed=0, limit=60)
    data = prepared.to_ray()
    batch = first_batch(data.splits["train"], 4)
    assert batch["x"].shape == (4, 10, 1, 32, 32) and batch["x"].dtype == torch.float32
    spec = TrainSpec(
        family="nextframe",
        dataset="moving-mnist-1",
        model=dict(TINY),
        epochs=2,
        batch_size=8,
        num_workers=1,
        storage_path=str(tmp_path / "ray"),
        grid_samples=0,
        max_steps_per_epoch=2,
    )
    assert family_rule(spec, genmodels.family_class("nextframe"), False) == "val-neg_mse"
    result = build_trainer(spec, data, None, None, name="nf-ray").fit()
    m = result.metrics
    assert m["steps"] == 4 and m["method"] == "none" and m["val_score"] <= 0
    assert {"test_neg_mse", "test_mse_t1", "test_copy_mse_t1", "test_psnr_t1"} <= set(m)
    result_model, _ = load_best_from_checkpoint(result.checkpoint)
    test = torch.from_numpy(prepared.arrays("test")["x"])
    mine = result_model.validation_metrics({"x": test})["neg_mse"].mean().item()
    assert mine == pytest.approx(m["test_neg_mse"], abs=1e-5)  # same seed, same weights
