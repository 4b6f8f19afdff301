"""Shared fixtures: one Ray session for the whole pytest run (ray.init costs seconds).

The suite's Ray is its own: started with ``address="local"`` (never joining a Ray that
``RAY_ADDRESS`` or the default temp dir points at), in a private temp dir, on ports the OS says are
free, and with its address exported (``RAY_ADDRESS``) to every process it starts, so that Ray's own
helpers that connect without an address (Ray Train's placement-group cleaner, the State API) find
this instance even when other Ray instances run on the machine. Two runs of the suite, or the
suite next to anyone else's Ray, do not collide. See docs/TESTING.md.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

from pipelines.runtime import start_with_retry


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick from its ephemeral range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_temp_dir(prefix: str) -> str:
    """A new directory directly under /tmp: Ray's Unix socket paths must stay under 108 bytes,
    which pytest's deep ``tmp_path`` folders would exceed."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


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


RAY_ENV = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_TMPDIR")


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray with 2 CPUs and the dashboard on (Tune's trial clean-up needs it).

    Its GCS port is chosen before the start (``RAY_GCS_SERVER_PORT``) so that ``RAY_ADDRESS`` can
    be exported before the raylet starts: the workers inherit the raylet's environment, not
    what the driver sets later."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Serve kills an HTTP proxy that misses its ready check (5 s) or three health checks (10 s
    # each): on a 2-core machine loaded 15x the proxy was killed before it ever ran and every
    # test of a module errored at setup (seen in a full run). Inherited by the Serve controller.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
    # Ray starts its workers at nice 15 (``RAY_worker_niceness``; the raylet reads it at start):
    # beside two benchmark processes at nice 0 on the 2-core machine, a Serve replica got so
    # little CPU that its first request passed Serve's 30 s timeout (504; three Serve tests
    # failed in a full run). The suite's workers run at the priority of the driver that waits on
    # them. Another Ray instance's workers keep their own niceness.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ray.is_initialized():  # someone (a plugin, a caller) started one: use it, never stop it
        yield ray
        return
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    temp = short_temp_dir("gm-ray-")
    try:

        def start():
            gcs_port = free_port()  # a new port per try
            address = f"{ray.util.get_node_ip_address()}:{gcs_port}"
            os.environ.update(
                RAY_ADDRESS=address, RAY_GCS_SERVER_PORT=str(gcs_port), RAY_TMPDIR=temp
            )
            ctx = ray.init(
                address="local",  # a new instance: never the one RAY_ADDRESS named before
                num_cpus=2,
                include_dashboard=True,
                dashboard_port=free_port(),
                object_store_memory=600 * 1024**2,
                log_to_driver=True,
                _temp_dir=temp,
            )
            return ctx, address

        ctx, address = start_with_retry(start, ray.shutdown)
        assert ctx.address_info["gcs_address"] == address, (ctx.address_info, address)
        yield ray
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


def remove_leftover_placement_groups() -> list[str]:
    """Remove every placement group of this Ray that is not already removed; return their ids.

    Nothing of the suite holds a placement group between tests: Ray Train and Tune make one per
    run and remove it when the run ends. A run that fails to start its workers may not: under
    load, a 1-worker run's start timed out, its placement group (1.5 of the 2 CPUs) stayed
    reserved, and every later Train test of the session waited for CPUs until it failed or hung
    (a loaded fresh-clone run, 2026-12-03). One failure then stays one failure."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = []
    for pg_id, info in ray.util.placement_group_table().items():
        if info.get("state") != "REMOVED":
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
            removed.append(pg_id)
    return removed


@pytest.fixture(autouse=True)
def no_placement_group_outlives_its_test(request):
    """After each test that used the suite's Ray: remove the placement groups it left."""
    yield
    if "ray_session" not in request.fixturenames:
        return
    import ray

    if ray.is_initialized():
        left = remove_leftover_placement_groups()
        if left:
            print(f"\n{request.node.nodeid} left {len(left)} placement group(s); removed")


@pytest.fixture(scope="session")
def serve_port() -> int:
    """The HTTP port of the suite's Ray Serve (one per Ray: Serve's HTTP options are global)."""
    return free_port()


@pytest.fixture()
def tracking_uri(tmp_path):
    """A fresh MLflow store (sqlite) in a temp dir, as an absolute URI."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
