"""The named missing-data masks."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.masks import MASK_KINDS, make_masks, masks_fingerprint


def test_random_masks_hide_exactly_their_fraction_and_differ_per_example():
    for kind, frac in (("random50", 0.5), ("random80", 0.8)):
        m = make_masks(kind, 20, (1, 28, 28), seed=3)
        assert m.shape == (20, 1, 28, 28) and m.dtype == np.uint8
        assert ((m == 0).reshape(20, -1).sum(1) == round(784 * frac)).all()
        assert len({row.tobytes() for row in m}) == 20
        assert np.array_equal(m[:5], make_masks(kind, 5, (1, 28, 28), seed=3))  # prefix-stable
        assert not np.array_equal(m, make_masks(kind, 20, (1, 28, 28), seed=4))


def test_block_masks_hide_the_named_region():
    top = make_masks("top-half", 2, (1, 4, 4))[0, 0]
    assert top[:2].sum() == 0 and top[2:].all()
    bottom = make_masks("bottom-half", 2, (1, 4, 4))[0, 0]
    assert bottom[2:].sum() == 0 and bottom[:2].all()
    centre = make_masks("centre", 1, (1, 28, 28))[0, 0]
    assert (centre == 0).sum() == 14 * 14 and centre[7:21, 7:21].sum() == 0
    assert make_masks("top-half", 1, (6,))[0].tolist() == [0, 0, 0, 1, 1, 1]


def test_fingerprint_and_errors():
    a = make_masks("random50", 4, (1, 8, 8))
    assert masks_fingerprint(a) == masks_fingerprint(a.copy())
    assert masks_fingerprint(a) != masks_fingerprint(make_masks("random50", 4, (1, 8, 8), 1))
    with pytest.raises(ValueError, match="unknown mask 'left'"):
        make_masks("left", 1, (4,))
    assert set(MASK_KINDS) == {"random50", "random80", "top-half", "bottom-half", "centre"}
