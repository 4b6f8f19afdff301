"""Imputation for latent-variable models with a Bernoulli decoder: sampling importance
resampling over the posterior (SIR), the multiple-imputation scheme of MIWAE (Mattei & Frellsen
2019, https://arxiv.org/abs/1812.02633), shared by the VAE (with or without IAF) and AVB.

The model is p(z) = N(0, I), p(x|z) = prod_d Bernoulli(x_d | sigmoid(decoder(z)_d)); given the
observed entries x_obs (mask = 1), the target is p(x_mis | x_obs) = ∫ p(x_mis|z) p(z|x_obs) dz,
and p(z|x_obs) ∝ p(x_obs|z) p(z) (the decoder factorises over pixels, so the missing ones simply
drop out of the likelihood). Per example:

1. fill the missing entries of x with the model's marginal pixel means E_p(z)[sigmoid(decoder(z))]
   (from ``fill_draws`` prior draws) to get x~, and build a tractable proposal q(z|x~) from the
   family's encoder (a density it can evaluate at its own draws), made defensive: a fraction
   ``prior_mix`` of the draws comes from N(0, I) (before the IAF, for the VAE+IAF), so the weights
   stay bounded where the encoder, which never saw a partly filled image in training, is too
   narrow or off target;
2. draw K codes z_k ~ q(z|x~) and weight them, log w_k = log p(x_obs|z_k) + log p(z_k) -
   log q(z_k|x~);
3. (``refine`` rounds) replace the fill by the self-normalised posterior-predictive mean
   sum_k w~_k sigmoid(decoder(z_k)) at the missing entries and go back to 2 with fresh draws (the
   proposal is then a function of x_obs and of draws independent of the final ones, so the last
   round is still an ordinary importance sampler);
4. for each of the S imputations resample an index k with probability w~_k (with replacement)
   and draw x_mis ~ p(x_mis | z_k).

The imputations are consistent (they converge in distribution to p(x_mis|x_obs) as K -> ∞ for
any proposal that covers the posterior); at finite K they are approximate. The S imputations of
one example share its K draws. A row with nothing observed uses the prior as its proposal (equal
weights), so its imputations are plain ancestral samples of the model; a row with nothing
missing is returned as it is, without work.

``log_prob_missing`` = log p^(x) - log p^(x_obs): log p^(x) is the importance-weighted estimate
with the proposal at the complete x (``score_k`` draws), log p^(x_obs) the log mean weight of the
final round (K draws). Each is a stochastic lower bound on its own quantity, so their difference
is neither a lower nor an upper bound: an estimate, consistent as both k grow, with the
delta-method standard error of the two independent parts combined.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ImputeResult, importance_weighted, std_normal_log_prob

Proposal = Callable[[int], tuple[Tensor, Tensor]]
"""Draw m codes for every row: ``m -> (z (m, B, Z), log q(z | x~) (m, B))``."""

MakeProposal = Callable[[Tensor, torch.Generator | None], Proposal]
"""Build the proposal for a batch of (filled or complete) inputs ``(B, D)``."""


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def _masked_log_lik(logits: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """sum_d mask_d log Bernoulli(x_d | logits_d) over the last dim: ``(..., B, D)`` → ``(..., B)``."""
    ll = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return (ll * mask).sum(-1)


class _Draws:
    """Codes, log weights and (optionally) the weighted predictive mean of one SIR round."""

    def __init__(self, z: Tensor, log_w: Tensor, mean: Tensor | None) -> None:
        self.z, self.log_w, self.mean = z, log_w, mean


def _sir_round(
    x: Tensor,
    mask: Tensor,
    proposal: Proposal,
    decoder: Callable[[Tensor], Tensor],
    k: int,
    chunk: int,
    prior_rows: Tensor,
    generator: torch.Generator | None,
    want_mean: bool,
) -> _Draws:
    """K draws from ``proposal`` (the prior for ``prior_rows``), weighted by p(x_obs|z) p(z) / q."""
    zs, log_ws = [], []
    mean_num = None  # running sum_k exp(log_w_k - ref) sigmoid(logits_k), with a running ref
    ref = None
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        z, log_q = proposal(m)
        if prior_rows.any():
            eps = _randn(tuple(z.shape), generator, x)
            rows = prior_rows[:, None]
            z = torch.where(rows, eps, z)
            log_q = torch.where(prior_rows, std_normal_log_prob(eps), log_q)
        logits = decoder(z)  # (m, B, D)
        log_w = _masked_log_lik(logits, x, mask) + std_normal_log_prob(z) - log_q
        zs.append(z)
        log_ws.append(log_w)
        if want_mean:
            new_ref = (
                log_w.max(0).values if ref is None else torch.maximum(ref, log_w.max(0).values)
            )
            part = ((log_w - new_ref)[..., None].exp() * torch.sigmoid(logits)).sum(0)
            mean_num = (
                part if mean_num is None else mean_num * (ref - new_ref)[:, None].exp() + part
            )
            ref = new_ref
    log_w = torch.cat(log_ws, 0)
    mean = None
    if want_mean:
        total = torch.logsumexp(log_w, 0)
        mean = mean_num * (ref - total)[:, None].exp()
    return _Draws(torch.cat(zs, 0), log_w, mean)


def sir_impute(
    x: Tensor,
    mask: Tensor,
    generator: torch.Generator | None,
    num_samples: int,
    *,
    make_proposal: MakeProposal,
    decoder: Callable[[Tensor], Tensor],
    latent_dim: int,
    k: int,
    chunk: int,
    refine: int,
    score_k: int,
    fill_draws: int,
    label: str,
) -> ImputeResult:
    """SIR imputation of a Bernoulli-decoder latent-variable model (see the module docstring).

    Args:
        x: ``(B, *input_shape)`` binary data (values at missing entries are only scored).
        mask: ``x``'s shape, float 1 = observed, 0 = missing.
        generator: the source of every random draw.
        num_samples: S imputations per example.
        make_proposal: ``(x~ (B, D), generator) -> proposal``; the proposal must return log q of
            its own draws exactly (it is an importance-sampling proposal, not a bound).
        decoder: ``z (..., B, Z) -> logits (..., B, D)``.
        latent_dim: Z.
        k: K, draws per example in each round.
        chunk: draws per decoder pass (memory is O(chunk * B * D)).
        refine: rounds that re-fill x~ with the posterior-predictive mean before the final one.
        score_k: draws from the proposal at the complete x for log p^(x) (0: no log_prob_missing).
        fill_draws: prior draws for the marginal pixel means of the first fill.
        label: the family's prefix of ``ImputeResult.method``.
    """
    shape = x.shape
    xf, mf = x.flatten(1), mask.flatten(1)
    n, d = xf.shape
    samples = xf.expand(num_samples, n, d).clone()
    log_prob = xf.new_zeros(n)
    stderr = xf.new_zeros(n)
    method = f"{label}-sir-k={k}" + (f"-refine={refine}" if refine else "")
    lp_method = (
        f"estimate: iwae log p(x) [k={score_k}] - iwae log p(x_obs) [sir k={k}]; not a bound"
    )
    active = (mf < 1).any(1)
    if active.any():
        xa, ma = xf[active], mf[active]
        prior_rows = (ma == 0).all(1)
        # the model's marginal pixel means: the first fill of the missing entries
        z0 = _randn((fill_draws, 1, latent_dim), generator, xa)
        pixel_mean = torch.sigmoid(decoder(z0)).mean((0, 1))  # (D,)
        fill = torch.where(ma > 0, xa, pixel_mean.expand_as(xa))
        for _ in range(refine):
            draws = _sir_round(
                xa, ma, make_proposal(fill, generator), decoder, k, chunk, prior_rows, generator,
                want_mean=True,
            )  # fmt: skip
            fill = torch.where(ma > 0, xa, draws.mean)
        draws = _sir_round(
            xa, ma, make_proposal(fill, generator), decoder, k, chunk, prior_rows, generator,
            want_mean=False,
        )  # fmt: skip
        # resample S codes per row from the self-normalised weights, then x_mis ~ p(x_mis | z)
        probs = torch.softmax(draws.log_w.T, dim=1).cpu()  # (B, K); the generator is on the CPU
        idx = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        idx = idx.to(xa.device)
        rows = torch.arange(len(xa), device=xa.device)
        z_sel = draws.z[idx.T, rows[None, :]]  # (S, B, Z)
        for start in range(0, num_samples, max(1, chunk)):
            zs = z_sel[start : start + chunk]
            p = torch.sigmoid(decoder(zs))
            u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            new = (u < p).to(xf.dtype)
            samples[start : start + chunk, active] = torch.where(ma > 0, xa, new)
        if score_k:
            obs, obs_se = importance_weighted(draws.log_w)
            proposal = make_proposal(xa, generator)
            full = _sir_round(
                xa, torch.ones_like(ma), proposal, decoder, score_k, chunk,
                torch.zeros_like(prior_rows), generator, want_mean=False,
            )  # fmt: skip
            joint, joint_se = importance_weighted(full.log_w)
            log_prob[active] = joint - obs
            se = torch.zeros_like(joint)
            for part in (obs_se, joint_se):
                if part is not None:
                    se = se + part.pow(2)
            stderr[active] = se.sqrt()
    result_samples = samples.view(num_samples, *shape)
    if not score_k:
        return ImputeResult(result_samples, method=method)
    return ImputeResult(result_samples, method, log_prob, lp_method, stderr)


def gaussian_proposal(
    mu: Tensor, sd: Tensor, generator: torch.Generator | None, prior_mix: float = 0.0
) -> Proposal:
    """The defensive mixture q(z) = (1 - pi) N(mu, diag sd^2) + pi N(0, I) per row (``mu``,
    ``sd`` ``(B, Z)``, ``pi = prior_mix``) as a ``Proposal``: with pi > 0 every weight is at most
    p(x_obs|z) / pi, so a too-narrow or misplaced encoder cannot make the weights' variance
    infinite (Hesterberg 1995)."""
    return base_mixture_proposal(mu, sd, generator, prior_mix, flow=None)


def base_mixture_proposal(
    mu: Tensor,
    sd: Tensor,
    generator: torch.Generator | None,
    prior_mix: float,
    flow: Callable[[Tensor], tuple[Tensor, Tensor]] | None,
) -> Proposal:
    """z_0 ~ (1 - pi) N(mu, diag sd^2) + pi N(0, I), then ``flow`` (z_0 -> (z, log|det|)), if
    any; log q(z) = log q_0(z_0) - log|det|, exact because z_0 is known for the proposal's own
    draws."""
    log_keep = math.log1p(-prior_mix) if prior_mix < 1 else -math.inf
    log_mix = math.log(prior_mix) if prior_mix > 0 else -math.inf

    def draw(m: int) -> tuple[Tensor, Tensor]:
        eps = _randn((m, *mu.shape), generator, mu)
        z = mu + sd * eps
        if prior_mix > 0:
            u = torch.rand((m, len(mu), 1), generator=generator, dtype=mu.dtype).to(mu.device)
            z = torch.where(u < prior_mix, eps, z)
        log_q = std_normal_log_prob((z - mu) / sd) - sd.log().sum(-1)
        if prior_mix > 0:
            log_q = torch.logaddexp(log_keep + log_q, log_mix + std_normal_log_prob(z))
        if flow is not None:
            z, log_det = flow(z)
            log_q = log_q - log_det
        return z, log_q

    return draw
