"""Sequence datasets: moving digits generated from the bundled MNIST digits (next-frame prediction).

``moving-mnist`` (= ``moving-mnist-2``) and ``moving-mnist-1``: one or two MNIST digits bouncing
in a 32x32 frame, ``T = 10`` frames per sequence (a predictor sees the first 5 and predicts the
last 5; the split point is the model's ``context``, not a property of the data). Every choice:

* **Digits.** The bundled digits (the ``mnist`` catalogue entry: 5,000 real 28x28 MNIST digits,
  256 grey levels) are split three ways *exactly* as ``prepare_dataset("mnist", seed=s)`` splits
  them (seeded shuffle, stratified 4,000 / 500 / 500): a train sequence only holds train-split
  digits, a validation or test sequence only its own split's. So the yardstick classifier of
  ``mnist`` under the same seed (trained on the train digits) never saw a test sequence's digit.
* **Size.** Each digit is shrunk to 14x14 by 2x2 mean pooling (exact, no interpolation library;
  rounded half up to an integer), so it can move 18 px each way inside 32x32 (a 28x28 digit
  could move 4).
* **Motion.** A uniform integer start position (top-left corner in 0..18 on each axis) and a
  constant integer velocity, each component uniform in -3..3 (not both 0); at a border the
  position is reflected and that component of the velocity flips (``p < 0 → -p``,
  ``p > 18 → 36 - p``). Integer motion keeps every frame exactly in the data space (no
  sub-pixel resampling), so the future is a deterministic function of the past: the
  "multiple answers" are the model's own uncertainty about it.
* **Two digits** overlap by the pixel-wise maximum (the usual Moving MNIST rule; a sum would
  leave the data space).
* **Grey values, L = 256.** The frames keep the digits' own 8-bit grey (after the pooling's
  rounding, nothing else is lost): blur shows as intermediate greys and nothing is binarised.
  ``binarize`` does not apply (``"fixed"``, the CLI's default, and ``"none"`` both mean grey;
  ``"dynamic"`` is refused), and is recorded as ``"none"``.
* **Counts.** 6,000 train, 500 validation, 500 test sequences by default (``split_sizes`` sets
  the last two; ``limit=N`` makes N sequences in all, a tenth each held out). The digit split
  never changes with them.
* **Reproducible.** Sequence ``i`` of split ``s`` is drawn from its own generator
  ``default_rng([seed, 3, split index, i])``: the same seed gives the same sequence whatever the
  counts, another seed other sequences. ``meta[s]`` keeps, per sequence, the source rows of its
  digits, their labels and their positions in every frame (the benchmark crops on them).
* **Columns** (``batch_columns``): ``x`` is the whole sequence ``(T, 1, 32, 32)`` (float32,
  integers 0..255): a sequence is one example, so the kind adds no key and a predictor's
  ``batch_keys`` stay ``("x",)``; ``y`` is the label of the first digit. Streamed through Ray
  Data like every kind (uint8 blocks, cast to float32 in a ``map_batches``).
* **Fingerprint**: the settings and every generated frame, label and source row; the source
  fingerprint: the digits and the generator's settings (not the seed or the counts).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import ColumnKind

FRAMES = 10  # T
FRAME = 32  # frame side (px)
DIGIT = 14  # digit side after 2x2 pooling (px)
MAX_SPEED = 3  # px per frame, per axis
LEVELS = 256
DEFAULT_COUNTS = (6000, 500, 500)  # train, validation, test sequences
_NAME = re.compile(r"^moving-mnist(?:-(?P<digits>\d+))?$")
_SPLIT_ID = {"train": 0, "validation": 1, "test": 2}
_FORMAT = 1


def parse_name(source: str) -> int | None:
    """The number of digits of a ``moving-mnist[-K]`` name, else ``None``; ``K`` other than 1 or
    2 is a ``ValueError`` naming the known ones."""
    m = _NAME.match(source.strip().lower())
    if not m:
        return None
    k = int(m["digits"] or 2)
    if k not in (1, 2):
        raise ValueError(f"{source!r}: moving-mnist has 1 or 2 digits (moving-mnist-1, -2)")
    return k


def is_sequence_source(source: str) -> bool:
    """True for ``moving-mnist``, ``moving-mnist-1``, ``moving-mnist-2`` (and other ``-K``, which
    ``prepare_sequences`` then refuses with a clear message)."""
    return bool(_NAME.match(source.strip().lower()))


def pool_digits(x: np.ndarray) -> np.ndarray:
    """``(N, 1, 28, 28)`` uint8 → ``(N, 14, 14)`` uint8 by 2x2 means, rounded half up."""
    x = np.asarray(x, np.int64)[:, 0]
    s = x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def trajectory(rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
    """``(frames, 2)`` integer top-left positions (row, col) of one digit: uniform start,
    constant velocity in -3..3 per axis (not both 0), reflected at the borders."""
    room = FRAME - DIGIT
    p = rng.integers(0, room + 1, size=2)
    v = np.zeros(2, np.int64)
    while not v.any():
        v = rng.integers(-MAX_SPEED, MAX_SPEED + 1, size=2)
    out = np.empty((frames, 2), np.int64)
    for t in range(frames):
        out[t] = p
        p = p + v
        low, high = p < 0, p > room
        p = np.where(low, -p, np.where(high, 2 * room - p, p))
        v = np.where(low | high, -v, v)
    return out


def render(digits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``(T, 1, 32, 32)`` uint8 frames: each digit ``(K, 14, 14)`` at its ``(T, K, 2)``
    positions, overlaps by the maximum."""
    frames = np.zeros((positions.shape[0], 1, FRAME, FRAME), np.uint8)
    for t, pos in enumerate(positions):
        for d, (r, c) in zip(digits, pos):
            view = frames[t, 0, r : r + DIGIT, c : c + DIGIT]
            np.maximum(view, d, out=view)
    return frames


def generate(
    pooled: np.ndarray, pool_rows: np.ndarray, n: int, n_digits: int, seed: int, split: str
) -> dict[str, np.ndarray]:
    """``n`` sequences of ``split`` from the digits at source rows ``pool_rows`` (``pooled`` is
    indexed by source row): ``x`` ``(n, T, 1, 32, 32)`` uint8, ``sources`` ``(n, K)`` source
    rows, ``positions`` ``(n, T, K, 2)``. Sequence ``i`` depends on ``(seed, split, i)`` alone."""
    x = np.empty((n, FRAMES, 1, FRAME, FRAME), np.uint8)
    sources = np.empty((n, n_digits), np.int64)
    positions = np.empty((n, FRAMES, n_digits, 2), np.int16)
    for i in range(n):
        rng = np.random.default_rng([seed, 3, _SPLIT_ID[split], i])
        src = rng.choice(pool_rows, size=n_digits, replace=False)
        pos = np.stack([trajectory(rng) for _ in range(n_digits)], 1)
        x[i] = render(pooled[src], pos)
        sources[i], positions[i] = src, pos
    return {"x": x, "sources": sources, "positions": positions}


# ----------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class PreparedSequences(ColumnKind):
    """A sequence dataset generated in NumPy, without Ray (cf. ``PreparedDataset``).

    ``seqs[s]`` holds split ``s``'s frames ``(N, T, 1, 32, 32)`` uint8; ``meta[s]`` their digits'
    ``sources`` (source rows of the ``mnist`` entry), ``labels`` and ``positions``;
    ``digit_rows[s]`` the source rows split ``s`` draws its digits from.
    """

    seqs: dict[str, np.ndarray]
    meta: dict[str, dict[str, np.ndarray]]
    digit_rows: dict[str, np.ndarray]
    n_digits: int = 2
    label_rows: None = field(default=None)

    @property
    def batch_columns(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The columns of every batch: name → (dtype, per-row shape)."""
        return {"x": ("float32", self.input_shape), "y": ("int64", ())}

    def all_labels(self) -> PreparedSequences:
        return self

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        """Split ``split``: ``x`` ``(N, T, 1, 32, 32)`` and ``y`` (the first digit's label)."""
        return {"x": self.seqs[split], "y": self.meta[split]["labels"][:, 0]}

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        a = self.arrays(split)
        return a["x"], a["y"]


def prepare_sequences(
    source: str,
    *,
    binarize: str = "fixed",
    seed: int = 0,
    split_sizes: tuple[int, int] | None = None,
    limit: int | None = None,
    labels_per_class: int | None = None,
) -> PreparedSequences:
    """Generate a moving-digits dataset without Ray (see the module doc).

    Raises:
        ValueError: an unknown name, a bad setting.
    """
    from . import data as D

    n_digits = parse_name(source)
    if n_digits is None:
        raise ValueError(f"{source!r} is not a sequence dataset (moving-mnist, moving-mnist-1)")
    if binarize not in ("fixed", "none"):
        raise ValueError(
            f"binarize={binarize!r}: moving digits are grey (256 levels), not binarised; "
            "leave the default"
        )
    if labels_per_class is not None:
        raise ValueError("labels_per_class: a label budget does not apply to sequence datasets")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    if limit is not None and (not isinstance(limit, int | np.integer) or limit < 3):
        raise ValueError(
            f"limit={limit!r}: expected at least 3 sequences (train, validation, test)"
        )
    seed = int(seed)
    if limit is None:
        n_train, n_val, n_test = DEFAULT_COUNTS
        if split_sizes is not None:
            n_val, n_test = (int(s) for s in split_sizes)
    else:
        n_val, n_test = (int(s) for s in split_sizes) if split_sizes else (max(1, limit // 10),) * 2
        n_train = int(limit) - n_val - n_test
    if min(n_val, n_test, n_train) < 1:
        raise ValueError(
            f"split_sizes=({n_val}, {n_test}) need 1 <= validation, test and leave training "
            f"sequences (limit={limit})"
        )
    x, y, raw_levels, (d_val, d_test) = D._CATALOGUE["mnist"]()
    # The digit split of prepare_dataset("mnist", seed=seed): same shuffle, same strata.
    order = np.random.default_rng([seed, 0]).permutation(len(x))
    digit_rows = D._split(order, np.asarray(y), d_val, d_test)
    pooled = pool_digits(x)
    counts = {"train": n_train, "validation": n_val, "test": n_test}
    seqs, meta = {}, {}
    for split in D.SPLITS:
        g = generate(pooled, digit_rows[split], counts[split], n_digits, seed, split)
        seqs[split] = g["x"]
        meta[split] = {
            "sources": g["sources"],
            "labels": np.asarray(y, np.int64)[g["sources"]],
            "positions": g["positions"],
        }
    name = "moving-mnist" if n_digits == 2 else f"moving-mnist-{n_digits}"  # one name per data
    generator = {
        "frames": FRAMES,
        "frame": FRAME,
        "digit": DIGIT,
        "digit_resize": "2x2-mean-round-half-up",
        "max_speed": MAX_SPEED,
        "borders": "reflect",
        "overlap": "max",
        "digits": n_digits,
        "base": "mnist",
    }
    preprocessing: dict[str, Any] = {
        "format": _FORMAT,
        "kind": "sequences",
        **generator,
        "binarize": "none",  # grey frames: binarize does not apply
        "seed": seed,
        "split_sizes": counts,
        "limit": None if limit is None else int(limit),
        "raw_levels": LEVELS,
        "input_shape": [FRAMES, 1, FRAME, FRAME],
        "digit_rows_sha256": {s: D.rows_digest(digit_rows[s]) for s in D.SPLITS},
    }
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    for split in D.SPLITS:
        digest.update(np.ascontiguousarray(seqs[split]).tobytes())
        digest.update(meta[split]["sources"].astype("<i8").tobytes())
        digest.update(meta[split]["labels"].astype("<i8").tobytes())
    src = hashlib.sha256(json.dumps(generator, sort_keys=True).encode())
    src.update(np.ascontiguousarray(x).tobytes())
    src.update(np.asarray(y, "<i8").tobytes())
    return PreparedSequences(
        name=name,
        source=name,
        input_shape=(FRAMES, 1, FRAME, FRAME),
        levels=LEVELS,
        raw_levels=int(raw_levels),
        binarize="none",
        seed=seed,
        sizes=counts,
        fingerprint=digest.hexdigest()[:16],
        source_fingerprint=src.hexdigest()[:16],
        preprocessing=preprocessing,
        seqs=seqs,
        meta=meta,
        digit_rows=digit_rows,
        n_digits=n_digits,
    )
