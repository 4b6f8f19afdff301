"""Submit a command to any Ray cluster as a Ray job (Ray Jobs API over HTTP), follow its logs,
and return how it ended.

    from pipelines.submit import submit_job
    out = submit_job("http://HEAD:8265", "python -m pipelines.cli train --family made ...",
                     token_file="/path/to/auth_token")
    out.status  # "SUCCEEDED" | "FAILED" | "STOPPED"

The address is the head's dashboard / Jobs API URL (``http://HEAD:8265`` by default; the
local cluster of ``cluster/local_cluster.py`` prints its own), not the GCS address
(``HEAD:6379``).

Authentication. Ray 2.60 turns token authentication on by default for clusters it starts
locally, and KubeRay / the cluster launcher can turn it on (``RAY_AUTH_MODE=token``). HTTP clients
send the token as ``Authorization: Bearer <token>``; this module sets that header itself, so it
works whatever ``RAY_AUTH_MODE`` this process has. The token is taken from, in order:
``token=`` > ``token_file=`` > ``$RAY_AUTH_TOKEN`` (the token itself) > ``$RAY_AUTH_TOKEN_PATH``
(a file holding it) > ``~/.ray/auth_token`` (where ``ray.init`` / ``ray get-auth-token
--generate`` put one) > none. The last three are where Ray itself looks.

Runtime environment. By default the job ships this repository as its ``working_dir`` (with the
venv, git data, outputs and MLflow stores left out), so ``python -m pipelines.cli ...`` runs the
code you have. The cluster's Python must still have the dependencies: on the local cluster its
nodes run this very venv; on a real cluster the image must have ``genmodels`` installed (see
cluster/README.md), or add ``"pip": [...]`` to the runtime_env.

This module imports nothing from ``genmodels``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

# Left out of the uploaded working_dir (gitignore syntax, relative to it). Ray also honours
# the repository's .gitignore.
DEFAULT_EXCLUDES = [
    ".venv",
    ".git",
    "outputs",
    "mlruns",
    "mlartifacts",
    "ray_results",
    "*.db",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "*.png",
    "docs",
    "build",
    "dist",
]


class SubmitError(RuntimeError):
    """The job could not be submitted or followed; the message says why and what to do."""


@dataclasses.dataclass
class JobOutcome:
    job_id: str
    status: str  # SUCCEEDED | FAILED | STOPPED, or PENDING/RUNNING when not followed
    logs_tail: str
    message: str = ""
    timed_out: bool = False
    duration_s: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def repo_root() -> Path | None:
    """This repository's root, or None when pipelines/ is installed without its repository."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").exists() and (root / "pipelines").is_dir():
        return root
    return None


def default_runtime_env() -> dict:
    """``{"working_dir": <repo root>, "excludes": [...]}``; ``{}`` outside a repository (then
    the cluster's image must have genmodels installed)."""
    root = repo_root()
    if root is None:
        return {}
    return {"working_dir": str(root), "excludes": list(DEFAULT_EXCLUDES)}


def resolve_token(
    token: str | None = None, token_file: str | None = None
) -> tuple[str | None, str]:
    """(token or None, where it came from)."""
    if token:
        return token.strip(), "the token argument"
    if token_file:
        return _read_token_file(token_file, "the token file"), f"token file {token_file}"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    if os.environ.get(TOKEN_PATH_ENV):
        path = os.environ[TOKEN_PATH_ENV]
        return _read_token_file(path, f"${TOKEN_PATH_ENV}"), f"${TOKEN_PATH_ENV} ({path})"
    default = Path(os.path.expanduser(DEFAULT_TOKEN_FILE))
    if default.is_file():
        text = default.read_text().strip()
        if text:
            return text, f"{default} (Ray's default token file)"
    return None, "nowhere"


def _read_token_file(path: str, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise SubmitError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not text:
        raise SubmitError(f"{what} {path} is empty")
    return text


def _needs_token_message(address: str) -> str:
    return (
        f"the cluster at {address} requires a token (Ray token authentication is on): pass "
        f"--token-file FILE (token_file=...), or set {TOKEN_ENV} to the token or "
        f"{TOKEN_PATH_ENV} to a file holding it. For a cluster started by "
        "cluster/local_cluster.py the file is <state dir>/auth_token; on KubeRay it is the "
        "cluster's auth Secret."
    )


def _probe(address: str, headers: dict, token_source: str, timeout: float = 10.0) -> None:
    """GET /api/version with the headers, turning every failure into a clear SubmitError (and
    bounding the time: the SDK's own requests have no timeout)."""
    req = urllib.request.Request(f"{address}/api/version", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise SubmitError(_needs_token_message(address)) from None
        if e.code == 403:
            raise SubmitError(
                f"the cluster at {address} rejected the token from {token_source}: it is not "
                f"this cluster's token. Pass the right one with --token-file, {TOKEN_ENV} or "
                f"{TOKEN_PATH_ENV}."
            ) from None
        if e.code == 404:
            raise SubmitError(
                f"{address} answers HTTP but has no Ray Jobs API (/api/version: 404): give the "
                "Ray dashboard address of the head, e.g. http://HEAD:8265"
            ) from None
        raise SubmitError(
            f"the Ray Jobs API at {address} answered HTTP {e.code}: {e.reason}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SubmitError(
            f"cannot reach the Ray Jobs API at {address} ({reason}): is the cluster up, and is "
            "this its dashboard address (http://HEAD:8265), not the GCS address (HEAD:6379)?"
        ) from None
    except (ValueError, http.client.HTTPException):
        raise SubmitError(
            f"{address} did not answer like a Ray dashboard (no JSON at /api/version): give the "
            "Ray dashboard address of the head, e.g. http://HEAD:8265"
        ) from None


@contextlib.contextmanager
def _without_env(*names: str):
    """The Jobs SDK lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is
    given; an explicit address must win, so hide them while the client is built."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _normalise(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    if address.startswith("ray://"):
        raise SubmitError(
            f"{address} is a Ray Client address; the Jobs API needs the dashboard address "
            "(http://HEAD:8265)"
        )
    return address


def _client(address: str, headers: dict):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with _without_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        raise SubmitError(_needs_token_message(address)) from None
    except (ConnectionError, RuntimeError) as e:
        raise SubmitError(f"cannot use the Ray Jobs API at {address}: {e}") from None


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def submit_job(
    address: str,
    entrypoint: str,
    *,
    runtime_env: dict | None = None,
    token: str | None = None,
    token_file: str | None = None,
    follow: bool = True,
    timeout_s: float | None = None,
    log_stream: TextIO | None = sys.stdout,
    poll_s: float = 1.0,
    tail_lines: int = 200,
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
) -> JobOutcome:
    """Submit ``entrypoint`` (a shell command run on the head node) as a Ray job.

    ``runtime_env=None`` uses :func:`default_runtime_env` (this repository as the working dir);
    pass ``{}`` for none. With ``follow`` the job's logs are streamed to ``log_stream`` (None:
    not at all) until it ends, and the terminal status is returned; if it runs longer than
    ``timeout_s`` it is stopped and the outcome says ``timed_out``. Without ``follow`` it
    returns at once with the status the job has then. Raises :class:`SubmitError` with a
    message (not a traceback) when the cluster cannot be reached, wants a token, or refuses
    the submission.
    """
    import requests

    address = _normalise(address)
    tok, source = resolve_token(token, token_file)
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    _probe(address, headers, source)
    client = _client(address, headers)
    if runtime_env is None:
        runtime_env = default_runtime_env()

    t0 = time.monotonic()
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env or None,
            submission_id=submission_id,
            metadata=metadata,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
        )
    except (RuntimeError, ValueError, OSError, requests.RequestException) as e:
        raise SubmitError(f"the cluster at {address} refused the job: {e}") from None
    if log_stream is not None:
        print(f"[submit] job {job_id} submitted to {address}", file=log_stream, flush=True)

    def info():
        i = client.get_job_info(job_id)
        return str(i.status.value if hasattr(i.status, "value") else i.status), i.message or ""

    if not follow:
        status, message = info()
        return JobOutcome(job_id, status, "", message, duration_s=time.monotonic() - t0)

    seen = 0
    logs = ""
    timed_out = False
    status, message = "PENDING", ""
    try:
        while True:
            status, message = info()
            logs = client.get_job_logs(job_id)
            if log_stream is not None and len(logs) > seen:
                log_stream.write(logs[seen:])
                log_stream.flush()
            seen = max(seen, len(logs))
            if status in TERMINAL:
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                timed_out = True
                client.stop_job(job_id)
                stop_deadline = time.monotonic() + 30
                while status not in TERMINAL and time.monotonic() < stop_deadline:
                    time.sleep(poll_s)
                    status, message = info()
                logs = client.get_job_logs(job_id)
                break
            time.sleep(poll_s)
    except (RuntimeError, OSError, requests.RequestException) as e:
        raise SubmitError(
            f"lost contact with the cluster at {address} while following job {job_id} "
            f"(last status {status}): {e}"
        ) from None
    if log_stream is not None:
        note = f" after {timeout_s:.0f}s timeout" if timed_out else ""
        print(
            f"[submit] job {job_id}: {status}{note} {message}".rstrip(), file=log_stream, flush=True
        )
    return JobOutcome(
        job_id,
        status,
        _tail(logs, tail_lines),
        message,
        timed_out=timed_out,
        duration_s=time.monotonic() - t0,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.submit --address URL [--token-file F] -- COMMAND ...``"""
    p = argparse.ArgumentParser(description="Run a command as a Ray job and follow it.")
    p.add_argument("--address", required=True, help="dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--token-file", help="file holding the cluster's auth token")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    p.add_argument("--runtime-env-json", help="runtime_env as JSON (default: this repo)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command to run after --")
    try:
        out = submit_job(
            args.address,
            shlex.join(cmd),
            runtime_env=json.loads(args.runtime_env_json) if args.runtime_env_json else None,
            token_file=args.token_file,
            follow=not args.no_wait,
            timeout_s=args.timeout,
        )
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"job {out.job_id}: {out.status}")
    return 0 if out.status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


if __name__ == "__main__":
    sys.exit(main())
