"""Tiny synthetic MedMNIST files in the official npz format, for the tests (never real data, never results)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xaiprune.data import check_flag_size, file_name


def write_synthetic(folder: str | os.PathLike, flag: str = "pneumoniamnist", size: int = 28,
                    n: dict[str, int] | None = None, seed: int = 0, separable: bool = False) -> Path:
    """Write a tiny synthetic file in the official npz format (for tests; never real data).

    Keys ``{split}_images`` (uint8, N x H x W[x C]) and ``{split}_labels`` (uint8, N x 1 or N x L),
    like the official files; single-label classes cycle 0, 1, ..., so every split is balanced. With
    ``separable``, an image of class c is brighter in the c-th horizontal band, so that a model can
    learn the task. Its MD5 does not match INFO, so tests load it with verification patched or through
    :func:`to_tensor` directly.
    """
    info = check_flag_size(flag, size)
    n = n or {"train": 16, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    n_classes = len(info["label"])
    arrays = {}
    for split, count in n.items():
        shape = (count, size, size) if info["n_channels"] == 1 else (count, size, size, info["n_channels"])
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if info["task"] == "multi-label, binary-class":
            arrays[f"{split}_labels"] = rng.integers(0, 2, size=(count, n_classes), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = (np.arange(count) % n_classes).astype(np.uint8)[:, None]
            if separable:
                band = size // n_classes
                images = arrays[f"{split}_images"] // 2
                for i, c in enumerate(arrays[f"{split}_labels"][:, 0]):
                    images[i, c * band:(c + 1) * band] += 127
                arrays[f"{split}_images"] = images
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(flag, size)
    np.savez_compressed(path, **arrays)
    return path
