"""The Gaussian Parzen-window log-likelihood estimate that the GSN and GAN papers reported.

For families without a tractable likelihood (GSN: https://arxiv.org/abs/1306.1091; GAN:
https://arxiv.org/abs/1406.2661, following Breuleux, Bengio & Vincent 2011), a density is fitted
to N of the model's samples s_i, an isotropic Gaussian kernel of width sigma on each:

    log p_sigma(x) = logsumexp_i( -||x - s_i||^2 / (2 sigma^2) ) - log N - (D/2) log(2 pi sigma^2),

sigma is chosen to maximise the mean log p_sigma on a validation set, and the mean on the test set
is reported. **This is not a likelihood of the model**: it is the likelihood of a kernel density
built from its samples, of a continuous density on binary data. It is biased, depends strongly on
N and sigma, and in high dimension can rank models against their true likelihoods (Theis, van den
Oord & Bethge 2015, https://arxiv.org/abs/1511.01844). It is here to compare with the papers'
tables, labelled ``method="parzen"``, never to be mixed with the families' ``log_prob``.

Computation: float64, in chunks of test points and of samples, with a running log-sum-exp, so
memory stays bounded and far-away points give finite values rather than -inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Kernel widths tried by default: 10^-1 .. 10^0, as for [0, 1]-valued images in the papers.
DEFAULT_SIGMAS: tuple[float, ...] = tuple(10 ** (-1 + i / 9) for i in range(10))


def parzen_log_prob(
    samples: Tensor, x: Tensor, sigma: float, batch_size: int = 256, sample_chunk: int = 4096
) -> Tensor:
    """The Parzen-window log-density (nats) at each of ``x`` of the Gaussian kernels on ``samples``.

    Args:
        samples: ``(N, ...)`` the kernel centres (e.g. a model's samples); flattened to ``(N, D)``.
        x: ``(B, ...)`` the points to evaluate, flattened to ``(B, D)``.
        sigma: the kernel's standard deviation (> 0).
        batch_size: points of ``x`` per chunk.
        sample_chunk: samples per chunk.

    Returns:
        ``(B,)`` float64 log p_sigma(x), not a likelihood of the model that drew ``samples``.
    """
    if sigma <= 0:
        raise ValueError(f"parzen: sigma must be > 0, got {sigma}")
    s = samples.flatten(1).double()
    x = x.flatten(1).double().to(s.device)
    n, d = s.shape
    if n == 0 or x.shape[1] != d:
        raise ValueError(f"parzen: need N >= 1 samples of x's dimension; got {s.shape}, {x.shape}")
    s_sq = s.pow(2).sum(1)  # (N,)
    out = []
    for xb in x.split(batch_size):
        total = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=s.device)
        for sc, sc_sq in zip(s.split(sample_chunk), s_sq.split(sample_chunk)):
            sq_dist = (xb.pow(2).sum(1, keepdim=True) + sc_sq - 2 * xb @ sc.T).clamp_min(0)
            total = torch.logaddexp(total, torch.logsumexp(-sq_dist / (2 * sigma**2), dim=1))
        out.append(total)
    log_norm = math.log(n) + 0.5 * d * math.log(2 * math.pi * sigma**2)
    return torch.cat(out) - log_norm


def select_sigma(
    samples: Tensor, x_val: Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS, **chunks: int
) -> tuple[float, dict[float, float]]:
    """The kernel width that maximises the mean Parzen log-density of ``x_val``.

    Returns:
        ``(best_sigma, {sigma: mean log p_sigma(x_val)})``; ``chunks`` go to ``parzen_log_prob``.
    """
    if not sigmas:
        raise ValueError("parzen: sigmas is empty")
    scores = {float(s): parzen_log_prob(samples, x_val, s, **chunks).mean().item() for s in sigmas}
    return max(scores, key=scores.__getitem__), scores


def parzen_estimate(
    samples: Tensor,
    x_val: Tensor,
    x_test: Tensor,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    **chunks: int,
) -> dict[str, float | str | dict[float, float]]:
    """The papers' protocol in one call: pick sigma on ``x_val``, report on ``x_test``.

    Returns:
        ``{"method": "parzen", "sigma", "log_prob"`` (mean over ``x_test``, nats), ``"stderr"``
        (of that mean over test points; it ignores the variability of the samples),
        ``"val_scores"`` (mean validation log-density per sigma), ``"num_samples"}``.
    """
    sigma, scores = select_sigma(samples, x_val, sigmas, **chunks)
    lp = parzen_log_prob(samples, x_test, sigma, **chunks)
    stderr = lp.std().item() / math.sqrt(len(lp)) if len(lp) > 1 else math.nan
    return {
        "method": "parzen",
        "sigma": sigma,
        "log_prob": lp.mean().item(),
        "stderr": stderr,
        "val_scores": scores,
        "num_samples": len(samples),
    }
