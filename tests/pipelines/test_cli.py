"""The CLI: config precedence, and bad input exits 2 with a message naming the bad value."""

from __future__ import annotations

import math

import pytest

from pipelines.cli import CLIError, build_spec, main, make_parser


def spec_of(argv):
    return build_spec(make_parser().parse_args(["train", *argv]))


def test_defaults_file_then_set(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nbatch_size: 32\nmodel:\n  hidden_sizes: [64]\n  num_masks: 2\n")
    spec = spec_of(
        [
            "--family",
            "made",
            "--config",
            str(cfg),
            "--set",
            "epochs=3",
            "--set",
            "model.num_masks=4",
        ]
    )
    assert (spec.epochs, spec.batch_size) == (3, 32)  # --set wins over the file
    assert spec.model == {"hidden_sizes": [64], "num_masks": 4}
    assert spec.dataset == "mnist"  # the default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--family", "made", "--set", "epoch=3"], "unknown setting 'epoch'"),
        (["--family", "made", "--set", "model.hiden=3"], "unknown config key 'hiden'"),
        (["--family", "made", "--set", "epochs=many"], "bad value 'many' for 'epochs'"),
        (["--family", "made", "--set", "epochs=0"], "bad value 0 for 'epochs'"),
        (
            ["--family", "made", "--set", "binarize=sometimes"],
            "bad value 'sometimes' for 'binarize'",
        ),
        (["--family", "made", "--set", "model.num_masks=x"], "bad value 'x' for 'num_masks'"),
        (["--family", "made", "--set", "novalue"], "expected KEY=VALUE"),
        (["--family", "gan9"], "unknown family 'gan9'"),
        (["--family", "made", "--config", "/nonexistent.yaml"], "no such file"),
        ([], "--family is required"),
    ],
)
def test_bad_settings_are_named(argv, message):
    with pytest.raises(CLIError, match=message):
        spec_of(argv)


def test_main_exits_2_with_one_line(capsys):
    assert main(["train", "--family", "made", "--set", "epochs=many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genmodels train: error: bad value 'many' for 'epochs'")
    assert "Traceback" not in err


def test_families_lists_every_family(capsys):
    import genmodels

    assert main(["families"]) == 0
    out = capsys.readouterr().out
    for name in genmodels.families():
        assert name in out


def test_unknown_dataset_is_a_clear_error(capsys, tmp_path):
    code = main(
        [
            "train",
            "--family",
            "made",
            "--dataset",
            "nosuchdata",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
        ]
    )
    assert code == 2
    assert "nosuchdata" in capsys.readouterr().err


def test_sample_and_evaluate_a_registered_model(ray_session, tmp_path, capsys):
    import json

    import numpy as np
    import torch
    from PIL import Image

    import genmodels
    from pipelines import registry
    from pipelines.data import load_dataset

    data = load_dataset("digits")
    uri = registry.resolve_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    torch.manual_seed(0)
    model = genmodels.build("made", input_shape=data.input_shape, hidden_sizes=(16,))
    run = registry.client(uri).create_run(registry.ensure_experiment(uri, "cli"))
    meta = {
        "dataset": "digits",
        "fingerprint": data.fingerprint,
        "method": "exact",
        "preprocessing": data.preprocessing,
    }
    registry.register_model(uri, run.info.run_id, model, meta, {"val_log_prob": -40.0})

    # 12 samples (one sampling chunk): a grid of 4 columns x 3 rows of 8x8 tiles, 1 px grey
    # borders, scaled up by an integer factor. Decoded here independently of pipelines.images.
    out_png, out_npy = tmp_path / "s.png", tmp_path / "s.npy"
    for out in (out_png, out_npy):
        argv = ["sample", "--model", "made-digits", "--n", "12", "--seed", "3", "--out", str(out)]
        assert main([*argv, "--tracking-uri", uri]) == 0
    with torch.no_grad():
        expected = model.eval().sample(12, generator=torch.Generator().manual_seed(3))
    samples = np.load(out_npy)
    assert samples.shape == (12, 1, 8, 8) and torch.equal(torch.from_numpy(samples), expected)
    grid = np.asarray(Image.open(out_png))
    scale = grid.shape[0] // (3 * 9 + 1)
    assert grid.shape == (scale * (3 * 9 + 1), scale * (4 * 9 + 1)) and grid.dtype == np.uint8
    assert (grid == np.repeat(np.repeat(grid[::scale, ::scale], scale, 0), scale, 1)).all()
    grid = grid[::scale, ::scale]  # undo the nearest-neighbour scaling
    assert (grid[::9, :] == 128).all() and (grid[:, ::9] == 128).all()  # the borders
    for i in range(12):
        r, c = divmod(i, 4)
        tile = grid[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c]
        assert np.array_equal(tile, expected[i, 0].numpy() * 255), i  # black 0, white 1
    assert main(["sample", "--model", "made-digits", "--n", "100000", "--tracking-uri", uri]) == 2
    assert "--n" in capsys.readouterr().err

    # evaluate against an independent computation: the exact log-likelihood of every test
    # example, averaged here (not through pipelines.evaluate, which the CLI uses).
    assert main(["evaluate", "--model", "made-digits", "--tracking-uri", uri]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    x_test, _ = data.numpy("test")
    with torch.no_grad():
        log_p = model.log_prob(torch.from_numpy(x_test).float()).double()
    assert printed["count"] == len(x_test) == data.sizes["test"] and printed["method"] == "exact"
    assert printed["log_prob"] == pytest.approx(log_p.mean().item(), rel=1e-6)
    assert printed["bpd"] == pytest.approx(-log_p.mean().item() / (64 * math.log(2)), rel=1e-6)

    assert main(["evaluate", "--model", "nope-digits", "--tracking-uri", uri]) == 2
    assert "nope-digits" in capsys.readouterr().err


def test_evaluate_a_family_without_likelihood(ray_session, tmp_path, capsys):
    """A GSN has no likelihood: plain evaluate is a CLI error naming the alternatives; --parzen
    gives the papers' labelled estimate and --yardstick the sample quality. Both rank a GSN
    trained for a few seconds (version 2) well above the untrained one (version 1)."""
    import json

    import torch

    import genmodels
    from pipelines import registry
    from pipelines.data import load_dataset

    data = load_dataset("digits")
    uri = registry.resolve_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    config = {"hidden_sizes": (64,), "burn_in": 5, "lr": 1e-2}
    torch.manual_seed(0)
    untrained = genmodels.build("gsn", input_shape=data.input_shape, **config)
    torch.manual_seed(0)
    trained = genmodels.build("gsn", input_shape=data.input_shape, **config)
    x_train = torch.from_numpy(data.numpy("train")[0]).float()
    opt = trained.configure_optimizers()["main"]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        opt.zero_grad()
        trained({"x": x_train[torch.randint(len(x_train), (128,), generator=g)]})["loss"].backward()
        opt.step()
    meta = {"dataset": "digits", "fingerprint": data.fingerprint, "method": "none"}
    c = registry.client(uri)
    for model, val in ((untrained, -9.0), (trained, -1.0)):
        run = c.create_run(registry.ensure_experiment(uri, "cli"))
        registry.register_model(uri, run.info.run_id, model.eval(), meta, {"val_score": val})
    base = ["evaluate", "--model", "gsn-digits", "--tracking-uri", uri]

    assert main(base) == 2
    err = capsys.readouterr().err
    assert "no likelihood" in err and "--parzen" in err and "--yardstick" in err
    out = {}
    for ref in ("1", "2"):
        assert main([*base, "--ref", ref, "--parzen", "200"]) == 0
        parzen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert parzen["method"] == "parzen" and parzen["num_samples"] == 200
        assert math.isfinite(parzen["log_prob"]) and parzen["sigma"] > 0
        assert main([*base, "--ref", ref, "--yardstick"]) == 0
        quality = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert quality["yardstick_num_samples"] == data.sizes["test"]
        assert quality["yardstick_fd"] > 0 and quality["method"].startswith("yardstick-fd-n=")
        out[ref] = (parzen["log_prob"], quality["yardstick_fd"])
    print(f"untrained, trained (Parzen log p, FD): {out['1']}, {out['2']}")
    assert out["2"][0] > out["1"][0] + 5  # nats per example
    assert out["2"][1] < 0.5 * out["1"][1]
    assert main([*base, "--parzen", "1"]) == 2
    assert "Parzen" in capsys.readouterr().err


def test_family_that_cannot_model_the_data_is_a_cli_error(ray_session, tmp_path, capsys):
    """MADE is binary-only: 17-level digits fail before any worker starts, naming the reason."""
    code = main(
        ["train", "--family", "made", "--dataset", "digits", "--set", "binarize=none",
         "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "made models binary data; got levels=17" in err and "Traceback" not in err
