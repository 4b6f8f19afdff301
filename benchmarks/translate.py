"""Image-to-image translation: pix2pix (paired), CycleGAN and UNIT (unpaired) on digit ↔ edge and
digit ↔ negative, beside the all-zeros output and the identity map.

Data: the bundled MNIST (5,000 digits: 4,000 train / 500 validation / 500 test, the pair
datasets' split, ``pipelines.pairs``), binarised by a threshold at 1/2. Domain a is the digit;
domain b its transform: ``edge`` = dilate(x, 3x3) - x (CoGAN's edge), ``negative`` = 1 - x.

Runs (each in this process, a plain PyTorch loop over the family's phases and its own optimisers,
``--budget`` CPU-seconds on one thread, the FINAL weights kept: nothing is selected on
validation or test; the validation figures are reported only):

* ``pix2pix-<t>`` on the paired train split (x = digit, x_target = transform): digit → t;
* ``pix2pix-<t>-reverse`` on the same pairs swapped: t → digit (pix2pix maps one way);
* ``cyclegan-<t>`` on the unpaired train split: x from one half of the train digits, x_target
  the transform of the *other* half (``mnist-<t>-unpaired``: no pair exists in training); one
  model maps both ways (a2b: digit → t, b2a: t → digit);
* ``unit-<t>``: UNIT (``genmodels.unit``, shared-latent encoders/decoders) on the same unpaired
  split, both ways.

Schedule, fixed for every run (the papers' shape, never tuned on a score): the family's default
config (Adam 1e-3, beta1 0.5; pix2pix 100 x the Bernoulli log-loss + adversarial; CycleGAN 10
x the cycle log-loss + adversarial, no identity term (``identity_weight`` 0); see the
families' docstrings for why not the papers' L1 and 2e-4) but U-Nets of width ``--channels``
16 (the default 32 costs 2-3x the CPU per step, and both transforms are local: a 3x3
neighbourhood decides each output pixel), batches of ``--batch`` (64) drawn with replacement,
the learning rate constant for the first half of the CPU budget and linear to 0 over the
second half (as both papers' code).

Metrics per direction on the 500 test pairs (the translation is deterministic: p > 1/2):

* **IoU** of the foreground (pixels = 1) against the true transform, per digit, averaged (two
  empty foregrounds count as 1);
* **L1**: mean absolute pixel difference against the truth (= the share of wrong pixels);
* **label kept**: the share of translated test images that a yardstick classifier of the
  *target* domain (the shared yardstick architecture, ``genmodels.quality.train_yardstick``,
  trained on that domain's 4,000 train images and their labels) labels as the source digit's
  class. Its ceiling is the ``truth`` row: the same classifier on the true target images.

Sanity rows in the same table: ``zeros`` (an all-zeros output) and ``identity`` (output = input)
must score badly on edges (their IoU is 0 by construction: the edge excludes the digit).

    python benchmarks/translate.py --budget 240 --run pix2pix-edge ...   # pix2pix runs
    python benchmarks/translate.py --budget 600 --run cyclegan-negative   # CycleGAN (~3x/step)
    python benchmarks/translate.py --budget 1200 --run cyclegan-edge
    python benchmarks/translate.py --run pix2pix-edge --budget 20 --results /tmp/tr   # smoke
    python benchmarks/translate.py --table                   # rewrite table and picture

Rows go to ``benchmarks/results/translate/<run>.json`` (separate processes may train different
runs), the table to ``benchmarks/results/translate.md`` / ``.json`` and the picture (per
direction: source | pix2pix | CycleGAN | UNIT | truth) to ``docs/img/translate.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import genmodels
from benchmarks.common import add_set_option, check_set
from genmodels.pix2pix import foreground_iou, mean_l1
from genmodels.quality import _accuracy, train_yardstick

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PICTURE = ROOT.parent / "docs" / "img" / "translate.png"
TRANSFORMS = ("edge", "negative")
SHOWN = 8  # test digits kept per direction for the picture
SHOWN_FAMILIES = ("pix2pix", "cyclegan", "unit")  # the picture's rows between source and truth

# run -> (family, transform, mode, reversed pairs)
RUNS: dict[str, tuple[str, str, str, bool]] = {}
for _t in TRANSFORMS:
    RUNS[f"pix2pix-{_t}"] = ("pix2pix", _t, "paired", False)
    RUNS[f"pix2pix-{_t}-reverse"] = ("pix2pix", _t, "paired", True)
    RUNS[f"cyclegan-{_t}"] = ("cyclegan", _t, "unpaired", False)
    RUNS[f"unit-{_t}"] = ("unit", _t, "unpaired", False)

TARGETS = {  # (transform, direction, method kind) -> (metric, at least)
    ("negative", "digit→negative", "pix2pix"): ("iou", 0.95),
    ("negative", "digit→negative", "cyclegan"): ("iou", 0.95),
    ("edge", "digit→edge", "pix2pix"): ("iou", 0.8),
    ("edge", "digit→edge", "cyclegan"): ("iou", 0.7),
    ("edge", "edge→digit", "pix2pix"): ("label_kept", 0.95),
    ("edge", "edge→digit", "cyclegan"): ("label_kept", 0.90),
}
for (_t, _d, _m), _v in list(TARGETS.items()):
    if _m == "cyclegan":  # every unpaired method has the unpaired targets
        TARGETS[(_t, _d, "unit")] = _v


def load(transform: str, mode: str, seed: int):
    from pipelines.pairs import prepare_pairs

    return prepare_pairs(f"mnist-{transform}-{mode}", seed=seed)


def lr_factor(cpu: float, budget: float) -> float:
    """1 for the first half of the budget, then linear to 0."""
    return max(0.0, min(1.0, 2.0 * (1.0 - cpu / budget)))


def train_run(run: str, budget: float, args) -> dict:
    family, transform, mode, swap = RUNS[run]
    data = load(transform, mode, args.seed)
    tr = {k: torch.from_numpy(v) for k, v in data.arrays("train").items()}
    if swap:
        tr["x"], tr["x_target"] = tr["x_target"], tr["x"]
    torch.manual_seed(args.seed)
    names = ("digit", transform) if not swap else (transform, "digit")
    model = genmodels.build(
        family,
        data.input_shape,
        data.levels,
        channels=args.channels,
        domain_a=names[0],
        domain_b=names[1],
        **dict(args.set or ()),
    )
    opt = model.configure_optimizers()
    lr0 = {p: [g["lr"] for g in o.param_groups] for p, o in opt.items()}
    g = torch.Generator().manual_seed(args.seed)
    n_a, n_b = len(tr["x"]), len(tr["x_target"])
    steps, cpu0, wall0 = 0, time.process_time(), time.monotonic()
    model.train()
    while (elapsed := time.process_time() - cpu0) < budget:
        f = lr_factor(elapsed, budget)
        for p, o in opt.items():
            for group, lr in zip(o.param_groups, lr0[p], strict=True):
                group["lr"] = lr * f
        ia = torch.randint(n_a, (args.batch,), generator=g)
        # paired: the same rows; unpaired: the other half's rows, drawn independently
        ib = ia if mode == "paired" else torch.randint(n_b, (args.batch,), generator=g)
        batch = {"x": tr["x"][ia], "x_target": tr["x_target"][ib]}
        for p in model.phases:
            opt[p].zero_grad(set_to_none=True)
            model(batch, phase=p)["loss"].backward()
            opt[p].step()
        steps += 1
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    model.eval()

    directions = []
    for d in model.directions:
        src_dom, dst_dom = (names[0], names[1]) if d == "a2b" else (names[1], names[0])
        directions.append((d, src_dom, dst_dom))
    row = {
        "run": run,
        "family": family,
        "transform": transform,
        "mode": mode,
        "config": dataclasses.asdict(model.config),
        "steps": steps,
        "batch": args.batch,
        "train_cpu_seconds": round(cpu, 1),
        "train_wall_seconds": round(wall, 1),
        "budget_cpu_seconds": budget,
        "threads": torch.get_num_threads(),
        "dataset_fingerprint": data.fingerprint,
        "directions": {},
    }
    for d, src_dom, dst_dom in directions:
        key = f"{src_dom}→{dst_dom}"
        for split in ("validation", "test"):
            arr = {k: torch.from_numpy(v) for k, v in data.arrays(split).items()}
            src = arr["x"] if src_dom == "digit" else arr["x_target"]
            truth = arr["x_target"] if src_dom == "digit" else arr["x"]
            with torch.no_grad():
                out = torch.cat(
                    [model.translate(src[i : i + 250], d) for i in range(0, len(src), 250)]
                )
            m = score(out, truth, arr["y"], dst_dom, transform, args.seed)
            row["directions"].setdefault(key, {"direction": d})[split] = m
            if split == "test":
                row["directions"][key]["shown"] = out[:SHOWN].to(torch.uint8).tolist()
    return row


_JUDGES: dict[tuple[str, str], torch.nn.Module] = {}


def judge(domain: str, transform: str, seed: int) -> torch.nn.Module:
    """The yardstick classifier of one domain ("digit" or the transform), trained once on that
    domain's train images (paired split: row i's image of the domain) and labels."""
    key = (domain, transform)
    if key in _JUDGES:
        return _JUDGES[key]
    from safetensors.torch import load_file, save_file

    from genmodels.quality import YardstickClassifier
    from pipelines.quality import cache_dir

    data = load(transform, "paired", seed)
    col = "x" if domain == "digit" else "x_target"
    path = cache_dir() / "translate-judges" / f"{domain}-{data.fingerprint}-{seed}.safetensors"
    config = {"input_shape": tuple(data.input_shape), "levels": data.levels, "num_classes": 10}
    if path.exists():
        model = YardstickClassifier(**config)
        model.load_state_dict(load_file(str(path)))
        _JUDGES[key] = model.eval()
    else:
        tr, va = data.arrays("train"), data.arrays("validation")
        model, info = train_yardstick(
            torch.from_numpy(tr[col]),
            torch.from_numpy(tr["y"]),
            tuple(data.input_shape),
            data.levels,
            x_val=torch.from_numpy(va[col]),
            y_val=torch.from_numpy(va["y"]),
            seed=seed,
        )
        print(f"judge for {domain}: validation accuracy {100 * info['val_accuracy']:.1f}%")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        _JUDGES[key] = model
    return _JUDGES[key]


def score(out, truth, y, dst_dom: str, transform: str, seed: int) -> dict:
    """IoU, L1 and label kept of translations ``out`` against ``truth`` (labels ``y``)."""
    return {
        "iou": foreground_iou(out, truth).mean().item(),
        "l1": mean_l1(out, truth).mean().item(),
        "label_kept": _accuracy(judge(dst_dom, transform, seed), out, y),
        "n": len(out),
    }


def baselines(transform: str, seed: int) -> dict:
    """``zeros``, ``identity`` and ``truth`` on the test pairs, both directions."""
    data = load(transform, "paired", seed)
    arr = {k: torch.from_numpy(v) for k, v in data.arrays("test").items()}
    rows: dict[str, dict] = {}
    for src_dom, dst_dom in (("digit", transform), (transform, "digit")):
        src = arr["x"] if src_dom == "digit" else arr["x_target"]
        truth = arr["x_target"] if src_dom == "digit" else arr["x"]
        key = f"{src_dom}→{dst_dom}"
        rows[key] = {
            "zeros": score(torch.zeros_like(truth), truth, arr["y"], dst_dom, transform, seed),
            "identity": score(src.clone(), truth, arr["y"], dst_dom, transform, seed),
            "truth": score(truth.clone(), truth, arr["y"], dst_dom, transform, seed),
            "source": src[:SHOWN].to(torch.uint8).tolist(),
            "target": truth[:SHOWN].to(torch.uint8).tolist(),
        }
    return rows


def write_tables(results: Path, args) -> dict:
    rows_dir = results / "translate"
    runs = {f.stem: json.loads(f.read_text()) for f in sorted(rows_dir.glob("*.json"))}
    base = {
        t: json.loads((rows_dir / f"baselines-{t}.json").read_text())
        for t in TRANSFORMS
        if (rows_dir / f"baselines-{t}.json").exists()
    }
    runs.pop("baselines-edge", None)
    runs.pop("baselines-negative", None)
    table: list[dict] = []
    lines = [
        "# Image-to-image translation on the bundled MNIST (test split, 500 pairs)",
        "",
        "Foreground IoU and L1 against the true transform, and the share of translations the",
        "target domain's yardstick labels as the source digit's class. Final weights after a fixed",
        "CPU budget (no selection). Written by `benchmarks/translate.py`; the method is in its",
        "docstring.",
        "",
        "| direction | method | training data | IoU | L1 | label kept | target | CPU-s | steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in TRANSFORMS:
        for key in (f"digit→{t}", f"{t}→digit"):
            entries = []
            for name in ("zeros", "identity", "truth"):
                if t in base:
                    entries.append((name, "—", base[t][key][name], None, None))
            for r in runs.values():
                if r["transform"] == t and key in r["directions"]:
                    d = r["directions"][key]
                    entries.append(
                        (r["family"], r["mode"], d["test"], r["train_cpu_seconds"], r["steps"])
                    )
            for name, mode, m, cpu, steps in entries:
                target = TARGETS.get((t, key, name))
                verdict = ""
                if target:
                    ok = m[target[0]] >= target[1]
                    verdict = f"{target[0]} ≥ {target[1]:g} {'✓' if ok else '✗'}"
                lines.append(
                    f"| {key} | {name} | {mode} | {m['iou']:.3f} | {m['l1']:.3f} | "
                    f"{100 * m['label_kept']:.1f}% | {verdict} | "
                    f"{'' if cpu is None else f'{cpu:.0f}'} | {'' if steps is None else steps} |"
                )
                table.append(
                    {
                        "direction": key,
                        "method": name,
                        "mode": mode,
                        **m,
                        "cpu_seconds": cpu,
                        "steps": steps,
                        "target": verdict,
                    }
                )
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads,
        "seed": args.seed,
    }
    lines += [
        "",
        f"{args.threads} thread(s), {meta['machine']}; batches of {args.batch}; lr constant, then "
        "linear to 0 over the second half of the budget. IoU of zeros and identity on edges is 0 "
        "by construction (the edge excludes the digit); `truth` is the ceiling of label kept.",
    ]
    (results / "translate.md").write_text("\n".join(lines) + "\n")
    (results / "translate.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=1))
    picture(runs, base, PICTURE if results == RESULTS else results / "translate.png")
    return {"rows": table}


def picture(runs: dict, base: dict, path: Path) -> None:
    """Per direction rows of ``SHOWN`` test images: source, one per family of ``SHOWN_FAMILIES``
    (blank where it has no run), truth."""
    from PIL import Image

    blocks = []
    for t in TRANSFORMS:
        if t not in base:
            continue
        for key in (f"digit→{t}", f"{t}→digit"):
            rows = [base[t][key]["source"]]
            for fam in SHOWN_FAMILIES:
                got = [  # the run of the stated budget first (``<run>.json``, not ``<run>-N``)
                    r["directions"][key]["shown"]
                    for _, r in sorted(runs.items(), key=lambda kv: len(kv[0]))
                    if r["family"] == fam and r["transform"] == t and key in r["directions"]
                ]
                rows.append(got[0] if got else np.zeros_like(base[t][key]["source"]).tolist())
            rows.append(base[t][key]["target"])
            blocks.append(np.asarray(rows, np.uint8)[:, :, 0])  # (rows, SHOWN, H, W)
    if not blocks:
        return
    n_rows, _, h, w = blocks[0].shape
    gap = 4
    height = sum(n_rows * (h + 1) + gap for _ in blocks)
    canvas = np.full((height, SHOWN * (w + 1) + 1), 128, np.uint8)
    y0 = 0
    for block in blocks:
        for r in range(n_rows):
            for c in range(SHOWN):
                y, x = y0 + 1 + r * (h + 1), 1 + c * (w + 1)
                canvas[y : y + h, x : x + w] = block[r, c] * 255
        y0 += n_rows * (h + 1) + gap
        canvas[y0 - gap : y0] = 255
    img = Image.fromarray(canvas, mode="L")
    img = img.resize((img.width * 3, img.height * 3), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", choices=list(RUNS))
    ap.add_argument("--budget", type=float, default=300.0, help="CPU-s per run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=16, help="U-Net width (families' default 32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    add_set_option(
        ap, "a config value of the runs' family (repeatable; VALUE read as JSON, else text)"
    )
    ap.add_argument("--tag", default="", help="appended to the rows' file names (-TAG)")
    ap.add_argument("--table", action="store_true", help="only rewrite the table and picture")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.budget <= 0 or args.batch < 1 or args.threads < 1:
        raise SystemExit("--budget, --batch and --threads must be positive")
    check_set(
        ap,
        args.set,
        {
            "channels": "--channels sets it",
            "domain_a": "the run names it",
            "domain_b": "the run names it",
        },
        lambda o: [
            genmodels.build(RUNS[r][0], (1, 28, 28), 2, channels=args.channels, **o)
            for r in args.run or RUNS
        ],
    )
    torch.set_num_threads(args.threads)
    rows_dir = args.results / "translate"
    rows_dir.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for t in TRANSFORMS:
            path = rows_dir / f"baselines-{t}.json"
            if not path.exists():
                path.write_text(json.dumps(baselines(t, args.seed)))
        for run in args.run or list(RUNS):
            row = train_run(run, args.budget, args)
            (rows_dir / f"{run}{'-' + args.tag if args.tag else ''}.json").write_text(
                json.dumps(row)
            )
            for key, d in row["directions"].items():
                m = d["test"]
                print(
                    f"{run} {key}: IoU {m['iou']:.3f}, L1 {m['l1']:.3f}, label kept "
                    f"{100 * m['label_kept']:.1f}% ({row['steps']} steps, "
                    f"{row['train_cpu_seconds']} CPU-s)",
                    flush=True,
                )
    write_tables(args.results, args)


if __name__ == "__main__":
    main()
