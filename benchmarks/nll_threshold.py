"""The issue-16 side-by-side protocol of ``benchmarks/nll.py`` (``--protocol threshold``).

One run per entry, same machine, same data, the plain training loop of ``nll.train_entry``
(Adam, one torch thread, ``--budget`` = 200 CPU-seconds of this process by default, validation
after every epoch, the best validation epoch kept) and the test split scored ONCE at the end:

* split 1 (the peer column's split): the 5,000 bundled MNIST digits (``pipelines.data``'s
  ``mnist``, 8-bit), rows permuted with ``np.random.default_rng(0).permutation(5000)``,
  binarised by thresholding (``x > 127``), train = permuted rows 0..3499, validation
  3500..3999, test 4000..4999;
* split 2 (a second split, configs of split 1 untuned): the permutation of seed 1, the same row
  ranges, and the pipeline's fixed Bernoulli binarisation (``binarize="fixed"``, seed 0: each
  source row's one draw, as in every pipeline split) instead of thresholding.

Entries and why others are skipped: ``THRESHOLD_ENTRIES`` holds every family with a likelihood
on binary digits. ``realnvp`` (a flow on dequantised 8-bit values) and ``pixelcnn-8bit`` do not
apply to binary data; ``gan``, ``aae``, ``gsn`` have no likelihood to compare.

Sample quality (``yardstick_fd``): the yardstick classifier is the pipeline's (trained once on
the pipeline's own bundled-MNIST split: 4,000 train digits, fixed Bernoulli binarisation, seed
0), but the digits it judges samples against are this protocol's: 500 samples vs the first 500
test digits of the split in use (``_real`` rows: the first 500 validation digits in place of
samples, the floor). Its absolute values are not comparable with ``nll.md``'s.

Model selection uses only the validation split. ``--validation-only`` trains and reports the
validation curve without touching the test split (the tuning trials: ``--config`` overrides an
entry's config with JSON, ``--tag`` names the trial), written to ``results/nll-threshold/
trials/<tag>.json`` and listed, labelled validation, in ``nll-threshold.md``. Final rows go to
``results/nll-threshold/split<k>/<entry>.json``, merged into ``nll-threshold.json`` / ``.md``
(never ``nll/`` or ``nll.md``); best weights to ``results/models/threshold-s<k>-<entry>.*``.

    python benchmarks/nll.py --protocol threshold --family made            # split 1, 200 CPU-s
    python benchmarks/nll.py --protocol threshold --split 2                # every entry, split 2
    python benchmarks/nll.py --protocol threshold --family made --validation-only \\
        --tag made-h4000 --config '{"hidden_sizes": [4000]}'
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "nll-threshold"
TRIALS = OUT / "trials"
N_TRAIN, N_VAL, N_TEST = 3500, 500, 1000
YARDSTICK_N = 500

# entry -> (family, binarize (unused: the protocol binarises), config, batch size). Chosen on
# split 1's validation split (trials in nll-threshold.md); split 2 reuses them untuned.
THRESHOLD_ENTRIES: dict[str, tuple[str, str, dict, int]] = {
    "fvsbn": ("fvsbn", "fixed", {"lr": 3e-3}, 100),
    "nade": ("nade", "fixed", {"hidden_size": 500, "lr": 1e-3, "activation": "relu"}, 100),
    "made": (
        "made",
        "fixed",
        {
            "hidden_sizes": (8000,),
            "lr": 1e-3,
            "natural_order": False,
            "direct_connection": False,
            "dropout": 0.6,
        },
        100,
    ),
    "pixelcnn": ("pixelcnn", "fixed", {"channels": 32, "num_layers": 5, "lr": 1e-3}, 100),
    "vae": ("vae", "fixed", {"latent_dim": 32, "hidden_sizes": (512, 256), "lr": 3e-3}, 100),
    "vae-iaf": (
        "vae",
        "fixed",
        {"latent_dim": 32, "hidden_sizes": (512, 256), "iaf_steps": 2, "lr": 3e-3},
        100,
    ),
    "rbm": ("rbm", "fixed", {"ais_betas": 50000}, 100),
    "dbm": ("dbm", "fixed", {"ais_betas": 50000}, 100),
    "avb": ("avb", "fixed", {}, 100),
}
SKIPPED = {
    "realnvp-8bit": "a flow on dequantised 8-bit values: no binary-data likelihood",
    "pixelcnn-8bit": "8-bit data",
    "gan": "no likelihood",
    "aae": "no likelihood",
    "gsn": "no likelihood",
}

# The peer library's column on split 1 (test nats, same protocol, measured by the issue).
PEER = {
    "made": "84.02 ± 0.84 (8000 hidden, best epoch 15 / 32)",
    "nade": "87.79 ± 0.80 (42 epochs)",
    "pixelcnn": "86.68",
    "vae": "190.0",
}


def threshold_rows(split: int) -> dict[str, np.ndarray]:
    """Source rows (indices into the 5,000 bundled digits) of train / validation / test."""
    order = np.random.default_rng(0 if split == 1 else 1).permutation(N_TRAIN + N_VAL + N_TEST)
    return {
        "train": order[:N_TRAIN],
        "validation": order[N_TRAIN : N_TRAIN + N_VAL],
        "test": order[N_TRAIN + N_VAL :],
    }


@dataclass
class ProtocolData:
    """The arrays of one protocol split, with what ``nll.train_entry`` and the pipeline's
    ``Yardstick`` read from a ``LoadedDataset`` (``numpy``, ``input_shape``, ``levels``, name,
    fingerprint)."""

    split: int
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    input_shape: tuple[int, ...] = (1, 28, 28)
    levels: int = 2

    @property
    def name(self) -> str:
        return f"mnist-threshold-split{self.split}"

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in ("train", "validation", "test"):
            h.update(np.ascontiguousarray(self.arrays[s][0]).tobytes())
        return h.hexdigest()[:16]

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self.arrays[split]


def protocol_data(split: int) -> ProtocolData:
    """Split 1: threshold ``x > 127``; split 2: the pipeline's fixed Bernoulli draw (seed 0)."""
    if split not in (1, 2):
        raise ValueError(f"split={split!r}: expected 1 or 2")
    from pipelines.data import _mnist, _preprocess

    x, y, levels, _ = _mnist()
    rows = threshold_rows(split)
    arrays = {}
    for s, r in rows.items():
        if split == 1:
            xs = (x[r] > 127).astype(np.float32)
        else:  # the pipeline's own per-source-row draw (pipelines.data._preprocess)
            xs = _preprocess(
                {"x": x[r], "y": y[r], "row": r}, how="binary", raw_levels=levels, seed=0
            )["x"]
        arrays[s] = (xs, y[r].astype(np.int64))
    return ProtocolData(split, arrays)


def protocol_yardstick(data: ProtocolData, seed: int):
    """The pipeline's yardstick classifier judging against this split's digits (module doc)."""
    from pipelines.data import prepare_dataset
    from pipelines.quality import Yardstick, yardstick_for

    # the pipeline's dataset without Ray: same fingerprint, so the cached yardstick is found
    base = yardstick_for(prepare_dataset("mnist", binarize="fixed", seed=seed), seed=seed)
    reference = {s: data.numpy(s)[0][:YARDSTICK_N].astype(np.uint8) for s in ("validation", "test")}
    return Yardstick(base.classifier, base.key, base.info, reference)


def run(
    entry: str,
    split: int,
    budget: float,
    device: str,
    seed: int,
    validation_only: bool,
    overrides: dict | None = None,
    tag: str | None = None,
    val_every: int = 1,
) -> dict:
    import nll

    family, binarize, config, batch_size = THRESHOLD_ENTRIES[entry]
    config = {**config, **(overrides or {})}
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    batch_size = int(config.pop("batch_size", batch_size))
    data = protocol_data(split)
    spec = (family, binarize, config)
    t0 = time.monotonic()
    model, facts = nll.train_entry(
        entry, data, None, budget, batch_size, device, seed, val_every=val_every, spec=spec
    )
    head = {
        "entry": entry,
        "family": family,
        "split": split,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "batch_size": batch_size,
        "dataset": data.name,
        "fingerprint": data.fingerprint,
        "threads": torch.get_num_threads(),
        "budget": budget,
        **facts,
        "val_nats": -facts["val_score"],
    }
    if validation_only:
        row = {**head, "tag": tag or entry, "wall_seconds": round(time.monotonic() - t0, 1)}
        nll.save_weights(model, f"threshold-trial-{row['tag']}")
        TRIALS.mkdir(parents=True, exist_ok=True)
        (TRIALS / f"{row['tag']}.json").write_text(json.dumps(row, indent=2, sort_keys=True))
        return row
    return finish(model, data, head, device, seed)


def finish_trial(tag: str, device: str, seed: int) -> dict:
    """Score a split-1 tuning trial's saved best weights on the test split, once, as its entry's
    final row: only when the trial's config and batch size are the entry's in
    ``THRESHOLD_ENTRIES`` (the trial was chosen on validation; retraining the same config would
    spend another 200 CPU-s for a run that differs only by timing)."""
    import nll

    head = json.loads((TRIALS / f"{tag}.json").read_text())
    _, _, config, batch_size = THRESHOLD_ENTRIES[head["entry"]]
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if head["config"] != want or head["batch_size"] != batch_size or head["split"] != 1:
        raise ValueError(
            f"trial {tag!r} ({head['config']}, batch {head['batch_size']}) is not the "
            f"{head['entry']!r} entry ({want}, batch {batch_size}) on split 1"
        )
    model = nll.load_weights(f"threshold-trial-{tag}").to(device)
    head = {k: v for k, v in head.items() if k not in ("tag", "wall_seconds")}
    return finish(model, protocol_data(1), {**head, "trial": tag}, device, seed)


def finish(model, data: ProtocolData, head: dict, device: str, seed: int) -> dict:
    """The test split, once: likelihood, sandwich (Boltzmann machines), yardstick; the row."""
    import nll

    entry, split = head["entry"], data.split
    yardstick = protocol_yardstick(data, seed)
    settled = model.prepare_scoring(torch.Generator().manual_seed(seed + 4343), final=True)
    nll.save_weights(model, f"threshold-s{split}-{entry}")
    x_test = torch.from_numpy(data.numpy("test")[0])
    t_test = time.monotonic()
    test = nll.score(model, x_test, device, seed + 1)
    test_seconds = round(time.monotonic() - t_test, 1)
    spread = example_stderr(model, x_test, device, seed + 1)
    bounds = nll.sandwich(model, x_test, device, seed + 2, None, None)
    quality = yardstick.evaluate(model, "test", seed=seed + 1)[0]
    row = {
        **head,
        "settled": {k: v for k, v in settled.items() if isinstance(v, int | float | str)},
        "test_seconds": test_seconds,
        "test_log_prob": test["log_prob"],
        "test_nats": -test["log_prob"],
        "test_bpd": test["bpd"],
        "test_stderr": test["stderr"],
        "test_example_se": spread,
        "method": test["method"],
        **quality,
        "yardstick_method": yardstick.method,
        "peer": PEER.get(entry, "") if split == 1 else "",
        "device": device,
    }
    if bounds is not None:
        row["sandwich"] = bounds
    folder = OUT / f"split{split}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{entry}.json").write_text(json.dumps(row, indent=2, sort_keys=True))
    floor = nll.real_floor(yardstick)  # the same yardstick keys, plus its method
    (folder / "_real.json").write_text(json.dumps(floor, indent=2, sort_keys=True))
    return row


@torch.no_grad()
def example_stderr(model, x: torch.Tensor, device: str, seed: int) -> float:
    """Standard error of the mean test NLL over examples (sd / sqrt(n)): the peer column's ±."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    lp = torch.cat([model.score(c.to(device), g).log_prob.cpu() for c in x.split(250)]).double()
    return float(lp.std() / len(lp) ** 0.5)


def load(folder: Path) -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))}


def write_tables() -> str:
    """Merge every row and trial into ``nll-threshold.json`` and ``nll-threshold.md``."""
    splits = {k: load(OUT / f"split{k}") for k in (1, 2)}
    trials = load(TRIALS)
    (RESULTS / "nll-threshold.json").write_text(
        json.dumps(
            {"split1": splits[1], "split2": splits[2], "trials": trials}, indent=2, sort_keys=True
        )
    )
    lines = [
        "Protocol: `python benchmarks/nll.py --protocol threshold` (see "
        "`benchmarks/nll_threshold.py`): one torch thread, 200 CPU-s of training per entry, "
        "Adam, best validation epoch kept, test split scored once. ± s.e.: standard error of the "
        "mean over the 1,000 test digits (sd / sqrt(n)), as the peer column's ±.",
        "",
        "| entry | split 1 test nats | ± s.e. | split 2 test nats | ± s.e. | method | "
        "FD ↓ (s1 / s2) | best epoch / epochs (s1) | peer, split 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in THRESHOLD_ENTRIES:
        cells = []
        for k in (1, 2):
            r = splits[k].get(entry)
            cells += (
                ["—", "—"]
                if r is None
                else [f"{r['test_nats']:.2f}", f"{r.get('test_example_se', float('nan')):.2f}"]
            )
        r1 = splits[1].get(entry) or splits[2].get(entry)
        if r1 is None:
            continue
        fd = " / ".join(
            f"{splits[k][entry]['yardstick_fd']:.1f}" if entry in splits[k] else "—" for k in (1, 2)
        )
        ep = (
            f"{splits[1][entry]['best_epoch'] + 1} / {splits[1][entry]['epochs']}"
            if entry in splits[1]
            else "—"
        )
        lines.append(
            f"| {entry} | {' | '.join(cells)} | {r1['method']} | {fd} | {ep} | "
            f"{PEER.get(entry, '')} |"
        )
    for k in (1, 2):
        real = splits[k].get("_real")
        if real:
            lines.append(
                f"\nSplit {k} yardstick floor (500 validation digits vs 500 test digits): FD "
                f"{real['yardstick_fd']:.2f}."
            )
    for k in (1, 2):
        for entry, r in splits[k].items():
            sw = r.get("sandwich")
            if sw:
                lines.append(
                    f"\nSplit {k} {entry} sandwich (nats): RAISE {sw['lower']:.2f} ± "
                    f"{sw['lower_stderr']:.2f}, forward AIS {sw['upper']:.2f} ± "
                    f"{sw['upper_stderr']:.2f}."
                )
    lines.append("\nConfigs (split 1 and split 2):\n")
    for entry, r in splits[1].items():
        if entry != "_real":
            lines.append(f"- {entry}: `{json.dumps(r['config'])}`, batch {r['batch_size']}")
    lines.append("\nSkipped: " + "; ".join(f"{e} ({why})" for e, why in SKIPPED.items()) + ".")
    if trials:
        lines += [
            "\nTuning trials, split 1, VALIDATION NLL only (the test split never seen):\n",
            "| trial | entry | config | batch | best val nats | best epoch / epochs | CPU s | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for tag, t in sorted(trials.items(), key=lambda kv: (kv[1]["entry"], kv[1]["val_nats"])):
            lines.append(
                f"| {tag} | {t['entry']} | `{json.dumps(t['config'])}` | {t['batch_size']} | "
                f"{t['val_nats']:.2f} | {t['best_epoch'] + 1} / {t['epochs']} | "
                f"{t['train_cpu_seconds']:.0f} | {t.get('note', '')} |"
            )
    text = "\n".join(lines) + "\n"
    (RESULTS / "nll-threshold.md").write_text(text)
    return text
