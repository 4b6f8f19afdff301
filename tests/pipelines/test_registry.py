"""MLflow registry: versions, tags, champion promotion on validation only, pyfunc reload."""

from __future__ import annotations

import mlflow
import pytest
import torch

import genmodels
from pipelines import registry

META = {"dataset": "toy", "fingerprint": "fp1", "method": "exact", "preprocessing": {"b": 1}}


def register(uri, val, meta=META, seed=0, **extra):
    torch.manual_seed(seed)
    model = genmodels.build("made", input_shape=(1, 3, 4), hidden_sizes=(8,))
    exp = registry.ensure_experiment(uri, "test")
    run = registry.client(uri).create_run(exp)
    metrics = {"val_log_prob": val, "test_log_prob": val - 1.0, **extra}
    return model, registry.register_model(uri, run.info.run_id, model, dict(meta), metrics)


def champion_version(uri, name="made-toy"):
    return str(registry.resolve_version(uri, name, "champion").version)


def test_champion_moves_only_on_validation_improvement(tracking_uri):
    uri = registry.resolve_tracking_uri(tracking_uri)
    _, r1 = register(uri, -10.0)
    assert (r1.version, r1.promoted) == ("1", True) and champion_version(uri) == "1"
    _, r2 = register(uri, -12.0)  # worse on validation (even with a better test number)
    assert not r2.promoted and champion_version(uri) == "1"
    _, r3 = register(uri, -9.5)
    assert r3.promoted and champion_version(uri) == "3"
    # Better, but a different dataset fingerprint or method: not comparable, never promoted.
    _, r4 = register(uri, -1.0, meta={**META, "fingerprint": "fp2"})
    _, r5 = register(uri, -1.0, meta={**META, "method": "iwae-k=10"})
    assert not r4.promoted and "fingerprint" in r4.reason
    assert not r5.promoted and "method" in r5.reason
    assert champion_version(uri) == "3"


def test_version_tags_carry_lineage(tracking_uri):
    uri = registry.resolve_tracking_uri(tracking_uri)
    _, r = register(uri, -10.0)
    tags = registry.resolve_version(uri, r.name, r.version).tags
    assert tags["fingerprint"] == "fp1" and tags["method"] == "exact"
    assert tags["metric.val_log_prob"] == "-10.0" and tags["metric.test_log_prob"] == "-11.0"
    assert tags["preprocessing"] == '{"b": 1}' and tags["code_version"].startswith("genmodels")
    assert tags["input_shape"] == "[1, 3, 4]" and tags["levels"] == "2"


def test_reload_and_pyfunc_score_like_the_model(tracking_uri):
    uri = registry.resolve_tracking_uri(tracking_uri)
    model, r = register(uri, -10.0, seed=3)
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    expected = model.eval().log_prob(x).detach()
    loaded, info = registry.load_version(uri, r.name, "champion")
    assert info["version"] == r.version and info["meta"]["fingerprint"] == "fp1"
    assert torch.equal(loaded.log_prob(x).detach(), expected)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{r.name}@champion")
    got = pyfunc.predict(x.reshape(5, -1).numpy())
    assert got.shape == (5,)
    assert torch.allclose(torch.as_tensor(got), expected, atol=1e-5)


def test_unknown_names_and_unreachable_registry(tracking_uri):
    uri = registry.resolve_tracking_uri(tracking_uri)
    register(uri, -10.0)
    with pytest.raises(registry.NotFoundError, match="nope"):
        registry.resolve_version(uri, "nope", "champion")
    with pytest.raises(registry.NotFoundError, match="staging"):
        registry.resolve_version(uri, "made-toy", "staging")
    with pytest.raises(registry.NotFoundError):
        registry.resolve_version(uri, "made-toy", "99")


def test_tracking_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert registry.resolve_tracking_uri("sqlite:///x/y.db") == f"sqlite:///{tmp_path}/x/y.db"
    assert registry.resolve_tracking_uri("http://h:5000") == "http://h:5000"
