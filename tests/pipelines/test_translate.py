"""Translation through the pipelines: the batch-key check before Ray, a translator trained and
selected on its validation metric through the Ray path, CycleGAN's four networks synchronised
over two workers and resumed after a killed worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import genmodels
from pipelines.data import prepare_dataset
from pipelines.train import (
    TrainSpec,
    build_trainer,
    check_batch_keys,
    family_rule,
    load_best_from_checkpoint,
    selection_rule,
)
from tests.genmodels.test_contract import TINY


def spec_for(tmp_path: Path, **kw) -> TrainSpec:
    base = {
        "family": "pix2pix",
        "dataset": "digits-edge-paired",
        "model": dict(TINY["pix2pix"]),
        "epochs": 2,
        "batch_size": 64,
        "num_workers": 1,
        "storage_path": str(tmp_path / "ray"),
        "grid_samples": 0,
        "max_steps_per_epoch": 2,
    }
    return TrainSpec(**{**base, **kw})


def test_batch_keys_are_checked_before_ray():
    plain = prepare_dataset("digits")
    with pytest.raises(ValueError, match=r"pix2pix trains on batch key\(s\) x, x_target; "):
        check_batch_keys("pix2pix", "digits", plain.batch_columns)
    check_batch_keys(
        "pix2pix", "digits-edge-paired", prepare_dataset("digits-edge-paired").batch_columns
    )
    check_batch_keys(
        "made", "digits-edge-paired", prepare_dataset("digits-edge-paired").batch_columns
    )
    bad = {"x": ("float32", (1, 8, 8)), "x_target": ("float32", (1, 4, 4))}
    with pytest.raises(ValueError, match="'x_target' has rows of shape"):
        check_batch_keys("pix2pix", "d", bad)


def test_cli_refuses_a_translator_on_unpaired_columns_with_one_line(capsys):
    from pipelines.cli import main

    assert main(["train", "--family", "pix2pix", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "x_target" in err and "mnist-edge-paired" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_selection_rule_for_a_family_without_likelihood_or_sample(tmp_path):
    spec = spec_for(tmp_path)
    assert family_rule(spec, genmodels.family_class("pix2pix"), True) == "val-iou"
    # control: the same declarations without a selection metric keep the final epoch
    assert selection_rule(spec, "none", True, None, False).startswith("final-epoch")
    assert family_rule(spec, genmodels.family_class("gan"), True) == "val-fd (yardstick)"


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_pix2pix_trains_through_the_ray_path_and_selects_on_validation_iou(tmp_path, ray_session):
    data = prepare_dataset("digits-edge-paired", seed=0).to_ray()
    spec = spec_for(tmp_path)
    result = build_trainer(spec, data, None, None, name="p2p-ray").fit()
    m = result.metrics
    assert m["steps"] == 4 and m["method"] == "none"
    assert 0 <= m["val_score"] <= 1 and "test_iou" in m and "test_l1" in m
    model, _ = load_best_from_checkpoint(result.checkpoint)
    test = prepare_dataset("digits-edge-paired", seed=0).arrays("test")
    batch = {k: torch.from_numpy(test[k]) for k in ("x", "x_target")}
    # the reported test IoU belongs to the checkpointed weights
    assert model.validation_metrics(batch)["iou"].mean().item() == pytest.approx(
        m["test_iou"], abs=1e-5
    )
    assert np.isfinite(m["test_l1"])


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("sync", [True, False])
def test_cyclegan_four_networks_synchronise_over_two_workers_and_resume(
    tmp_path, ray_session, sync
):
    """Two workers on different shards of an unpaired dataset, rank 1 SIGKILLed in epoch 1: the
    group resumes from epoch 0's checkpoint with both optimisers' states (G+F, D_A+D_B), and DDP
    keeps all four networks identical on both ranks; the control without gradient
    synchronisation ends with different parameters."""
    data = prepare_dataset("digits-negative-unpaired", seed=0).to_ray()
    marker = tmp_path / "killed"
    spec = spec_for(
        tmp_path,
        family="cyclegan",
        dataset="digits-negative-unpaired",
        model=dict(TINY["cyclegan"]),
        num_workers=2,
        max_steps_per_epoch=3,
        sync_gradients=sync,
        fail_at_epoch=1 if sync else None,
        fail_marker=str(marker) if sync else None,
    )
    result = build_trainer(spec, data, None, None, name=f"cyc-{sync}").fit()
    with result.checkpoint.as_directory() as d:
        ranks = [torch.load(f, weights_only=True) for f in sorted(Path(d).glob("rank*.pt"))]
    assert len(ranks) == 2
    assert (ranks[0]["params_sha256"] == ranks[1]["params_sha256"]) is sync
    if sync:
        assert marker.read_text() == "1"
        (resume,) = json.loads(result.metrics["resumes"])
        assert resume["epoch"] == 1 and resume["steps"] == 3
        assert resume["opt_steps"] == {"discriminator": 3, "generator": 3}
        assert result.metrics["steps"] == 6 and np.isnan(result.metrics["val_score"])
        assert "test_iou_a2b" in result.metrics and "test_iou_b2a" in result.metrics
