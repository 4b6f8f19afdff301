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
    if model.likelihood == "none":
        raise ValueError(
            f"family {model.family!r} has no likelihood to evaluate; its yardstick (sample "
            "quality) is logged at training and stored with each registered version"
        )
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
def accumulate_scores(model, batches, generator) -> tuple[float, float, float, str, float]:
    """Sums over an iterable of ``x`` batches, all additive (so ranks can all-reduce them):
    log_prob, the examples' independent error variance, count, and count x the shared error
    variance (``ScoreResult.shared_stderr``²); plus the method."""
    total, var, count, method, shared = 0.0, 0.0, 0.0, "exact", 0.0
    for x in batches:
        res = model.score(x, generator=generator)
        total += res.log_prob.double().sum().item()
        s2 = float(res.shared_stderr) ** 2
        if res.stderr is not None:
            var += (res.stderr.double().pow(2) - s2).clamp(min=0.0).sum().item()
        shared += s2 * len(x)
        count += len(x)
        method = res.method
    return total, var, count, method, shared


def summarise(
    total: float, var: float, count: float, method: str, shared: float = 0.0, *, num_dims: int
) -> dict:
    """Means from ``accumulate_scores``' sums: nats/example, bits/dim, stderr of the mean.

    The independent errors average out (sqrt(sum var) / N); an error shared by every example
    (an AIS log Z) does not, and is added in quadrature undivided.
    """
    n = max(count, 1.0)
    mean = total / n
    return {
        "log_prob": mean,
        "bpd": -mean / (num_dims * LN2),
        "stderr": math.sqrt(var / n**2 + shared / n),
        "count": int(count),
        "method": method,
    }


@torch.no_grad()
def draw_samples(model, n: int, seed: int = 0, chunk: int = 100, progress: bool = False):
    """``n`` samples of ``model`` (CPU tensor), in chunks, with a progress bar if asked."""
    model.eval()
    g, parts = torch.Generator().manual_seed(seed), []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"sampling {model.family}", unit="sample")
    for start in range(0, n, chunk):
        parts.append(model.sample(min(chunk, n - start), generator=g).cpu().float())
        if bar is not None:
            bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    return torch.cat(parts)


def parzen_split(model, data, n: int, split: str = "test", seed: int = 0, progress=False) -> dict:
    """The Parzen-window estimate the GSN/GAN papers reported, clearly labelled (``method``
    ``"parzen"``): ``n`` samples, sigma chosen on the validation split, ``split`` scored. It is
    the likelihood of a kernel density on the samples, not the model's (see genmodels.parzen)."""
    from genmodels.parzen import parzen_estimate

    if n < 2:
        raise ValueError(f"bad value {n} for the number of Parzen samples (>= 2)")
    samples = draw_samples(model, n, seed=seed, progress=progress)
    scale = 1.0 / (model.levels - 1)  # kernels live on [0, 1] images, as in the papers
    x_val = torch.from_numpy(data.numpy("validation")[0]) * scale
    x_eval = torch.from_numpy(data.numpy(split)[0]) * scale
    out = parzen_estimate(samples * scale, x_val, x_eval)
    return {**out, "split": split}
