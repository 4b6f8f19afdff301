"""Shared fixtures: one Ray session for the whole pytest run (ray.init costs seconds)."""

from __future__ import annotations

import os

import pytest

# Ports of the suite's shared Ray, apart from the defaults so a user's Ray is not disturbed.
DASHBOARD_PORT = int(os.environ.get("GENMODELS_TEST_DASHBOARD_PORT", "8365"))
SERVE_PORT = int(os.environ.get("GENMODELS_TEST_SERVE_PORT", "8399"))


@pytest.fixture(scope="session", autouse=True)
def genmodels_cache(tmp_path_factory):
    """A fresh cache (yardstick classifiers) per test session: the suite never reads ~/.cache."""
    path = tmp_path_factory.mktemp("genmodels-cache")
    previous = os.environ.get("GENMODELS_CACHE")
    os.environ["GENMODELS_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("GENMODELS_CACHE", None)
    else:
        os.environ["GENMODELS_CACHE"] = previous


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and the dashboard on (Tune's trial clean-up needs it)."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=True,
            dashboard_port=DASHBOARD_PORT,
            object_store_memory=600 * 1024**2,
            log_to_driver=True,
        )
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture()
def tracking_uri(tmp_path):
    """A fresh MLflow store (sqlite) in a temp dir, as an absolute URI."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
