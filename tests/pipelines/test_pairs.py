"""Pair datasets (pipelines/pairs.py): the transforms on hand-made images, paired and unpaired
splits (the unpaired halves share no source row), the user's own pairs, and the errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import pairs
from pipelines.data import prepare_dataset


def test_edge_of_a_hand_made_square():
    x = np.zeros((1, 1, 6, 6), np.uint8)
    x[..., 2:4, 2:4] = 1  # a 2x2 square
    want = np.zeros((6, 6), np.uint8)
    want[1:5, 1:5] = 1  # the 4x4 ring around it, the square itself excluded
    want[2:4, 2:4] = 0
    np.testing.assert_array_equal(pairs.edge(x)[0, 0], want)
    assert pairs.edge(x).sum() == 12


def test_edge_at_the_border_and_of_a_single_pixel():
    x = np.zeros((1, 1, 3, 3), np.uint8)
    x[..., 0, 0] = 1  # a corner: the dilation is clipped to the image
    np.testing.assert_array_equal(pairs.edge(x)[0, 0], [[0, 1, 0], [1, 1, 0], [0, 0, 0]])
    full = np.ones((1, 1, 3, 3), np.uint8)
    assert pairs.edge(full).sum() == 0  # nothing outside a full image
    assert pairs.edge(np.zeros((1, 1, 3, 3), np.uint8)).sum() == 0


def test_negative_of_a_hand_made_image():
    x = np.array([[[[0, 1], [1, 0]]]], np.uint8)
    np.testing.assert_array_equal(pairs.negative(x), [[[[1, 0], [0, 1]]]])
    np.testing.assert_array_equal(pairs.negative(pairs.negative(x)), x)


def test_paired_dataset_pairs_each_digit_with_its_transform():
    d = prepare_dataset("digits-edge-paired", seed=1)
    assert d.batch_columns["x_target"] == ("float32", (1, 8, 8))
    for split in ("train", "validation", "test"):
        a = d.arrays(split)
        np.testing.assert_array_equal(a["x_target"], pairs.edge(a["x"]))
        assert set(np.unique(a["x"])) <= {0.0, 1.0}
    assert d.preprocessing["domains"] == ["digit", "edge"]


def test_unpaired_halves_share_no_source_row():
    d = prepare_dataset("digits-negative-unpaired", seed=3)
    a, b = d.rows["train"], d.target_rows["train"]
    assert len(a) == len(b) > 600 and not set(a.tolist()) & set(b.tolist())
    train = d.arrays("train")
    # no x_target row is the transform of any x row's source (no pair in training)
    assert not (train["x_target"] == 1 - train["x"]).all(axis=(1, 2, 3)).any()
    # control: the paired dataset's train split is every row paired with itself
    p = prepare_dataset("digits-negative-paired", seed=3)
    np.testing.assert_array_equal(p.rows["train"], p.target_rows["train"])
    # validation and test stay paired (the judge's truth)
    v = d.arrays("test")
    np.testing.assert_array_equal(v["x_target"], 1 - v["x"])
    assert d.fingerprint != p.fingerprint


def test_seeded_and_fingerprinted():
    a, b = prepare_dataset("digits-edge-paired", seed=0), prepare_dataset("digits-edge-paired")
    assert a.fingerprint == b.fingerprint
    assert prepare_dataset("digits-edge-paired", seed=1).fingerprint != a.fingerprint
    assert prepare_dataset("digits-negative-paired").fingerprint != a.fingerprint


def test_bad_names_and_settings():
    with pytest.raises(ValueError, match=r"unknown pair transform 'blur'.*edge, negative"):
        prepare_dataset("mnist-blur-paired")
    with pytest.raises(ValueError, match="unknown pair mode 'half'"):
        prepare_dataset("mnist-edge-half")
    with pytest.raises(ValueError, match="binarize='none'"):
        prepare_dataset("mnist-edge-paired", binarize="none")
    with pytest.raises(ValueError, match="label budget"):
        prepare_dataset("mnist-edge-paired", labels_per_class=5)


def test_user_parquet_pairs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 5, 5)).astype(np.uint8)
    t = (255 - x).astype(np.uint8)
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "src": [r.tolist() for r in x],
                "dst": [r.tolist() for r in t],
            }
        ),
        path,
    )
    d = prepare_dataset(f"pairs:{path}", split_sizes=(3, 3))
    assert d.input_shape == (1, 5, 5) and d.preprocessing["domains"] == ["src", "dst"]
    a = d.arrays("test")
    # threshold at 1/2 of both sides: x >= 128 and 255 - x >= 128 are complements
    np.testing.assert_array_equal(a["x_target"], 1 - a["x"])
    bad = tmp_path / "one.parquet"
    pq.write_table(pa.table({"x": [[1, 0]] * 5}), bad)
    with pytest.raises(ValueError, match="two image columns"):
        prepare_dataset(f"pairs:{bad}")


def test_user_image_folders_matched_by_name(tmp_path):
    from PIL import Image

    a_dir, b_dir = tmp_path / "sketch", tmp_path / "photo"
    a_dir.mkdir()
    b_dir.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        img = (rng.random((6, 6)) > 0.5).astype(np.uint8) * 255
        Image.fromarray(img).save(a_dir / f"im{i:02d}.png")
        Image.fromarray(255 - img).save(b_dir / f"im{i:02d}.png")
    d = prepare_dataset(f"pairs:{a_dir},{b_dir}", split_sizes=(2, 2))
    assert d.preprocessing["domains"] == ["sketch", "photo"]
    a = d.arrays("train")
    np.testing.assert_array_equal(a["x_target"], 1 - a["x"])
    (b_dir / "im03.png").unlink()
    with pytest.raises(ValueError, match=r"no partner.*'im03'"):
        prepare_dataset(f"pairs:{a_dir},{b_dir}", split_sizes=(2, 2))
