"""Shared fixtures: synthetic MedMNIST files in the official format, and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from medmnist import INFO

from xaiprune import data, paths


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """Write a tiny synthetic file and make INFO trust it (its MD5 patched in for the test only).

    Returns a function ``make(flag="pneumoniamnist", size=28, folder=None, n=None) -> Path``.
    """

    def make(flag: str = "pneumoniamnist", size: int = 28, folder: Path | None = None,
             n: dict | None = None, seed: int = 0) -> Path:
        path = data.write_synthetic(folder or tmp_path / "synthetic", flag, size, n=n, seed=seed)
        key = "MD5" if size == 28 else f"MD5_{size}"
        monkeypatch.setitem(INFO[flag], key, data.md5sum(path))
        return path

    return make


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point data/medmnist and artifacts/ at empty temporary folders and clear $MEDMNIST_ROOT."""
    monkeypatch.delenv(data.ENV_ROOT, raising=False)
    monkeypatch.setattr(paths, "MEDMNIST_DIR", tmp_path / "project_data" / "medmnist")
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    return tmp_path


def real_root() -> Path | None:
    root = os.environ.get(data.ENV_ROOT)
    if root and (Path(root) / "pneumoniamnist.npz").is_file():
        return Path(root)
    if (paths.MEDMNIST_DIR / "pneumoniamnist.npz").is_file():
        return paths.MEDMNIST_DIR
    return None


needs_real_data = pytest.mark.skipif(
    real_root() is None, reason="real PneumoniaMNIST not found: set MEDMNIST_ROOT (CI uses ../shared/medmnist)")
