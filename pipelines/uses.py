"""What the uses of a model look like outside Python: pictures of imputations, and the CLI
commands ``genmodels impute`` / ``embed`` / ``classify`` / ``translate`` / ``predict`` (hooked into
``pipelines.cli``).

Generic over families: everything goes through the protocol (``impute``, ``embed``) and the
capability a registered version declares.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .images import to_images

GREY = 128  # missing pixels are shown mid-grey


def masked_images(x: np.ndarray, mask: np.ndarray, input_shape, levels: int) -> np.ndarray:
    """uint8 images ``(N, H, W, C)`` of ``x`` with its missing entries (mask 0) in grey."""
    img = to_images(x, input_shape, levels)
    m = to_images(np.asarray(mask, np.float32), input_shape, 2)  # 255 observed, 0 missing
    return np.where(m > 0, img, np.uint8(GREY))


def save_rows(
    rows: list[list[np.ndarray]],
    path: str | Path,
    min_px: int = 480,
    labels: list[str] | None = None,
) -> Path:
    """A table of images: ``rows[r][c]`` is a uint8 ``(H, W, C)`` image (all the same size);
    1-px white gaps, scaled up (nearest) so its longer side is at least ``min_px``; ``labels``
    names the rows in a left margin."""
    from PIL import Image, ImageDraw

    h, w, c = rows[0][0].shape
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            grid[1 + i * (h + 1) : 1 + i * (h + 1) + h, 1 + j * (w + 1) : 1 + j * (w + 1) + w] = img
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    scale = max(1, math.ceil(min_px / max(pil.width, pil.height)))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    if labels:
        margin = 8 + 7 * max(len(t) for t in labels)
        framed = Image.new(pil.mode, (pil.width + margin, pil.height), 255)
        framed.paste(pil, (margin, 0))
        draw = ImageDraw.Draw(framed)
        row_px = pil.height / len(rows)
        for i, text in enumerate(labels):
            draw.text((4, int((i + 0.5) * row_px) - 6), text, fill=0)
        pil = framed
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path


def imputation_rows(
    x: np.ndarray, mask: np.ndarray, samples: np.ndarray, input_shape, levels: int, show: int = 4
) -> list[list[np.ndarray]]:
    """One row per example: masked | up to ``show`` imputations | truth (``x``)."""
    masked = masked_images(x, mask, input_shape, levels)
    truth = to_images(x, input_shape, levels)
    imputed = [to_images(s, input_shape, levels) for s in samples[:show]]  # S × (N, H, W, C)
    return [[masked[i], *(s[i] for s in imputed), truth[i]] for i in range(len(x))]


def write_output(path: str, arrays: dict[str, np.ndarray], picture) -> Path:
    """Write results by the path's suffix: ``.png``/``.jpg`` a picture (``picture(path)``),
    ``.npz`` the arrays; anything else is an error naming the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        return picture(path)
    if suffix == ".npz":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return Path(path)
    raise ValueError(
        f"--out {path}: unsupported suffix {suffix or '(none)'!r}; use .png, .jpg or .npz"
    )


def jsonable(value: Any) -> Any:
    """Tensors and arrays as lists (NaN as null), for ``--json`` output."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return np.where(np.isfinite(value), value, None).tolist()
        return value.tolist()
    return value


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps({k: jsonable(v) for k, v in obj.items()})


# ------------------------------------------------------------------------------ CLI commands
def split_arrays(prepared, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split of a ``PreparedDataset`` as the models see it (x in the data space, y), in
    NumPy without Ray: the same transform Ray Data applies (validation/test: the fixed draw)."""
    from .data import _preprocess

    rows = prepared.rows[split]
    how = "integers" if prepared.binarize == "none" else "binary"
    batch = {"x": prepared.raw[rows], "y": prepared.y[rows], "row": rows}
    out = _preprocess(batch, how=how, raw_levels=prepared.raw_levels, seed=prepared.seed)
    return out["x"], out["y"]


class ArrayDataset:
    """A ``PreparedDataset`` whose splits are read in NumPy (``split_arrays``), without Ray: the
    attributes and ``numpy(split)`` that benchmarks, the yardstick and scoring helpers use."""

    def __init__(self, prepared) -> None:
        self.prepared = prepared

    def __getattr__(self, name: str):
        return getattr(self.prepared, name)

    @property
    def train_is_probabilities(self) -> bool:
        return self.prepared.binarize == "dynamic"

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self.prepared.rows:
            raise ValueError(f"unknown split {split!r}")
        x, y = split_arrays(self.prepared, split)
        if self.train_is_probabilities and split == "train":
            x = self.prepared.raw[self.prepared.rows[split]] / (self.prepared.raw_levels - 1)
        return x.astype(np.float32), y.astype(np.int64)


def _require(model, capability: str, name: str) -> None:
    from .cli import CLIError

    if capability not in model.capabilities:
        raise CLIError(
            f"{name} ({model.family}) has no capability {capability!r}; it has: "
            f"{', '.join(sorted(model.capabilities))}"
        )


def cmd_impute(args) -> int:
    """``genmodels impute``: mask the first --n digits of the version's own split, impute them,
    write a picture (masked | imputations | truth) or the arrays, print a summary or JSON."""
    import torch

    from .cli import CLIError, _evaluation_data, _load, _registry_uri
    from .masks import make_masks

    suffix = Path(args.out).suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg", ".npz"):
        raise CLIError(
            f"bad value {args.out!r} for --out: give a .png or .jpg file (masked | imputed | "
            "truth) or a .npz file (x, mask, samples)"
        )
    if not 1 <= args.n <= 64:
        raise CLIError(f"bad value {args.n} for --n (1..64 examples)")
    if not 1 <= args.num_samples <= 16:
        raise CLIError(f"bad value {args.num_samples} for --num-samples (1..16)")
    model, info = _load(args, _registry_uri(args))
    name = f"{args.model} v{info['version']}"
    _require(model, "impute", name)
    prepared = _evaluation_data(args, info)
    x, _ = split_arrays(prepared, args.split)
    x = x[: args.n]
    mask = make_masks(args.mask, len(x), model.input_shape, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        r = model.impute(torch.from_numpy(x), torch.from_numpy(mask), g, args.num_samples)
    samples = r.samples.numpy()
    arrays = {"x": x, "mask": mask, "samples": samples}

    def picture(path):
        rows = imputation_rows(x, mask, samples, model.input_shape, model.levels)
        return save_rows(rows, path)

    path = write_output(args.out, arrays, picture)
    summary = {
        "model": args.model,
        "version": info["version"],
        "mask": args.mask,
        "n": len(x),
        "num_samples": args.num_samples,
        "method": r.method,
        "missing_fraction": float(1 - mask.mean()),
        "out": str(path),
    }
    if r.log_prob_missing is not None:
        summary["log_prob_missing_mean"] = float(r.log_prob_missing.mean())
        summary["log_prob_method"] = r.log_prob_method
    if args.json:
        print(dumps({**summary, "samples": samples, "log_prob_missing": r.log_prob_missing}))
    else:
        extra = (
            f"; mean log p(x_missing | x_observed) = {summary['log_prob_missing_mean']:.2f} "
            f"nats ({r.log_prob_method})"
            if r.log_prob_missing is not None
            else ""
        )
        print(
            f"imputed {len(x)} {args.split} examples of {name} under the {args.mask} mask "
            f"({summary['missing_fraction']:.0%} missing), {args.num_samples} draws each, "
            f"by {r.method}{extra}; written to {path}"
        )
    return 0


def cmd_embed(args) -> int:
    """``genmodels embed``: the embeddings of a split of the version's own data, to .npz/.npy."""
    import torch

    from .cli import CLIError, _evaluation_data, _load, _registry_uri

    suffix = Path(args.out).suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise CLIError(
            f"bad value {args.out!r} for --out: give a .npz (embedding and labels) or .npy file"
        )
    model, info = _load(args, _registry_uri(args))
    name = f"{args.model} v{info['version']}"
    _require(model, "embed", name)
    x, y = split_arrays(_evaluation_data(args, info), args.split)
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    with torch.no_grad():
        z = torch.cat(
            [model.embed(torch.from_numpy(x[i : i + 500])) for i in range(0, len(x), 500)]
        )
    z = z.flatten(1).numpy()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        np.savez_compressed(path, embedding=z, y=y)
    else:
        np.save(path, z, allow_pickle=False)
    print(
        f"embedded {len(x)} {args.split} examples of {name}: {z.shape[1]} dims, written to {path}"
    )
    return 0


def classification_report(log_probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix of predictions ``argmax log_probs``
    against labels ``y`` (rows with ``y = -1`` must be left out first).

    Args:
        log_probs: ``(N, K)`` class log-probabilities (``classify``'s output).
        y: ``(N,)`` true labels in ``0..K-1``.

    Returns:
        ``n``, ``correct``, ``accuracy``, ``per_class_accuracy`` (``K`` values, NaN for a class
        with no rows) and ``confusion`` (``K x K`` counts; rows: true class, columns: predicted).
    """
    k = log_probs.shape[1]
    pred = log_probs.argmax(1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, pred), 1)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    correct = int(np.trace(confusion))
    return {
        "n": len(y),
        "correct": correct,
        "accuracy": correct / max(1, len(y)),
        "per_class_accuracy": per_class,
        "confusion": confusion,
    }


def confusion_lines(report: dict[str, Any]) -> list[str]:
    """The confusion matrix as text: one row per true class, its accuracy at the end."""
    confusion = report["confusion"]
    k = len(confusion)
    width = max(4, len(str(confusion.max())) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(k)) + "   accuracy"]
    for i in range(k):
        acc = report["per_class_accuracy"][i]
        lines.append(
            f"{i:>9}"
            + "".join(f"{c:>{width}}" for c in confusion[i])
            + ("          -" if np.isnan(acc) else f"{acc:>11.3f}")
        )
    return lines


def cmd_classify(args) -> int:
    """``genmodels classify``: classify a split of the version's own data (or ``--dataset``);
    accuracy, per-class accuracy and the confusion matrix against its labels (all of them:
    this judges after training, whatever labels the model was trained with)."""
    import torch

    from .cli import CLIError, _evaluation_data, _load, _registry_uri

    if args.n is not None and args.n < 1:
        raise CLIError(f"bad value {args.n} for --n (at least 1 example)")
    if args.batch_size < 1:
        raise CLIError(f"bad value {args.batch_size} for --batch-size (at least 1)")
    model, info = _load(args, _registry_uri(args))
    name = f"{args.model} v{info['version']}"
    _require(model, "classify", name)
    prepared = _evaluation_data(args, info)
    x, y = split_arrays(prepared, args.split)  # every label: the judge's view
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    labelled = y >= 0
    if not labelled.any():
        raise CLIError(
            f"the {args.split} split of {prepared.name!r} has no labels: nothing to judge "
            f"{name}'s classes against"
        )
    x, y = x[labelled], y[labelled]
    with torch.no_grad():
        log_probs = torch.cat(
            [
                model.classify(torch.from_numpy(x[i : i + args.batch_size]))
                for i in range(0, len(x), args.batch_size)
            ]
        ).numpy()
    k = log_probs.shape[1]
    if y.max() >= k:
        raise CLIError(
            f"the {args.split} split of {prepared.name!r} has labels up to {y.max()} but {name} "
            f"classifies into {k} classes"
        )
    report = classification_report(log_probs, y)
    budget = (info["meta"].get("preprocessing") or {}).get("labels")
    trained = f"{budget['per_class']} labels per class" if budget else "every label"
    head = {
        "model": args.model,
        "version": info["version"],
        "split": args.split,
        "dataset": prepared.name,
        "num_classes": k,
        "trained_with": trained,
        "unlabelled_skipped": int((~labelled).sum()),
    }
    if args.json:
        print(dumps({**head, **report}))
        return 0
    skipped = (
        f"; {head['unlabelled_skipped']} unlabelled rows skipped"
        if head["unlabelled_skipped"]
        else ""
    )
    print(
        f"classified {report['n']} {args.split} examples of {prepared.name} with {name} "
        f"(trained with {trained}): accuracy {report['accuracy']:.4f} "
        f"({report['correct']}/{report['n']}){skipped}"
    )
    print("confusion matrix (rows: true class, columns: predicted class):")
    for line in confusion_lines(report):
        print(line)
    return 0


def cmd_translate(args) -> int:
    """``genmodels translate``: translate the first ``--n`` examples of a split of the version's
    own pair data (or ``--dataset``) and write source | translated | truth, with the IoU of the
    foreground and the L1 against the truth."""
    import torch

    from .cli import CLIError, _evaluation_data, _load, _registry_uri

    if not 1 <= args.n <= 64:
        raise CLIError(f"bad value {args.n} for --n (1..64 examples)")
    model, info = _load(args, _registry_uri(args))
    name = f"{args.model} v{info['version']}"
    _require(model, "translate", name)
    direction = args.direction or model.directions[0]
    if direction not in model.directions:
        raise CLIError(
            f"bad value {direction!r} for --direction: {name} translates "
            f"{', '.join(model.directions)}"
        )
    prepared = _evaluation_data(args, info)
    if not hasattr(prepared, "arrays"):
        raise CLIError(
            f"{prepared.name!r} is not a pair dataset (no x_target to translate against): "
            "pass --dataset with one, e.g. mnist-edge-paired"
        )
    arrays = prepared.arrays(args.split)
    src, truth = ("x", "x_target") if direction == "a2b" else ("x_target", "x")
    x, t = arrays[src][: args.n], arrays[truth][: args.n]
    out = model.translate(torch.from_numpy(x), direction).numpy()
    iou = float(_iou(out, t).mean())
    l1 = float(np.abs(out - t).mean())
    cfg = model.config
    a, b = getattr(cfg, "domain_a", "a"), getattr(cfg, "domain_b", "b")
    names = (a, b) if direction == "a2b" else (b, a)
    path = Path(args.out)
    if path.suffix.lower() == ".npz":
        np.savez_compressed(path, source=x, translated=out, truth=t)
    else:
        imgs = [to_images(v, model.input_shape, 2) for v in (x, out, t)]
        save_rows(
            [list(r) for r in imgs],
            path,
            labels=[names[0], f"{names[0]}->{names[1]}", f"{names[1]} (truth)"],
        )
    result = {
        "model": args.model,
        "version": info["version"],
        "direction": direction,
        "split": args.split,
        "n": len(x),
        "iou": iou,
        "l1": l1,
        "out": str(path),
    }
    if args.json:
        print(dumps(result))
    else:
        print(
            f"translated {len(x)} {args.split} examples {direction} ({names[0]} -> {names[1]}) "
            f"with {name}: IoU {iou:.4f}, L1 {l1:.4f} against the truth; wrote {path}"
        )
    return 0


def cmd_predict(args) -> int:
    """``genmodels predict``: roll out the last ``--steps`` frames of the first ``--n`` sequences
    of a split of the version's own sequence data (or ``--dataset``) from the frames before them,
    write true | predicted rows (``--compare``: a second model's row too) and print the per-pixel
    MSE (on [0, 1]) per step beside the copy-last-frame baseline."""
    import torch

    from .cli import CLIError, _evaluation_data, _load, _registry_uri

    if not 1 <= args.n <= 16:
        raise CLIError(f"bad value {args.n} for --n (1..16 sequences)")
    uri = _registry_uri(args)
    models = []
    for ref_name in [args.model] + ([args.compare] if args.compare else []):
        ref = args.ref if ref_name == args.model else "champion"
        sub = argparse_copy(args, model=ref_name, ref=ref)
        model, info = _load(sub, uri)
        name = f"{ref_name} v{info['version']}"
        _require(model, "predict", name)
        models.append((ref_name, name, model, info))
    prepared = _evaluation_data(args, models[0][3])
    if not hasattr(prepared, "seqs"):
        raise CLIError(
            f"{prepared.name!r} is not a sequence dataset (no frames to predict): pass --dataset "
            "with one, e.g. moving-mnist"
        )
    x = prepared.arrays(args.split)["x"][: args.n]
    t = x.shape[1]
    if not 1 <= args.steps < t:
        raise CLIError(
            f"bad value {args.steps} for --steps (1..{t - 1}: sequences have {t} frames)"
        )
    past, truth = x[:, : t - args.steps], x[:, t - args.steps :]
    scale = prepared.levels - 1
    copy = ((past[:, -1:] - truth) / scale) ** 2  # the copy-last-frame baseline
    copy_mse = copy.reshape(len(x), args.steps, -1).mean((0, 2))
    results, preds = [], []
    for _ref, name, model, _ in models:
        if tuple(model.input_shape[1:]) != tuple(x.shape[2:]):
            raise CLIError(
                f"{name} predicts frames of shape {tuple(model.input_shape[1:])}; "
                f"{prepared.name!r} has {tuple(x.shape[2:])}"
            )
        pred = model.predict(torch.from_numpy(past), steps=args.steps).numpy()
        mse = (((pred - truth) / scale) ** 2).reshape(len(x), args.steps, -1).mean((0, 2))
        preds.append(pred)
        results.append({"mse": mse})
    path = Path(args.out)
    frame_shape = tuple(x.shape[2:])
    if path.suffix.lower() == ".npz":
        np.savez_compressed(
            path, past=past, truth=truth, **{f"predicted_{i}": p for i, p in enumerate(preds)}
        )
    elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        rows, labels = [], []
        for i in range(len(x)):
            ctx = list(to_images(past[i], frame_shape, prepared.levels))
            rows.append(ctx + list(to_images(truth[i], frame_shape, prepared.levels)))
            labels.append(f"{i}: true")
            for (ref_name, *_rest), pred in zip(models, preds):
                rows.append(ctx + list(to_images(pred[i], frame_shape, prepared.levels)))
                labels.append(f"{i}: {ref_name}")
        save_rows(rows, path, labels=labels)
    else:
        raise CLIError(
            f"--out {path}: unsupported suffix {path.suffix or '(none)'!r}; use .png or .npz"
        )
    result = {
        "split": args.split,
        "n": len(x),
        "context_frames": t - args.steps,
        "steps": args.steps,
        "mse_convention": "per pixel on the [0, 1] scale, mean over sequences",
        "copy_last_mse": copy_mse.tolist(),
        "models": [
            {"model": m[0], "version": m[3]["version"], "mse": r["mse"].tolist()}
            for m, r in zip(models, results)
        ],
        "out": str(path),
    }
    if args.json:
        print(dumps(result))
        return 0
    print(
        f"predicted {args.steps} frames after {t - args.steps} for {len(x)} {args.split} "
        f"sequences of {prepared.name}; per-pixel MSE on [0, 1] per step:"
    )
    print("step  " + "  ".join(f"{m[1]:>14}" for m in models) + "       copy-last")
    for k in range(args.steps):
        cells = "  ".join(f"{r['mse'][k]:>14.5f}" for r in results)
        print(f"t+{k + 1:<3} {cells}  {copy_mse[k]:>14.5f}")
    print(f"wrote {path}")
    return 0


def argparse_copy(args, **changes):
    """A copy of an ``argparse.Namespace`` with ``changes``."""
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})


def _iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p, t = pred.reshape(len(pred), -1) > 0.5, truth.reshape(len(truth), -1) > 0.5
    inter, union = (p & t).sum(1), (p | t).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def add_use_commands(command, add_model_options, add_registry_option) -> None:
    """Register ``impute``, ``embed`` and ``classify`` on the CLI (``command`` makes a
    subparser)."""
    from .masks import MASK_KINDS

    sp = command(
        "impute",
        cmd_impute,
        "fill in hidden pixels of the version's own test digits with a registered model",
        "Hide part of the first --n examples of a split (the version's own data, rebuilt "
        "exactly) under a named mask, impute them with the model's own method (exact where it "
        "can be), and write masked | imputations | truth.",
    )
    add_model_options(sp)
    sp.add_argument(
        "--mask", default="top-half", choices=MASK_KINDS, help="what to hide (default top-half)"
    )
    sp.add_argument("--n", type=int, default=16, help="examples (1..64, default 16)")
    sp.add_argument(
        "--num-samples", type=int, default=3, help="imputations per example (1..16, default 3)"
    )
    sp.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="(default test)"
    )
    sp.add_argument("--dataset", metavar="NAME|PATH", help="other data (default: the version's)")
    sp.add_argument(
        "--out",
        default="impute.png",
        metavar="FILE",
        help=".png/.jpg picture (masked | imputations | truth) or .npz arrays (default impute.png)",
    )
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_option(sp)

    sp = command(
        "embed",
        cmd_embed,
        "embed a split of the version's own data with a registered model",
    )
    add_model_options(sp)
    sp.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="(default test)"
    )
    sp.add_argument("--n", type=int, help="only the first N examples")
    sp.add_argument("--dataset", metavar="NAME|PATH", help="other data (default: the version's)")
    sp.add_argument(
        "--out", default="embedding.npz", metavar="FILE", help=".npz (with labels) or .npy"
    )
    add_registry_option(sp)

    sp = command(
        "classify",
        cmd_classify,
        "classify a split with a registered model: accuracy and the confusion matrix",
        "Classify a split of the version's own data (rebuilt exactly, the same label draw "
        "included) or of --dataset with a model that has the classify capability, and judge "
        "it against every label of the split (after training; whatever labels it was trained "
        "with): accuracy, per-class accuracy, confusion matrix. No Ray needed.",
    )
    add_model_options(sp)
    sp.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="(default test)"
    )
    sp.add_argument("--dataset", metavar="NAME|PATH", help="other data (default: the version's)")
    sp.add_argument("--n", type=int, help="only the first N examples")
    sp.add_argument(
        "--batch-size", type=int, default=500, help="examples per model call (default 500)"
    )
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_option(sp)

    sp = command(
        "predict",
        cmd_predict,
        "predict the next frames of sequences with a registered model: true | predicted rows",
        "Roll out the last --steps frames of the first --n sequences of a split of the "
        "version's own sequence data (rebuilt exactly) or of --dataset from the frames before "
        "them, write a strip (per sequence: the true row, then each model's: context frames, "
        "then its predictions) and print the per-pixel MSE per step beside the copy-last-frame "
        "baseline. No Ray needed.",
    )
    add_model_options(sp)
    sp.add_argument("--n", type=int, default=4, help="sequences (1..16, default 4)")
    sp.add_argument("--steps", type=int, default=5, help="frames to predict (default 5)")
    sp.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="(default test)"
    )
    sp.add_argument("--compare", metavar="NAME", help="a second model's row (its champion)")
    sp.add_argument(
        "--dataset", metavar="NAME", help="other sequence data (default: the version's)"
    )
    sp.add_argument(
        "--out", default="predict.png", metavar="FILE", help=".png strip or .npz arrays"
    )
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_option(sp)

    sp = command(
        "translate",
        cmd_translate,
        "translate images of a pair dataset with a registered model: source | translated | truth",
        "Translate the first --n examples of a split of the version's own pair data (rebuilt "
        "exactly) or of --dataset in --direction (default: the model's first), write a strip "
        "(rows: source, translated, truth) and print the IoU of the foreground and the L1 "
        "against the truth. No Ray needed.",
    )
    add_model_options(sp)
    sp.add_argument("--direction", help="a2b or b2a (default: the model's first direction)")
    sp.add_argument("--n", type=int, default=8, help="examples (1..64, default 8)")
    sp.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="(default test)"
    )
    sp.add_argument(
        "--dataset", metavar="NAME|PATH", help="other pair data (default: the version's)"
    )
    sp.add_argument(
        "--out", default="translate.png", metavar="FILE", help=".png strip or .npz arrays"
    )
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_option(sp)
