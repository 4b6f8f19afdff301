"""PNG pictures people would rather see than read: sample grids and learning curves (Pillow)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def to_images(x: np.ndarray, input_shape: Sequence[int], levels: int) -> np.ndarray:
    """Data-space samples → uint8 images ``(N, H, W, C)``; flat ``(D,)`` data as a square-ish strip."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), *input_shape)
    if x.ndim == 2:  # (N, D): lay out as 1 x D rows
        x = x[:, None, None, :]
    x = np.clip(x / max(1, levels - 1), 0.0, 1.0)
    img = (x * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, C)
    if img.shape[-1] not in (1, 3):
        img = img[..., :1]
    return img


MIN_GRID_PX = 400  # grids are scaled up to at least this size so a person can see them


def save_grid(
    x: np.ndarray,
    input_shape: Sequence[int],
    levels: int,
    path: str | Path,
    scale: int | None = None,
) -> Path:
    """Tile samples into one picture (pad 1 px) and return its path.

    The format follows the suffix (``.png``, ``.jpg``...). ``scale`` up-scales the grid by an
    integer factor (nearest neighbour); by default the smallest factor >= 2 that makes its
    longer side at least ``MIN_GRID_PX`` pixels (64 8x8 digits: 73 px -> 438 px).
    """
    img = to_images(x, input_shape, levels)
    n, h, w, c = img.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 128, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img[i]
    mode = "L" if c == 1 else "RGB"
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid, mode=mode)
    if scale is None:
        scale = max(2, math.ceil(MIN_GRID_PX / max(pil.width, pil.height)))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path


def save_curves(
    curves: dict[str, Sequence[float]], path: str | Path, title: str = "", size=(480, 300)
) -> Path:
    """A minimal line plot of named series against epoch (no matplotlib needed)."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    pil = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(pil)
    values = [v for s in curves.values() for v in s if np.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    left, top, right, bottom = 50, 25, size[0] - 10, size[1] - 25
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 5), title, fill="black")
    draw.text((2, top), f"{hi:.1f}", fill="black")
    draw.text((2, bottom - 10), f"{lo:.1f}", fill="black")
    for i, (name, series) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        n = max(2, len(series))
        pts = [
            (left + (right - left) * j / (n - 1), bottom - (bottom - top) * (v - lo) / (hi - lo))
            for j, v in enumerate(series)
            if np.isfinite(v)
        ]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((left + 5 + 120 * i, bottom + 5), name, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path
