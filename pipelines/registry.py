"""MLflow model registry: store, register, promote and load generative models.

A stored model is two files, never a pickle: ``weights.safetensors`` (the ``state_dict``) and
``model.json`` (what ``genmodels.from_export`` needs plus dataset facts). They are logged as the
artifacts of an MLflow *models-from-code* pyfunc (``pipelines/pyfunc_model.py``), so
``mlflow.pyfunc.load_model("models:/made-mnist@champion").predict(x)`` scores a NumPy batch
anywhere genmodels is installed, without Ray.

Registered model names are ``<family>-<dataset>``. Each version is tagged with its dataset
fingerprint, preprocessing, likelihood method, validation and test metrics and code version.
The alias ``champion`` moves only to a version that beats the current champion on the
*validation* metric, and only between versions with the same method and dataset fingerprint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import genmodels

CHAMPION = "champion"
VAL_METRIC = "val_score"  # higher is better: val log-likelihood, or -FD for a family without one
PYFUNC_CODE = str(Path(__file__).with_name("pyfunc_model.py"))


class RegistryError(RuntimeError):
    """The registry could not be reached or answered with an error."""


class NotFoundError(LookupError):
    """No such registered model, version or alias."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """An absolute tracking URI: a relative ``sqlite:///x.db`` or path becomes absolute.

    Trials and jobs change directory, so the driver resolves the URI once and passes it on.
    Default: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if "://" not in uri:  # a plain directory: a file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def require_registry(tracking_uri: str) -> None:
    """Raise ``NotFoundError`` when a local registry (sqlite file, file store) does not exist.

    For the read-only commands: opening a mistyped ``sqlite:///...`` path would silently create
    an empty registry. Remote registries (http...) are not checked here.
    """
    path = None
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :])
    elif tracking_uri.startswith("file://"):
        path = Path(tracking_uri[len("file://") :])
    if path is not None and not path.exists():
        raise NotFoundError(
            f"no registry at {tracking_uri} (no such file): check --tracking-uri or "
            "MLFLOW_TRACKING_URI (train a model first to create one)"
        )


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, created with an absolute artifact location beside a local store."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        location = (db.parent / "mlartifacts" / name).as_uri()
    return c.create_experiment(name, artifact_location=location)


def code_version() -> str:
    """``genmodels <version>`` plus the git commit when run from a checkout."""
    version = f"genmodels {genmodels.__version__}"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version} ({sha})" if sha else version


def save_model_files(model: genmodels.GenerativeModel, meta: dict[str, Any], directory: Path):
    """Write ``weights.safetensors`` and ``model.json`` (export config + ``meta``)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    spec = {"model": model.export_config(), "meta": meta}
    (directory / "model.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
    return directory / "weights.safetensors", directory / "model.json"


def load_model_files(
    weights: str | Path, spec_path: str | Path
) -> tuple[genmodels.GenerativeModel, dict]:
    """Rebuild a model from the two stored files (no unpickling); returns ``(model, meta)``."""
    spec = json.loads(Path(spec_path).read_text())
    model = genmodels.from_export(spec["model"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), spec.get("meta", {})


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    promoted: bool
    reason: str


def _pyfunc_signature():
    """The pyfunc's parameters (``predict(x, params={...})``); inputs are not constrained."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        params=ParamSchema(
            [ParamSpec("capability", "string", "log_prob"), ParamSpec("seed", "long", 0)]
        ),
    )


def register_model(
    tracking_uri: str,
    run_id: str,
    model: genmodels.GenerativeModel,
    meta: dict[str, Any],
    metrics: dict[str, float],
    name: str | None = None,
    artifacts: dict[str, str] | None = None,
) -> Registered:
    """Log ``model`` to ``run_id`` as a pyfunc, register a new version, maybe promote it.

    Args:
        meta: dataset facts stored with the model: ``dataset``, ``fingerprint``, ``preprocessing``,
            ``method`` (likelihood method), ...
        metrics: at least ``val_score`` (the selection metric: validation log-likelihood, or
            -FD of the yardstick for a family without one); test and yardstick metrics too.
        name: registered model name; default ``<family>-<dataset>``. Refused (``ValueError``)
            when the name's versions were trained on other data (``check_name``).
        artifacts: extra files stored with the version (e.g. ``yardstick_samples``: the samples
            its sample-quality metrics were computed from, drawn once per version).
    """
    import mlflow

    name = name or f"{model.family}-{meta['dataset']}"
    check_name(tracking_uri, name, meta.get("source_fingerprint"), meta.get("source"))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        weights, spec = save_model_files(model, meta, Path(tmp))
        with mlflow.start_run(run_id=run_id), _quiet_mlflow():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PYFUNC_CODE,
                artifacts={"weights": str(weights), "spec": str(spec), **(artifacts or {})},
                registered_model_name=name,
                pip_requirements=[f"genmodels=={genmodels.__version__}"],
                metadata={"capabilities": sorted(model.capabilities), "family": model.family},
                signature=_pyfunc_signature(),
            )
    version = str(info.registered_model_version)
    c = client(tracking_uri)
    tags = {
        "family": model.family,
        "dataset": meta["dataset"],
        "fingerprint": meta["fingerprint"],
        "preprocessing": json.dumps(meta.get("preprocessing", {}), sort_keys=True),
        **{k: str(meta[k]) for k in ("source", "source_fingerprint") if meta.get(k)},
        "method": meta["method"],
        "likelihood": model.likelihood,
        "input_shape": json.dumps(list(model.input_shape)),
        "levels": str(model.levels),
        "capabilities": json.dumps(sorted(model.capabilities)),
        "code_version": code_version(),
        "run_id": run_id,
        **{f"metric.{k}": repr(float(v)) for k, v in metrics.items()},
    }
    if meta.get("yardstick_method"):
        tags["yardstick_method"] = meta["yardstick_method"]
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)
    promoted, reason = promote_if_better(tracking_uri, name, version)
    return Registered(name, version, promoted, reason)


class NameClashError(ValueError):
    """A registered model name already holds versions trained on other data."""


def check_name(
    tracking_uri: str, name: str, source_fingerprint: str | None, source: str | None = None
) -> None:
    """Raise ``NameClashError`` when ``name``'s versions were trained on different data.

    Two sources with the same stem (``a/faces/`` and ``b/faces/``) get the same dataset name;
    their ``source_fingerprint`` (a hash of the data alone, whatever the split settings) tells
    them apart. Versions registered before the tag existed are not compared.
    """
    if not source_fingerprint:
        return
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return
    except Exception as e:
        raise RegistryError(f"registry at {tracking_uri} unreachable: {e}") from e
    for mv in versions:
        theirs = mv.tags.get("source_fingerprint")
        if theirs and theirs != source_fingerprint:
            where = mv.tags.get("source") or mv.tags.get("dataset", "?")
            raise NameClashError(
                f"registered model {name!r} holds versions trained on other data (v{mv.version}: "
                f"{where}, source fingerprint {theirs}; this data: {source or '?'}, "
                f"{source_fingerprint}): register under another name with "
                "--set registered_name=NAME"
            )


def _version_metric(mv, key: str = VAL_METRIC) -> float | None:
    value = mv.tags.get(f"metric.{key}")
    if value is None and key == VAL_METRIC:  # versions registered before val_score existed
        value = mv.tags.get("metric.val_log_prob")
    return float(value) if value is not None else None


def promote_if_better(tracking_uri: str, name: str, version: str) -> tuple[bool, str]:
    """Move ``champion`` to ``version`` iff it beats the champion on the validation metric.

    Versions are compared only when their likelihood method and dataset fingerprint agree;
    a version without a validation metric is never promoted over an existing champion.
    """
    c = client(tracking_uri)
    new = c.get_model_version(name, version)
    try:
        current = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion yet
        current = None
    if current is None:
        c.set_registered_model_alias(name, CHAMPION, version)
        return True, "no champion yet"
    for key in ("method", "fingerprint"):
        if new.tags.get(key) != current.tags.get(key):
            return False, (
                f"not comparable with champion v{current.version}: {key} "
                f"{new.tags.get(key)!r} != {current.tags.get(key)!r}"
            )
    new_val, cur_val = _version_metric(new), _version_metric(current)
    if new_val is None or cur_val is None:
        return False, "no validation metric to compare"
    if new_val > cur_val:
        c.set_registered_model_alias(name, CHAMPION, version)
        return True, f"{VAL_METRIC} {new_val:.3f} > champion v{current.version}'s {cur_val:.3f}"
    return False, f"{VAL_METRIC} {new_val:.3f} <= champion v{current.version}'s {cur_val:.3f}"


def resolve_version(tracking_uri: str, name: str, ref: str = CHAMPION):
    """The MLflow ``ModelVersion`` for ``ref`` (an alias or a version number).

    Raises ``NotFoundError`` for an unknown model/alias/version and ``RegistryError`` when the
    registry cannot be reached.
    """
    from mlflow.exceptions import MlflowException

    try:
        c = client(tracking_uri)
        if ref.isdigit():
            return c.get_model_version(name, ref)
        return c.get_model_version_by_alias(name, ref)
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise NotFoundError(f"no model {name!r} with alias or version {ref!r}") from None
        raise RegistryError(f"registry at {tracking_uri} failed: {e.message}") from e
    except Exception as e:  # connection refused, DNS, sqlite errors...
        raise RegistryError(f"registry at {tracking_uri} unreachable: {e}") from e


def load_version(
    tracking_uri: str, name: str, ref: str = CHAMPION
) -> tuple[genmodels.GenerativeModel, dict[str, Any]]:
    """Load a registered version as a genmodels model (in eval mode) and its description."""
    import mlflow

    mv = resolve_version(tracking_uri, name, ref)
    # download_artifacts resolves "models:/" through the process-wide registry URI, whatever
    # tracking_uri says: point it at this registry for the call, then put it back.
    previous = mlflow.get_registry_uri()
    try:
        mlflow.set_registry_uri(tracking_uri)
        root = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{mv.version}", tracking_uri=tracking_uri
        )
    except Exception as e:
        raise RegistryError(f"could not download {name} v{mv.version}: {e}") from e
    finally:
        mlflow.set_registry_uri(previous)
    root_path = Path(root)
    weights = next(root_path.rglob("weights.safetensors"))
    spec = next(root_path.rglob("model.json"))
    model, meta = load_model_files(weights, spec)
    info = {
        "name": name,
        "version": str(mv.version),
        "aliases": list(mv.aliases),
        "tags": dict(mv.tags),
        "meta": meta,
    }
    return model, info


def ping(tracking_uri: str) -> None:
    """One cheap registry query; ``RegistryError`` when the registry does not answer it."""
    try:
        client(tracking_uri).search_registered_models(max_results=1)
    except Exception as e:
        raise RegistryError(f"registry at {tracking_uri} unreachable: {e}") from e


def list_models(tracking_uri: str) -> list[dict[str, Any]]:
    """Every registered model with its aliases and the tags of each aliased version."""
    out = []
    try:
        c = client(tracking_uri)
        registered = c.search_registered_models()
    except Exception as e:
        raise RegistryError(f"registry at {tracking_uri} unreachable: {e}") from e
    for rm in registered:
        aliases = dict(rm.aliases or {})
        versions = {}
        for v in sorted(set(aliases.values())):
            mv = c.get_model_version(rm.name, v)
            versions[str(v)] = dict(mv.tags)
        latest = max((int(v.version) for v in rm.latest_versions or []), default=None)
        out.append(
            {"name": rm.name, "aliases": aliases, "versions": versions, "latest_version": latest}
        )
    return out


def describe_models(tracking_uri: str) -> list[dict[str, Any]]:
    """What ``genmodels models`` prints (and ``GET /v1/models`` answers): every registered model
    with its number of versions, latest version, aliases, and per aliased version (the latest
    too) its method, dataset and metrics (floats, from the ``metric.*`` tags)."""
    c = client(tracking_uri)
    try:
        registered = c.search_registered_models()
    except Exception as e:
        raise RegistryError(f"registry at {tracking_uri} unreachable: {e}") from e
    out = []
    for rm in sorted(registered, key=lambda r: r.name):
        versions = c.search_model_versions(f"name = '{rm.name}'")
        if not versions:
            continue
        latest = max(versions, key=lambda v: int(v.version))
        aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
        shown = {}
        for mv in versions:
            v = str(mv.version)
            if v in aliases.values() or mv is latest:
                tags = dict(mv.tags)
                shown[v] = {
                    "method": tags.get("method"),
                    "dataset": tags.get("dataset"),
                    "source": tags.get("source"),
                    "metrics": {
                        k[len("metric.") :]: float(val)
                        for k, val in tags.items()
                        if k.startswith("metric.")
                    },
                }
        tags = dict(latest.tags)
        out.append(
            {
                "name": rm.name,
                "family": tags.get("family"),
                "dataset": tags.get("dataset"),
                "num_versions": len(versions),
                "latest_version": str(latest.version),
                "aliases": aliases,
                "versions": shown,
            }
        )
    return out


@contextlib.contextmanager
def _quiet_mlflow():
    """Unless MLflow's logger is at INFO (``--verbose``): drop what ``log_model`` prints to
    stderr ("Successfully registered model ...": the CLI says it itself) and its advice to
    type-hint ``predict`` or give an input example (our pyfunc takes NumPy batches of any
    shape)."""
    if logging.getLogger("mlflow").isEnabledFor(logging.INFO):
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.filterwarnings("ignore", message=".*Add type hints", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        yield


def torch_load_trusted(path: str | Path) -> Any:
    """Load a checkpoint we wrote ourselves; still refuse arbitrary pickles."""
    return torch.load(path, map_location="cpu", weights_only=True)
