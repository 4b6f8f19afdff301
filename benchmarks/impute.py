"""Missing data: every family that imputes, on the same masked test digits, beside baselines.

The first ``--n`` (200) test digits of the bundled MNIST (fixed binarisation), five seeded mask
kinds from ``pipelines.masks`` (random50, random80, top-half, bottom-half, centre; stored with the
results as ``impute_masks.npz`` and fingerprinted), identical for every entry. Each entry's model
is trained here with the pinned config of ``benchmarks/nll.py`` for ``--train-budget``
CPU-seconds (best validation epoch; weights cached in ``benchmarks/results/models/impute-*``,
git-ignored) or loaded from that cache. Per entry and mask, at most ``--cap`` CPU-seconds of
imputation (the digits done within it are stated), ``--imputations`` (10) draws per digit:

* the yardstick classifier's accuracy on the first imputation and on the softmax averaged over
  all of them, beside its accuracy on the complete digits (ceiling) and on mean-filled digits
  (floor; the pixel means fed as probabilities); gap closed G = (acc − floor) / (ceiling − floor);
* Hamming error on the missing pixels (imputed samples vs truth, averaged over draws), squared
  error of the draws' mean (a probability) on the missing pixels, and the yardstick's Fréchet
  distance of the first imputations against the 500 test digits (a blurry fill can win on error
  and lose on FD);
* the mean log p(x_missing | x_observed) of the truth where a family has it, labelled;
* CPU seconds per 100 imputations.

Baselines in the same table: mean fill (the train split's pixel means; thresholded at 1/2 for
Hamming and FD) and k-nearest-neighbour fill (k = 5 train digits nearest on the observed pixels;
their mean is the probability, thresholded for Hamming and FD).

    python benchmarks/impute.py                          # every entry
    python benchmarks/impute.py --family made --family vae --train-budget 120
    python benchmarks/impute.py --table                  # rewrite impute.md from the rows
"""

from __future__ import annotations

import argparse
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
from pipelines.masks import MASK_KINDS, make_masks, masks_fingerprint

RESULTS = nll.RESULTS
ROWS = RESULTS / "impute"
IMG = nll.IMG

# The binary entries of the likelihood benchmark, plus Real NVP on the binary digits.
ENTRIES = {e: v for e, v in nll.ENTRIES.items() if v[1] != "none"}
ENTRIES["realnvp"] = ("realnvp", "fixed", nll.ENTRIES["realnvp-8bit"][2])


def get_model(entry: str, data, yardstick, budget: float, seed: int) -> tuple:
    """The entry's cached model, else one trained now (best validation epoch)."""
    nll.ENTRIES.setdefault(entry, ENTRIES[entry])
    name = f"impute-{entry}"
    model = nll.load_weights(name)
    if model is not None and "impute" in model.capabilities:
        return model, json.loads((nll.MODELS / f"{name}.facts.json").read_text())
    model, facts = nll.train_entry(entry, data, yardstick, budget, 100, "cpu", seed)
    model.prepare_scoring(torch.Generator().manual_seed(seed + 4343), final=True)
    nll.save_weights(model, name)
    facts = {k: v for k, v in facts.items() if k != "val_curve"}
    (nll.MODELS / f"{name}.facts.json").write_text(json.dumps(facts))
    return model.eval(), facts


def classifier_probs(yardstick, x: torch.Tensor) -> torch.Tensor:
    """The yardstick's class probabilities ``(N, K)`` for inputs in [0, 1] (probabilities ok)."""
    with torch.no_grad():
        return yardstick.classifier(x.float()).softmax(1)


def fd(yardstick, x: torch.Tensor) -> float:
    from genmodels.quality import sample_quality

    reference = torch.as_tensor(yardstick.reference["test"]).float()
    return sample_quality(yardstick.classifier, x.float(), reference).fd


def metrics(yardstick, x, y, mask, draws, probs=None) -> dict:
    """Scores of imputations ``draws`` (S, N, ...) of ``x`` (N, ...) under ``mask``."""
    missing = mask == 0
    n_miss = missing.sum().clamp_min(1)
    p = draws.float().mean(0) if probs is None else probs
    p_single = classifier_probs(yardstick, draws[0])
    p_multi = torch.stack([classifier_probs(yardstick, d) for d in draws]).mean(0)
    ham = torch.stack([((d != x) & missing).sum() for d in draws]).float().mean() / n_miss
    return {
        "acc_single": (p_single.argmax(1) == y).float().mean().item(),
        "acc_multi": (p_multi.argmax(1) == y).float().mean().item(),
        "hamming": ham.item(),
        "sq_error": (((p - x) ** 2) * missing).sum().item() / n_miss.item(),
        "fd": fd(yardstick, draws[0]),
    }


def knn_fill(x_train: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, k: int = 5):
    """Mean of the k train digits nearest to each ``x`` on its observed pixels."""
    xt, xf, mf = x_train.flatten(1), x.flatten(1), mask.flatten(1)
    out = []
    for i in range(len(x)):
        d = ((xt - xf[i]).abs() * mf[i]).sum(1)
        idx = d.topk(k, largest=False).indices
        out.append(xt[idx].mean(0))
    return torch.stack(out).view_as(x)


def run_entry(entry, data, yardstick, masks, x, y, args) -> dict:
    model, facts = get_model(entry, data, yardstick, args.train_budget, args.seed)
    row = {"entry": entry, "family": model.family, "training": facts, "masks": {}}
    for kind in MASK_KINDS:
        m = torch.from_numpy(masks[kind]).float()
        g = torch.Generator().manual_seed(args.seed)
        draws, lp, se, method, lp_method = [], [], [], None, None
        cpu0, done = time.process_time(), 0
        while done < len(x) and time.process_time() - cpu0 < args.cap:
            sl = slice(done, min(done + args.chunk, len(x)))
            with torch.no_grad():
                r = model.impute(x[sl], m[sl], generator=g, num_samples=args.imputations)
            draws.append(r.samples)
            method, lp_method = r.method, r.log_prob_method
            if r.log_prob_missing is not None:
                lp.append(r.log_prob_missing)
                se.append(
                    r.stderr if r.stderr is not None else torch.zeros(len(r.log_prob_missing))
                )
            done = sl.stop
        cpu = time.process_time() - cpu0
        d = torch.cat(draws, 1)
        res = metrics(yardstick, x[:done], y[:done], m[:done], d)
        if lp:
            lpm = torch.cat(lp)
            res["log_prob_missing"] = lpm.mean().item()
            res["log_prob_missing_se"] = (lpm.std() / math.sqrt(len(lpm))).item()
            res["log_prob_missing_method"] = lp_method
        res.update(
            n=done,
            method=method,
            cpu_s_per_100=100 * cpu / (done * args.imputations),
            cpu_s=round(cpu, 1),
        )
        row["masks"][kind] = res
        print(f"{entry} {kind}: {json.dumps(res)}", flush=True)
        if kind == "centre":
            row["picture_rows"] = d[:4, :6].numpy().astype(np.uint8).tolist()
    return row


def baselines(data, yardstick, masks, x, y) -> dict:
    x_train = torch.from_numpy(data.numpy("train")[0]).float()
    mean = x_train.mean(0, keepdim=True)
    rows = {"ceiling": {}, "mean-fill": {}, "knn-5": {}}
    for kind in MASK_KINDS:
        m = torch.from_numpy(masks[kind]).float()
        p_ceiling = classifier_probs(yardstick, x)
        rows["ceiling"][kind] = {
            "acc_single": (p_ceiling.argmax(1) == y).float().mean().item(),
            "fd": fd(yardstick, x),
        }
        for name, fill in (("mean-fill", mean.expand_as(x)), ("knn-5", knn_fill(x_train, x, m))):
            prob = torch.where(m.bool(), x, fill)
            hard = torch.where(m.bool(), x, (fill > 0.5).float())
            res = metrics(yardstick, x, y, m, hard[None], probs=prob)
            p = classifier_probs(yardstick, prob)  # the fill fed as probabilities
            res["acc_single"] = res["acc_multi"] = (p.argmax(1) == y).float().mean().item()
            res.update(n=len(x), method=name)
            rows[name][kind] = res
    return rows


def write_tables(rows: dict, baseline: dict, meta: dict) -> None:
    # The merged figures only: the picture's pixels stay in each entry's own row file.
    slim = {e: {k: v for k, v in r.items() if k != "picture_rows"} for e, r in rows.items()}
    out = {"meta": meta, "baselines": baseline, "entries": slim}
    (RESULTS / "impute.json").write_text(json.dumps(out, indent=1, sort_keys=True))
    lines = [
        f"Imputation of the first {meta['n']} test digits (bundled MNIST, fixed binarisation); "
        f"{meta['imputations']} imputations per digit; masks fingerprint {meta['masks_fp']}; "
        f"yardstick {meta['yardstick']}. G = gap closed between mean fill (0) and complete "
        "digits (1) in yardstick accuracy; ×10 = softmax averaged over the imputations.",
    ]
    notes: dict[str, str] = {}
    for kind in MASK_KINDS:
        ceil = baseline["ceiling"][kind]["acc_single"]
        floor = baseline["mean-fill"][kind]["acc_single"]
        lines += [
            f"\n### {kind}  (ceiling: complete digits {ceil:.3f}, FD {baseline['ceiling'][kind]['fd']:.2f})\n",
            "| entry | acc | acc ×10 | G | G ×10 | Hamming | sq. error | FD ↓ | "
            "log p(x_mis given x_obs) | CPU s / 100 | digits | method |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        table = {
            **{k: baseline[k] for k in ("mean-fill", "knn-5")},
            **{e: r["masks"] for e, r in rows.items()},
        }
        for name, per in table.items():
            r = per.get(kind)
            if r is None:
                continue
            gap = max(ceil - floor, 1e-9)
            g1, g10 = (r["acc_single"] - floor) / gap, (r["acc_multi"] - floor) / gap
            lp = "—"
            if "log_prob_missing" in r:
                how = r["log_prob_missing_method"] or "?"
                kind_ = how.split(":")[0].split()[0]
                notes.setdefault(how, f"[{len(notes) + 1}]")
                lp = (
                    f"{r['log_prob_missing']:.2f} ± {r['log_prob_missing_se']:.2f} "
                    f"({kind_} {notes[how]})"
                )
            cpu = f"{r['cpu_s_per_100']:.2f}" if "cpu_s_per_100" in r else "—"
            lines.append(
                f"| {name} | {r['acc_single']:.3f} | {r['acc_multi']:.3f} | {g1:.2f} | {g10:.2f} | "
                f"{r['hamming']:.3f} | {r['sq_error']:.3f} | {r['fd']:.2f} | {lp} | {cpu} | "
                f"{r['n']} | {r['method']} |"
            )
    if notes:
        lines.append(
            "\nlog p(x_mis given x_obs), mean over digits ± its standard error across digits:"
        )
        lines += [f"{ref} {how}" for how, ref in notes.items()]
    (RESULTS / "impute.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def picture(rows: dict, masks, x) -> None:
    """One row per entry: (masked | imputed | truth) for the first 4 digits, centre mask."""
    from pipelines.images import to_images
    from pipelines.uses import masked_images, save_rows

    m = masks["centre"][:4]
    xs = x[:4].numpy()
    table, labels = [], []
    for entry, r in rows.items():
        if "picture_rows" not in r:
            continue
        labels.append(entry)
        imputed = np.asarray(r["picture_rows"])[0]  # first imputation of 4 digits
        masked = masked_images(xs, m, (1, 28, 28), 2)
        imp = to_images(imputed, (1, 28, 28), 2)
        truth = to_images(xs, (1, 28, 28), 2)
        table.append([img for i in range(4) for img in (masked[i], imp[i], truth[i])])
    if table:
        save_rows(table, IMG / "impute.png", min_px=720, labels=labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", help="entry (repeatable); default every entry")
    ap.add_argument("--n", type=int, default=200, help="test digits")
    ap.add_argument("--imputations", type=int, default=10)
    ap.add_argument("--cap", type=float, default=120.0, help="CPU-s of imputation per mask")
    ap.add_argument("--chunk", type=int, default=20, help="digits per impute call")
    ap.add_argument("--train-budget", type=float, default=120.0, help="training CPU-s per entry")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true", help="only rewrite the tables from the rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    entries = args.family or list(ENTRIES)
    unknown = [e for e in entries if e not in ENTRIES]
    if unknown:
        raise SystemExit(f"unknown entry {unknown}; known: {', '.join(ENTRIES)}")

    from pipelines.data import prepare_dataset
    from pipelines.quality import yardstick_for
    from pipelines.uses import ArrayDataset

    data = ArrayDataset(prepare_dataset("mnist", binarize="fixed", seed=args.seed))  # no Ray
    yardstick = yardstick_for(data, seed=args.seed)
    x_np, y_np = data.numpy("test")
    x, y = torch.from_numpy(x_np[: args.n]).float(), torch.from_numpy(y_np[: args.n])
    masks = {k: make_masks(k, args.n, data.input_shape, seed=args.seed) for k in MASK_KINDS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        RESULTS / "impute_masks.npz", **{k: np.packbits(v) for k, v in masks.items()}
    )
    meta = {
        "n": args.n,
        "imputations": args.imputations,
        "cap_cpu_s": args.cap,
        "train_budget_cpu_s": args.train_budget,
        "masks_fp": masks_fingerprint(np.stack([masks[k] for k in MASK_KINDS])),
        "yardstick": yardstick.method,
        "dataset_fingerprint": data.fingerprint,
        "threads": args.threads,
    }
    base = baselines(data, yardstick, masks, x, y)
    ROWS.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for entry in entries:
            if "impute" not in genmodels.family_class(ENTRIES[entry][0]).capabilities:
                print(f"{entry}: family cannot impute yet; skipped")
                continue
            row = run_entry(entry, data, yardstick, masks, x, y, args)
            (ROWS / f"{entry}.json").write_text(json.dumps(row))
    rows = {f.stem: json.loads(f.read_text()) for f in sorted(ROWS.glob("*.json"))}
    rows = {e: rows[e] for e in ENTRIES if e in rows}
    write_tables(rows, base, meta)
    picture(rows, masks, x)


if __name__ == "__main__":
    main()
