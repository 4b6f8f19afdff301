"""Missing-data masks for imputation: the named kinds the CLI, the Serve examples and
``benchmarks/impute.py`` share (1 = observed, 0 = missing), seeded and fingerprinted.

Kinds, for an input of shape ``(C, H, W)`` (for ``(D,)`` the "rows" are the D entries in order):

* ``random50`` / ``random80``: exactly 50 % / 80 % of the pixels missing, chosen uniformly at
  random per example (the same pixels in every channel);
* ``top-half`` / ``bottom-half``: the top / bottom ``H // 2`` rows missing;
* ``centre``: the centred square of half the side (``H // 2`` × ``W // 2``) missing.
"""

from __future__ import annotations

import hashlib

import numpy as np

MASK_KINDS = ("random50", "random80", "top-half", "bottom-half", "centre")


def make_masks(kind: str, n: int, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``(n, *input_shape)`` uint8 masks of one kind (1 = observed, 0 = missing).

    Random kinds draw example ``i``'s pixels from ``default_rng([seed, i])``: the mask of an
    example does not depend on how many others are drawn with it.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask {kind!r}; known: {', '.join(MASK_KINDS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shape = tuple(int(s) for s in input_shape)
    c, h, w = shape if len(shape) == 3 else (1, shape[0], 1)
    plane = np.ones((n, h, w), np.uint8)
    if kind.startswith("random"):
        missing = round(h * w * int(kind[len("random") :]) / 100)
        for i in range(n):
            idx = np.random.default_rng([seed, i]).permutation(h * w)[:missing]
            plane[i].reshape(-1)[idx] = 0
    elif kind == "top-half":
        plane[:, : h // 2] = 0
    elif kind == "bottom-half":
        plane[:, h - h // 2 :] = 0
    else:  # centre
        top, left = (h - h // 2) // 2, (w - w // 2) // 2
        plane[:, top : top + h // 2, left : left + max(w // 2, 1)] = 0
    masks = np.repeat(plane[:, None], c, axis=1)
    return masks.reshape(n, *shape)


def masks_fingerprint(masks: np.ndarray) -> str:
    """A short hash of a mask array (shape and bits), stored with results that use it."""
    blob = np.ascontiguousarray(masks, dtype=np.uint8)
    return hashlib.sha256(repr(blob.shape).encode() + np.packbits(blob).tobytes()).hexdigest()[:16]
