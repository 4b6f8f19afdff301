"""Training-step throughput: each family's step beside a minimal reference of the same model.

For every entry, the family's training step (``model(batch)["loss"].backward()`` and Adam, the
benchmark config of ``benchmarks/nll.py``) and the reference's (``benchmarks/reference/``: the
same parameters written the plain way, autograd for the gradients) run on the same batches of
the bundled MNIST digits (fixed binarisation; 8-bit for Real NVP, as its ``benchmarks/nll.py``
entry), one torch thread, in **alternating pairs** in one
process: ``--pairs`` (5) times, ``--steps`` (5) steps of one, then of the other, timed in
process CPU-seconds (the machine may be shared: wall time would count other jobs). The table
gives examples per CPU-second of each (the median over the pairs) and the median of the
per-pair ratios ours / reference (target >= 0.67). A ``before`` variant, where an entry has
one, is the code path a speed-up replaced, timed in the same pairs. Before timing, each
reference is loaded with the family model's weights (``reference.load_from``, after one no-grad
training forward of ours: base rates, ActNorm's data init); that the two then compute the same
loss and gradients is ``tests/benchmarks/test_references.py``.

    python benchmarks/throughput.py                 # every entry
    python benchmarks/throughput.py --entry nade --pairs 3 --steps 2   # smoke

Results: ``benchmarks/results/throughput.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import load_from
from reference.dbm import ReferenceDBM
from reference.fvsbn import ReferenceFVSBN
from reference.made import ReferenceMADE, masks_of
from reference.nade import ReferenceNADE
from reference.pixelcnn import ReferencePixelCNN
from reference.rbm import ReferenceRBM
from reference.realnvp import ReferenceRealNVP
from reference.vae import ReferenceVAE

import genmodels

RESULTS = Path(__file__).resolve().parent / "results"


def nade_one_shot_loss(model, x: torch.Tensor) -> torch.Tensor:
    """NADE's loss as the family computed it before the chunked kernel: every pre-activation at
    once from a ``(B, D, H)`` cumulative sum, autograd through it (the ``before`` column)."""
    xo = x.flatten(1)[:, model.order]
    w = model.W[:, model.order].T
    steps = xo[:, :, None] * w
    zero = steps.new_zeros(steps.shape[0], 1, steps.shape[2])
    pre = model.c + torch.cat([zero, steps.cumsum(1)[:, :-1]], 1)
    logits = torch.einsum("bdh,dh->bd", torch.sigmoid(pre), model.V[model.order])
    logits = logits + model.b[model.order]
    return F.binary_cross_entropy_with_logits(logits, xo, reduction="none").sum(1).mean()


Variants = dict[str, tuple[torch.nn.Module, Callable]]


def family_loss(model) -> Callable:
    return lambda x: model({"x": x})["loss"]


def paired(family: str, config: dict, reference, x0: torch.Tensor, levels: int = 2) -> Variants:
    """Ours (``benchmarks/nll.py``'s config) and the reference loaded with its weights, after one
    no-grad training forward of ours on ``x0`` (base rates, ActNorm's data init)."""
    ours = genmodels.build(family, (1, 28, 28), levels, **config).train()
    with torch.no_grad():
        ours({"x": x0})
    if hasattr(ours, "chains"):
        ours.chains = None  # RBM: both start their persistent chains from the base rates
    ref = load_from(reference, ours)
    return {"ours": (ours, family_loss(ours)), "reference": (ref, ref.loss)}


def nade_entry(x0: torch.Tensor) -> Variants:
    """Variants of the NADE entry: name -> (module, loss of a batch)."""
    hidden = 500  # benchmarks/nll.py's NADE
    ours = genmodels.build("nade", (1, 28, 28), 2, hidden_size=hidden)
    ref = ReferenceNADE(x0[0].numel(), hidden)
    before = genmodels.build("nade", (1, 28, 28), 2, hidden_size=hidden)
    return {
        "ours": (ours, lambda x: ours({"x": x})["loss"]),
        "reference": (ref, ref.loss),
        "before": (before, lambda x: nade_one_shot_loss(before, x)),
    }


def nade_relu_entry(x0: torch.Tensor) -> Variants:
    """NADE with relu hidden units (``activation="relu"``, the threshold protocol's entry)."""
    hidden = 500
    ours = genmodels.build("nade", (1, 28, 28), 2, hidden_size=hidden, activation="relu")
    ref = ReferenceNADE(x0[0].numel(), hidden, "relu")
    return {"ours": (ours, lambda x: ours({"x": x})["loss"]), "reference": (ref, ref.loss)}


def pixelcnn_entry(x0: torch.Tensor) -> Variants:
    return paired("pixelcnn", {"channels": 32, "num_layers": 5}, ReferencePixelCNN(32, 5), x0)


def realnvp_entry(x0: torch.Tensor) -> Variants:
    """The 8-bit entry of ``benchmarks/nll.py``: the batches are 8-bit digits."""
    cfg = {"hidden_channels": 32, "num_coupling": 2, "num_res_blocks": 1}
    return paired("realnvp", cfg, ReferenceRealNVP((1, 28, 28), 256, 2, 2, 32, 1), x0, 256)


def rbm_entry(x0: torch.Tensor) -> Variants:
    return paired("rbm", {}, ReferenceRBM(784, 500, chains=100, k=5), x0)


def dbm_entry(x0: torch.Tensor) -> Variants:
    return paired("dbm", {}, ReferenceDBM(784, 500, 500, chains=100, gibbs=5, mean_field=10), x0)


def made_entry(x0: torch.Tensor) -> Variants:
    ours = genmodels.build("made", (1, 28, 28), 2, hidden_sizes=(500,))
    return paired("made", {"hidden_sizes": (500,)}, ReferenceMADE(masks_of(ours)), x0)


def fvsbn_entry(x0: torch.Tensor) -> Variants:
    return paired("fvsbn", {}, ReferenceFVSBN(784), x0)


def vae_entry(x0: torch.Tensor) -> Variants:
    cfg = {"latent_dim": 32, "hidden_sizes": (512, 256)}
    return paired("vae", cfg, ReferenceVAE(784, (512, 256), 32), x0)


ENTRIES = {
    "nade": nade_entry,
    "nade-relu": nade_relu_entry,
    "pixelcnn": pixelcnn_entry,
    "realnvp": realnvp_entry,
    "rbm": rbm_entry,
    "dbm": dbm_entry,
    "made": made_entry,
    "fvsbn": fvsbn_entry,
    "vae": vae_entry,
}
EIGHT_BIT = {"realnvp"}  # entries trained on 8-bit digits (binarize="none")


def time_steps(module, loss_fn, opt, batches) -> float:
    """CPU-seconds of one training step per batch (forward, backward, Adam)."""
    t0 = time.process_time()
    for x in batches:
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()
    return time.process_time() - t0


def run_entry(name: str, x_train: torch.Tensor, args) -> dict:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    batch = lambda: x_train[torch.randint(len(x_train), (args.batch,), generator=g)]  # noqa: E731
    variants = ENTRIES[name](batch())
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, (m, _) in variants.items()}
    for k, (m, fn) in variants.items():  # warm-up: allocator, first-call costs
        time_steps(m, fn, opts[k], [batch()])
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.pairs):
        batches = [batch() for _ in range(args.steps)]  # the same batches for every variant
        for k, (m, fn) in variants.items():
            cpu[k].append(time_steps(m, fn, opts[k], batches))
    n = args.steps * args.batch
    row = {
        "entry": name,
        "batch": args.batch,
        "steps_per_pair": args.steps,
        "pairs": args.pairs,
        "examples_per_cpu_s": {k: n / statistics.median(v) for k, v in cpu.items()},
        "cpu_s_per_pair": cpu,
        "ratio_vs_reference": statistics.median(
            r / o for o, r in zip(cpu["ours"], cpu["reference"], strict=True)
        ),
    }
    if "before" in cpu:
        row["speedup_vs_before"] = statistics.median(
            b / o for o, b in zip(cpu["ours"], cpu["before"], strict=True)
        )
    return row


def merge_rows(rows: list[dict], results: Path) -> list[dict]:
    """``rows`` plus the rows of entries not run this time from an earlier ``throughput.json``
    (each keeps its own ``meta`` under ``run``), in ``ENTRIES`` order."""
    path = results / "throughput.json"
    earlier = json.loads(path.read_text()) if path.exists() else {"rows": []}
    ran = {r["entry"] for r in rows}
    kept = [
        {**r, "run": r.get("run", earlier.get("meta", {}))}
        for r in earlier["rows"]
        if r["entry"] not in ran and r["entry"] in ENTRIES
    ]
    order = list(ENTRIES)
    return sorted(rows + kept, key=lambda r: order.index(r["entry"]))


def write_tables(rows: list[dict], meta: dict, results: Path) -> None:
    rows = merge_rows(rows, results)
    (results / "throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Training-step throughput: ours beside a minimal reference of the same model",
        "",
        "Examples per CPU-second of one training step (forward, backward, Adam), median over",
        "alternating pairs in one process; ratio = median per-pair ours / reference (target",
        "≥ 0.67). Written by `benchmarks/throughput.py`; the method is in its docstring.",
        "",
        "| entry | batch | ours | reference | before | ours / reference | ours / before |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = r["examples_per_cpu_s"]
        before = f"{eps['before']:.0f}" if "before" in eps else "—"
        speed = f"{r['speedup_vs_before']:.2f}×" if "speedup_vs_before" in r else "—"
        lines.append(
            f"| {r['entry']} | {r['batch']} | {eps['ours']:.0f} | {eps['reference']:.0f} | "
            f"{before} | {r['ratio_vs_reference']:.2f}× | {speed} |"
        )
    lines += [
        "",
        f"{meta['threads']} thread, {meta['machine']}, load average {meta['load']}; "
        f"{meta.get('pairs')} pairs of {meta.get('steps')} steps per variant.",
    ]
    earlier = [r for r in rows if "run" in r]
    for r in earlier:
        lines.append(
            f"The {r['entry']} row is from an earlier run (load average {r['run'].get('load')}, "
            f"{r['pairs']} pairs of {r['steps_per_pair']} steps)."
        )
    (results / "throughput.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entry", action="append", choices=list(ENTRIES))
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per pair")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if min(args.batch, args.steps, args.pairs) < 1:
        raise SystemExit("--batch, --steps and --pairs must be >= 1")
    torch.set_num_threads(1)
    from pipelines.data import prepare_dataset
    from pipelines.uses import ArrayDataset

    data = ArrayDataset(prepare_dataset("mnist", binarize="fixed", seed=args.seed))  # no Ray
    x_train = torch.from_numpy(data.numpy("train")[0]).float()
    x_8bit = None
    rows = []
    for name in args.entry or list(ENTRIES):
        if name in EIGHT_BIT and x_8bit is None:
            raw = ArrayDataset(prepare_dataset("mnist", binarize="none", seed=args.seed))
            x_8bit = torch.from_numpy(raw.numpy("train")[0]).float()
        row = run_entry(name, x_8bit if name in EIGHT_BIT else x_train, args)
        rows.append(row)
        eps = row["examples_per_cpu_s"]
        print(
            f"{name}: "
            + ", ".join(f"{k} {v:.0f} ex/CPU-s" for k, v in eps.items())
            + f"; ours/reference {row['ratio_vs_reference']:.2f}x",
            flush=True,
        )
    import os

    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": 1,
        "pairs": args.pairs,
        "steps": args.steps,
        "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "dataset_fingerprint": data.fingerprint,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_tables(rows, meta, args.results)


if __name__ == "__main__":
    main()
