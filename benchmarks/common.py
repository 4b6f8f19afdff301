"""Small helpers shared by the benchmark scripts (no Ray, no MLflow)."""

from __future__ import annotations

import argparse
import json


def config_pair(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value), the value parsed as JSON where it parses (5, true, 0.5),
    else kept as text; for ``--set`` flags (an ``argparse`` type: a bad item is a usage error)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_set_option(ap: argparse.ArgumentParser, help: str) -> None:
    """The benchmarks' repeatable ``--set KEY=VALUE`` (parsed by ``config_pair``) on ``ap``."""
    ap.add_argument("--set", action="append", type=config_pair, metavar="KEY=VALUE", help=help)


def check_set(
    ap: argparse.ArgumentParser,
    pairs: list[tuple[str, object]] | None,
    reserved: dict[str, str],
    build,
) -> None:
    """Refuse, as usage errors (one line, exit 2) before any data or training, ``--set`` keys
    that another flag owns (``reserved``: key → how to set it) and values the family refuses
    (``build(overrides)``, which builds the model(s) the run would, raises ``ValueError``)."""
    overrides = dict(pairs or [])
    for key, how in reserved.items():
        if key in overrides:
            ap.error(f"--set {key}: {how}, not --set")
    try:
        build(overrides)
    except ValueError as e:
        ap.error(f"--set: {e}")
