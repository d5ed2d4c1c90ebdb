"""Shared fixtures: synthetic MedMNIST files in the official format, and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from medmnist import INFO
from torch import nn

from xaiprune import data, models, paths
from xaiprune.synthetic import write_synthetic


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """Write a tiny synthetic file and make INFO trust it (its MD5 patched in for the test only).

    Returns a function ``make(flag="pneumoniamnist", size=28, folder=None, n=None) -> Path``.
    """

    def make(flag: str = "pneumoniamnist", size: int = 28, folder: Path | None = None,
             n: dict | None = None, seed: int = 0) -> Path:
        path = write_synthetic(folder or tmp_path / "synthetic", flag, size, n=n, seed=seed)
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


def split(n: int = 6, seed: int = 1) -> data.Split:
    """n random images with alternating labels 0, 1, 0, ... (a stand-in reference set)."""
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return data.Split(x=x, y=torch.arange(n) % 2, flag="pneumoniamnist", split="val", size=28)


def small(in_channels: int = 1, n_classes: int = 2) -> models.SegmentedModel:
    """small_cnn (16, 32, 64 filters) with non-trivial BatchNorm statistics and affine parameters, as after training."""
    torch.manual_seed(0)
    model = models.small_cnn(in_channels, n_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.2)
            m.bias.data.normal_(0.0, 0.1)
    return model.eval()
