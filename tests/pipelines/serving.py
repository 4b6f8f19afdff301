"""Shared by the uses' Serve tests: an app on this suite's Serve over a test store, and the
message of a JSON error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from ray import serve

from pipelines import serve as gm_serve


@contextlib.contextmanager
def serve_app(
    uri: str, port: int, name: str, prefix: str, timeout: float = 60, **settings
) -> Iterator[httpx.Client]:
    """The app ``name`` at ``prefix`` (rows per call 32, replicas reserving no CPU, plus
    ``settings``), an HTTP client on it; deleted afterwards (checked)."""
    settings = {"max_batch": 32, "ray_actor_options": {"num_cpus": 0}, **settings}
    url = gm_serve.start(uri, port=port, name=name, route_prefix=prefix, **settings)
    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            yield client
    finally:
        gm_serve.shutdown(name)
    assert name not in serve.status().applications


def error_message(r: httpx.Response, status: int) -> str:
    """The ``{"error": {"message"}}`` of a response that must have ``status``."""
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]
