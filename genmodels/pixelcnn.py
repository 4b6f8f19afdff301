"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks",
https://arxiv.org/abs/1601.06759; gated activations from van den Oord, Kalchbrenner, Vinyals,
Espeholt, Graves & Kavukcuoglu 2016, "Conditional Image Generation with PixelCNN Decoders",
https://arxiv.org/abs/1606.05328).

p(x) = prod_i p(x_i | x_<i) over pixels in raster order (and, within a pixel, over channels R then
G then B). A stack of masked convolutions computes every conditional in one pass: the first layer
(mask "A") hides the pixel itself, later layers (mask "B") may see the centre, so no output sees
its own input or anything after it; ``log_prob`` is exact.

Choices here:

* trunk: a 7x7 "A" convolution, then ``num_layers`` residual blocks, each either
  ``h + conv1x1(relu(convKxK(relu(h))))`` or, with ``gated``, ``h + conv1x1(tanh(a) * sigmoid(b))``
  with ``(a, b) = convKxK(h)``; head: relu, 1x1, relu, 1x1. A single masked stack, so the deeper
  layers keep the original PixelCNN's blind spot (pixels up and to the right that the stacked
  receptive field misses); the two-stack fix of the gated paper is not implemented.
* channels: any C; hidden channel ``i`` belongs to data channel ``i % C`` and the centre tap of
  each mask follows the channel order (``layers.conv_mask``), so ``channels`` must be a multiple
  of C. Each data channel has its own output distribution given everything before it.
* outputs: ``"softmax"``, an L-way softmax per value (for binary data its one-logit form, a
  Bernoulli logit); ``"logistic_mixture"``, PixelCNN++'s discretised mixture of ``num_mixtures``
  logistics (Salimans, Karpathy, Chen & Kingma 2017, https://arxiv.org/abs/1701.05517): values
  0..L-1 map to bin centres on [-1, 1] of width 2/(L-1), the end bins extend to -inf and +inf, and
  log(sigmoid(a) - sigmoid(b)) is computed in a stable closed form, so the L bin probabilities
  sum to one exactly (no pdf fallback). Unlike PixelCNN++, the mixture is per channel (the masks
  already condition G on R and B on R, G). log-scales are clamped to [-7, 7].
* the network sees x / (L-1) * 2 - 1; samples are the data-space integers, as floats.
* sampling is sequential (H * W * C steps) with every layer's activations cached (Ramachandran
  et al. 2017, ``_sample_cached``): each step computes each layer at the current position only,
  ~31x fewer CPU-seconds than a whole pass per step at n = 64 (``benchmarks/sampling.py``).
  ``_sample(cropped=True)``, the sampler before (imputation still uses its pass): a masked stack
  looks ``receptive_rows`` rows up and never down, so a pass runs on those rows and drops, after
  every layer, the rows the layers above no longer need.
* imputation (``impute``, see ``genmodels.impute_autoregressive``): ancestral sampling with the
  observed values plugged in, exact when every missing entry comes after every observed one in
  raster-then-channel order (``"ancestral-exact"``, exact ``log_prob_missing``, e.g. the bottom
  of a digit missing); otherwise P sequential proposals per imputation resampled by importance
  weight, then S sweeps: exact Gibbs for binary data (one forward pass per missing entry), and for
  L > 2 levels Metropolis-within-Gibbs proposing x_d from p(x_d | x_<d) (one pass per entry
  instead of L: ``"sir-k=P+mh-gibbs-sweeps=S"``); ``log_prob_missing`` is then an importance
  estimate with its standard error. Defaults P = 2, S = 0 (``impute_proposals``,
  ``impute_sweeps``): the sequential passes dominate, ~20 CPU-s per 100 ancestral imputations of
  28x28 digits with 32 channels and 5 layers, ~35-70 with P = 1-2 on an incompatible mask.
* class-conditional (``conditional=True``, ``num_classes`` K; see ``genmodels.conditional``): the
  gated paper's conditional PixelCNN with a one-hot class h: a learned per-label bias
  (``label_embeddings``, V^T h, zero at initialisation) added to the first convolution's output,
  to each residual block's KxK convolution (in the gated block, to both the tanh and the sigmoid
  halves) and to the head's first 1x1. The bias is the same at every pixel, so the masks and the
  normalisation are untouched: ``log_prob(x, condition={"label": y})`` is the exact log p(x | y)
  (method ``"exact-conditional:label"``). Without a condition the model is the uniform label
  mixture (K passes), and imputation treats the K labels as K components (see above).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import conditional
from . import impute_autoregressive as ar
from .base import BaseConfig, Condition, GenerativeModel, ScoreResult, SearchSpec, register
from .layers import MaskedConv2d

LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 7.0
IMPUTE_PROPOSALS, IMPUTE_SWEEPS = 2, 0  # sized for 784-dim digits (see the docstring)


@dataclass(frozen=True)
class PixelCNNConfig(BaseConfig):
    channels: int = 64
    num_layers: int = 7
    kernel_size: int = 7  # the first, type-A convolution
    block_kernel_size: int = 3  # the type-B convolution of each residual block
    gated: bool = False
    output: Literal["softmax", "logistic_mixture"] = "softmax"
    num_mixtures: int = 5
    lr: float = 1e-3
    impute_proposals: int = IMPUTE_PROPOSALS
    impute_sweeps: int = IMPUTE_SWEEPS
    conditional: bool = False  # p(x | y): see genmodels.conditional
    num_classes: int = 10


def discretized_logistic_mixture_log_prob(params: Tensor, x: Tensor, levels: int) -> Tensor:
    """log P(x) under a mixture of logistics discretised into ``levels`` bins on [-1, 1].

    Args:
        params: ``(..., 3K)``: mixture logits, means, log-scales (K each).
        x: integer values 0..levels-1 (float), broadcastable to ``params.shape[:-1]``.
        levels: the number of bins L; bin k is centred on k / (L-1) * 2 - 1, half-width 1/(L-1),
            and the first and last bins extend to -inf and +inf.

    Returns:
        ``broadcast(params.shape[:-1], x.shape)`` log-probabilities; they sum to one over x.
    """
    logit_pi, mu, log_s = params.chunk(3, dim=-1)  # (..., K) each
    log_s = log_s.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
    inv_s = torch.exp(-log_s)
    half = 1.0 / (levels - 1)
    y = (x / (levels - 1) * 2 - 1).unsqueeze(-1)
    upper = (y + half - mu) * inv_s  # the bin's edges in standardised units
    lower = (y - half - mu) * inv_s
    first = F.logsigmoid(upper)  # log P(X <= upper edge): the whole first bin
    last = F.logsigmoid(-lower)  # log P(X >= lower edge): the whole last bin
    # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), with b - a = -2 half / s.
    interior = first + last + torch.log(-torch.expm1(-2 * half * inv_s))
    x = x.unsqueeze(-1)
    log_bin = torch.where(x == 0, first, torch.where(x == levels - 1, last, interior))
    return torch.logsumexp(F.log_softmax(logit_pi, dim=-1) + log_bin, dim=-1)


class ResidualBlock(nn.Module):
    """A type-B masked residual block, plain (relu) or gated (tanh * sigmoid)."""

    def __init__(self, channels: int, kernel_size: int, gated: bool, data_channels: int) -> None:
        super().__init__()
        self.gated = gated
        width = 2 * channels if gated else channels
        self.conv = MaskedConv2d(channels, width, kernel_size, "B", data_channels)
        self.proj = MaskedConv2d(channels, channels, 1, "B", data_channels)

    def forward(self, h: Tensor, bias: Tensor | float = 0.0) -> Tensor:
        """``bias``: a conditioning term added to the KxK convolution's output (broadcast)."""
        if self.gated:
            # Halves keep the channel groups aligned since channels % data_channels == 0.
            a, b = (self.conv(h) + bias).chunk(2, dim=1)
            return h + self.proj(torch.tanh(a) * torch.sigmoid(b))
        return h + self.proj(F.relu(self.conv(F.relu(h)) + bias))


@register
class PixelCNN(ar.AutoregressiveImpute, GenerativeModel):
    family = "pixelcnn"
    likelihood = "exact"
    data_kinds = ("binary", "discrete")
    Config = PixelCNNConfig
    capabilities = frozenset({"log_prob", "impute"})
    sample_limit = 64
    search_space = {
        "channels": SearchSpec("choice", (32, 64, 128)),
        "num_layers": SearchSpec("choice", (3, 5, 7, 10)),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: PixelCNNConfig) -> None:
        super().__init__(input_shape, levels, config)
        if len(self.input_shape) != 3:
            raise ValueError(f"pixelcnn: input_shape must be (C, H, W), got {self.input_shape}")
        c = self.input_shape[0]
        if config.channels < c or config.channels % c:
            raise ValueError(
                f"pixelcnn: channels ({config.channels}) must be a multiple of the number of "
                f"data channels ({c}), one hidden group per data channel"
            )
        for name in ("kernel_size", "block_kernel_size"):
            k = getattr(config, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"pixelcnn: {name} must be odd and positive, got {k}")
        if config.num_layers < 0 or config.num_mixtures < 1:
            raise ValueError("pixelcnn: num_layers must be >= 0 and num_mixtures >= 1")
        ar.validate_settings(self.family, config.impute_proposals, config.impute_sweeps)
        if config.output == "softmax":
            self.num_params = 1 if levels == 2 else levels  # per value of each data channel
        elif config.output == "logistic_mixture":
            self.num_params = 3 * config.num_mixtures
        else:
            raise ValueError(
                f"pixelcnn: output must be 'softmax' or 'logistic_mixture', got {config.output!r}"
            )
        h = config.channels
        self.trunk = nn.ModuleList(
            [
                MaskedConv2d(c, h, config.kernel_size, "A", c),
                *(
                    ResidualBlock(h, config.block_kernel_size, config.gated, c)
                    for _ in range(config.num_layers)
                ),
            ]
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(h, h, 1, "B", c),
            nn.ReLU(),
            MaskedConv2d(h, self.num_params * c, 1, "B", c),  # output p * C + c: data channel c
        )
        # Rows each trunk layer looks up; their sum is how far up one output row can see.
        self._rows_up = [config.kernel_size // 2] + [
            config.block_kernel_size // 2
        ] * config.num_layers
        self.receptive_rows = sum(self._rows_up)
        self.num_labels = conditional.setup(self)
        if self.num_labels:
            # Created last, so the other parameters' initialisation is unchanged.
            widths = [h] + [2 * h if config.gated else h] * config.num_layers + [h]
            self.label_embeddings = nn.ModuleList(nn.Embedding(self.num_labels, w) for w in widths)
            for emb in self.label_embeddings:
                nn.init.zeros_(emb.weight)
        else:
            self.label_embeddings = None

    # -------------------------------------------------------------------------------- network
    def label_biases(self, labels: Tensor | None) -> list[Tensor | float]:
        """The label's additive term ``(B, width, 1, 1)`` for each trunk layer and the head
        (0.0 everywhere for an unconditional model)."""
        if self.label_embeddings is None:
            return [0.0] * (len(self.trunk) + 1)
        if labels is None:
            raise ValueError("pixelcnn: a conditional PixelCNN needs labels")
        labels = labels.to(self.head[-1].weight.device)
        return [emb(labels)[:, :, None, None] for emb in self.label_embeddings]

    def params(self, x: Tensor, row: int | None = None, labels: Tensor | None = None) -> Tensor:
        """Output parameters ``(B, C, H, W, P)`` of p(x_i | x_<i) (given ``labels`` ``(B,)``,
        for a conditional model) for data-space ``x``.

        With ``row``, only that row is computed (``(B, C, 1, W, P)``), from the rows it sees.
        """
        bias = self.label_biases(labels)

        def layer_out(i: int, h: Tensor) -> Tensor:
            if i == 0:
                return self.trunk[0](h) + bias[0]
            return self.trunk[i](h, bias[i])

        h = x / (self.levels - 1) * 2 - 1  # (B, C, H, W) in [-1, 1]
        if row is None:
            for i in range(len(self.trunk)):
                h = layer_out(i, h)
        else:
            start = max(0, row - self.receptive_rows)  # absolute index of h's first row
            h = h[:, :, start : row + 1]
            seen = 0
            for i, up in enumerate(self._rows_up):
                h = layer_out(i, h)
                seen += up
                # The layers left look up only receptive_rows - seen more rows, so rows above
                # `keep` are no longer needed (and, cut off at the crop's top, they are wrong).
                keep = max(0, row - self.receptive_rows + seen)
                h = h[:, :, keep - start :]
                start = keep
        relu, first, _, last = self.head
        out = last(F.relu(first(relu(h)) + bias[-1]))  # (B, P * C, H', W)
        b, _, rows, w = out.shape
        return out.view(b, self.num_params, self.input_shape[0], rows, w).permute(0, 2, 3, 4, 1)

    def pixel_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) per value: ``params (..., P)`` and ``x`` broadcastable to ``...``."""
        if self.config.output == "logistic_mixture":
            return discretized_logistic_mixture_log_prob(params, x, self.levels)
        if self.levels == 2:
            return F.logsigmoid((2 * x - 1) * params[..., 0])
        shape = torch.broadcast_shapes(params.shape[:-1], x.shape)
        log_p = F.log_softmax(params, dim=-1).expand(*shape, self.num_params)
        index = x.long().expand(shape).unsqueeze(-1)
        return log_p.gather(-1, index).squeeze(-1)

    def _log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.pixel_log_prob(self.params(x, labels=labels), x).flatten(1).sum(1)

    # ------------------------------------------------------------------------------ protocol
    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        labels = conditional.training_labels(self, batch) if self.num_labels else None
        nll = -self._log_prob(batch["x"].float(), labels).mean()
        return {"loss": nll, "nll": nll.detach()}

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Exact log p(x); given ``condition={"label": y}``, the exact conditional log p(x | y);
        a conditional model without one gives the uniform label mixture's log p(x)."""
        return conditional.exact_log_prob(self, x, condition, self._log_prob)

    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        method = conditional.method_name(self, "exact", condition)
        return ScoreResult(self.log_prob(x, generator, condition), method=method)

    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Ancestral samples; given ``condition={"label": y}`` (one label or one per sample), of
        p(x | y); a conditional model without one draws y uniformly first."""
        labels = conditional.labels_from_condition(self, condition, n)
        if labels is None and self.num_labels:
            labels = conditional.uniform_labels(self, n, generator)
        return self._sample_cached(n, generator, labels=labels)

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        generator: torch.Generator | None,
        cropped: bool,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Ancestral sampling in raster order, one uniform per value drawn (inverse CDF).

        ``cropped=True`` computes, per step, the rows the current row sees (the sampler before
        ``_sample_cached``); ``cropped=False`` recomputes the whole image at every step. Both
        are kept as references for tests and ``benchmarks/sampling.py``.
        """
        c, height, width = self.input_shape
        device = self.head[-1].weight.device
        x = torch.zeros(n, c, height, width, device=device)
        values = torch.arange(self.levels, device=device, dtype=x.dtype)  # (L,)
        for r in range(height):
            for col in range(width):
                for ch in range(c):
                    if cropped:
                        p = self.params(x, row=r, labels=labels)[:, ch, 0, col]  # (n, P)
                    else:
                        p = self.params(x, labels=labels)[:, ch, r, col]
                    log_p = self.pixel_log_prob(p[:, None, :], values[None, :])  # (n, L)
                    cdf = log_p.softmax(-1).cumsum(-1)
                    u = torch.rand(n, 1, generator=generator).to(device)
                    x[:, ch, r, col] = (cdf < u).sum(-1).clamp(max=self.levels - 1).to(x.dtype)
        return x

    @torch.no_grad()
    def _sample_cached(
        self, n: int, generator: torch.Generator | None, labels: Tensor | None = None
    ) -> Tensor:
        """``_sample``'s draws with every layer's activations cached (Ramachandran et al. 2017,
        "Fast Generation for Convolutional Autoregressive Models", https://arxiv.org/abs/1704.06001).

        A layer's output at pixel p depends only on inputs before p in raster order (the masks
        see rows above, pixels to the left and, at the centre, earlier channel groups), so once p
        is reached it never changes again. Each step therefore computes every layer at p alone,
        from the cached outputs of the layer below around p (zero-padded buffers, as the
        convolutions' padding), and stores them: one position per layer per step instead of
        the rows the current row sees. Within a pixel, the C channels are C steps, each
        recomputing the position (a group's activation is final once its channel's inputs are
        drawn). Same uniforms in the same order as ``_sample``.
        """
        c, height, width = self.input_shape
        device = self.head[-1].weight.device
        dtype = self.head[-1].weight.dtype
        bias = [b if isinstance(b, float) else b.flatten(1) for b in self.label_biases(labels)]

        def flat(conv: MaskedConv2d) -> Tensor:  # masked weight, rows up to the centre, (O, I*k')
            k = conv.kernel_size[0]
            return (conv.weight * conv.mask)[:, :, : k // 2 + 1].reshape(conv.out_channels, -1)

        def one_by_one(conv: MaskedConv2d) -> Tensor:
            return (conv.weight * conv.mask)[:, :, 0, 0]

        first = self.trunk[0]
        pads = [first.kernel_size[0] // 2] + [
            blk.conv.kernel_size[0] // 2 for blk in self.trunk[1:]
        ]
        widths = [c] + [first.out_channels] * (len(self.trunk) - 1)
        # bufs[i]: the zero-padded input of trunk layer i (the image in [-1, 1] for layer 0)
        bufs = [
            torch.zeros(n, w, height + 2 * p, width + 2 * p, device=device, dtype=dtype)
            for w, p in zip(widths, pads)
        ]
        weights = [flat(first)] + [flat(blk.conv) for blk in self.trunk[1:]]
        projs = [one_by_one(blk.proj) for blk in self.trunk[1:]]
        head_first, head_last = one_by_one(self.head[1]), one_by_one(self.head[3])
        x = torch.zeros(n, c, height, width, device=device, dtype=dtype)
        values = torch.arange(self.levels, device=device, dtype=dtype)  # (L,)
        for r in range(height):
            for col in range(width):
                for ch in range(c):
                    h = None
                    for i, (buf, p, w) in enumerate(zip(bufs, pads, weights)):
                        patch = buf[:, :, r : r + p + 1, col : col + 2 * p + 1].reshape(n, -1)
                        if i == 0:
                            h = F.linear(patch, w, first.bias) + bias[0]
                        else:
                            blk = self.trunk[i]
                            if blk.gated:
                                a, b = (F.linear(patch, w, blk.conv.bias) + bias[i]).chunk(2, 1)
                                inner = torch.tanh(a) * torch.sigmoid(b)
                            else:
                                patch = F.relu(patch)
                                inner = F.relu(F.linear(patch, w, blk.conv.bias) + bias[i])
                            h = h + F.linear(inner, projs[i - 1], blk.proj.bias)
                        if i + 1 < len(bufs):
                            q = pads[i + 1]
                            bufs[i + 1][:, :, r + q, col + q] = h
                    out = F.relu(F.linear(F.relu(h), head_first, self.head[1].bias) + bias[-1])
                    out = F.linear(out, head_last, self.head[3].bias)  # (n, P * C)
                    p_ch = out.view(n, self.num_params, c)[:, :, ch]  # (n, P)
                    log_p = self.pixel_log_prob(p_ch[:, None, :], values[None, :])  # (n, L)
                    cdf = log_p.softmax(-1).cumsum(-1)
                    u = torch.rand(n, 1, generator=generator).to(device)
                    v = (cdf < u).sum(-1).clamp(max=self.levels - 1).to(dtype)
                    x[:, ch, r, col] = v
                    bufs[0][:, ch, r + pads[0], col + pads[0]] = v / (self.levels - 1) * 2 - 1
        return x

    # ------------------------------------------------------------------------------ imputation
    @property
    def _ar_rows(self) -> int:
        per_row = self.num_dims * max(2 * self.config.channels, self.levels)
        return max(1, 2**23 // per_row)

    def _ar_positions(self) -> Tensor:
        """Raster order over pixels, channels in order within a pixel: flat index c*H*W + i
        (i = h*W + w, the pixel) is visited at position i*C + c."""
        c, height, width = self.input_shape
        device = self.head[-1].weight.device
        pixel = torch.arange(height * width, device=device)
        order = (pixel[None, :] * c + torch.arange(c, device=device)[:, None]).flatten()[None]
        return order.repeat(max(1, self.num_labels), 1)  # a conditional model: one per label

    def _ar_labels(self, k: int, n: int) -> Tensor | None:
        """Component ``k``'s labels (a conditional model's marginal: component k = label k)."""
        return torch.full((n,), k, dtype=torch.long) if self.num_labels else None

    def _ar_log_conditionals(self, xf: Tensor, k: int) -> Tensor:
        labels = self._ar_labels(k, len(xf))
        params = self.params(xf.view(len(xf), *self.input_shape), labels=labels)  # (N,C,H,W,P)
        values = torch.arange(self.levels, device=xf.device, dtype=xf.dtype)
        log_p = self.pixel_log_prob(params[..., None, :], values)  # (N, C, H, W, L)
        return log_p.flatten(1, 3)

    def _ar_fill(
        self, xf: Tensor, missing: Tensor, k: int, generator: torch.Generator | None
    ) -> Tensor:
        """The cropped sampler of ``_sample`` over the missing entries, observed plugged in."""
        c, height, width = self.input_shape
        n = len(xf)
        x = torch.where(missing, 0.0, xf).view(n, c, height, width)
        miss = missing.view(n, c, height, width)
        any_missing = miss.any(0)
        labels = self._ar_labels(k, n)
        values = torch.arange(self.levels, device=x.device, dtype=x.dtype)
        for r in range(height):
            if not bool(any_missing[:, r].any()):
                continue
            for col in range(width):
                for ch in range(c):
                    if not bool(any_missing[ch, r, col]):
                        continue
                    p = self.params(x, row=r, labels=labels)[:, ch, 0, col]  # (n, P)
                    log_p = self.pixel_log_prob(p[:, None, :], values[None, :])  # (n, L)
                    draw = ar.categorical(log_p, generator).to(x.dtype)
                    x[:, ch, r, col] = torch.where(miss[:, ch, r, col], draw, x[:, ch, r, col])
        return x.view(n, -1)
