"""Moving digits (``pipelines.sequences``): no train digit in a held-out sequence, a seeded
generator that reproduces every sequence, the motion it promises, and its errors. No Ray."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipelines import sequences as S
from pipelines.data import prepare_dataset


@pytest.fixture(scope="module")
def data():
    return prepare_dataset("moving-mnist", seed=0, limit=120)


def leaked(data, split: str) -> set[int]:
    """Source rows of ``split``'s sequences that are train-split digits."""
    return set(data.meta[split]["sources"].ravel().tolist()) & set(
        data.digit_rows["train"].tolist()
    )


def test_held_out_sequences_contain_no_train_digit(data):
    assert data.batch_columns["x"] == ("float32", (10, 1, 32, 32))
    assert data.sizes == {"train": 96, "validation": 12, "test": 12}
    for split in ("validation", "test"):
        assert not leaked(data, split)
        assert set(data.meta[split]["sources"].ravel()) <= set(data.digit_rows[split])
    assert set(data.meta["train"]["sources"].ravel()) <= set(data.digit_rows["train"])
    # the digit split is mnist's under the same seed (the yardstick's train split)
    plain = prepare_dataset("mnist", seed=0)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(np.sort(data.digit_rows[split]), np.sort(plain.rows[split]))
    # control: test sequences drawn from the train pool are caught by the same check
    bad = S.generate(S.pool_digits(plain.raw), data.digit_rows["train"], 12, 2, 0, "test")
    fake = SimpleNamespace(meta={"test": bad}, digit_rows=data.digit_rows)
    assert leaked(fake, "test")


def test_generator_is_reproducible_and_seeded(data):
    again = prepare_dataset("moving-mnist", seed=0, limit=120)
    assert again.fingerprint == data.fingerprint
    for split in data.seqs:
        np.testing.assert_array_equal(again.seqs[split], data.seqs[split])
    other = prepare_dataset("moving-mnist", seed=1, limit=120)
    assert other.fingerprint != data.fingerprint
    assert not np.array_equal(other.seqs["test"], data.seqs["test"])
    # sequence i depends on (seed, split, i) alone, not on how many are made
    bigger = prepare_dataset("moving-mnist", seed=0, limit=240)
    np.testing.assert_array_equal(bigger.seqs["test"][:12], data.seqs["test"])
    assert bigger.fingerprint != data.fingerprint


def test_motion_is_constant_velocity_reflected_and_frames_are_grey(data):
    one = prepare_dataset("moving-mnist-1", seed=0, limit=60)
    assert one.name == "moving-mnist-1" and data.name == "moving-mnist"
    pos = one.meta["train"]["positions"][:, :, 0].astype(int)  # (N, T, 2)
    assert pos.min() >= 0 and pos.max() <= S.FRAME - S.DIGIT
    v = np.diff(pos, axis=1)
    assert np.abs(v).max() <= S.MAX_SPEED and (np.abs(v).sum((1, 2)) > 0).all()
    # between bounces the velocity is constant; a change is a reflection at a border
    change = v[:, 1:] != v[:, :-1]
    edge = (pos[:, 1:-1] <= S.MAX_SPEED) | (pos[:, 1:-1] >= S.FRAME - S.DIGIT - S.MAX_SPEED)
    assert not (change & ~edge).any()
    # one digit, never clipped: every frame holds the pooled digit exactly, at its position
    x = one.seqs["train"]
    digits = S.pool_digits(prepare_dataset("mnist").raw)[one.meta["train"]["sources"][:, 0]]
    for i in range(5):
        for t in range(S.FRAMES):
            r, c = pos[i, t]
            np.testing.assert_array_equal(x[i, t, 0, r : r + S.DIGIT, c : c + S.DIGIT], digits[i])
            assert x[i, t].sum() == digits[i].astype(int).sum()
    assert len(np.unique(x)) > 2  # grey, not binarised
    assert one.levels == 256 and one.preprocessing["binarize"] == "none"


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"source": "moving-mnist-3"}, "1 or 2 digits"),
        ({"binarize": "dynamic"}, "grey"),
        ({"labels_per_class": 5}, "label budget"),
        ({"limit": 2}, "at least 3"),
    ],
)
def test_bad_settings_are_clear_errors(kw, fragment):
    source = kw.pop("source", "moving-mnist")
    with pytest.raises(ValueError, match=fragment):
        prepare_dataset(source, **kw)
