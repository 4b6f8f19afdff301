"""The training ingest path (issue 16): whole Ray Data blocks cut into batches in the worker.

``data.rebatch`` must give the batches ``iter_torch_batches`` gave: row for row without a shuffle
(validation and test scores cannot change), and with one the same rows every epoch (the same
multiset, the same batch sizes), in an order fixed by the seed. Each check has a control: a
broken cutter that the same check catches.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from pipelines.data import SPLITS, load_dataset, rebatch, shuffle_rows, split_bytes, training_splits
from pipelines.train import TrainSpec, _batches, _EarlyPass, build_trainer

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

BATCH_SIZES = (64, 100)  # neither divides Ray Data's 1,000-row blocks: remainders carry over


@pytest.fixture(scope="module")
def digits(ray_session):
    return load_dataset("digits", binarize="fixed", seed=0)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    """The same number of batches, each with the same keys and equal tensors, in order."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def rows(batches: list[dict]) -> Counter:
    """The multiset of rows of a pass: (x bytes, y) per row (digits has duplicate rows)."""
    return Counter(
        (x.numpy().tobytes(), int(y)) for b in batches for x, y in zip(b["x"], b["y"], strict=True)
    )


def order(batches: list[dict]) -> list[tuple]:
    return [(x.numpy().tobytes(), int(y)) for b in batches for x, y in zip(b["x"], b["y"])]


def sizes(batches: list[dict]) -> list[int]:
    return [len(b["x"]) for b in batches]


def chunks(ds):
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def per_chunk(ds, batch_size: int, **kw) -> list[dict]:
    """Control: each block cut on its own (no carry-over): short batches mid-pass."""
    return list(itertools.chain.from_iterable(rebatch([c], batch_size, **kw) for c in chunks(ds)))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_unshuffled_batches_equal_iter_torch_batches(digits, batch_size):
    for split in ("train", "validation"):
        ds = digits.splits[split]
        old = list(ds.iter_torch_batches(batch_size=batch_size))
        new = list(_batches(ds, batch_size, torch.device("cpu")))
        assert len(old) > 2 and same_batches(old, new)
    # Control: the check sees a cutter that does not carry the remainders over.
    ds = digits.splits["train"]
    assert not same_batches(list(ds.iter_torch_batches(batch_size=batch_size)), per_chunk(ds, 64))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_shuffled_epoch_has_the_same_rows_and_batch_sizes_as_before(digits, batch_size):
    ds = digits.splits["train"]
    n = digits.sizes["train"]
    for epoch in range(2):
        seed = epoch * 17  # as train_loop: seed * 1000 + epoch * 17 + rank
        old = list(
            ds.iter_torch_batches(
                batch_size=batch_size,
                local_shuffle_buffer_size=shuffle_rows(batch_size),
                local_shuffle_seed=seed,
            )
        )
        new = list(_batches(ds, batch_size, torch.device("cpu"), shuffle_seed=seed))
        assert sum(sizes(new)) == n and rows(new) == rows(old)
        assert sizes(new) == sizes(old)  # full batches, then one short one
        assert order(new) != order(list(_batches(ds, batch_size, torch.device("cpu"))))  # shuffled
    # Controls: a cutter that drops the short last batch, one that cuts each block on its own.
    dropped = list(_batches(ds, batch_size, torch.device("cpu"), shuffle_seed=0))[:-1]
    assert rows(dropped) != rows(old)
    assert sizes(per_chunk(ds, batch_size)) != sizes(old)


def test_shuffle_order_is_fixed_by_the_seed(digits):
    ds = digits.splits["train"]
    cpu = torch.device("cpu")
    first = order(list(_batches(ds, 64, cpu, shuffle_seed=5)))
    assert order(list(_batches(ds, 64, cpu, shuffle_seed=5))) == first
    assert order(list(_batches(ds, 64, cpu, shuffle_seed=6))) != first  # control: another seed


@pytest.mark.parametrize("seed", [None, 3])
def test_an_early_pass_gives_the_batches_of_a_plain_pass(digits, seed):
    """The epoch opened ahead (during the previous validation) yields what opening it then would:
    row for row, shuffled or not; a second early pass over the same shard is a new epoch."""
    ds, cpu = digits.splits["train"], torch.device("cpu")
    plain = list(_batches(ds, 64, cpu, shuffle_seed=seed))
    early = _EarlyPass(ds)
    assert same_batches(list(_batches(early, 64, cpu, shuffle_seed=seed)), plain)
    assert same_batches(list(_batches(_EarlyPass(ds), 64, cpu, shuffle_seed=seed)), plain)
    if seed is not None:  # control: the comparison sees a different order
        assert not same_batches(list(_batches(_EarlyPass(ds), 64, cpu, shuffle_seed=4)), plain)


class _Shard:
    """A stand-in shard: ``iter_batches`` yields the given chunks, or raises ``error`` on open."""

    def __init__(self, chunks, error=None):
        self.chunks, self.error, self.closed = chunks, error, False

    def iter_batches(self, **kw):
        if self.error is not None:
            raise self.error
        try:
            yield from self.chunks
        finally:
            self.closed = True


def test_an_early_pass_raises_where_it_is_read_and_closes_unused():
    chunk = {"x": np.zeros((10, 1, 2, 2), np.float32), "y": np.arange(10)}
    failing = _EarlyPass(_Shard([], error=OSError("object store gone")))
    with pytest.raises(OSError, match="object store gone"):
        list(_batches(failing, 4, None))
    shard = _Shard([chunk, chunk])
    unused = _EarlyPass(shard)
    unused.close()
    assert shard.closed  # the opened pass is ended, not left holding its first block
    assert list(_batches(_EarlyPass(_Shard([])), 4, None)) == []  # an empty shard: no batches
    assert [len(b["x"]) for b in _batches(_EarlyPass(_Shard([chunk, chunk])), 8, None)] == [8, 8, 4]


def test_made_splits_stream_the_same_rows_in_the_same_order(digits):
    """A fit's splits, made once (materialised), give each split's batches row for row; over
    the byte cap the lazy splits are passed through."""
    cpu = torch.device("cpu")
    made = training_splits(digits)
    for split in SPLITS:
        lazy = list(_batches(digits.splits[split], 100, cpu))
        assert same_batches(list(_batches(made[split], 100, cpu)), lazy)
    assert split_bytes(digits) == 4 * 64 * sum(digits.sizes.values()) + 8 * sum(
        digits.sizes.values()
    )
    assert training_splits(digits, max_bytes=split_bytes(digits) - 1) == digits.splits
    # Control: the same rows made in another order fail the check.
    shuffled = digits.splits["train"].random_shuffle(seed=0).materialize()
    lazy = list(_batches(digits.splits["train"], 100, cpu))
    assert not same_batches(list(_batches(shuffled, 100, cpu)), lazy)


def test_rebatch_windows_carry_and_shuffle_within_bounds():
    """Pure NumPy chunks: every row once, full batches, and each row stays within reach of its
    window (a row of the last window cannot appear among the first batches)."""
    parts = [(0, 7), (7, 5), (12, 0), (12, 9), (21, 30)]
    cs = [
        {"row": np.arange(a, a + k), "x": np.arange(a, a + k, dtype=np.float32)} for a, k in parts
    ]
    plain = list(rebatch(cs, 4))
    assert sizes(plain) == [4] * 12 + [3]
    assert torch.cat([b["row"] for b in plain]).tolist() == list(range(51))
    g = torch.Generator().manual_seed(0)
    mixed = list(rebatch(cs, 4, shuffle_rows=10, generator=g))
    got = torch.cat([b["row"] for b in mixed]).tolist()
    assert sorted(got) == list(range(51)) and got != list(range(51))
    assert all(torch.equal(b["row"].float(), b["x"]) for b in mixed)  # columns stay aligned
    assert max(got[:8]) < 21  # the first window holds rows 0..20 (blocks until >= 10 rows)
    with pytest.raises(ValueError, match="batch_size"):
        list(rebatch(cs, 0))
    only_x = list(rebatch(cs, 4, columns=("x",)))  # a scoring pass: x alone, same batches
    assert all(b.keys() == {"x"} for b in only_x)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(only_x, plain, strict=True))
    assert plain[0].keys() == {"row", "x"}  # control: the default keeps every column


@pytest.mark.slow
@pytest.mark.timeout(900)  # two fits (three took 551 s at a load average of ~25 on 2 cores)
def test_a_seeded_run_is_repeatable_and_sees_every_row(tmp_path, digits):
    """Through Ray Train (1 worker, 2 full epochs): an epoch takes every train row once, and
    two runs with one seed end with the same weights. The control, that another seed gives
    another order (so the equality is not vacuous), is ``test_shuffle_order_is_fixed_by_the_seed``
    on the same ``_batches`` path, without a third fit."""

    def fit(seed: int, name: str):
        spec = TrainSpec(
            family="made",
            dataset="digits",
            model={"hidden_sizes": (32,)},
            epochs=2,
            batch_size=100,
            num_workers=1,
            seed=seed,
            storage_path=str(tmp_path / "ray"),
            grid_samples=0,
        )
        return build_trainer(spec, digits, None, None, name=name).fit()

    def digest(result) -> str:
        import json

        with result.checkpoint.as_directory() as d:
            state = torch.load(f"{d}/rank0.pt", weights_only=True)
        return json.dumps(state["params_sha256"])

    a, b = fit(0, "ingest-a"), fit(0, "ingest-b")
    last = a.metrics_dataframe.dropna(subset=["train_time_s"]).iloc[-1]  # epoch 1's report
    n = digits.sizes["train"]
    assert int(last["epoch"]) == 1 and int(last["train_examples"]) == n
    assert a.metrics["steps"] == 2 * -(-n // 100)  # every batch of both epochs, the last short
    assert digest(a) == digest(b)
