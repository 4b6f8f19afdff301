"""The issue-16 protocol's splits (``benchmarks/nll_threshold.py``): row counts, disjointness, the
permutation, thresholding (split 1) and the pipeline's fixed draw (split 2), each with a control."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import nll_threshold as nt
from pipelines.data import _mnist, _preprocess, prepare_dataset


@pytest.fixture(scope="module")
def raw():
    x, _, _, _ = _mnist()
    return x


def split_is_protocol(data, raw, seed: int, binarise) -> bool:
    """True when ``data`` holds permuted rows 0..3499 / 3500..3999 / 4000..4999 of the seed's
    permutation of the 5,000 digits, binarised by ``binarise(source rows)``."""
    order = np.random.default_rng(seed).permutation(5000)
    want = {"train": order[:3500], "validation": order[3500:4000], "test": order[4000:]}
    return all(
        np.array_equal(data.numpy(s)[0], binarise(r).astype(np.float32)) for s, r in want.items()
    )


def test_rows_are_disjoint_and_cover_the_5000_digits():
    for k in (1, 2):
        rows = nt.threshold_rows(k)
        assert [len(rows[s]) for s in ("train", "validation", "test")] == [3500, 500, 1000]
        every = np.concatenate(list(rows.values()))
        assert len(np.unique(every)) == 5000 and every.min() == 0 and every.max() == 4999
    # the two splits are different permutations (control: a split is equal to itself)
    assert not np.array_equal(nt.threshold_rows(1)["test"], nt.threshold_rows(2)["test"])
    assert np.array_equal(nt.threshold_rows(1)["test"], nt.threshold_rows(1)["test"])


def test_split1_thresholds_the_seed0_permutation(raw):
    data = nt.protocol_data(1)
    assert split_is_protocol(data, raw, 0, lambda r: raw[r] > 127)
    assert set(np.unique(data.numpy("train")[0])) == {0.0, 1.0}
    # controls: another permutation, or another threshold, must fail the same check
    assert not split_is_protocol(data, raw, 1, lambda r: raw[r] > 127)
    assert not split_is_protocol(data, raw, 0, lambda r: raw[r] > 63)


def test_split2_is_the_pipelines_fixed_draw_on_the_seed1_permutation(raw):
    data = nt.protocol_data(2)
    # the pipeline's draw of each source row, read from its own prepared dataset
    prepared = prepare_dataset("mnist", binarize="fixed", seed=0)
    rows = np.arange(5000)
    pipeline_draw = _preprocess(
        {"x": prepared.raw[rows], "y": prepared.y[rows], "row": rows},
        how="binary",
        raw_levels=prepared.raw_levels,
        seed=prepared.seed,
    )["x"]
    assert split_is_protocol(data, raw, 1, lambda r: pipeline_draw[r])
    # controls: thresholding instead of the draw, or the split-1 permutation, fail
    assert not split_is_protocol(data, raw, 1, lambda r: raw[r] > 127)
    assert not split_is_protocol(data, raw, 0, lambda r: pipeline_draw[r])
    # a Bernoulli draw, not a threshold: some dark-grey pixels are on and some light ones off
    x, src = data.numpy("train")[0], raw[nt.threshold_rows(2)["train"]]
    assert ((x == 1) & (src <= 127)).any() and ((x == 0) & (src > 127)).any()


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="split=3"):
        nt.protocol_data(3)
