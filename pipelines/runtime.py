"""How the command line runs Ray: quietly, pinned to its own cluster, bounded in time.

* ``init_ray`` starts (or joins) the one Ray a command uses, with Ray's own logs in its session's
  log directory instead of the console (``verbose=True`` shows them), and pins its address in
  ``RAY_ADDRESS`` — exported before the local Ray starts, so its raylet and every worker inherit
  it — so every process Ray or we spawn (Ray Train's helpers, Tune's trials, the State API)
  connects to *this* Ray even when another Ray runs on the machine.
* ``ProgressChannel`` carries one-line progress messages from Ray Train's rank-0 worker to the
  driver's console (worker output itself stays in the log files).
* ``run_bounded`` runs a blocking ``fit()`` while printing those lines, and gives up with
  ``RunTimeout`` when the run exceeds its time limit.
* ``check_port_free`` finds a port in use before anything starts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_STARTED: dict[str, Any] = {}  # what init_ray started (so shutdown_ray undoes only that)


class RunTimeout(RuntimeError):
    """A run exceeded its time limit (``--timeout``)."""


def ray_log_dir() -> str | None:
    """The log directory of the Ray session this process is connected to (``None`` if unknown)."""
    try:
        from ray._private import worker

        node = worker.global_worker.node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:
        return None


def quiet_logging(verbose: bool) -> None:
    """Driver-side Ray / Ray Data / MLflow loggers: errors (Ray) and warnings (MLflow) only
    unless ``verbose``; MLflow's download progress bars and Tune's status tables off too."""
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new engine prints tables anyway
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def init_ray(address: str | None = None, *, verbose: bool = False, **kw: Any) -> bool:
    """Start a local Ray (or connect to ``address`` / ``$RAY_ADDRESS``) unless one is up.

    Worker output goes to Ray's log files (``log_to_driver=verbose``); a local Ray is started
    with ``address="local"`` (never "whatever Ray runs on this machine") and its address is
    exported as ``RAY_ADDRESS`` for every process started afterwards. The dashboard stays on:
    Tune's trial clean-up needs the State API. Returns ``True`` if this call started or joined
    Ray (undo with ``shutdown_ray``).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    quiet_logging(verbose)
    level = logging.INFO if verbose else logging.ERROR  # e.g. no token-auth notice per start
    target = address or os.environ.get("RAY_ADDRESS")
    _STARTED["saved_env"] = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    if target:
        ray.init(address=target, log_to_driver=verbose, logging_level=level, **kw)
    else:
        # Choose the GCS port first so RAY_ADDRESS is exported *before* the raylet starts: Ray's
        # workers inherit the raylet's environment, not what the driver sets afterwards.
        port = free_port()
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
        kw.setdefault("include_dashboard", True)
        kw.setdefault("dashboard_port", 8265 if _bindable("127.0.0.1", 8265) else free_port())
        ray.init(address="local", log_to_driver=verbose, logging_level=level, **kw)
    quiet_logging(verbose)  # ray.init configures its loggers again
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    if not verbose:
        where = ray_log_dir()
        if where:
            print(f"[genmodels] Ray logs: {where} (--verbose shows them here)", flush=True)
    return True


def start_with_retry(
    start: Callable[[], T], on_failure: Callable[[], None], attempts: int = 2
) -> T:
    """``start()`` (a Ray start), once more after a raylet start-up time-out: Ray waits a fixed
    30 s for its raylet, too short on a 2-core machine loaded 15x over (measured). Any other
    error, or the last attempt's, is raised; ``on_failure`` cleans up after each failed try."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as e:
            on_failure()
            if attempt == attempts or "timed out during startup" not in str(e):
                raise
    raise AssertionError("unreachable")  # attempts >= 1 returns or raises above


def shutdown_ray() -> None:
    """Stop the Ray ``init_ray`` started and restore ``RAY_ADDRESS`` as it was."""
    import ray

    ray.shutdown()
    for key, value in _STARTED.pop("saved_env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_port_free(host: str, port: int) -> None:
    """Raise ``ValueError("port N is in use ...")`` when ``host:port`` cannot be bound."""
    if not 1 <= port <= 65535:
        raise ValueError(f"bad value {port} for --port (1..65535)")
    if not _bindable(host, port):
        raise ValueError(f"port {port} is in use on {host}: stop what holds it or pass --port N")


class ProgressChannel:
    """One-line progress messages from Ray workers to the driver's console.

    A Ray queue actor (no CPU); workers call ``send(line)`` (never blocks, never fails the run);
    the driver prints what arrives while it waits for ``fit()`` (see ``run_bounded``). Picklable,
    so it travels in a trainer's config.
    """

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self._queue = Queue(actor_options={"num_cpus": 0})

    def send(self, line: str) -> None:
        """Queue ``line`` for the driver's console (best effort)."""
        try:
            self._queue.put_nowait(line)
        except Exception:
            print(line, flush=True)

    def drain(self, wait_s: float = 0.0, out=None) -> int:
        """Print every queued line (waiting up to ``wait_s`` for the first); return how many."""
        from ray.util.queue import Empty

        out = out or sys.stdout
        printed = 0
        while True:
            try:
                line = self._queue.get(block=printed == 0 and wait_s > 0, timeout=wait_s or None)
            except Empty:
                return printed
            except Exception:  # the queue actor is gone (Ray shut down): nothing more to show
                return printed
            print(line, file=out, flush=True)
            printed += 1

    def close(self) -> None:
        """Stop the queue actor."""
        try:
            self._queue.shutdown(force=True)
        except Exception:
            pass


def run_bounded(
    fn: Callable[[], T],
    *,
    timeout_s: float | None,
    what: str,
    progress: ProgressChannel | None = None,
) -> T:
    """Run ``fn`` (a blocking ``fit()``) in a thread, printing ``progress`` lines meanwhile.

    Raises ``RunTimeout`` naming ``what`` when it runs past ``timeout_s`` seconds (``None`` or 0:
    no limit); the thread is abandoned (the command then exits, and Ray with it). Exceptions of
    ``fn`` are re-raised here.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"genmodels-{what}", daemon=True)
    start = time.monotonic()
    thread.start()
    while thread.is_alive():
        if progress is not None:
            progress.drain(wait_s=1.0)
        thread.join(0.0 if progress is not None else 1.0)
        if timeout_s and time.monotonic() - start > timeout_s and thread.is_alive():
            raise RunTimeout(
                f"{what} did not finish within --timeout {timeout_s:g} s; stopped "
                "(raise --timeout, or 0 for no limit)"
            )
    if progress is not None:
        progress.drain()
    if "error" in box:
        raise box["error"]
    return box["result"]
