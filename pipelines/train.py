"""Train any family with Ray Train (V2 API): N CPU or GPU workers, data streamed from Ray Data.

The driver (``run_training``) loads the dataset, opens an MLflow run, fits a ``TorchTrainer``
and registers the best model. Each worker runs ``train_loop``:

* data: the fit's splits are made once (``data.training_splits``: materialised in Ray's object
  store when they fit ``data.CACHE_BYTES``) and streamed to the workers by Ray Data every epoch,
  whole blocks at a time, cut into batches in the worker (``_batches``, ``data.rebatch``); the
  train split is shuffled in windows of ``data.shuffle_rows`` rows, seeded per epoch and rank;
  each epoch's pass is opened ahead (``_EarlyPass``: during the previous epoch's validation and
  report), so no epoch waits for Ray Data to start one; a single worker reads its splits whole
  and in order (no streaming split: its block order depends on timing), so a seed repeats;
* the model is built identically on every rank (same seed), wrapped in DDP
  (``ray.train.torch.prepare_model``), and every phase the family declares is stepped in order
  with its own optimiser (``model(batch, phase=p)["loss"]``);
* every epoch: the validation log-likelihood (all-reduced over ranks), early stopping on it
  with ``patience``, the best weights kept (the rule: ``selection_rule``; a run with a label
  budget, ``labels_per_class``, selects nothing and keeps the final epoch), and a checkpoint
  holding the model, the optimisers, the epoch, the early-stopping state and, per rank, the RNG
  state and the family's ``rank_state()`` (``rank<r>.pt``; Ray merges every rank's files into
  one checkpoint directory). After a worker failure Ray restarts the group (``FailureConfig``)
  and the loop resumes at the next epoch from the latest checkpoint;
* at the end: the test split scored once with the best weights (nats/example and bits/dim),
  and rank 0 logs a time-capped sample grid and the learning curve (PNGs) to MLflow.

CPU rule on small machines: Ray Data needs some CPU to stream while workers compute, so each
worker reserves ``(cluster CPUs - 0.5) / workers`` CPUs (fractional) and runs
``max(1, floor(that))`` torch threads; pass ``cpus_per_worker`` / ``torch_threads`` to override.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import genmodels

from . import registry
from .evaluate import accumulate_scores, summarise

DEFAULT_TIMEOUT_S = 12 * 3600.0  # train/tune --timeout default: 12 hours
# A run still unfinished this long after its timeout (its workers stop at the first epoch end
# past it) is abandoned with an error: it hangs, or one epoch takes longer than this.
HARD_STOP_GRACE_S = 600.0
_USER_START_TIMEOUT = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
# How often Ray Train's controller polls the workers. A worker's ``report`` blocks until the
# controller has taken its previous one (a queue of one), so at Ray's default (2 s) every epoch
# took at least 2 s: a 128-unit MADE's 1.1 s epochs waited ~0.9 s in each report (issue 16).
# A poll is one small actor call per worker; a poll that outlasts it is awaited at the next
# (a worker is declared dead only after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 min).
POLL_INTERVAL_S = 0.25
_USER_POLL_INTERVAL = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
# What the checkpoint's history keeps of each epoch (the learning curve and its timings).
_HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "val_score",
    "train_examples",
    "train_time_s",
    "train_cpu_s",
    "train_wait_s",
)


@dataclass
class TrainSpec:
    """Everything a training run needs; the CLI fills it from defaults, a file and --set."""

    family: str
    dataset: str = "mnist"
    binarize: str = "fixed"
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 100
    patience: int = 5
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    torch_threads: int | None = None
    seed: int = 0
    limit: int | None = None
    # Semi-supervised: keep N train labels per class (seeded draw), every other label -1; the run
    # then keeps its final epoch (no selection on validation data or the yardstick).
    labels_per_class: int | None = None
    max_steps_per_epoch: int | None = None
    tracking_uri: str | None = None
    experiment: str = "genmodels"
    storage_path: str = "outputs/ray_results"
    output_dir: str = "outputs"
    run_name: str | None = None
    max_failures: int = 1
    grid_samples: int = 64
    grid_time_s: float = 30.0
    yardstick: bool = True  # sample-quality yardstick (needs labels); selects "none" families
    yardstick_samples: int = 1000  # the most held-out examples it compares against (per split)
    register: bool = True
    registered_name: str | None = None
    sync_gradients: bool = True
    fail_at_epoch: int | None = None  # test hook: the last rank SIGKILLs itself once, mid-epoch
    fail_marker: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S  # the whole run (train: fit; tune: the search); 0 = none
    start_timeout_s: float = 120.0  # one attempt to start the worker group (Ray's default: 60)
    start_retries: int = 2  # further attempts after a worker group failed to start (Ray: inf)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the family config included)."""
        check_model_config(self.family, self.model)
        optional = lambda v, ok: v is None or ok(v)  # noqa: E731
        checks = {  # key: (ok, what a good value is)
            "epochs": (self.epochs >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "patience": (self.patience >= 1, ">= 1"),
            "num_workers": (self.num_workers >= 1, ">= 1"),
            "binarize": (self.binarize in ("fixed", "dynamic", "none"), "fixed, dynamic or none"),
            "max_failures": (self.max_failures >= 0, ">= 0"),
            "grid_samples": (self.grid_samples >= 0, ">= 0"),
            "grid_time_s": (self.grid_time_s >= 0, ">= 0"),
            "yardstick_samples": (self.yardstick_samples >= 2, ">= 2"),
            "seed": (self.seed >= 0, ">= 0"),
            "limit": (optional(self.limit, lambda v: v >= 3), ">= 3 rows"),
            "labels_per_class": (
                optional(
                    self.labels_per_class,
                    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                ),
                "an integer >= 1: labels kept per class",
            ),
            "max_steps_per_epoch": (optional(self.max_steps_per_epoch, lambda v: v >= 1), ">= 1"),
            "cpus_per_worker": (optional(self.cpus_per_worker, lambda v: v > 0), "> 0"),
            "torch_threads": (optional(self.torch_threads, lambda v: v >= 1), ">= 1"),
            "timeout_s": (self.timeout_s >= 0, ">= 0 seconds; 0: no limit"),
            "start_timeout_s": (self.start_timeout_s > 0, "> 0 seconds"),
            "start_retries": (self.start_retries >= 0, ">= 0"),
            "registered_name": (
                optional(self.registered_name, _valid_name),
                "letters, digits, _ and -",
            ),
        }
        for key, (ok, want) in checks.items():
            if not ok:
                raise ValueError(f"bad value {getattr(self, key)!r} for {key!r} (expected {want})")


def _valid_name(name: str) -> bool:
    """A registered-model name MLflow accepts and a path cannot escape from."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", name))


def check_model_config(family: str, model: dict[str, Any]):
    """The family's config with ``model``'s overrides, or ``ValueError`` naming a bad value.

    Beyond the family's own type checks: learning rates (``lr``, ``*_lr``) must be positive and
    ``weight_decay`` not negative — generic rules that hold for every family. Checks that need
    the data's shape (e.g. ``num_masks``) run in ``check_model``.
    """
    config = genmodels.make_config(family, model)  # unknown family/keys, types → clear errors
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if (f.name == "lr" or f.name.endswith("_lr")) and not value > 0:
            raise ValueError(f"{family}: bad value {value!r} for {f.name!r} (must be > 0)")
        if f.name == "weight_decay" and value < 0:
            raise ValueError(f"{family}: bad value {value!r} for {f.name!r} (must be >= 0)")
    return config


def check_model(spec: TrainSpec, input_shape, levels: int, columns=None) -> None:
    """Build the model and its optimisers once on the driver: whatever the family (or torch)
    refuses about the config or the data's shape raises ``ValueError`` here, before Ray starts,
    not in every worker. ``columns``: the data's ``batch_columns``, checked against the
    family's ``batch_keys`` (``check_batch_keys``)."""
    if columns is not None:
        check_batch_keys(spec.family, spec.dataset, columns)
    model = genmodels.build(spec.family, tuple(input_shape), levels, **spec.model)
    model.configure_optimizers()


def check_batch_keys(family: str, dataset: str, columns) -> None:
    """``ValueError`` naming every key of the family's ``batch_keys`` that the dataset's batches
    (``batch_columns``: name → (dtype, per-row shape)) lack, or, for an image (float32) column,
    whose shape is not ``x``'s."""
    needed = genmodels.family_class(family).batch_keys
    missing = [k for k in needed if k not in columns]
    if missing:
        raise ValueError(
            f"{family} trains on batch key(s) {', '.join(needed)}; dataset {dataset!r} has no "
            f"{', '.join(missing)} (its batches have {', '.join(columns)})"
            + ("; use a pair dataset, e.g. mnist-edge-paired" if "x_target" in missing else "")
            + ("; use a caption dataset, e.g. mnist-captions" if "caption" in missing else "")
        )
    shape = tuple(columns["x"][1])
    for k in needed:  # an image column (float) is x's shape; token ids are the family's to check
        if columns[k][0] == "float32" and tuple(columns[k][1]) != shape:
            raise ValueError(
                f"{family}: batch key {k!r} has rows of shape {tuple(columns[k][1])}, x has {shape}"
            )


class ResourceError(ValueError):
    """The run asks for resources the Ray cluster does not have."""


def check_resources(spec: TrainSpec, cluster: dict[str, float], *, concurrent: int = 1) -> None:
    """Fail fast (``ResourceError``) when ``concurrent`` runs of ``spec`` cannot fit ``cluster``
    (``ray.cluster_resources()``): Ray Train would otherwise wait for them and retry."""
    gpus = cluster.get("GPU", 0.0)
    if spec.use_gpu and gpus < spec.num_workers:
        raise ResourceError(
            f"use_gpu=true needs {spec.num_workers} GPU(s) (one per worker) but the Ray cluster "
            f"has {gpus:g}: drop --set use_gpu=true, lower --workers, or use a GPU cluster"
        )
    cpus = cluster.get("CPU", 0.0)
    per_worker, _ = plan_resources(spec, cpus)
    if per_worker * spec.num_workers > cpus + 1e-9:
        raise ResourceError(
            f"{spec.num_workers} worker(s) x {per_worker:g} CPUs do not fit the Ray cluster's "
            f"{cpus:g} CPUs: lower --workers or --set cpus_per_worker"
        )


@dataclass
class TrainOutcome:
    run_id: str
    metrics: dict[str, Any]
    checkpoint_path: str
    registered: registry.Registered | None
    grid_path: str | None
    curve_path: str | None


def plan_resources(spec: TrainSpec, cluster_cpus: float) -> tuple[float, int]:
    """CPUs per worker (fractional, leaving 0.5 CPU to Ray Data) and torch threads per worker."""
    cpus = spec.cpus_per_worker
    if cpus is None:
        cpus = max(0.1, (cluster_cpus - 0.5) / spec.num_workers)
        if spec.use_gpu:
            cpus = min(cpus, 4.0)
    threads = spec.torch_threads or max(1, math.floor(cpus))
    return round(cpus, 3), threads


# --------------------------------------------------------------------------- worker side
def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _score_split(module, shard, spec: TrainSpec, device, seed: int) -> dict[str, Any]:
    """Score this rank's shard, all-reduce the sums over ranks → means (see ``evaluate``)."""
    module.eval()
    batches = (b["x"] for b in _batches(shard, spec.batch_size, device, columns=("x",)))
    total, var, count, method, shared = accumulate_scores(
        module, batches, torch.Generator().manual_seed(seed)
    )
    total, var, count, shared = _all_reduce([total, var, count, shared], device)
    module.train()
    return summarise(total, var, count, method, shared, num_dims=module.num_dims)


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; rank 0 computed it alone)."""
    if dist.is_available() and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _numeric(info: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v)
        for k, v in info.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


FINAL_EPOCH_LABELS = "final-epoch (labels_per_class)"


def selection_rule(
    spec: TrainSpec,
    likelihood: str,
    has_yardstick: bool,
    metric: str | None = None,
    can_sample: bool = True,
) -> str:
    """How a run picks the weights it tests and registers (tagged on the run as ``selection``).

    * ``val-log-likelihood``: the best validation log-likelihood (a family with one);
    * ``val-<metric>``: the best mean of the family's declared ``selection_metric`` (a key of
      its ``validation_metrics``, higher is better) on the validation split, for a family
      without a likelihood that declares one (a translator, which has no unconditional sample);
    * ``val-fd (yardstick)``: the best validation FD of the yardstick (a family without a
      likelihood or a selection metric, that samples);
    * ``final-epoch (labels_per_class)``: a run with a label budget selects on nothing, whatever
      the family: the validation labels are hidden and the yardstick was trained on every
      label, so it may judge after training but never choose. The last epoch is kept (a fixed
      schedule: no early stopping either);
    * ``final-epoch (no validation metric)``: nothing to select on.
    """
    if spec.labels_per_class is not None:
        return FINAL_EPOCH_LABELS
    if likelihood != "none":
        return "val-log-likelihood"
    if metric is not None:
        return f"val-{metric}"
    if has_yardstick and can_sample:
        return "val-fd (yardstick)"
    return "final-epoch (no validation metric)"


def family_rule(spec: TrainSpec, family, has_yardstick: bool) -> str:
    """``selection_rule`` from a family's (class or instance) declarations."""
    return selection_rule(
        spec, family.likelihood, has_yardstick, family.selection_metric, family.can_sample
    )


def _has_validation_metrics(module) -> bool:
    return type(module).validation_metrics is not genmodels.GenerativeModel.validation_metrics


def _metrics_split(module, shard, spec: TrainSpec, device) -> dict[str, float]:
    """The means of the family's ``validation_metrics`` over a split (every rank's shard,
    all-reduced); each batch holds the family's ``batch_keys`` columns only."""
    module.eval()
    sums: dict[str, float] = {}
    count = 0.0
    with torch.no_grad():
        for b in _batches(shard, spec.batch_size, device, columns=tuple(module.batch_keys)):
            values = module.validation_metrics({k: b[k] for k in module.batch_keys})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            count += len(b["x"])
    module.train()
    keys = _from_rank0(sorted(sums))  # one key order on every rank
    totals = _all_reduce([sums.get(k, 0.0) for k in keys] + [count], device)
    return {k: t / max(totals[-1], 1.0) for k, t in zip(keys, totals[:-1])}


def _validate(module, shard, spec: TrainSpec, device, yardstick, rank: int) -> dict[str, Any]:
    """This epoch's validation: ``val_score`` (higher is better; the selection metric, NaN when
    the rule is a final epoch) and the metrics behind it — the log-likelihood where the family
    has one (reported even when it does not select: it reads no label), else the yardstick's
    FD (only when it selects)."""
    rule = family_rule(spec, module, yardstick is not None)
    info = module.prepare_scoring(torch.Generator().manual_seed(spec.seed + 4242), final=False)
    out: dict[str, Any] = _numeric(info, "val_scoring_")
    if _has_validation_metrics(module) and spec.labels_per_class is None:
        out.update({f"val_{k}": v for k, v in _metrics_split(module, shard, spec, device).items()})
    if module.likelihood != "none":
        val = _score_split(module, shard, spec, device, seed=spec.seed + 12345)
        out.update(val_log_prob=val["log_prob"], val_bpd=val["bpd"])
        out["val_score"] = val["log_prob"] if rule == "val-log-likelihood" else math.nan
    elif module.selection_metric is not None and rule == f"val-{module.selection_metric}":
        out["val_score"] = out[f"val_{module.selection_metric}"]
    elif rule == "val-fd (yardstick)":
        q = None
        if rank == 0:
            q, _ = yardstick.evaluate(module, "validation", seed=spec.seed + 12345)
            module.train()
        q = _from_rank0(q)
        out.update({f"val_{k[len('yardstick_') :]}": v for k, v in q.items()})
        out["val_score"] = -q["yardstick_fd"]
    else:  # nothing to select on: keep the latest weights
        out["val_score"] = math.nan
    return out


def _state_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode() + tensors[key].detach().cpu().double().numpy().tobytes())
    return h.hexdigest()


def _params_digest(module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().double().numpy().tobytes())
    return h.hexdigest()


def _sample_grid(module, spec: TrainSpec, path: Path) -> Path | None:
    """Up to ``grid_samples`` samples, drawn in chunks until ``grid_time_s`` runs out."""
    if spec.grid_samples <= 0 or not module.can_sample:
        return None
    module.eval()
    g = torch.Generator().manual_seed(spec.seed)
    chunks, drawn, start = [], 0, time.monotonic()
    with torch.no_grad():
        while drawn < spec.grid_samples and time.monotonic() - start < spec.grid_time_s:
            n = min(16, spec.grid_samples - drawn)
            chunks.append(module.sample(n, generator=g).cpu().numpy())
            drawn += n
    if not chunks:
        return None
    from .images import save_grid

    return save_grid(np.concatenate(chunks), module.input_shape, module.levels, path)


def train_loop(cfg: dict[str, Any]) -> None:
    """The per-worker training function (``TorchTrainer(train_loop_per_worker=...)``)."""
    import ray
    import ray.train
    import ray.train.torch

    spec = TrainSpec(**cfg["spec"])
    ds_info = cfg["dataset"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["torch_threads"])
    device = ray.train.torch.get_device()

    torch.manual_seed(spec.seed)  # identical initialisation on every rank
    model = genmodels.build(
        spec.family, tuple(ds_info["input_shape"]), ds_info["levels"], **spec.model
    )
    ddp = ray.train.torch.prepare_model(
        model,
        parallel_strategy="ddp" if spec.sync_gradients else None,
        parallel_strategy_kwargs={"find_unused_parameters": len(model.phases) > 1},
    )
    module: genmodels.GenerativeModel = ddp.module if hasattr(ddp, "module") else ddp
    optimizers = module.configure_optimizers()
    torch.manual_seed(spec.seed * 1000 + rank + 1)  # per-rank training randomness
    data_gen = torch.Generator().manual_seed(spec.seed * 1000 + rank + 7)

    state = {"epoch": 0, "best_val": -math.inf, "best_epoch": -1, "bad_epochs": 0}
    state.update(steps=0, stopped=False, history=[], resumes=[])
    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume after a failure (or an explicit restore)
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
            module.load_state_dict(saved["model"])
            best_state = saved["best_model"]
            for phase, opt in optimizers.items():
                opt.load_state_dict(saved["optimizers"][phase])
            state.update(json.loads(saved["state_json"]))
            rank_file = Path(d) / f"rank{rank}.pt"
            if rank_file.exists():
                mine = torch.load(rank_file, map_location="cpu", weights_only=True)
                torch.set_rng_state(mine["torch_rng"])
                data_gen.set_state(mine["data_rng"])
                module.load_rank_state(mine["family_state"])
        opt_steps = {
            phase: max((int(v.get("step", 0)) for v in o.state_dict()["state"].values()), default=0)
            for phase, opt in optimizers.items()
            for o in [opt]
        }
        # Each rank restored its own family state (e.g. persistent chains): gather their digests.
        digests = [_state_digest(module.rank_state())] * world
        if dist.is_available() and dist.is_initialized():
            dist.all_gather_object(digests, digests[0])
        state["resumes"].append(
            {
                "epoch": state["epoch"],
                "steps": state["steps"],
                "opt_step": max(opt_steps.values(), default=0),
                "opt_steps": opt_steps,
                "rank_state_sha256": digests,
            }
        )
        if rank == 0:
            _say(cfg, f"[genmodels] resumed at epoch {state['epoch']} (step {state['steps']})")

    mlflow_client = None
    if rank == 0 and cfg.get("run_id"):
        mlflow_client = registry.client(cfg["tracking_uri"])

    yardstick = None
    if cfg.get("yardstick") is not None:
        from .quality import Yardstick

        yardstick = Yardstick.from_payload(cfg["yardstick"])

    train_shard = _shard("train", cfg, rank)
    val_shard = _shard("validation", cfg, rank)
    more = state["epoch"] < spec.epochs and not state["stopped"]  # the loop's own condition
    upcoming = _EarlyPass(train_shard) if more else None
    run_start, first_epoch = time.monotonic(), state["epoch"]
    while state["epoch"] < spec.epochs and not state["stopped"]:
        epoch, t0 = state["epoch"], time.monotonic()
        module.train()
        losses, seen, cpu0, waited = [], 0, time.process_time(), [0.0]
        batches = _batches(
            upcoming, spec.batch_size, device, shuffle_seed=spec.seed * 1000 + epoch * 17 + rank
        )
        for step, batch in enumerate(_timed(batches, waited)):
            if spec.max_steps_per_epoch is not None and step >= spec.max_steps_per_epoch:
                break
            x = batch["x"]
            if ds_info["train_is_probabilities"]:  # dynamic binarisation: a fresh draw
                x = torch.bernoulli(x.cpu(), generator=data_gen).to(device)
            batch = {**batch, "x": x}
            for phase in module.phases:
                opt = optimizers[phase]
                opt.zero_grad(set_to_none=True)
                out = ddp(batch, phase=phase)
                out["loss"].backward()
                opt.step()
            losses.append(out["loss"].detach())  # no host sync per step
            seen += len(x)
            state["steps"] += 1
            if spec.fail_at_epoch == epoch and rank == world - 1 and spec.fail_marker:
                _die_once(Path(spec.fail_marker), epoch)
        batches.close()  # a pass cut short (max_steps_per_epoch) ends before the next opens
        train_time, train_cpu = time.monotonic() - t0, time.process_time() - cpu0
        # The next epoch's pass opens while this one validates and reports (closed unused if
        # the run stops here: early stopping and the time limit are known only after them).
        upcoming = _EarlyPass(train_shard) if epoch + 1 < spec.epochs else None
        val = _validate(module, val_shard, spec, device, yardstick, rank)
        score = val["val_score"]
        improved = math.isnan(score) or score > state["best_val"]
        if improved:
            state.update(best_val=score, best_epoch=epoch, bad_epochs=0)
            best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        # The mean of the steps' float32 losses in float64: what averaging .item()s gave.
        mean_loss = (
            float(np.mean(torch.stack(losses).cpu().double().numpy())) if losses else math.nan
        )
        train_loss = _all_reduce([mean_loss], device)[0]
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss / world,
            **val,
            "best_val_score": state["best_val"],
            "steps": state["steps"],
            "train_examples": seen,
            "train_time_s": train_time,
            "train_cpu_s": train_cpu,  # this worker process's CPU time in the loop (all threads)
            "train_wait_s": waited[0],  # of train_time_s: waiting for the next batch (ingest)
            "epoch_time_s": time.monotonic() - t0,
        }
        if "val_log_prob" in val:
            metrics["best_val_log_prob"] = state["best_val"]
        state["history"].append({k: metrics[k] for k in _HISTORY_KEYS})
        state["epoch"] = epoch + 1
        state["stopped"] = state["bad_epochs"] >= spec.patience
        deadline = cfg.get("deadline")
        if deadline and not state["stopped"] and state["epoch"] < spec.epochs:
            # rank 0 decides for all: every rank must stop at the same epoch (report is a barrier)
            if _from_rank0(time.time() > deadline):
                state.update(stopped=True, timed_out=True)
        if state["stopped"] and upcoming is not None:
            upcoming.close()
            upcoming = None
        _report_with_checkpoint(module, optimizers, best_state, state, metrics, rank, data_gen)
        if rank == 0:
            shown = (
                f"val log p {val['val_log_prob']:.3f} nats ({val['val_bpd']:.4f} bits/dim)"
                if "val_log_prob" in val
                else f"val FD {val['val_fd']:.3f}"
                if "val_fd" in val
                else f"val {module.selection_metric} {val['val_score']:.4f}"
                if module.selection_metric is not None and "val_score" in val
                else "no validation metric"
            )
            per_epoch = (time.monotonic() - run_start) / (epoch + 1 - first_epoch)
            left = 0 if state["stopped"] else spec.epochs - epoch - 1
            _say(
                cfg,
                f"{cfg.get('prefix', '[genmodels]')} epoch {epoch + 1}/{spec.epochs} "
                f"loss {metrics['train_loss']:.3f} {shown} {metrics['epoch_time_s']:.1f}s"
                f"{' *' if improved else '  '} ETA {_duration(per_epoch * left)}"
                + (
                    " (time limit: stopping)"
                    if state.get("timed_out")
                    else " (early stop)"
                    if state["stopped"]
                    else ""
                ),
            )
            if mlflow_client is not None:  # one batched write per epoch
                from mlflow.entities import Metric

                stamp = int(time.time() * 1000)
                batch_metrics = [Metric(k, float(v), stamp, epoch) for k, v in metrics.items()]
                mlflow_client.log_batch(cfg["run_id"], metrics=batch_metrics)

    # Where every rank ran (a list of Ray node ids, rank order).
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(nodes, nodes[0])

    # The test split, once, with the best weights (log Z & co. settled with the final settings).
    module.load_state_dict(best_state)
    settled = module.prepare_scoring(torch.Generator().manual_seed(spec.seed + 4343), final=True)
    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    final: dict[str, Any] = {
        "epoch": state["epoch"] - 1,
        "best_epoch": state["best_epoch"],
        "best_val_score": state["best_val"],
        "val_score": state["best_val"],
        "steps": state["steps"],
        "stopped_early": state["stopped"],
        "timed_out": bool(state.get("timed_out", False)),
        "resumes": json.dumps(state["resumes"]),
        "worker_nodes": json.dumps(nodes),
        **_numeric(settled, "scoring_"),
    }
    if module.likelihood != "none":
        test = _score_split(module, _shard("test", cfg, rank), spec, device, spec.seed + 999)
        final.update(
            val_log_prob=state["best_val"],
            best_val_log_prob=state["best_val"],
            test_log_prob=test["log_prob"],
            test_bpd=test["bpd"],
            test_stderr=test["stderr"],
            test_count=test["count"],
            method=test["method"],
        )
    if _has_validation_metrics(module) and spec.labels_per_class is None:
        test_shard = _shard("test", cfg, rank)
        final.update(
            {f"test_{k}": v for k, v in _metrics_split(module, test_shard, spec, device).items()}
        )
    extra: dict[str, np.ndarray] = {}
    if yardstick is not None and module.can_sample:
        quality = None
        if rank == 0:  # drawn once; the samples travel with the checkpoint to the registry
            quality, extra["yardstick_samples"] = yardstick.evaluate(
                module, "test", seed=spec.seed + 999
            )
        final.update(_from_rank0(quality))
        final["yardstick_method"] = yardstick.method
    if module.likelihood == "none":
        final["method"] = (
            yardstick.method if yardstick is not None and module.can_sample else "none"
        )
    if rank == 0 and mlflow_client is not None:
        _log_pictures(module, spec, state, mlflow_client, cfg["run_id"])
    # A checkpoint rides along so ``Result.metrics`` (the latest checkpointed report) is this one.
    _report_with_checkpoint(module, optimizers, best_state, state, final, rank, data_gen, extra)


def _timed(iterable, waited: list[float]):
    """``iterable``'s items, adding the seconds spent waiting for each to ``waited[0]``."""
    it = iter(iterable)
    while True:
        t0 = time.monotonic()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            waited[0] += time.monotonic() - t0
        yield item


def _chunks(shard):
    """One pass over a shard: whole blocks as dicts of NumPy columns, two prefetched."""
    return shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)


class _EarlyPass:
    """A pass over a shard started ahead of its use: a thread opens it and fetches its first
    chunk while the worker does something else (validates, reports), so the epoch that reads it
    does not wait for Ray Data to start a pass (~60-90 ms per epoch here, a 128-unit MADE's
    epoch being ~0.8 s; the first epoch's pass, opened just before the loop, still waits).
    Only the first chunk is fetched early; the rest stream as in any pass, from the thread that
    reads them. ``close`` abandons an unused pass."""

    def __init__(self, shard) -> None:
        import threading

        self._it = self._first = self._error = None
        self._thread = threading.Thread(target=self._open, args=(shard,), daemon=True)
        self._thread.start()

    def _open(self, shard) -> None:
        try:
            self._it = iter(_chunks(shard))
            self._first = next(self._it, None)
        except BaseException as e:  # raised where the pass is read
            self._error = e

    def chunks(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            yield from self._it

    def close(self, timeout_s: float = 60.0) -> None:
        self._thread.join(timeout_s)  # bounded: a pass that never opened is left to its thread
        if self._thread.is_alive():
            return
        self._first = None
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def _batches(
    shard,
    batch_size: int,
    device,
    shuffle_seed: int | None = None,
    columns: tuple[str, ...] | None = None,
):
    """A pass over a worker's shard as tensor batches of ``batch_size`` rows on ``device``.

    Ray Data streams whole blocks (``iter_batches(batch_size=None)``, NumPy: one fetch and one
    conversion per block, prefetched while the model trains) and ``data.rebatch`` cuts them
    into batches locally. At a small model a per-batch ``iter_torch_batches`` cost more than
    the step itself (issue 16). Without ``shuffle_seed`` the batches are the ones
    ``iter_torch_batches(batch_size=...)`` yields, row for row (validation and test scores are
    unchanged); with it, windows of ``data.shuffle_rows(batch_size)`` rows are permuted by a
    torch generator seeded with it (a different order from Ray's local shuffle buffer, the same
    rows each epoch; deterministic for a seed, as before). ``columns``: only these (see
    ``data.rebatch``).
    """
    from .data import rebatch, shuffle_rows

    chunks = shard.chunks() if isinstance(shard, _EarlyPass) else _chunks(shard)
    shuffled = shuffle_seed is not None
    yield from rebatch(
        chunks,
        batch_size,
        shuffle_rows=shuffle_rows(batch_size) if shuffled else 0,
        generator=torch.Generator().manual_seed(shuffle_seed) if shuffled else None,
        device=device,
        columns=columns,
    )


class _ProbedShard:
    """A dataset shard whose every batch passes through ``probe(split, rank, batch)`` before the
    worker uses it (a test hook: see ``build_trainer``'s ``probe``): every chunk ``_batches``
    fetches, as tensors, before it is cut into batches."""

    def __init__(self, shard, split: str, rank: int, probe) -> None:
        self._shard, self._split, self._rank, self._probe = shard, split, rank, probe

    def iter_batches(self, **kw):
        for chunk in self._shard.iter_batches(**kw):
            batch = {k: torch.from_numpy(np.array(v)) for k, v in chunk.items()}
            self._probe(self._split, self._rank, batch)
            yield chunk


def _shard(split: str, cfg: dict[str, Any], rank: int):
    """This worker's shard of ``split`` (probed when the run has a probe)."""
    import ray.train

    shard = ray.train.get_dataset_shard(split)
    probe = cfg.get("probe")
    return shard if probe is None else _ProbedShard(shard, split, rank, probe)


def _say(cfg: dict[str, Any], line: str) -> None:
    """A progress line for the driver's console (its ``ProgressChannel``), else stdout."""
    channel = cfg.get("progress")
    if channel is not None:
        channel.send(line)
    else:
        print(line, flush=True)


def _duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``: an ETA at a glance (an upper bound: early
    stopping may end the run sooner)."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _die_once(marker: Path, epoch: int) -> None:
    """Test hook: SIGKILL this worker mid-epoch, once (the marker file remembers)."""
    if not marker.exists():
        marker.write_text(str(epoch))
        time.sleep(2.0)  # let the controller register the previous epoch's checkpoint
        os.kill(os.getpid(), signal.SIGKILL)  # a real worker death, not an exception


def _report_with_checkpoint(
    module, optimizers, best_state, state, metrics, rank, data_gen, extra=None
):
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        for name, array in (extra or {}).items():  # e.g. the yardstick's samples (rank 0)
            np.save(Path(tmp) / f"{name}.npy", array, allow_pickle=False)
        if rank == 0:
            torch.save(
                {
                    "model": module.state_dict(),
                    "best_model": best_state,
                    "optimizers": {p: o.state_dict() for p, o in optimizers.items()},
                    "state_json": json.dumps(state),
                },
                Path(tmp) / "state.pt",
            )
            (Path(tmp) / "model.json").write_text(json.dumps(module.export_config()))
        torch.save(
            {
                "torch_rng": torch.get_rng_state(),
                "data_rng": data_gen.get_state(),
                "params_sha256": _params_digest(module),
                "family_state": module.rank_state(),
                "family_state_sha256": _state_digest(module.rank_state()),
            },
            Path(tmp) / f"rank{rank}.pt",
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _log_pictures(module, spec: TrainSpec, state, mlflow_client, run_id: str) -> None:
    from .images import save_curves

    with tempfile.TemporaryDirectory() as tmp:
        grid = _sample_grid(module, spec, Path(tmp) / "samples.png")
        if grid is not None:
            mlflow_client.log_artifact(run_id, str(grid))
        hist = state["history"]
        curve = save_curves(
            {
                "train -loss": [-h["train_loss"] for h in hist],
                (
                    "val log p"
                    if module.likelihood != "none"
                    else f"val {module.selection_metric}"
                    if module.selection_metric
                    else "val -FD"
                ): [h["val_score"] for h in hist],
            },
            Path(tmp) / "learning_curve.png",
            title=f"{spec.family} on {spec.dataset}"
            + (" (nats)" if module.likelihood != "none" else " (-FD: yardstick)"),
        )
        mlflow_client.log_artifact(run_id, str(curve))


# --------------------------------------------------------------------------- driver side
def build_trainer(
    spec: TrainSpec,
    data,
    run_id: str | None,
    tracking_uri: str | None,
    yardstick=None,
    progress=None,
    prefix: str = "[genmodels]",
    probe=None,
    **run_kw,
):
    """The ``TorchTrainer`` for ``spec`` over the loaded dataset ``data`` (``yardstick``: a
    ``pipelines.quality.Yardstick`` the workers use for sample quality, or ``None``;
    ``progress``: a ``pipelines.runtime.ProgressChannel`` for rank 0's epoch lines, each starting
    with ``prefix``; ``probe``: a test hook, a picklable ``probe(split, rank, batch)`` that every
    worker calls on every batch it takes from a split, before using it).

    Starting the worker group is bounded: each attempt waits ``spec.start_timeout_s`` for its
    resources (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` unless set) and at most
    ``spec.start_retries`` further attempts follow (``FailureConfig.controller_failure_limit``;
    Ray's default retries forever).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .data import training_splits

    # Fail here, with the family's own message, not inside N workers: shape, data space, config.
    check_model(spec, data.input_shape, data.levels, data.batch_columns)
    cluster = ray.cluster_resources()
    check_resources(spec, cluster)
    if _USER_START_TIMEOUT is None:  # the user's own setting wins
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{spec.start_timeout_s:g}"
    if _USER_POLL_INTERVAL is None:  # Ray Train passes it on to its controller
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = f"{POLL_INTERVAL_S:g}"
    cpus, threads = plan_resources(spec, cluster.get("CPU", 1.0))
    resources = {"CPU": cpus, **({"GPU": 1} if spec.use_gpu else {})}
    config = {
        "spec": dataclasses.asdict(spec),
        "dataset": {
            "input_shape": list(data.input_shape),
            "levels": data.levels,
            "train_is_probabilities": bool(data.train_is_probabilities),
        },
        "torch_threads": threads,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "yardstick": yardstick.payload() if yardstick is not None else None,
        "progress": progress,
        "prefix": prefix,
        "probe": probe,
        # Past this wall-clock time the workers stop after the epoch (best weights still tested).
        "deadline": (time.time() + spec.timeout_s) if spec.timeout_s else None,
    }
    run_config = RunConfig(
        name=run_kw.pop("name", spec.run_name),
        storage_path=str(Path(spec.storage_path).expanduser().resolve()),
        failure_config=FailureConfig(
            max_failures=spec.max_failures, controller_failure_limit=spec.start_retries
        ),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        **run_kw,
    )
    # One worker reads whole splits (``ds.iterator()``, its own pass, in order); several share
    # each split through Ray's streaming split, which hands blocks to whichever worker asks and,
    # when a bundle holds several blocks, hands them out last first: an order that depends on
    # timing (one worker saw an epoch's two blocks swapped in 1 of 3 identical runs). Either way
    # the pass keeps the blocks' order where Ray Data can (``preserve_order``).
    from ray.data import DataContext, ExecutionOptions
    from ray.train import DataConfig

    datasets = training_splits(data)
    for ds in datasets.values():  # a 1-worker pass runs in the worker: no progress bars there
        ds.context.enable_progress_bars = False
    current = DataContext.get_current().execution_options  # Ray Train's defaults, order kept
    ingest = ExecutionOptions(
        resource_limits=current.resource_limits,
        preserve_order=True,
        verbose_progress=current.verbose_progress,
    )
    dataset_config = DataConfig(
        datasets_to_split="all" if spec.num_workers > 1 else [], execution_options=ingest
    )
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        dataset_config=dataset_config,
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker=resources
        ),
        run_config=run_config,
        datasets=datasets,
    )


def prepare_data(spec: TrainSpec):
    """``spec``'s dataset read, checked and split without Ray (a ``PreparedDataset``)."""
    from .data import prepare_dataset

    return prepare_dataset(
        spec.dataset,
        binarize=spec.binarize,
        seed=spec.seed,
        limit=spec.limit,
        labels_per_class=spec.labels_per_class,
    )


def registered_name(spec: TrainSpec, data) -> str:
    """The name a run of ``spec`` on ``data`` registers under: ``registered_name`` or
    ``<family>-<dataset name>``."""
    return spec.registered_name or f"{spec.family}-{data.name}"


def run_training(spec: TrainSpec, data=None, progress=None, probe=None) -> TrainOutcome:
    """Train, log to MLflow, register: the whole driver path of ``genmodels train``.

    ``data``: the dataset already prepared (``prepare_data``) or loaded, else it is read here;
    ``progress``: a ``pipelines.runtime.ProgressChannel`` that gets rank 0's epoch lines (they
    are printed by the worker otherwise); ``probe``: a test hook (see ``build_trainer``). The fit
    is bounded by ``spec.timeout_s``.

    With a label budget (``spec.labels_per_class``) the run is tagged with its draw
    (``labels_per_class``, ``labels_seed``, ``labels_kept``, ``labels_rows_sha256``) and its
    ``selection`` rule (the final epoch); the yardstick, a judge trained on every label, is
    built from the driver's ``all_labels()`` view and only scores the final weights.
    """
    from .runtime import run_bounded

    spec.validate()
    tracking_uri = registry.resolve_tracking_uri(spec.tracking_uri)
    spec = dataclasses.replace(spec, tracking_uri=tracking_uri)
    if data is None:
        data = prepare_data(spec)
    judge_data = None  # the yardstick's view of the data: every label (driver only)
    if hasattr(data, "to_ray"):
        if getattr(data, "label_rows", None) is not None:
            from .uses import ArrayDataset

            judge_data = ArrayDataset(data.all_labels())
        data = data.to_ray()
    if spec.register:  # a clash costs the user nothing yet: say so before training
        registry.check_name(
            tracking_uri, registered_name(spec, data), data.source_fingerprint, data.source
        )
    exp_id = registry.ensure_experiment(tracking_uri, spec.experiment)
    client = registry.client(tracking_uri)
    name = spec.run_name or f"{spec.family}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(exp_id, run_name=name, tags={"family": spec.family})
    run_id = run.info.run_id
    params = {
        f"model.{k}": v for k, v in genmodels.make_config(spec.family, spec.model).__dict__.items()
    }
    params.update({k: v for k, v in dataclasses.asdict(spec).items() if k not in ("model",)})
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:500])
    client.set_tag(run_id, "dataset_fingerprint", data.fingerprint)
    client.set_tag(run_id, "preprocessing", json.dumps(data.preprocessing, sort_keys=True))
    budget = data.preprocessing.get("labels")
    if budget:
        for key in ("per_class", "seed", "kept", "rows_sha256"):
            tag = "labels_per_class" if key == "per_class" else f"labels_{key}"
            client.set_tag(run_id, tag, str(budget[key]))
    try:
        yardstick = None
        family_cls = genmodels.family_class(spec.family)
        if spec.yardstick and family_cls.can_sample:  # it judges samples
            from .quality import yardstick_for

            yardstick = yardstick_for(
                judge_data or data, seed=spec.seed, max_reference=spec.yardstick_samples
            )
            if yardstick is None:
                print(f"[genmodels] {data.name} has no labels: no sample-quality yardstick")
            else:
                client.set_tag(run_id, "yardstick", json.dumps(yardstick.info, default=float))
        client.set_tag(run_id, "selection", family_rule(spec, family_cls, yardstick is not None))
        trainer = build_trainer(
            spec, data, run_id, tracking_uri, yardstick, progress=progress, name=name, probe=probe
        )
        result = run_bounded(
            trainer.fit,
            timeout_s=(spec.timeout_s + HARD_STOP_GRACE_S) if spec.timeout_s else None,
            what=f"training {name}",
            progress=progress,
        )
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    metrics = dict(result.metrics)
    finals = _final_metrics(metrics)
    for key, value in finals.items():  # val_* already have one point per epoch
        if not key.startswith("val_"):
            client.log_metric(run_id, key, value)
    client.set_tag(run_id, "method", metrics["method"])

    model, ckpt_path = load_best_from_checkpoint(result.checkpoint)
    client.set_tag(run_id, "checkpoint_path", ckpt_path)
    try:
        with result.checkpoint.as_directory() as d:
            samples = Path(d) / "yardstick_samples.npy"
            registered = register_trained(
                spec,
                data,
                run_id,
                model,
                metrics["method"],
                finals,
                artifacts={"yardstick_samples": str(samples)} if samples.exists() else None,
                yardstick=yardstick,
            )
    except Exception as e:  # the checkpoint stays where it is: say where, then fail loudly
        client.set_terminated(run_id, status="FAILED")
        raise RuntimeError(
            f"training finished but registering failed ({e}); the best weights are safe in "
            f"the checkpoint {ckpt_path}"
        ) from e
    client.set_terminated(run_id, status="FINISHED")
    grid, curve = _fetch_pictures(run_id, tracking_uri, Path(spec.output_dir) / name)
    return TrainOutcome(run_id, metrics, ckpt_path, registered, grid, curve)


FINAL_KEYS = ("val_score", "val_log_prob", "test_log_prob", "test_bpd", "test_stderr", "best_epoch")


def _final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a run ends with (and a registered version carries): selection, likelihood
    (where the family has one), the settled scoring facts (log Z...) and the yardstick."""
    keep = {k: metrics[k] for k in FINAL_KEYS if k in metrics}
    keep.update(
        {k: v for k, v in metrics.items() if k.startswith(("yardstick_", "scoring_", "test_"))}
    )
    return {k: float(v) for k, v in keep.items() if isinstance(v, int | float)}


def register_trained(
    spec: TrainSpec,
    data,
    run_id: str,
    model,
    method: str,
    metrics: dict,
    artifacts=None,
    yardstick=None,
):
    """Register ``model`` (unless ``spec.register`` is off) with the dataset's lineage;
    ``artifacts`` (name → file) are stored with the version (e.g. the yardstick's samples)."""
    if not spec.register:
        return None
    meta = {
        "dataset": data.name,
        "source": data.source,
        "source_fingerprint": data.source_fingerprint,
        "fingerprint": data.fingerprint,
        "preprocessing": data.preprocessing,
        "method": method,
        "yardstick_method": (yardstick.method if yardstick is not None else None),
    }
    return registry.register_model(
        spec.tracking_uri,
        run_id,
        model,
        meta,
        metrics,
        name=registered_name(spec, data),
        artifacts=artifacts,
    )


def load_best_from_checkpoint(checkpoint) -> tuple[genmodels.GenerativeModel, str]:
    """The best weights stored in a training checkpoint, as an eval-mode model."""
    with checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        model = genmodels.from_export(json.loads((Path(d) / "model.json").read_text()))
    model.load_state_dict(saved["best_model"])
    return model.eval(), checkpoint.path


def _fetch_pictures(run_id: str, tracking_uri: str, out: Path) -> tuple[str | None, str | None]:
    import mlflow

    paths = []
    for name in ("samples.png", "learning_curve.png"):
        try:
            paths.append(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=name, dst_path=str(out), tracking_uri=tracking_uri
                )
            )
        except Exception:
            paths.append(None)
    return paths[0], paths[1]
