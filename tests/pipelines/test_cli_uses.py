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
