"""The model protocol every family implements, and the registry of families.

A family is one ``GenerativeModel`` subclass with a frozen dataclass config. It declares, as class
attributes, everything the pipelines need to treat it generically:

* ``family``: its registered name;
* ``likelihood``: ``"exact" | "bound" | "estimate" | "none"``, what ``log_prob`` returns;
* ``data_kinds``: the data spaces it can model (``"binary"`` = {0, 1}; ``"discrete"`` = 0..L-1);
* ``Config``: the frozen dataclass of its hyper-parameters (defaults = the default config);
* ``search_space``: its Tune search space in a Ray-free notation (see ``SearchSpec``);
* ``phases``: the training phases, stepped in order, one optimiser each (see ``configure_optimizers``);
* ``capabilities``: the uses it offers, names from ``CAPABILITIES`` (``"log_prob"``, ``"embed"``,
  ``"impute"``...); ``"sample"`` is added unless ``can_sample`` is False. The class attribute is the
  default; an instance may change its own set in ``__init__`` (e.g. a conditional variant adds
  ``"condition:label"``), and that instance set is what a registered version carries (a tag);
* ``sample_limit``: the most samples one request may ask for (sequential samplers are slow);
* ``batch_keys``: the batch columns it trains on (default ``("x",)``; a translator adds
  ``"x_target"``): a dataset kind declares its ``batch_columns`` and the trainer checks that it
  has every key before Ray starts;
* ``directions``: what ``translate`` accepts (``"a2b"``, ``"b2a"``), for a family that translates;
* ``input_ranks``: the example shapes it models, by rank: ``(1, 3)`` = ``(D,)`` or
  ``(C, H, W)`` (the default); a sequence predictor models ``(T, C, H, W)`` (rank 4: a
  sequence dataset's ``x`` is one whole sequence);
* ``selection_metric``: for a family with neither a likelihood nor an unconditional ``sample``,
  the key of ``validation_metrics`` the trainer selects on (higher is better); ``None``: the run
  keeps its final epoch.

Uses are capabilities: each name in ``CAPABILITIES`` says which protocol method serves it, which
request fields it takes, whether requests can be pooled into one batch, whether it is random (then
reproducible under a seed) and how many rows one request may carry. ``pipelines.serve`` mounts one
``POST /v1/models/{name}/{endpoint}`` per capability from that table, with nothing family-specific.
A condition is a mapping passed as the ``condition`` keyword of ``sample``, ``log_prob`` and
``score`` (``{"label": LongTensor(n)}``, ``{"caption": [...]}``); a family without a
``condition:<key>`` capability rejects a non-empty one (``check_condition``). See ``docs/USES.md``.

Conventions: inputs and samples are tensors ``(B, *input_shape)`` in the data space, float dtype,
values in {0, 1} (binary) or 0..L-1 (discrete). ``log_prob`` is in nats per example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .optim import adam

Likelihood = Literal["exact", "bound", "estimate", "none"]
DataKind = Literal["binary", "discrete"]

_FAMILIES: dict[str, type[GenerativeModel]] = {}


_RANK_NAMES = {1: "(D,)", 3: "(C, H, W)", 4: "(T, C, H, W)"}


class NoLikelihoodError(NotImplementedError):
    """Raised by ``log_prob`` / ``score`` of a family that has no tractable likelihood."""


@dataclass(frozen=True)
class ScoreResult:
    """The result of ``GenerativeModel.score``.

    Attributes:
        log_prob: ``(B,)`` log-likelihood in nats per example (exact, a bound or an estimate).
        method: how it was computed, e.g. ``"exact"`` or ``"iwae-k=100"``.
        stderr: ``(B,)`` standard error of an estimate, or ``None`` for an exact value.
        shared_stderr: the part of the error common to every example (e.g. the standard error of
            an AIS estimate of log Z, which shifts every score together): it does not average out
            over a dataset, so ``pipelines.evaluate`` adds it to the mean's error undivided. It is
            already included in ``stderr``.
    """

    log_prob: Tensor
    method: str
    stderr: Tensor | None = None
    shared_stderr: float = 0.0


Condition = Mapping[str, Any] | None
"""What a conditional model is asked for: ``{"label": LongTensor(B)}``, ``{"caption": [str]}``."""


@dataclass(frozen=True)
class ImputeResult:
    """The result of ``GenerativeModel.impute``.

    Attributes:
        samples: ``(S, B, *input_shape)`` imputations in the data space; wherever the mask is 1
            every sample equals ``x`` exactly.
        method: how the missing entries were drawn, with its settings, e.g.
            ``"ancestral-exact"``, ``"gibbs-sweeps=200"``, ``"miwae-sir-k=500"``.
        log_prob_missing: ``(B,)`` log p(x_missing | x_observed) of ``x``'s own values at the
            missing entries (meaningful when ``x`` holds the truth, as in a benchmark), or
            ``None`` where the family has no such conditional likelihood.
        log_prob_method: what ``log_prob_missing`` is: ``"exact"``, ``"bound"`` or
            ``"estimate"`` plus its settings; ``None`` with it.
        stderr: ``(B,)`` standard error of an estimated ``log_prob_missing``, else ``None``.
    """

    samples: Tensor
    method: str
    log_prob_missing: Tensor | None = None
    log_prob_method: str | None = None
    stderr: Tensor | None = None


@dataclass(frozen=True)
class Capability:
    """One use of a generative model, as the pipelines see it (see ``CAPABILITIES``).

    Attributes:
        name: the capability's name, e.g. ``"impute"``.
        method: the protocol method that serves it.
        endpoint: the path segment of ``POST /v1/models/{model}/{endpoint}``; ``None`` when the
            capability is a field of another endpoint (``condition:*`` are fields of ``sample``).
        fields: the request fields beyond the model reference (``alias``/``version``) and
            ``seed``; ``x``-like fields are arrays of examples in the data space.
        batchable: requests may be pooled along the batch axis into one model call (the result
            of a row depends on that row alone).
        seeded: the result is random; the same ``seed`` gives the same result.
        max_rows: the most examples (rows of ``x``, or samples) one request may carry.
        returns: the response field of a plain tensor result (a dataclass result such as
            ``ScoreResult`` or ``ImputeResult`` gives its own fields).
        summary: one line for ``/v1/models``, ``--help`` and the OpenAPI schema.

    The request fields are the method's keyword arguments by name (plus ``generator`` from the
    seed when ``seeded``), so a server calls ``getattr(model, method)(**fields)`` generically.
    """

    name: str
    method: str
    endpoint: str | None
    fields: tuple[str, ...]
    batchable: bool
    seeded: bool
    max_rows: int
    returns: str
    summary: str


CAPABILITIES: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability(
            "sample", "sample", "sample", ("n", "condition"), False, True, 1024, "samples",
            "draw n samples in the data space",
        ),
        Capability(
            "log_prob", "score", "log_prob", ("x", "condition"), True, True, 256, "log_prob",
            "log p(x) in nats per example, with the method and standard error",
        ),
        Capability(
            "embed", "embed", "embed", ("x",), True, False, 256, "embedding",
            "a latent code (B, K) per example",
        ),
        Capability(
            "impute", "impute", "impute", ("x", "mask", "num_samples"), False, True, 64, "samples",
            "fill in the entries where mask = 0; observed entries are kept exactly",
        ),
        Capability(
            "classify", "classify", "classify", ("x",), True, False, 256, "log_probs",
            "(B, K) class log-probabilities",
        ),
        Capability(
            "translate", "translate", "translate", ("x", "direction"), True, True, 64, "images",
            "map images of one domain to the other",
        ),
        Capability(
            "predict", "predict", "predict", ("frames", "steps"), False, True, 16, "frames",
            "roll out the next frames of a sequence",
        ),
        Capability(
            "condition:label", "sample", None, ("condition",), False, True, 1024, "samples",
            'sample given a class: "condition": {"label": 3} (one, or one per sample)',
        ),
        Capability(
            "condition:caption", "sample", None, ("condition",), False, True, 256, "samples",
            'sample given a caption: "condition": {"caption": "3 left of 7"}',
        ),
    )
}  # fmt: skip
"""Capability name → what the pipelines need to serve it generically."""


class MaskError(ValueError):
    """A mask that does not fit its input (wrong shape, values other than 0/1)."""


@dataclass(frozen=True)
class SearchSpec:
    """One hyper-parameter's search distribution, free of any tuning library.

    ``kind`` is ``"choice"`` (``values``), ``"uniform"``, ``"loguniform"`` (``low``, ``high``) or
    ``"randint"`` (``low`` inclusive, ``high`` exclusive). ``pipelines.tune`` maps it to Ray Tune.
    """

    kind: Literal["choice", "uniform", "loguniform", "randint"]
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class BaseConfig:
    """Hyper-parameters every family has; a family's ``Config`` extends this dataclass."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set the class attributes and override the methods."""

    family: ClassVar[str]
    likelihood: ClassVar[Likelihood]
    data_kinds: ClassVar[tuple[DataKind, ...]] = ("binary",)
    Config: ClassVar[type[BaseConfig]] = BaseConfig
    search_space: ClassVar[Mapping[str, SearchSpec]] = {}
    phases: ClassVar[tuple[str, ...]] = ("main",)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    can_sample: ClassVar[bool] = True
    sample_limit: ClassVar[int] = 256
    batch_keys: ClassVar[tuple[str, ...]] = ("x",)
    directions: ClassVar[tuple[str, ...]] = ()
    selection_metric: ClassVar[str | None] = None
    input_ranks: ClassVar[tuple[int, ...]] = (1, 3)

    def __init__(self, input_shape: tuple[int, ...], levels: int, config: BaseConfig) -> None:
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) not in self.input_ranks or any(s <= 0 for s in input_shape):
            want = " or ".join(_RANK_NAMES[r] for r in self.input_ranks)
            raise ValueError(
                f"{self.family}: input_shape must be {want} with positive sizes, got {input_shape}"
            )
        kind: DataKind = "binary" if levels == 2 else "discrete"
        if levels < 2 or kind not in self.data_kinds:
            raise ValueError(
                f"{self.family} models {'/'.join(self.data_kinds)} data; got levels={levels}"
            )
        self.input_shape = input_shape
        self.levels = int(levels)
        self.config = config
        # The instance's own set (a family may add to it in __init__, e.g. for a conditional
        # config): what a registered version of it is tagged with.
        self.capabilities = frozenset(type(self).capabilities) | (
            {"sample"} if self.can_sample else set()
        )

    # ----------------------------------------------------------------------------------- shapes
    @property
    def num_dims(self) -> int:
        """D, the number of data dimensions (for bits/dim)."""
        return math.prod(self.input_shape)

    def check_input(self, x: Tensor) -> Tensor:
        """Validate ``x`` against the input shape and data space; return it as float."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected a batch of shape (B, {self.input_shape}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values")
        if ((x < 0) | (x > self.levels - 1) | (x != x.round())).any():
            raise ValueError(f"input values must be integers in 0..{self.levels - 1}")
        return x

    # --------------------------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        """Loss and metrics of one training phase: ``{"loss": scalar, **metrics}``."""
        raise NotImplementedError

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """The parameters the optimiser of ``phase`` steps (all of them for one-phase families)."""
        return self.parameters()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per phase, built from the config's ``lr`` and ``weight_decay``."""
        cfg = self.config
        return {
            p: adam(self.phase_parameters(p), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for p in self.phases
        }

    def rank_state(self) -> dict[str, Tensor]:
        """State that differs between data-parallel ranks and must survive a restart (e.g. the
        persistent Gibbs chains of an RBM); each rank checkpoints and restores its own."""
        return {}

    def load_rank_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore what ``rank_state`` returned."""

    def prepare_scoring(
        self, generator: torch.Generator | None = None, final: bool = False
    ) -> dict[str, Any]:
        """Work that scoring needs once per set of weights, e.g. an AIS estimate of log Z.

        The pipelines call it before every validation (``final=False``: cheaper settings) and
        once before the test split and registration (``final=True``: the published settings);
        what it computes must live in buffers so it is saved with the weights and a registered
        version scores without redoing it. Returns what it settled (logged with the run), e.g.
        ``{"log_z": ..., "log_z_stderr": ..., "ais_chains": ...}``. Default: nothing to do.
        """
        return {}

    # ------------------------------------------------------------------------------- inference
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """Draw ``n`` samples ``(n, *input_shape)`` in the data space (given ``condition``, for a
        conditional family)."""
        raise NotImplementedError

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        """``(B,)`` log-likelihood in nats: exact, a bound or an estimate (see ``likelihood``);
        with ``condition``, the conditional log-likelihood log p(x | condition)."""
        raise NoLikelihoodError(f"{self.family} has no tractable likelihood")

    def score(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> ScoreResult:
        """``log_prob`` with the method used and, for estimates, its standard error."""
        return ScoreResult(self.log_prob(x, generator, condition), method="exact", stderr=None)

    def embed(self, x: Tensor) -> Tensor:
        """A latent code ``(B, K)`` for ``x``, where the family has one."""
        raise NotImplementedError(f"{self.family} has no latent code")

    def impute(
        self,
        x: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
    ) -> ImputeResult:
        """Fill in the missing entries of ``x`` (where ``mask`` is 0) from the model.

        Args:
            x: ``(B, *input_shape)`` in the data space; the values at missing entries are
                ignored by the imputation (they are only scored by ``log_prob_missing``).
            mask: ``x``'s shape, 1 = observed, 0 = missing (bool or 0/1 numbers).
            generator: the random source (a seed reproduces every imputation).
            num_samples: S, the number of imputations per example (multiple imputation).

        Returns:
            ``ImputeResult`` with ``samples`` ``(S, B, *input_shape)``; every sample equals ``x``
            wherever the mask is 1 (enforced here), so a row with nothing missing comes back as
            ``x`` and a row with nothing observed is a plain sample.

        Families implement ``_impute`` with the same arguments, already validated.
        """
        if "impute" not in self.capabilities:
            raise NotImplementedError(f"{self.family} cannot impute")
        x = self.check_input(x)
        mask = self.check_mask(x, mask)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        result = self._impute(x, mask, generator, num_samples)
        want = (num_samples, *x.shape)
        if tuple(result.samples.shape) != want:
            raise RuntimeError(
                f"{self.family}._impute returned samples of shape "
                f"{tuple(result.samples.shape)}, expected {want}"
            )
        samples = torch.where(mask.bool(), x, result.samples.to(x.dtype))
        return dataclasses.replace(result, samples=samples)

    def _impute(
        self, x: Tensor, mask: Tensor, generator: torch.Generator | None, num_samples: int
    ) -> ImputeResult:
        """The family's imputation (see ``impute``); inputs are validated, mask is float 0/1."""
        raise NotImplementedError(f"{self.family} cannot impute")

    def classify(self, x: Tensor) -> Tensor:
        """``(B, K)`` class log-probabilities, where the family classifies."""
        raise NotImplementedError(f"{self.family} does not classify")

    def translate(
        self, x: Tensor, direction: str, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x`` mapped to the other domain (``direction`` names it), where the family translates."""
        raise NotImplementedError(f"{self.family} does not translate")

    def check_direction(self, direction: str) -> str:
        """``direction`` if the family translates that way, else a ``ValueError`` naming the
        directions it knows (a 422 over HTTP, exit 2 on the command line)."""
        if direction not in self.directions:
            known = ", ".join(self.directions) or "none (it does not translate)"
            raise ValueError(f"{self.family}: unknown direction {direction!r}; known: {known}")
        return direction

    def validation_metrics(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-example ``(B,)`` validation metrics of one batch (its ``batch_keys`` columns), e.g.
        ``{"iou": ..., "l1": ...}``; the trainer averages them over the validation split (every
        rank) and, for a family with neither a likelihood nor an unconditional ``sample``,
        selects on ``selection_metric`` (higher is better). Default: none."""
        return {}

    def predict(
        self, frames: Tensor, steps: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """The next ``steps`` frames after ``frames``, where the family predicts sequences."""
        raise NotImplementedError(f"{self.family} does not predict frames")

    # ------------------------------------------------------------------------------ validation
    def check_mask(self, x: Tensor, mask: Tensor) -> Tensor:
        """Validate a missing-data mask for ``x`` (same shape, values 0/1); return it as float.

        A mask of shape ``(B, D)`` for image inputs is reshaped when ``D`` matches."""
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(x.shape):
            if mask.dim() == 2 and tuple(mask.shape) == (len(x), self.num_dims):
                mask = mask.reshape(x.shape)
            else:
                raise MaskError(
                    f"mask must have the input's shape {tuple(x.shape)}, got {tuple(mask.shape)}"
                )
        if mask.dtype != torch.bool:
            if not torch.isfinite(mask.double()).all() or ((mask != 0) & (mask != 1)).any():
                raise MaskError("mask values must be 0 (missing) or 1 (observed)")
        return mask.to(device=x.device, dtype=x.dtype)

    def check_condition(self, condition: Condition) -> dict[str, Any] | None:
        """``None`` for no condition; a family without a ``condition:<key>`` capability for every
        key given rejects it with an error that names what it accepts."""
        if condition is None or (isinstance(condition, Mapping) and not condition):
            return None
        if not isinstance(condition, Mapping):
            raise ValueError(
                f"condition must be a mapping such as {{'label': 3}}, got {condition!r}"
            )
        accepted = sorted(
            c.split(":", 1)[1] for c in self.capabilities if c.startswith("condition:")
        )
        unknown = sorted(k for k in condition if k not in accepted)
        if unknown:
            what = f"accepts only {', '.join(accepted)}" if accepted else "is unconditional"
            raise ValueError(
                f"{self.family}: this model {what}; got condition key(s) {', '.join(unknown)}"
            )
        return dict(condition)

    # --------------------------------------------------------------------------------- helpers
    def export_config(self) -> dict[str, Any]:
        """Everything ``build`` needs to re-create this model (JSON-serialisable)."""
        return {
            "family": self.family,
            "input_shape": list(self.input_shape),
            "levels": self.levels,
            "config": dataclasses.asdict(self.config),
        }


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """sum_d log Bernoulli(x_d | sigmoid(logits_d)) → ``(B,)``; ``logits`` is ``(B, D)``."""
    target = x.flatten(1).to(logits.dtype)
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)


class BernoulliAutoregressive(GenerativeModel):
    """A fully visible model of binary data whose ``logits(x)`` gives every p(x_d | x_<d) in
    one pass: its exact log-likelihood and its maximum-likelihood training loss follow."""

    likelihood = "exact"
    data_kinds = ("binary",)
    capabilities = frozenset({"log_prob"})

    def logits(self, x: Tensor) -> Tensor:
        """Bernoulli logits ``(B, D)`` of p(x_d | x_<d), in the flattened input's order."""
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Tensor], phase: str = "main") -> dict[str, Tensor]:
        x = batch["x"].float()
        nll = -bernoulli_log_prob(self.logits(x), x).mean()
        return {"loss": nll, "nll": nll.detach()}

    def log_prob(
        self, x: Tensor, generator: torch.Generator | None = None, condition: Condition = None
    ) -> Tensor:
        self.check_condition(condition)
        x = self.check_input(x)
        return bernoulli_log_prob(self.logits(x), x)


def register(cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Class decorator: add a family to the registry under ``cls.family``."""
    if cls.family in _FAMILIES:
        raise ValueError(f"family {cls.family!r} is registered twice")
    check_capabilities(cls, cls.capabilities)
    _FAMILIES[cls.family] = cls
    return cls


def check_capabilities(cls: type[GenerativeModel], names: frozenset[str]) -> None:
    """Every declared capability is known and its protocol method is the family's own."""
    for name in sorted(names):
        if name not in CAPABILITIES:
            raise ValueError(
                f"{cls.family}: unknown capability {name!r}; known: {', '.join(CAPABILITIES)}"
            )
        if name.startswith("condition:"):
            continue  # a keyword of sample(); the family's check_condition accepts it
        method = {"impute": "_impute", "log_prob": "log_prob"}.get(name, CAPABILITIES[name].method)
        if getattr(cls, method) is getattr(GenerativeModel, method):
            raise TypeError(f"{cls.family} declares {name!r} but does not implement {method}()")


def families() -> list[str]:
    """The names of every registered family, sorted."""
    return sorted(_FAMILIES)


def family_class(name: str) -> type[GenerativeModel]:
    """The class of a registered family; ``KeyError`` names the known ones."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(families())}") from None


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> BaseConfig:
    """The family's config with ``overrides``; an unknown key or a mistyped value is an error."""
    cls = family_class(name).Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(
                f"{name}: unknown config key {key!r}; known: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(name, key, value, fields[key].default)
    return cls(**kwargs)


def _coerce(family: str, key: str, value: Any, default: Any) -> Any:
    """Coerce ``value`` to the type of the field's default (lists → tuples); errors name the key."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
    elif isinstance(default, tuple):
        if isinstance(value, list | tuple) and all(isinstance(v, int) and v > 0 for v in value):
            return tuple(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise ValueError(
        f"{family}: bad value {value!r} for {key!r} (expected {type(default).__name__}"
        f"{' of positive ints' if isinstance(default, tuple) else ''})"
    )


def build(
    name: str, input_shape: tuple[int, ...], levels: int = 2, **config: Any
) -> GenerativeModel:
    """Build a family by name.

    Args:
        name: a registered family (see ``families()``).
        input_shape: ``(D,)`` or ``(C, H, W)``.
        levels: the number of values each dimension takes (2 = binary).
        **config: overrides of the family's default config; unknown keys raise ``ValueError``.
    """
    cls = family_class(name)
    return cls(tuple(input_shape), levels, make_config(name, config))


def from_export(exported: Mapping[str, Any]) -> GenerativeModel:
    """Re-create a model (untrained) from ``GenerativeModel.export_config()``."""
    return build(
        exported["family"], tuple(exported["input_shape"]), exported["levels"], **exported["config"]
    )


LOG_2PI = math.log(2 * math.pi)


def std_normal_log_prob(z: Tensor, event_dims: int = 1) -> Tensor:
    """log N(z; 0, I), summed over the last ``event_dims`` dimensions of ``z``."""
    return -0.5 * (z.pow(2) + LOG_2PI).flatten(-event_dims).sum(-1)


def std_normal_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, summed over the last dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def importance_weighted(log_w: Tensor) -> tuple[Tensor, Tensor | None]:
    """From ``k`` log importance weights ``(k, B)``: the estimate log (1/k) sum_i w_i and its
    delta-method standard error sd(w) / (sqrt(k) mean(w)) (``None`` when k == 1)."""
    k = log_w.shape[0]
    estimate = log_mean_exp(log_w, dim=0)
    if k == 1:
        return estimate, None
    w = (log_w - log_w.max(0, keepdim=True).values).exp()
    return estimate, w.std(0, unbiased=True) / (math.sqrt(k) * w.mean(0))


def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """log(mean(exp(x))) along ``dim``, computed stably."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def check_latent_temperature(family: str, temperature: float) -> None:
    """A ``ValueError`` naming the family unless ``temperature`` is a finite number >= 0."""
    if not (isinstance(temperature, int | float) and 0.0 <= temperature < math.inf):
        raise ValueError(f"{family}: latent_temperature must be a number >= 0, got {temperature}")


def set_latent_temperature(model: GenerativeModel, temperature: float) -> None:
    """Make ``model`` sample at latent temperature ``temperature`` from now on (its config's
    ``latent_temperature``; the weights and every other method are unchanged). A ``ValueError``
    naming the family for a bad value or a family without the option."""
    if not hasattr(model.config, "latent_temperature"):
        raise ValueError(f"{model.family}: has no latent_temperature option")
    check_latent_temperature(model.family, temperature)
    model.config = dataclasses.replace(model.config, latent_temperature=temperature)


def prior_draw(
    n: int,
    dim: int,
    temperature: float,
    generator: torch.Generator | None,
    like: Tensor,
) -> Tensor:
    """``n`` latent codes z ~ N(0, temperature^2 I) of ``dim`` entries, drawn on the CPU from
    ``generator`` (reproducible across devices) in ``like``'s dtype, moved to its device.

    ``temperature`` 1 is the prior itself (the model's own ancestral sampler); below 1 the draws
    concentrate on the prior's high-density core (Kingma & Dhariwal 2018's "temperature"; the
    truncation trick of Brock et al. 2019 cuts the tails instead of scaling): samples gain
    fidelity and lose diversity, and no longer come from the distribution ``log_prob`` scores.
    The draw is the same random numbers at every temperature (scaled), so a seeded sampler's
    outputs at two temperatures differ only by the scale of z."""
    z = torch.randn((n, dim), generator=generator, dtype=like.dtype)
    if temperature != 1.0:
        z = z * temperature
    return z.to(like.device)
