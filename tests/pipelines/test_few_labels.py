"""Semi-supervised runs with a label budget (``labels_per_class``): the draw, the checks before
Ray, and the proof that hidden labels never reach a Ray worker or model selection.

The leak test trains through the real driver path (``run_training``) with a probe that every
worker calls on every batch it takes from a split (``build_trainer``'s test hook); the probe
saves ``x`` and ``y``, and the test maps each row back to its source row by its pixels (the 8x8
digits at 17 levels are all distinct). Its control streams the same splits through Ray Data with
the masking disabled: the same probe and check must then see the leak.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import genmodels
import pipelines.cli as cli
from pipelines import registry
from pipelines.cli import main
from pipelines.data import PreparedDataset, prepare_dataset, rows_digest
from pipelines.train import (
    FINAL_EPOCH_LABELS,
    TrainSpec,
    _validate,
    prepare_data,
    run_training,
)
from tests.genmodels.test_contract import TINY


# ------------------------------------------------------------------------------ the draw
def test_label_draw_is_stratified_seeded_recorded_and_fingerprinted():
    data = prepare_dataset("digits", seed=0, labels_per_class=3)
    kept, y = data.label_rows, data.y
    assert np.bincount(y[kept], minlength=10).tolist() == [3] * 10
    assert np.isin(kept, data.rows["train"]).all()
    visible = data.visible_labels()
    assert np.array_equal(visible[kept], y[kept])
    others = np.setdiff1d(np.arange(len(y)), kept)
    assert (visible[others] == -1).all() and (y[others] >= 0).all()  # hidden, not missing
    assert data.preprocessing["labels"] == {
        "per_class": 3,
        "seed": 0,
        "kept": 30,
        "rows_sha256": rows_digest(kept),
    }
    again = prepare_dataset("digits", seed=0, labels_per_class=3)
    assert np.array_equal(again.label_rows, kept) and again.fingerprint == data.fingerprint
    other = prepare_dataset("digits", seed=0, labels_per_class=4)
    assert other.fingerprint != data.fingerprint
    full = prepare_dataset("digits", seed=0)
    assert full.label_rows is None and np.array_equal(full.visible_labels(), y)
    assert data.fingerprint != full.fingerprint
    judge = data.all_labels()  # the yardstick's view: every label, the full data's fingerprint
    assert judge.fingerprint == full.fingerprint and np.array_equal(judge.visible_labels(), y)


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["--set", "labels_per_class=0"], "bad value 0 for 'labels_per_class'"),
        (["--set", "labels_per_class=2.5"], "bad value 2.5 for 'labels_per_class'"),
        (["--set", "labels_per_class=ten"], "bad value 'ten' for 'labels_per_class'"),
        (["--set", "labels_per_class=true"], "bad value True for 'labels_per_class'"),
        (["--set", "labels_per_class=1000"], "labels_per_class=1000 is more than the train"),
        (["--set", "labels_per_class=2", "--dataset", "UNLABELLED"], "has no labels to keep"),
    ],
)
def test_bad_label_budget_is_one_line_exit_2_before_ray(
    settings, fragment, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(cli, "init_ray", _no_ray)
    unlabelled = tmp_path / "unlabelled.npy"
    np.save(unlabelled, np.random.default_rng(0).integers(0, 2, (60, 8, 8)).astype(np.uint8))
    argv = ["train", "--family", "made", "--dataset", "digits", *settings]
    argv = [str(unlabelled) if a == "UNLABELLED" else a for a in argv]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_tune_refuses_a_label_budget_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "init_ray", _no_ray)
    argv = ["tune", "--family", "made", "--dataset", "digits", "--set", "labels_per_class=5"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "labels_per_class=5: tune selects trials" in capsys.readouterr().err


# ------------------------------------------------------------------------------ selection
class _Spied(dict):
    """A batch that records which keys were read."""

    def __init__(self, batch, log):
        super().__init__(batch)
        self._log = log

    def __getitem__(self, key):
        self._log.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._log.append(key)
        return super().get(key, default)


class _Shard:
    """A worker's shard: its blocks as NumPy chunks (``iter_batches``, as Ray Data gives them),
    each recording which columns were read."""

    def __init__(self, batches):
        self.batches, self.read = batches, []

    def iter_batches(self, **kw):
        for b in self.batches:
            yield _Spied({k: v.numpy() for k, v in b.items()}, self.read)


class _SpyYardstick:
    """Stands for the yardstick (trained on every label): counts how often it is consulted."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, module, split, seed=0):
        self.calls += 1
        return {"yardstick_fd": 3.0, "yardstick_confidence": 0.5}, None


@pytest.mark.parametrize(("family", "levels"), [("pixelcnn", 17), ("gan", 2)])
def test_selection_with_a_label_budget_reads_no_label_and_no_yardstick(family, levels):
    """``_validate`` in a label-budget run: no ``y`` read from any validation batch, the
    yardstick never consulted, ``val_score`` NaN (the final epoch is kept). Control: the same
    call without a budget selects (a finite score; the GAN's is the yardstick's -FD)."""
    torch.manual_seed(0)
    model = genmodels.build(family, (1, 8, 8), levels, **TINY[family])
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, levels, (6, 1, 8, 8), generator=g).float()
    batches = [{"x": x[:3], "y": torch.full((3,), 4)}, {"x": x[3:], "y": torch.full((3,), 7)}]
    base = {"family": family, "model": TINY[family], "batch_size": 3}
    cpu = torch.device("cpu")

    shard, spy = _Shard(batches), _SpyYardstick()
    out = _validate(model, shard, TrainSpec(**base, labels_per_class=2), cpu, spy, rank=0)
    assert math.isnan(out["val_score"]) and spy.calls == 0 and "y" not in shard.read
    if model.likelihood != "none":  # still reported (it reads x alone), never selects
        assert math.isfinite(out["val_log_prob"]) and shard.read.count("x") == 2

    shard, spy = _Shard(batches), _SpyYardstick()
    out = _validate(model, shard, TrainSpec(**base), cpu, spy, rank=0)
    assert math.isfinite(out["val_score"]) and "y" not in shard.read
    if model.likelihood == "none":
        assert spy.calls == 1 and out["val_score"] == -3.0
    else:
        assert out["val_score"] == out["val_log_prob"]


# ------------------------------------------------------------------------------ the leak test
class Probe:
    """Called in the workers on every batch they take: saves its rows (x, y) to ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def __call__(self, split: str, rank: int, batch) -> None:
        np.savez(
            Path(self.folder) / f"{split}-{rank}-{uuid.uuid4().hex}.npz",
            x=batch["x"].cpu().numpy(),
            y=batch["y"].cpu().numpy(),
        )


def seen_rows(folder: Path, data: PreparedDataset) -> dict[str, list[tuple[int, int]]]:
    """(source row, label as the worker saw it) of every row a worker took, per split."""
    index = {data.raw[r].astype(np.float32).tobytes(): r for r in range(len(data.raw))}
    assert len(index) == len(data.raw)  # every row's pixels are distinct: x names its row
    seen: dict[str, list[tuple[int, int]]] = {}
    for f in sorted(folder.glob("*.npz")):
        batch = np.load(f)
        split = f.name.split("-")[0]
        for x, y in zip(batch["x"], batch["y"]):
            seen.setdefault(split, []).append((index[x.astype(np.float32).tobytes()], int(y)))
    return seen


def leaks(seen: dict[str, list[tuple[int, int]]], data: PreparedDataset) -> list[str]:
    """Every label a worker saw that is not a drawn train label (should be none)."""
    drawn = set(data.label_rows.tolist())
    return [
        f"{split} row {r} carried label {y}"
        for split, rows in seen.items()
        for r, y in rows
        if y != -1 and not (split == "train" and r in drawn)
    ]


def budget_spec(tmp_path: Path, **kw) -> TrainSpec:
    base = {
        "family": "pixelcnn",
        "dataset": "digits",
        "binarize": "none",  # 17 levels: every digit's pixels are distinct
        "model": TINY["pixelcnn"],
        "limit": 200,
        "labels_per_class": 2,
        "epochs": 1,
        "batch_size": 64,
        "num_workers": 1,
        "storage_path": str(tmp_path / "ray"),
        "grid_samples": 0,
        "yardstick": False,
        "register": False,
    }
    return TrainSpec(**{**base, **kw})


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_hidden_labels_never_reach_a_worker_or_selection(ray_session, tmp_path, tracking_uri):
    """A real run, every batch probed in the worker: each train row outside the draw has
    y = -1, each drawn row arrives with its true label (so the probe does see labels), every
    validation and test row has y = -1, and the run keeps its final epoch (val_score NaN: no
    selection; see the ``_validate`` test), tagged with its rule and its draw. One worker, one
    epoch: a second of either only repeats the same rows (measured: 249 s with 2 x 2 on a
    2-core machine loaded 11 times over)."""
    folder = tmp_path / "seen"
    folder.mkdir()
    spec = budget_spec(tmp_path, tracking_uri=tracking_uri)
    out = run_training(spec, probe=Probe(folder))
    data = prepare_data(spec)
    seen = seen_rows(folder, data)

    assert leaks(seen, data) == []
    for split in ("train", "validation", "test"):  # every row of every split was probed
        assert {r for r, _ in seen[split]} == set(data.rows[split].tolist()), split
    drawn = {(r, y) for r, y in seen["train"] if y != -1}
    assert drawn == {(int(r), int(data.y[r])) for r in data.label_rows}
    assert len(drawn) == 20

    assert out.metrics["best_epoch"] == 0 and math.isnan(out.metrics["val_score"])
    run = registry.client(tracking_uri).get_run(out.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["selection"] == FINAL_EPOCH_LABELS
    assert tags["labels_per_class"] == "2" and tags["labels_kept"] == "20"
    assert tags["labels_seed"] == "0"
    assert tags["labels_rows_sha256"] == rows_digest(data.label_rows)
    assert params["labels_per_class"] == "2"
    assert tags["dataset_fingerprint"] == data.fingerprint != data.all_labels().fingerprint


@pytest.mark.ray
def test_control_without_masking_the_leak_check_fails(ray_session, tmp_path, monkeypatch):
    """The same probe and check over the Ray Datasets the workers are given, built with the
    masking disabled (``visible_labels`` returns every label): hidden train labels and
    validation labels are found. (Run once through a full training as well, with the same
    result; 137 s on the loaded machine, so the suite streams the splits on the driver.)"""
    monkeypatch.setattr(PreparedDataset, "visible_labels", lambda self: self.y)
    folder = tmp_path / "seen"
    folder.mkdir()
    data = prepare_data(budget_spec(tmp_path))
    probe = Probe(folder)
    for split, ds in data.to_ray().splits.items():
        for batch in ds.iter_torch_batches(batch_size=64):
            probe(split, 0, batch)
    found = leaks(seen_rows(folder, data), data)
    assert any(f.startswith("train ") for f in found)
    assert any(f.startswith("validation ") for f in found)
    assert any(f.startswith("test ") for f in found)
