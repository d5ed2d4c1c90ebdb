"""MedMNIST v2 data: finding, verifying and loading the official files, and the scarce reference set.

``medmnist.INFO[flag]`` is the single source of labels, task, channels, split sizes, URL and MD5.
Files are loaded through the ``medmnist`` dataset classes with ``download=False`` (their own
download path imports torchvision, which cannot load against the CPU torch build); this module
finds the file, verifies its MD5 and, when online, downloads it with urllib.

Search order for ``<flag>[_<size>].npz``: an explicit ``data_root`` argument alone (it must exist;
nothing is downloaded into it); else ``$MEDMNIST_ROOT``, ``data/medmnist/`` of the project, else a
download from ``INFO[flag]`` into ``data/medmnist/``.

One flag is the project's own construction, not a MedMNIST benchmark: ``hospital`` (:data:`names.HOSPITAL`)
unites pneumoniamnist (2 classes), breastmnist (2) and retinamnist (5, converted to grayscale by luminance)
into one 9-class triage task, labels offset in that order, each official split kept and each file
MD5-checked as usual. Each source is a *ward* (:class:`Ward`). Used by every notebook; ``01_data.ipynb`` shows
what it loads.
Reference: Yang et al., "MedMNIST v2", Scientific Data 10, 41 (2023), https://doi.org/10.1038/s41597-022-01721-8
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field
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


class ScarceClassWarning(UserWarning):
    """A class has fewer validation images than a reference set asks for: all of them were drawn."""


@dataclass(frozen=True)
class Ward:
    """One source of the ``hospital`` flag: its name, MedMNIST flag and the hospital labels of its classes."""

    name: str
    flag: str
    offset: int
    n_classes: int

    @property
    def classes(self) -> list[int]:
        return list(range(self.offset, self.offset + self.n_classes))

    @property
    def task(self) -> str:
        return "binary-class" if self.n_classes == 2 else "multi-class"


def wards() -> list[Ward]:
    """The wards of the ``hospital`` flag in label order: pneumonia (0-1), breast (2-3), retina (4-8)."""
    out, offset = [], 0
    for name, flag in names.WARDS.items():
        out.append(Ward(name, flag, offset, len(INFO[flag]["label"])))
        offset += out[-1].n_classes
    return out


def ward(name: str) -> Ward:
    if (found := {w.name: w for w in wards()}.get(name)) is None:
        raise ValueError(f"ward={name!r}; expected one of {[w.name for w in wards()]}")
    return found


def info(flag: str) -> dict:
    """``INFO[flag]`` for a MedMNIST flag; for ``hospital``, the same keys built from its three sources."""
    if flag != names.HOSPITAL:
        return INFO[flag]
    sources = [INFO[w.flag] for w in wards()]
    return {"python_class": None, "task": "multi-class", "n_channels": 1,
            "description": "The project's own 9-class triage task (not a MedMNIST benchmark): "
                           + ", ".join(names.WARDS.values()) + ", retina in grayscale by luminance.",
            "label": {str(w.offset + int(i)): f"{w.name}: {text}" for w in wards()
                      for i, text in INFO[w.flag]["label"].items()},
            "n_samples": {s: sum(src["n_samples"][s] for src in sources) for s in SPLITS}}


def check_flag_size(flag: str, size: int) -> dict:
    """Return ``info(flag)`` after checking that ``flag`` is a 2D MedMNIST flag (or ``hospital``) and ``size`` exists."""
    if flag != names.HOSPITAL and flag not in INFO:
        raise ValueError(f"flag={flag!r} is not a MedMNIST dataset; expected one of {flags_2d()}")
    if flag != names.HOSPITAL and flag not in flags_2d():
        raise ValueError(f"flag={flag!r} is a 3D dataset; this study handles 2D flags: {flags_2d()}")
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not a MedMNIST image size; expected one of {SIZES}")
    return info(flag)


def file_name(flag: str, size: int) -> str:
    """Official file name: ``pneumoniamnist.npz`` at 28, ``pneumoniamnist_64.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def expected_md5(flag: str, size: int) -> str:
    """The official MD5 (``hospital``: its sources' MD5s joined by ``+``, so that its caches follow any of them)."""
    if flag == names.HOSPITAL:
        return "+".join(expected_md5(w.flag, size) for w in wards())
    return check_flag_size(flag, size)["MD5" if size == 28 else f"MD5_{size}"]


def url(flag: str, size: int) -> str:
    return check_flag_size(flag, size)["url" if size == 28 else f"url_{size}"]


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

    ``y`` is (N,) for single-label tasks and (N, L) for multi-label ChestMNIST. ``counts`` is set on a
    reference set only: per class, the images asked, available and drawn (:func:`reference_set`).
    """

    x: torch.Tensor
    y: torch.Tensor
    flag: str
    split: str
    size: int
    counts: dict | None = field(default=None, compare=False)

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
    if flag == names.HOSPITAL:
        return _load_hospital(split, size, data_root)
    info = check_flag_size(flag, size)
    path = resolve(flag, size, data_root)
    dataset_cls = getattr(medmnist, info["python_class"])
    ds = dataset_cls(split=split, download=False, root=str(path.parent), size=size)
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    if info["task"] != "multi-label, binary-class":
        labels = labels[:, 0]
    return Split(x=to_tensor(ds.imgs), y=labels, flag=flag, split=split, size=size)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights (PIL's "L"); they sum to 1, so they commute with [-1, 1]


def _load_hospital(split: str, size: int, data_root: str | os.PathLike | None) -> Split:
    """The ``hospital`` split: each source's split (resolved and MD5-checked), RGB to luminance, labels offset."""
    xs, ys = [], []
    for w in wards():
        part = load_split(w.flag, split, size, data_root)
        x = part.x if part.x.shape[1] == 1 else torch.einsum("nchw,c->nhw", part.x, torch.tensor(LUMA))[:, None]
        xs.append(x)
        ys.append(part.y + w.offset)
    return Split(x=torch.cat(xs).contiguous(), y=torch.cat(ys), flag=names.HOSPITAL, split=split, size=size)


def ward_split(split: Split, name: str) -> Split:
    """The images of ``split`` (a ``hospital`` split) from ward ``name``'s source, with their hospital labels."""
    if split.flag != names.HOSPITAL:
        raise ValueError(f"ward_split needs a {names.HOSPITAL!r} split, got flag={split.flag!r}")
    w = ward(name)
    keep = (split.y >= w.offset) & (split.y < w.offset + w.n_classes)
    return Split(x=split.x[keep], y=split.y[keep], flag=split.flag, split=split.split, size=split.size)


def restrict(y: np.ndarray, logits: torch.Tensor | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A ward's view of hospital predictions: its labels as 0..k-1, softmax over its own classes' logits, its task.

    The ward knows its task, so it answers among its own classes only (the unrestricted view is the
    argmax over all nine: an answer from another ward's classes is wrong there).
    """
    w = ward(name)
    local = torch.as_tensor(np.asarray(logits))[:, w.classes].double()
    return np.asarray(y).reshape(-1, 1) - w.offset, torch.softmax(local, dim=1).numpy(), w.task


def class_names(flag: str) -> list[str]:
    """Label names in label order, from ``info(flag)['label']``."""
    labels = info(flag)["label"]
    return [labels[str(i)] for i in range(len(labels))]


def class_indices(y: torch.Tensor, c: int) -> torch.Tensor:
    """Indices of the images of class ``c`` (for multi-label tasks: whose label ``c`` is positive)."""
    return torch.nonzero((y[:, c] == 1) if y.ndim == 2 else (y == c)).flatten()


def reference_set(val: Split, n_per_class: int = 10, bias: dict[int, float] | None = None,
                  seed: int = 0, classes: list[int] | None = None) -> Split:
    """The scarce local reference set: a seeded draw of images from the validation split.

    Args:
        val: the validation split (never the test split: the study evaluates on test).
        n_per_class: images per class when unbiased (multi-label: per positive label, so an image
            may be drawn for two labels); the total is ``n_per_class * n_classes``.
        bias: optional class ratio, e.g. ``{0: 0.9, 1: 0.1}``: the same total is drawn with these
            fractions (missing classes get 0, at least one image per listed class with a positive
            fraction).
        seed: the draw's seed; the same seed gives the same images.
        classes: the labels drawn from (default: all of the flag's); a ward of ``hospital`` draws its own.

    Scarce classes, one rule for every notebook: a class with fewer validation images than asked gives
    all it has (RetinaMNIST's class 4 has 6), with a :class:`ScarceClassWarning` naming the class and the
    counts; the split's ``counts`` records, per class, the images asked, available and drawn. A class
    asked for that has no validation image at all is an error.
    """
    if val.split != "val":
        raise ValueError(f"reference set must come from the validation split, got split={val.split!r}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class}; expected a positive integer")
    all_classes = range(len(info(val.flag)["label"]))
    classes = list(all_classes) if classes is None else list(classes)
    if not classes or any(c not in all_classes for c in classes):
        raise ValueError(f"classes={classes}; expected labels of {val.flag} (0..{len(all_classes) - 1})")
    total = n_per_class * len(classes)
    if bias is None:
        wanted = {c: n_per_class for c in classes}
    else:
        if any(c not in classes or f < 0 for c, f in bias.items()) or sum(bias.values()) <= 0:
            raise ValueError(f"bias={bias}; expected non-negative fractions for classes {classes}")
        norm = sum(bias.values())
        wanted = {c: (max(1, round(total * bias.get(c, 0) / norm)) if bias.get(c, 0) > 0 else 0) for c in classes}
    gen = torch.Generator().manual_seed(seed)
    chosen, counts = [], {}
    for c, k in wanted.items():
        idx = class_indices(val.y, c)
        if k and not len(idx):
            raise ValueError(f"class {c} of {val.flag} has no validation image: no reference set can hold it")
        counts[c] = {"asked": k, "available": len(idx), "drawn": min(k, len(idx))}
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:counts[c]["drawn"]]])
    short = {c: n for c, n in counts.items() if n["drawn"] < n["asked"]}
    if short:
        warnings.warn("; ".join(f"{val.flag} class {c} has {n['available']} validation images: drew all of them, "
                                f"not {n['asked']}" for c, n in short.items()), ScarceClassWarning, stacklevel=2)
    idx = torch.cat(chosen)
    return Split(x=val.x[idx], y=val.y[idx], flag=val.flag, split="val", size=val.size, counts=counts)


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
