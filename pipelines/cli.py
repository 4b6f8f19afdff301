"""``genmodels``: the command line of the pipeline.

    genmodels families
    genmodels train    --family made --dataset mnist [--config FILE] [--set KEY=VALUE ...]
    genmodels tune     --family vae  --dataset mnist --num-samples 8
    genmodels evaluate --model made-mnist [--ref champion] [--split test]
    genmodels sample   --model made-mnist --n 64 --out samples.png
    genmodels serve    [--port 8000]
    genmodels submit   --address http://HOST:8265 [--token-file F] -- train --family made ...
    genmodels demo

Config precedence: the family's defaults < ``--config`` (YAML/JSON with TrainSpec fields and a
``model:`` mapping) < ``--set`` (``epochs=5``, ``model.hidden_sizes=[500]``; values are YAML).
An unknown key or a bad value exits with status 2 and a message naming it.
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
from .train import TrainSpec


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
    _check_dataset(spec.dataset)
    return spec


def _check_dataset(source: str) -> None:
    """Fail before Ray starts when the dataset is neither a known name nor a path/URI."""
    from .data import dataset_names

    if source in dataset_names() or ":" in source or Path(source).expanduser().exists():
        return
    raise CLIError(
        f"unknown dataset {source!r}: not one of {', '.join(dataset_names())} "
        "and no such file or directory"
    )


def init_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:  # a local Ray; the dashboard stays on (Tune's trial clean-up needs the State API)
        ray.init(include_dashboard=True, log_to_driver=True)


# ------------------------------------------------------------------------------ commands
def cmd_families(args) -> int:
    print(f"{'family':<10} {'likelihood':<10} {'data':<16} capabilities")
    for name in genmodels.families():
        cls = genmodels.family_class(name)
        caps = ", ".join(sorted(cls.capabilities)) or "-"
        print(f"{name:<10} {cls.likelihood:<10} {'/'.join(cls.data_kinds):<16} {caps}")
    return 0


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
    if grid:
        print(f"sample grid: {grid}")


def cmd_train(args) -> int:
    from .train import run_training

    spec = build_spec(args)
    init_ray(args.address)
    out = run_training(spec)
    _print_outcome("trained", spec.family, out.metrics, out.registered, out.grid_path)
    print(f"mlflow run: {out.run_id}")
    print(f"training workers ran on nodes: {','.join(json.loads(out.metrics['worker_nodes']))}")
    return 0


def cmd_tune(args) -> int:
    from .tune import run_tuning

    spec = build_spec(args)
    if args.num_samples < 1:
        raise CLIError(f"bad value {args.num_samples} for --num-samples (must be >= 1)")
    init_ray(args.address)
    out = run_tuning(spec, num_samples=args.num_samples)
    _print_outcome("tuned", spec.family, out.best_metrics, out.registered)
    print(f"best config: {json.dumps(out.best_config, default=str)}")
    return 0


def _load(args):
    from . import registry

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        return registry.load_version(uri, args.model, args.ref)
    except registry.NotFoundError as e:
        raise CLIError(str(e)) from None


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate_split

    model, info = _load(args)
    meta = info["meta"]
    prep = meta.get("preprocessing", {})
    data = load_dataset(
        args.dataset or meta["dataset"],
        binarize=prep.get("binarize", "fixed"),
        seed=int(prep.get("seed", 0)),
    )
    if args.dataset is None and data.fingerprint != meta.get("fingerprint"):
        print("warning: the dataset's fingerprint differs from the one the model was trained on")
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
    if model.likelihood == "none":
        raise CLIError(
            f"{args.model} ({model.family}) has no likelihood: use --yardstick (sample quality) "
            "or --parzen N (the papers' Parzen-window estimate)"
        )
    res = evaluate_split(model, data, args.split, seed=args.seed, progress=True)
    print(json.dumps({**head, **res}))
    return 0


def cmd_sample(args) -> int:
    import torch

    from .images import save_grid

    model, info = _load(args)
    if not 1 <= args.n <= model.sample_limit:
        raise CLIError(f"bad value {args.n} for --n (1..{model.sample_limit} for {model.family})")
    from tqdm import tqdm

    g, chunks = torch.Generator().manual_seed(args.seed), []
    with torch.no_grad(), tqdm(total=args.n, desc=f"sampling {args.model}", unit="sample") as bar:
        for start in range(0, args.n, 16):  # chunks, so slow sequential samplers show progress
            chunks.append(model.sample(min(16, args.n - start), generator=g))
            bar.update(len(chunks[-1]))
    x = torch.cat(chunks)
    if args.out.endswith(".png"):
        path = save_grid(x.numpy(), model.input_shape, model.levels, args.out)
    else:
        import numpy as np

        np.save(args.out, x.numpy())
        path = Path(args.out)
    print(f"{args.n} samples of {args.model} v{info['version']} written to {path}")
    return 0


def cmd_serve(args) -> int:
    from . import serve

    init_ray(args.address)
    url = serve.start(resolve_tracking_uri(args.tracking_uri), host=args.host, port=args.port)
    print(f"serving at {url} (GET {url}/v1/models); Ctrl-C to stop")
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

    return run_demo(epochs=args.epochs, port=args.port, workers=args.workers)


# ------------------------------------------------------------------------------ parser
def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genmodels", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model_ref: bool = False):
        sp.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///./mlflow.db)")
        if model_ref:
            sp.add_argument("--model", required=True, help="registered name, e.g. made-mnist")
            sp.add_argument("--ref", default="champion", help="alias or version number")
            sp.add_argument("--seed", type=int, default=0)

    sub.add_parser("families", help="list the registered families").set_defaults(fn=cmd_families)
    for name, fn in (("train", cmd_train), ("tune", cmd_tune)):
        sp = sub.add_parser(name, help=f"{name} a family with Ray")
        common(sp)
        sp.add_argument("--family")
        sp.add_argument("--dataset")
        sp.add_argument("--epochs", type=int)
        sp.add_argument("--workers", type=int)
        sp.add_argument("--config", help="YAML/JSON file of settings")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE")
        sp.add_argument("--address", help="Ray address (default: a local Ray)")
        if name == "tune":
            sp.add_argument("--num-samples", type=int, default=4)
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("evaluate", help="score a registered model on a dataset split")
    common(sp, model_ref=True)
    sp.add_argument("--dataset", help="default: the dataset it was trained on")
    sp.add_argument("--split", default="test", choices=["train", "validation", "test"])
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
    sp.set_defaults(fn=cmd_evaluate)
    sp = sub.add_parser("sample", help="draw samples from a registered model")
    common(sp, model_ref=True)
    sp.add_argument("--n", type=int, default=64)
    sp.add_argument("--out", default="samples.png", help=".png grid or .npy array")
    sp.set_defaults(fn=cmd_sample)
    sp = sub.add_parser("serve", help="deploy the Ray Serve app over the registry")
    common(sp)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--address")
    sp.set_defaults(fn=cmd_serve)
    sp = sub.add_parser("submit", help="run a genmodels command as a Ray job on a cluster")
    sp.add_argument("--address", required=True, help="dashboard URL, e.g. http://HOST:8265")
    sp.add_argument("--token-file", help="the cluster's auth token file")
    sp.add_argument("--no-wait", action="store_true")
    sp.add_argument("--timeout", type=float)
    sp.add_argument("rest", nargs=argparse.REMAINDER)
    sp.set_defaults(fn=cmd_submit)
    sp = sub.add_parser("demo", help="train, register, serve and query MADE and VAE on MNIST")
    sp.add_argument("--epochs", type=int, default=60, help="at most; early stopping decides")
    sp.add_argument("--workers", type=int, default=2)
    sp.add_argument("--port", type=int, default=8000)
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CLIError as e:
        print(f"genmodels {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"genmodels {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
