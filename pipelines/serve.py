"""Ray Serve application: list, sample and score registered models over HTTP (JSON in and out).

One deployment, ``GenModelsServer``, with a FastAPI ingress::

    GET  /healthz                        {"status": "ok"} (liveness; open)
    GET  /readyz                         the registry's state, what is cached (open; 503 when
                                         the registry is down and nothing is cached)
    GET  /v1/models                      registered models, their aliases and aliased versions
    POST /v1/models/{name}/sample        {"n", "seed"?, "alias"="champion" | "version"?}
    POST /v1/models/{name}/score         {"x", "seed"?, "alias" | "version"?}  (log p(x) in nats)
    POST /v1/models/{name}/{capability}  every other use the version has: log_prob (= score),
                                         embed, impute, classify, translate, predict

Capabilities (``genmodels.CAPABILITIES``) are mounted generically: the table says which method
serves each, its request fields (the method's keyword arguments), whether requests may be pooled
into one batch, whether the result is random (then ``seed`` reproduces it) and the most rows per
request. A version's ``capabilities`` tag (written at registration) says what it offers, so a
call it lacks is a 422 naming the capability, decided before any model is loaded. A
``condition`` (``{"label": 3}`` — one value, or one per row — or ``{"caption": "..."}``) is a
field of ``sample`` and ``score``; it needs the matching ``condition:<key>`` capability.

Design:

* Every endpoint but ``/healthz`` and ``/readyz`` needs the API key when one is configured
  (``Authorization: Bearer <key>`` or ``X-API-Key``; ``api_key_file``, ``$GENMODELS_API_KEY``
  or ``build_app(api_key=...)``; compared as SHA-256 digests in constant time) → else 401.
  Without a key the API is open (local use); ``require_api_key`` (the cluster configs) refuses
  to start without one. ``/docs`` and ``/openapi.json`` follow the ``docs`` flag.
* A body over ``max_body_bytes`` is a 413 before it is parsed (Content-Length first; a chunked
  body is cut off as soon as it passes the limit); bodies are decoded one at a time in a thread.
* Two deployments: the ingress ``GenModelsServer`` (FastAPI; keys, bodies, validation, registry
  lookups; light, no model) and ``ModelWorker`` (``num_replicas`` replicas holding the models).
  The ingress calls a worker through a Serve handle and retries the call when that replica dies
  or is unavailable (``call_retries``, inside the request deadline): Serve itself does not retry
  a request in flight, so with one deployment a killed replica failed its requests. Requests
  that queue at the ingress while its calls are out go as one handle call (at most
  ``calls_in_flight`` per version): a handle call costs more CPU than a small model call.
* A request names a model (``<family>-<dataset>``) and an alias or version. The alias is resolved
  to a version through the registry (on its own threads, under ``registry_timeout_s``; cached
  ``alias_ttl_s`` seconds, then served stale while one background call revalidates it, for up to
  ``max_stale_s``: a registry outage does not stop versions already resolved). The ingress
  routes the call by ``"name@version"`` (``@serve.multiplexed``: a replica that holds the model
  is preferred; each keeps ``max_models``, LRU; versions are immutable, so never stale).
* Inputs are checked against the version's registry tags (``input_shape``, ``levels``,
  ``likelihood``) before the model is touched: a bad request costs no model load.
* Pooling without waiting (``ModelRunner``): per model, one call at a time in a thread (never on
  the event loop: families keep state such as MADE's current mask); when the model is free, the
  oldest job and every queued job of the same pool (same method and fixed arguments, up to
  ``max_batch`` rows) run as one call, concatenated and split. A lone request never waits for a
  batch to fill (``batch_wait_s`` = 0); under load each call takes what queued behind the last.
  Pooled: ``score``, ``embed``, ``classify``, ``translate`` and unseeded ``sample`` (per
  condition key). A seeded random call (an IWAE/AIS score, a draw) runs alone, so it equals the
  Python call with ``torch.Generator().manual_seed(seed)`` whatever else is in flight.
* Each request has a deadline (``request_timeout_s``) → 504. A request that ends early (the
  deadline; the client disconnecting, which Serve turns into a cancellation) cancels its work:
  a queued call is dropped, pooled unseeded samples stop between calls of ``sample_chunk`` rows;
  a model load in progress is kept (shared, shielded) for the next request.
* Errors are ``{"error": {"status", "message"}}``: 400 malformed JSON, 422 invalid body or input
  (including a ``ValueError`` the model raises on its input, and a capability the version lacks),
  404 unknown model/alias/version, 501 family not installed here, 503 registry unreachable,
  504 deadline, 500 a logged bug; 401 and 413 above. A 503 or 500 names no path, URI or SQL
  (the details are logged by the replica).
  The body is parsed here (not by FastAPI) so that bad JSON is a 400; the pydantic request models
  still document it in the OpenAPI schema (``/docs``).
* Serve's per-request access log costs throughput (~3× here); turn it off with
  ``serve.run(..., logging_config={"enable_access_log": False})`` or the same key in a config.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import gc
import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

import genmodels
from pipelines import registry

logger = logging.getLogger("ray.serve")


# ----------------------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Ref(_Strict):
    alias: str = Field(registry.CHAMPION, min_length=1, max_length=256, pattern=r"^[\w.\-]+$")
    version: int | None = Field(
        None, ge=1, lt=2**63, description="a version number; overrides alias"
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the torch generator")


_CONDITION = Field(
    None,
    description='what a conditional model is asked for: {"label": 3}, {"label": [1, 2]} (one per '
    'row) or {"caption": "3 left of 7"}; needs the condition:<key> capability',
)


class SampleRequest(_Ref):
    n: int = Field(ge=1, description="number of samples, at most the model's sample limit")
    condition: dict[str, Any] | None = _CONDITION


class ScoreRequest(_Ref):
    x: list[Any] = Field(description="(B, *input_shape) or (B, D) nested list of integers")
    condition: dict[str, Any] | None = _CONDITION


# The request fields of the generic capability endpoints, by name (= the method's keyword).
_FIELDS: dict[str, tuple[Any, Any]] = {
    "x": (
        list[Any],
        Field(description="(B, *input_shape) or (B, D) nested list in the data space"),
    ),
    "mask": (list[Any], Field(description="x's shape; 1 = observed, 0 = missing")),
    "num_samples": (int, Field(1, ge=1, description="imputations per example")),
    "condition": (dict[str, Any] | None, _CONDITION),
    "direction": (str, Field(min_length=1, max_length=64, description="the target domain")),
    "frames": (list[Any], Field(description="(B, T, *frame_shape) nested list in the data space")),
    "steps": (int, Field(1, ge=1, description="how many frames to roll out")),
}
_BY_ENDPOINT = {c.endpoint: c for c in genmodels.CAPABILITIES.values() if c.endpoint}
_REQUESTS: dict[str, type[BaseModel]] = {
    c.name: create_model(
        "".join(w.title() for w in c.name.split("_")) + "Request",
        __base__=_Ref,
        __doc__=c.summary,
        **{f: _FIELDS[f] for f in c.fields},
    )
    for c in _BY_ENDPOINT.values()
    if c.name not in ("sample", "log_prob")
}


class SampleResponse(BaseModel):
    model: str
    version: int
    samples: list[Any]
    shape: list[int]


class ScoreResponse(BaseModel):
    model: str
    version: int
    log_prob: list[float]
    bits_per_dim: list[float]
    method: str
    stderr: list[float] | None


class ServeConfig(BaseModel):
    """The deployment's settings (strings are coerced: ``serve run`` passes strings)."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str
    max_batch: int = Field(256, ge=1, description="most rows per score request and model call")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline of a request (504)")
    sample_limits: dict[str, int] = Field({}, description="per-family cap on n")
    max_models: int = Field(8, ge=1, description="models cached per replica (LRU)")
    batch_wait_s: float = Field(
        0.0,
        ge=0,
        description="how long a lone request to an idle model waits for others to pool with "
        "(0: none; under load, calls pool whatever queued behind the previous call anyway)",
    )
    sample_chunk: int = Field(
        64,
        ge=1,
        description="rows per model call of pooled unseeded samples (cancellation "
        "is checked between calls)",
    )
    call_retries: int = Field(
        8, ge=0, le=100, description="retries of a model call whose replica died (ingress)"
    )
    calls_in_flight: int = Field(
        2,
        ge=1,
        le=1024,
        description="batches of requests per version an ingress replica has out to the model "
        "replicas at once (build_app: num_replicas + 1)",
    )
    alias_ttl_s: float = Field(10.0, ge=0, description="how long alias→version is cached")
    max_num_samples: int = Field(16, ge=1, description="most imputations per example (impute)")
    max_steps: int = Field(10, ge=1, description="most frames rolled out per request (predict)")
    max_body_bytes: int = Field(
        4 * 2**20, ge=1024, description="largest request body (413 above it, before parsing)"
    )
    max_inflight_body_bytes: int = Field(
        64 * 2**20,
        ge=1024,
        description="request body bytes a replica holds at once (503 above it)",
    )
    api_key_file: str | None = Field(
        None, description="file on the replicas' nodes holding the API key(s), one per line"
    )
    api_key_sha256: str | None = Field(
        None, description="SHA-256 (hex) of the API key (build_app(api_key=...) sets it)"
    )
    require_api_key: bool = Field(False, description="refuse to start without an API key")
    docs: bool = Field(True, description="serve /docs and /openapi.json (behind the key)")
    registry_timeout_s: float = Field(
        15.0,  # a cold sqlite store under load took 7 s for one listing (measured); an outage
        gt=0,  # still shows in 15 s, not the 249 s of MLflow's own retries
        description="deadline of one registry call (then: stale answer or 503)",
    )
    max_stale_s: float = Field(
        600.0, ge=0, description="how long a cached alias→version serves while the registry fails"
    )


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"status": status, "message": message[:2000]}}
    return JSONResponse(body, status_code=status, headers=headers)


def _docs(model: type[BaseModel] | None = None, body: type[BaseModel] | None = None) -> dict:
    doc: dict[str, Any] = {"responses": {200: {"model": model}} if model else {}}
    if body is not None:
        schema = body.model_json_schema()
        doc["openapi_extra"] = {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        }
    return doc


class _BodyBudget:
    """The bytes of request bodies a replica holds at once (read, being decoded, or decoded and
    in use until the request ends): past ``total``, a request is refused with a 503."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0

    def take(self, request: Request, n: int) -> None:
        if self.used + n > self.total:
            raise ApiError(503, "too many large requests in flight; retry shortly")
        self.used += n
        request.state.body_bytes = getattr(request.state, "body_bytes", 0) + n

    def release(self, request: Request) -> int:
        """Give back the request's bytes; returns how many."""
        n = getattr(request.state, "body_bytes", 0)
        self.used -= n
        request.state.body_bytes = 0
        return n


_TRIM_AFTER_BYTES = 2**20
_trim_state = {"last": 0.0, "pending": False}


def _trim_soon() -> None:
    """Hand freed heap memory back to the OS after a large body: collect the cycles that keep
    refused bodies alive (an exception's traceback holds the frames that hold the decoded body),
    then glibc's ``malloc_trim``, which returns the freed pages glibc would keep. A burst of 16
    bodies of 4 MiB left the ingress at 1.83x its baseline memory 10 s later without either,
    1.18x with the trim alone (``benchmarks/serve_load.py``, fault e). At most one a second, in
    a thread; the trim is a no-op where the C library has no ``malloc_trim``."""
    if _trim_state["pending"]:
        return
    _trim_state["pending"] = True
    delay = max(0.0, 1.0 - (time.monotonic() - _trim_state["last"]))

    def trim() -> None:
        _trim_state["last"], _trim_state["pending"] = time.monotonic(), False
        gc.collect()  # a refused body lives on in its exception's traceback cycle until here
        _malloc_trim()

    asyncio.get_running_loop().call_later(
        delay, lambda: asyncio.ensure_future(asyncio.to_thread(trim))
    )


def _malloc_trim() -> None:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def _read_body(request: Request, limit: int, budget: _BodyBudget) -> bytes:
    """The raw body, at most ``limit`` bytes: a larger Content-Length is refused before a byte is
    read, and a body without one (chunked) is refused as soon as it passes the limit. Its bytes
    are taken from ``budget`` as they arrive (the declared size at once)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "malformed Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit}")
        budget.take(request, int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        if declared is None:
            budget.take(request, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, model: type[BaseModel]) -> Any:
    """JSON → the request model (run in a worker thread: a few MB of JSON takes tens of ms)."""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "malformed JSON body: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"malformed JSON body: {e}") from None
    try:
        return model.model_validate(obj)
    except RecursionError:
        raise ApiError(422, "invalid request: nested too deeply") from None
    except ValidationError as e:
        msgs = [f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()]
        raise ApiError(422, "invalid request: " + "; ".join(msgs)) from None


def _key_digests(cfg: ServeConfig) -> list[bytes]:
    """The SHA-256 digests of the accepted API keys: ``api_key_file`` (one key per line, so a
    key can be rotated), ``api_key_sha256``, and ``$GENMODELS_API_KEY`` of the replica."""
    keys: list[str] = []
    if cfg.api_key_file:
        text = Path(cfg.api_key_file).expanduser().read_text()
        keys += [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ValueError(f"api_key_file {cfg.api_key_file} holds no key")
    if os.environ.get(API_KEY_ENV):
        keys.append(os.environ[API_KEY_ENV].strip())
    digests = [hashlib.sha256(k.encode()).digest() for k in keys]
    if cfg.api_key_sha256:
        digests.append(bytes.fromhex(cfg.api_key_sha256))
    if cfg.require_api_key and not digests:
        raise ValueError(
            f"require_api_key is set but no key is configured: set api_key_file or ${API_KEY_ENV}"
        )
    return digests


API_KEY_ENV = "GENMODELS_API_KEY"


# ------------------------------------------------------------------------------ model access
@dataclass(frozen=True)
class _Version:
    """A resolved registry version and what its tags (set by ``register_model``) say about it."""

    name: str
    version: str
    tags: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def family(self) -> str:
        return self.tags.get("family") or self.name.split("-", 1)[0]

    @property
    def spec(self) -> tuple[tuple[int, ...] | None, int]:
        """(input_shape or None when untagged, levels)."""
        shape = self.tags.get("input_shape")
        return (tuple(json.loads(shape)) if shape else None), int(self.tags.get("levels", 2))


def _data_space(levels: int) -> str:
    return "binary" if levels == 2 else f"discrete 0..{levels - 1}"


class _Loaded:
    """A model and the lock that makes its calls one at a time (run in a worker thread)."""

    def __init__(self, model: genmodels.GenerativeModel) -> None:
        self.model, self.lock = model, threading.Lock()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``model.method(*args, **kwargs)``; a ``ValueError`` (the model refusing its input,
        e.g. a condition it does not accept) becomes a 422."""
        with self.lock, torch.no_grad():
            try:
                return getattr(self.model, method)(*args, **kwargs)
            except ValueError as e:
                raise ApiError(422, str(e)) from None


@dataclass
class _Job:
    """One request's model call, as the ingress hands it to a model runner (in this process, or
    a ``ModelWorker`` replica through a handle).

    ``rows`` holds the per-row arguments (``x``; a per-row ``condition``), concatenated when jobs
    are pooled; ``fixed`` the other keyword arguments, equal across a pool; ``n`` the rows (the
    samples of ``sample``). Jobs with the same non-None ``pool`` key may share one model call; a
    job with a ``seed`` on a random capability gets ``pool=None`` from the ingress, so that its
    result is what ``model.<method>(..., generator=Generator().manual_seed(seed))`` gives in
    Python, whatever else is in flight."""

    method: str
    n: int
    rows: dict[str, Any]
    fixed: dict[str, Any]
    seed: int | None = None
    pool: Any = None


@dataclass(frozen=True)
class _Failure:
    """An error a ``ModelWorker`` returns (not raises) to the ingress: the status and the
    client-safe message of ``_failure``."""

    status: int
    message: str


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _to_batch(
    x: list, shape: tuple[int, ...], levels: int, max_batch: int, what: str = "x"
) -> torch.Tensor:
    """Validate ``x`` against the version's shape and data space; a float tensor (B, *shape)."""
    if len(x) > max_batch:
        raise ApiError(422, f"batch of {len(x)} examples is over the limit of {max_batch}")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(422, f"{what} must be a rectangular nested list of numbers") from None
    if a.dtype.kind not in "iuf":
        raise ApiError(422, f"{what} must be a rectangular nested list of numbers")
    d = math.prod(shape)
    if a.ndim == 0 or len(a) == 0:
        raise ApiError(422, f"{what} must hold at least one example")
    if a.shape[1:] != shape and a.shape[1:] != (d,):
        raise ApiError(
            422,
            f"{what} must have shape (B, {', '.join(map(str, shape))}) or (B, {d}); got {a.shape}",
        )
    if not np.isfinite(a).all():
        raise ApiError(422, f"{what} contains NaN or infinite values")
    if ((a < 0) | (a > levels - 1) | (a != np.round(a))).any():
        space = "0 (missing) or 1 (observed)" if what == "mask" else _data_space(levels)
        raise ApiError(422, f"{what} values must be integers in 0..{levels - 1} ({space})")
    return torch.from_numpy(a.astype(np.float32)).reshape(len(a), *shape)


def _condition(cond: dict[str, Any] | None, rows: int) -> dict[str, Any] | None:
    """The wire form of a condition → the model's: an int or one int per row → a LongTensor
    (rows,); a string or one string per row → a list of rows strings."""
    if not cond:
        return None
    out: dict[str, Any] = {}
    for key, value in cond.items():
        values = value if isinstance(value, list) else [value] * rows
        if len(values) != rows:
            raise ApiError(
                422, f"condition.{key}: give one value or one per row ({rows}), got {len(values)}"
            )
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if any(abs(v) >= 2**63 for v in values):
                raise ApiError(422, f"condition.{key}: integer out of range")
            out[key] = torch.tensor(values, dtype=torch.long)
        elif all(isinstance(v, str) and len(v) <= 1024 for v in values):
            out[key] = list(values)
        else:
            raise ApiError(
                422,
                f"condition.{key} must be an integer or a string (or a list of them, one per row)",
            )
    return out


def _split(result: Any, sizes: list[int]) -> list[Any]:
    """Split a pooled result along the batch axis: a tensor, or a dataclass of per-row tensors."""
    if isinstance(result, torch.Tensor):
        return list(result.split(sizes))
    parts = {
        f.name: getattr(result, f.name).split(sizes)
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    }
    return [
        dataclasses.replace(result, **{k: v[i] for k, v in parts.items()})
        for i in range(len(sizes))
    ]


def _to_json(value: Any, integral: bool = False) -> Any:
    """A tensor as nested lists (ints when ``integral``; non-finite floats as null)."""
    a = value.detach().cpu().numpy()
    if integral:
        return a.astype(np.int64).tolist()
    a = a.astype(np.float64)
    if np.isfinite(a).all():
        return a.tolist()
    return np.where(np.isfinite(a), a, None).tolist()


def _result_fields(result: Any, cap: genmodels.Capability) -> dict[str, Any]:
    """A capability's result as response fields (a tensor under ``cap.returns``; a dataclass as
    its fields; samples in the data space as integers)."""
    if isinstance(result, torch.Tensor):
        return {cap.returns: _to_json(result, integral=cap.returns == "samples")}
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor):
            value = _to_json(value, integral=f.name == "samples")
        out[f.name] = value
    return out


def _to_frames(frames: list, levels: int, max_batch: int) -> torch.Tensor:
    """Validate a batch of frame sequences (B, T, ...) for the data space; the family checks
    the frame shape."""
    if len(frames) > max_batch:
        raise ApiError(422, f"batch of {len(frames)} sequences is over the limit of {max_batch}")
    try:
        a = np.asarray(frames)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(422, "frames must be a rectangular nested list of numbers") from None
    if a.dtype.kind not in "iuf" or a.ndim < 3 or len(a) == 0:
        raise ApiError(422, "frames must be a non-empty (B, T, ...) nested list of numbers")
    if not np.isfinite(a).all() or ((a < 0) | (a > levels - 1) | (a != np.round(a))).any():
        raise ApiError(422, f"frames values must be integers in 0..{levels - 1}")
    return torch.from_numpy(a.astype(np.float32))


_METHOD_CAPABILITY = {c.method: c.name for c in genmodels.CAPABILITIES.values() if c.endpoint}


def _concat(parts: list[Any]) -> Any:
    """Per-row arguments of pooled jobs joined along the batch axis (tensors, lists, dicts)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, list):
        return [v for p in parts for v in p]
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    raise TypeError(f"cannot pool a {type(first).__name__} argument")


def _rows_slice(rows: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of per-row arguments (tensors, lists, dicts of them)."""
    if isinstance(rows, dict):
        return {k: _rows_slice(v, a, b) for k, v in rows.items()}
    return rows[a:b]


def _failure(exc: BaseException) -> tuple[int, str]:
    """(status, message) of an exception, the message safe to send: it names no file, URI or
    SQL (the details of a registry failure or a bug go to the replica's log)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, genmodels.NoLikelihoodError):
        return 422, str(exc)
    if isinstance(exc, registry.NotFoundError):
        return 404, str(exc)
    if isinstance(exc, registry.RegistryError):
        logger.warning("genmodels serve: registry error: %s", exc)
        return 503, "model registry unavailable; try again later"
    logger.error("genmodels serve: unexpected error", exc_info=exc)
    return 500, "internal error (logged on the server)"


@dataclass
class _Entry:
    job: _Job
    model: _Loaded
    future: asyncio.Future


class _Queue:
    """One model's waiting jobs and the task that runs them."""

    def __init__(self) -> None:
        self.pending: list[_Entry] = []
        self.task: asyncio.Task | None = None


# ---------------------------------------------------------------------------------- service
RUNNERS: weakref.WeakSet = weakref.WeakSet()
"""This process's ``ModelRunner``s (what a replica serves: tests, debugging)."""


class ModelRunner:
    """Runs jobs on models loaded in this process: continuous batching without a wait.

    Each model has a queue and one task that runs its jobs, one model call at a time (in a
    thread: never on the event loop). When the model is free the task takes the oldest job and
    every waiting job of the same pool (up to ``max_batch`` rows) into one call: a lone request
    runs at once (no ``batch_wait_s`` unless configured), and under load each call takes all
    that queued behind the previous one. A job whose request was cancelled (the client left, the
    deadline passed) is dropped before it runs; pooled random samples without a seed run in calls
    of at most ``sample_chunk`` rows, and the rows of a cancelled request are not drawn."""

    def __init__(self, cfg: ServeConfig, load: Callable[[str], Awaitable[_Loaded]]) -> None:
        self.cfg, self._load = cfg, load
        self._queues: dict[str, _Queue] = {}
        RUNNERS.add(self)

    def served(self) -> list[str]:
        """The versions (``name@version``) this runner has run jobs for."""
        return sorted(self._queues)

    async def spec(self, key: str) -> tuple[tuple[int, ...], int, str]:
        """(input shape, levels, likelihood) of a version (untagged versions: load it)."""
        m = (await self._load(key)).model
        return m.input_shape, m.levels, m.likelihood

    async def run(self, key: str, job: _Job) -> Any:
        model = await self._load(key)
        q = self._queues.setdefault(key, _Queue())
        future = asyncio.get_running_loop().create_future()
        q.pending.append(_Entry(job, model, future))
        if q.task is None or q.task.done():
            q.task = asyncio.ensure_future(self._drain(q))
            q.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await future  # a cancellation here cancels the future: the job is dropped

    async def _drain(self, q: _Queue) -> None:
        while q.pending:
            if self.cfg.batch_wait_s > 0 and len(q.pending) == 1:
                await asyncio.sleep(self.cfg.batch_wait_s)
            batch = self._take(q)
            if batch:
                try:
                    await self._execute(batch)
                except Exception as e:  # a bug in the pooling itself: fail the batch, go on
                    for entry in batch:
                        if not entry.future.done():
                            entry.future.set_exception(e)

    def _take(self, q: _Queue) -> list[_Entry]:
        q.pending = [e for e in q.pending if not e.future.done()]
        if not q.pending:
            return []
        first = q.pending[0]
        batch, rows = [first], first.job.n
        if first.job.pool is not None:
            for e in q.pending[1:]:
                if e.job.pool == first.job.pool and rows + e.job.n <= self.cfg.max_batch:
                    batch.append(e)
                    rows += e.job.n
        taken = {id(e) for e in batch}
        q.pending = [e for e in q.pending if id(e) not in taken]
        return batch

    async def _execute(self, batch: list[_Entry]) -> None:
        first = batch[0].job
        if first.method != "sample" or first.seed is not None:
            await self._call([(e, 0, e.job.n) for e in batch])
            return
        # Unseeded samples: calls of at most sample_chunk rows, so that a cancelled request's
        # rows are not drawn. (A seeded one runs whole, as in Python.)
        pieces: list[tuple[_Entry, int, int]] = []
        for e in batch:
            for a in range(0, e.job.n, self.cfg.sample_chunk):
                pieces.append((e, a, min(e.job.n, a + self.cfg.sample_chunk)))
        done: dict[int, list[torch.Tensor]] = {id(e): [] for e in batch}
        call: list[tuple[_Entry, int, int]] = []
        rows = 0
        for e, a, b in pieces:
            if call and rows + b - a > self.cfg.sample_chunk:
                await self._call(call, done)
                call, rows = [], 0
            call.append((e, a, b))
            rows += b - a
        await self._call(call, done)

    async def _call(
        self,
        pieces: list[tuple[_Entry, int, int]],
        done: dict[int, list[torch.Tensor]] | None = None,
    ) -> None:
        """One model call over ``pieces`` (entry, first row, end row) of live entries; each
        entry's result is set when its last piece is done (``done`` collects partial rows)."""
        pieces = [p for p in pieces if not p[0].future.done()]
        if not pieces:
            return
        first = pieces[0][0]
        job = first.job
        kwargs: dict[str, Any] = dict(job.fixed)
        if job.rows:
            parts = [_rows_slice(e.job.rows, a, b) for e, a, b in pieces]
            kwargs.update(_concat(parts))
        if genmodels.CAPABILITIES[_METHOD_CAPABILITY[job.method]].seeded:
            kwargs["generator"] = _generator(job.seed)
        n = sum(b - a for _, a, b in pieces)
        args: tuple[Any, ...] = ()
        if job.method == "sample":
            args = (n,)
        elif "x" in kwargs:
            args = (kwargs.pop("x"),)
        try:
            result = await asyncio.to_thread(first.model.call, job.method, *args, **kwargs)
            split = [result] if len(pieces) == 1 else _split(result, [b - a for _, a, b in pieces])
        except Exception as e:
            for entry, _, _ in pieces:
                if not entry.future.done():
                    entry.future.set_exception(e)
            return
        for (entry, _, b), part in zip(pieces, split):
            if entry.future.done():
                continue
            if done is None:
                entry.future.set_result(part)
                continue
            done[id(entry)].append(part)
            if b == entry.job.n:
                entry.future.set_result(torch.cat(done.pop(id(entry))))


class _LruLoader:
    """``name@version`` → loaded model, at most ``size`` per process (the in-process stand-in
    for ``@serve.multiplexed``); one load per key at a time (``_shared``)."""

    def __init__(self, load: Callable[[str], Awaitable[_Loaded]], size: int) -> None:
        self._load, self._size = _shared(load), size
        self._models: collections.OrderedDict[str, _Loaded] = collections.OrderedDict()

    async def __call__(self, key: str) -> _Loaded:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = await self._load(key)
        self._models[key] = model
        while len(self._models) > self._size:
            self._models.popitem(last=False)
        return model


def _shared(load: Callable[[str], Awaitable[_Loaded]]) -> Callable[[str], Awaitable[_Loaded]]:
    """``load`` with one task per key in flight, shared by its callers and shielded from their
    cancellation: a request that gives up (deadline, client gone) does not waste a load that
    the next request for the version will want."""
    loading: dict[str, asyncio.Future] = {}

    async def shared(key: str) -> _Loaded:
        task = loading.get(key)
        if task is None:
            task = loading[key] = asyncio.ensure_future(load(key))
            task.add_done_callback(
                lambda t: loading.pop(key, None) if loading.get(key) is t else None
            )
        return await asyncio.shield(task)

    return shared


async def _load_version(uri: str, key: str) -> _Loaded:
    name, _, version = key.rpartition("@")
    model, _ = await asyncio.to_thread(registry.load_version, uri, name, version)
    return _Loaded(model)


def _bound_mlflow_retries(cfg: ServeConfig) -> None:
    """In a replica: MLflow's HTTP client retries 7 times with backoff by default (a lookup of
    a dead tracking server gave up after 249 s, holding a thread); bound it unless configured."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(cfg.registry_timeout_s) + 1))


def _registry_client_env(cfg: ServeConfig) -> None:
    """This process's MLflow URIs for registry calls and model downloads."""
    # ``models:/`` downloads resolve the model and its run through the process-wide URIs, not
    # the tracking URI passed to them (otherwise: "not found", and a stray ./mlflow.db).
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)


class _RegistryState:
    """What the replica last saw of the registry (``/readyz``)."""

    def __init__(self) -> None:
        self.up: bool | None = None  # None: not asked yet
        self.probing = False
        self.since = self.checked = time.monotonic()

    def mark(self, up: bool) -> None:
        now = time.monotonic()
        if up != self.up:
            self.up, self.since = up, now
        self.checked = now


class _RemoteRunner:
    """The ingress's way to the ``ModelWorker`` replicas (a ``ModelRunner`` each).

    Jobs for one version queue here and go to the replicas in batches: one handle call carries
    every job that queued while earlier calls were out (up to ``max_batch`` rows), at most
    ``calls_in_flight`` calls per version at a time (build_app: the model replicas + 1), routed
    by version (``multiplexed_model_id``: a replica that holds the model is preferred). A handle
    call costs the ingress and the replica far more CPU than a small model call (measured in
    ``benchmarks/serve_load.py``), so under load the hop is paid once per batch, not per request;
    a lone request is sent at once. The replica runs a batch's jobs through its ``ModelRunner``
    (which pools them into model calls) and answers each job with its result or ``_Failure``.

    A call whose replica dies or is unavailable is sent again (Serve does not retry a call in
    flight: ray#52365), at most ``call_retries`` times with a growing pause (50 ms to 1 s), all
    inside the requests' deadline. Every job may be repeated: scores and seeded draws give the
    same answer; an unseeded draw gives another. A cancelled request (client gone, deadline)
    leaves the queue; a call whose requests were all cancelled is cancelled in the replica."""

    def __init__(self, handle: Any, cfg: ServeConfig) -> None:
        self.handle, self.cfg = handle, cfg
        self._queues: dict[str, list[tuple[_Job, asyncio.Future]]] = {}
        self._inflight: dict[str, int] = {}

    async def spec(self, key: str) -> tuple[tuple[int, ...], int, str]:
        out = await self._call("spec", key, (), [])
        if isinstance(out, _Failure):
            raise ApiError(out.status, out.message)
        return out

    async def run(self, key: str, job: _Job) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((job, future))
        self._pump(key)
        return await future  # a cancellation cancels the future: the job leaves the queue

    def _pump(self, key: str) -> None:
        q = self._queues.get(key, [])
        while self._inflight.get(key, 0) < self.cfg.calls_in_flight:
            q[:] = [(j, f) for j, f in q if not f.done()]
            if not q:
                return
            batch = [q.pop(0)]
            rows = batch[0][0].n
            while q and rows + q[0][0].n <= self.cfg.max_batch:  # q holds live jobs only
                batch.append(q.pop(0))
                rows += batch[-1][0].n
            self._inflight[key] = self._inflight.get(key, 0) + 1
            task = asyncio.ensure_future(self._send(key, batch))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _send(self, key: str, batch: list[tuple[_Job, asyncio.Future]]) -> None:
        futures = [f for _, f in batch]
        try:
            outs = await self._call("run_many", key, ([j for j, _ in batch],), futures)
            if outs is None:
                return  # every request gave up
            for future, out in zip(futures, outs):
                if future.done():
                    continue
                if isinstance(out, _Failure):
                    future.set_exception(ApiError(out.status, out.message))
                else:
                    future.set_result(out)
        except Exception as e:
            for future in futures:
                if not future.done():
                    future.set_exception(e)
        finally:
            self._inflight[key] -= 1
            self._pump(key)

    async def _call(self, method: str, key: str, args: tuple, futures: list[asyncio.Future]) -> Any:
        """``method(key, *args)`` on a replica, retried on a lost replica; None when every one
        of ``futures`` (the requests waiting for it) was cancelled first."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        pause = 0.05
        for attempt in range(self.cfg.call_retries + 1):
            handle = self.handle.options(multiplexed_model_id=key)
            response = getattr(handle, method).remote(key, *args)
            answer = asyncio.ensure_future(_awaited(response))
            waiting = {answer}
            gone = None
            if futures:
                gone = asyncio.ensure_future(asyncio.wait(futures))
                waiting.add(gone)
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                response.cancel()
                answer.cancel()
                raise
            finally:
                if gone is not None:
                    gone.cancel()
            if not answer.done():  # every request was cancelled: cancel the call
                response.cancel()
                answer.cancel()
                return None
            try:
                return answer.result()
            except (RayActorError, ActorUnavailableError) as e:
                if attempt == self.cfg.call_retries:
                    logger.warning("genmodels serve: %s: no model replica answered: %s", key, e)
                    raise ApiError(503, "no model replica available; try again shortly") from None
                logger.warning(
                    "genmodels serve: %s: model replica lost (%s); retry %d",
                    key,
                    type(e).__name__,
                    attempt + 1,
                )
                await asyncio.sleep(pause)
                pause = min(1.0, 2 * pause)
        raise AssertionError("unreachable")


async def _awaited(response: Any) -> Any:
    return await response


class GenModelsService:
    """Everything the HTTP API does, without Ray: ``GenModelsServer`` (the Serve ingress) is
    this class with its model calls sent to ``ModelWorker`` replicas, and
    ``make_api(GenModelsService(cfg))`` is the same API as a plain FastAPI app whose models run
    in this process (tests)."""

    def __init__(self, cfg: ServeConfig, runner: Any = None) -> None:
        self.cfg, self.uri = cfg, cfg.tracking_uri
        self._keys = _key_digests(cfg)
        self._cache: dict[Any, tuple[float, Any]] = {}  # registry answers: key → (time, value)
        self._refreshing: set[Any] = set()
        self._registry_state = _RegistryState()
        # Registry calls run on their own few threads under a deadline: a hung registry holds
        # at most these threads, never the event loop or the model threads.
        self._registry_pool = concurrent.futures.ThreadPoolExecutor(
            4, thread_name_prefix="genmodels-registry"
        )
        # One body decoded at a time: the JSON decoder holds the GIL for the whole body (a few
        # MB: tens to hundreds of ms), so a second one would only add its objects to memory.
        self._parse_slots = asyncio.Semaphore(1)
        self._bodies = _BodyBudget(cfg.max_inflight_body_bytes)
        _registry_client_env(cfg)
        # Open the registry client now (MLflow's store, the sqlite engine: seconds on a cold,
        # loaded replica), not inside the first request's registry deadline.
        self._registry_pool.submit(registry.ping, self.uri)
        if runner is None:
            load = _LruLoader(lambda key: _load_version(self.uri, key), cfg.max_models)
            runner = ModelRunner(cfg, load)
        self._runner = runner

    # ------------------------------------------------------------------------------ endpoints
    async def healthz(self) -> dict[str, str]:
        """Liveness: the replica answers. Says nothing about the registry (``/readyz``)."""
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        """Readiness: the registry's state (probed at most every 5 s, under the deadline) and
        what this replica can serve without it. 200 while it can serve (``degraded``: from
        cached versions and loaded models, for up to ``max_stale_s``); 503 when the registry is
        down and nothing is cached."""
        state = self._registry_state
        if not state.probing and (state.up is not True or time.monotonic() - state.checked > 5):
            state.probing = True  # one probe at a time; others answer with the last state
            try:
                await self._registry_call(registry.ping, self.uri)
            except (registry.RegistryError, registry.NotFoundError):
                pass
            finally:
                state.probing = False
        now = time.monotonic()
        fresh = [
            k
            for k, (t, _) in self._cache.items()
            if k[0] == "version" and now - t < self.cfg.max_stale_s
        ]
        up = bool(state.up)
        status = "ready" if up else ("degraded" if fresh else "unavailable")
        body = {
            "status": status,
            "registry": {
                "state": "up" if up else "down",
                "for_s": round(now - state.since, 1),
                "checked_s_ago": round(now - state.checked, 1),
                "deadline_s": self.cfg.registry_timeout_s,
            },
            "cached_versions": len(fresh),
            "max_stale_s": self.cfg.max_stale_s,
        }
        return JSONResponse(body, status_code=200 if status != "unavailable" else 503)

    async def models(self, request: Request) -> JSONResponse:
        return await self._guard(request, lambda: self._models())

    async def sample(self, name: str, request: Request) -> JSONResponse:
        return await self._guard(request, lambda: self._sample(name, request))

    async def score(self, name: str, request: Request) -> JSONResponse:
        return await self._guard(request, lambda: self._score(name, request))

    async def use(self, name: str, capability: str, request: Request) -> JSONResponse:
        return await self._guard(request, lambda: self._use(name, capability, request))

    async def openapi(self, request: Request) -> JSONResponse:
        if denied := self._deny(request, docs=True):
            return denied
        return JSONResponse(request.app.openapi())

    async def swagger(self, request: Request) -> Response:
        if denied := self._deny(request, docs=True):
            return denied
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="genmodels")

    # -------------------------------------------------------------------------------- helpers
    def _authorized(self, request: Request) -> bool:
        """No key configured: open. Else ``Authorization: Bearer <key>`` or ``X-API-Key``,
        compared as SHA-256 digests with ``hmac.compare_digest`` against every accepted key."""
        if not self._keys:
            return True
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key")
        digest = hashlib.sha256((given or "").encode()).digest()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(digest, key)
        return ok and bool(given)

    def _deny(self, request: Request, docs: bool = False) -> JSONResponse | None:
        if docs and not self.cfg.docs:
            return _error(404, "Not Found")
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer <key>)")
        return None

    async def _parse(self, request: Request, model: type[BaseModel]) -> Any:
        raw = await _read_body(request, self.cfg.max_body_bytes, self._bodies)
        async with self._parse_slots:
            return await asyncio.to_thread(_decode, raw, model)

    async def _guard(self, request: Request, handler: Callable[[], Awaitable[Any]]) -> JSONResponse:
        """Check the key; run a handler under the deadline; map every failure to a JSON error
        whose message names no file, URI or SQL (details go to the replica's log)."""
        if denied := self._deny(request):
            return denied
        try:
            return await self._run(handler)
        finally:
            if self._bodies.release(request) >= _TRIM_AFTER_BYTES:
                _trim_soon()

    async def _run(self, handler: Callable[[], Awaitable[Any]]) -> JSONResponse:
        """The handler's result as JSON, or its error (``_failure``); past the deadline a 504.
        A request that ends early (deadline; the client left, which cancels this coroutine)
        cancels its work: a queued model call is dropped, a running one stops between calls."""
        task = asyncio.ensure_future(handler())  # copies the context: Serve's request context
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved if orphaned
        try:
            done, _ = await asyncio.wait({task}, timeout=self.cfg.request_timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            return _error(504, f"request took longer than {self.cfg.request_timeout_s:g} s")
        try:
            return JSONResponse(task.result())
        except Exception as e:
            return _error(*_failure(e))

    async def _data_spec(self, v: _Version) -> tuple[tuple[int, ...], int, str | None]:
        """(input shape, levels, likelihood) from the version's tags, so that a bad request costs
        no model load; an untagged version is asked of the model runner (which loads it)."""
        shape, levels = v.spec
        if shape:
            return shape, levels, v.tags.get("likelihood")
        return await self._runner.spec(v.key)

    def _capabilities(self, v: _Version) -> frozenset[str]:
        """What the version offers: its tag, or (versions registered before the tag existed)
        the family's declared defaults."""
        tag = v.tags.get("capabilities")
        if tag:
            return frozenset(json.loads(tag))
        if v.family not in genmodels.families():
            return frozenset()
        cls = genmodels.family_class(v.family)
        return frozenset(cls.capabilities) | ({"sample"} if cls.can_sample else set())

    def _require(self, name: str, v: _Version, capability: str) -> None:
        """501 for a family this server lacks; 422 naming a capability the version lacks."""
        if v.family not in genmodels.families():
            raise ApiError(501, f"{name}: family {v.family!r} is not installed on this server")
        have = self._capabilities(v)
        if capability not in have:
            raise ApiError(
                422,
                f"{name} v{v.version} has no capability {capability!r}; "
                f"it has: {', '.join(sorted(have)) or 'none'}",
            )

    def _require_condition(self, name: str, v: _Version, condition: dict | None) -> None:
        for key in condition or {}:
            self._require(name, v, f"condition:{key}")

    def _limit(self, family: str) -> int | None:
        """The most samples per request; None for a family this server does not have."""
        if family not in genmodels.families():
            return None
        limit = genmodels.family_class(family).sample_limit
        return min(limit, self.cfg.sample_limits.get(family, limit))

    async def _registry_call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` on the registry threads under ``registry_timeout_s``; a timeout is a
        ``RegistryError``. Every answer updates the registry state ``/readyz`` reports."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._registry_pool, fn, *args)
        try:
            result = await asyncio.wait_for(future, self.cfg.registry_timeout_s)
        except TimeoutError:
            self._registry_state.mark(False)
            raise registry.RegistryError(
                f"no answer within {self.cfg.registry_timeout_s:g} s"
            ) from None
        except registry.NotFoundError:
            self._registry_state.mark(True)  # an answer
            raise
        except registry.RegistryError:
            self._registry_state.mark(False)
            raise
        except Exception as e:  # e.g. a corrupt sqlite file: the store fails to open
            self._registry_state.mark(False)
            raise registry.RegistryError(f"{type(e).__name__}: {e}") from e
        self._registry_state.mark(True)
        return result

    async def _cached(self, key: Any, fetch: Callable[[], Any], ttl: float) -> Any:
        """A registry answer, stale-while-revalidate: younger than ``ttl`` it is served as is;
        up to ``max_stale_s`` old it is served at once while one background call refreshes it
        (so a moved alias is seen within ``ttl`` plus one request, and a registry outage costs
        a cached request nothing); older, or never fetched, the caller waits for the registry
        (at most ``registry_timeout_s``). A refresh that finds the entry gone drops it."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        if hit is not None and now - hit[0] < self.cfg.max_stale_s:
            if key not in self._refreshing:
                self._refreshing.add(key)
                task = asyncio.ensure_future(self._refresh(key, fetch))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return hit[1]
        value = await self._registry_call(fetch)
        self._store(key, value)
        return value

    async def _refresh(self, key: Any, fetch: Callable[[], Any]) -> None:
        try:
            self._store(key, await self._registry_call(fetch))
        except registry.NotFoundError:
            self._cache.pop(key, None)
        except registry.RegistryError as e:
            logger.warning("genmodels serve: registry down, serving cached %s: %s", key, e)
        finally:
            self._refreshing.discard(key)

    def _store(self, key: Any, value: Any) -> None:
        self._cache.pop(key, None)
        self._cache[key] = (time.monotonic(), value)
        while len(self._cache) > 4096:  # the oldest first
            self._cache.pop(next(iter(self._cache)))

    async def _resolve(self, name: str, body: _Ref) -> _Version:
        ref = str(body.version) if body.version is not None else body.alias

        def fetch() -> _Version:
            mv = registry.resolve_version(self.uri, name, ref)
            return _Version(name, str(mv.version), dict(mv.tags))

        return await self._cached(("version", name, ref), fetch, self.cfg.alias_ttl_s)

    def _describe(self, version: str, tags: dict[str, str]) -> dict[str, Any]:
        v = _Version("", version, tags)
        shape, levels = v.spec
        metrics = {k[7:]: float(m) for k, m in tags.items() if k.startswith("metric.")}
        return {
            "version": int(version),
            "likelihood": tags.get("likelihood"),
            "method": tags.get("method"),
            "metrics": {k: (m if math.isfinite(m) else None) for k, m in metrics.items()},
            "sample_quality": (
                {
                    k: metrics.get(f"yardstick_{k}")
                    for k in ("fd", "confidence", "coverage", "num_samples")
                }
                | {"method": tags.get("yardstick_method")}
                if "yardstick_fd" in metrics
                else None
            ),
            "input_shape": list(shape) if shape else None,
            "levels": levels,
            "data_space": _data_space(levels),
            "sample_limit": self._limit(v.family),
            "capabilities": sorted(self._capabilities(v)),
        }

    async def _models(self) -> dict[str, Any]:
        out = []
        listed = await self._cached(
            "models", lambda: registry.list_models(self.uri), self.cfg.alias_ttl_s
        )
        for rm in listed:
            tags = next(iter(rm["versions"].values()), {})
            family, _, dataset = rm["name"].partition("-")
            out.append(
                {
                    "name": rm["name"],
                    "family": tags.get("family", family),
                    "dataset": tags.get("dataset", dataset),
                    "aliases": {a: int(v) for a, v in rm["aliases"].items()},
                    "latest_version": rm["latest_version"],
                    "versions": {v: self._describe(v, t) for v, t in rm["versions"].items()},
                }
            )
        return {"models": out}

    async def _sample(self, name: str, request: Request) -> dict[str, Any]:
        body = await self._parse(request, SampleRequest)
        v = await self._resolve(name, body)
        limit = self._limit(v.family)
        if limit is None:
            raise ApiError(501, f"{name}: family {v.family!r} is not installed on this server")
        if body.n > limit:
            raise ApiError(
                422, f"n={body.n} is over the limit of {limit} samples per request for {name}"
            )
        self._require(name, v, "sample")
        self._require_condition(name, v, body.condition)
        condition = _condition(body.condition, body.n)
        # Unseeded draws of the same model and condition keys are pooled into one call; a
        # seeded draw runs alone: it equals model.sample(n, generator=seeded, ...) in Python.
        rows, fixed = ({"condition": condition}, {}) if condition else ({}, {"condition": None})
        pool = None if body.seed is not None else ("sample", tuple(sorted(condition or {})))
        x = await self._runner.run(v.key, _Job("sample", body.n, rows, fixed, body.seed, pool))
        return {
            "model": name,
            "version": int(v.version),
            "samples": x.to(torch.int64).tolist(),
            "shape": list(x.shape),
        }

    async def _score(self, name: str, request: Request) -> dict[str, Any]:
        body = await self._parse(request, ScoreRequest)
        v = await self._resolve(name, body)
        if v.tags.get("likelihood") == "none":
            raise ApiError(422, f"{name}: family {v.family!r} has no likelihood to score")
        self._require(name, v, "log_prob")
        self._require_condition(name, v, body.condition)
        shape, levels, likelihood = await self._data_spec(v)
        x = _to_batch(body.x, shape, levels, self.cfg.max_batch)
        condition = _condition(body.condition, len(x))
        rows = {"x": x, "condition": condition} if condition else {"x": x}
        pool = None  # a seeded estimate is scored alone: reproducible whatever is in flight
        if body.seed is None or likelihood == "exact":
            pool = ("score", tuple(sorted(condition or {})))
        result = await self._runner.run(v.key, _Job("score", len(x), rows, {}, body.seed, pool))
        log_prob, stderr, method = result.log_prob, result.stderr, result.method
        d = math.prod(shape)
        lp = log_prob.tolist()
        return {
            "model": name,
            "version": int(v.version),
            "log_prob": lp,
            "bits_per_dim": [-val / (d * math.log(2)) for val in lp],
            "method": method,
            "stderr": stderr.tolist() if stderr is not None else None,
        }

    async def _use(self, name: str, endpoint: str, request: Request) -> dict[str, Any]:
        """Any capability with an endpoint, generically from ``genmodels.CAPABILITIES``."""
        cap = _BY_ENDPOINT.get(endpoint)
        if cap is None:
            raise ApiError(
                404, f"no endpoint {endpoint!r}; capability endpoints: {', '.join(_BY_ENDPOINT)}"
            )
        if cap.name == "log_prob":
            return await self._score(name, request)
        if cap.name == "sample":
            return await self._sample(name, request)
        body = await self._parse(request, _REQUESTS[cap.name])
        v = await self._resolve(name, body)
        self._require(name, v, cap.name)
        shape, levels, _ = await self._data_spec(v)
        rows = min(cap.max_rows, self.cfg.max_batch)
        kwargs: dict[str, Any] = {}
        for field in cap.fields:
            value = getattr(body, field)
            if field == "x":
                value = _to_batch(value, shape, levels, rows)
            elif field == "mask":
                value = _to_batch(value, shape, 2, rows, what="mask")
            elif field == "frames":
                value = _to_frames(value, levels, rows)
            kwargs[field] = value
        if "mask" in kwargs and len(kwargs["mask"]) != len(kwargs["x"]):
            raise ApiError(
                422, f"mask has {len(kwargs['mask'])} rows for {len(kwargs['x'])} rows of x"
            )
        n_rows = len(kwargs.get("x", kwargs.get("frames", [])))
        if "num_samples" in kwargs:
            top = min(self.cfg.max_num_samples, max(1, self.cfg.max_batch // max(1, n_rows)))
            if kwargs["num_samples"] > top:
                raise ApiError(
                    422,
                    f"num_samples={kwargs['num_samples']} is over the limit of {top} "
                    f"for {n_rows} rows (at most {self.cfg.max_batch} imputations per request)",
                )
        if "steps" in kwargs and kwargs["steps"] > self.cfg.max_steps:
            raise ApiError(
                422, f"steps={kwargs['steps']} is over the limit of {self.cfg.max_steps}"
            )
        if "condition" in kwargs:
            self._require_condition(name, v, kwargs["condition"])
            kwargs["condition"] = _condition(kwargs["condition"], n_rows)
        seed = body.seed if cap.seeded else None
        if cap.batchable and "x" in kwargs and seed is None:
            x = kwargs.pop("x")
            fixed = {k: val for k, val in kwargs.items() if val is not None}
            pool = (cap.method, json.dumps(fixed, sort_keys=True, default=str))
            job = _Job(cap.method, len(x), {"x": x}, fixed, None, pool)
        else:
            job = _Job(cap.method, n_rows, {}, kwargs, seed)
        result = await self._runner.run(v.key, job)
        return {
            "model": name,
            "version": int(v.version),
            "capability": cap.name,
            **_result_fields(result, cap),
        }


# ---------------------------------------------------------------------------------- the API
# (method, path, service attribute, route options): mounted on the Serve ingress (class-based:
# Serve binds ``self``) and by ``make_api`` on a plain FastAPI app bound to one instance.
ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("get", "/healthz", "healthz", {}),
    ("get", "/readyz", "readyz", {}),
    ("get", "/openapi.json", "openapi", {"include_in_schema": False}),
    ("get", "/docs", "swagger", {"include_in_schema": False}),
    ("get", "/v1/models", "models", _docs()),
    ("post", "/v1/models/{name}/sample", "sample", _docs(SampleResponse, SampleRequest)),
    ("post", "/v1/models/{name}/score", "score", _docs(ScoreResponse, ScoreRequest)),
    (
        "post",
        "/v1/models/{name}/{capability}",
        "use",
        {
            "summary": "Use a capability of the model",
            "description": "; ".join(
                f"`{c.endpoint}`: {c.summary} (fields: {', '.join(c.fields)})"
                for c in _BY_ENDPOINT.values()
            ),
        },
    ),
]


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


def make_api(service: Any = GenModelsService) -> FastAPI:
    """The FastAPI app: its routes call ``service``'s methods (the class, for Serve's
    class-based ingress; an instance, for a plain ASGI app: ``make_api(GenModelsService(cfg))``
    runs the whole API in-process, without Ray). FastAPI's own ``/docs`` and ``/openapi.json``
    are replaced by routes behind the API key and the ``docs`` flag."""
    app = FastAPI(
        title="genmodels",
        version=genmodels.__version__,
        description="Sample and score generative models from the MLflow registry.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for method, path, attr, options in ROUTES:
        getattr(app, method)(path, **options)(getattr(service, attr))
    return app


api = make_api()


@serve.deployment
@serve.ingress(api)
class GenModelsServer(GenModelsService):
    """The Serve ingress: authentication, bodies, validation and registry lookups; model calls
    go to the ``ModelWorker`` replicas through ``_RemoteRunner`` (retried on a lost replica)."""

    def __init__(self, cfg: ServeConfig, worker: Any) -> None:
        _bound_mlflow_retries(cfg)
        super().__init__(cfg, _RemoteRunner(worker, cfg))


@serve.deployment
class ModelWorker:
    """The Serve deployment that holds models: ``@serve.multiplexed`` (at most ``max_models``
    per replica, LRU; the ingress routes by ``name@version``) and a ``ModelRunner`` that pools
    concurrent calls. Errors are returned as ``_Failure`` values, not raised, so the ingress
    tells them from a lost replica."""

    def __init__(self, cfg: ServeConfig) -> None:
        _bound_mlflow_retries(cfg)
        _registry_client_env(cfg)

        async def load(key: str) -> _Loaded:
            return await _load_version(cfg.tracking_uri, key)

        multiplexed = serve.multiplexed(max_num_models_per_replica=cfg.max_models)(_shared(load))
        self.runner = ModelRunner(cfg, multiplexed)

    async def spec(self, key: str) -> Any:
        try:
            return await self.runner.spec(key)
        except Exception as e:
            return _Failure(*_failure(e))

    async def run_many(self, key: str, jobs: list[_Job]) -> list[Any]:
        """Each job's result or ``_Failure``; the jobs enter the runner together, so the ones
        that can share a model call do."""
        return await asyncio.gather(*(self._run(key, job) for job in jobs))

    async def _run(self, key: str, job: _Job) -> Any:
        try:
            out = await self.runner.run(key, job)
        except Exception as e:
            return _Failure(*_failure(e))
        if job.method == "sample" and out.numel() and 0 <= out.min() and out.max() < 256:
            # draws are integers in the data space: 1 byte each over the hop, not 4 (64 MNIST
            # samples: 50 kB, under Ray's 100 kB inline limit, instead of 200 kB in the store)
            out = out.to(torch.uint8)
        return out


# -------------------------------------------------------------------------------- public API
def build_app(
    tracking_uri: str | None,
    *,
    num_replicas: int = 1,
    max_ongoing_requests: int | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    ingress_replicas: int = 1,
    ingress_actor_options: dict[str, Any] | None = None,
    env_vars: dict[str, str] | None = None,
    api_key: str | None = None,
    **settings: Any,
) -> serve.Application:
    """The bound application (pass it to ``serve.run``): the ingress ``GenModelsServer`` and
    the model replicas ``ModelWorker``.

    Args:
        tracking_uri: the MLflow store (default and relative sqlite paths: see
            ``registry.resolve_tracking_uri``).
        num_replicas, max_ongoing_requests, ray_actor_options: of the model replicas (they
            hold the models: ``num_cpus``/``num_gpus`` go here); ``max_ongoing_requests``
            defaults to ``max_batch`` so that one call can pool that many one-row requests.
        ingress_replicas, ingress_actor_options: of the ingress (default: 1 replica reserving
            no CPU, with the model replicas' ``runtime_env``; the ingress parses and routes).
        env_vars: environment of every replica (e.g. ``MLFLOW_HTTP_REQUEST_TIMEOUT``).
        api_key: the key clients must send (``Authorization: Bearer <key>``); default
            ``$GENMODELS_API_KEY`` of this process. Only its SHA-256 goes into the deployment's
            config. Without any key (here, ``api_key_file``, or the replicas' environment)
            every endpoint is open: keep such a server on 127.0.0.1.
        **settings: the fields of ``ServeConfig``: ``max_batch=256``, ``request_timeout_s=30``,
            ``sample_limits=None`` ({family: n}), ``max_models=8``, ``batch_wait_s=0``,
            ``sample_chunk=64``, ``call_retries=8``, ``alias_ttl_s=10``.
    """
    settings["sample_limits"] = settings.get("sample_limits") or {}
    settings.setdefault("calls_in_flight", int(num_replicas) + 1)
    api_key = api_key or os.environ.get(API_KEY_ENV)
    if api_key:
        settings["api_key_sha256"] = hashlib.sha256(api_key.strip().encode()).hexdigest()
    cfg = ServeConfig(tracking_uri=registry.resolve_tracking_uri(tracking_uri), **settings)
    actor = dict(ray_actor_options or {})
    if env_vars:
        runtime_env = dict(actor.get("runtime_env") or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
        actor["runtime_env"] = runtime_env
    ongoing = int(max_ongoing_requests or cfg.max_batch)
    options: dict[str, Any] = {"num_replicas": int(num_replicas), "max_ongoing_requests": ongoing}
    if actor:
        options["ray_actor_options"] = actor
    ingress = {"num_cpus": 0, **(ingress_actor_options or {})}
    if "runtime_env" in actor and "runtime_env" not in ingress:
        ingress["runtime_env"] = actor["runtime_env"]
    worker = ModelWorker.options(**options).bind(cfg)
    return GenModelsServer.options(
        num_replicas=int(ingress_replicas),
        max_ongoing_requests=ongoing * max(1, int(num_replicas)),
        ray_actor_options=ingress,
    ).bind(cfg, worker)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve run pipelines.serve:app_builder tracking_uri=... sample_limits=made=64,vae=512``."""
    args = dict(args)
    limits = args.pop("sample_limits", None)
    if isinstance(limits, str):
        pairs = (p.split("=", 1) for p in limits.split(",") if p.strip())
        limits = {k.strip(): int(v) for k, v in pairs}
    return build_app(args.pop("tracking_uri", None), sample_limits=limits, **args)


def start(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    route_prefix: str = "/",
    name: str = "genmodels",
    blocking: bool = False,
    **kw: Any,
) -> str:
    """Start Serve's HTTP proxy on ``host:port``, deploy the app; return its base URL.

    Serve's HTTP options are cluster-wide: if Serve already runs, its host and port win.
    ``kw`` goes to ``build_app``.
    """
    serve.start(http_options={"host": host, "port": port})
    url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    logger.info("genmodels serving at %s", url)
    serve.run(
        build_app(tracking_uri, **kw), name=name, route_prefix=route_prefix, blocking=blocking
    )
    return url


def shutdown(name: str = "genmodels") -> None:
    """Delete the application; stop Serve too when no other live application is left."""
    apps = serve.status().applications
    if any(a != name and s.status != "DELETING" for a, s in apps.items()):
        if name in apps:
            serve.delete(name)
    elif apps:
        serve.shutdown()
