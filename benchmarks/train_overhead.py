"""The cost of the Ray Train path against a bare PyTorch loop, side by side in one run.

Same model (MADE on the bundled MNIST split, fixed binarisation), same data (pre-loaded: a
NumPy array for the bare loop, the same array in Ray's object store for Ray Data), same batch
size, epochs and torch threads. The Ray path is ``pipelines.train`` with 1 worker: Ray Data
streaming, the phase loop, per-epoch validation and checkpointing. Throughput compares the
training loops themselves (examples/second over the epochs' training time, measured the same
way in both); the Ray path's end-to-end wall time (start-up, validation, checkpoints) is
reported beside it. Results go to ``benchmarks/results/train_overhead.json`` and ``.md``.

    python benchmarks/train_overhead.py [--epochs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import genmodels

RESULTS = Path(__file__).parent / "results"
SIZES = {"small": (128,), "large": (1024, 1024)}


def bare_loop(x: np.ndarray, hidden, epochs: int, batch_size: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = genmodels.build("made", input_shape=x.shape[1:], hidden_sizes=hidden)
    opt = model.configure_optimizers()["main"]
    data = torch.from_numpy(x)
    g = torch.Generator().manual_seed(0)
    seen, steps, elapsed = 0, 0, 0.0
    for _ in range(epochs):
        t0 = time.monotonic()
        for idx in torch.randperm(len(data), generator=g).split(batch_size):
            batch = {"x": data[idx]}
            opt.zero_grad(set_to_none=True)
            model(batch)["loss"].backward()
            opt.step()
            seen, steps = seen + len(idx), steps + 1
        elapsed += time.monotonic() - t0
    return {"examples_per_s": seen / elapsed, "steps": steps, "train_time_s": elapsed}


def ray_path(data, hidden, epochs: int, batch_size: int, threads: int, storage: str) -> dict:
    from pipelines.train import TrainSpec, build_trainer

    spec = TrainSpec(
        family="made",
        dataset="mnist",
        model={"hidden_sizes": hidden},
        epochs=epochs,
        patience=epochs,
        batch_size=batch_size,
        num_workers=1,
        torch_threads=threads,
        storage_path=storage,
        grid_samples=0,
    )
    t0 = time.monotonic()
    trainer = build_trainer(spec, data, None, None, name=f"bench-{len(hidden)}-{time.time_ns()}")
    result = trainer.fit()
    wall = time.monotonic() - t0
    history = result.metrics_dataframe
    per_epoch = history.dropna(subset=["train_time_s"])
    seen, elapsed = per_epoch["train_examples"].sum(), per_epoch["train_time_s"].sum()
    return {
        "examples_per_s": float(seen / elapsed),
        "steps": int(np.ceil(per_epoch["train_examples"] / batch_size).sum()),
        "train_time_s": float(elapsed),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="alternating bare/Ray pairs")
    args = ap.parse_args()

    import ray

    from pipelines.data import load_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    data = load_dataset("mnist", binarize="fixed", seed=0)
    x, _ = data.numpy("train")
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for label, hidden in SIZES.items():
            # Alternate bare / Ray runs and keep the median of each: the machine is shared.
            bares, rays = [], []
            for _ in range(args.repeats):
                bares.append(bare_loop(x, hidden, args.epochs, args.batch_size, args.threads))
                rays.append(
                    ray_path(data, hidden, args.epochs, args.batch_size, args.threads, storage)
                )
            bare = sorted(bares, key=lambda r: r["examples_per_s"])[len(bares) // 2]
            rayp = sorted(rays, key=lambda r: r["examples_per_s"])[len(rays) // 2]
            ratio = rayp["examples_per_s"] / bare["examples_per_s"]
            overhead_ms = 1000 * (
                rayp["train_time_s"] / rayp["steps"] - bare["train_time_s"] / bare["steps"]
            )
            pair_ratios = [r["examples_per_s"] / b["examples_per_s"] for b, r in zip(bares, rays)]
            rows.append(
                {
                    "size": label,
                    "hidden": list(hidden),
                    "bare": bare,
                    "ray": rayp,
                    "ratio": ratio,
                    "pair_ratios": pair_ratios,
                    "overhead_ms_per_step": overhead_ms,
                }
            )
            print(
                f"{label}: bare {bare['examples_per_s']:.0f} ex/s, ray {rayp['examples_per_s']:.0f} "
                f"ex/s, ratio {ratio:.3f} (pairs {', '.join(f'{r:.3f}' for r in pair_ratios)}), "
                f"overhead {overhead_ms:+.2f} ms/step",
                flush=True,
            )
    ray.shutdown()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads max, "
        f"{platform.processor() or 'cpu'}",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "train_examples": len(x),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_overhead.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "| model (MADE hidden) | bare PyTorch ex/s | Ray Train (1 worker) ex/s | ratio (median) | "
        "ratio per pair | overhead ms/step | Ray wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} {tuple(r['hidden'])} | {r['bare']['examples_per_s']:.0f} | "
            f"{r['ray']['examples_per_s']:.0f} | {r['ratio']:.3f} | "
            f"{' / '.join(f'{p:.2f}' for p in r['pair_ratios'])} | {r['overhead_ms_per_step']:+.2f} | "
            f"{r['ray']['wall_s']:.1f} |"
        )
    (RESULTS / "train_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
