"""Driver-side evaluation: score a (registered) model on a dataset split, in one process.

Used by ``genmodels evaluate`` and by Tune to score its best trial. Training itself scores the
validation and test splits inside the Ray Train workers (see ``pipelines.train``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

import genmodels

LN2 = math.log(2.0)


@torch.no_grad()
def evaluate_split(
    model: genmodels.GenerativeModel,
    data,
    split: str,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean log-likelihood (nats/example), bits/dim, stderr of the mean, count and method."""
    if split not in data.splits:
        raise ValueError(f"bad split {split!r}; the dataset has {sorted(data.splits)}")
    if tuple(model.input_shape) != tuple(data.input_shape) or model.levels != data.levels:
        raise ValueError(
            f"the model expects {model.input_shape} with {model.levels} levels; the dataset "
            f"has {tuple(data.input_shape)} with {data.levels}"
        )
    model.eval()
    batches = (b["x"] for b in data.splits[split].iter_torch_batches(batch_size=batch_size))
    if progress:
        from tqdm import tqdm

        total = data.sizes.get(split)
        batches = tqdm(
            batches, desc=f"scoring {split}", total=-(-total // batch_size), unit="batch"
        )
    sums = accumulate_scores(model, batches, torch.Generator().manual_seed(seed))
    return summarise(*sums, num_dims=model.num_dims)


@torch.no_grad()
def accumulate_scores(model, batches, generator) -> tuple[float, float, float, str]:
    """Sum of log_prob, sum of stderr², count and method over an iterable of ``x`` batches."""
    total, var, count, method = 0.0, 0.0, 0.0, "exact"
    for x in batches:
        res = model.score(x, generator=generator)
        total += res.log_prob.double().sum().item()
        if res.stderr is not None:
            var += res.stderr.double().pow(2).sum().item()
        count += len(x)
        method = res.method
    return total, var, count, method


def summarise(total: float, var: float, count: float, method: str, num_dims: int) -> dict:
    """Means from ``accumulate_scores``' sums: nats/example, bits/dim, stderr of the mean."""
    mean = total / max(count, 1.0)
    return {
        "log_prob": mean,
        "bpd": -mean / (num_dims * LN2),
        "stderr": math.sqrt(var) / max(count, 1.0),
        "count": int(count),
        "method": method,
    }
