"""MedMNIST v2 data: finding, verifying and loading the official files, and the scarce reference set.

``medmnist.INFO[flag]`` is the single source of labels, task, channels, split sizes, URL and MD5.
Files are loaded through the ``medmnist`` dataset classes with ``download=False`` (their own
download path imports torchvision, which cannot load against the CPU torch build); this module
finds the file, verifies its MD5 and, when online, downloads it with urllib.

Search order for ``<flag>[_<size>].npz``: an explicit ``data_root`` argument alone (it must exist;
nothing is downloaded into it); else ``$MEDMNIST_ROOT``, ``data/medmnist/`` of the project, else a
download from ``INFO[flag]`` into ``data/medmnist/``.

Used by every notebook; ``01_data.ipynb`` shows what it loads.
Reference: Yang et al., "MedMNIST v2", Scientific Data 10, 41 (2023), https://doi.org/10.1038/s41597-022-01721-8
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import medmnist
import numpy as np
import torch
from medmnist import INFO

from xaiprune import names, paths
from xaiprune.names import flags_2d  # noqa: F401 (data.flags_2d: the flags this loader accepts)

SIZES = names.SIZES
SPLITS = ("train", "val", "test")
ENV_ROOT = "MEDMNIST_ROOT"


class DataError(RuntimeError):
    """A MedMNIST file cannot be found, downloaded or trusted; the message says what to do."""




def check_flag_size(flag: str, size: int) -> dict:
    """Return ``INFO[flag]`` after checking that ``flag`` is a 2D MedMNIST flag and ``size`` exists."""
    if flag not in INFO:
        raise ValueError(f"flag={flag!r} is not a MedMNIST dataset; expected one of {flags_2d()}")
    if flag not in flags_2d():
        raise ValueError(f"flag={flag!r} is a 3D dataset; this study handles 2D flags: {flags_2d()}")
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not a MedMNIST image size; expected one of {SIZES}")
    return INFO[flag]


def file_name(flag: str, size: int) -> str:
    """Official file name: ``pneumoniamnist.npz`` at 28, ``pneumoniamnist_64.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def expected_md5(flag: str, size: int) -> str:
    return check_flag_size(flag, size)[f"MD5{_suffix(size)}"]


def url(flag: str, size: int) -> str:
    return check_flag_size(flag, size)[f"url{_suffix(size)}"]


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def candidate_dirs(data_root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched, in order: ``data_root`` alone if given, else ``$MEDMNIST_ROOT``, ``data/medmnist/``.

    An explicit ``data_root`` is the only place searched (a typo must not silently fall through to
    other folders), and it must exist.
    """
    if data_root:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DataError(f"data_root={str(data_root)!r}: expected an existing folder holding the MedMNIST npz; "
                            f"{root} does not exist")
        return [root]
    dirs = []
    if os.environ.get(ENV_ROOT):
        dirs.append(Path(os.environ[ENV_ROOT]).expanduser())
    dirs.append(paths.MEDMNIST_DIR)
    return dirs


def verify(path: Path, flag: str, size: int) -> Path:
    """Raise :class:`DataError` unless ``path`` has the MD5 that ``INFO[flag]`` gives."""
    want, got = expected_md5(flag, size), md5sum(path)
    if got != want:
        raise DataError(
            f"{path} has MD5 {got}, but INFO['{flag}'] expects {want}: the file is corrupt, "
            f"truncated or not the official one. Delete it and download it again from "
            f"{url(flag, size)}"
        )
    return path


def download(flag: str, size: int, dest_dir: Path | None = None, timeout: float = 60.0) -> Path:
    """Download the official file with urllib into ``dest_dir`` (default ``data/medmnist/``).

    The file is written to a temporary name, verified, then moved in place, so a failed or
    interrupted download never leaves a file that looks valid.
    """
    dest_dir = Path(dest_dir or paths.MEDMNIST_DIR)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / file_name(flag, size)
    with tempfile.NamedTemporaryFile(dir=dest_dir, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url(flag, size), timeout=timeout) as resp:
                shutil.copyfileobj(resp, tmp)
        except Exception:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    try:
        verify(tmp_path, flag, size)
    except DataError:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(target)
    return target


def resolve(flag: str, size: int = 28, data_root: str | os.PathLike | None = None,
            allow_download: bool = True) -> Path:
    """Path of the verified official file for ``flag`` at ``size``.

    Searches :func:`candidate_dirs` in order and returns the first file present, after checking
    its MD5 (a present file with a wrong MD5 is an error, not skipped). If none is present and
    ``allow_download``, downloads into ``data/medmnist/`` (never when ``data_root`` names the folder).
    """
    check_flag_size(flag, size)
    name = file_name(flag, size)
    searched = candidate_dirs(data_root)
    for folder in searched:
        path = folder / name
        if path.is_file():
            return verify(path, flag, size)
    problem = "download disabled" if not data_root else "data_root names the folder; nothing is downloaded"
    if allow_download and not data_root:
        try:
            return download(flag, size)
        except DataError:
            raise
        except Exception as exc:  # offline, DNS, HTTP error
            problem = f"download failed: {exc}"
    where = "\n".join(f"  - {d / name}" for d in searched)
    raise DataError(
        f"MedMNIST file {name} not found; searched:\n{where}\n({problem}).\n"
        f"Get it from {url(flag, size)} (MD5 {expected_md5(flag, size)}) and put it in one of "
        + ("that folder." if data_root else f"those folders, or point ${ENV_ROOT} or the data_root parameter at the folder "
                                             "that holds it.")
    )


@dataclass(frozen=True)
class Split:
    """One split as tensors: ``x`` float (N, C, H, W) normalised to [-1, 1], ``y`` int64 labels.

    ``y`` is (N,) for single-label tasks and (N, L) for multi-label ChestMNIST.
    """

    x: torch.Tensor
    y: torch.Tensor
    flag: str
    split: str
    size: int

    def __len__(self) -> int:
        return len(self.x)

    def dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x, self.y)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) to float (N, C, H, W) with mean 0.5, std 0.5.

    The normalisation of the MedMNIST v2 benchmark code (``Normalize(mean=[.5], std=[.5])``),
    written with torch instead of torchvision.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.sub_(0.5).div_(0.5).contiguous()


def load_split(flag: str, split: str, size: int = 28,
               data_root: str | os.PathLike | None = None) -> Split:
    """Load one split of a 2D MedMNIST flag as tensors, through the ``medmnist`` class.

    Args:
        flag: a 2D flag of ``medmnist.INFO`` (e.g. ``"pneumoniamnist"``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: image side in pixels, one of 28, 64, 128, 224.
        data_root: optional folder searched first (see :func:`resolve`).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    info = check_flag_size(flag, size)
    path = resolve(flag, size, data_root)
    dataset_cls = getattr(medmnist, info["python_class"])
    ds = dataset_cls(split=split, download=False, root=str(path.parent), size=size)
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    if info["task"] != "multi-label, binary-class":
        labels = labels[:, 0]
    return Split(x=to_tensor(ds.imgs), y=labels, flag=flag, split=split, size=size)


def class_names(flag: str) -> list[str]:
    """Label names in label order, from ``INFO[flag]['label']``."""
    labels = INFO[flag]["label"]
    return [labels[str(i)] for i in range(len(labels))]


def class_indices(y: torch.Tensor, c: int) -> torch.Tensor:
    """Indices of the images of class ``c`` (for multi-label tasks: whose label ``c`` is positive)."""
    return torch.nonzero((y[:, c] == 1) if y.ndim == 2 else (y == c)).flatten()


def reference_set(val: Split, n_per_class: int = 10, bias: dict[int, float] | None = None,
                  seed: int = 0) -> Split:
    """The scarce local reference set: a seeded draw of images from the validation split.

    Args:
        val: the validation split (never the test split: the study evaluates on test).
        n_per_class: images per class when unbiased (multi-label: per positive label, so an image
            may be drawn for two labels); the total is ``n_per_class * n_classes``.
        bias: optional class ratio, e.g. ``{0: 0.9, 1: 0.1}``: the same total is drawn with these
            fractions (missing classes get 0, at least one image per listed class with a positive
            fraction).
        seed: the draw's seed; the same seed gives the same images.
    """
    if val.split != "val":
        raise ValueError(f"reference set must come from the validation split, got split={val.split!r}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class}; expected a positive integer")
    n_classes = len(INFO[val.flag]["label"])
    total = n_per_class * n_classes
    if bias is None:
        counts = {c: n_per_class for c in range(n_classes)}
    else:
        if any(c not in range(n_classes) or f < 0 for c, f in bias.items()) or sum(bias.values()) <= 0:
            raise ValueError(f"bias={bias}; expected non-negative fractions for classes 0..{n_classes - 1}")
        norm = sum(bias.values())
        counts = {c: (max(1, round(total * bias.get(c, 0) / norm)) if bias.get(c, 0) > 0 else 0)
                  for c in range(n_classes)}
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in counts.items():
        idx = class_indices(val.y, c)
        if k > len(idx):
            raise ValueError(f"class {c} has {len(idx)} validation images; cannot draw {k}")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    idx = torch.cat(chosen)
    return Split(x=val.x[idx], y=val.y[idx], flag=val.flag, split="val", size=val.size)


def excluding(split: Split, used: list[torch.Tensor], n: int = 0, seed: int = 0) -> Split:
    """The images of ``split`` that are in none of ``used`` (compared by content), optionally ``n`` of them drawn with
    ``seed`` (0: all), in their split order: where a choice is made when some images of the split already tuned
    something (reference images scored the filters, unlabelled ones re-estimated BatchNorm), so that the choice
    is not made on the images that shaped what it chooses between."""
    if n < 0:
        raise ValueError(f"n={n}; expected 0 (every image) or a positive number of images")
    taken = {hashlib.sha1(x.numpy().tobytes()).digest() for images in used for x in images}
    free = [i for i, x in enumerate(split.x) if hashlib.sha1(x.numpy().tobytes()).digest() not in taken]
    if not free:
        raise ValueError(f"every image of the {split.split} split is among the used ones: nothing left to choose on")
    order = torch.randperm(len(free), generator=torch.Generator().manual_seed(seed))
    idx = torch.tensor(free, dtype=torch.long)[order[:n] if n else order].sort().values
    return Split(x=split.x[idx], y=split.y[idx], flag=split.flag, split=split.split, size=split.size)


def skewed_fractions(n_classes: int, major: float) -> dict[int, float]:
    """Class fractions of a draw biased toward class 0: ``major`` for class 0, the rest split evenly.

    Fits any number of classes (``{0: 0.9, 1: 0.1}`` for two, ``{0: 0.9, 1: 0.025, ...}`` for five);
    used for the biased reference sets of notebooks 01 and 04.
    """
    if n_classes < 2 or not 0 < major < 1:
        raise ValueError(f"n_classes={n_classes}, major={major}: expected at least 2 classes and 0 < major < 1")
    return {0: major, **{c: (1 - major) / (n_classes - 1) for c in range(1, n_classes)}}


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
