"""Seeded, deterministic training of the "pre-trained" models, cached by a hash of what made them.

No weights can be downloaded here, so the pipeline trains each architecture once on the train
split and then treats it as frozen. A checkpoint embeds its config (nanoGPT style) and loads with
``torch.load(..., weights_only=True)``. The cache key is a hash of the config and of the data
file's MD5: the same parameters reuse a checkpoint, changed parameters never do.

Metrics are MedMNIST's own (through :func:`xaiprune.stats.endpoints`): ``getAUC`` and ``getACC``, the functions behind
``medmnist.Evaluator.evaluate``, so numbers compare with the MedMNIST v2 benchmark. They are computed
in every run, also for a reused checkpoint (:func:`train_or_load`); the metrics stored at training time
are kept beside them and a difference is a warning (:class:`StaleMetricsWarning`).
Used by ``02_train.ipynb``; later notebooks call :func:`load`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import random
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from medmnist.evaluator import getACC
from torch import nn
from tqdm import tqdm

from xaiprune import data, models, names, paths, stats

CACHE_VERSION = 2  # bump when training code changes what a config produces
METRIC_TOLERANCE = 1e-6  # stored and re-evaluated metrics further apart than this are a warning


class StaleMetricsWarning(UserWarning):
    """A reused checkpoint's stored metrics differ from the ones evaluated now: the data or the code changed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (all of it goes into the cache key)."""

    arch: str = "vgg16_bn"
    flag: str = "pneumoniamnist"
    size: int = 28
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3          # Adam, cosine-annealed to 0 over the run
    weight_decay: float = 1e-4
    seed: int = 0
    max_train: int = 0        # 0: the whole train split; n > 0: the first n images (smoke runs)
    balance: bool = False     # draw every class (and, for hospital, every ward) equally often; keep by balanced accuracy

    def validate(self) -> "TrainConfig":
        data.check_flag_size(self.flag, self.size)
        if self.balance and is_multilabel(self.flag):
            raise ValueError(f"balance=True: {self.flag} is multi-label; class balancing needs single-label classes")
        if self.arch not in models.ARCHS:
            raise ValueError(f"arch={self.arch!r}; expected one of {sorted(models.ARCHS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected a positive integer")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_train < 0:
            raise ValueError(f"lr={self.lr}, weight_decay={self.weight_decay}, max_train={self.max_train}: "
                             "expected lr > 0, weight_decay >= 0, max_train >= 0")
        return self


@dataclass
class Trained:
    """A trained model with its config, per-epoch history and val/test metrics.

    ``metrics`` are evaluated in this process (empty after a bare :func:`load`); ``stored_metrics`` are
    the ones the checkpoint holds from training time. ``cached`` is True when the weights were reused.
    """

    model: models.SegmentedModel
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    cached: bool = False
    stored_metrics: dict = field(default_factory=dict)


def published_benchmark(flag: str) -> dict[str, dict[str, float]]:
    """Test AUC and ACC that the MedMNIST v2 paper (Table 3) reports for ``flag``, by method."""
    table = json.loads((Path(__file__).parent / "medmnist_v2_benchmark.json").read_text())
    return table["results"].get(flag, {})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic():
    """Deterministic torch kernels inside the block only (Captum's DeepLIFT needs a non-deterministic one)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def is_multilabel(flag: str) -> bool:
    return data.info(flag)["task"] == "multi-label, binary-class"


def loss_fn(flag: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if is_multilabel(flag) else nn.CrossEntropyLoss()


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The model's outputs on ``x``, in eval mode and batches of ``batch_size``."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def predict(model: nn.Module, x: torch.Tensor, flag: str, batch_size: int = 64) -> np.ndarray:
    """Scores as MedMNIST's evaluator expects: softmax probabilities, or sigmoids for multi-label."""
    out = logits(model, x, batch_size)
    return (torch.sigmoid(out) if is_multilabel(flag) else torch.softmax(out, dim=1)).numpy()


def evaluate(model: nn.Module, split: data.Split) -> dict[str, float]:
    """ACC, balanced accuracy and AUC of ``model`` on ``split`` (:func:`xaiprune.stats.endpoints`: MedMNIST's
    ``getACC`` and ``getAUC``, and the mean per-class recall)."""
    scores = predict(model, split.x, split.flag)
    y = split.y.numpy()
    y = y if y.ndim == 2 else y[:, None]
    return stats.endpoints(y, scores, data.info(split.flag)["task"])


def evaluate_splits(model: nn.Module, config: TrainConfig, data_root: str | None = None) -> dict[str, float]:
    """``val_acc``, ``val_auc``, ``test_acc``, ``test_auc`` of ``model`` on the data ``config`` names."""
    metrics = {}
    for split in ("val", "test"):
        m = evaluate(model, data.load_split(config.flag, split, config.size, data_root))
        metrics.update({f"{split}_acc": m["acc"], f"{split}_auc": m["auc"]})
    return metrics


def changed_metrics(stored: dict, now: dict, tol: float = METRIC_TOLERANCE) -> dict[str, tuple[float | None, float]]:
    """``{name: (stored, now)}`` for every metric of ``now`` missing from ``stored`` or further than ``tol`` from it."""
    return {k: (stored.get(k), v) for k, v in now.items() if k not in stored or abs(stored[k] - v) > tol}


def majority_rate(split: data.Split) -> float:
    """ACC of always answering the most frequent class of ``split`` (per label for multi-label tasks).

    Computed with MedMNIST's ``getACC`` on constant scores, so it compares with :func:`evaluate`'s
    ACC: a model that does not beat it on the test split has learned nothing ACC can show (a weak model
    on a hard multi-class flag may legitimately not). Used by ``02_train.ipynb``.
    """
    y = split.y.numpy()
    y = y if y.ndim == 2 else y[:, None]
    task = data.info(split.flag)["task"]
    if is_multilabel(split.flag):
        scores = np.broadcast_to((y.mean(0) > 0.5).astype(float), y.shape)
    else:
        counts = np.bincount(y[:, 0], minlength=len(data.info(split.flag)["label"]))
        scores = np.zeros((len(y), len(counts)))
        scores[:, counts.argmax()] = 1.0
    return float(getACC(y, scores, task))


def cache_key(config: TrainConfig) -> str:
    """Hash of the config, the data file's expected MD5 and :data:`CACHE_VERSION` (``balance`` enters only when set,
    so that the checkpoints trained before it existed keep their keys)."""
    fields = {k: v for k, v in asdict(config).items() if k != "balance" or v}
    payload = {"config": fields, "data_md5": data.expected_md5(config.flag, config.size),
               "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_path(config: TrainConfig) -> Path:
    return (paths.models_dir() /
            f"{config.arch}-{config.flag}-{config.size}-{cache_key(config)}" / "checkpoint.pt")


def sampling_weights(train: data.Split) -> torch.Tensor:
    """Per-image draw weights under which every class is drawn equally often; for ``hospital``, every ward
    equally often and every class equally often within its ward (retina's five classes share a third)."""
    y = train.y.numpy()
    counts = np.bincount(y, minlength=len(data.info(train.flag)["label"])).astype(float)
    if train.flag != names.HOSPITAL:
        return torch.from_numpy(1.0 / (counts[y] * np.count_nonzero(counts)))
    share = np.zeros_like(counts)
    for w in data.wards():
        share[w.classes] = 1.0 / (len(data.wards()) * w.n_classes)
    return torch.from_numpy(share[y] / counts[y])


def evaluate_wards(model: nn.Module, split: data.Split) -> dict[str, dict[str, float]]:
    """Per ward of a ``hospital`` split: ACC, balanced accuracy and AUC answering among the ward's own classes
    (:func:`xaiprune.data.restrict`), and ``unrestricted_acc`` and ``unrestricted_bal_acc`` of the argmax over all nine."""
    out = {}
    for w in data.wards():
        part = data.ward_split(split, w.name)
        out_w = logits(model, part.x)
        y_local, probs, task = data.restrict(part.y.numpy(), out_w, w.name)
        wide = stats.unrestricted(part.y.numpy(), out_w.numpy(), w.classes)
        out[w.name] = {**stats.endpoints(y_local, probs, task), **{f"unrestricted_{k}": v for k, v in wide.items()}}
    return out


def selection_score(model: nn.Module, val: data.Split, config: TrainConfig, val_metrics: dict) -> tuple[float, str]:
    """What picks the kept epoch, and its name: the mean over wards of their balanced accuracy (``hospital``),
    balanced accuracy (``balance``), else AUC (the MedMNIST benchmark's choice); ``val_metrics``: :func:`evaluate`'s."""
    if config.flag == names.HOSPITAL:
        return float(np.mean([m["bal_acc"] for m in evaluate_wards(model, val).values()])), "ward_bal_acc"
    return (val_metrics["bal_acc"], "bal_acc") if config.balance else (val_metrics["auc"], "auc")


def fit(config: TrainConfig, data_root: str | None = None, progress: bool = True) -> Trained:
    """Train ``config.arch`` on the train split; keep the epoch with the best validation score (:func:`selection_score`).

    Adam with cosine annealing, cross-entropy (BCE for multi-label), no augmentation, batch order
    from a seeded generator and deterministic kernels: two runs of one config on one machine give
    identical weights.
    """
    with deterministic():
        return _fit(config, data_root, progress)


def _fit(config: TrainConfig, data_root: str | None = None, progress: bool = True) -> Trained:
    config.validate()
    seed_everything(config.seed)
    info = data.info(config.flag)
    train = data.load_split(config.flag, "train", config.size, data_root)
    val = data.load_split(config.flag, "val", config.size, data_root)
    if config.max_train:
        train = data.Split(train.x[:config.max_train], train.y[:config.max_train],
                           train.flag, "train", train.size)
    model = models.build(config.arch, info["n_channels"], len(info["label"]))
    criterion = loss_fn(config.flag)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)

    weights = sampling_weights(train) if config.balance else None
    history, best, best_state = [], -1.0, None
    bar = tqdm(total=config.epochs * steps_per_epoch, desc=f"train {config.arch}", unit="step",
               mininterval=2.0, disable=not progress)
    for epoch in range(config.epochs):
        model.train()
        order = (torch.randperm(len(train), generator=gen) if weights is None
                 else torch.multinomial(weights, len(train), replacement=True, generator=gen))
        total, seen = 0.0, 0
        for i in range(0, len(train), config.batch_size):
            idx = order[i:i + config.batch_size]
            x, y = train.x[idx], train.y[idx]
            logits = model(x)
            loss = criterion(logits, y.float() if is_multilabel(config.flag) else y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.update()
        val_metrics = evaluate(model, val)
        score, kept_by = selection_score(model, val, config, val_metrics)
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "val_acc": val_metrics["acc"],
                        "val_auc": val_metrics["auc"], **({f"val_{kept_by}": score} if kept_by != "auc" else {})})
        bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.3f}", **{f"val_{kept_by}": f"{score:.3f}"})
        if score > best:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return Trained(model=model, config=config, history=history)


def save(trained: Trained, path: Path) -> Path:
    """Write a self-describing checkpoint (config, weights, history, metrics) and a meta.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(trained.config), "state_dict": trained.model.state_dict(),
               "history": trained.history, "metrics": trained.metrics}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    meta = {"config": asdict(trained.config), "cache_key": cache_key(trained.config),
            "metrics": trained.metrics, "history": trained.history}
    (path.parent / "meta.json").write_text(json.dumps(meta, indent=2))
    return path


def load(path: str | Path) -> Trained:
    """Load a checkpoint written by :func:`save` (``weights_only=True``), rebuilding its model.

    Nothing is evaluated: ``metrics`` is empty and ``stored_metrics`` holds what the checkpoint
    recorded at training time (:func:`train_or_load` evaluates again).
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig(**payload["config"])
    info = data.info(config.flag)
    model = models.build(config.arch, info["n_channels"], len(info["label"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Trained(model=model, config=config, history=payload["history"], path=Path(path), cached=True,
                   stored_metrics=dict(payload["metrics"]))


def train_or_load(config: TrainConfig, data_root: str | None = None, progress: bool = True) -> Trained:
    """Reuse the checkpoint of this exact config if present, else train and save it; evaluate it either way.

    ``metrics`` (val and test ACC/AUC of the kept epoch) are evaluated in this call, also for a reused
    checkpoint. A new checkpoint stores them; a reused one keeps the ones stored at training time in
    ``stored_metrics``, and if they differ from the new ones by more than :data:`METRIC_TOLERANCE`
    (the data or the evaluation code changed), a :class:`StaleMetricsWarning` names them and the new
    ones are used.
    """
    path = checkpoint_path(config.validate())
    if path.is_file():
        trained = load(path)
        trained.metrics = evaluate_splits(trained.model, config, data_root)
        changed = changed_metrics(trained.stored_metrics, trained.metrics)
        if changed:
            detail = ", ".join(f"{k} stored {'missing' if old is None else f'{old:.6f}'}, now {new:.6f}"
                               for k, (old, new) in changed.items())
            warnings.warn(f"{path}: the metrics stored at training time differ from the ones evaluated now ({detail}): "
                          "the data or the evaluation code changed since this checkpoint was trained. Using the "
                          "metrics evaluated now; delete the checkpoint's folder to retrain.", StaleMetricsWarning,
                          stacklevel=2)
        return trained
    trained = fit(config, data_root, progress)
    trained.metrics = evaluate_splits(trained.model, config, data_root)
    trained.stored_metrics = dict(trained.metrics)
    trained.path = save(trained, path)
    return trained


def record_checkpoints(trained: dict[str, Trained], record: str = "checkpoints") -> Path:
    """Write ``artifacts/<profile>/02_train/<record>.json``: which checkpoint each architecture of this run is
    (``checkpoints``: the study's models; ``hospital``: the hospital-wide ones)."""
    entries = {arch: {"checkpoint": paths.relative(t.path), "config": asdict(t.config)} for arch, t in trained.items()}
    path = paths.artifact_dir("02_train") / f"{record}.json"
    path.write_text(json.dumps(entries, indent=2))
    return path


def trained_checkpoints(archs: list[str], flag: str, size: int, record: str = "checkpoints") -> dict[str, str]:
    """Checkpoint paths (relative to the project root) of the last ``02_train`` run for ``archs``.

    A missing run or architecture, or a model trained on other data than ``flag`` at ``size``, is a
    clear error before any work starts. ``record``: ``hospital`` for the hospital-wide models.
    """
    path = paths.stage_dir("02_train") / f"{record}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 02_train.ipynb first")
    entries = json.loads(path.read_text())
    missing = [a for a in archs if a not in entries]
    if missing:
        raise ValueError(f"archs {missing} were not trained by the last 02_train run (its {record} record holds "
                         f"{sorted(entries)})")
    for a in archs:
        cfg = entries[a]["config"]
        if (cfg["flag"], cfg["size"]) != (flag, size):
            raise ValueError(f"{a} was trained on {cfg['flag']} at {cfg['size']}, not {flag} at {size}: rerun 02_train")
    return {a: entries[a]["checkpoint"] for a in archs}


def trained_models(archs: list[str], flag: str, size: int, record: str = "checkpoints") -> dict[str, models.SegmentedModel]:
    """The frozen models of the last ``02_train`` run for ``archs`` (checked as :func:`trained_checkpoints`).

    Used by notebooks 03-07 and 11.
    """
    return {a: load(paths.ROOT / p).model for a, p in trained_checkpoints(archs, flag, size, record).items()}


PACKAGES = ("xaiprune", "torch", "numpy", "medmnist", "captum", "torch-pruning", "pulp", "gymnasium",
            "stable-baselines3", "papermill", "nbconvert", "pandas", "scikit-learn")


def package_versions() -> dict[str, str]:
    """Python's and the study's packages' versions (``"not installed"`` for a missing one): part of every cache key."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
