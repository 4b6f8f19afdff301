"""Sampling speed: samples per CPU-second at n = 64 for every family of ``benchmarks/nll.py``, and,
for the autoregressive families, the sampler each family uses beside a full-recompute sampler.

Each family is built at its ``benchmarks/nll.py`` config (28x28 digits; binary, or 8-bit for the
``-8bit`` entries) with its initial weights (a sampler's cost does not depend on the values of
the weights) and draws ``n`` samples with a seeded generator, one torch thread, timed in process
CPU-seconds (the machine may be shared): the median of ``--repeats`` (3) runs, one run for a
sampler slower than 2 CPU-s. The autoregressive families (FVSBN, NADE, MADE, PixelCNN) also run
the **full-recompute** sampler — one whole network pass per dimension, the lecture's O(n)
non-parallelisable generation done naively — with the same seed, for its first ``--full-steps``
(56) steps: each of its steps costs one whole pass whatever the step, so its time for all D
steps is the measured time x D / steps (at n = 64 the whole run would take 1-5 CPU-minutes per
family on this machine). The values drawn in those steps must equal the family sampler's (the
script fails otherwise); the family tests check whole samples against the full recompute:

* FVSBN, NADE, MADE: ``model.logits(x)`` of the whole vector per dimension (as
  ``MADE._sample_full``); their own samplers keep a running pre-activation (NADE, O(H) per step;
  MADE's first layer, O(H1)) or use one row of the weights (FVSBN, O(d)).
* PixelCNN: ``params`` of the whole image per value (as ``_sample(cropped=False)``); with
  ``--before``, the row-cropped sampler (``_sample(cropped=True)``, the sampler before activation
  caching) is timed too, whole, as ``before``.

    python benchmarks/sampling.py                      # every entry
    python benchmarks/sampling.py --entry made --n 8   # smoke

Results: ``benchmarks/results/sampling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nll import ENTRIES

import genmodels

RESULTS = Path(__file__).resolve().parent / "results"
AUTOREGRESSIVE = {"fvsbn", "nade", "made", "pixelcnn", "pixelcnn-8bit"}
SLOW_S = 2.0  # one run only for a sampler slower than this (CPU-s)


@torch.no_grad()
def full_recompute(model, n: int, generator: torch.Generator, steps: int) -> torch.Tensor:
    """The first ``steps`` steps of ancestral sampling with one whole network pass per step, with
    the draws of the family's ``sample`` (same uniforms, same order); returns ``(n, steps)``, the
    values drawn in order. FVSBN / NADE / MADE (one mask): the whole vector's logits; PixelCNN:
    ``params`` of the whole image, as ``_sample(cropped=False)``."""
    if model.family == "pixelcnn":
        c, height, width = model.input_shape
        x = torch.zeros(n, c, height, width)
        values = torch.arange(model.levels, dtype=x.dtype)
        drawn = []
        for i in range(steps):
            (r, col), ch = divmod(i // c, width), i % c
            p = model.params(x)[:, ch, r, col]
            log_p = model.pixel_log_prob(p[:, None, :], values[None, :])
            cdf = log_p.softmax(-1).cumsum(-1)
            u = torch.rand(n, 1, generator=generator)
            x[:, ch, r, col] = (cdf < u).sum(-1).clamp(max=model.levels - 1).to(x.dtype)
            drawn.append(x[:, ch, r, col].clone())
        return torch.stack(drawn, 1)
    if model.family == "made":
        assert model.config.num_masks == 1, "the prefix sampler covers one mask"
        torch.randint(1, (n,), generator=generator)  # sample's mixture draw comes first
        order = torch.argsort(model.orders[0]).tolist()
        model.set_mask(0)
    elif model.family == "nade":
        order = model.order.tolist()
    else:
        order = list(range(model.num_dims))
    x = torch.zeros(n, model.num_dims)
    for i in order[:steps]:
        p = torch.sigmoid(model.logits(x)[:, i])
        u = torch.rand(n, generator=generator)
        x[:, i] = (u < p).float()
    return x[:, order[:steps]]


def in_order(model, samples: torch.Tensor, steps: int) -> torch.Tensor:
    """The first ``steps`` values of ``samples`` in the family's sampling order ``(n, steps)``."""
    flat = samples.flatten(1)
    if model.family == "pixelcnn":  # raster over pixels, channels within a pixel
        c = model.input_shape[0]
        return flat.view(len(flat), c, -1).transpose(1, 2).flatten(1)[:, :steps]
    if model.family == "made":
        return flat[:, torch.argsort(model.orders[0])[:steps]]
    if model.family == "nade":
        return flat[:, model.order[:steps]]
    return flat[:, :steps]


def time_sampler(fn, n: int, args) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(args.repeats):
        t0 = time.process_time()
        out = fn(n, torch.Generator().manual_seed(args.seed))
        times.append(time.process_time() - t0)
        if times[-1] > SLOW_S:
            break
    return times, out


def run_entry(entry: str, args) -> dict:
    family, binarize, config = ENTRIES[entry]
    levels = 2 if binarize != "none" else 256
    torch.manual_seed(args.seed)
    model = genmodels.build(family, (1, 28, 28), levels, **config).eval()
    row: dict = {"entry": entry, "family": family, "n": args.n, "cpu_s": {}, "samples_per_s": {}}
    times, ours = time_sampler(lambda n, g: model.sample(n, generator=g), args.n, args)
    row["cpu_s"]["ours"] = times
    row["samples_per_s"]["ours"] = args.n / statistics.median(times)
    if entry in AUTOREGRESSIVE:
        steps = min(args.full_steps, model.num_dims)
        t0 = time.process_time()
        prefix = full_recompute(model, args.n, torch.Generator().manual_seed(args.seed), steps)
        cpu = time.process_time() - t0
        whole = cpu * model.num_dims / steps  # one whole pass per step: a constant cost
        row["full"] = {"steps_timed": steps, "cpu_s_timed": cpu, "cpu_s_estimate": whole}
        row["samples_per_s"]["full"] = args.n / whole
        row["identical"] = torch.equal(in_order(model, ours, steps), prefix)
        row["speedup_vs_full"] = whole / statistics.median(times)
        if family == "pixelcnn" and args.before:
            before, old = time_sampler(lambda n, g: model._sample(n, g, cropped=True), args.n, args)
            row["cpu_s"]["before"] = before
            row["samples_per_s"]["before"] = args.n / statistics.median(before)
            row["identical"] = row["identical"] and torch.equal(ours, old)
            row["speedup_vs_before"] = statistics.median(before) / statistics.median(times)
    return row


def write_tables(rows: list[dict], meta: dict, results: Path) -> None:
    (results / "sampling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Sampling speed at n = {meta['n']}: samples per CPU-second",
        "",
        "Each family at its `benchmarks/nll.py` config, one torch thread, median of up to",
        f"{meta['repeats']} runs (one for a sampler over {SLOW_S:.0f} CPU-s). Autoregressive",
        "families: the sampler in use (`ours`) beside the full-recompute sampler (one whole",
        f"network pass per dimension, same seed), timed over its first {meta['full_steps']} steps",
        "and scaled to all 784 (each step costs one whole pass); `identical` = the values drawn",
        "in those steps equal ours (and PixelCNN's `before`, all of them). `before` is the",
        "row-cropped sampler that activation caching replaced. Written by",
        "`benchmarks/sampling.py` (method in its docstring).",
        "",
        "| entry | ours samples/s | full recompute samples/s | before samples/s | ours / full "
        "| ours / before | identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sps = r["samples_per_s"]

        def cell(k: str, sps=sps) -> str:
            return f"{sps[k]:.3g}" if k in sps else "—"

        full = f"{r['speedup_vs_full']:.1f}×" if "speedup_vs_full" in r else "—"
        before = f"{r['speedup_vs_before']:.1f}×" if "speedup_vs_before" in r else "—"
        same = {True: "yes", False: "**no**"}.get(r.get("identical"), "—")
        lines.append(
            f"| {r['entry']} | {cell('ours')} | {cell('full')} | {cell('before')} | {full} | "
            f"{before} | {same} |"
        )
    lines += ["", f"1 thread, {meta['machine']}, load average {meta['load']}."]
    (results / "sampling.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entry", action="append", choices=list(ENTRIES))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-steps", type=int, default=56, help="full-recompute steps timed")
    ap.add_argument("--before", action="store_true", help="also time PixelCNN's cropped sampler")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if min(args.n, args.repeats) < 1:
        raise SystemExit("--n and --repeats must be >= 1")
    torch.set_num_threads(1)
    rows = []
    for entry in args.entry or list(ENTRIES):
        row = run_entry(entry, args)
        rows.append(row)
        sps = row["samples_per_s"]
        print(
            f"{entry}: "
            + ", ".join(f"{k} {v:.3g}/s" for k, v in sps.items())
            + (f"; identical {row['identical']}" if "identical" in row else ""),
            flush=True,
        )
    meta = {
        "n": args.n,
        "repeats": args.repeats,
        "full_steps": args.full_steps,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_tables(rows, meta, args.results)
    different = [r["entry"] for r in rows if r.get("identical") is False]
    if different:
        raise SystemExit(f"samples differ from the full recompute: {different}")


if __name__ == "__main__":
    main()
