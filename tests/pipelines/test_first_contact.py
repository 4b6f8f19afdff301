"""Issue 10, first contact: what a new user hits in the first hour, each reproduced here.

A user's own data reaches the registry (the README's ``--dataset ./my_images/``), nothing hangs
(a GPU asked of a CPU machine, a bounded run, two Tune trials on two cores), ``evaluate`` scores
exactly the split the model never saw, outputs are what they say, and every mistake is one line
(exit 2) found before Ray starts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genmodels
from pipelines import registry
from pipelines.cli import main, make_parser
from pipelines.data import dataset_name, prepare_dataset


# ----------------------------------------------------------------------------- helpers
def _uri(tmp_path: Path) -> str:
    return registry.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _image_folder(root: Path, n: int = 40, seed: int = 0, size: int = 8) -> Path:
    """``n`` grey ``size`` x ``size`` images in two class subfolders (a user's own data)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = ("zeros", "ones")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        img = (rng.random((size, size)) < (0.2 if label == "zeros" else 0.7)) * 255
        Image.fromarray(img.astype(np.uint8), mode="L").save(root / label / f"{i:03d}.png")
    return root


def _register(uri: str, source: str, *, limit: int | None = None, name: str | None = None):
    """A tiny MADE registered for ``source`` (no training, no Ray) with its real lineage."""
    import torch

    data = prepare_dataset(source, limit=limit)
    torch.manual_seed(0)
    model = genmodels.build("made", data.input_shape, hidden_sizes=(16,))
    run = registry.client(uri).create_run(registry.ensure_experiment(uri, "first-contact"))
    meta = {
        "dataset": data.name,
        "source": data.source,
        "source_fingerprint": data.source_fingerprint,
        "fingerprint": data.fingerprint,
        "method": "exact",
        "preprocessing": data.preprocessing,
    }
    metrics = {"val_score": -40.0, "test_log_prob": -41.0, "test_bpd": 0.9}
    return model, data, registry.register_model(uri, run.info.run_id, model, meta, metrics, name)


@pytest.fixture()
def no_ray(monkeypatch):
    """Fail the test if the command starts Ray: these mistakes must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the mistake was found")

    monkeypatch.setattr("pipelines.cli.init_ray", refuse)
    monkeypatch.setattr("pipelines.runtime.init_ray", refuse)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"genmodels {command}: error: "), err
    return err


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("./my_images/", "my_images"),
        ("my_images", "my_images"),
        ("images:./Faces 2.tar/", "faces-2-tar"),
        ("/data/train.parquet", "train"),
        ("s3://bucket/sets/mnist-small.npz", "mnist-small"),
        ("npz:/x/flat.bin", "flat-bin"),
        ("/d/train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
        ("MNIST", "mnist"),
        ("digits", "digits"),
    ],
)
def test_a_path_gives_a_valid_stable_dataset_name(source, name):
    assert dataset_name(source) == name
    assert registry_name_ok(f"vae-{dataset_name(source)}")


def registry_name_ok(name: str) -> bool:
    from pipelines.train import _valid_name

    return _valid_name(name)


# ----------------------------------------------------------------------------- one line, exit 2
def _cases(tmp_path: Path) -> list[tuple[list[str], str, str]]:
    """(argv, command, expected text) for mistakes found before Ray starts."""
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    missing = ["--tracking-uri", "sqlite:////nonexistent/x.db"]
    train = ["train", "--family", "made", "--dataset", "digits", *uri]
    bad_npz = tmp_path / "broken.npz"
    bad_npz.write_bytes(b"these bytes are not a NumPy archive")
    folder = _image_folder(tmp_path / "with_notes", n=6)
    (folder / "notes.txt").write_text("where these came from")
    broken_png = _image_folder(tmp_path / "with_broken", n=6)
    (broken_png / "ones" / "zz.png").write_bytes(b"not really a png")
    return [
        ([*train, "--set", "model.lr=-1"], "train", "bad value -1.0 for 'lr' (must be > 0)"),
        ([*train, "--set", "model.num_masks=0"], "train", "num_masks must be >= 1"),
        ([*train, "--set", "limit=2"], "train", "bad value 2 for 'limit'"),
        ([*train, "--set", "limit=99999"], "train", "limit=99999: the data has only 1797 rows"),
        (
            [*train, "--set", "registered_name=a/b"],
            "train",
            "bad value 'a/b' for 'registered_name'",
        ),
        ([*train, "--timeout", "-1"], "train", "bad value -1.0 for 'timeout_s'"),
        (
            ["train", "--family", "made", "--dataset", str(bad_npz), *uri],
            "train",
            "broken.npz' is not a valid NumPy archive",
        ),
        (
            ["train", "--family", "made", "--dataset", str(folder), *uri],
            "train",
            "notes.txt' in the image folder",
        ),
        (
            ["train", "--family", "made", "--dataset", str(broken_png), *uri],
            "train",
            "zz.png' in the image folder",
        ),
        (["tune", "--family", "made", "--num-samples", "0", *uri], "tune", "--num-samples"),
        (["demo", "--workers", "0"], "demo", "bad value 0 for --workers"),
        (["sample", "--model", "m", "--out", "x.gif", *uri], "sample", "for --out"),
        (["sample", "--model", "m", *missing], "sample", "no registry at sqlite:////nonexistent"),
        (["evaluate", "--model", "m", *missing], "evaluate", "no registry at"),
        (["serve", *missing], "serve", "no registry at"),
        (["models", *missing], "models", "no registry at"),
    ]


def test_mistakes_are_one_line_before_ray(tmp_path, capsys, no_ray):
    for argv, command, expected in _cases(tmp_path):
        assert main(argv) == 2, argv
        err = _one_line_error(capsys, command)
        assert expected in err, (argv, err)
    assert not Path("/nonexistent/x.db").exists()  # a read-only command created nothing


def test_gpu_asked_of_a_machine_without_one_fails_fast(tmp_path, capsys, no_ray, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # A local run, as a user types it: the suite's own Ray exports RAY_ADDRESS, which would make
    # this a cluster run (checked against the cluster's resources, after Ray starts).
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.monotonic()
    argv = ["train", "--family", "made", "--dataset", "digits", "--set", "use_gpu=true"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert time.monotonic() - t0 < 30
    assert "use_gpu=true needs 2 GPU(s)" in _one_line_error(capsys, "train")


def test_a_gpu_run_on_a_cpu_cluster_is_refused_before_ray_train():
    from pipelines.train import ResourceError, TrainSpec, check_resources

    with pytest.raises(ResourceError, match="has 0"):
        check_resources(TrainSpec(family="made", use_gpu=True), {"CPU": 2.0})
    with pytest.raises(ResourceError, match="do not fit"):
        check_resources(TrainSpec(family="made", cpus_per_worker=2.0), {"CPU": 2.0})
    check_resources(TrainSpec(family="made", num_workers=1), {"CPU": 2.0})


def test_serve_on_a_port_in_use_is_one_line(tmp_path, capsys, no_ray):
    (tmp_path / "mlflow.db").touch()  # a registry that exists (its content is not read yet)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", "--port", str(port), "--tracking-uri", _uri(tmp_path)]) == 2
    assert f"port {port} is in use" in _one_line_error(capsys, "serve")


def test_run_bounded_gives_up_at_its_time_limit():
    from pipelines.runtime import RunTimeout, run_bounded

    t0 = time.monotonic()
    with pytest.raises(RunTimeout, match=r"did not finish within --timeout 0\.5 s"):
        run_bounded(lambda: time.sleep(30), timeout_s=0.5, what="sleeping")
    assert time.monotonic() - t0 < 5
    assert run_bounded(lambda: 7, timeout_s=5, what="quick") == 7
    with pytest.raises(ZeroDivisionError):
        run_bounded(lambda: 1 / 0, timeout_s=5, what="failing")


def test_a_ray_start_is_retried_once_after_a_raylet_timeout_only():
    from pipelines.runtime import start_with_retry

    def starter(errors):
        calls = {"start": 0, "cleanup": 0}

        def start():
            calls["start"] += 1
            if errors:
                raise errors.pop(0)
            return "up"

        def cleanup():
            calls["cleanup"] += 1

        return start, cleanup, calls

    timeout = RuntimeError("The current node timed out during startup.")
    start, cleanup, calls = starter([timeout])
    assert start_with_retry(start, cleanup) == "up"
    assert calls == {"start": 2, "cleanup": 1}
    start, cleanup, calls = starter([timeout, timeout])  # bounded: two tries, then the error
    with pytest.raises(RuntimeError, match="timed out"):
        start_with_retry(start, cleanup)
    assert calls == {"start": 2, "cleanup": 2}
    start, cleanup, calls = starter([ValueError("bad option")])  # control: no retry on others
    with pytest.raises(ValueError):
        start_with_retry(start, cleanup)
    assert calls == {"start": 1, "cleanup": 1}


# ----------------------------------------------------------------------------- the CLI itself
def test_every_option_of_every_command_has_help_and_there_is_a_version(capsys):
    import argparse

    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"models", "train", "tune", "evaluate", "sample", "serve", "demo"} <= set(sub.choices)
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"genmodels {name} {action.option_strings or action.dest}"
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"genmodels {genmodels.__version__}"


def test_sample_writes_what_its_name_says_and_models_lists_it(tmp_path, capsys):
    uri = _uri(tmp_path)
    _register(uri, "digits")
    base = ["sample", "--model", "made-digits", "--n", "64", "--tracking-uri", uri]
    for out, magic in (("s.png", b"\x89PNG"), ("s.jpg", b"\xff\xd8\xff"), ("s.JPEG", b"\xff\xd8")):
        assert main([*base, "--out", str(tmp_path / out)]) == 0
        assert (tmp_path / out).read_bytes().startswith(magic), out
        assert f"written to {tmp_path / out}" in capsys.readouterr().out
    assert min(Image.open(tmp_path / "s.png").size) >= 400  # 64 8x8 digits: a visible grid
    assert main([*base, "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (64, 1, 8, 8)
    assert not (tmp_path / "s.npy.npy").exists()

    capsys.readouterr()
    assert main(["models", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "made-digits: 1 version(s), latest v1; champion=v1" in out
    assert "test 41.00 nats/example, 0.9000 bits/dim, method exact" in out
    assert main(["models", "--json", "--tracking-uri", uri]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert listed[0]["name"] == "made-digits" and listed[0]["aliases"] == {"champion": "1"}
    assert listed[0]["versions"]["1"]["metrics"]["val_score"] == -40.0


def test_two_folders_with_one_stem_do_not_share_a_model_silently(tmp_path, capsys, no_ray):
    uri = _uri(tmp_path)
    first = _image_folder(tmp_path / "a" / "faces", seed=1)
    second = _image_folder(tmp_path / "b" / "faces", seed=2)
    _, data, reg = _register(uri, str(first))
    assert reg.name == "made-faces" and data.name == "faces"
    again = prepare_dataset(str(first), limit=30)  # other split settings, same data: fine
    registry.check_name(uri, "made-faces", again.source_fingerprint, again.source)
    other = prepare_dataset(str(second))
    with pytest.raises(registry.NameClashError, match="registered_name"):
        registry.check_name(uri, "made-faces", other.source_fingerprint, other.source)
    capsys.readouterr()
    argv = ["train", "--family", "made", "--dataset", str(second), "--tracking-uri", uri]
    assert main(argv) == 2
    err = _one_line_error(capsys, "train")
    assert "'made-faces' holds versions trained on other data" in err
    assert str(first) in err and "--set registered_name=NAME" in err

    from pipelines.cli import _prepare, build_spec

    args = make_parser().parse_args([*argv, "--set", "registered_name=made-faces-b"])
    assert _prepare(build_spec(args), None).source_fingerprint == other.source_fingerprint


# ----------------------------------------------------------------------------- Ray
@pytest.mark.ray
def test_evaluate_rebuilds_the_exact_split_with_limit(ray_session, tmp_path, capsys):
    """Trained with limit=600: the test split is those 600 rows' 60 test rows, not 500 rows
    of the full data (100 of which the model trained on)."""
    from pipelines.evaluate import evaluate_split

    uri = _uri(tmp_path)
    model, data, _ = _register(uri, "digits", limit=600)
    capsys.readouterr()
    assert main(["evaluate", "--model", "made-digits", "--tracking-uri", uri]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["count"] == data.sizes["test"] == 60
    expected = evaluate_split(model.eval(), data.to_ray(), "test")
    assert printed["log_prob"] == pytest.approx(expected["log_prob"], rel=1e-6)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_example_my_images_trains_registers_and_evaluates(
    ray_session, tmp_path, monkeypatch, capsys
):
    """``genmodels train --family vae --dataset ./my_images/ --set binarize=dynamic
    --set model.latent_dim=16`` from the README, on a folder made here (small and bounded: a
    1 s time limit stops it after its first epoch); then evaluate, which refuses once the
    folder changed unless ``--dataset`` asks for it."""
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "my_images")
    uri = _uri(tmp_path)
    argv = ["train", "--family", "vae", "--dataset", "./my_images/"]
    argv += ["--set", "binarize=dynamic", "--set", "model.latent_dim=16"]
    argv += ["--set", "model.hidden_sizes=[16]", "--set", "model.eval_k=4", "--epochs", "3"]
    argv += ["--workers", "1", "--set", "batch_size=8", "--set", "yardstick=false"]
    argv += ["--set", "grid_samples=4", "--timeout", "1", "--tracking-uri", uri]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "registered vae-my_images v1: promoted to champion" in out
    assert "stopped at the time limit (--timeout) after epoch 1" in out
    epoch_lines = [line for line in out.splitlines() if " epoch 1/3 " in line]
    assert len(epoch_lines) == 1 and "ETA" in epoch_lines[0], out  # rank 0 only, once
    runs = [p.name for p in (tmp_path / "outputs" / "ray_results").iterdir()]
    assert runs and all(name.startswith("vae-my_images-") for name in runs), runs
    tags = registry.resolve_version(uri, "vae-my_images").tags
    assert tags["source"] == str(tmp_path / "my_images")

    base = ["evaluate", "--model", "vae-my_images", "--tracking-uri", uri]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 4
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "my_images/ones/new.png")
    assert main(base) == 2
    assert "is not what vae-my_images v1 was trained on" in _one_line_error(capsys, "evaluate")
    assert main([*base, "--dataset", "./my_images/"]) == 0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tune_two_trials_one_worker_each_finishes_on_two_cores(ray_session, tmp_path, capsys):
    argv = ["tune", "--family", "made", "--dataset", "digits", "--num-samples", "2"]
    argv += ["--workers", "1", "--set", "epochs=1", "--set", "max_steps_per_epoch=2"]
    argv += ["--set", "model.hidden_sizes=[16]", "--set", "yardstick=false"]
    argv += ["--set", f"storage_path={tmp_path / 'ray'}", "--timeout", "600"]
    assert main([*argv, "--tracking-uri", _uri(tmp_path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "registered made-digits v1" in out
    assert out.count(" epoch 1/1 ") == 2  # one line per trial's epoch, each once


def test_init_ray_starts_its_own_ray_and_pins_its_address(monkeypatch):
    """``address="local"``, never "whatever Ray runs here", worker output off the console, and
    the address exported so Ray Train's helpers join this Ray, not another one on the machine."""
    import ray

    from pipelines import runtime

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append({**kw, "env": dict(os.environ)}))
    monkeypatch.setattr(ray, "shutdown", lambda: None)

    class Context:
        gcs_address = "10.0.0.7:6379"

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_GCS_SERVER_PORT", raising=False)
    assert runtime.init_ray()
    assert calls[-1]["address"] == "local" and calls[-1]["log_to_driver"] is False
    port = calls[-1]["env"]["RAY_GCS_SERVER_PORT"]  # exported before the raylet starts
    assert calls[-1]["env"]["RAY_ADDRESS"].endswith(f":{port}")
    assert os.environ["RAY_ADDRESS"] == "10.0.0.7:6379"
    runtime.shutdown_ray()
    assert "RAY_ADDRESS" not in os.environ and "RAY_GCS_SERVER_PORT" not in os.environ
    runtime.init_ray("ray://head:10001", verbose=True)
    assert calls[-1]["address"] == "ray://head:10001" and calls[-1]["log_to_driver"] is True
    runtime.shutdown_ray()
