"""Learning from few labels: the K+1 GAN (``ssgan``) and M2 (``m2vae``) beside the same classifiers
trained on the labelled digits alone, and the fully supervised ceiling.

Data: the bundled MNIST (4,000 train / 500 validation / 500 test digits, fixed binarisation; no
Ray). A setting keeps ``L`` train labels (``--labels``: 100 and 1,000, i.e. 10 and 100 per class,
drawn stratified with the draw's seed) and hides the rest (y = -1); every train digit is
unlabelled data. Each run trains in this process with the generic loop of the families (every
phase the family declares, its own optimisers) for a fixed budget of CPU-seconds (one thread,
this process; below), then the FINAL weights classify the 500 test digits once (``classify``,
argmax): no selection on validation or test. Mean ± sd over ``--draws`` (5) label draws.

A training step's batch is Salimans et al.'s: ``--unlabelled-batch`` (100) digits drawn from the
whole train split with their labels hidden, plus ``--labelled-batch`` (100) labelled digits cycled
through the labelled set (with 100 labels: all of them every step), in one ``{"x", "y"}`` dict.
(A random batch of the train split, as the pipelines feed, would carry 2.5 labelled rows of 100
at 100 labels: an unbiased but noisy estimate of the same objective.)

Fixed schedules, chosen on the papers' settings and the CPU budget, never on a score:

* learning rate: constant, then linear to 0 over the last ``--lr-decay`` (1/3) of the CPU budget
  (Salimans et al.'s code decays it linearly to 0 over the last third of its epochs on CIFAR-10),
  every method and every optimiser alike;
* ssgan: Polyak decay ``--ema-decay`` 0.99 (still min(decay, (1 + n) / (10 + n)) after n
  updates). The family's 0.999 suits the paper's ~180,000 steps; at the 1,000-5,000 steps 240-960
  CPU-s buy here its time constant would span much of the run and average in early weights;
* m2vae: alpha = ``--m2-alpha-scale`` (0.1) x N per labelled row, N the train split (400 on the
  bundled 4,000 digits): Kingma et al.'s alpha = 0.1 N, the family's default. It is per labelled
  row, and these batches carry labelled rows at rate 1/2 rather than L / N, so the classification
  term weighs more here than in a natural-rate batch; a weaker alpha (the earlier 0.05 L = 5 at
  100 labels) let the unlabelled bound pull q(y|x) below its labels-only baseline.

Rows (the classifier architecture is the family's own, the code path the same):

* ``ssgan``: the paper's MNIST recipe (the family's default config);
* ``ssgan-labels-only``: the same discriminator (noise, weight norm, Polyak average) trained on
  the labelled batches alone with ``unsupervised_weight = 0`` (cross-entropy only);
* ``ssgan-shift2`` and ``ssgan-shift2-labels-only``: the same two with ``shift = 2``, every real
  digit D sees in training translated by up to 2 pixels each way (``genmodels.ssgan``: not the
  paper's recipe; the recipe plateaued on these 4,000 digits). The augmentation is the same in
  both rows, so their gap is still what the unlabelled digits add;
* ``m2vae``: M2 with Kingma's alpha (below);
* ``m2vae-labels-only``: the same model on labelled batches alone: q(y|x) then learns from the
  alpha-weighted cross-entropy only (the labelled ELBO does not reach it);
* ``m2vae-shift2`` and ``m2vae-shift2-labels-only``: the same two with ``shift = 2`` (every
  training digit translated, as for ssgan; ``genmodels.m2vae``);
* ``m2vae-shift2-z5-noise`` and its ``-labels-only`` row: M2 with ``shift = 2``, 5 latent
  dimensions (for Kingma's 50) and ``classifier_noise = 0.3`` (``genmodels.m2vae``), the recipe
  the ``--dev`` rows chose (``M2_SMALL``): a small z leaves the class to y, so the generative
  model's posterior over y, which the unlabelled bound pulls q(y|x) towards, says more;
* ``m1m2vae``, ``m1m2vae-shift2`` and their ``-labels-only`` rows: Kingma's stacked M1+M2
  (``m1_latent_dim`` 50, M1's hidden layers 600-600 as in the paper; ``genmodels.m2vae``), M2
  reading M1's codes, the two trained together from the first step;
* ``*-supervised``: the same labels-only training on all 4,000 train labels (the ceiling), one
  run each (``--baseline-budget``).

Budgets (CPU-s per run): 240 for a semi-supervised run, except ssgan-shift2's 960 and
m2vae-shift2-z5-noise's 480 (``BUDGETS``: chosen on the ``--dev`` rows, validation accuracy of dev
label draws 0-1: 90.7 % at 480 and 95.1 % at 960; 88.2 % at 240 and 90.2 % at 480; before any
test score at that budget); a labels-only or supervised row gets a quarter of its
semi-supervised counterpart's (``--baseline-budget`` overrides: they see 100 or 1,000 digits, or
one pass over 4,000 is a few seconds). ``--budget`` sets every semi-supervised run's. Cost: the
headline rows at 100 labels (ssgan-shift2, its labels-only and supervised rows, 5 draws) are
1.7 CPU-hours; every row at both label counts, 6.8 CPU-hours.

    python benchmarks/semisupervised.py                              # everything (~6.8 CPU-h)
    python benchmarks/semisupervised.py --labels 100 --method ssgan-shift2 \
        --method ssgan-shift2-labels-only --method ssgan-shift2-supervised   # headline (~1.7 CPU-h)
    python benchmarks/semisupervised.py --budget 20 --draws 1 --labels 100 --results /tmp/ss  # smoke
    python benchmarks/semisupervised.py --dev --method ssgan-shift2 --labels 100 --draws 2 \
        --budget 480                                                 # a dev row (validation)
    python benchmarks/semisupervised.py --dev --method m2vae-shift2 --labels 100 --draws 2 \
        --set latent_dim=5 --tag z5                                  # a dev row, config changed
    python benchmarks/semisupervised.py --table                      # rewrite the tables

Each run writes ``benchmarks/results/semisupervised/<method>-<labels>-<draw>.json`` (separate
processes may run different rows), merged into ``semisupervised.json`` and ``semisupervised.md``;
a ``--dev`` run ``semisupervised-dev/<method>-<labels>-<draw>-<budget>s.json`` and
``semisupervised-dev.md`` (dev draw d has seed 1000 + d: disjoint from the test draws).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import genmodels

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import add_set_option, check_set

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ROWS = RESULTS / "semisupervised"

DEV_SEED_OFFSET = 1000  # --dev draw d uses seed 1000 * --seed + 1000 + d
M2_CONFIG = {"latent_dim": 50, "hidden_sizes": (500,), "lr": 1e-3}
# M2 with 5 latent dims and noise 0.3 on q(y|x)'s input, both chosen on --dev rows (draws 0-1:
# latent 50 81.8 %, latent 5 87.4 %, latent 5 + noise 0.3 88.2 %; semisupervised-dev.md)
M2_SMALL = {**M2_CONFIG, "latent_dim": 5, "classifier_noise": 0.3, "shift": 2}
M1M2_CONFIG = {**M2_CONFIG, "m1_latent_dim": 50, "m1_hidden_sizes": (600, 600)}  # Kingma's M1

# method -> (family, config overrides, uses unlabelled data, baseline)
METHODS: dict[str, tuple[str, dict, bool]] = {
    "ssgan": ("ssgan", {}, True),
    "ssgan-labels-only": ("ssgan", {"unsupervised_weight": 0.0}, False),
    "ssgan-shift2": ("ssgan", {"shift": 2}, True),
    "ssgan-shift2-labels-only": ("ssgan", {"shift": 2, "unsupervised_weight": 0.0}, False),
    "m2vae": ("m2vae", M2_CONFIG, True),
    "m2vae-labels-only": ("m2vae", M2_CONFIG, False),
    "m2vae-shift2": ("m2vae", {**M2_CONFIG, "shift": 2}, True),
    "m2vae-shift2-labels-only": ("m2vae", {**M2_CONFIG, "shift": 2}, False),
    "m2vae-shift2-z5-noise": ("m2vae", M2_SMALL, True),
    "m2vae-shift2-z5-noise-labels-only": ("m2vae", M2_SMALL, False),
    "m1m2vae": ("m2vae", M1M2_CONFIG, True),
    "m1m2vae-labels-only": ("m2vae", M1M2_CONFIG, False),
    "m1m2vae-shift2": ("m2vae", {**M1M2_CONFIG, "shift": 2}, True),
    "m1m2vae-shift2-labels-only": ("m2vae", {**M1M2_CONFIG, "shift": 2}, False),
}
# CPU-s per semi-supervised run where it is not DEFAULT_BUDGET, each chosen on the dev rows (--dev,
# validation split, dev label draws 0-1) before any test run at it: ssgan-shift2 90.7 % at 480,
# 95.1 % at 960; m2vae-shift2-z5-noise 88.2 % at 240, 90.2 % at 480.
DEFAULT_BUDGET = 240.0
BUDGETS = {"ssgan-shift2": 960.0, "m2vae-shift2-z5-noise": 480.0}
SUPERVISED = {
    "ssgan-supervised": "ssgan-labels-only",
    "ssgan-shift2-supervised": "ssgan-shift2-labels-only",
    "m2vae-supervised": "m2vae-labels-only",
    "m2vae-shift2-supervised": "m2vae-shift2-labels-only",
    "m2vae-shift2-z5-noise-supervised": "m2vae-shift2-z5-noise-labels-only",
    "m1m2vae-supervised": "m1m2vae-labels-only",
    "m1m2vae-shift2-supervised": "m1m2vae-shift2-labels-only",
}


def draw_labelled(y_train: np.ndarray, n_labels: int, seed: int) -> np.ndarray:
    """``n_labels`` train rows, the same number per class, drawn with ``seed``."""
    classes = np.unique(y_train)
    if n_labels % len(classes):
        raise SystemExit(f"--labels {n_labels} is not a multiple of {len(classes)} classes")
    rng = np.random.default_rng(seed)
    per = n_labels // len(classes)
    rows = [rng.choice(np.flatnonzero(y_train == c), per, replace=False) for c in classes]
    return np.sort(np.concatenate(rows))


def config_for(method: str, n_train: int, args) -> tuple[str, dict, bool]:
    """The method's family, config (with the benchmark's fixed settings) and whether it sees
    unlabelled digits. ``n_train``: the train split's size N (M2's alpha = scale x N)."""
    family, config, unlabelled = METHODS[method]
    config = {**config, **dict(args.set or [])}
    if family == "m2vae":
        config["alpha"] = args.m2_alpha_scale * n_train
    if family == "ssgan":
        config["ema_decay"] = args.ema_decay
    return family, config, unlabelled


def build_probe(method: str, args) -> None:
    """Build ``method``'s model (its config with ``--set``) on MNIST's shape: a bad value raises
    ``ValueError`` here, before any data or training."""
    family, config, _ = config_for(SUPERVISED.get(method, method), 4000, args)
    genmodels.build(family, (1, 28, 28), 2, **config)


def lr_factor(cpu: float, budget: float, decay: float) -> float:
    """1, then linear to 0 over the last ``decay`` fraction of the CPU budget."""
    if decay <= 0:
        return 1.0
    return max(0.0, min(1.0, (1.0 - cpu / budget) / decay))


def train_run(
    method: str,
    n_labels: int,
    draw: int,
    data,
    budget: float,
    args,
) -> dict:
    """Train one run for ``budget`` CPU-seconds; its final weights classify the test split (the
    validation split with ``--dev``)."""
    base = SUPERVISED.get(method, method)
    x_train, y_train = (torch.from_numpy(a) for a in data.numpy("train"))
    x_test, y_test = (torch.from_numpy(a) for a in data.numpy(args.split))
    family, config, use_unlabelled = config_for(base, len(y_train), args)
    if method in SUPERVISED:
        labelled = np.arange(len(y_train))
    else:
        labelled = draw_labelled(y_train.numpy(), n_labels, seed=draw_seed(args, draw))
    seed = draw_seed(args, draw)
    torch.manual_seed(seed)
    model = genmodels.build(family, data.input_shape, data.levels, **config)
    opt = model.configure_optimizers()
    lr0 = {phase: [group["lr"] for group in o.param_groups] for phase, o in opt.items()}
    g = torch.Generator().manual_seed(seed)
    lab = torch.from_numpy(labelled)
    order, pos = lab[torch.randperm(len(lab), generator=g)], 0
    steps, cpu0, wall0 = 0, time.process_time(), time.monotonic()
    model.train()
    while (elapsed := time.process_time() - cpu0) < budget:
        factor = lr_factor(elapsed, budget, args.lr_decay)
        for phase, o in opt.items():
            for group, lr in zip(o.param_groups, lr0[phase], strict=True):
                group["lr"] = lr * factor
        xs, ys = [], []
        if use_unlabelled:
            idx = torch.randint(len(x_train), (args.unlabelled_batch,), generator=g)
            xs.append(x_train[idx])
            ys.append(torch.full((len(idx),), -1, dtype=torch.long))
        take = []
        while len(take) < min(args.labelled_batch, len(lab)):
            if pos == len(order):
                order, pos = lab[torch.randperm(len(lab), generator=g)], 0
            n = min(args.labelled_batch - len(take), len(order) - pos)
            take.extend(order[pos : pos + n].tolist())
            pos += n
        xs.append(x_train[take])
        ys.append(y_train[take])
        batch = {"x": torch.cat(xs), "y": torch.cat(ys)}
        for phase in model.phases:
            opt[phase].zero_grad(set_to_none=True)
            model(batch, phase=phase)["loss"].backward()
            opt[phase].step()
        steps += 1
    cpu = time.process_time() - cpu0
    model.eval()
    with torch.no_grad():
        log_p = torch.cat([model.classify(x_test[i : i + 250]) for i in range(0, len(x_test), 250)])
    acc = (log_p.argmax(1) == y_test).float().mean().item()
    nll = -log_p[torch.arange(len(y_test)), y_test].mean().item()
    return {
        "method": method,
        "tag": args.tag,
        "family": family,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "labels": len(labelled),
        "draw": draw,
        "labelled_rows_sha": hash_rows(labelled),
        "split": args.split,
        f"{args.split}_accuracy": acc,
        f"{args.split}_error": 1.0 - acc,
        f"{args.split}_nll": nll,
        "steps": steps,
        "train_cpu_seconds": round(cpu, 1),
        "train_wall_seconds": round(time.monotonic() - wall0, 1),
        "budget_cpu_seconds": budget,
        "unlabelled_batch": args.unlabelled_batch if use_unlabelled else 0,
        "labelled_batch": args.labelled_batch,
        "lr_decay_fraction": args.lr_decay,
        "threads": torch.get_num_threads(),
        "dataset_fingerprint": data.fingerprint,
    }


def method_budget(method: str, args) -> float:
    """CPU-s for one run: ``--budget`` (or the method's entry in BUDGETS) for a semi-supervised
    method; for a labels-only or supervised row ``--baseline-budget``, by default a quarter of its
    semi-supervised counterpart's (ssgan-shift2-labels-only: 960 / 4)."""
    base = SUPERVISED.get(method, method)
    semi = base.removesuffix("-labels-only")
    budget = args.budget or BUDGETS.get(semi, DEFAULT_BUDGET)
    if METHODS[base][2]:
        return budget
    return args.baseline_budget or budget / 4


def draw_seed(args, draw: int) -> int:
    """The seed of a draw's labels and training: ``--dev`` draws are disjoint from the test ones."""
    return 1000 * args.seed + draw + (DEV_SEED_OFFSET if args.split == "validation" else 0)


def rows_name(dev: bool) -> str:
    """The folder (under ``--results``) of the test rows, or of the ``--dev`` rows."""
    return ROWS.name + ("-dev" if dev else "")


def hash_rows(rows: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:16]


def write_tables(meta: dict, results: Path = RESULTS, dev: bool = False) -> dict:
    """Merge the rows into ``semisupervised.{json,md}`` (test) or ``semisupervised-dev.md``
    (``--dev``: validation accuracy, grouped by budget as well, for choosing the schedule)."""
    name, split = rows_name(dev), "validation" if dev else "test"
    runs = [json.loads(f.read_text()) for f in sorted((results / name).glob("*.json"))]
    summary: dict[str, dict] = {}
    for r in runs:
        tag = r.get("tag", "")
        key = f"{r['method']}@{r['labels']}" + (
            f"@{r['budget_cpu_seconds']:g}@{tag}" if dev else ""
        )
        summary.setdefault(
            key, {"method": r["method"], "tag": tag, "labels": r["labels"], "runs": []}
        )
        summary[key]["runs"].append(r)
    for s in summary.values():
        accs = [r[f"{split}_accuracy"] for r in s["runs"]]
        s["mean_accuracy"] = statistics.fmean(accs)
        s["sd_accuracy"] = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        s["draws"] = len(accs)
        s["mean_steps"] = statistics.fmean(r["steps"] for r in s["runs"])
        s["budget_cpu_seconds"] = s["runs"][0]["budget_cpu_seconds"]
    if not dev:
        (results / "semisupervised.json").write_text(
            json.dumps({"meta": meta, "summary": summary}, indent=1)
        )
    lines = [
        "# Semi-supervised classification: few labels on the bundled MNIST"
        + (" (dev runs: validation split, dev label draws)" if dev else ""),
        "",
        f"{split.capitalize()} accuracy (500 digits) of the FINAL weights after a fixed CPU "
        "budget per run (no",
        "selection on validation or test), mean ± sd over label draws. Written by",
        "`benchmarks/semisupervised.py`; the method is in its docstring.",
        "",
        f"| method | train labels | {split} accuracy | draws | steps (mean) | CPU-s / run |",
        "|---|---|---|---|---|---|",
    ]
    order = [*METHODS, *SUPERVISED]
    for s in sorted(
        summary.values(),
        key=lambda s: (s["labels"], order.index(s["method"]), s["budget_cpu_seconds"], s["tag"]),
    ):
        label = s["method"] + (f" [{s['tag']}]" if s["tag"] else "")
        sd = "" if s["draws"] < 2 else f" ± {100 * s['sd_accuracy']:.1f}"
        lines.append(
            f"| {label} | {s['labels']} | {100 * s['mean_accuracy']:.1f}%{sd} | "
            f"{s['draws']} | {s['mean_steps']:.0f} | {s['budget_cpu_seconds']:g} |"
        )
    lines += [
        "",
        f"Settings: {meta.get('settings', '')}",
        "",
        f"Data: {meta['dataset']} (fingerprint {meta['dataset_fingerprint'][:12]}), "
        f"{meta['threads']} thread(s), {meta['machine']}. Published (full MNIST, 60,000 digits, "
        "100 labels): K+1 GAN with feature matching 0.93% error (Salimans et al. 2016); "
        "M2 11.97% error, M1+M2 3.33% (Kingma et al. 2014).",
    ]
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", action="append", choices=[*METHODS, *SUPERVISED])
    ap.add_argument("--labels", action="append", type=int, help="train labels (default 100, 1000)")
    ap.add_argument("--draws", type=int, default=5, help="label draws per setting")
    ap.add_argument("--draw", action="append", type=int, help="only these draws (repeatable)")
    ap.add_argument(
        "--budget",
        type=float,
        help="CPU-s per semi-supervised run (default: 240, ssgan-shift2 960)",
    )
    ap.add_argument("--baseline-budget", type=float, help="CPU-s per baseline run (budget/4)")
    ap.add_argument("--unlabelled-batch", type=int, default=100)
    ap.add_argument("--labelled-batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--m2-alpha-scale", type=float, default=0.1, help="M2 alpha / N (Kingma)")
    ap.add_argument("--ema-decay", type=float, default=0.99, help="ssgan Polyak decay")
    ap.add_argument(
        "--lr-decay", type=float, default=1 / 3, help="lr to 0 over this end fraction (0: off)"
    )
    ap.add_argument("--note", default="", help="free text added to the table's settings line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true", help="only rewrite the tables from the rows")
    ap.add_argument(
        "--dev",
        action="store_true",
        help="score the validation split, dev label draws (seed + 1000): for choosing schedules",
    )
    add_set_option(
        ap, "--dev: override a config value of the chosen methods (repeatable; needs --tag)"
    )
    ap.add_argument("--tag", default="", help="--dev: names the --set rows (files and table)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where rows and tables go")
    args = ap.parse_args()
    if (args.set or args.tag) and not args.dev:
        ap.error("--set and --tag are for --dev runs (the test table compares the fixed recipes)")
    if bool(args.set) != bool(args.tag):
        ap.error("--set needs --tag (and --tag a --set): the tag names the changed rows")
    args.split = "validation" if args.dev else "test"
    methods = args.method or [*METHODS, *SUPERVISED]
    check_set(
        ap,
        args.set,
        {"alpha": "--m2-alpha-scale sets it", "ema_decay": "--ema-decay sets it"},
        lambda _: [build_probe(m, args) for m in methods],
    )
    torch.set_num_threads(args.threads)
    settings = args.labels or [100, 1000]

    from pipelines.data import prepare_dataset
    from pipelines.uses import ArrayDataset

    data = ArrayDataset(prepare_dataset("mnist", binarize="fixed", seed=args.seed))  # no Ray
    meta = {
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "m2_alpha_scale": args.m2_alpha_scale,
        "ssgan_ema_decay": args.ema_decay,
        "lr_decay_fraction": args.lr_decay,
        "settings": (
            f"batches of {args.unlabelled_batch} unlabelled + {args.labelled_batch} labelled "
            f"digits; lr linear to 0 over the last {args.lr_decay:.3g} of the budget; ssgan "
            f"Polyak decay {args.ema_decay:g}; M2 alpha {args.m2_alpha_scale:g} x N per "
            f"labelled row. {args.note}"
        ).strip(),
    }
    rows_dir = args.results / rows_name(args.dev)
    rows_dir.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for method in methods:
            runs = (
                [(len(data.numpy("train")[1]), 0)]
                if method in SUPERVISED
                else [(n, d) for n in settings for d in (args.draw or range(args.draws))]
            )
            for n, d in runs:
                budget = method_budget(method, args)
                row = train_run(method, n, d, data, budget, args)
                stem = f"{method}-{n}-{d}" + (f"-{budget:g}s" if args.dev else "")
                stem += f"-{args.tag}" if args.tag else ""
                (rows_dir / f"{stem}.json").write_text(json.dumps(row))
                print(
                    f"{method} labels={n} draw={d}: {args.split} accuracy "
                    f"{100 * row[f'{args.split}_accuracy']:.1f}% "
                    f"({row['steps']} steps, {row['train_cpu_seconds']} CPU-s)",
                    flush=True,
                )
    summary = write_tables(meta, args.results, dev=args.dev)
    for s in summary.values():
        print(f"{s['method']}@{s['labels']}: {100 * s['mean_accuracy']:.1f}% over {s['draws']}")


if __name__ == "__main__":
    main()
