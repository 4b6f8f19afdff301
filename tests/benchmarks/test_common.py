"""The benchmarks' ``--set`` flag: a reserved key or a value the family refuses is a usage error
(one line, exit 2) before any work; a good value passes through."""

from __future__ import annotations

import argparse

import pytest

import genmodels
from benchmarks.common import add_set_option, check_set


def parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(prog="bench")
    add_set_option(ap, "a config value")
    ap.add_argument("--channels", type=int, default=4)
    return ap, ap.parse_args(argv)


def probe():
    built = []

    def build(overrides: dict) -> None:
        built.append(genmodels.build("made", (6,), 2, **overrides))

    return built, build


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "hidden_sizes=[8]", "--set", "channels=3"], "--set channels: use --channels"),
        (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
        (["--set", "hidden_sizes=oops"], "bad value 'oops' for 'hidden_sizes'"),
    ],
)
def test_refused_set_is_one_usage_line_and_exit_2(argv, message, capsys):
    ap, args = parse(argv)
    built, build = probe()
    with pytest.raises(SystemExit) as exit_:
        check_set(ap, args.set, {"channels": "use --channels"}, build)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench: error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not built


def test_good_set_builds_the_model_with_it():
    ap, args = parse(["--set", "hidden_sizes=[8]"])
    built, build = probe()
    check_set(ap, args.set, {"channels": "use --channels"}, build)  # control: no exit
    assert [m.config.hidden_sizes for m in built] == [(8,)]
    check_set(ap, None, {"channels": "use --channels"}, build)  # no --set: the defaults build
    assert len(built) == 2
