"""``genmodels impute`` and ``genmodels embed`` against a real registry (no Ray needed: the
version's own split is rebuilt in NumPy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import genmodels
from pipelines import registry
from pipelines.cli import main
from pipelines.data import prepare_dataset
from pipelines.masks import make_masks
from pipelines.uses import split_arrays


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """MADE and VAE on the 8x8 digits, registered with the data's real lineage (untrained: the
    commands' plumbing is under test here; the imputation maths is tested per family)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('cli-uses') / 'mlflow.db'}"
    data = prepare_dataset("digits", binarize="fixed", seed=0)
    exp = registry.ensure_experiment(uri, "cli-uses")
    c = registry.client(uri)
    for family, cfg in (("made", {"hidden_sizes": (16,)}), ("vae", {"latent_dim": 3})):
        torch.manual_seed(0)
        model = genmodels.build(family, data.input_shape, data.levels, **cfg)
        meta = {
            "dataset": data.name,
            "source": data.source,
            "fingerprint": data.fingerprint,
            "preprocessing": data.preprocessing,
            "method": "m",
        }
        registry.register_model(uri, c.create_run(exp).info.run_id, model, meta, {"val_score": 0.0})
    return uri, data


def test_impute_writes_masked_imputed_truth_rows(store, tmp_path, capsys):
    uri, data = store
    out = tmp_path / "imp.npz"
    args = ["impute", "--model", "made-digits", "--tracking-uri", uri, "--mask", "centre"]
    assert main([*args, "--n", "5", "--num-samples", "2", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "imputed 5 test examples of made-digits v1 under the centre mask" in line
    arrays = np.load(out)
    x_test, _ = split_arrays(data, "test")
    assert np.array_equal(arrays["x"], x_test[:5])  # the version's own test split
    mask = make_masks("centre", 5, data.input_shape)
    assert np.array_equal(arrays["mask"], mask)
    s = arrays["samples"]
    assert s.shape == (2, 5, *data.input_shape)
    assert np.array_equal(s[:, mask == 1], np.broadcast_to(arrays["x"][mask == 1], (2, mask.sum())))
    png = tmp_path / "imp.png"
    assert main([*args, "--n", "3", "--num-samples", "2", "--out", str(png), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert np.asarray(body["samples"]).shape == (2, 3, *data.input_shape)
    img = np.asarray(Image.open(png))
    # 3 rows x (masked, 2 imputations, truth) of 8x8 tiles with 1-px gaps, scaled up evenly
    h, w = 3 * 9 + 1, 4 * 9 + 1
    assert img.shape[0] * w == img.shape[1] * h
    scale = img.shape[0] // h
    tile = img[scale : scale * 9 : scale, scale : scale * 9 : scale]  # first masked tile
    m0 = mask[0, 0].astype(bool)
    assert (tile[~m0] == 128).all() and set(np.unique(tile[m0])) <= {0, 255}


def test_embed_writes_the_models_embedding(store, tmp_path, capsys):
    uri, data = store
    out = tmp_path / "emb.npz"
    cmd = ["embed", "--model", "vae-digits", "--tracking-uri", uri, "--out", str(out), "--n", "7"]
    assert main(cmd) == 0
    z = np.load(out)
    x, y = split_arrays(data, "test")
    model, _ = registry.load_version(uri, "vae-digits", "champion")
    assert np.allclose(
        z["embedding"], model.embed(torch.from_numpy(x[:7])).detach().numpy(), atol=1e-5
    )
    assert np.array_equal(z["y"], y[:7])
    assert "7 test examples of vae-digits v1: 3 dims" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["impute", "--model", "made-digits", "--out", "x.gif"], "bad value 'x.gif' for --out"),
        (["impute", "--model", "made-digits", "--n", "0"], "bad value 0 for --n"),
        (["impute", "--model", "made-digits", "--num-samples", "99"], "--num-samples"),
        (["embed", "--model", "made-digits"], "has no capability 'embed'"),
        (["impute", "--model", "nope-digits"], "nope-digits"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(store, tmp_path, capsys, argv, fragment):
    uri, _ = store
    assert main([*argv, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------ classify
@pytest.fixture(scope="module")
def classifier(store):
    """A test-only classifier (``classify_family``) trained on a 5-labels-per-class draw of the
    digits and registered with that data's lineage (the label budget in its fingerprint)."""
    from tests.pipelines import classify_family

    uri, _ = store
    classify_family.install()
    data = prepare_dataset("digits", binarize="fixed", seed=0, labels_per_class=5)
    x, _ = split_arrays(data, "train")
    kept = np.isin(data.rows["train"], data.label_rows)  # the drawn rows' labels, no other
    y = data.visible_labels()[data.rows["train"]]
    assert (y[~kept] == -1).all() and len(data.label_rows) == 50
    torch.manual_seed(0)
    model = genmodels.build(classify_family.FAMILY, data.input_shape, data.levels)
    classify_family.fit(model, torch.from_numpy(x[kept]), torch.from_numpy(y[kept]))
    meta = {
        "dataset": data.name,
        "source": data.source,
        "fingerprint": data.fingerprint,
        "preprocessing": data.preprocessing,
        "method": "none",
    }
    c = registry.client(uri)
    run_id = c.create_run(registry.ensure_experiment(uri, "cli-uses")).info.run_id
    registry.register_model(uri, run_id, model, meta, {"val_score": float("nan")})
    yield uri, data
    classify_family.uninstall()


def test_classify_reports_accuracy_and_confusion_on_every_test_label(classifier, capsys):
    """The version's own test split is rebuilt with the same label draw (same fingerprint) and
    judged against *every* test label (-1 only inside training): the confusion matrix equals
    the counts of (true, predicted) pairs computed here from the registered model."""
    uri, data = classifier
    cmd = ["classify", "--model", "probeclf-digits", "--tracking-uri", uri]
    assert main([*cmd, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    x, y = split_arrays(data, "test")
    assert (y >= 0).all() and out["n"] == len(y) == data.sizes["test"]
    model, _ = registry.load_version(uri, "probeclf-digits", "champion")
    with torch.no_grad():
        pred = model.classify(torch.from_numpy(x)).argmax(1).numpy()
    want = np.array([[np.sum((y == i) & (pred == j)) for j in range(10)] for i in range(10)])
    assert np.array_equal(np.asarray(out["confusion"]), want)
    assert out["accuracy"] == pytest.approx(np.mean(pred == y))
    assert 0.5 < out["accuracy"] < 1.0  # 50 labels: far better than chance (0.1), not perfect
    per_class = np.diag(want) / want.sum(1)
    assert np.allclose(out["per_class_accuracy"], per_class)
    assert out["trained_with"] == "5 labels per class" and out["num_classes"] == 10

    assert main(cmd) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"classified {len(y)} test examples of digits with probeclf")
    assert "trained with 5 labels per class" in lines[0]
    assert f"({int(np.trace(want))}/{len(y)})" in lines[0]
    rows = [line.split() for line in lines[3:13]]  # 10 classes under the header
    assert [[int(v) for v in r[1:11]] for r in rows] == want.tolist()


def test_classify_errors_are_one_line_and_exit_2(classifier, tmp_path, capsys):
    uri, _ = classifier
    unlabelled = tmp_path / "unlabelled.npy"
    np.save(unlabelled, np.random.default_rng(0).integers(0, 2, (40, 8, 8)).astype(np.uint8))
    cases = [
        (["--model", "made-digits"], "has no capability 'classify'; it has: "),
        (["--model", "probeclf-digits", "--dataset", str(unlabelled)], "has no labels"),
        (["--model", "probeclf-digits", "--n", "0"], "bad value 0 for --n"),
        (["--model", "probeclf-digits", "--batch-size", "0"], "bad value 0 for --batch-size"),
    ]
    for argv, fragment in cases:
        assert main(["classify", *argv, "--tracking-uri", uri]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
