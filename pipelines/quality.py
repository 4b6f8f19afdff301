"""The sample-quality yardstick in the pipelines: one classifier per dataset, for every family.

``genmodels.quality`` holds the maths (a small classifier, its features' Fréchet distance, mean
confidence, class coverage). Here the classifier meets the data:

* ``yardstick_for(data)`` trains it reproducibly on the dataset's train split (labels needed;
  validation split for its accuracy) or loads it from the cache ``$GENMODELS_CACHE/yardsticks``
  (default ``~/.cache/genmodels``), keyed by the dataset fingerprint and the yardstick settings,
  as safetensors + JSON (never a pickle). An unlabelled dataset has no yardstick (``None``).
* ``Yardstick.payload()`` ships it, with up to ``max_reference`` held-out examples of the
  validation and test splits, to the Ray Train workers (a few MB for the bundled data).
* ``Yardstick.evaluate(model, split)`` draws as many samples as there are reference examples
  (FD is biased at small counts: versions are only compared at the same count, which the
  registry's ``method`` tag names) and returns the metrics and the samples.

Families without a likelihood (GAN, AAE, GSN) select their best epoch on the validation FD; every
family reports the test-split yardstick at the end of training, and the registry stores it with
the version, together with the samples it was computed from (drawn once per version).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmodels.quality import YardstickClassifier, sample_quality, train_yardstick

VERSION = 1  # bump when the classifier or its training changes: old cache entries are ignored
MAX_REFERENCE = 1000


def cache_dir() -> Path:
    return Path(os.environ.get("GENMODELS_CACHE") or Path.home() / ".cache" / "genmodels")


@dataclass
class Yardstick:
    """A trained yardstick classifier with the held-out reference data it compares against."""

    classifier: YardstickClassifier
    key: str
    info: dict[str, Any]
    reference: dict[str, np.ndarray]  # split -> (N, *input_shape) uint8/float in the data space

    @property
    def method(self) -> str:
        """What a yardstick value is comparable with: same classifier, same sample count."""
        n = len(self.reference.get("test", self.reference.get("validation", [])))
        return f"yardstick-fd-n={n}-{self.key[:8]}"

    def payload(self) -> dict[str, Any]:
        """A plain dict (tensors, arrays, JSON-able values) for ``from_payload`` on a worker."""
        return {
            "config": self.classifier.export_config(),
            "state": {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()},
            "key": self.key,
            "info": self.info,
            "reference": self.reference,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Yardstick:
        classifier = YardstickClassifier(**p["config"])
        classifier.load_state_dict(p["state"])
        return cls(classifier.eval(), p["key"], p["info"], p["reference"])

    @torch.no_grad()
    def evaluate(
        self, model, split: str, seed: int = 0, chunk: int = 100
    ) -> tuple[dict[str, float], np.ndarray]:
        """Sample ``len(reference[split])`` examples from ``model``; their quality and them."""
        reference = torch.as_tensor(self.reference[split]).float()
        model.eval()
        g = torch.Generator().manual_seed(seed)
        parts = []
        for start in range(0, len(reference), chunk):
            n = min(chunk, len(reference) - start)
            parts.append(model.sample(n, generator=g).cpu().float())
        samples = torch.cat(parts)
        q = sample_quality(self.classifier, samples, reference)
        metrics = {f"yardstick_{k}": float(v) for k, v in q.as_dict().items()}
        dtype = np.uint8 if model.levels <= 256 else np.int32
        return metrics, samples.numpy().astype(dtype)


def _key(data, seed: int) -> str:
    blob = json.dumps({"v": VERSION, "fp": data.fingerprint, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_data_space(x: np.ndarray, data, split: str, seed: int) -> np.ndarray:
    """The split as the models see it; dynamic binarisation's train probabilities drawn once."""
    if split == "train" and data.train_is_probabilities:
        rng = np.random.default_rng(seed)
        x = (rng.random(x.shape) < x).astype(np.float32)
    return x


def yardstick_for(
    data, seed: int = 0, max_reference: int = MAX_REFERENCE, progress: bool = True
) -> Yardstick | None:
    """The dataset's yardstick (cached), or ``None`` when the train split has no labels."""
    from safetensors.torch import load_file, save_file

    x_train, y_train = data.numpy("train")
    if (y_train < 0).any() or len(np.unique(y_train)) < 2:
        return None
    reference = {}
    for split in ("validation", "test"):
        x, _ = data.numpy(split)
        reference[split] = x[:max_reference].astype(np.uint8 if data.levels <= 256 else np.int32)
    key = _key(data, seed)
    folder = cache_dir() / "yardsticks"
    weights, spec = folder / f"{key}.safetensors", folder / f"{key}.json"
    if weights.exists() and spec.exists():
        meta = json.loads(spec.read_text())
        classifier = YardstickClassifier(**meta["config"])
        classifier.load_state_dict(load_file(str(weights)))
        return Yardstick(classifier.eval(), key, meta["info"], reference)
    x_val, y_val = data.numpy("validation")
    t0 = time.monotonic()
    if progress:
        print(f"[genmodels] training the sample-quality yardstick for {data.name} (once; cached)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every machine, and no thread
    try:  # contention on a busy host (2 threads were up to 9x slower on a loaded 2-core box)
        classifier, info = _train(data, x_train, y_train, x_val, y_val, seed)
    finally:
        torch.set_num_threads(threads)
    info = {**info, "train_time_s": time.monotonic() - t0, "dataset": data.name}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}"  # write then rename: readers never see half a file
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, f"{tmp}.st")
    Path(f"{tmp}.json").write_text(
        json.dumps({"config": classifier.export_config(), "info": info}, default=float)
    )
    os.replace(f"{tmp}.st", weights)
    os.replace(f"{tmp}.json", spec)
    return Yardstick(classifier.eval(), key, info, reference)


def _train(data, x_train, y_train, x_val, y_val, seed):
    return train_yardstick(
        torch.from_numpy(_as_data_space(x_train, data, "train", seed)),
        torch.from_numpy(y_train),
        tuple(data.input_shape),
        data.levels,
        x_val=torch.from_numpy(x_val) if (y_val >= 0).all() else None,
        y_val=torch.from_numpy(y_val) if (y_val >= 0).all() else None,
        seed=seed,
    )
