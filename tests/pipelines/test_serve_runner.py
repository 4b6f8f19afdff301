"""The serving runtime without Ray or HTTP (issue 18): ``ModelRunner`` pools concurrent calls
without waiting, drops the work of cancelled requests, and ``_RemoteRunner`` retries a call whose
model replica died. Fast: a fake model whose calls are recorded and can be held.

Controls (each test fails with the behaviour removed): recorded in the commit message.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from pipelines import serve as gm_serve


class FakeModel:
    """Records every call's method and rows; ``gate`` (when set) holds each call until opened."""

    input_shape, levels, likelihood = (1, 2, 2), 2, "exact"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = gate

    def _hold(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)

    def sample(self, n, generator=None, condition=None):
        self.calls.append(("sample", n))
        self._hold()
        if condition is not None:  # row i carries its label, to check the split
            return condition["label"].float().view(n, 1, 1, 1).expand(n, *self.input_shape)
        return torch.zeros(n, *self.input_shape)

    def embed(self, x):
        self.calls.append(("embed", len(x)))
        self._hold()
        return x.flatten(1).sum(1, keepdim=True)


def _runner(model, **settings) -> gm_serve.ModelRunner:
    cfg = gm_serve.ServeConfig(tracking_uri="sqlite:///unused.db", **settings)
    loaded = gm_serve._Loaded(model)

    async def load(key):
        return loaded

    return gm_serve.ModelRunner(cfg, load)


def _embed_job(x):
    return gm_serve._Job("embed", len(x), {"x": x}, {}, None, ("embed", "{}"))


def _sample_job(n, labels=None, seed=None):
    rows = {"condition": {"label": torch.tensor(labels)}} if labels is not None else {}
    fixed = {} if labels is not None else {"condition": None}
    pool = None if seed is not None else ("sample", ("label",) if labels is not None else ())
    return gm_serve._Job("sample", n, rows, fixed, seed, pool)


async def _until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_lone_request_runs_at_once():
    """No batch wait: an idle model runs a lone job at once (control: ``batch_wait_s=0.3``)."""

    async def main(runner):
        t0 = time.perf_counter()
        out = await runner.run("m@1", _embed_job(torch.ones(2, 1, 2, 2)))
        return time.perf_counter() - t0, out

    took, out = asyncio.run(main(_runner(FakeModel())))
    assert out.tolist() == [[4.0], [4.0]]
    assert took < 0.2, took
    took_waiting, _ = asyncio.run(main(_runner(FakeModel(), batch_wait_s=0.3)))
    assert took_waiting >= 0.3  # the control: a configured wait is paid by a lone request


def _behind_a_held_call(first, jobs, cancel: bool = False, **settings):
    """Run ``first`` on a model whose calls are held, queue ``jobs`` behind it (their requests
    cancelled if ``cancel``), then release the model: (the model, the jobs' results or
    exceptions)."""
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        runner = _runner(model, **settings)
        held = asyncio.ensure_future(runner.run("m@1", first))
        await _until(lambda: model.calls)
        rest = [asyncio.ensure_future(runner.run("m@1", job)) for job in jobs]
        await asyncio.sleep(0.05)
        if cancel:
            for t in rest:
                t.cancel()
        gate.set()
        await held
        outs = await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.sleep(0.05)
        return outs

    return model, asyncio.run(main())


def test_requests_queued_behind_a_call_are_pooled_into_one_and_split_back():
    """While the first call is held, 6 more jobs queue; they run as ONE call of all their
    rows (up to max_batch) and each gets its own rows back."""
    xs = [torch.full((1 + i % 3, 1, 2, 2), float(i)) for i in range(6)]
    first = _embed_job(torch.zeros(1, 1, 2, 2))
    model, outs = _behind_a_held_call(first, [_embed_job(x) for x in xs], max_batch=64)
    assert model.calls == [("embed", 1), ("embed", sum(len(x) for x in xs))]
    for x, out in zip(xs, outs):
        assert out.tolist() == x.flatten(1).sum(1, keepdim=True).tolist()


def test_max_batch_bounds_a_pooled_call():
    first = _embed_job(torch.zeros(1, 1, 2, 2))
    jobs = [_embed_job(torch.zeros(3, 1, 2, 2)) for _ in range(3)]
    model, _ = _behind_a_held_call(first, jobs, max_batch=4)
    assert [rows for _, rows in model.calls] == [1, 3, 3, 3]


def test_unseeded_samples_pool_by_condition_and_a_seeded_one_runs_alone():
    jobs = [
        _sample_job(2, labels=[3, 4]),
        _sample_job(1, labels=[7]),
        _sample_job(3, seed=5),
        _sample_job(2),
        _sample_job(1),
    ]
    model, outs = _behind_a_held_call(_sample_job(1), jobs, max_batch=64)
    # First the held call; then the labelled pool (3 rows), the seeded job alone, the plain pool.
    assert model.calls == [("sample", 1), ("sample", 3), ("sample", 3), ("sample", 3)]
    assert outs[0][:, 0, 0, 0].tolist() == [3.0, 4.0] and outs[1][:, 0, 0, 0].tolist() == [7.0]
    assert [len(o) for o in outs] == [2, 1, 3, 2, 1]


@pytest.mark.parametrize("cancel", [True, False])
def test_a_cancelled_request_is_dropped_before_it_runs(cancel):
    """16 requests queue behind a held call; their clients leave (cancelled): none of them runs
    (the control, not cancelled: all 16 run)."""
    jobs = [_sample_job(1, seed=i) for i in range(16)]
    model, _ = _behind_a_held_call(_sample_job(1, seed=0), jobs, cancel=cancel)
    assert len(model.calls) == (1 if cancel else 17), model.calls


@pytest.mark.parametrize("cancel", [True, False])
def test_a_cancelled_big_unseeded_sample_stops_between_chunks(cancel):
    """n=256 in chunks of 16: cancelled while its first chunk runs, at most one more chunk
    runs (the control, not cancelled: all 16 chunks run)."""
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        runner = _runner(model, sample_chunk=16, max_batch=256)
        task = asyncio.ensure_future(runner.run("m@1", _sample_job(256)))
        await _until(lambda: model.calls)
        if cancel:
            task.cancel()
        gate.set()
        (out,) = await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.05)
        return out

    out = asyncio.run(main())
    if cancel:
        assert isinstance(out, asyncio.CancelledError)
        assert len(model.calls) <= 2, model.calls
    else:
        assert out.shape == (256, 1, 2, 2)
        assert model.calls == [("sample", 16)] * 16


def test_a_model_error_fails_only_its_requests():
    class Picky(FakeModel):
        def embed(self, x):
            if (x < 0).any():
                raise ValueError("negative input")
            return super().embed(x)

    async def main():
        runner = _runner(Picky())
        bad = runner.run("m@1", gm_serve._Job("embed", 1, {"x": -torch.ones(1, 1, 2, 2)}, {}))
        good = runner.run("m@1", _embed_job(torch.ones(1, 1, 2, 2)))
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(main())
    assert isinstance(bad, gm_serve.ApiError) and bad.status == 422
    assert good.tolist() == [[4.0]]


# ------------------------------------------------------------------------- the ingress's calls
class _Response:
    """A stand-in for a DeploymentResponse: the outcome (returned, or raised), after ``gate``."""

    def __init__(self, outcome, gate: asyncio.Event | None = None):
        self.outcome, self.gate, self.cancelled = outcome, gate, False

    def __await__(self):
        return self._result().__await__()

    async def _result(self):
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


class _Handle:
    """A stand-in for a Serve DeploymentHandle: ``outcomes`` are the answers of its calls in
    turn (a callable: computed from the call's jobs); ``gate`` holds every answer."""

    def __init__(self, outcomes, gate: asyncio.Event | None = None):
        self.outcomes, self.gate, self.calls, self.responses = list(outcomes), gate, [], []

    def options(self, **kw):
        return self

    @property
    def run_many(self):
        return self

    def remote(self, key, jobs):
        self.calls.append(jobs)
        outcome = self.outcomes.pop(0)
        response = _Response(outcome(jobs) if callable(outcome) else outcome, self.gate)
        self.responses.append(response)
        return response


def _died():
    from ray.exceptions import ActorDiedError

    return ActorDiedError()


def _cfg(**settings):
    return gm_serve.ServeConfig(tracking_uri="sqlite:///unused.db", **settings)


@pytest.mark.parametrize("retries, status", [(8, None), (1, 503)])
def test_the_ingress_retries_a_call_whose_replica_died(retries, status):
    """Two replica deaths, then an answer: answered with 8 retries; a 503 (not a 500, not a
    hang) when the retries run out (the control)."""
    handle = _Handle([_died(), _died(), ["answer"]])
    runner = gm_serve._RemoteRunner(handle, _cfg(call_retries=retries))
    job = _embed_job(torch.ones(1, 1, 2, 2))
    if status is None:
        assert asyncio.run(runner.run("m@1", job)) == "answer"
        assert len(handle.calls) == 3
    else:
        with pytest.raises(gm_serve.ApiError) as e:
            asyncio.run(runner.run("m@1", job))
        assert e.value.status == status and len(handle.calls) == 2


def test_the_ingress_does_not_retry_a_model_error():
    handle = _Handle([[gm_serve._Failure(422, "bad input")], ["never"]])
    with pytest.raises(gm_serve.ApiError) as e:
        asyncio.run(gm_serve._RemoteRunner(handle, _cfg()).run("m@1", _embed_job(torch.ones(1))))
    assert (e.value.status, e.value.message, len(handle.calls)) == (422, "bad input", 1)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_the_ingress_sends_what_queued_as_one_call(in_flight):
    """While its calls are out, 6 requests queue at the ingress; they go as ONE call (up to
    max_batch rows), each request answered with its own result. With 2 calls in flight the
    second request goes out at once, alone."""
    gate = asyncio.Event()
    handle = _Handle([lambda jobs: [j.n for j in jobs]] * 8, gate)

    async def main():
        runner = gm_serve._RemoteRunner(handle, _cfg(calls_in_flight=in_flight, max_batch=64))
        tasks = [asyncio.ensure_future(runner.run("m@1", _embed_job(torch.ones(1, 1, 2, 2))))]
        await asyncio.sleep(0.01)
        tasks += [
            asyncio.ensure_future(runner.run("m@1", _embed_job(torch.ones(n, 1, 2, 2))))
            for n in range(2, 8)
        ]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == list(range(1, 8))
    sizes = [[j.n for j in jobs] for jobs in handle.calls]
    if in_flight == 1:
        assert sizes == [[1], [2, 3, 4, 5, 6, 7]]
    else:
        assert sizes == [[1], [2], [3, 4, 5, 6, 7]]


def test_a_call_whose_requests_all_left_is_cancelled():
    """3 requests; their clients leave while the calls are out: the calls are cancelled in
    the replica (control: the mutation that never cancels fails this)."""
    gate = asyncio.Event()
    handle = _Handle([lambda jobs: [0] * len(jobs)] * 2, gate)

    async def main():
        runner = gm_serve._RemoteRunner(handle, _cfg())
        tasks = [
            asyncio.ensure_future(runner.run("m@1", _embed_job(torch.ones(1, 1, 2, 2))))
            for _ in range(3)
        ]
        await asyncio.sleep(0.01)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    # two calls went out (calls_in_flight 2); both are cancelled; the third never left
    assert [r.cancelled for r in handle.responses] == [True, True]
