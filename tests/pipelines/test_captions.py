"""The caption dataset ``mnist-captions`` (``pipelines.captions``): held-out pairs never in a
training caption (and a seen pair there, the control), canvases built by hand from their split's
digits, both phrasings, seeded and fingerprinted, declared columns, batch keys checked, streamed
through Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genmodels.text import DIGIT_WORDS, Tokenizer
from pipelines import captions as C
from pipelines.data import prepare_dataset
from pipelines.pairs import _threshold
from pipelines.train import check_batch_keys

LIMIT, SIZES = 3000, (300, 300)


@pytest.fixture(scope="module")
def data():
    return prepare_dataset(C.NAME, seed=0, limit=LIMIT, split_sizes=SIZES)


def read_pair(text: str) -> tuple[int, int]:
    """(left, right) from a caption's words, parsed here (not by the dataset): the test's own
    reading of "a left of b" / "b right of a"."""
    a, rel, of, b = text.split()
    assert of == "of" and rel in ("left", "right")
    value = {**{str(d): d for d in range(10)}, **{w: d for d, w in enumerate(DIGIT_WORDS)}}
    a, b = value[a], value[b]
    return (a, b) if rel == "left" else (b, a)


def test_held_out_pairs_never_appear_in_training_captions(data):
    tok = Tokenizer()
    train = tok.decode(torch.from_numpy(data.caption[data.rows["train"]]))
    pairs = {read_pair(t) for t in train}
    assert not pairs & set(C.HELD_OUT), sorted(pairs & set(C.HELD_OUT))
    assert pairs == set(C.SEEN)  # the control: every seen pair is there (3,000 canvases)
    # ...in both phrasings and both spellings: "0 left of 3" and "3 right of 0" never, while
    # the reversed pair (3, 0) is there as "3 left of 0" and "0 right of 3".
    words = {tuple(t.split()) for t in train}
    assert ("3", "left", "of", "0") in words and ("0", "right", "of", "3") in words
    assert ("0", "left", "of", "3") not in words and ("3", "right", "of", "0") not in words
    assert ("three", "left", "of", "zero") in words
    assert len(C.HELD_OUT) == 10 and len(set(C.HELD_OUT)) == 10
    # Validation and test hold every ordered pair, held-out ones included and marked.
    for split in ("validation", "test"):
        rows = data.rows[split]
        got = {read_pair(t) for t in tok.decode(torch.from_numpy(data.caption[rows]))}
        assert got == {(a, b) for a in range(10) for b in range(10)}
        marked = {tuple(p) for p in data.digits[rows][data.held_out[rows]]}
        assert marked == set(C.HELD_OUT)
    assert not data.held_out[data.rows["train"]].any()


def test_captions_agree_with_the_digits_and_use_both_phrasings(data):
    pairs = [read_pair(t) for t in data.text]
    assert np.array_equal(np.array(pairs), data.digits)
    rel = [t.split()[1] for t in data.text]
    assert 0.4 < rel.count("left") / len(rel) < 0.6
    assert C.caption(3, 7) == "3 left of 7"
    assert C.caption(3, 7, "right") == "7 right of 3"
    assert C.caption(3, 7, "right", (True, False)) == "7 right of three"
    assert np.array_equal(Tokenizer().encode(list(data.text)).numpy(), data.caption)


def test_canvases_are_their_split_digits_side_by_side(data):
    left, right = np.zeros((1, 28, 28), np.uint8), np.ones((1, 28, 28), np.uint8)
    c = C.canvas(left, right)
    assert c.shape == (1, 28, 56) and (c[..., :28] == 0).all() and (c[..., 28:] == 1).all()
    binary, y, digit_rows = C.digit_splits(0)
    mnist = prepare_dataset("mnist", seed=0)  # the same digit split as the mnist dataset
    for s in ("train", "validation", "test"):
        assert np.array_equal(np.sort(digit_rows[s]), np.sort(mnist.rows[s]))
    assert set(np.unique(binary)) == {0, 1}
    assert np.array_equal(binary[7], _threshold(mnist.raw[7], 256))
    assert data.raw.shape[1:] == (1, 28, 56) and data.levels == 2
    for split in ("train", "test"):
        own = {binary[r].tobytes(): y[r] for r in digit_rows[split]}
        other = {
            binary[r].tobytes() for s in ("train", "test") if s != split for r in digit_rows[s]
        }
        for row in data.rows[split][:20]:
            a, b = data.digits[row]
            halves = data.raw[row][..., :28], data.raw[row][..., 28:]
            assert [own.get(h.tobytes()) for h in halves] == [a, b]  # its split's digits, in order
            assert all(h.tobytes() not in other for h in halves)


def test_seeded_and_fingerprinted(data):
    again = prepare_dataset(C.NAME, seed=0, limit=LIMIT, split_sizes=SIZES)
    assert again.fingerprint == data.fingerprint
    assert np.array_equal(again.raw, data.raw) and again.text == data.text
    other = prepare_dataset(C.NAME, seed=1, limit=LIMIT, split_sizes=SIZES)
    assert other.fingerprint != data.fingerprint and not np.array_equal(other.raw, data.raw)
    bigger = prepare_dataset(C.NAME, seed=0, limit=LIMIT + 1, split_sizes=SIZES)
    assert bigger.fingerprint != data.fingerprint
    assert data.preprocessing["held_out"] == [list(p) for p in C.HELD_OUT]
    assert data.sizes == {"train": LIMIT, "validation": SIZES[0], "test": SIZES[1]}
    for bad, match in [
        ({"binarize": "dynamic"}, "caption canvases are binary"),
        ({"labels_per_class": 5}, "label budget does not apply"),
        ({"limit": 0}, "limit=0"),
    ]:
        with pytest.raises(ValueError, match=match):
            prepare_dataset(C.NAME, **bad)


def test_columns_are_declared_and_batch_keys_checked(data):
    cols = data.batch_columns
    assert cols == {
        "x": ("float32", (1, 28, 56)),
        "caption": ("int64", (8,)),
        "y": ("int64", ()),
    }
    assert (data.y == -1).all()  # no class per canvas; the digits stay on the driver
    check_batch_keys("captionvae", C.NAME, cols)
    with pytest.raises(ValueError, match="captionvae trains on batch key\\(s\\) x, caption; "):
        check_batch_keys("captionvae", "mnist", prepare_dataset("mnist").batch_columns)
    with pytest.raises(ValueError, match=r"use a caption dataset, e\.g\. mnist-captions"):
        check_batch_keys("captionvae", "mnist", prepare_dataset("mnist").batch_columns)
    check_batch_keys("made", C.NAME, cols)  # the control: an x-only family trains on it


@pytest.mark.ray
def test_streamed_through_ray_data(ray_session):
    small = prepare_dataset(C.NAME, seed=0, limit=40, split_sizes=(10, 10))
    loaded = small.to_ray()
    assert loaded.batch_columns["caption"] == ("int64", (8,))
    batches = list(loaded.splits["train"].iter_torch_batches(batch_size=40))
    got = {k: torch.cat([b[k] for b in batches]) for k in ("x", "caption", "y")}
    want = small.arrays("train")
    assert got["x"].dtype == torch.float32 and got["caption"].dtype == torch.int64
    for k in ("x", "caption", "y"):
        assert np.array_equal(got[k].numpy(), want[k]), k
    assert "digits" not in batches[0]


def test_the_cli_knows_the_generated_dataset_names():
    from pipelines.cli import CLIError, _check_dataset

    _check_dataset(C.NAME)
    _check_dataset("mnist-edge-paired")
    with pytest.raises(CLIError, match="unknown dataset 'mnist-captionz'"):
        _check_dataset("mnist-captionz")  # the control
