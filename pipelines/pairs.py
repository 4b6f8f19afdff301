"""Image pairs for translation: two domains, paired or unpaired, generated or the user's own.

A pair dataset is a dataset kind whose batches carry a second image column, ``x_target`` (the
image of the other domain, ``x``'s shape); ``y`` stays the class label of ``x``'s source row
(-1 when unlabelled). Its ``batch_columns`` declare that (name → dtype, per-row shape), and a
family trains on it only if it finds every key of its ``batch_keys`` there (``pipelines.train``
checks before Ray starts). See docs/USES.md, "translate, pairs and batch keys".

Sources (``prepare_dataset`` hands them here; nothing is downloaded):

* ``<base>-<transform>-<mode>``, generated from a bundled dataset: ``base`` is ``mnist`` or
  ``digits``, ``transform`` is ``edge`` (``dilate(x, 3x3) - x``: the ring of pixels just outside
  the digit, as in CoGAN) or ``negative`` (``1 - x``), ``mode`` is ``paired`` or ``unpaired``.
  E.g. ``mnist-edge-paired``.
* ``pairs:<file.parquet>``: the user's pairs, a Parquet file with two image columns (``x`` and
  ``x_target`` if present, else its two columns other than ``y``, in order) and optionally ``y``.
* ``pairs:<folder A>,<folder B>``: two image folders whose files are matched by name (a name in
  one folder only is an error naming it).

Every image is binarised by a threshold at 1/2 (``binarize="fixed"``; the transforms are defined
on binary images, and the benchmark's IoU needs a foreground), so ``levels`` is 2.

Splitting: a seeded shuffle, optional ``limit``, validation / test per class (as
``pipelines.data``). **Unpaired mode**: the train split's rows are cut into two disjoint halves;
``x`` comes from the first, ``x_target`` from the transform of the second, so no pair ever
exists in training (``rows["train"]`` and ``target_rows["train"]`` share no source row).
Validation and test stay paired in both modes: they hold the truth a judge scores against.
The fingerprint hashes the images, the labels, the transform, the mode and the rows of each half.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import ColumnKind

TRANSFORMS = ("edge", "negative")
MODES = ("paired", "unpaired")
_BASES = ("mnist", "digits")
_NAME = re.compile(r"^(?P<base>[a-z]+)-(?P<transform>[a-z]+)-(?P<mode>[a-z]+)$")
_FORMAT = 1


# ----------------------------------------------------------------------------- transforms
def dilate(x: np.ndarray) -> np.ndarray:
    """Binary dilation by a 3x3 square over the last two axes (zero outside the image)."""
    x = np.asarray(x)
    h, w = x.shape[-2:]
    pad = np.zeros((*x.shape[:-2], h + 2, w + 2), x.dtype)
    pad[..., 1:-1, 1:-1] = x
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            out = np.maximum(out, pad[..., dy : dy + h, dx : dx + w])
    return out


def edge(x: np.ndarray) -> np.ndarray:
    """``dilate(x, 3x3) - x`` of a binary image: the pixels next to the shape, not in it."""
    x = np.asarray(x)
    return (dilate(x) - x).astype(x.dtype)


def negative(x: np.ndarray) -> np.ndarray:
    """``1 - x`` of a binary image."""
    x = np.asarray(x)
    return (1 - x).astype(x.dtype)


TRANSFORM_FNS = {"edge": edge, "negative": negative}


def parse_name(source: str) -> tuple[str, str, str] | None:
    """``(base, transform, mode)`` of a generated pair dataset's name, else ``None``; a name of
    that form with an unknown part is a ``ValueError`` naming it and the known ones."""
    m = _NAME.match(source.strip().lower())
    if not m or m["base"] not in _BASES:
        return None
    for part, known in (("transform", TRANSFORMS), ("mode", MODES)):
        if m[part] not in known:
            raise ValueError(
                f"unknown pair {part} {m[part]!r} in {source!r}: known {', '.join(known)}"
            )
    return m["base"], m["transform"], m["mode"]


def is_pair_source(source: str) -> bool:
    """True for a generated pair name (``mnist-edge-paired``...) or ``pairs:...``."""
    s = source.strip()
    if s.lower().startswith("pairs:"):
        return True
    m = _NAME.match(s.lower())
    return bool(m and m["base"] in _BASES)


# ----------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class PreparedPairs(ColumnKind):
    """A pair dataset read, binarised and split in NumPy, without Ray (cf. ``PreparedDataset``).

    ``raw`` holds domain A's images (binary, every source row), ``target`` domain B's (for a
    generated dataset, the transform of ``raw``); ``rows[s]`` are the source rows of split ``s``'s
    ``x`` and ``target_rows[s]`` those of its ``x_target`` (equal, except in unpaired training).
    """

    raw: np.ndarray
    target: np.ndarray
    y: np.ndarray
    rows: dict[str, np.ndarray]
    target_rows: dict[str, np.ndarray]
    domains: tuple[str, str] = ("a", "b")
    label_rows: None = field(default=None)

    @property
    def batch_columns(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The columns of every batch: name → (dtype, per-row shape)."""
        return {
            "x": ("float32", self.input_shape),
            "x_target": ("float32", self.input_shape),
            "y": ("int64", ()),
        }

    def visible_labels(self) -> np.ndarray:
        return self.y

    def all_labels(self) -> PreparedPairs:
        return self

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        """Split ``split``: ``x``, ``x_target`` (its own rows when unpaired) and ``y``."""
        return {
            "x": self.raw[self.rows[split]],
            "x_target": self.target[self.target_rows[split]],
            "y": self.y[self.rows[split]],
        }


def _threshold(x: np.ndarray, levels: int) -> np.ndarray:
    """Integers 0..L-1 → binary uint8 by a threshold at 1/2 of the range."""
    return (2 * x.astype(np.int64) >= levels - 1).astype(np.uint8)


def prepare_pairs(
    source: str,
    *,
    binarize: str = "fixed",
    seed: int = 0,
    split_sizes: tuple[int, int] | None = None,
    limit: int | None = None,
    labels_per_class: int | None = None,
) -> PreparedPairs:
    """Read or generate, binarise and split a pair dataset without Ray (see the module doc).

    Raises:
        ValueError: an unknown name or part, a bad setting, unmatched or mis-shaped pairs.
    """
    from . import data as D

    if binarize != "fixed":
        raise ValueError(
            f"binarize={binarize!r}: pair datasets are binary (a threshold at 1/2): use 'fixed'"
        )
    if labels_per_class is not None:
        raise ValueError("labels_per_class: a label budget does not apply to pair datasets")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    if limit is not None and (not isinstance(limit, int | np.integer) or limit < 3):
        raise ValueError(f"limit={limit!r}: expected at least 3 rows (train, validation, test)")
    seed = int(seed)
    parsed = parse_name(source)
    extra: dict[str, Any] = {}
    if parsed is not None:
        base, transform, mode = parsed
        x, y, raw_levels, default_sizes = D._CATALOGUE[base]()
        a = _threshold(np.asarray(x), raw_levels)
        b = TRANSFORM_FNS[transform](a)
        domains = ("digit", transform)
        name = f"{base}-{transform}-{mode}"
        key = name
        extra = {"base": base, "transform": transform}
    else:
        path = source.strip()[len("pairs:") :]
        mode, default_sizes, transform = "paired", None, None
        a, b, y, domains, raw_levels = _read_user_pairs(path)
        name = D.dataset_name(path.split(",")[0] if "," in path else path)
        key = "pairs:" + ",".join(str(Path(p).expanduser().resolve()) for p in path.split(","))
    y = np.full(len(a), -1, np.int64) if y is None else D._labels(y, len(a))
    if limit is not None and limit > len(a):
        raise ValueError(f"limit={limit}: the data has only {len(a)} rows")
    order = np.random.default_rng([seed, 0]).permutation(len(a))[:limit]
    n = len(order)
    if split_sizes is None:
        split_sizes = default_sizes if limit is None and default_sizes else (max(1, n // 10),) * 2
    n_val, n_test = (int(s) for s in split_sizes)
    need = 2 if mode == "unpaired" else 1  # the two halves each need a row
    if min(n_val, n_test) < 1 or n_val + n_test + need > n:
        raise ValueError(
            f"split_sizes={tuple(split_sizes)} need 1 <= validation, test and leave {need} "
            f"training row(s): the data has {n} rows"
        )
    stratified = bool((y >= 0).all())
    rows = D._split(order, y if stratified else np.zeros_like(y), n_val, n_test)
    target_rows = dict(rows)
    if mode == "unpaired":  # disjoint halves of the (shuffled) train rows: no pair exists
        train = rows["train"]
        half = len(train) // 2
        rows["train"], target_rows["train"] = train[:half], train[half : 2 * half]
    sizes = {s: len(rows[s]) for s in D.SPLITS}
    preprocessing: dict[str, Any] = {
        "format": _FORMAT,
        "kind": "pairs",
        "mode": mode,
        "domains": list(domains),
        "binarize": "fixed",  # for pairs: a threshold at 1/2 (below)
        "threshold": 0.5,
        "seed": seed,
        "split_sizes": sizes,
        "stratified": stratified,
        "limit": None if limit is None else int(limit),
        "raw_levels": int(raw_levels),
        "input_shape": list(a.shape[1:]),
        "train_rows_sha256": D.rows_digest(rows["train"]),
        "train_target_rows_sha256": D.rows_digest(target_rows["train"]),
        **extra,
    }
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    for arr in (a, b, y.astype("<i8")):
        digest.update(arr.tobytes())
    src = hashlib.sha256(json.dumps({"shape": list(a.shape), **extra}, sort_keys=True).encode())
    for arr in (a, b, y.astype("<i8")):
        src.update(arr.tobytes())
    return PreparedPairs(
        name=name,
        source=key,
        input_shape=tuple(int(d) for d in a.shape[1:]),
        levels=2,
        raw_levels=2,
        binarize=binarize,
        seed=seed,
        sizes=sizes,
        fingerprint=digest.hexdigest()[:16],
        source_fingerprint=src.hexdigest()[:16],
        preprocessing=preprocessing,
        raw=a,
        target=b,
        y=y,
        rows=rows,
        target_rows=target_rows,
        domains=tuple(domains),
    )


# ----------------------------------------------------------------------------- user pairs
def _binary(x: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    from .data import _as_input_shape, _quantise

    try:
        q, levels = _quantise(_as_input_shape(x), 256 if np.asarray(x).dtype.kind == "f" else None)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return _threshold(q, levels), levels


def _read_user_pairs(path: str):
    """``(a, b, y, domains, raw_levels)`` from a Parquet file or two image folders."""
    import pyarrow.fs as pafs

    from .data import _column_numpy, _read_images

    parts = [p.strip() for p in path.split(",")]
    if len(parts) == 2:  # two image folders matched by file name
        fs = pafs.LocalFileSystem()
        files = []
        for p in parts:
            root = str(Path(p).expanduser().resolve())
            if fs.get_file_info(root).type != pafs.FileType.Directory:
                raise ValueError(f"pairs: {p!r} is not an image folder")
            sel = pafs.FileSelector(root, recursive=False)
            files.append(
                {
                    Path(f.path).stem: f.path
                    for f in fs.get_file_info(sel)
                    if f.is_file and not Path(f.path).name.startswith(".")
                }
            )
        only = sorted(set(files[0]) ^ set(files[1]))
        if only:
            where = parts[0] if only[0] in files[0] else parts[1]
            raise ValueError(
                f"pairs: {len(only)} file name(s) have no partner, e.g. {only[0]!r} in {where!r} "
                "(the two folders are matched by file name)"
            )
        if not files[0]:
            raise ValueError(f"pairs: no images in {parts[0]!r}")
        names = sorted(files[0])
        arrays = []
        for p, found in zip(parts, files):
            import tempfile

            # Read in name order through the shared image reader (one folder, no classes).
            with tempfile.TemporaryDirectory() as tmp:
                for i, stem in enumerate(names):
                    src = Path(found[stem])
                    (Path(tmp) / f"{i:08d}{src.suffix.lower()}").symlink_to(src)
                x, _, _ = _read_images(fs, tmp)
            arrays.append(_binary(x, f"pairs folder {p!r}"))
        (a, levels), (b, _) = arrays
        domains = tuple(_domain_name(p) for p in parts)
        y = None
    elif len(parts) == 1:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(str(Path(parts[0]).expanduser()))
        except (OSError, pa.ArrowInvalid) as e:
            raise ValueError(f"pairs: cannot read Parquet data at {parts[0]!r}: {e}") from None
        cols = [c for c in table.column_names if c != "y"]
        if {"x", "x_target"} <= set(cols):
            cols = ["x", "x_target"]
        if len(cols) != 2:
            raise ValueError(
                f"pairs: {parts[0]!r} needs two image columns (x and x_target, or exactly two "
                f"besides y); it has {', '.join(table.column_names) or 'none'}"
            )
        a, levels = _binary(_column_numpy(table.column(cols[0]), cols[0]), f"column {cols[0]!r}")
        b, _ = _binary(_column_numpy(table.column(cols[1]), cols[1]), f"column {cols[1]!r}")
        y = table.column("y").to_numpy() if "y" in table.column_names else None
        domains = (cols[0], cols[1])
    else:
        raise ValueError(f"pairs: give a Parquet file or two folders 'A,B', got {path!r}")
    if a.shape != b.shape:
        raise ValueError(
            f"pairs: the two domains' images differ in shape: {a.shape[1:]} and {b.shape[1:]}"
        )
    return a, b, y, domains, levels


def _domain_name(path: str) -> str:
    """A domain's name: its folder's stem."""
    from .data import dataset_name

    return dataset_name(path)
