"""Class-conditional generation: does each conditional family make the digit it is asked for?

Each entry (the conditional variant, ``conditional=True``, of GAN = AC-GAN or the projection
discriminator, with and without spectral norm, conv or MLP pair; VAE = CVAE; MADE and PixelCNN;
the pinned configs of ``benchmarks/nll.py``) trains on the bundled MNIST subset (4,000 train
digits, fixed binarisation, every label) with a plain PyTorch loop for its budget of
CPU-seconds (``DEFAULT_BUDGET`` 240, or ``BUDGETS``, or ``--budget``; this process, one thread
by default) and keeps its final weights (a fixed schedule: nothing is
selected on validation or test). Then, for each class c of 0..9, ``--per-class`` samples are drawn
with ``condition={"label": c}`` and judged by the shared yardstick classifier
(``pipelines.quality``, trained on the real train split):

* **conditional accuracy**: the share of samples the yardstick classifies as the requested class
  (chance 10%), per class and on average;
* **per-class FD**: the yardstick Fréchet distance between the class-c samples and the same number
  of class-c train digits, averaged over classes (per class in the JSON rows);
* **train on synthetic, test on real** (TSTR): a fresh yardstick-architecture classifier trained
  on the generated, labelled samples (at least 10 epochs and 300 steps, seeded) and tested on the 500 real test digits.

An entry with a ``latent_temperature`` option (GAN, VAE) is also judged at each of its
``TEMPERATURES`` psi < 1 (``--temperature``), z ~ N(0, psi^2 I), on the same trained weights and
the same (scaled) draws: a row per temperature, so fidelity (accuracy) and diversity (class FD)
are read side by side.

Baseline row ``real`` in the same table, at the same counts: the yardstick's accuracy on
``--per-class`` real test digits per class (the ceiling of conditional accuracy), the FD of those
test digits to the class-c train digits (the floor of per-class FD at this sample count), and the
same TSTR classifier trained on ``--per-class`` real train digits per class.

    python benchmarks/conditional.py                       # every entry, 240 CPU-s each
    python benchmarks/conditional.py --family made --budget 30 --per-class 20 --smoke
    python benchmarks/conditional.py --dev --family gan-mlp-sn --budget 240   # a dev row
    python benchmarks/conditional.py --dev --family vae-cvae --temperature 0.8 --temperature 0.6

Rows go to ``benchmarks/results/conditional/<entry>.json`` and the table to
``benchmarks/results/conditional.md`` (``--smoke`` writes under ``conditional-smoke``).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nll

import genmodels
from genmodels.base import check_latent_temperature
from genmodels.quality import _features_and_logits, frechet_distance, train_yardstick

NUM_CLASSES = 10
# entry -> (family, config): the likelihood benchmark's pinned configs, made conditional.
# The CVAE trains with kl_weight beta = 2 (genmodels.vae): chosen among beta in {1, 2, 4, 8} on
# dev runs (seed 0, 100 other samples per class; /tmp scripts, figures in the README): at 80
# epochs 0.81 / 0.89 / 0.85 / (8: 0.58 at 40) conditional accuracy. GAN: AC-GAN (the class loss)
# and the projection discriminator (Miyato & Koyama 2018; no class loss).
DEFAULT_BUDGET = 240.0
# CPU-s per entry where it is not DEFAULT_BUDGET (chosen on --dev rows: see the README)
# (dev rows, seed 1, 100 samples per class: gan-projection-sn 0.70 at 240, 0.86 at 600;
# gan-mlp-sn 0.90 at 240, 0.93 at 600; without spectral norm 0.65 / 0.56 (conv, 240 / 600) and
# 0.81 / 0.88 (MLP))
BUDGETS: dict[str, float] = {"gan-projection-sn": 600.0, "gan-mlp-sn": 600.0}
# latent temperatures judged besides 1 (the sampler's own), from the same weights (--temperature
# overrides; families with ``latent_temperature`` only), chosen on --dev rows (ψ in 0.4..0.9,
# results/conditional-dev.md) by one rule: the ψ whose dev accuracy is closest to the yardstick's
# accuracy on real validation digits (0.972), ties to the larger ψ: samples as recognisable as
# real digits and no more (maximising accuracy would reward collapse). vae-cvae 0.6 (dev 0.970,
# class FD 8.66; at 1: 0.923 / 8.57); gan-mlp-sn 0.7 (0.977 / 5.31; at 1: 0.937 / 6.30).
TEMPERATURES: dict[str, list[float]] = {"vae-cvae": [0.6], "gan-mlp-sn": [0.7]}
ENTRIES: dict[str, tuple[str, dict]] = {
    "gan-acgan": ("gan", nll.ENTRIES["gan"][2]),
    "gan-projection": ("gan", {**nll.ENTRIES["gan"][2], "projection": True, "aux_weight": 0.0}),
    "gan-projection-sn": (
        "gan",
        {**nll.ENTRIES["gan"][2], "projection": True, "aux_weight": 0.0, "spectral_norm": True},
    ),
    "gan-mlp-sn": (
        "gan",
        {
            **nll.ENTRIES["gan"][2],
            "arch": "mlp",
            "hidden_size": 512,
            "projection": True,
            "aux_weight": 0.0,
            "spectral_norm": True,
        },
    ),
    "vae-cvae": ("vae", {**nll.ENTRIES["vae"][2], "kl_weight": 2.0}),
    "made": ("made", nll.ENTRIES["made"][2]),
    "pixelcnn": ("pixelcnn", nll.ENTRIES["pixelcnn"][2]),
}


def train(entry: str, data, budget_s: float, batch_size: int, seed: int):
    """The entry's conditional model after ``budget_s`` CPU-seconds of training (final weights)."""
    family, config = ENTRIES[entry]
    torch.manual_seed(seed)
    model = genmodels.build(
        family, data.input_shape, data.levels, conditional=True, num_classes=NUM_CLASSES, **config
    )
    opt = model.configure_optimizers()
    x_np, y_np = data.numpy("train")
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    g = torch.Generator().manual_seed(seed)
    spent, steps, epochs, wall0 = 0.0, 0, 0, time.monotonic()
    model.train()
    while spent < budget_s:
        cpu0 = time.process_time()
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if spent + time.process_time() - cpu0 >= budget_s:
                break
            batch = {"x": x[idx], "y": y[idx]}
            for phase in model.phases:
                opt[phase].zero_grad(set_to_none=True)
                model(batch, phase=phase)["loss"].backward()
                opt[phase].step()
            steps += 1
        spent += time.process_time() - cpu0
        epochs += 1
        print(f"{entry}: epoch {epochs} ({spent:.0f} CPU s, {steps} steps)", flush=True)
    facts = {
        "train_cpu_seconds": round(spent, 1),
        "train_wall_seconds": round(time.monotonic() - wall0, 1),
        "steps": steps,
        "epochs": epochs,
    }
    return model.eval(), facts


def judge(yardstick, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The yardstick's features ``(N, F)`` and predicted classes ``(N,)``."""
    feats, logits = _features_and_logits(yardstick.classifier.eval(), x.float(), 500)
    return feats, logits.argmax(1)


def scores(yardstick, data, x: torch.Tensor, y: torch.Tensor, seed: int, tstr: bool = True) -> dict:
    """Conditional accuracy, per-class FD to the class's train digits, and TSTR accuracy of
    labelled examples ``x``, ``y`` (generated, or the real baseline's)."""
    x_train, y_train = (torch.from_numpy(a) for a in data.numpy("train"))
    x_test, y_test = (torch.from_numpy(a) for a in data.numpy("test"))
    feats, pred = judge(yardstick, x)
    acc, fds = [], []
    for c in range(NUM_CLASSES):
        rows = y == c
        acc.append((pred[rows] == c).float().mean().item())
        ref = x_train[y_train == c][: int(rows.sum())]
        fds.append(frechet_distance(feats[rows], judge(yardstick, ref)[0]))
    out = {
        "cond_accuracy": float(np.mean(acc)),
        "cond_accuracy_per_class": acc,
        "class_fd": float(np.mean(fds)),
        "class_fd_per_class": fds,
    }
    if tstr:
        epochs = max(10, math.ceil(300 * 64 / len(x)))  # at least 300 steps of 64 examples
        clf, _ = train_yardstick(
            x.float(),
            y,
            tuple(data.input_shape),
            data.levels,
            NUM_CLASSES,
            seed=seed,
            epochs=epochs,
        )
        with torch.no_grad():
            out["tstr_accuracy"] = (clf(x_test.float()).argmax(1) == y_test).float().mean().item()
    return out


def entry_budget(entry: str, args) -> float:
    """CPU-s of training for ``entry``: ``--budget`` if given, else BUDGETS or DEFAULT_BUDGET."""
    return args.budget if args.budget is not None else BUDGETS.get(entry, DEFAULT_BUDGET)


def entry_temperatures(entry: str, args) -> list[float]:
    """The latent temperatures ``entry`` is judged at: 1 (its own sampler), then ``--temperature``
    if given, else its TEMPERATURES."""
    extra = args.temperature if args.temperature is not None else TEMPERATURES.get(entry, [])
    return [1.0] + [t for t in extra if t != 1.0]


def run_entry(entry: str, data, yardstick, args) -> list[tuple[str, dict]]:
    """Train ``entry`` once and judge its samples at each of its temperatures: ``(stem, row)``
    pairs, the stem naming the row's file (and its line in the table)."""
    # dev runs (--dev): another training seed and other sample draws, and no TSTR (it reads the
    # test split); the yardstick and the class FD read only the train split
    train_seed = args.seed + 1 if args.dev else args.seed
    budget = entry_budget(entry, args)
    model, facts = train(entry, data, budget, args.batch_size, train_seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(args.per_class)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in ENTRIES[entry][1].items()}
    out = []
    for psi in entry_temperatures(entry, args):
        if psi != 1.0:  # sampling only: the trained weights are the same
            genmodels.set_latent_temperature(model, psi)
        # the same draws at every temperature (scaled codes): a paired comparison
        g = torch.Generator().manual_seed(args.seed + (1001 if args.dev else 1))
        cpu0, parts = time.process_time(), []
        with torch.no_grad():
            for chunk in labels.split(100):
                parts.append(model.sample(len(chunk), generator=g, condition={"label": chunk}))
        sample_cpu = time.process_time() - cpu0
        x = torch.cat(parts).float()
        row = {
            "entry": entry,
            "family": ENTRIES[entry][0],
            "config": config,
            "latent_temperature": psi,
            **facts,
            "per_class": args.per_class,
            "sample_cpu_s_per_100": round(100 * sample_cpu / len(x), 2),
            **scores(yardstick, data, x, labels, args.seed, tstr=not args.dev),
            "yardstick": yardstick.method,
            "dataset_fingerprint": data.fingerprint,
            "dev": args.dev,
        }
        row["picture"] = encode_picture(x, labels)
        tstr = f", TSTR {row['tstr_accuracy']:.3f}" if "tstr_accuracy" in row else ""
        print(
            f"{entry} (temperature {psi:g}): accuracy {row['cond_accuracy']:.3f}, "
            f"class FD {row['class_fd']:.2f}{tstr}",
            flush=True,
        )
        stem = f"{entry}-{budget:g}s" if args.dev else entry
        out.append((stem if psi == 1.0 else f"{stem}-t{psi:g}", row))
    return out


def real_baseline(data, yardstick, args) -> dict:
    """The same measures on real digits: test digits judged, train digits for TSTR."""
    x_test, y_test = (torch.from_numpy(a) for a in data.numpy("test"))
    x_train, y_train = (torch.from_numpy(a) for a in data.numpy("train"))
    pick_test, pick_train = [], []
    for c in range(NUM_CLASSES):
        pick_test.append((y_test == c).nonzero().squeeze(1)[: args.per_class])
        pick_train.append((y_train == c).nonzero().squeeze(1)[-args.per_class :])
    t, r = torch.cat(pick_test), torch.cat(pick_train)
    judged = scores(yardstick, data, x_test[t], y_test[t], args.seed, tstr=False)
    tstr = scores(yardstick, data, x_train[r], y_train[r], args.seed)["tstr_accuracy"]
    return {"entry": "real", **judged, "tstr_accuracy": tstr, "per_class_test": len(t)}


PICTURE_PER_CLASS = 6
PICTURE = Path(__file__).resolve().parents[1] / "docs" / "img" / "conditional.png"


def encode_picture(x: torch.Tensor, labels: torch.Tensor) -> dict:
    """The first ``PICTURE_PER_CLASS`` judged samples of each class, bit-packed and base64'd
    into the row (so the README picture is built from the rows, whichever run wrote them)."""
    cells = torch.stack([x[labels == c][:PICTURE_PER_CLASS] for c in range(NUM_CLASSES)])
    bits = (cells > 0).numpy().astype(np.uint8)
    return {"shape": list(bits.shape), "bits": base64.b64encode(np.packbits(bits)).decode()}


def write_picture(rows: dict, path: Path) -> None:
    """One block per row (entry, temperature), one line per class, its first samples."""
    from PIL import Image, ImageDraw

    blocks = [(name, r["picture"]) for name, r in rows.items() if "picture" in r]
    if not blocks:
        return
    shape = blocks[0][1]["shape"]  # (classes, per class, C, H, W)
    k, h, w = shape[1], shape[-2], shape[-1]
    gap, head, left = 10, 28, 18
    bw = k * w + gap
    img = Image.new("L", (left + len(blocks) * bw, head + NUM_CLASSES * h), 255)
    draw = ImageDraw.Draw(img)
    for c in range(NUM_CLASSES):
        draw.text((4, head + c * h + h // 2 - 6), str(c), fill=0)
    for b, (name, pic) in enumerate(blocks):
        n = int(np.prod(pic["shape"]))
        bits = np.unpackbits(np.frombuffer(base64.b64decode(pic["bits"]), np.uint8))[:n]
        cells = bits.reshape(pic["shape"])[:, :, 0]
        x0 = left + b * bw
        draw.text((x0, 4), name.replace(", temperature ", ", psi "), fill=0)
        for c in range(NUM_CLASSES):
            for j in range(cells.shape[1]):
                tile = Image.fromarray((255 * (1 - cells[c, j])).astype(np.uint8))
                img.paste(tile, (x0 + j * w, head + c * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def temperature_note(row: dict) -> str:
    """``", temperature 0.6"`` for a row judged below the sampler's own temperature, else ``""``."""
    psi = row.get("latent_temperature", 1.0)
    return "" if psi == 1.0 else f", temperature {psi:g}"


def write_table(rows: dict, base: dict, out: Path, meta: dict) -> None:
    lines = [
        "# Class-conditional generation (bundled MNIST, binarised)",
        "",
        f"Training: {meta['budget']}, final weights; {meta['per_class']} samples "
        f"per class; judge: {meta['yardstick']}. Chance accuracy 0.10.",
        "",
        "| entry | cond. accuracy | class FD (lower better) | TSTR accuracy | train CPU-s "
        "| sample CPU-s / 100 |",
        "|---|---|---|---|---|---|",
    ]
    for e, r in rows.items():
        tstr = f"{r['tstr_accuracy']:.3f}" if "tstr_accuracy" in r else "-"
        lines.append(
            f"| {e} | {r['cond_accuracy']:.3f} | {r['class_fd']:.2f} | {tstr} "
            f"| {r['train_cpu_seconds']} | {r['sample_cpu_s_per_100']} |"
        )
    if base is not None:
        lines.append(
            f"| real digits (baseline) | {base['cond_accuracy']:.3f} | {base['class_fd']:.2f} "
            f"| {base['tstr_accuracy']:.3f} | - | - |"
        )
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", help="entry (repeatable); default every entry")
    ap.add_argument(
        "--budget", type=float, help=f"training CPU-s per entry (default {DEFAULT_BUDGET}, BUDGETS)"
    )
    ap.add_argument("--per-class", type=int, default=100, help="samples per class")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="write under conditional-smoke")
    ap.add_argument(
        "--dev",
        action="store_true",
        help="dev runs for choices: training seed + 1, other sample draws, no TSTR (no test "
        "digit read); rows per budget under conditional-dev",
    )
    ap.add_argument(
        "--temperature",
        type=float,
        action="append",
        help="also judge samples at this latent temperature, from the same weights (repeatable; "
        "default the entry's TEMPERATURES; families with a latent_temperature option only)",
    )
    ap.add_argument(
        "--table", action="store_true", help="only rewrite the table from the stored rows"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    entries = [] if args.table else args.family or list(ENTRIES)
    unknown = [e for e in entries if e not in ENTRIES]
    if unknown:
        raise SystemExit(f"unknown entry {unknown}; known: {', '.join(ENTRIES)}")
    for entry in entries:
        family = ENTRIES[entry][0]
        psis = entry_temperatures(entry, args)
        try:
            for t in psis:
                check_latent_temperature("--temperature", t)
        except ValueError as e:
            ap.error(str(e))
        if len(psis) > 1 and "latent_temperature" not in genmodels.make_config(family).__dict__:
            ap.error(f"--temperature: entry {entry} ({family}) has no latent_temperature")
    if args.per_class < 3:
        raise SystemExit("--per-class must be >= 3 (a covariance per class)")

    from pipelines.data import prepare_dataset
    from pipelines.quality import yardstick_for
    from pipelines.uses import ArrayDataset

    data = ArrayDataset(prepare_dataset("mnist", binarize="fixed", seed=args.seed))  # no Ray
    yardstick = yardstick_for(data, seed=args.seed)
    name = "conditional-smoke" if args.smoke else "conditional-dev" if args.dev else "conditional"
    rows_dir = nll.RESULTS / name
    rows_dir.mkdir(parents=True, exist_ok=True)
    base = None
    if args.table and (rows_dir / "real.json").exists():
        base = json.loads((rows_dir / "real.json").read_text())
    elif not (args.dev or args.table):  # the real row reads test digits
        base = real_baseline(data, yardstick, args)
        (rows_dir / "real.json").write_text(json.dumps(base))
    for entry in entries:
        for stem, row in run_entry(entry, data, yardstick, args):
            (rows_dir / f"{stem}.json").write_text(json.dumps(row))
    found = {f.stem: json.loads(f.read_text()) for f in sorted(rows_dir.glob("*.json"))}
    kept = [
        (stem, r)
        for stem, r in found.items()
        if r.get("entry") in ENTRIES and r.get("per_class") == args.per_class
    ]  # the real row ("entry": "real") and rows of retired entries drop out here
    order = list(ENTRIES)

    def place(kv: tuple[str, dict]) -> tuple:  # by entry, then run, then falling temperature
        stem, r = kv
        psi = r.get("latent_temperature", 1.0)
        run = stem if psi == 1.0 else stem.removesuffix(f"-t{psi:g}")
        return order.index(r["entry"]), run, -psi

    rows = dict(sorted(kept, key=place))
    if args.dev:
        rows = {
            f"{r['entry']} ({r['train_cpu_seconds']:.0f} CPU-s{temperature_note(r)})": r
            for r in rows.values()
        }
    else:
        rows = {f"{r['entry']}{temperature_note(r)}": r for r in rows.values()}
    budget = (
        f"{args.budget:g} CPU-s per entry"
        if args.budget is not None
        else f"{DEFAULT_BUDGET:g} CPU-s per entry"
        + "".join(f", {e} {b:g}" for e, b in BUDGETS.items() if e in rows or args.dev)
    )
    if args.dev:
        budget += " (dev: training seed + 1, other sample draws, no TSTR)"
    meta = {"budget": budget, "per_class": args.per_class, "yardstick": yardstick.method}
    write_table(rows, base, nll.RESULTS / f"{name}.md", meta)
    if name == "conditional":
        write_picture(rows, PICTURE)
    print(f"table: {nll.RESULTS / f'{name}.md'}")


if __name__ == "__main__":
    main()
