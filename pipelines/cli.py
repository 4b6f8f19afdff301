"""``genmodels``: the command line of the pipeline.

    genmodels families
    genmodels models   [--json]
    genmodels train    --family made --dataset mnist [--config FILE] [--set KEY=VALUE ...]
    genmodels tune     --family vae  --dataset mnist --num-samples 8
    genmodels evaluate --model made-mnist [--ref champion] [--split test]
    genmodels sample   --model made-mnist --n 64 --out samples.png [--label 3 | --caption TEXT]
    genmodels serve    [--port 8000]
    genmodels submit   --address http://HOST:8265 [--token-file F] -- train --family made ...
    genmodels demo

Config precedence: the family's defaults < ``--config`` (YAML/JSON with TrainSpec fields and a
``model:`` mapping) < ``--set`` (``epochs=5``, ``model.hidden_sizes=[500]``; values are YAML).

Every mistake is one line on stderr, ``genmodels <command>: error: ...``, exit status 2, and is
found before Ray starts wherever it can be (settings, the family's config, the data, a GPU
asked of a machine without one, a port in use, a registry that does not exist). Failures of a
run itself (a timeout, a worker error) are one line too, exit status 1; ``--verbose`` shows
Ray's own logs and tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import genmodels

from .registry import resolve_tracking_uri
from .runtime import check_port_free, init_ray, quiet_logging
from .train import DEFAULT_TIMEOUT_S, HARD_STOP_GRACE_S, TrainSpec


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------ config
def build_spec(args: argparse.Namespace) -> TrainSpec:
    """TrainSpec from --family/--dataset, --config FILE and --set overrides (validated)."""
    values: dict[str, Any] = {"model": {}}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CLIError(f"--config {args.config}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise CLIError(f"--config {args.config}: expected a mapping at the top level")
        values.update({k: v for k, v in loaded.items() if k != "model"})
        values["model"].update(loaded.get("model") or {})
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise CLIError(f"--set {item!r}: cannot parse the value {raw!r}") from None
        if key.startswith("model."):
            values["model"][key[len("model.") :]] = value
        else:
            values[key] = value
    for flag, key in (("timeout", "timeout_s"),):
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    for flag in ("family", "dataset", "epochs", "tracking_uri"):
        if getattr(args, flag, None) is not None:
            values[flag] = getattr(args, flag)
    if getattr(args, "workers", None) is not None:
        values["num_workers"] = args.workers
    if "family" not in values:
        raise CLIError("--family is required (see `genmodels families`)")
    fields = {f.name: f for f in dataclasses.fields(TrainSpec)}
    for key in values:
        if key not in fields:
            raise CLIError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}")
    for key, value in values.items():
        if key in ("model", "family") or value is None:
            continue
        want = type(fields[key].default) if fields[key].default is not None else None
        if want in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise CLIError(f"bad value {value!r} for {key!r} (expected a number)")
        if want is int and isinstance(value, float) and not value.is_integer():
            raise CLIError(f"bad value {value!r} for {key!r} (expected an integer)")
        if want is bool and not isinstance(value, bool):
            raise CLIError(f"bad value {value!r} for {key!r} (expected true/false)")
    spec = TrainSpec(**values)
    try:
        spec.validate()
    except (ValueError, KeyError) as e:
        raise CLIError(e.args[0] if e.args else str(e)) from None
    return spec


def _check_dataset(source: str) -> None:
    """Fail before Ray starts when the dataset is neither a known name nor a path/URI."""
    from .captions import is_caption_source
    from .data import dataset_names
    from .pairs import is_pair_source
    from .sequences import is_sequence_source

    if source in dataset_names() or ":" in source or Path(source).expanduser().exists():
        return
    generated = (is_pair_source, is_sequence_source, is_caption_source)
    if any(is_kind(source) for is_kind in generated):  # generated dataset kinds
        return
    raise CLIError(
        f"unknown dataset {source!r}: not one of {', '.join(dataset_names())} (or a generated "
        "kind: mnist-edge-paired, moving-mnist...) and no such file or directory"
    )


def _prepare(spec: TrainSpec, address: str | None):
    """Everything about a train/tune run that can be checked without Ray: the data (read, split,
    ``limit``), the model on the data's shape (config values, ``num_masks``...), a GPU asked of a
    machine without one, and the registered name. Returns the prepared dataset."""
    from . import registry
    from .train import check_model, prepare_data, registered_name

    _check_dataset(spec.dataset)
    if spec.use_gpu and not (address or os.environ.get("RAY_ADDRESS")):
        import torch

        if torch.cuda.device_count() < spec.num_workers:
            raise CLIError(
                f"use_gpu=true needs {spec.num_workers} GPU(s) (one per worker) but this machine "
                f"has {torch.cuda.device_count()}: drop --set use_gpu=true or pass --address of "
                "a GPU cluster"
            )
    data = prepare_data(spec)
    check_model(spec, data.input_shape, data.levels, data.batch_columns)
    if spec.register:
        uri = resolve_tracking_uri(spec.tracking_uri)
        registry.check_name(uri, registered_name(spec, data), data.source_fingerprint, data.source)
    return data


def _start_ray(args) -> None:
    init_ray(getattr(args, "address", None), verbose=getattr(args, "verbose", False))


# ------------------------------------------------------------------------------ commands
def cmd_families(args) -> int:
    print(f"{'family':<10} {'likelihood':<10} {'data':<16} capabilities")
    for name in genmodels.families():
        cls = genmodels.family_class(name)
        caps = ", ".join(sorted(cls.capabilities)) or "-"
        print(f"{name:<10} {cls.likelihood:<10} {'/'.join(cls.data_kinds):<16} {caps}")
    return 0


def _registry_uri(args) -> str:
    """The tracking URI of a read-only command: it must exist (never create an empty one)."""
    from . import registry

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        registry.require_registry(uri)
    except registry.NotFoundError as e:
        raise CLIError(str(e)) from None
    return uri


def cmd_models(args) -> int:
    from . import registry

    uri = _registry_uri(args)
    models = registry.describe_models(uri)
    if args.json:
        print(json.dumps({"models": models}, indent=2, default=str))
        return 0
    if not models:
        print(f"no registered models in {uri}")
        return 0
    print(f"registry: {uri}")
    for m in models:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(m["aliases"].items())) or "no alias"
        print(
            f"{m['name']}: {m['num_versions']} version(s), latest v{m['latest_version']}; "
            f"{aliases}; family {m['family']}, dataset {m['dataset']}"
        )
        for alias, v in sorted(m["aliases"].items()):
            metrics = m["versions"].get(str(v), {}).get("metrics", {})
            print(f"  {alias} v{v}: {_metrics_line(metrics, m['versions'][str(v)])}")
    return 0


def _metrics_line(metrics: dict[str, float], version: dict) -> str:
    """A registered version's headline numbers, as one line."""
    parts = []
    if "test_log_prob" in metrics:
        parts.append(f"test {-metrics['test_log_prob']:.2f} nats/example")
        if "test_bpd" in metrics:
            parts.append(f"{metrics['test_bpd']:.4f} bits/dim")
    if version.get("method"):
        parts.append(f"method {version['method']}")
    if "val_score" in metrics:
        parts.append(f"val_score {metrics['val_score']:.3f}")
    if "yardstick_fd" in metrics:
        parts.append(f"FD {metrics['yardstick_fd']:.2f}")
    return ", ".join(parts) or "no metrics"


def _print_outcome(kind: str, family: str, metrics: dict, registered, grid=None) -> None:
    if "test_log_prob" in metrics:
        print(
            f"{kind} {family}: test log p = {metrics['test_log_prob']:.2f} nats/example "
            f"({metrics['test_bpd']:.4f} bits/dim, {metrics.get('method', '')})"
        )
    else:
        print(f"{kind} {family}: no likelihood (family {family!r}); sample quality below")
    if "yardstick_fd" in metrics:
        print(
            f"sample quality (yardstick, test split): FD {metrics['yardstick_fd']:.3f}, "
            f"confidence {metrics['yardstick_confidence']:.3f}, "
            f"coverage {metrics['yardstick_coverage']:.3f}"
        )
    if registered is not None:
        promoted = "promoted to champion" if registered.promoted else "not promoted"
        print(
            f"registered {registered.name} v{registered.version}: {promoted} ({registered.reason})"
        )
    if metrics.get("timed_out"):
        print(f"stopped at the time limit (--timeout) after epoch {int(metrics['epoch']) + 1}")
    if grid:
        print(f"sample grid: {grid}")


def cmd_train(args) -> int:
    from .runtime import ProgressChannel
    from .train import run_training

    spec = build_spec(args)
    data = _prepare(spec, args.address)
    _start_ray(args)
    progress = ProgressChannel()
    try:
        out = run_training(spec, data=data, progress=progress)
    finally:
        progress.close()
    _print_outcome("trained", spec.family, out.metrics, out.registered, out.grid_path)
    print(f"mlflow run: {out.run_id}")
    print(f"training workers ran on nodes: {','.join(json.loads(out.metrics['worker_nodes']))}")
    return 0


def cmd_tune(args) -> int:
    from .runtime import ProgressChannel
    from .tune import run_tuning

    spec = build_spec(args)
    if spec.labels_per_class is not None:
        raise CLIError(
            f"labels_per_class={spec.labels_per_class}: tune selects trials on validation "
            "scores, which a run with a label budget must not use; train with a fixed schedule"
        )
    if args.num_samples < 1:
        raise CLIError(f"bad value {args.num_samples} for --num-samples (must be >= 1)")
    if not {k for k in genmodels.family_class(spec.family).search_space if k not in spec.model}:
        raise CLIError(f"{spec.family}: nothing to tune (its search space is fixed by --set)")
    data = _prepare(spec, args.address)
    _start_ray(args)
    progress = ProgressChannel()
    try:
        out = run_tuning(spec, num_samples=args.num_samples, data=data, progress=progress)
    finally:
        progress.close()
    _print_outcome("tuned", spec.family, {**out.best_metrics, "method": out.method}, out.registered)
    print(f"best config: {json.dumps(out.best_config, default=str)}")
    return 0


def _load(args, uri: str):
    from . import registry

    try:
        return registry.load_version(uri, args.model, args.ref)
    except registry.NotFoundError as e:
        raise CLIError(str(e)) from None


def _evaluation_data(args, info: dict):
    """The dataset to score: by default the version's own split, rebuilt exactly from its
    recorded preprocessing (source, binarisation, seed, ``limit``, split sizes) and refused if
    its fingerprint differs; with ``--dataset``, that data with the recorded binarisation and
    seed (its default split)."""
    from .data import prepare_dataset

    meta = info["meta"]
    prep = meta.get("preprocessing", {})
    how = {"binarize": prep.get("binarize", "fixed"), "seed": int(prep.get("seed", 0))}
    if args.dataset is not None:
        return prepare_dataset(args.dataset, **how)
    source = meta.get("source") or meta["dataset"]
    sizes = prep.get("split_sizes") or {}
    if "validation" in sizes and "test" in sizes:
        how["split_sizes"] = (int(sizes["validation"]), int(sizes["test"]))
    if prep.get("labels"):  # a label budget: the same draw, so the same fingerprint
        how["labels_per_class"] = int(prep["labels"]["per_class"])
    name = f"{args.model} v{info['version']}"
    try:
        data = prepare_dataset(source, limit=prep.get("limit"), **how)
    except ValueError as e:
        raise CLIError(
            f"cannot rebuild the data {name} was trained on from {source!r}: {e} "
            "(pass --dataset to evaluate on other data)"
        ) from None
    if meta.get("fingerprint") and data.fingerprint != meta["fingerprint"]:
        raise CLIError(
            f"the data at {source!r} is not what {name} was trained on (fingerprint "
            f"{data.fingerprint} != {meta['fingerprint']}): it changed since; pass --dataset "
            "to evaluate on it anyway"
        )
    return data


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_split

    if args.parzen is not None and args.parzen < 2:
        raise CLIError(f"bad value {args.parzen} for --parzen (the number of Parzen samples, >= 2)")
    model, info = _load(args, _registry_uri(args))
    if model.likelihood == "none" and not (args.parzen or args.yardstick):
        raise CLIError(
            f"{args.model} ({model.family}) has no likelihood: use --yardstick (sample quality) "
            "or --parzen N (the papers' Parzen-window estimate)"
        )
    prepared = _evaluation_data(args, info)
    _start_ray(args)
    data = prepared.to_ray()
    head = {"model": args.model, "version": info["version"], "split": args.split}
    if args.parzen:
        from .evaluate import parzen_split

        res = parzen_split(model, data, args.parzen, args.split, seed=args.seed, progress=True)
        res.pop("val_scores", None)
        print(json.dumps({**head, **res}, default=float))
        return 0
    if args.yardstick:
        from .quality import yardstick_for

        yardstick = yardstick_for(data)
        if yardstick is None:
            raise CLIError(f"dataset {data.name!r} has no labels: no yardstick classifier")
        if args.split not in yardstick.reference:
            raise CLIError(f"bad value {args.split!r} for --split with --yardstick")
        quality, _ = yardstick.evaluate(model, args.split, seed=args.seed)
        print(json.dumps({**head, **quality, "method": yardstick.method}))
        return 0
    res = evaluate_split(model, data, args.split, seed=args.seed, progress=True)
    print(json.dumps({**head, **res}))
    return 0


SAMPLE_FORMATS = {".png": "PNG grid", ".jpg": "JPEG grid", ".jpeg": "JPEG grid", ".npy": "array"}


def cmd_sample(args) -> int:
    import torch

    from .images import save_grid

    suffix = Path(args.out).suffix.lower()
    if suffix not in SAMPLE_FORMATS:
        raise CLIError(
            f"bad value {args.out!r} for --out: give a .png or .jpg file (a picture of the "
            "samples) or a .npy file (the samples as an array)"
        )
    labels = _parse_labels(args.label) if args.label is not None else None
    if labels is not None and args.caption is not None:
        raise CLIError("give --label or --caption, not both")
    psi = args.temperature
    if psi is not None and not 0.0 <= psi < float("inf"):
        raise CLIError(f"bad value {psi} for --temperature (a number >= 0; 1 = the model's own)")
    model, info = _load(args, _registry_uri(args))
    if psi is not None:  # sampling only: the weights and every other method are unchanged
        if not hasattr(model.config, "latent_temperature"):
            raise CLIError(
                f"{args.model} v{info['version']} ({model.family}) has no latent temperature "
                "(gan, vae and captionvae have): drop --temperature"
            )
        genmodels.set_latent_temperature(model, psi)
    if not 1 <= args.n <= model.sample_limit:
        raise CLIError(f"bad value {args.n} for --n (1..{model.sample_limit} for {model.family})")
    if labels is not None and "condition:label" not in model.capabilities:
        raise CLIError(
            f"{args.model} v{info['version']} is not label-conditional (no condition:label "
            f"capability; it has: {', '.join(sorted(model.capabilities))}): drop --label"
        )
    if args.caption is not None and "condition:caption" not in model.capabilities:
        raise CLIError(
            f"{args.model} v{info['version']} is not caption-conditional (no condition:caption "
            f"capability; it has: {', '.join(sorted(model.capabilities))}): drop --caption"
        )
    rows = None
    if labels is not None:  # one label for every sample, or a list repeated in turn
        rows = torch.tensor([labels[i % len(labels)] for i in range(args.n)], dtype=torch.long)
        model.check_condition({"label": rows})
    key = "label"
    if args.caption is not None:  # one caption for every sample; the model checks its words
        key, rows = "caption", [args.caption] * args.n  # (a ValueError: exit 2, nothing written)
    from tqdm import tqdm

    g, chunks = torch.Generator().manual_seed(args.seed), []
    with torch.no_grad(), tqdm(total=args.n, desc=f"sampling {args.model}", unit="sample") as bar:
        for start in range(0, args.n, 16):  # chunks, so slow sequential samplers show progress
            m = min(16, args.n - start)
            cond = None if rows is None else {key: rows[start : start + m]}
            chunks.append(model.sample(m, generator=g, condition=cond))
            bar.update(len(chunks[-1]))
    x = torch.cat(chunks)
    if suffix == ".npy":
        import numpy as np

        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, x.numpy(), allow_pickle=False)
    else:
        path = save_grid(x.numpy(), model.input_shape, model.levels, args.out)
    given = "" if labels is None else f" given label {','.join(map(str, labels))}"
    if args.caption is not None:
        given = f" given caption {args.caption!r}"
    if psi is not None:
        given += f" at latent temperature {psi:g}"
    print(
        f"{args.n} samples of {args.model} v{info['version']}{given} written to {path} "
        f"({SAMPLE_FORMATS[suffix]})"
    )
    return 0


def _parse_labels(text: str) -> list[int]:
    """``--label``: one class (``3``) or a comma list (``1,2,5``) of integers."""
    try:
        labels = [int(v) for v in text.split(",")]
    except ValueError:
        raise CLIError(
            f"bad value {text!r} for --label (a class number, or a comma list such as 1,2,5)"
        ) from None
    return labels


def cmd_serve(args) -> int:
    from . import serve

    uri = _registry_uri(args)
    key = None
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as e:
            raise CLIError(
                f"cannot read --api-key-file {args.api_key_file}: {e.strerror}"
            ) from None
        if not key:
            raise CLIError(f"--api-key-file {args.api_key_file} is empty")
    key = key or os.environ.get(serve.API_KEY_ENV)
    if not key and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise CLIError(
            f"--host {args.host} without an API key: give --api-key-file FILE or set "
            f"{serve.API_KEY_ENV} (clients then send 'Authorization: Bearer <key>')"
        )
    check_port_free(args.host, args.port)
    _start_ray(args)
    url = serve.start(uri, host=args.host, port=args.port, api_key=key)
    auth = "API key required" if key else "no API key: open to local clients"
    print(f"serving at {url} (GET {url}/v1/models; {auth}); Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def cmd_submit(args) -> int:
    from .submit import SubmitError, submit_job

    rest = [a for a in args.rest if a != "--"]
    if not rest:
        raise CLIError("nothing to submit: give a genmodels command after --, e.g. -- train ...")
    entrypoint = " ".join(["python -m pipelines.cli", *map(_quote, rest)])
    try:
        out = submit_job(
            args.address,
            entrypoint,
            token_file=args.token_file,
            follow=not args.no_wait,
            timeout_s=args.timeout,
        )
    except SubmitError as e:
        raise CLIError(str(e)) from None
    print(f"job {out.job_id}: {out.status}")
    return 0 if out.status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def cmd_demo(args) -> int:
    from .demo import run_demo

    for flag, value in (("--workers", args.workers), ("--epochs", args.epochs)):
        if value < 1:
            raise CLIError(f"bad value {value} for {flag} (must be >= 1)")
    check_port_free("127.0.0.1", args.port)
    return run_demo(epochs=args.epochs, port=args.port, workers=args.workers, verbose=args.verbose)


# ------------------------------------------------------------------------------ parser
def add_registry_option(sp: argparse.ArgumentParser) -> None:
    """``--tracking-uri``: which MLflow registry a command uses."""
    sp.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI or "
        "sqlite:///./mlflow.db, made absolute)",
    )


def add_model_options(sp: argparse.ArgumentParser) -> None:
    """``--model/--ref/--seed``: which registered version a command reads."""
    sp.add_argument(
        "--model", required=True, metavar="NAME", help="registered model name, e.g. made-mnist"
    )
    sp.add_argument(
        "--ref",
        default="champion",
        help="an alias or a version number of the model (default: champion)",
    )
    sp.add_argument("--seed", type=int, default=0, help="random seed of sampling/scoring (0)")


def add_ray_options(sp: argparse.ArgumentParser, address: bool = True) -> None:
    """``--address/--verbose``: which Ray a command starts or joins, and how loud it is."""
    if address:
        sp.add_argument(
            "--address",
            help="Ray cluster address (default: $RAY_ADDRESS, else a new local Ray)",
        )
    sp.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own logs and worker output on the console (default: only in Ray's "
        "log directory, printed at start)",
    )


def add_training_options(sp: argparse.ArgumentParser, *, tune: bool = False) -> None:
    """The options of ``train`` and ``tune``."""
    sp.add_argument(
        "--family", metavar="NAME", help="the family to train (see `genmodels families`)"
    )
    sp.add_argument(
        "--dataset",
        metavar="NAME|PATH",
        help="mnist (default), digits, or your data: an image folder (subfolders = classes), "
        ".npz/.npy, Parquet, IDX; 'images:PATH' etc. forces the type. A path registers as "
        "<family>-<folder or file stem>",
    )
    sp.add_argument("--epochs", type=int, help="at most this many epochs (early stopping decides)")
    sp.add_argument(
        "--workers",
        type=int,
        help="Ray Train workers" + (" per trial" if tune else "") + " (default 2)",
    )
    sp.add_argument(
        "--config",
        metavar="FILE",
        help="YAML/JSON of settings: TrainSpec fields and a `model:` mapping",
    )
    sp.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a setting (repeatable; wins over --config): e.g. epochs=5, limit=600, "
        "binarize=dynamic, use_gpu=true, registered_name=NAME, model.lr=1e-3, "
        "labels_per_class=10 (keep 10 train labels per class; the run keeps its final epoch)",
    )
    sp.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"time limit of the {'search' if tune else 'run'}: training stops at the first "
        "epoch end past it and the best weights so far are tested and registered; a run still "
        f"going {HARD_STOP_GRACE_S / 60:g} min later is abandoned with an error (default "
        f"{DEFAULT_TIMEOUT_S:g} s = {DEFAULT_TIMEOUT_S / 3600:g} h; 0: no limit)",
    )
    if tune:
        sp.add_argument(
            "--num-samples", type=int, default=4, help="trials to run (default 4), ASHA-stopped"
        )
    add_registry_option(sp)
    add_ray_options(sp)


def _version() -> str:
    return f"genmodels {genmodels.__version__}"


def make_parser() -> argparse.ArgumentParser:
    """The ``genmodels`` parser; each subcommand's options come from the ``add_*`` helpers."""
    p = argparse.ArgumentParser(
        prog="genmodels",
        description="Train (Ray Train), tune (Ray Tune), register (MLflow) and serve (Ray Serve) "
        "generative models. `genmodels COMMAND --help` explains each command's options.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn, help: str, description: str | None = None):
        sp = sub.add_parser(name, help=help, description=description or help)
        sp.set_defaults(fn=fn)
        return sp

    command("families", cmd_families, "list the families")
    sp = command(
        "models",
        cmd_models,
        "list the registry's models: versions, aliases and their metrics (like GET /v1/models)",
    )
    add_registry_option(sp)
    sp.add_argument("--json", action="store_true", help="print JSON instead of lines")

    sp = command("train", cmd_train, "train a family with Ray Train and register it in MLflow")
    add_training_options(sp)
    sp = command("tune", cmd_tune, "search a family's hyper-parameters with Ray Tune (ASHA)")
    add_training_options(sp, tune=True)

    sp = command(
        "evaluate",
        cmd_evaluate,
        "score a registered model on a split of the data it was trained on",
        "Score a registered model. By default its own data: the split is rebuilt exactly from "
        "the version's recorded preprocessing (limit, split sizes, seed, binarisation), and "
        "refused if the data changed since training.",
    )
    add_model_options(sp)
    sp.add_argument(
        "--dataset",
        metavar="NAME|PATH",
        help="score on this data instead (its default split; the recorded binarisation and "
        "seed); default: the version's own data",
    )
    sp.add_argument(
        "--split",
        default="test",
        choices=["train", "validation", "test"],
        help="which split (default test)",
    )
    how = sp.add_mutually_exclusive_group()
    how.add_argument(
        "--yardstick", action="store_true", help="sample quality (FD, confidence, coverage)"
    )
    how.add_argument(
        "--parzen",
        type=int,
        metavar="N",
        help="Parzen-window estimate from N samples (labelled; not the model's likelihood)",
    )
    add_registry_option(sp)
    add_ray_options(sp, address=False)

    sp = command("sample", cmd_sample, "draw samples from a registered model")
    add_model_options(sp)
    sp.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sp.add_argument(
        "--out",
        default="samples.png",
        metavar="FILE",
        help="where to write them: .png or .jpg (a grid picture) or .npy (an array); "
        "default samples.png",
    )
    sp.add_argument(
        "--label",
        metavar="Y[,Y...]",
        help="a label-conditional model's class for every sample, or a comma list used in turn "
        "(1,2 gives 1,2,1,2,...)",
    )
    sp.add_argument(
        "--caption",
        metavar="TEXT",
        help='a caption-conditional model\'s caption for every sample, e.g. "3 left of 7"',
    )
    sp.add_argument(
        "--temperature",
        type=float,
        metavar="PSI",
        help="latent temperature: codes z ~ N(0, PSI^2 I) (gan, vae, captionvae; default the "
        "model's, 1 unless trained otherwise); below 1 trades diversity for fidelity",
    )
    add_registry_option(sp)

    from .uses import add_use_commands

    add_use_commands(command, add_model_options, add_registry_option)

    sp = command("serve", cmd_serve, "serve the registry over HTTP with Ray Serve")
    sp.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    sp.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="clients must send 'Authorization: Bearer <key>' with the key in FILE (default: "
        "$GENMODELS_API_KEY; none: open, allowed on 127.0.0.1 only)",
    )
    add_registry_option(sp)
    add_ray_options(sp)

    sp = command("submit", cmd_submit, "run a genmodels command as a Ray job on a cluster")
    sp.add_argument("--address", required=True, help="dashboard URL, e.g. http://HOST:8265")
    sp.add_argument("--token-file", metavar="FILE", help="the cluster's auth token file")
    sp.add_argument("--no-wait", action="store_true", help="submit and return; do not follow")
    sp.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop following after this long"
    )
    sp.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="the genmodels command to run, after --",
    )

    sp = command(
        "demo",
        cmd_demo,
        "train, register, serve and query MADE and VAE on MNIST (about 5 minutes on 2 cores)",
    )
    sp.add_argument(
        "--epochs", type=int, default=60, help="at most (default 60); early stopping decides"
    )
    sp.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    sp.add_argument("--port", type=int, default=8000, help="Serve's HTTP port (default 8000)")
    add_ray_options(sp, address=False)
    return p


def _one_line(e: BaseException) -> str:
    """An exception as the one line a user reads (a KeyError's message without quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 on success, 2 for a user error, 1 for a failed run (one line each)."""
    from . import registry
    from .runtime import RunTimeout

    args = make_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    quiet_logging(verbose)
    try:
        return args.fn(args)
    except CLIError as e:
        print(f"genmodels {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if verbose:
            raise
        print(f"genmodels {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, registry.NotFoundError) as e:
        if verbose:
            raise
        print(f"genmodels {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (RunTimeout, registry.RegistryError) as e:
        print(f"genmodels {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        if verbose:
            raise
        from .runtime import ray_log_dir

        logs = ray_log_dir()
        print(
            f"genmodels {args.command}: error: {type(e).__name__}: {_one_line(e)[:2000]}"
            + (f" (Ray logs: {logs}; --verbose for the traceback)" if logs else ""),
            file=sys.stderr,
        )
        return 1


def run_and_exit() -> None:
    """``python -m pipelines.cli`` (how cluster jobs run it): exit with ``main``'s status as
    soon as it returns. A Ray job's driver that trained on a multi-node cluster was seen to
    finish its work, print its last line and then hang at interpreter exit until the job's
    time-out (Ray's exit hooks waiting on a remote cluster); everything the command writes is
    done and flushed by then, so the process exits directly."""
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    run_and_exit()
