"""The suite's own guards (tests/conftest.py)."""

from __future__ import annotations

import time

from tests.conftest import remove_leftover_placement_groups


def test_a_leftover_placement_group_is_removed(ray_session):
    """A placement group a test leaves reserved is removed (its CPU returns to the pool); the
    control, a second call, finds nothing left."""
    ray = ray_session
    from ray.util.placement_group import placement_group

    free = ray.available_resources().get("CPU", 0.0)
    pg = placement_group([{"CPU": 0.5}])
    ray.get(pg.ready(), timeout=60)
    assert ray.util.placement_group_table(pg)["state"] == "CREATED"
    assert pg.id.hex() in remove_leftover_placement_groups()
    assert ray.util.placement_group_table(pg)["state"] == "REMOVED"
    assert remove_leftover_placement_groups() == []
    deadline = time.monotonic() + 60  # the resource view catches up asynchronously
    while ray.available_resources().get("CPU", 0.0) < free - 1e-6:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)
