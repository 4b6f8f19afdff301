"""GSN: a denoising auto-encoder as a generative model (Bengio, Yao, Alain & Vincent 2013,
https://arxiv.org/abs/1305.6663), trained with walkback as a Generative Stochastic Network
(Bengio, Thibodeau-Laufer, Alain & Yosinski 2014, https://arxiv.org/abs/1306.1091).

A corruption C(x~ | x) and a learned reconstruction distribution P(x | x~) define a Markov chain
x_t -> x~_t ~ C(.|x_t) -> x_{t+1} ~ P(.|x~_t); if P(x | x~) is a consistent estimator of the true
conditional of the clean x given its corruption, the chain's stationary distribution estimates the
data distribution. Training maximises log P(x | x~) on corruptions of the data; *walkback* adds the
corrupted points the chain itself visits from the data, so that the spurious modes the chain would
wander to are unlearned: x~_1 = C(x), x_t ~ P(.|x~_t), x~_{t+1} = C(x_t), and the loss is the mean
over t = 1..k of -log P(x | x~_t), whose targets are always the clean x. There is no tractable
likelihood: ``log_prob`` raises ``NoLikelihoodError`` (``genmodels.parzen`` gives the papers'
Parzen-window estimate from samples, which is not the model's likelihood).

Choices here:

* binary data; C is salt-and-pepper noise: each pixel, with probability ``noise`` (default 0.4, as
  in the papers' MNIST experiments), is replaced by a fair coin flip, so it ends up flipped with
  probability ``noise / 2``;
* P(x | x~) is a factorial Bernoulli whose logits come from an MLP auto-encoder with tanh units:
  the input, then ``hidden_sizes``, then the same sizes reversed, then the logits.
  ``hidden_noise`` > 0 adds N(0, hidden_noise^2) noise to the pre-activation of every encoder layer
  (the papers use 2); that noise is then part of the corruption, drawn in training and in sampling
  alike, and ``embed`` (the innermost layer's activation of the clean input) omits it;
* ``walkback`` = k chain steps per training example (k = 1 is a plain denoising auto-encoder); the
  chain's x_t are Bernoulli draws taken without gradient (``walkback_pairs`` returns the pairs,
  the chain states they corrupt and the logits);
* ``sample`` runs one chain per sample from uniform random bits for ``burn_in`` steps and returns
  the last state x_t (``sample_output="state"``, a draw from the chain) or the most probable x
  under the last P(.|x~_t) (``"mode"``: cleaner pictures, but not a draw of the chain);
  ``chain`` returns a trajectory, ``sample_steps`` steps apart. Training noise comes from the
  global RNG; every sampling method draws all its randomness from the given generator.

Imputation (``impute``): the walkback chain with the observed entries clamped: x~ ~ C(.|x_t),
x_{t+1} ~ P(.|x~), and the observed entries reset to x after every step (the corruption sees the
whole state, observed entries included, as in training). Each of the S imputations is its own
chain from uniform random bits on the missing entries, run ``impute_steps`` steps (default 100;
stated in the method); the value returned follows ``sample_output``. Approximate, and only
defined by the chain: the model's distribution is the stationary distribution of the unclamped
chain, which exists only implicitly, and the clamped chain is not shown to sample its
conditional (P(x|x~) is not a conditional of a joint we could write down), so there is no
``log_prob_missing``. A row with nothing observed is drawn by ``sample`` (``burn_in`` steps).
Cost at 784-1000, one thread: 1.2 CPU-s per 100 imputations.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from .base import (
    BaseConfig,
    Condition,
    GenerativeModel,
    ImputeResult,
    SearchSpec,
    bernoulli_log_prob,
    register,
)
from .impute_chains import impute_rows

SampleOutput = Literal["state", "mode"]


@dataclass(frozen=True)
class GSNConfig(BaseConfig):
    hidden_sizes: tuple[int, ...] = (1000,)
    noise: float = 0.4  # salt-and-pepper: probability that a pixel is replaced by a coin flip
    hidden_noise: float = 0.0  # std of Gaussian noise on the encoder's pre-activations
    walkback: int = 3  # k chain steps (training pairs) per example; 1 = plain DAE
    burn_in: int = 100  # chain steps from uniform random bits before the returned sample
    sample_steps: int = 1  # chain steps between consecutive states returned by ``chain``
    sample_output: SampleOutput = "state"
    lr: float = 1e-3
    impute_steps: int = 100  # chain steps with the observed entries clamped, per imputation
    impute_chunk: int = 1024  # chains advanced together (bounds memory)


class Walkback(NamedTuple):
    """The walkback pairs of a batch x: three lists of length k (``walkback``), indexed from 0.

    Attributes:
        corrupted: x~_1..x~_k ``(B, *input_shape)``; ``corrupted[i] = C(states[i])``.
        states: the chain states they corrupt: ``states[0]`` is x itself and ``states[i]``
            (i >= 1) is x_i ~ P(.|x~_i), a Bernoulli draw from ``logits[i - 1]`` (x_k, which no
            pair uses, is not drawn).
        logits: ``logits[i]`` ``(B, D)``, the logits of P(.|corrupted[i]) (with the hidden noise
            drawn for them); the loss is the mean over i of -log P(x | corrupted[i]) under them.
    """

    corrupted: list[Tensor]
    states: list[Tensor]
    logits: list[Tensor]


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) noise of ``shape``: from ``generator`` (drawn on the CPU, then moved) or, without
    one, from the global RNG of ``like``'s device."""
    if generator is None:
        return torch.rand(shape, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


def _normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) noise of ``shape``, drawn like ``_uniform``."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def salt_and_pepper(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """C(x~ | x): each entry of binary ``x``, with probability ``p``, becomes a fair coin flip."""
    replace = _uniform(x.shape, x, generator) < p
    coin = (_uniform(x.shape, x, generator) < 0.5).to(x.dtype)
    return torch.where(replace, coin, x)


@register
class GSN(GenerativeModel):
    family = "gsn"
    likelihood = "none"
    data_kinds = ("binary",)
    Config = GSNConfig
    capabilities = frozenset({"embed", "impute"})
    sample_limit = 1024
    search_space = {
        "hidden_sizes": SearchSpec("choice", ((500,), (1000,), (1500,))),
        "noise": SearchSpec("choice", (0.2, 0.3, 0.4, 0.5)),
        "hidden_noise": SearchSpec("choice", (0.0, 0.5, 2.0)),
        "walkback": SearchSpec("choice", (1, 3, 5)),
        "lr": SearchSpec("loguniform", low=3e-4, high=3e-3),
    }

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: GSNConfig) -> None:
        super().__init__(input_shape, levels, config)
        if not config.hidden_sizes or any(h < 1 for h in config.hidden_sizes):
            raise ValueError(f"gsn: hidden_sizes must be positive ints, got {config.hidden_sizes}")
        if not 0.0 < config.noise <= 1.0:
            raise ValueError(f"gsn: noise must be in (0, 1], got {config.noise}")
        if config.hidden_noise < 0.0:
            raise ValueError(f"gsn: hidden_noise must be >= 0, got {config.hidden_noise}")
        if config.walkback < 1:
            raise ValueError(f"gsn: walkback must be >= 1, got {config.walkback}")
        if config.burn_in < 1:
            raise ValueError(f"gsn: burn_in must be >= 1, got {config.burn_in}")
        for key in ("impute_steps", "impute_chunk"):
            if getattr(config, key) < 1:
                raise ValueError(f"gsn: {key} must be >= 1, got {getattr(config, key)}")
        if config.sample_steps < 1:
            raise ValueError(f"gsn: sample_steps must be >= 1, got {config.sample_steps}")
        if config.sample_output not in ("state", "mode"):
            raise ValueError(
                f"gsn: sample_output must be 'state' or 'mode', got {config.sample_output!r}"
            )
        if config.lr <= 0:
            raise ValueError(f"gsn: lr must be > 0, got {config.lr}")
        sizes = (self.num_dims, *config.hidden_sizes)
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        back = tuple(reversed(sizes))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(back))

    # ------------------------------------------------------------------------------ networks
    def encode(
        self, x: Tensor, generator: torch.Generator | None = None, noisy: bool = True
    ) -> Tensor:
        """The code ``(B, hidden_sizes[-1])`` of ``x`` ``(B, *input_shape)``; with ``noisy`` and
        ``hidden_noise`` > 0, Gaussian noise is added to every pre-activation."""
        h = x.flatten(1)
        for layer in self.encoder:
            a = layer(h)
            if noisy and self.config.hidden_noise > 0:
                a = a + self.config.hidden_noise * _normal(a.shape, a, generator)
            h = torch.tanh(a)
        return h

    def decode(self, h: Tensor) -> Tensor:
        """The Bernoulli logits ``(B, D)`` of P(x | x~) from the code ``h``."""
        for layer in self.decoder[:-1]:
            h = torch.tanh(layer(h))
        return self.decoder[-1](h)

    def reconstruction_logits(
        self, x_tilde: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The logits ``(B, D)`` of P(x | x~) for corrupted inputs ``x_tilde``."""
        return self.decode(self.encode(x_tilde, generator))

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x~ ~ C(.|x): salt-and-pepper noise with probability ``noise``."""
        return salt_and_pepper(x, self.config.noise, generator)

    def _draw(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """x ~ P(.|x~) from its logits, shaped like the input; no gradient."""
        p = torch.sigmoid(logits.detach())
        x = (_uniform(p.shape, p, generator) < p).to(p.dtype)
        return x.view(len(x), *self.input_shape)

    # ------------------------------------------------------------------------------ training
    def walkback_pairs(self, x: Tensor, generator: torch.Generator | None = None) -> Walkback:
        """The k = ``walkback`` training pairs (x, x~_t) of a batch ``x`` ``(B, *input_shape)``:
        x~_1 = C(x), x_t ~ P(.|x~_t), x~_{t+1} = C(x_t). The logits carry gradients; the chain
        states are draws without gradient. Randomness from ``generator`` or the global RNG."""
        x = x.to(self.encoder[0].weight.dtype)
        corrupted, states, logits = [], [x], []
        for t in range(self.config.walkback):
            x_tilde = self.corrupt(states[t], generator)
            corrupted.append(x_tilde)
            logits.append(self.reconstruction_logits(x_tilde, generator))
            if t + 1 < self.config.walkback:
                states.append(self._draw(logits[t], generator))
        return Walkback(corrupted, states, logits)

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].to(self.encoder[0].weight.dtype)
        walk = self.walkback_pairs(x)
        nll = torch.stack([-bernoulli_log_prob(lg, x).mean() for lg in walk.logits])  # (k,)
        return {
            "loss": nll.mean(),
            "recon_first": nll[0].detach(),  # -log P(x | C(x)): the plain DAE's loss
            "recon_last": nll[-1].detach(),
        }

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def chain(
        self,
        n: int,
        length: int,
        generator: torch.Generator | None = None,
        burn_in: int | None = None,
    ) -> Tensor:
        """``length`` states of ``n`` parallel chains started from uniform random bits,
        ``(length, n, *input_shape)``: the first after ``burn_in`` steps (default: the config's),
        then one every ``sample_steps`` steps. ``sample_output`` picks the returned value."""
        cfg = self.config
        burn_in = cfg.burn_in if burn_in is None else burn_in
        if n < 0 or length < 1 or burn_in < 1:
            raise ValueError(f"gsn: need n >= 0, length >= 1, burn_in >= 1; got {n}, {length}")
        w = self.encoder[0].weight
        x = (_uniform((n, *self.input_shape), w, generator) < 0.5).to(w.dtype)
        out = []
        for step in range(burn_in + (length - 1) * cfg.sample_steps):
            logits = self.reconstruction_logits(self.corrupt(x, generator), generator)
            x = self._draw(logits, generator)
            if step + 1 >= burn_in and (step + 1 - burn_in) % cfg.sample_steps == 0:
                if cfg.sample_output == "mode":
                    out.append((logits > 0).to(w.dtype).view_as(x))
                else:
                    out.append(x)
        return torch.stack(out)

    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        return self.chain(n, 1, generator)[0]

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """The innermost code of the clean input, without hidden noise: ``(B, hidden_sizes[-1])``."""
        x = self.check_input(x).to(self.encoder[0].weight.dtype)
        return self.encode(x, noisy=False)

    # ---------------------------------------------------------------------------- imputation
    @torch.no_grad()
    def clamped_chain(
        self, x: Tensor, mask: Tensor, steps: int, generator: torch.Generator | None
    ) -> Tensor:
        """``steps`` steps of the chain x~ ~ C(.|x_t), x_{t+1} ~ P(.|x~) from uniform random bits,
        with the observed entries (``mask`` = 1) reset to ``x`` after every step (both ``(N, D)``,
        flattened). Returns the last state, or with ``sample_output="mode"`` the most probable
        value of every missing entry under the last P(.|x~)."""
        observed = mask.bool()
        v = torch.where(observed, x, (_uniform(x.shape, x, generator) < 0.5).to(x.dtype))
        logits = torch.zeros_like(x)
        for _ in range(steps):
            logits = self.reconstruction_logits(self.corrupt(v, generator), generator)
            v = torch.where(observed, x, self._draw(logits, generator).flatten(1))
        if self.config.sample_output == "mode":
            return torch.where(observed, x, (logits > 0).to(x.dtype))
        return v

    @torch.no_grad()
    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        cfg = self.config

        def chain(xr: Tensor, mr: Tensor, gen: torch.Generator | None) -> Tensor:
            return self.clamped_chain(xr, mr, cfg.impute_steps, gen)

        like = self.encoder[0].weight
        samples = impute_rows(self, x, mask, num_samples, chain, like, generator, cfg.impute_chunk)
        method = (
            f"clamped-walkback-chain-steps={cfg.impute_steps}-output={cfg.sample_output}"
            f" (approximate; unobserved rows: sample, burn-in {cfg.burn_in})"
        )
        return ImputeResult(samples, method)
