"""Reading a Ray dataset in a test without cutting a pass short.

Leaving a Ray Data iterator early (``next(iter(ds.iter_torch_batches()))``) shuts its executor down
with ``force=True``, which force-cancels the map tasks still in flight; in Ray 2.60 that cancel
can race the task's own completion in the driver's core worker and abort the process ("Check
failed: it != submissible_tasks_.end() Tried to complete task that was not pending", the race of
ray-project/ray#54527). It took a whole ``make test`` down once (2026-12-03, in
``test_data.py``, right after a Serve test). The suite's datasets are small, so a test reads
the whole pass and keeps what it needs: no task is ever cancelled."""

from __future__ import annotations


def first_batch(ds, batch_size: int) -> dict:
    """The first torch batch of ``ds``, after reading the pass to its end."""
    first = None
    for batch in ds.iter_torch_batches(batch_size=batch_size):
        if first is None:
            first = batch
    assert first is not None, "empty dataset"
    return first
