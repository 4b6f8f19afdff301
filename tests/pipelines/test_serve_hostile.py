"""Hostile clients, authentication and registry outages (issue 18), in-process: the API as a
plain FastAPI app (``make_api(GenModelsService(cfg))``) over a real sqlite registry, without
Ray. The Serve deployment is the same class with ``@serve.multiplexed`` / ``@serve.batch``;
``tests/pipelines/test_serve.py`` checks the limits and the key through Serve's proxy.

Controls (each test fails with the fix removed) are recorded in the commit messages.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genmodels
from pipelines import registry
from pipelines import serve as gm_serve

SHAPE = (1, 3, 4)
D = 12
KEY = "k3y-" + "a" * 40
LIMIT = 64 * 1024
SCORE = "/v1/models/made-toy/score"
ONE = [[0, 1] * (D // 2)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'mlflow.db'}"
    exp = registry.ensure_experiment(uri, "hostile")
    c = registry.client(uri)
    torch.manual_seed(0)
    made = genmodels.build("made", input_shape=SHAPE, hidden_sizes=(8,)).eval()
    meta = {"dataset": "toy", "fingerprint": "f1", "preprocessing": {}, "method": "exact"}
    for _ in range(2):  # v1 (champion) and v2
        registry.register_model(uri, c.create_run(exp).info.run_id, made, meta, {"val_score": -5})
    return SimpleNamespace(uri=uri, made=made)


def _app(uri: str | None = None, **settings) -> TestClient:
    if uri is not None:
        settings["tracking_uri"] = uri
    cfg = gm_serve.ServeConfig(**settings)
    return TestClient(gm_serve.make_api(gm_serve.GenModelsService(cfg)))


@pytest.fixture(scope="module")
def http(store):
    with _app(store.uri, max_body_bytes=LIMIT) as client:
        yield client


def _error(r, status: int) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status
    return err["message"]


# ------------------------------------------------------------------------------ body limits
def test_oversized_body_with_content_length_is_413(http):
    body = json.dumps({"x": [[0] * D] * (LIMIT // (2 * D))}).encode()
    assert len(body) > LIMIT
    assert "over the limit of 65536" in _error(http.post(SCORE, content=body), 413)
    # the size is judged before the body is parsed: not even JSON is needed to be refused
    assert _error(http.post(SCORE, content=b"{" * (LIMIT + 1)), 413)
    # ... and before it is read: a declared size over the limit is refused on its own
    small = json.dumps({"x": ONE}).encode()
    lying = http.post(SCORE, content=small, headers={"content-length": str(LIMIT + 1)})
    assert "request body of 65537 bytes" in _error(lying, 413)
    small = json.dumps({"x": ONE}).encode()
    assert http.post(SCORE, content=small).status_code == 200


def test_oversized_body_without_content_length_is_413(http):
    sent = []

    def chunks():  # a chunked upload: no Content-Length
        for _ in range(4 * LIMIT // 4096):
            sent.append(4096)
            yield b" " * 4096

    r = http.post(SCORE, content=chunks())
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert "over the limit of 65536 bytes" in _error(r, 413)
    streamed_ok = http.post(SCORE, content=iter([b'{"x": ', json.dumps(ONE).encode(), b"}"]))
    assert streamed_ok.status_code == 200, streamed_ok.text


def test_bodies_in_flight_are_bounded(store):
    """With ``max_inflight_body_bytes`` = 64 KiB, a second 40 KB body while a first one (chunked)
    is still arriving is a 503; once the first ends, the same body is served."""
    cfg = gm_serve.ServeConfig(
        tracking_uri=store.uri, max_body_bytes=LIMIT, max_inflight_body_bytes=LIMIT
    )
    service = gm_serve.GenModelsService(cfg)
    app = gm_serve.make_api(service)
    rows = json.dumps([ONE[0]] * 64)
    body = ('{"x": ' + rows + ', "pad": "' + " " * (40_000 - len(rows)) + '"}').encode()

    async def main():
        gate = asyncio.Event()

        async def slow():
            yield body[:30_000]
            await gate.wait()
            yield body[30_000:]

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.ensure_future(client.post(SCORE, content=slow()))
            for _ in range(200):
                if service._bodies.used:
                    break
                await asyncio.sleep(0.01)
            second = await client.post(SCORE, content=body)
            gate.set()
            return await first, second, await client.post(SCORE, content=body)

    first, second, third = asyncio.run(main())
    assert "retry shortly" in _error(second, 503)
    assert first.status_code == third.status_code == 422  # "pad" is not a field: but read
    assert "pad" in third.json()["error"]["message"]
    assert service._bodies.used == 0


# ------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize("depth", [100, 900, 5000, 100_000])
def test_deep_nesting_is_4xx(http, depth):
    body = '{"x": ' + "[" * depth + "]" * depth + "}"
    if len(body) > LIMIT:
        pytest.skip("over the body limit (413): covered above")
    r = http.post(SCORE, content=body)
    assert 400 <= r.status_code < 500, r.text
    deep = '{"n": 1, "condition": {"label": ' + "[" * depth + "]" * depth + "}}"
    r = http.post("/v1/models/made-toy/sample", content=deep)
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize("version", [2**63, 2**64, 10**30, -(2**63)])
def test_huge_version_is_4xx(http, version):
    for path, body in ((SCORE, {"x": ONE}), ("/v1/models/made-toy/sample", {"n": 1})):
        r = http.post(path, content=json.dumps({**body, "version": version}))
        assert 400 <= r.status_code < 500, r.text
    r = http.post(SCORE, json={"x": ONE, "version": 2**63 - 1})  # the largest accepted: unknown
    assert "'9223372036854775807'" in _error(r, 404)


# --------------------------------------------------------------------------------- the key
@pytest.fixture(scope="module")
def keyed(store, tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "api-key"
    path.write_text(f"old-key-being-rotated-out\n{KEY}\n")
    with _app(store.uri, api_key_file=str(path), require_api_key=True) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"X-API-Key": "wrong"},
    ],
)
def test_missing_or_wrong_key_is_401(keyed, headers):
    for method, path, body in (
        ("get", "/v1/models", None),
        ("post", SCORE, {"x": ONE}),
        ("post", "/v1/models/made-toy/sample", {"n": 1}),
        ("post", "/v1/models/made-toy/embed", {"x": ONE}),
        ("get", "/openapi.json", None),
        ("get", "/docs", None),
    ):
        r = keyed.request(method, path, json=body, headers=headers)
        assert "API key" in _error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_right_key_is_200_and_health_is_open(keyed):
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        assert keyed.get("/v1/models", headers=headers).status_code == 200
        r = keyed.post(SCORE, json={"x": ONE}, headers=headers)
        assert r.status_code == 200 and len(r.json()["log_prob"]) == 1
        assert keyed.get("/openapi.json", headers=headers).status_code == 200
    rotated = keyed.get("/v1/models", headers={"X-API-Key": "old-key-being-rotated-out"})
    assert rotated.status_code == 200  # every line of the key file is accepted
    assert keyed.get("/healthz").json() == {"status": "ok"}
    assert keyed.get("/readyz").status_code == 200


def test_a_required_key_that_is_missing_refuses_to_start(store, monkeypatch):
    monkeypatch.delenv(gm_serve.API_KEY_ENV, raising=False)
    with pytest.raises(ValueError, match="no key is configured"):
        gm_serve.GenModelsService(
            gm_serve.ServeConfig(tracking_uri=store.uri, require_api_key=True)
        )


def test_env_key_and_docs_flag(store, monkeypatch):
    monkeypatch.setenv(gm_serve.API_KEY_ENV, KEY)
    with _app(store.uri, docs=False) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/openapi.json", headers={"X-API-Key": KEY}).status_code == 404
        assert client.get("/docs", headers={"X-API-Key": KEY}).status_code == 404


# ------------------------------------------------------------------------ leaks in errors
LEAKS = ("/tmp", "/work", ".db", "sqlite", "SQL", "SELECT", "Traceback", 'File "')


def test_error_bodies_name_no_path_or_sql(store, tmp_path, monkeypatch):
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not a sqlite database" * 100)
    with _app(f"sqlite:///{broken}", registry_timeout_s=30) as client:
        for r in (client.get("/v1/models"), client.post(SCORE, json={"x": ONE})):
            message = _error(r, 503)
            assert not [w for w in LEAKS if w in message], message

    def boom(self, method, *args, **kwargs):
        raise RuntimeError(f"cannot open {broken}: SELECT * FROM secrets")

    with _app(store.uri) as client:
        monkeypatch.setattr(gm_serve._Loaded, "call", boom)
        message = _error(client.post("/v1/models/made-toy/sample", json={"n": 1}), 500)
        assert not [w for w in LEAKS if w in message], message


# ---------------------------------------------------------------------- registry outages
def test_loaded_model_keeps_serving_while_the_registry_hangs(store, monkeypatch):
    with _app(store.uri, alias_ttl_s=0.0, registry_timeout_s=1.0) as client:
        warm = client.post(SCORE, json={"x": ONE})
        assert warm.status_code == 200
        assert client.get("/readyz").json()["registry"]["state"] == "up"
        release = threading.Event()

        def hang(*args, **kwargs):
            release.wait(60)
            raise registry.RegistryError("database is locked")

        for fn in ("resolve_version", "list_models", "ping", "load_version"):
            monkeypatch.setattr(registry, fn, hang)
        try:
            t0 = time.perf_counter()
            for _ in range(5):  # every request is past the TTL: each would ask the registry
                r = client.post(SCORE, json={"x": ONE})
                assert r.status_code == 200, r.text
                assert r.json()["log_prob"] == warm.json()["log_prob"]
            served = time.perf_counter() - t0
            print(f"5 scores with the registry hung: {served:.3f} s")
            assert served < 5 * 1.0  # under the registry deadline each, not blocked on it
            # the refreshes started above time out after the 1 s deadline: /readyz says so
            t0 = time.perf_counter()
            while (ready := client.get("/readyz")).json()["registry"]["state"] == "up":
                assert time.perf_counter() - t0 < 10, ready.json()
                time.sleep(0.1)
            print(f"/readyz: registry down after {time.perf_counter() - t0:.2f} s: {ready.json()}")
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["registry"]["state"] == "down" and body["status"] == "degraded"
            assert body["cached_versions"] >= 1
            assert client.get("/healthz").json() == {"status": "ok"}
            # a version never resolved cannot be served: a 503 within the deadline
            t0 = time.perf_counter()
            r = client.post(SCORE, json={"x": ONE, "version": 2})
            waited = time.perf_counter() - t0
            print(f"uncached version with the registry hung: {waited:.2f} s -> {r.status_code}")
            assert "registry unavailable" in _error(r, 503)
            assert waited < 10  # the 1 s deadline, with room for a loaded machine
        finally:
            release.set()


def test_stale_versions_expire(store, monkeypatch):
    with _app(store.uri, alias_ttl_s=0.0, max_stale_s=0.0, registry_timeout_s=0.5) as client:
        assert client.post(SCORE, json={"x": ONE}).status_code == 200

        def down(*args, **kwargs):
            raise registry.RegistryError("connection refused")

        monkeypatch.setattr(registry, "resolve_version", down)
        monkeypatch.setattr(registry, "ping", down)
        _error(client.post(SCORE, json={"x": ONE}), 503)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"


# --------------------------------------------------------------------------- event loop
def test_healthz_answers_while_a_max_size_body_is_parsed(store):
    """A body at the limit is read, parsed and validated off the event loop: /healthz answers
    meanwhile. Reported, not asserted tightly (timings on a shared machine)."""
    limit = 4 * 2**20
    cfg = gm_serve.ServeConfig(tracking_uri=store.uri, max_body_bytes=limit)
    app = gm_serve.make_api(gm_serve.GenModelsService(cfg))
    rows = [[0, 1] * (D // 2)] * 256
    unit = [[1.5] * 8] * 64
    size = len(json.dumps({"x": rows, "pad": []})) + 100
    body = json.dumps({"x": rows, "pad": [unit] * ((limit - size) // (len(json.dumps(unit)) + 2))})
    assert limit - 10_000 < len(body) < limit

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/healthz")
            task = asyncio.ensure_future(client.post(SCORE, content=body))
            lat = []
            while not task.done():
                t0 = time.perf_counter()
                await client.get("/healthz")
                lat.append(time.perf_counter() - t0)
                await asyncio.sleep(0.002)
            return await task, lat

    cpu = time.process_time()
    with pytest.raises(gm_serve.ApiError):
        gm_serve._decode(body.encode(), gm_serve.ScoreRequest)
    cpu = time.process_time() - cpu
    t0 = time.perf_counter()
    r, lat = asyncio.run(main())
    print(
        f"{len(body) / 2**20:.1f} MB body: decoding costs {cpu * 1e3:.0f} ms CPU (the GIL is held "
        f"that long); answered in {time.perf_counter() - t0:.2f} s ({r.status_code}); /healthz "
        f"during it: {len(lat)} calls, max {max(lat) * 1e3:.0f} ms"
    )
    assert r.status_code == 422  # "pad" is not a field
    assert lat  # /healthz answered while the body was in flight


# -------------------------------------------------------------------------------- fuzzing
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
_rows = st.lists(
    st.lists(st.integers(-1, 2) | st.floats(-1, 2) | st.just(1e308), min_size=D, max_size=D),
    min_size=0,
    max_size=4,
)
_fields = {
    "x": _rows | _json,
    "mask": _rows | _json,
    "n": st.integers(-5, 40) | st.integers() | _json,
    "seed": st.integers(-1, 2**64) | _json,
    "version": st.integers(-1, 3) | st.integers(2**62, 2**66) | _json,
    "alias": st.sampled_from(["champion", "nope", "", "a'b", "x" * 300]) | _json,
    "num_samples": st.integers(-1, 40) | _json,
    "condition": st.dictionaries(st.sampled_from(["label", "caption"]), _json, max_size=2) | _json,
    "steps": st.integers(-1, 20) | _json,
    "direction": st.text(max_size=4) | _json,
    "frames": _json,
}
_bodies = st.dictionaries(st.sampled_from(sorted(_fields)), st.none(), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: _fields[k] for k in keys})
)
_endpoints = st.sampled_from(
    ["sample", "score", "log_prob", "embed", "impute", "classify", "translate", "predict", "zz"]
)
_names = st.sampled_from(["made-toy", "nope-toy", "made-toy'--", "%00", "a" * 200])


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=_names,
    endpoint=_endpoints,
    body=_bodies | _json,
    raw=st.none() | st.binary(max_size=64),
)
def test_fuzz_request_schemas_never_5xx(http, name, endpoint, body, raw):
    """Random bodies (typed fields with wrong types, huge ints, NaN, deep or ragged lists, raw
    bytes) on every endpoint: every answer is a 2xx or a 4xx JSON error, never a 5xx."""
    content = raw if raw is not None else json.dumps(body).encode()
    r = http.post(f"/v1/models/{name}/{endpoint}", content=content)
    assert r.status_code < 500, (r.status_code, r.text, content[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["status"] == r.status_code


def test_cluster_serve_configs_require_a_key(store, tmp_path):
    """cluster/serve-config.yaml (= the RayService's serveConfigV2): a key file, required, no
    /docs; the replicas refuse to start where the key file is missing."""
    import yaml

    path = Path(__file__).parents[2] / "cluster" / "serve-config.yaml"
    (app,) = yaml.safe_load(path.read_text())["applications"]
    args = {
        k: v
        for k, v in app["args"].items()
        if k not in ("num_replicas", "ingress_replicas", "sample_limits")
    }
    cfg = gm_serve.ServeConfig(**{**args, "tracking_uri": store.uri})
    assert cfg.require_api_key and cfg.api_key_file and not cfg.docs
    with pytest.raises(FileNotFoundError):
        gm_serve.GenModelsService(cfg)
    key = tmp_path / "api-key"
    key.write_text(KEY)
    with _app(**{**args, "tracking_uri": store.uri, "api_key_file": str(key)}) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_cli_refuses_a_public_host_without_a_key(store, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.delenv(gm_serve.API_KEY_ENV, raising=False)
    argv = ["serve", "--host", "0.0.0.0", "--port", "1", "--tracking-uri", store.uri]
    assert main(argv) == 2
    assert "without an API key" in capsys.readouterr().err
