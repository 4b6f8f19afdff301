"""Real NVP: density estimation with real-valued non-volume-preserving transformations (Dinh,
Sohl-Dickstein & Bengio 2016, https://arxiv.org/abs/1605.08803).

An invertible network f maps data to a standard normal z; the change of variables gives an exact
density, log p(z0) = log N(f(z0)) + log|det df/dz0|, and sampling is one inverse pass. The layers
are affine couplings (half the units, untouched, set the scale and shift of the other half:
a triangular Jacobian). On images each scale has checkerboard couplings, a squeeze (2x2
space-to-depth), channel-wise couplings, and then factors out half the channels as latents; the
last scale has checkerboard couplings only.

Discrete data (paper, section 4.1): each x in 0..L-1 is dequantised, y = (x + u) / L with
u ~ U[0, 1)^D, and taken to logit space, z0 = logit(alpha + (1 - 2 alpha) y). Since P(x) is the
mass of p_y on x's cell of volume L^-D, P(x) = L^-D E_u[p_y((x + u) / L)], so
log P(x) >= E_u[log p_y(y)] - D log L, where p_y includes the logit's Jacobian. ``log_prob``
returns the k-sample importance-weighted version, log mean_i p_y(y_i) - D log L (``k =
dequant_samples``): a stochastic lower bound on the discrete log-likelihood, comparable across
families. With alpha > 0, p_y puts a little mass outside the unit cube, so the discrete model is
slightly sub-normalised (its probabilities sum to a bit under 1).

Choices here: ActNorm (Glow) instead of batch norm, initialised from the first training batch and
a plain parameter afterwards, so no density depends on its batch; log-scales are a learned
per-channel scale times tanh; conditioners are residual nets without normalisation; all latents
are standard normal; ``num_coupling`` couplings of each kind per scale; flat ``(D,)`` inputs use
``2 * num_coupling`` couplings over alternating halves with residual MLPs (``num_scales`` unused).
Training uses one dequantisation sample per example. ``alpha = 0`` (the logit of y itself) is
for analysis only: a draw u = 0 at x = 0 would give an infinite logit.

Imputation (``impute``): Metropolis-adjusted Langevin (MALA) on the missing coordinates under
the exact density, in the flow's continuous logit space z0, with the observed coordinates fixed
at their cells' centres, z0_obs = logit(alpha + (1 - 2 alpha) (x_obs + 1/2) / L); each chain starts
from a draw of the flow (its missing coordinates), runs ``impute_steps`` steps, and its end is
quantised to the cell, x_mis = floor(L y_mis) clipped to 0..L-1. The step size starts at
``impute_step_size`` and is adapted per chain (Robbins-Monro on log eps towards acceptance 0.574)
during the first half of the steps, then frozen, so the second half leaves the target invariant.
What it samples, as steps -> ∞: the quantised p_y(y_mis | y_obs = cell centres), an approximation
of the discrete model's P(x_mis | x_obs) = ∫_{cell(x_obs)} p_y(y_obs, cell(x_mis)) / P(x_obs) that
ignores where in its cell the observed value lies (negligible at 8 bits, an approximation for
binary data); at finite steps it is an MCMC approximation from a model-sample start. Each of the S
imputations is its own chain; ``impute_chains_per_pass`` chains share one pass (memory). Rows with
nothing observed are plain flow samples (exact). ``log_prob_missing`` is None: the marginal
P(x_obs) needs an integral of the flow over all missing coordinates, for which the flow has no
closed form and this family no tractable proposal. Cost: each step is a forward and backward pass
of the flow per chain; for the benchmark's 8-bit MNIST flow (32 channels, 2 couplings, 2 scales)
about 0.8 CPU-s per imputation at the default 100 steps, so budgeted runs should lower
``impute_steps`` (the method string ``mala-steps=...`` says what was used).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    ScoreResult,
    SearchSpec,
    importance_weighted,
    log_mean_exp,
    register,
    std_normal_log_prob,
)
from .flows import (
    ActNorm,
    CheckerboardCoupling,
    FlowSequence,
    ResidualNet,
    SplitCoupling,
    data_init,
    squeeze,
    unsqueeze,
)

ROWS_PER_PASS = 1024  # rows (examples x dequantisation draws) scored in one pass


@dataclass(frozen=True)
class RealNVPConfig(BaseConfig):
    num_scales: int = 2
    num_coupling: int = 3
    hidden_channels: int = 64
    num_res_blocks: int = 2
    alpha: float = 0.05
    dequant_samples: int = 4
    impute_steps: int = 100
    impute_step_size: float = 0.05
    impute_chains_per_pass: int = 256
    lr: float = 1e-3


class Scale(nn.Module):
    """One scale on ``(B, C, H, W)``: checkerboard couplings; unless it is the last scale, a
    squeeze, channel-wise couplings, and half of the ``4C`` channels factored out as latents."""

    def __init__(self, shape: tuple[int, int, int], cfg: RealNVPConfig, last: bool) -> None:
        super().__init__()
        c, h, w = shape
        hid, blocks = cfg.hidden_channels, cfg.num_res_blocks
        steps: list[nn.Module] = []
        for i in range(cfg.num_coupling):
            net = ResidualNet(c, 2 * c, hid, blocks, spatial=True)
            steps += [ActNorm(c), CheckerboardCoupling(c, h, w, parity=i % 2, net=net)]
        self.checker = FlowSequence(steps)
        self.last = last
        if not last:

            def net_factory(i: int, o: int) -> nn.Module:
                return ResidualNet(i, o, hid, blocks, spatial=True)

            steps = []
            for i in range(cfg.num_coupling):
                steps += [
                    ActNorm(4 * c),
                    SplitCoupling(4 * c, flip=i % 2 == 1, net_factory=net_factory),
                ]
            self.channel = FlowSequence(steps)
            self.factored = 2 * c  # channels leaving as latents

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """x -> (what goes on to the next scale, the factored-out latents, log-det)."""
        x, log_det = self.checker(x)
        if self.last:
            return x, None, log_det
        x, ld = self.channel(squeeze(x))  # (B, 4C, H/2, W/2)
        z, x = x.split([self.factored, x.shape[1] - self.factored], dim=1)
        return x, z, log_det + ld

    def inverse(self, x: Tensor, z: Tensor | None) -> Tensor:
        if not self.last:
            x = unsqueeze(self.channel.inverse(torch.cat([z, x], dim=1)))
        return self.checker.inverse(x)


class MultiScaleFlow(nn.Module):
    """Real NVP's multi-scale architecture: ``(B, C, H, W)`` -> all latents flattened ``(B, D)``."""

    def __init__(self, shape: tuple[int, int, int], cfg: RealNVPConfig) -> None:
        super().__init__()
        c, h, w = shape
        scales, self.latent_shapes = [], []
        for i in range(cfg.num_scales):
            last = i == cfg.num_scales - 1
            scales.append(Scale((c, h, w), cfg, last))
            if last:
                self.latent_shapes.append((c, h, w))
            else:
                c, h, w = 2 * c, h // 2, w // 2  # 4C after the squeeze, half factored out
                self.latent_shapes.append((c, h, w))
        self.scales = nn.ModuleList(scales)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zs, log_det = [], x.new_zeros(x.shape[0])
        for scale in self.scales:
            x, z, ld = scale(x)
            zs.append(x if z is None else z)
            log_det = log_det + ld
        return torch.cat([z.flatten(1) for z in zs], dim=1), log_det

    def inverse(self, z: Tensor) -> Tensor:
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = [p.view(-1, *s) for p, s in zip(z.split(sizes, dim=1), self.latent_shapes)]
        x = self.scales[-1].inverse(parts[-1], None)
        for scale, part in zip(reversed(self.scales[:-1]), reversed(parts[:-1])):
            x = scale.inverse(x, part)
        return x


class FlatFlow(FlowSequence):
    """Couplings over alternating halves of a flat ``(B, D)`` vector, each after an ActNorm."""

    def __init__(self, dim: int, cfg: RealNVPConfig) -> None:
        def net_factory(i: int, o: int) -> nn.Module:
            return ResidualNet(i, o, cfg.hidden_channels, cfg.num_res_blocks, spatial=False)

        steps: list[nn.Module] = []
        for i in range(2 * cfg.num_coupling):
            steps += [ActNorm(dim), SplitCoupling(dim, flip=i % 2 == 1, net_factory=net_factory)]
        super().__init__(steps)


@register
class RealNVP(GenerativeModel):
    family = "realnvp"
    likelihood = "estimate"
    data_kinds = ("binary", "discrete")
    Config = RealNVPConfig
    capabilities = frozenset({"log_prob", "embed", "impute"})
    sample_limit = 256
    search_space = {
        "hidden_channels": SearchSpec("choice", (32, 64, 128)),
        "num_coupling": SearchSpec("choice", (2, 3, 4)),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: RealNVPConfig) -> None:
        super().__init__(input_shape, levels, config)
        cfg = config
        if min(cfg.num_scales, cfg.num_coupling, cfg.hidden_channels, cfg.dequant_samples) < 1:
            raise ValueError(
                "realnvp: num_scales, num_coupling, hidden_channels and dequant_samples must be >= 1"
            )
        if cfg.num_res_blocks < 0 or not 0.0 <= cfg.alpha < 0.5:
            raise ValueError("realnvp: num_res_blocks must be >= 0 and alpha in [0, 0.5)")
        if cfg.impute_steps < 0 or not cfg.impute_step_size > 0 or cfg.impute_chains_per_pass < 1:
            raise ValueError(
                "realnvp: impute_steps must be >= 0, impute_step_size > 0 and "
                "impute_chains_per_pass >= 1"
            )
        if len(self.input_shape) == 3:
            _, h, w = self.input_shape
            k = 2 ** (cfg.num_scales - 1)  # one squeeze between consecutive scales
            if h % k or w % k or (h // k) * (w // k) < 2:
                raise ValueError(
                    f"realnvp: with num_scales={cfg.num_scales}, H and W must be divisible by {k} "
                    f"and the last scale must have at least 2 pixels; got {self.input_shape}"
                )
            self.flow: nn.Module = MultiScaleFlow(self.input_shape, cfg)
        else:
            if self.num_dims < 2:
                raise ValueError("realnvp: a flat input needs at least 2 dimensions")
            self.flow = FlatFlow(self.num_dims, cfg)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------------------- densities
    def flow_forward(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """The continuous flow: ``z0`` ``(B, *input_shape)`` -> (latents ``(B, D)``, log-det)."""
        return self.flow(z0)

    def flow_inverse(self, z: Tensor) -> Tensor:
        """Latents ``(B, D)`` -> ``z0`` ``(B, *input_shape)``."""
        return self.flow.inverse(z)

    def log_density_z0(self, z0: Tensor) -> Tensor:
        """log p(z0) ``(B,)`` of the continuous flow on R^D (logit space)."""
        z, log_det = self.flow_forward(z0)
        return std_normal_log_prob(z, event_dims=z.dim() - 1) + log_det

    def log_density_y(self, y: Tensor) -> Tensor:
        """log p_y(y) ``(B,)`` of dequantised data, including the logit transform's Jacobian:
        z0 = logit(p), p = alpha + (1 - 2 alpha) y, dz0/dy = (1 - 2 alpha) / (p (1 - p))."""
        a = self.config.alpha
        p = a + (1 - 2 * a) * y
        log_p, log_1mp = p.log(), torch.log1p(-p)
        log_jac = (math.log1p(-2 * a) - log_p - log_1mp).flatten(1).sum(1)
        return self.log_density_z0(log_p - log_1mp) + log_jac

    def dequant_log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        """The single-sample estimate log p_y((x + u) / L) - D log L ``(B,)`` for given noise u."""
        y = (x.to(self._dtype) + u) / self.levels
        return self.log_density_y(y) - self.num_dims * math.log(self.levels)

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``dequant_log_prob`` for k dequantisation draws → ``(k, B)`` (x already checked).

        The draws are taken as ``(m, B, *input_shape)`` blocks of noise, m draws per pass with
        m * B <= ``ROWS_PER_PASS`` where possible."""
        x = x.to(self._dtype)
        per_pass = max(1, ROWS_PER_PASS // max(1, len(x)))
        chunks = []
        for start in range(0, k, per_pass):
            m = min(per_pass, k - start)
            u = torch.rand((m, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
            xm = x.expand(m, *x.shape)
            chunks.append(self.dequant_log_prob(xm.flatten(0, 1), u.flatten(0, 1)).view(m, -1))
        return torch.cat(chunks)

    def log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        k: int | None = None,
        condition: Condition = None,
    ) -> Tensor:
        self.check_condition(condition)
        x = self.check_input(x)
        return log_mean_exp(self.log_weights(x, k or self.config.dequant_samples, generator), 0)

    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        self.check_condition(condition)
        x = self.check_input(x)
        k = self.config.dequant_samples
        estimate, stderr = importance_weighted(self.log_weights(x, k, generator))
        method = "dequant-k=1" if k == 1 else f"dequant-iw-k={k}"
        return ScoreResult(estimate, method=method, stderr=stderr)

    # -------------------------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].to(self._dtype)
        with data_init(self):  # ActNorm: data-dependent init on the first training batch only
            log_px = self.dequant_log_prob(x, torch.rand_like(x))
        nll = -log_px.mean()
        bpd = nll.detach() / (self.num_dims * math.log(2))
        return {"loss": nll, "nll": nll.detach(), "bpd": bpd}

    # ------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def sample_continuous(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Draws of y ``(n, *input_shape)`` from p_y (z ~ N(0, T^2 I)). y lies in the image of
        the logit transform, (-alpha, 1 - alpha) / (1 - 2 alpha): the unit cube when alpha = 0."""
        param = next(self.parameters())
        z = torch.randn((n, self.num_dims), generator=generator, dtype=param.dtype)
        z0 = self.flow_inverse(temperature * z.to(param.device))
        a = self.config.alpha
        return (torch.sigmoid(z0) - a) / (1 - 2 * a)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        condition: Condition = None,
    ) -> Tensor:
        """Samples in the data space: x = floor(L y), clipped to 0..L-1."""
        self.check_condition(condition)
        y = self.sample_continuous(n, generator, temperature)
        return (y * self.levels).floor().clamp(0, self.levels - 1).float()

    def embed(self, x: Tensor) -> Tensor:
        """All latents ``(B, D)`` of x dequantised at the cell centres (u = 1/2)."""
        x = self.check_input(x).to(self._dtype)
        a = self.config.alpha
        p = a + (1 - 2 * a) * (x + 0.5) / self.levels
        return self.flow_forward(torch.logit(p))[0]

    # ------------------------------------------------------------------------------ imputation
    def _to_z0(self, y: Tensor) -> Tensor:
        a = self.config.alpha
        return torch.logit(a + (1 - 2 * a) * y)

    def _quantise_z0(self, z0: Tensor) -> Tensor:
        a = self.config.alpha
        y = (torch.sigmoid(z0) - a) / (1 - 2 * a)
        return (y * self.levels).floor().clamp(0, self.levels - 1)

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        """MALA on the missing coordinates in logit space, observed ones at their cell centres
        (see the module docstring); rows with nothing observed are plain flow samples."""
        cfg = self.config
        dtype = self._dtype
        x, mask = x.to(dtype), mask.to(dtype)
        samples = x.expand(num_samples, *x.shape).clone()
        missing = (mask < 1).flatten(1)
        active = missing.any(1)
        empty = (~missing).sum(1) == 0  # nothing observed: the model's own samples
        method = f"mala-steps={cfg.impute_steps}-eps0={cfg.impute_step_size:g}-adapt=half-centres"
        for b in torch.nonzero(empty & active).flatten().tolist():
            samples[:, b] = self.sample(num_samples, generator)
        rows = torch.nonzero(active & ~empty).flatten()
        if len(rows):
            # chains: S per row, row-major within each sample index
            xc = x[rows].expand(num_samples, -1, *self.input_shape).flatten(0, 1)
            mc = mask[rows].expand(num_samples, -1, *self.input_shape).flatten(0, 1)
            out = torch.empty_like(xc)
            per = cfg.impute_chains_per_pass
            for start in range(0, len(xc), per):
                sl = slice(start, start + per)
                out[sl] = self._mala(xc[sl], mc[sl], generator)
            samples[:, rows] = out.view(num_samples, len(rows), *self.input_shape)
        return ImputeResult(samples, method=method)

    def _mala(self, x: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
        """Run one MALA chain per row of ``x`` on its missing coordinates; return the quantised
        final states ``(N, *input_shape)``. The step size is adapted per chain (Robbins-Monro on
        log eps towards acceptance 0.574) during the first half of the steps, then frozen."""
        cfg = self.config
        n, steps = len(x), cfg.impute_steps
        move = 1.0 - mask
        centres = self._to_z0((x + 0.5) / self.levels)
        start = self._to_z0(self.sample_continuous(n, generator)).view_as(x)
        z0 = torch.where(mask > 0, centres, start)
        log_eps = torch.full((n,), math.log(cfg.impute_step_size), dtype=x.dtype, device=x.device)
        view = (n,) + (1,) * (x.dim() - 1)

        def log_target_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                lp = self.log_density_z0(z)
                (grad,) = torch.autograd.grad(lp.sum(), z)
            return lp.detach(), grad * move

        lp, grad = log_target_and_grad(z0)
        for t in range(steps):
            eps = log_eps.exp().view(view)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            mean_fwd = z0 + 0.5 * eps.pow(2) * grad
            prop = z0 + move * (mean_fwd - z0 + eps * noise)
            lp_new, grad_new = log_target_and_grad(prop)
            mean_bwd = prop + 0.5 * eps.pow(2) * grad_new
            log_q_fwd = -((prop - mean_fwd) * move).pow(2).flatten(1).sum(1) / (
                2 * eps.pow(2).flatten()
            )
            log_q_bwd = -((z0 - mean_bwd) * move).pow(2).flatten(1).sum(1) / (
                2 * eps.pow(2).flatten()
            )
            log_accept = (lp_new - lp + log_q_bwd - log_q_fwd).clamp(max=0.0)
            log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
            u = torch.rand((n,), generator=generator, dtype=x.dtype).to(x.device)
            accept = u.log() < log_accept
            z0 = torch.where(accept.view(view), prop, z0)
            lp = torch.where(accept, lp_new, lp)
            grad = torch.where(accept.view(view), grad_new, grad)
            if t < steps // 2:
                rate = 1.0 / (t + 1) ** 0.6
                log_eps = log_eps + rate * (log_accept.exp() - 0.574)
        return torch.where(mask > 0, x, self._quantise_z0(z0))
