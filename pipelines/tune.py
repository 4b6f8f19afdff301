"""Hyper-parameter search with Ray Tune over a family's declared search space.

Ray 2.5x+ no longer accepts ``Tuner(TorchTrainer)``: each trial is a small *driver function*
(a tiny CPU share) that builds a ``TorchTrainer`` whose ``RunConfig`` carries Tune's
``TuneReportCallback``, so every epoch's validation metric reaches Tune and ASHA can stop poor
trials early. Every trial is an MLflow run nested under one parent run; the best trial (highest
``best_val_score``: the validation log-likelihood, or minus the yardstick's FD for a family
without one) is scored on the test split and registered like a plain training run.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import genmodels
from genmodels.base import SearchSpec

from . import registry
from .train import (
    HARD_STOP_GRACE_S,
    TrainSpec,
    build_trainer,
    load_best_from_checkpoint,
    plan_resources,
    register_trained,
)

METRIC = "best_val_score"


def to_tune_space(space: dict[str, SearchSpec]) -> dict[str, Any]:
    """Map a family's Ray-free ``SearchSpec``s to Ray Tune distributions."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, s in space.items():
        if s.kind == "choice":
            out[key] = tune.choice(list(s.values))
        elif s.kind == "uniform":
            out[key] = tune.uniform(s.low, s.high)
        elif s.kind == "loguniform":
            out[key] = tune.loguniform(s.low, s.high)
        elif s.kind == "randint":
            out[key] = tune.randint(int(s.low), int(s.high))
        else:
            raise ValueError(f"unknown search kind {s.kind!r} for {key!r}")
    return out


@dataclass
class TuneOutcome:
    parent_run_id: str
    best_run_id: str
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    trials: list[dict[str, Any]]
    registered: registry.Registered | None
    method: str = ""  # how the best model's likelihood (or sample quality) was measured


def _trial(
    config: dict[str, Any],
    spec_dict: dict,
    data,
    parent_run_id: str,
    exp_id: str,
    yardstick=None,
    progress=None,
):
    """One Tune trial: a nested MLflow run and a TorchTrainer reporting to Tune (its epoch
    lines, prefixed with the trial's name, go to ``progress``)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = TrainSpec(**spec_dict)
    spec.model = {**spec.model, **config}
    trial_name = tune.get_context().get_trial_name()
    client = registry.client(spec.tracking_uri)
    run = client.create_run(
        exp_id, run_name=trial_name, tags={"mlflow.parentRunId": parent_run_id, "trial": trial_name}
    )
    for key, value in config.items():
        client.log_param(run.info.run_id, f"model.{key}", str(value))
    trainer = build_trainer(
        spec,
        data,
        run.info.run_id,
        spec.tracking_uri,
        yardstick,
        progress=progress,
        prefix=f"[{spec.family} trial {trial_name.rsplit('_', 1)[-1]}]",
        name=f"{trial_name}-{run.info.run_id[:8]}",
        callbacks=[TuneReportCallback()],
    )
    try:
        trainer.fit()
    except Exception:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def run_tuning(
    spec: TrainSpec, num_samples: int = 4, grace_period: int = 1, data=None, progress=None
) -> TuneOutcome:
    """Search ``spec.family``'s space with ASHA; register the best trial's model.

    ``data``: the dataset already prepared (``prepare_data``) or loaded, else read here;
    ``progress``: a ``pipelines.runtime.ProgressChannel`` for the trials' epoch lines. The search
    gets ``spec.timeout_s`` (Tune's ``time_budget_s``: trials still running then are stopped and
    the best checkpoint so far wins; each trial's workers also stop at the first epoch end past
    it), and an error if it still runs ``HARD_STOP_GRACE_S`` later.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .evaluate import evaluate_split
    from .runtime import run_bounded
    from .train import check_resources, prepare_data, registered_name

    spec.validate()
    if spec.labels_per_class is not None:  # trials are chosen on validation scores
        raise ValueError(
            f"labels_per_class={spec.labels_per_class}: a run with a label budget selects on "
            "nothing (see pipelines.train.selection_rule); tune cannot, train instead"
        )
    if num_samples < 1:
        raise ValueError(f"bad value {num_samples!r} for 'num_samples'")
    tracking_uri = registry.resolve_tracking_uri(spec.tracking_uri)
    spec = dataclasses.replace(spec, tracking_uri=tracking_uri, grid_samples=0)
    cls = genmodels.family_class(spec.family)
    space = {k: v for k, v in cls.search_space.items() if k not in spec.model}
    if not space:
        raise ValueError(f"{spec.family}: nothing to tune (its search space is fixed by --set)")
    if data is None:
        data = prepare_data(spec)
    if hasattr(data, "to_ray"):
        data = data.to_ray()
    check_resources(spec, ray.cluster_resources())
    if spec.register:
        registry.check_name(
            tracking_uri, registered_name(spec, data), data.source_fingerprint, data.source
        )
    exp_id = registry.ensure_experiment(tracking_uri, spec.experiment)
    client = registry.client(tracking_uri)
    name = spec.run_name or f"tune-{spec.family}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = client.create_run(exp_id, run_name=name, tags={"family": spec.family, "kind": "tune"})
    parent_id = parent.info.run_id
    client.set_tag(parent_id, "dataset_fingerprint", data.fingerprint)
    yardstick = None
    if spec.yardstick:
        from .quality import yardstick_for

        yardstick = yardstick_for(data, seed=spec.seed, max_reference=spec.yardstick_samples)

    cpus, _ = plan_resources(spec, ray.cluster_resources().get("CPU", 1.0))
    per_trial = cpus * spec.num_workers
    concurrent = max(1, math.floor((ray.cluster_resources().get("CPU", 1.0) - 0.5) / per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            spec_dict=dataclasses.asdict(spec),
            data=data,
            parent_run_id=parent_id,
            exp_id=exp_id,
            yardstick=yardstick,
            progress=progress,
        ),
        {"cpu": 0.01},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=num_samples,
            max_concurrent_trials=concurrent,
            time_budget_s=spec.timeout_s or None,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=spec.epochs + 1,  # +1: the final (test) report
                grace_period=grace_period,
                reduction_factor=2,
            ),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(spec.storage_path).expanduser().resolve()),
            verbose=0,  # no status tables: the trials' epoch lines are the progress
        ),
    )
    try:
        results = run_bounded(
            tuner.fit,
            timeout_s=(spec.timeout_s + HARD_STOP_GRACE_S) if spec.timeout_s else None,
            what=f"tuning {name}",
            progress=progress,
        )
    except Exception:
        client.set_terminated(parent_id, status="FAILED")
        raise
    trials = []
    for r in results:
        m = r.metrics or {}
        trials.append(
            {
                "config": r.config,
                "metric": m.get(METRIC),
                "checkpoint_path": m.get("checkpoint_path"),
                "finished": "method" in m,
                "error": str(r.error) if r.error else None,
            }
        )
    scored = [t for t in trials if t["metric"] is not None and t["checkpoint_path"]]
    if not scored:
        client.set_terminated(parent_id, status="FAILED")
        raise RuntimeError(
            f"no trial of {name} reported a checkpoint; errors: "
            f"{[t['error'] for t in trials if t['error']]}"
        )
    best = max(scored, key=lambda t: t["metric"])
    from ray.train import Checkpoint

    model, _ = load_best_from_checkpoint(Checkpoint(best["checkpoint_path"]))
    model.prepare_scoring(torch.Generator().manual_seed(spec.seed + 4343), final=True)
    metrics: dict[str, float] = {"val_score": float(best["metric"])}
    method = yardstick.method if yardstick is not None else "none"
    if model.likelihood != "none":
        test = evaluate_split(model, data, "test", seed=spec.seed + 999)
        val = evaluate_split(model, data, "validation", seed=spec.seed + 12345)
        method = test["method"]
        metrics.update(
            val_score=val["log_prob"],
            val_log_prob=val["log_prob"],
            test_log_prob=test["log_prob"],
            test_bpd=test["bpd"],
            test_stderr=test["stderr"],
        )
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = None
        if yardstick is not None:
            quality, samples = yardstick.evaluate(model, "test", seed=spec.seed + 999)
            metrics.update(quality)
            np.save(Path(tmp) / "yardstick_samples.npy", samples, allow_pickle=False)
            artifacts = {"yardstick_samples": str(Path(tmp) / "yardstick_samples.npy")}
        for key, value in metrics.items():
            client.log_metric(parent_id, key, float(value))
        for key, value in best["config"].items():
            client.log_param(parent_id, f"best.{key}", str(value))
        registered = register_trained(
            spec, data, parent_id, model, method, metrics, artifacts, yardstick
        )
    client.set_terminated(parent_id, status="FINISHED")
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    best_run = next(
        (
            r.info.run_id
            for r in runs
            if r.data.params and _same_config(r.data.params, best["config"])
        ),
        parent_id,
    )
    return TuneOutcome(parent_id, best_run, best["config"], metrics, trials, registered, method)


def _same_config(params: dict[str, str], config: dict[str, Any]) -> bool:
    return all(params.get(f"model.{k}") == str(v) for k, v in config.items())
