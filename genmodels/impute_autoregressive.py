"""Imputation for the autoregressive families (FVSBN, NADE, MADE, PixelCNN): one algorithm, four
sets of primitives.

A family here is a mixture of K >= 1 autoregressive components (K = 1 except MADE with several
masks, which is the uniform mixture p(x) = (1/K) sum_k p_k(x)); component k visits the flattened
dimensions in its own order. Given x with observed entries O and missing entries M (per row):

* **ancestral-exact** — when, for every component, every missing entry comes after every
  observed one in that component's order, p_k(x_M | x_O) is the product of the missing entries'
  conditionals, so sequential sampling with the observed values plugged in is exact. With K > 1
  the mixture's conditional is p(x_M | x_O) = sum_k w_k p_k(x_M | x_O) with posterior weights
  w_k ∝ p_k(x_O) = prod_{d in O} p_k(x_d | x_<d) (exact, observed entries first), so the component
  is drawn by w_k and then sampled ancestrally: exact for the mixture, not just one component.
  ``log_prob_missing`` = log p(x) - log p(x_O) is exact (K = 1: the missing conditionals' sum).
  Rows with nothing observed are plain samples; rows with nothing missing are x.
* otherwise (some component sees a missing entry before an observed one): **sampling-importance-
  resampling then Gibbs**. ``proposals`` = P sequential proposals per imputation (missing entries
  drawn from the conditionals with the observed values plugged in, under a component drawn
  uniformly from the components whose order puts the observed entries first when there are any,
  else from all of them); importance weight p(x) / q(x_M) (K = 1: the product of the observed
  entries' conditionals); one proposal kept ∝ its weight; then ``sweeps`` systematic-scan sweeps
  over the missing entries with the exact full conditional p(x_d | x_-d) ∝ p(x) (binary: one
  extra forward pass per missing entry and component, the current state's log p cached). Each
  Gibbs sweep leaves p(x_M | x_O) invariant, so it can only bring the SIR draw closer to it (in
  total variation); the result is approximate, consistent as P or the sweeps grow. For L > 2
  levels (PixelCNN 8-bit) the Gibbs update is Metropolis-within-Gibbs: propose x_d from its
  autoregressive conditional p(x_d | x_<d) and accept with the ratio of the later entries'
  conditionals (one forward pass per missing entry instead of L), stated as ``mh-gibbs``.
  ``log_prob_missing`` = log p(x) - log p̂(x_O), p̂(x_O) the unbiased importance estimate over
  all S·P proposals of the row; an *estimate* (its log is biased low, so log_prob_missing is
  biased high, by O(stderr²)), with its delta-method standard error.

A family supplies, on flattened inputs ``(N, D)`` in the data space:

* ``_ar_positions()`` → ``(K, D)`` long: position of each dimension in component k's order;
* ``_ar_log_conditionals(xf, k)`` → ``(N, D, L)``: log p_k(x_d = v | x_<d) for every value v;
* ``_ar_fill(xf, missing, k, generator)`` → ``(N, D)``: the missing entries drawn in order from
  component k's conditionals, observed values plugged in (one uniform per row per order position
  that has a missing entry in some row);
* ``_ar_rows`` → the most rows one network call should take (memory bound);
* optionally ``_ar_gibbs_binary(state, missing, sweeps, generator)``: the same Gibbs sweeps done
  faster by the family (FVSBN: O(D) per update from its current logits).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GenerativeModel, ImputeResult, importance_weighted

WORK_ROWS = 4096  # rows (imputations x proposals) in flight per chunk of examples
WORK_VALUES = 2**25  # ... and at most this many conditional log-probabilities (rows x D x L)


def validate_settings(family: str, proposals: int, sweeps: int) -> None:
    """Config checks shared by the four families."""
    if proposals < 1:
        raise ValueError(f"{family}: impute_proposals must be >= 1, got {proposals}")
    if sweeps < 0:
        raise ValueError(f"{family}: impute_sweeps must be >= 0, got {sweeps}")


def uniform(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``(n,)`` uniforms from ``generator`` (drawn on the CPU, so a seed gives the same draws on
    every device), on ``like``'s device and dtype."""
    return torch.rand(n, generator=generator).to(device=like.device, dtype=like.dtype)


def categorical(log_p: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``log_p (N, L)`` (unnormalised), by inverse CDF."""
    cdf = log_p.softmax(-1).cumsum(-1)
    u = uniform(len(log_p), generator, cdf)[:, None]
    return (cdf < u).sum(-1).clamp(max=log_p.shape[-1] - 1)


def log_conditionals(model: GenerativeModel, xf: Tensor, k: int) -> Tensor:
    """``model._ar_log_conditionals`` in chunks of ``model._ar_rows`` rows."""
    rows = max(1, int(model._ar_rows))
    if len(xf) <= rows:
        return model._ar_log_conditionals(xf, k)
    return torch.cat([model._ar_log_conditionals(c, k) for c in xf.split(rows)])


def terms(model: GenerativeModel, xf: Tensor) -> Tensor:
    """``(N, K, D)``: log p_k(x_d | x_<d) of ``xf``'s own values under every component."""
    rows = max(1, int(model._ar_rows))
    out = []
    for k in range(model._ar_positions().shape[0]):
        per = []
        for c in xf.split(rows):
            per.append(model._ar_log_conditionals(c, k).gather(-1, c.long()[:, :, None]))
        out.append(torch.cat(per).squeeze(-1))
    return torch.stack(out, 1)


def log_p(model: GenerativeModel, xf: Tensor) -> Tensor:
    """``(N,)`` log p(x) of the mixture (log-mean-exp over components)."""
    per = terms(model, xf).sum(-1)  # (N, K)
    return torch.logsumexp(per, 1) - math.log(per.shape[1])


def fill(
    model: GenerativeModel,
    xf: Tensor,
    missing: Tensor,
    component: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Sequential sampling of the missing entries, row i under component ``component[i]``."""
    out = xf.clone()
    for k in component.unique().tolist():
        rows = (component == k).nonzero().squeeze(1)
        out[rows] = model._ar_fill(xf[rows], missing[rows], k, generator)
    return out


@torch.no_grad()
def impute(
    model: GenerativeModel,
    x: Tensor,
    mask: Tensor,
    generator: torch.Generator | None,
    num_samples: int,
    proposals: int,
    sweeps: int,
) -> ImputeResult:
    """The algorithm of the module docstring; ``x`` and ``mask`` are validated by the template."""
    s_count, b, d = num_samples, x.shape[0], model.num_dims
    xf = x.flatten(1)
    missing = mask.flatten(1) == 0
    observed = ~missing
    pos = model._ar_positions().to(x.device)  # (K, D)
    k_count = pos.shape[0]
    last_obs = torch.where(observed[:, None, :], pos[None], -1).amax(-1)  # (B, K)
    first_mis = torch.where(missing[:, None, :], pos[None], d).amin(-1)
    compatible = last_obs < first_mis  # (B, K): observed entries first in component k's order
    any_missing = missing.any(1)
    exact_rows = (compatible.all(1) & any_missing).nonzero().squeeze(1)
    approx_rows = (~compatible.all(1)).nonzero().squeeze(1)

    samples = xf.expand(s_count, b, d).clone()
    lpm = torch.zeros(b, device=x.device, dtype=x.dtype)
    stderr = torch.zeros(b, device=x.device, dtype=x.dtype)

    work = min(WORK_ROWS, max(1, WORK_VALUES // (d * model.levels)))
    # ------------------------------------------------------------------ exact rows, in chunks
    chunk = max(1, work // s_count)
    for rows in exact_rows.split(chunk) if len(exact_rows) else ():
        n = len(rows)
        xc, mc = xf[rows], missing[rows]
        t = terms(model, xc)  # (n, K, D)
        obs_ll = (t * (~mc)[:, None, :]).sum(-1)  # (n, K) log p_k(x_O), exact here
        all_ll = t.sum(-1)
        lpm[rows] = torch.logsumexp(all_ll, 1) - torch.logsumexp(obs_ll, 1)
        if k_count == 1:
            comp = torch.zeros(s_count * n, dtype=torch.long, device=x.device)
        else:  # the component by its posterior weight, one draw per imputation
            comp = categorical(obs_ll.repeat(s_count, 1), generator)
        xs = xc.repeat(s_count, 1)
        ms = mc.repeat(s_count, 1)
        samples[:, rows] = fill(model, xs, ms, comp, generator).view(s_count, n, d)

    # ---------------------------------------------------- order-incompatible rows: SIR + Gibbs
    p_count = proposals
    chunk = max(1, work // (s_count * p_count))
    for rows in approx_rows.split(chunk) if len(approx_rows) else ():
        n = len(rows)
        xc, mc = xf[rows], missing[rows]
        # Proposal mixture: uniform over the components with the observed entries first, if any.
        allowed = compatible[rows]
        allowed = torch.where(allowed.any(1, keepdim=True), allowed, torch.ones_like(allowed))
        log_pi = torch.log(allowed.to(x.dtype) / allowed.sum(1, keepdim=True))  # (n, K)
        reps = s_count * p_count
        xs, ms = xc.repeat(reps, 1), mc.repeat(reps, 1)  # row r = (s, j, i) flattened, i fastest
        log_pi_s = log_pi.repeat(reps, 1)
        if k_count == 1:
            comp = torch.zeros(len(xs), dtype=torch.long, device=x.device)
        else:
            comp = categorical(log_pi_s, generator)
        prop = fill(model, xs, ms, comp, generator)
        t = terms(model, prop)  # (N, K, D)
        lp_prop = torch.logsumexp(t.sum(-1), 1) - math.log(k_count)
        log_q = torch.logsumexp(log_pi_s + (t * ms[:, None, :]).sum(-1), 1)
        log_w = (lp_prop - log_q).view(s_count, p_count, n)
        est, se = importance_weighted(log_w.reshape(reps, n))
        lpm[rows] = log_p(model, xc) - est
        if se is not None:
            stderr[rows] = se.to(stderr.dtype)
        # Resample one proposal per imputation, proportionally to its weight.
        pick = categorical(log_w.permute(0, 2, 1).reshape(s_count * n, p_count), generator)
        flat = (
            torch.arange(s_count, device=x.device).repeat_interleave(n) * p_count + pick
        ) * n + torch.arange(n, device=x.device).repeat(s_count)
        state, state_lp = prop[flat], lp_prop[flat]
        m_state = mc.repeat(s_count, 1)
        if sweeps:
            state = gibbs(model, state, state_lp, m_state, sweeps, generator)
        samples[:, rows] = state.view(s_count, n, d)

    method = _method(model, k_count, len(exact_rows), len(approx_rows), proposals, sweeps)
    if len(approx_rows):
        lp_method = (
            f"estimate: log p(x) - log p_hat(x_obs), sequential importance sampling with "
            f"k={s_count * p_count} proposals per row (biased high by O(stderr^2))"
        )
        if len(exact_rows):
            lp_method += "; exact on order-compatible rows (stderr 0)"
        se_out: Tensor | None = stderr
    else:
        lp_method, se_out = "exact", None
    return ImputeResult(
        samples=samples.view(s_count, *x.shape),
        method=method,
        log_prob_missing=lpm,
        log_prob_method=lp_method,
        stderr=se_out,
    )


def _method(
    model: GenerativeModel, k_count: int, n_exact: int, n_approx: int, proposals: int, sweeps: int
) -> str:
    exact = "ancestral-exact" if k_count == 1 else "mask-posterior+ancestral-exact"
    if not n_approx:
        return exact
    kind = "gibbs" if model.levels == 2 else "mh-gibbs"
    approx = f"sir-k={proposals}+{kind}-sweeps={sweeps}"
    if n_exact:
        approx += f" ({exact} on {n_exact} order-compatible rows)"
    return approx


def gibbs(
    model: GenerativeModel,
    state: Tensor,
    state_lp: Tensor,
    missing: Tensor,
    sweeps: int,
    generator: torch.Generator | None,
) -> Tensor:
    """``sweeps`` systematic-scan sweeps over the missing entries of ``state (N, D)`` with the
    exact full conditionals (binary) or Metropolis-within-Gibbs (L > 2, one component)."""
    state = state.clone()
    lp = state_lp.clone()
    pos = model._ar_positions()[0]
    dims = [dim for dim in torch.argsort(pos).tolist() if bool(missing[:, dim].any())]
    if model.levels == 2 and hasattr(model, "_ar_gibbs_binary"):  # a family's faster update
        return model._ar_gibbs_binary(state, missing, sweeps, generator)
    if model.levels == 2:
        for _ in range(sweeps):
            for dim in dims:
                rows = missing[:, dim].nonzero().squeeze(1)
                flipped = state[rows]
                flipped[:, dim] = 1 - flipped[:, dim]
                lp_flip = log_p(model, flipped)
                # P(flip) = p(x') / (p(x) + p(x')): an exact Gibbs update of x_dim.
                take = uniform(len(rows), generator, lp) < torch.sigmoid(lp_flip - lp[rows])
                state[rows[take]] = flipped[take]
                lp[rows[take]] = lp_flip[take]
        return state
    if model._ar_positions().shape[0] != 1:
        raise NotImplementedError("mh-gibbs is for single-order models")
    cond = log_conditionals(model, state, 0)  # (N, D, L) of the current state
    for _ in range(sweeps):
        for dim in dims:
            rows = missing[:, dim].nonzero().squeeze(1)
            q = cond[rows, dim]  # (R, L): p(x_d | x_<d), unchanged by the proposal
            prop = state[rows]
            new = categorical(q, generator)
            old = prop[:, dim].long()
            prop[:, dim] = new.to(prop.dtype)
            cond_new = log_conditionals(model, prop, 0)
            lp_new = cond_new.gather(-1, prop.long()[:, :, None]).squeeze(-1).sum(1)
            q_new = q.gather(1, new[:, None]).squeeze(1)
            q_old = q.gather(1, old[:, None]).squeeze(1)
            log_accept = lp_new - lp[rows] + q_old - q_new
            take = torch.log(uniform(len(rows), generator, lp)) < log_accept
            state[rows[take]] = prop[take]
            lp[rows[take]] = lp_new[take]
            cond[rows[take]] = cond_new[take]
    return state


class AutoregressiveImpute:
    """Mixin giving a family ``_impute`` by :func:`impute`, with the proposals and sweeps of its
    config (``impute_proposals``, ``impute_sweeps``). List it before the ``GenerativeModel`` base
    so its ``_impute`` is the one found; the family supplies the ``_ar_*`` primitives."""

    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        cfg = self.config  # type: ignore[attr-defined]
        return impute(
            self,  # type: ignore[arg-type]
            x,
            mask,
            generator,
            num_samples,
            cfg.impute_proposals,
            cfg.impute_sweeps,
        )
