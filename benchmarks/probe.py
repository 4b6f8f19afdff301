"""Embeddings: a linear probe on every family's ``embed``, beside the same probe on raw pixels.

The probe is multinomial logistic regression (scikit-learn, lbfgs) on standardised features: fit
on the train split's embeddings (4,000 bundled MNIST digits, fixed binarisation), its inverse
regularisation C chosen on the validation split from a fixed grid, then scored ONCE on the test
split (500 digits). The models are those of ``benchmarks/impute.py`` (trained there with the
pinned configs of ``benchmarks/nll.py`` and cached), so the two benchmarks describe the same
weights. Results: ``benchmarks/results/probe.{json,md}``.

    python benchmarks/probe.py                    # every entry whose family embeds
    python benchmarks/probe.py --family vae --train-budget 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import impute  # the cached models and their training
import nll

import genmodels

RESULTS = nll.RESULTS
C_GRID = (0.01, 0.1, 1.0, 10.0)


def embed_all(model, x: np.ndarray, chunk: int = 500) -> np.ndarray:
    with torch.no_grad():
        parts = [
            model.embed(torch.from_numpy(x[i : i + chunk]).float()) for i in range(0, len(x), chunk)
        ]
    return torch.cat(parts).flatten(1).double().numpy()


def probe(train, val, test) -> dict:
    """Fit on train for each C, pick C on validation, score test once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    scaler = StandardScaler().fit(xtr)
    xtr, xva, xte = scaler.transform(xtr), scaler.transform(xva), scaler.transform(xte)
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(xtr, ytr)
        acc = clf.score(xva, yva)
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    val_acc, c, clf = best
    return {
        "val_accuracy": val_acc,
        "C": c,
        "test_accuracy": clf.score(xte, yte),
        "dims": xtr.shape[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", help="entry (repeatable); default all that embed")
    ap.add_argument("--train-budget", type=float, default=120.0, help="training CPU-s per entry")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    entries = args.family or [
        e
        for e, (fam, _, _) in impute.ENTRIES.items()
        if "embed" in genmodels.family_class(fam).capabilities
    ]
    from pipelines.data import prepare_dataset
    from pipelines.quality import yardstick_for
    from pipelines.uses import ArrayDataset

    data = ArrayDataset(prepare_dataset("mnist", binarize="fixed", seed=args.seed))  # no Ray
    yardstick = yardstick_for(data, seed=args.seed)
    splits = {s: data.numpy(s) for s in ("train", "validation", "test")}
    out_path = RESULTS / "probe.json"
    rows = json.loads(out_path.read_text()) if out_path.exists() else {}
    t0 = time.process_time()
    flat = {s: (x.reshape(len(x), -1).astype(np.float64), y) for s, (x, y) in splits.items()}
    rows["raw pixels"] = {
        **probe(flat["train"], flat["validation"], flat["test"]),
        "cpu_s": time.process_time() - t0,
    }
    print(f"raw pixels: {rows['raw pixels']}", flush=True)
    for entry in entries:
        model, facts = impute.get_model(entry, data, yardstick, args.train_budget, args.seed)
        t0 = time.process_time()
        feats = {s: (embed_all(model, x), y) for s, (x, y) in splits.items()}
        res = probe(feats["train"], feats["validation"], feats["test"])
        rows[entry] = {
            **res,
            "cpu_s": time.process_time() - t0,
            "train_cpu_s": facts["train_cpu_seconds"],
        }
        print(f"{entry}: {rows[entry]}", flush=True)
        out_path.write_text(json.dumps(rows, indent=2, sort_keys=True))
    out_path.write_text(json.dumps(rows, indent=2, sort_keys=True))
    lines = [
        "Linear probe (logistic regression, C on validation) on 4,000 train digits; test accuracy "
        "on the 500 test digits, scored once.\n",
        "| features | dims | test accuracy | validation accuracy | C |",
        "|---|---|---|---|---|",
    ]
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["test_accuracy"]):
        lines.append(
            f"| {name} | {r['dims']} | {r['test_accuracy']:.3f} | {r['val_accuracy']:.3f} | {r['C']} |"
        )
    (RESULTS / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
