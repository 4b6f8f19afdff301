"""Captioned digit pairs (``mnist-captions``): text → image in the small, from the bundled digits.

A caption dataset is a dataset kind whose batches carry a token-id column ``caption`` beside the
image ``x`` (see docs/USES.md, "captions"). Nothing is downloaded: every canvas is two of the
bundled MNIST digits (the ``mnist`` catalogue entry of ``pipelines.data``) side by side.

Choices, and why:

* **Canvas**: ``(1, 28, 56)``, the left digit in columns 0-27 and the right one in 28-55, each
  binarised by a threshold at 1/2 (as the pair datasets: a clean foreground; ``levels`` 2).
* **Captions**: ``"<a> left of <b>"`` or ``"<b> right of <a>"`` for the canvas with ``a`` on the
  left and ``b`` on the right (both phrasings describe the same canvas: a model must learn that
  the relation word swaps the roles), each digit written as a numeral or a word ("3" / "three"),
  the phrasing and the spelling drawn per row (seeded). The vocabulary is fixed
  (``genmodels.text.DIGIT_CAPTION_VOCABULARY``: 23 words) and the ids are right-padded to
  ``max_length`` 8 (``genmodels.text.Tokenizer``, the one a caption model uses).
* **Held-out pairs**: ``HELD_OUT``, 10 ordered pairs fixed in code by the rule b = a + 3 (mod 10):
  every digit is the left of one held-out pair and the right of another, and the reversed pairs
  ((3, 0) ...) stay in training, so order matters. No train canvas shows one, so no training
  caption (in either phrasing) names one; validation and test hold every one of the 100 ordered
  pairs equally often (``held_out`` marks the rows), so a judge can score seen and held-out
  pairs separately.
* **Splits from the digits' splits**: the 5,000 digits are split exactly as ``mnist`` is for the
  same seed (the same shuffle and per-class split, 4,000 / 500 / 500), and each split's canvases
  are built from that split's digits only: no test digit is ever in a training canvas, and the
  yardstick trained on the ``mnist`` train split never saw a validation or test digit.
* **Sizes**: ``limit`` is the number of train canvases (default 20,000: pairs drawn uniformly
  from the 90 seen pairs, digits uniformly within their class); ``split_sizes`` the numbers of
  validation and test canvases (default 1,000 each: canvas i shows pair i mod 100).
* **Columns**: ``x`` float32 ``(1, 28, 56)``, ``caption`` int64 ``(8,)``, ``y`` int64 = -1. A canvas
  has no single class, and the pair is what the caption says: the digits of each row are kept on
  the driver only (``digits``, ``(N, 2)``, for judges and tests), never in a Ray block, so
  training learns the digits from the captions. With ``y`` = -1 the pipelines build no
  yardstick (it would need a class per image) and select on the validation likelihood.
* Seeded (every draw from ``default_rng([seed, k])``) and fingerprinted (the settings, canvases,
  caption ids and digits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genmodels.text import DIGIT_CAPTION_VOCABULARY, DIGIT_WORDS, MAX_CAPTION_LENGTH, Tokenizer

from .data import ColumnKind

NAME = "mnist-captions"
HELD_OUT: tuple[tuple[int, int], ...] = tuple((a, (a + 3) % 10) for a in range(10))
SEEN: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a in range(10) for b in range(10) if (a, b) not in HELD_OUT
)
TRAIN_CANVASES, HELD_CANVASES = 20_000, (1000, 1000)
_FORMAT = 1


def is_caption_source(source: str) -> bool:
    return source.strip().lower() == NAME


def canvas(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two ``(..., 1, 28, 28)`` digits side by side → ``(..., 1, 28, 56)``."""
    return np.concatenate([left, right], axis=-1)


def caption(left: int, right: int, phrasing: str = "left", words: tuple[bool, bool] = (0, 0)):
    """The caption of the canvas with ``left`` and ``right``: ``"3 left of 7"`` or ``"7 right of
    3"``; ``words`` spells (left, right) digit as a word ("three") instead of a numeral."""
    a = DIGIT_WORDS[left] if words[0] else str(left)
    b = DIGIT_WORDS[right] if words[1] else str(right)
    if phrasing == "left":
        return f"{a} left of {b}"
    if phrasing == "right":
        return f"{b} right of {a}"
    raise ValueError(f"phrasing must be 'left' or 'right', got {phrasing!r}")


@dataclass(frozen=True)
class PreparedCaptions(ColumnKind):
    """A caption dataset built in NumPy, without Ray (cf. ``PreparedDataset``): ``raw`` holds
    every canvas (binary uint8), ``rows[s]`` split ``s``'s rows of it."""

    raw: np.ndarray
    caption: np.ndarray  # (N, max_length) int64 token ids
    text: tuple[str, ...]  # the captions as strings
    digits: np.ndarray  # (N, 2) (left, right): driver only, never in a batch
    held_out: np.ndarray  # (N,) bool: the row shows a held-out pair
    y: np.ndarray  # (N,) -1
    rows: dict[str, np.ndarray]
    label_rows: None = field(default=None)

    @property
    def batch_columns(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The columns of every batch: name → (dtype, per-row shape)."""
        return {
            "x": ("float32", self.input_shape),
            "caption": ("int64", (self.caption.shape[1],)),
            "y": ("int64", ()),
        }

    def visible_labels(self) -> np.ndarray:
        return self.y

    def all_labels(self) -> PreparedCaptions:
        return self

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        """Split ``split``: ``x`` (28x56 canvases), ``caption`` (token ids) and ``y`` (-1)."""
        r = self.rows[split]
        return {"x": self.raw[r], "caption": self.caption[r], "y": self.y[r]}


def _draw(
    rng: np.random.Generator, pairs: np.ndarray, digit_rows: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """For each ordered pair ``(a, b)``, a random digit row of class a and one of class b."""
    out = np.empty(pairs.shape, np.int64)
    for c in range(10):
        pool = digit_rows[labels[digit_rows] == c]
        for side in (0, 1):
            want = pairs[:, side] == c
            out[want, side] = pool[rng.integers(len(pool), size=int(want.sum()))]
    return out


def digit_splits(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The bundled digits binarised by a threshold at 1/2 ``(5000, 1, 28, 28)`` uint8, their
    labels, and each split's digit rows: the ``mnist`` dataset's split for ``seed`` (the same
    shuffle and per-class split as ``pipelines.data.prepare_dataset``)."""
    from . import data as D
    from .pairs import _threshold

    x, y, raw_levels, (d_val, d_test) = D._CATALOGUE["mnist"]()
    binary = _threshold(np.asarray(x), raw_levels)
    y = np.asarray(y, np.int64)
    order = np.random.default_rng([seed, 0]).permutation(len(binary))
    return binary, y, D._split(order, y, d_val, d_test)


def prepare_captions(
    source: str,
    *,
    binarize: str = "fixed",
    seed: int = 0,
    split_sizes: tuple[int, int] | None = None,
    limit: int | None = None,
    labels_per_class: int | None = None,
) -> PreparedCaptions:
    """Build ``mnist-captions`` (see the module doc): ``limit`` train canvases (default 20,000),
    ``split_sizes`` validation and test canvases (default 1,000 each).

    Raises:
        ValueError: an unknown source or a bad setting.
    """
    from . import data as D

    if not is_caption_source(source):
        raise ValueError(f"unknown caption dataset {source!r}: known {NAME}")
    if binarize != "fixed":
        raise ValueError(
            f"binarize={binarize!r}: caption canvases are binary (a threshold at 1/2): use 'fixed'"
        )
    if labels_per_class is not None:
        raise ValueError("labels_per_class: a label budget does not apply to caption datasets")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    n_train = TRAIN_CANVASES if limit is None else limit
    n_val, n_test = HELD_CANVASES if split_sizes is None else split_sizes
    for what, v in (("limit", n_train), ("validation", n_val), ("test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{what}={v!r}: expected a number of canvases >= 1")
    seed = int(seed)
    binary, y, digit_rows = digit_splits(seed)

    seen = np.array(SEEN)
    every = np.array([(a, b) for a in range(10) for b in range(10)])
    pairs = {
        "train": seen[np.random.default_rng([seed, 3]).integers(len(seen), size=int(n_train))],
        "validation": every[np.arange(int(n_val)) % 100],
        "test": every[np.arange(int(n_test)) % 100],
    }
    canvases, digits, sources = [], [], []
    for k, split in enumerate(D.SPLITS):
        rows = _draw(np.random.default_rng([seed, 4 + k]), pairs[split], digit_rows[split], y)
        canvases.append(canvas(binary[rows[:, 0]], binary[rows[:, 1]]))
        digits.append(pairs[split])
        sources.append(rows)
    raw = np.ascontiguousarray(np.concatenate(canvases))
    digits_all = np.concatenate(digits).astype(np.int64)
    n = len(raw)
    rng = np.random.default_rng([seed, 7])
    phrasing = rng.integers(2, size=n)
    spelled = rng.integers(2, size=(n, 2)).astype(bool)
    text = tuple(
        caption(int(a), int(b), ("left", "right")[p], (w[0], w[1]))
        for (a, b), p, w in zip(digits_all, phrasing, spelled)
    )
    tokenizer = Tokenizer(DIGIT_CAPTION_VOCABULARY, MAX_CAPTION_LENGTH)
    ids = tokenizer.encode(text).numpy().astype(np.int64)
    held = np.isin(digits_all[:, 0] * 10 + digits_all[:, 1], [a * 10 + b for a, b in HELD_OUT])
    bounds = np.cumsum([0, *(len(c) for c in canvases)])
    rows = {s: np.arange(bounds[k], bounds[k + 1]) for k, s in enumerate(D.SPLITS)}
    assert not held[rows["train"]].any()  # by construction: train pairs come from SEEN
    sizes = {s: len(rows[s]) for s in D.SPLITS}
    preprocessing: dict[str, Any] = {
        "format": _FORMAT,
        "kind": "captions",
        "base": "mnist",
        "binarize": "fixed",  # for captions: a threshold at 1/2
        "threshold": 0.5,
        "seed": seed,
        "split_sizes": sizes,
        "limit": None if limit is None else int(limit),
        "raw_levels": 2,
        "input_shape": list(raw.shape[1:]),
        "vocabulary": list(DIGIT_CAPTION_VOCABULARY),
        "max_length": MAX_CAPTION_LENGTH,
        "held_out": [list(p) for p in HELD_OUT],
        "digit_rows_sha256": {s: D.rows_digest(r) for s, r in zip(D.SPLITS, sources)},
    }
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    for arr in (raw, ids, digits_all):
        digest.update(np.ascontiguousarray(arr).tobytes())
    src = hashlib.sha256(json.dumps({"kind": "captions", "base": "mnist"}).encode())
    src.update(np.ascontiguousarray(binary).tobytes())
    src.update(y.astype("<i8").tobytes())
    return PreparedCaptions(
        name=NAME,
        source=NAME,
        input_shape=tuple(int(d) for d in raw.shape[1:]),
        levels=2,
        raw_levels=2,
        binarize="fixed",
        seed=seed,
        sizes=sizes,
        fingerprint=digest.hexdigest()[:16],
        source_fingerprint=src.hexdigest()[:16],
        preprocessing=preprocessing,
        raw=raw,
        caption=ids,
        text=text,
        digits=digits_all,
        held_out=held,
        y=np.full(n, -1, np.int64),
        rows=rows,
    )
