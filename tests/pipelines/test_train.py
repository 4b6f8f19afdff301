"""Ray Train: gradients truly synchronise, a killed worker resumes, the driver path registers.

Runs on the suite's shared Ray (2 CPUs) with the digits dataset and a tiny MADE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import registry
from pipelines.data import load_dataset
from pipelines.train import TrainSpec, build_trainer, run_training

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def digits(ray_session):
    return load_dataset("digits", binarize="fixed", seed=0)


def tiny_spec(tmp_path: Path, **kw) -> TrainSpec:
    base = {
        "family": "made",
        "dataset": "digits",
        "model": {"hidden_sizes": (32,)},
        "epochs": 2,
        "batch_size": 64,
        "num_workers": 2,
        "storage_path": str(tmp_path / "ray"),
        "grid_samples": 0,
        "max_steps_per_epoch": 3,
    }
    return TrainSpec(**{**base, **kw})


def rank_files(checkpoint) -> list[dict]:
    with checkpoint.as_directory() as d:
        files = sorted(Path(d).glob("rank*.pt"))
        return [torch.load(f, weights_only=True) for f in files]


def tiny_model(family: str) -> dict:
    from tests.genmodels.test_contract import TINY

    return dict(TINY[family])


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("family", ["made", "gan", "avb", "aae", "ssgan", "m2vae"])
def test_two_workers_end_with_identical_parameters_only_when_synchronised(
    tmp_path, digits, family, sync
):
    """Different shards and seeds per rank: DDP keeps every network's parameters identical
    (generator and discriminator, encoder and critic: all phases, all optimisers); the control
    without gradient synchronisation diverges."""
    model = {"hidden_sizes": (32,)} if family == "made" else tiny_model(family)
    spec = tiny_spec(tmp_path, family=family, model=model, sync_gradients=sync)
    result = build_trainer(spec, digits, None, None, name=f"sync-{family}-{sync}").fit()
    ranks = rank_files(result.checkpoint)
    assert len(ranks) == 2
    same = ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert same is sync
    assert result.metrics["steps"] == 2 * 3


def test_killed_worker_resumes_from_the_next_epoch(tmp_path, digits):
    marker = tmp_path / "killed"
    spec = tiny_spec(tmp_path, epochs=3, fail_at_epoch=1, fail_marker=str(marker), max_failures=1)
    result = build_trainer(spec, digits, None, None, name="resume").fit()
    assert marker.read_text() == "1"  # rank 1 really was SIGKILLed during epoch 1
    resumes = json.loads(result.metrics["resumes"])
    assert len(resumes) == 1
    assert resumes[0]["epoch"] == 1  # epoch 0's checkpoint restored: the next epoch is 0 + 1
    assert resumes[0]["steps"] == 3 and resumes[0]["opt_step"] == 3  # Adam's state came back
    assert result.metrics["steps"] == 9 and result.metrics["epoch"] == 2


@pytest.mark.parametrize("family", ["gan", "rbm"])
def test_every_optimiser_and_each_ranks_chains_survive_a_kill(tmp_path, digits, family):
    """A GAN resumes its adversarial game with both networks' optimiser states; an RBM's
    persistent chains come back per rank (each rank its own, not rank 0's copy)."""
    import genmodels

    marker = tmp_path / "killed"
    spec = tiny_spec(
        tmp_path,
        family=family,
        model=tiny_model(family),
        epochs=2,
        fail_at_epoch=1,
        fail_marker=str(marker),
    )
    result = build_trainer(spec, digits, None, None, name=f"resume-{family}").fit()
    assert marker.read_text() == "1"
    (resume,) = json.loads(result.metrics["resumes"])
    assert resume["epoch"] == 1 and resume["steps"] == 3
    phases = genmodels.family_class(family).phases
    assert resume["opt_steps"] == {p: 3 for p in phases}  # every optimiser's state came back
    ranks = rank_files(result.checkpoint)
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    if family == "rbm":
        restored = resume["rank_state_sha256"]
        assert len(set(restored)) == 2  # two ranks, two different sets of chains restored
        assert all(r["family_state"] for r in ranks)
        assert ranks[0]["family_state_sha256"] != ranks[1]["family_state_sha256"]


def test_driver_path_logs_scores_and_registers(tmp_path, digits, tracking_uri):
    spec = tiny_spec(
        tmp_path,
        num_workers=1,
        epochs=2,
        max_steps_per_epoch=None,
        tracking_uri=tracking_uri,
        grid_samples=8,
        output_dir=str(tmp_path / "out"),
    )
    out = run_training(spec)
    m = out.metrics
    assert m["method"] == "exact" and m["test_count"] == digits.sizes["test"]
    assert m["test_bpd"] == pytest.approx(-m["test_log_prob"] / (64 * 0.6931471805599453))
    # Learned something: better than the same MADE untrained (about -44.5 nats; uniform is
    # -44.4), scored here on the same test split.
    import genmodels

    torch.manual_seed(spec.seed)
    untrained = genmodels.build("made", input_shape=digits.input_shape, **spec.model).eval()
    with torch.no_grad():
        x_test = torch.from_numpy(digits.numpy("test")[0]).float()
        baseline = untrained.log_prob(x_test).mean().item()
    print(f"test log p: trained {m['test_log_prob']:.2f}, untrained {baseline:.2f} nats")
    assert m["test_log_prob"] > baseline + 4.0, (m["test_log_prob"], baseline)  # measured +7.2
    assert out.registered.name == "made-digits" and out.registered.promoted
    assert out.grid_path and Path(out.grid_path).is_file()
    c = registry.client(registry.resolve_tracking_uri(tracking_uri))
    history = c.get_metric_history(out.run_id, "val_log_prob")
    assert len(history) == 2
    tags = registry.resolve_version(c.tracking_uri, "made-digits", "champion").tags
    assert tags["fingerprint"] == digits.fingerprint
    assert float(tags["metric.test_log_prob"]) == pytest.approx(m["test_log_prob"])


@pytest.fixture(scope="module")
def yardsticks(ray_session):
    """The digits yardstick for each data space the families use (trained once, cached)."""
    from pipelines.quality import yardstick_for

    out = {}
    for binarize in ("fixed", "none"):
        out[binarize] = yardstick_for(load_dataset("digits", binarize=binarize, seed=0))
    return out


SAMPLERS = [  # families that train on plain image batches (x, y) and sample
    f
    for f in __import__("genmodels").families()
    if __import__("genmodels").family_class(f).can_sample
    and set(__import__("genmodels").family_class(f).batch_keys) <= {"x"}
]


@pytest.mark.parametrize(
    "family", SAMPLERS
)  # translators: test_translate.py; captionvae (x + caption) has no Ray-path test yet
def test_every_family_trains_through_the_ray_path(tmp_path, ray_session, yardsticks, family):
    """One tiny epoch of one batch per family: the generic trainer needs no family special case.
    Families with a likelihood report it on the test split; every family reports the yardstick."""
    import genmodels
    from tests.genmodels.test_contract import TINY

    cls = genmodels.family_class(family)
    binarize = "none" if "discrete" in cls.data_kinds else "fixed"  # 8-bit-capable: levels 17
    data = load_dataset("digits", binarize=binarize, seed=0)
    spec = tiny_spec(
        tmp_path,
        family=family,
        binarize=binarize,
        model=dict(TINY[family]),
        epochs=1,
        num_workers=1,
        max_steps_per_epoch=1,
        batch_size=32,
    )
    yardstick = yardsticks[binarize]
    result = build_trainer(spec, data, None, None, yardstick, name=f"fam-{family}").fit()
    m = result.metrics
    assert m["steps"] == 1
    assert m["yardstick_num_samples"] == data.sizes["test"] and m["yardstick_fd"] > 0
    assert 0 < m["yardstick_coverage"] <= 1 and 0 < m["yardstick_confidence"] <= 1
    with result.checkpoint.as_directory() as d:  # the samples behind it travel to the registry
        samples = np.load(Path(d) / "yardstick_samples.npy", allow_pickle=False)
    assert samples.shape == (data.sizes["test"], *data.input_shape)
    if cls.likelihood == "none":
        assert "test_log_prob" not in m and m["method"] == yardstick.method
        assert m["val_score"] < 0  # minus the validation FD: what the epochs were selected on
    else:
        assert m["test_count"] == data.sizes["test"] and m["val_score"] == m["val_log_prob"]
        assert m["test_log_prob"] < 0 and m["test_bpd"] > 0
    # The reported numbers belong to the weights in the checkpoint: reloaded here, the model
    # draws exactly the stored samples (the yardstick's seed and chunks), their FD recomputed
    # from the samples is the reported one, and its test score is the reported one. A model
    # with other weights (the same family, randomised) draws other samples.
    from genmodels.quality import sample_quality
    from pipelines.evaluate import evaluate_split
    from pipelines.train import load_best_from_checkpoint

    def draw(model) -> torch.Tensor:  # as Yardstick.evaluate draws them: its seed, chunks of 100
        g = torch.Generator().manual_seed(spec.seed + 999)
        n = len(samples)
        with torch.no_grad():
            return torch.cat([model.sample(min(100, n - i), generator=g) for i in range(0, n, 100)])

    model, _ = load_best_from_checkpoint(result.checkpoint)
    fresh = draw(model).float()
    assert torch.equal(fresh, torch.from_numpy(samples).float())
    reference = torch.as_tensor(yardstick.reference["test"]).float()
    fd = sample_quality(yardstick.classifier, torch.from_numpy(samples).float(), reference).fd
    assert fd == pytest.approx(m["yardstick_fd"], rel=1e-6)
    other, _ = load_best_from_checkpoint(result.checkpoint)
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        for name, buf in other.named_buffers():  # averaged weights (RBM, DBM): drop them, so
            if name.endswith("avg_count"):  # the randomised raw weights are the model's
                buf.zero_()
    assert not torch.equal(draw(other).float(), fresh)
    if cls.likelihood != "none":
        local = evaluate_split(model, data, "test", seed=spec.seed + 999, batch_size=32)
        tol = 1e-5 * abs(local["log_prob"]) + 5 * m["test_stderr"]  # estimates: their noise
        assert local["log_prob"] == pytest.approx(m["test_log_prob"], abs=tol)
