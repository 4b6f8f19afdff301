"""What the uses of a model look like outside Python: pictures of imputations, and the CLI
commands ``genmodels impute`` / ``genmodels embed`` (hooked into ``pipelines.cli``).

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


def save_rows(rows: list[list[np.ndarray]], path: str | Path, min_px: int = 480) -> Path:
    """A table of images: ``rows[r][c]`` is a uint8 ``(H, W, C)`` image (all the same size);
    1-px white gaps, scaled up (nearest) so its longer side is at least ``min_px``."""
    from PIL import Image

    h, w, c = rows[0][0].shape
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            grid[1 + i * (h + 1) : 1 + i * (h + 1) + h, 1 + j * (w + 1) : 1 + j * (w + 1) + w] = img
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    scale = max(1, math.ceil(min_px / max(pil.width, pil.height)))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
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
