"""The generic capability endpoints of the Serve app (``POST /v1/models/{name}/{capability}``),
end to end: a real registry, real Serve, HTTP through the proxy.

What is checked here is the generic layer (capability tags, routing, validation, limits, JSON
results); each family's imputation maths is tested in ``tests/genmodels``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import genmodels
from pipelines import registry
from tests.genmodels.test_contract import TINY
from tests.pipelines.serving import error_message, serve_app

pytestmark = pytest.mark.ray

APP = "genmodels-uses-test"
SHAPE = (1, 3, 4)
D = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('serve-uses') / 'mlflow.db'}"
    exp = registry.ensure_experiment(uri, "serve-uses-test")
    c = registry.client(uri)
    models = {}
    for family, shape in (("made", SHAPE), ("vae", (D,))):
        torch.manual_seed(0)
        model = genmodels.build(family, input_shape=shape, **TINY[family]).eval()
        meta = {"dataset": "toy", "fingerprint": "f1", "preprocessing": {}, "method": "m"}
        run_id = c.create_run(exp).info.run_id
        registry.register_model(uri, run_id, model, meta, {"val_log_prob": -5.0})
        models[family] = model
    return SimpleNamespace(uri=uri, **models)


@pytest.fixture(scope="module")
def http(ray_session, serve_port, store):
    # registry deadline not 5 s: /v1/models on a cold replica took 7 s with the 2 cores loaded 15x
    with serve_app(store.uri, serve_port, APP, "/uses", registry_timeout_s=60) as client:
        yield client


_error = error_message


def test_models_list_each_versions_capabilities(http, store):
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    made = models["made-toy"]["versions"]["1"]["capabilities"]
    assert made == sorted(store.made.capabilities)
    assert {"sample", "log_prob"} <= set(made)
    assert "embed" in models["vae-toy"]["versions"]["1"]["capabilities"]


def test_embed_matches_the_model(http, store):
    x = torch.randint(0, 2, (3, D)).float()
    r = http.post("/v1/models/vae-toy/embed", json={"x": x.int().tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["capability"] == "embed" and body["version"] == 1
    want = store.vae.embed(x)
    assert torch.allclose(torch.tensor(body["embedding"]), want, atol=1e-5)


def test_log_prob_endpoint_is_score(http):
    x = torch.randint(0, 2, (2, *SHAPE)).int().tolist()
    a = http.post("/v1/models/made-toy/log_prob", json={"x": x}).json()
    b = http.post("/v1/models/made-toy/score", json={"x": x}).json()
    assert a["log_prob"] == pytest.approx(b["log_prob"]) and a["method"] == "exact"


@pytest.mark.skipif(
    "impute" not in genmodels.family_class("made").capabilities, reason="made cannot impute yet"
)
def test_impute_keeps_observed_entries_and_is_seeded(http):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (2, D), generator=g)
    mask = torch.ones(2, D, dtype=torch.int64)
    mask[:, D // 2 :] = 0  # the second half is missing
    body = {"x": x.tolist(), "mask": mask.tolist(), "num_samples": 3, "seed": 7}
    r = http.post("/v1/models/made-toy/impute", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    samples = torch.tensor(out["samples"])
    assert samples.shape == (3, 2, *SHAPE)
    flat = samples.flatten(2)
    assert torch.equal(flat[:, :, : D // 2], x[None, :, : D // 2].expand(3, 2, D // 2))
    assert set(flat.unique().tolist()) <= {0, 1}
    assert out["method"]
    again = http.post("/v1/models/made-toy/impute", json=body).json()
    assert again["samples"] == out["samples"]


def test_capabilities_a_version_lacks_are_422_naming_them(http):
    x = torch.zeros(1, D).int().tolist()
    msg = _error(http.post("/v1/models/made-toy/classify", json={"x": x}), 422)
    assert "no capability 'classify'" in msg and "log_prob" in msg
    msg = _error(
        http.post("/v1/models/made-toy/sample", json={"n": 2, "condition": {"label": 3}}), 422
    )
    assert "condition:label" in msg
    msg = _error(http.post("/v1/models/made-toy/teleport", json={}), 404)
    assert "impute" in msg and "embed" in msg


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"x": [[0] * D]}, 422, "mask: Field required"),
        ({"x": [[0] * D], "mask": [[1] * (D - 1)]}, 422, "mask must have shape"),
        ({"x": [[0] * D], "mask": [[2] * D]}, 422, "0 (missing) or 1 (observed)"),
        ({"x": [[0] * D], "mask": [[1] * D, [1] * D]}, 422, "mask has 2 rows for 1 rows"),
        ({"x": [[0] * D], "mask": [[1] * D], "num_samples": 999}, 422, "num_samples=999"),
        ({"x": [[0] * D], "mask": [[1] * D], "num_samples": "3"}, 422, "num_samples"),
        ({"x": [[0] * D] * 33, "mask": [[1] * D] * 33}, 422, "over the limit of 32"),
        ({"x": [[3] * D], "mask": [[1] * D]}, 422, "x values must be integers in 0..1"),
    ],
)
def test_impute_input_errors(http, body, status, fragment):
    r = http.post("/v1/models/made-toy/impute", json=body)
    if r.status_code == 422 and "no capability 'impute'" in r.text:
        pytest.skip("made cannot impute yet")
    assert fragment in _error(r, status)


# ------------------------------------------------------------------------------ classify
def _in_replicas(fn):
    """Run ``fn(replica_actor)`` inside this module's app replicas: the ingress (which checks
    that a version's family is installed) and the model replica (which loads it)."""
    import ray
    from ray.util.state import list_actors

    for deployment in ("GenModelsServer", "ModelWorker"):
        cls = f"ServeReplica:{APP}:{deployment}"
        (actor,) = list_actors(filters=[("class_name", "=", cls), ("state", "=", "ALIVE")])
        handle = ray.get_actor(actor.name, namespace="serve")
        ray.get(handle.__ray_call__.remote(fn), timeout=60)


@pytest.fixture(scope="module")
def classifier(http, store):
    """A test-only family with the classify capability (``tests/pipelines/classify_family.py``),
    4 classes, registered as ``probeclf-toy`` and installed here and in the app's replica
    (where its versions are loaded); uninstalled here afterwards."""
    from tests.pipelines import classify_family

    classify_family.install()

    def install(replica) -> None:  # runs in the replica (shipped by value)
        from tests.pipelines import classify_family as family

        family.install()

    _in_replicas(install)
    torch.manual_seed(0)
    model = genmodels.build(classify_family.FAMILY, input_shape=SHAPE, num_classes=4).eval()
    with torch.no_grad():  # weights large enough that the classes differ per row
        model.linear.weight.mul_(20)
    meta = {"dataset": "toy", "fingerprint": "f1", "preprocessing": {}, "method": "none"}
    c = registry.client(store.uri)
    run_id = c.create_run(registry.ensure_experiment(store.uri, "serve-uses-test")).info.run_id
    registry.register_model(store.uri, run_id, model, meta, {"val_score": float("nan")})
    yield model
    classify_family.uninstall()


def test_classify_returns_each_rows_class_log_probabilities(http, classifier):
    """(B, K) log-probabilities, each row a distribution (sums to 1), equal to the model's own
    (flat (B, D) rows accepted); the version lists exactly the capability it has."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 2, (5, *SHAPE), generator=g)
    r = http.post("/v1/models/probeclf-toy/classify", json={"x": x.flatten(1).tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["capability"] == "classify" and body["version"] == 1
    log_probs = torch.tensor(body["log_probs"])
    assert log_probs.shape == (5, 4)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(5), atol=1e-5)
    want = classifier.classify(x.float())
    assert torch.allclose(log_probs, want, atol=1e-5)
    assert len(set(want.argmax(1).tolist())) > 1  # the rows really are told apart
    one = http.post("/v1/models/probeclf-toy/classify", json={"x": x[:1].tolist()}).json()
    assert torch.tensor(one["log_probs"]).shape == (1, 4)
    assert torch.allclose(torch.tensor(one["log_probs"]), want[:1], atol=1e-5)
    models = _listing_with(http, "probeclf-toy")
    assert models["probeclf-toy"]["versions"]["1"]["capabilities"] == ["classify"]


def _listing_with(http, name: str, wait_s: float = 60.0) -> dict:
    """``/v1/models`` once it lists ``name``: the listing is cached for ``alias_ttl_s`` (10 s) and
    then revalidated in the background, so a version registered after an earlier listing shows up
    within a TTL plus one request, not at once (bounded wait)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
        if name in models or time.monotonic() > deadline:
            return models
        time.sleep(1.0)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"x": [[0] * (D - 1)]}, "x must have shape (B, 1, 3, 4) or (B, 12)"),
        ({"x": [[2] * D]}, "x values must be integers in 0..1"),
        ({"x": [[0.5] * D]}, "x values must be integers in 0..1"),
        ({"x": []}, "at least one example"),
        ({"x": [[0] * D] * 33}, "over the limit of 32"),
        ({}, "x: Field required"),
        ({"x": [[0] * D], "mask": [[1] * D]}, "mask: Extra inputs are not permitted"),
        ({"x": [[0] * D], "version": 9}, "version"),
    ],
)
def test_classify_input_errors_are_4xx(http, classifier, body, fragment):
    r = http.post("/v1/models/probeclf-toy/classify", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.json()["error"]["message"]


def test_classify_on_a_version_without_it_is_422_naming_it(http, classifier):
    x = torch.zeros(1, D).int().tolist()
    for name, has in (("vae-toy", "embed"), ("made-toy", "log_prob")):
        msg = _error(http.post(f"/v1/models/{name}/classify", json={"x": x}), 422)
        assert f"{name} v1 has no capability 'classify'" in msg and has in msg
    malformed = http.post(
        "/v1/models/probeclf-toy/classify",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert "malformed JSON" in _error(malformed, 400)
