"""Class-conditional variants (``conditional=True``): labels in, labels checked, one convention.

A family's config gains ``conditional: bool = False`` and ``num_classes: int = 10``. With
``conditional=True`` the instance adds ``"condition:label"`` to its capabilities and takes
``condition={"label": LongTensor(n)}`` in ``sample``, ``log_prob`` and ``score``; with the default
``False`` nothing changes (no new parameters, the same initialisation, the same checkpoints).

The convention every conditional family here follows:

* **Labels.** ``labels_from_condition`` turns ``condition["label"]`` (an int, a sequence or an
  integer tensor: one value for every row or one per row) into a ``LongTensor(n)``; a float, a
  wrong length or a label outside ``0..num_classes-1`` is a ``ValueError`` naming it (Serve's 422).
* **No condition = the label marginal under a uniform prior.** A conditional model asked without a
  condition is the mixture p(x) = (1/K) sum_y p(x | y): ``sample`` draws y uniformly (from the
  given generator, before anything else), and ``log_prob`` is log-mean-exp over the K labels
  (exact for MADE and PixelCNN, an estimate for the CVAE). The pipelines' validation, test scores
  and yardstick samples, which pass no condition, therefore work unchanged and measure that
  marginal (on the bundled digits the classes are near balanced). A condition given is labelled
  in ``ScoreResult.method`` (``"exact-conditional:label"``, ``"iwae-k=100-conditional:label"``).
* **Training needs labels.** ``training_labels`` reads the batch's ``y``; an unlabelled example
  (``y = -1``, or no ``y`` at all) is a ``ValueError`` saying so: a conditional model is trained on
  labelled data only (semi-supervised conditional training is a different family).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .base import Condition, GenerativeModel

CONDITIONAL = "conditional:label"  # the suffix of a ScoreResult.method given a label


def setup(model: GenerativeModel) -> int:
    """Validate ``conditional`` / ``num_classes`` and add ``condition:label`` to the instance's
    capabilities when conditional; returns K (0 for an unconditional model)."""
    cfg = model.config
    if not isinstance(cfg.conditional, bool):
        raise ValueError(f"{model.family}: conditional must be true or false")
    if not cfg.conditional:
        return 0
    if cfg.num_classes < 2:
        raise ValueError(f"{model.family}: num_classes must be >= 2, got {cfg.num_classes}")
    model.capabilities = model.capabilities | {"condition:label"}
    return int(cfg.num_classes)


def check_labels(model: GenerativeModel, labels: Any, n: int, what: str = "label") -> Tensor:
    """``labels`` (an int, a sequence of ints or an integer tensor; one value or ``n``) as a
    ``LongTensor(n)`` in ``0..num_classes-1``, else ``ValueError`` naming the problem."""
    k = model.config.num_classes
    if isinstance(labels, bool):
        raise ValueError(f"{model.family}: {what} must be an integer class, got {labels!r}")
    if isinstance(labels, Tensor):
        t = labels.detach().cpu()
    elif isinstance(labels, numbers.Integral):
        t = torch.tensor(int(labels))
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in labels):
            raise ValueError(f"{model.family}: {what} must hold integer classes, got {labels!r}")
        t = torch.tensor([int(v) for v in labels], dtype=torch.long)
    else:
        raise ValueError(f"{model.family}: {what} must be an integer class (or one per row)")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{model.family}: {what} must be integers, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or len(t) != n:
        raise ValueError(
            f"{model.family}: {what} must be one class or one per row ({n}), "
            f"got shape {tuple(t.shape)}"
        )
    t = t.long()
    bad = (t < 0) | (t >= k)
    if bool(bad.any()):
        raise ValueError(
            f"{model.family}: {what} {int(t[bad][0])} is out of range: this model has "
            f"num_classes={k} (labels 0..{k - 1})"
        )
    return t.clone()


def labels_from_condition(model: GenerativeModel, condition: Condition, n: int) -> Tensor | None:
    """``check_condition`` then the label ``LongTensor(n)``, or ``None`` without a condition."""
    cond = model.check_condition(condition)
    if cond is None:
        return None
    return check_labels(model, cond["label"], n)


def training_labels(model: GenerativeModel, batch: Mapping[str, Tensor]) -> Tensor:
    """The batch's ``y`` as checked labels; unlabelled examples (``y = -1``) are an error."""
    y = batch.get("y")
    n = len(batch["x"])
    if y is None:
        raise ValueError(
            f"{model.family}: conditional=true trains on labelled data: the batch has no 'y'"
        )
    y = torch.as_tensor(y)
    if y.dim() == 1 and len(y) == n and bool((y < 0).any()):
        raise ValueError(
            f"{model.family}: conditional=true trains on labelled data only; the batch has "
            f"{int((y < 0).sum())} unlabelled example(s) (y = -1)"
        )
    return check_labels(model, y, n, what="training label").to(y.device)


def uniform_labels(model: GenerativeModel, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` labels drawn uniformly (the marginal's prior) from ``generator``, on the CPU."""
    return torch.randint(model.config.num_classes, (n,), generator=generator)


def one_hot(labels: Tensor, k: int, like: Tensor) -> Tensor:
    """``(n, k)`` one-hot rows of ``labels``, in ``like``'s dtype and device."""
    return F.one_hot(labels.to(like.device), k).to(like.dtype)


def marginal(per_label: Tensor) -> Tensor:
    """log (1/K) sum_y p(x | y) from ``(B, K)`` conditional log-likelihoods."""
    return torch.logsumexp(per_label, 1) - math.log(per_label.shape[1])


def exact_log_prob(
    model: GenerativeModel,
    x: Tensor,
    condition: Condition,
    log_prob_given: Callable[[Tensor, Tensor | None], Tensor],
) -> Tensor:
    """log p(x | y) for a given label (``log_prob_given(x, labels)``, labels None when the model
    is unconditional); a conditional model without a label gives the uniform label mixture's
    log p(x), summed over every label exactly. Checks the condition and the input first."""
    given = model.check_condition(condition)
    x = model.check_input(x)
    if given is not None:
        return log_prob_given(x, check_labels(model, given["label"], len(x)))
    if not model.num_labels:
        return log_prob_given(x, None)
    per_label = [
        log_prob_given(x, torch.full((len(x),), y, dtype=torch.long))
        for y in range(model.num_labels)
    ]
    return marginal(torch.stack(per_label, 1))


def method_name(model: GenerativeModel, base: str, condition: Condition) -> str:
    """``ScoreResult.method``: ``base`` plus ``-conditional:label`` when a label is given, or
    ``-marginal:uniform-label`` for a conditional model asked without one."""
    if model.check_condition(condition) is not None:
        return f"{base}-{CONDITIONAL}"
    if getattr(model.config, "conditional", False):
        return f"{base}-marginal:uniform-label"
    return base
