"""Ray Tune driving Ray Train: trials are nested MLflow runs, the best one is registered."""

from __future__ import annotations

import pytest

from pipelines import registry
from pipelines.train import TrainSpec
from pipelines.tune import run_tuning, to_tune_space

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]


def test_search_space_maps_every_kind():
    """Each kind maps to the distribution it names, checked on 4000 draws (seeded): its bounds,
    its shape (quartiles of the uniform, decades of the log-uniform) and, for randint, an
    exclusive high: every value 1..3 drawn, 4 never."""
    import numpy as np

    from genmodels.base import SearchSpec

    space = to_tune_space(
        {
            "a": SearchSpec("choice", ((8,), (16,))),
            "b": SearchSpec("loguniform", low=1e-4, high=1e-2),
            "c": SearchSpec("uniform", low=-1.0, high=3.0),
            "d": SearchSpec("randint", low=1, high=4),
        }
    )
    n, rng = 4000, np.random.default_rng(0)
    draws = {k: np.asarray(space[k].sample(size=n, random_state=rng), dtype=object) for k in "bcd"}
    assert set(map(tuple, space["a"].sample(size=200, random_state=rng))) == {(8,), (16,)}
    b = draws["b"].astype(float)
    assert b.min() >= 1e-4 and b.max() < 1e-2
    decades = np.histogram(np.log10(b), bins=[-4, -3, -2])[0] / n
    assert np.abs(decades - 0.5).max() < 0.04  # log-uniform: as many in each decade
    c = draws["c"].astype(float)
    assert c.min() >= -1.0 and c.max() < 3.0
    quarters = np.histogram(c, bins=[-1, 0, 1, 2, 3])[0] / n
    assert np.abs(quarters - 0.25).max() < 0.03  # uniform on [-1, 3), not [0, 1) or log
    d = draws["d"].astype(int)
    counts = np.bincount(d, minlength=5)
    assert counts[0] == counts[4] == 0 and len(counts) == 5  # high is exclusive
    assert np.abs(counts[1:4] / n - 1 / 3).max() < 0.03


def test_two_trials_nested_runs_and_best_registered(ray_session, tmp_path, tracking_uri):
    spec = TrainSpec(
        family="made",
        dataset="digits",
        model={"hidden_sizes": (16,)},  # fixed; the family's other knobs are searched
        epochs=2,
        batch_size=64,
        num_workers=1,
        max_steps_per_epoch=2,
        storage_path=str(tmp_path / "ray"),
        tracking_uri=tracking_uri,
    )
    out = run_tuning(spec, num_samples=2)
    assert len(out.trials) == 2 and all(t["error"] is None for t in out.trials)
    from genmodels import family_class

    searched = set(family_class("made").search_space) - {"hidden_sizes"}
    assert searched and set(out.best_config) == searched  # hidden_sizes was fixed: not searched
    best = max(t["metric"] for t in out.trials)
    assert out.best_metrics["val_log_prob"] == pytest.approx(best, abs=1e-3)
    uri = registry.resolve_tracking_uri(tracking_uri)
    c = registry.client(uri)
    exp = c.get_experiment_by_name(spec.experiment)
    children = c.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{out.parent_run_id}'"
    )
    assert len(children) == 2
    assert all(len(c.get_metric_history(r.info.run_id, "val_log_prob")) >= 1 for r in children)
    assert out.registered is not None and out.registered.promoted
    tags = registry.resolve_version(uri, "made-digits", "champion").tags
    assert float(tags["metric.val_log_prob"]) == pytest.approx(out.best_metrics["val_log_prob"])
