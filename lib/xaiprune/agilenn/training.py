"""Training and evaluation of AgileNN (:mod:`xaiprune.agilenn.model`), cached by a hash of what made the model.

Two steps, each cached under ``artifacts/models/`` by a hash of its config and of the data file's MD5
(as :func:`xaiprune.train.cache_key`):

1. the **reference network** (:class:`xaiprune.agilenn.model.Reference`) is trained on images with
   cross-entropy; its body, frozen in eval mode, then scores AgileNN's feature channels;
2. **AgileNN** is trained with ``klambda * CE + (1 - klambda) * (skewness loss + disorder loss)``,
   differentiating through the integrated gradients of the reference (double backpropagation). Its
   feature extractor starts from the reference's stem. The epoch with the best validation AUC (the
   claim's primary endpoint) is kept, for both networks (the official code keeps the best *test*
   accuracy): a choice made on validation only. ``importance_losses=False`` trains with
   cross-entropy only. With ``remap`` (the official code's optional channel remapping) the reference's
   feature channels are first renumbered by their mean importance on the train split
   (:func:`xaiprune.agilenn.model.permute_channels`: the same function), so that the extractor, copied from
   its stem, starts with the important channels first; without it they come in the order training left
   them, a random choice as far as importance goes.

Adam with a cosine schedule (the official code: SGD with momentum, 200 epochs on a GPU), the extractor
at its own, larger learning rate ``extractor_lr`` (in a few epochs its few weights must move far for the
importance to move), no augmentation, seeded batch order. Metrics (ACC, balanced accuracy, AUC) come from
the per-image probabilities (:func:`probabilities`) through :func:`xaiprune.stats.endpoints`.
:func:`train_seeds` trains one model per training seed, its reference network included. Used by
``10_agilenn.ipynb``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from medmnist import INFO
from torch import nn
from tqdm import tqdm

from xaiprune import data, paths, stats, train
from xaiprune.agilenn import model as agilenn
from xaiprune.pruning import prune

CACHE_VERSION = 3  # bump when the code changes what a config produces
_ORDERS: dict[tuple[str, int], torch.Tensor] = {}  # (reference checkpoint, train images) -> remapping order


@dataclass(frozen=True)
class AgileConfig:
    """Everything that determines a trained AgileNN and its reference (all of it goes into the cache key)."""

    flag: str = "pneumoniamnist"
    size: int = 28
    channels: int = 24
    stride: int = 2
    split_ratio: float = 0.2
    centroids: int = 8
    rho: float = 0.8
    klambda: float = 0.8
    importance_losses: bool = True
    remap: bool = True        # channels of the extractor start ordered by the reference's importance
    epochs: int = 6
    ref_epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    extractor_lr: float = 3e-2  # the extractor's ~200 weights must move far for the importance to move
    weight_decay: float = 1e-4
    seed: int = 0
    max_train: int = 0  # 0: the whole train split; n > 0: its first n images

    def validate(self) -> "AgileConfig":
        data.check_flag_size(self.flag, self.size)
        agilenn.split_channels(self.split_ratio, self.channels)
        agilenn.check_centroids(self.centroids)
        problems = [f"{n}={getattr(self, n)}: expected an integer >= 1" for n in ("channels", "stride", "epochs",
                    "ref_epochs", "batch_size") if getattr(self, n) < 1]
        if not 0 < self.rho <= 1:
            problems.append(f"rho={self.rho}: expected a share of importance in (0, 1]")
        if not 0 < self.klambda <= 1:
            problems.append(f"klambda={self.klambda}: expected a weight in (0, 1]")
        if self.lr <= 0 or self.extractor_lr <= 0 or self.weight_decay < 0 or self.max_train < 0:
            problems.append(f"lr={self.lr}, extractor_lr={self.extractor_lr}, weight_decay={self.weight_decay}, "
                            f"max_train={self.max_train}: expected lr > 0, extractor_lr > 0, weight_decay >= 0, max_train >= 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def reference_part(self) -> dict:
        """The fields that determine the reference network."""
        return {k: getattr(self, k) for k in ("flag", "size", "channels", "stride", "ref_epochs", "batch_size", "lr",
                                              "weight_decay", "seed", "max_train")}


@dataclass
class Trained:
    """A trained AgileNN, its frozen reference body, config and per-epoch history."""

    model: agilenn.AgileNN
    reference: agilenn.Reference
    config: AgileConfig
    history: list[dict] = field(default_factory=list)
    path: Path | None = None
    cached: bool = False
    seconds: float = 0.0


def key(payload: dict, flag: str, size: int) -> str:
    text = json.dumps({"config": payload, "data_md5": data.expected_md5(flag, size), "version": CACHE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_key(config: AgileConfig) -> str:
    return key(asdict(config), config.flag, config.size)


def checkpoint_path(config: AgileConfig) -> Path:
    return paths.models_dir() / f"agilenn-{config.flag}-{config.size}-{cache_key(config)}" / "checkpoint.pt"


def reference_path(config: AgileConfig) -> Path:
    part = config.reference_part()
    return paths.models_dir() / f"agilenn-reference-{config.flag}-{config.size}-{key(part, config.flag, config.size)}" \
        / "checkpoint.pt"


def splits(config: AgileConfig, data_root: str | None) -> tuple[data.Split, data.Split]:
    tr = data.load_split(config.flag, "train", config.size, data_root)
    if config.max_train:
        tr = data.Split(tr.x[:config.max_train], tr.y[:config.max_train], tr.flag, "train", tr.size)
    return tr, data.load_split(config.flag, "val", config.size, data_root)


def shape_of(flag: str) -> tuple[int, int]:
    info = INFO[flag]
    return info["n_channels"], len(info["label"])


def batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor, bar: tqdm) -> None:
    """One optimiser step on ``loss``, then the schedule's and the progress bar's."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    bar.update()


def _fit_reference(config: AgileConfig, tr: data.Split, val: data.Split, progress: bool) -> agilenn.Reference:
    c_in, n_classes = shape_of(config.flag)
    train.seed_everything(config.seed)
    ref = agilenn.Reference(c_in, n_classes, config.channels, config.stride)
    opt = torch.optim.Adam(ref.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    steps = config.ref_epochs * -(-len(tr) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    best, best_state = -1.0, None
    with tqdm(total=steps, desc="reference", unit="step", mininterval=2.0, disable=not progress) as bar:
        for _ in range(config.ref_epochs):
            ref.train()
            for idx in batches(len(tr), config.batch_size, gen):
                step(opt, sched, agilenn.per_sample_loss(ref(tr.x[idx]), tr.y[idx]).mean(), bar)
            auc = endpoints(ref, val)["auc"]
            bar.set_postfix(val_auc=f"{auc:.3f}")
            if best_state is None or auc > best:
                best, best_state = auc, {k: v.detach().clone() for k, v in ref.state_dict().items()}
    ref.load_state_dict(best_state)
    return ref.eval()


def reference_or_load(config: AgileConfig, data_root: str | None = None, progress: bool = True) -> agilenn.Reference:
    """The reference network of ``config`` (trained once, then read from its cache), frozen, in eval mode."""
    path = reference_path(config.validate())
    c_in, n_classes = shape_of(config.flag)
    if path.is_file():
        ref = agilenn.Reference(c_in, n_classes, config.channels, config.stride)
        ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    else:
        tr, val = splits(config, data_root)
        with train.deterministic():
            ref = _fit_reference(config, tr, val, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": config.reference_part(), "state_dict": ref.state_dict()}, path)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def baseline_for(ref: agilenn.Reference, config: AgileConfig) -> agilenn.BaselineGradient:
    side = -(-config.size // config.stride)
    return agilenn.BaselineGradient(ref.body, (config.channels, side, side), shape_of(config.flag)[1])


def importance_order(ref: agilenn.Reference, config: AgileConfig, split: data.Split, batch_size: int = 512) -> torch.Tensor:
    """The reference stem's feature channels by decreasing mean share of importance on ``split``."""
    base, shares = baseline_for(ref, config), []
    for i in range(0, len(split), batch_size):
        with torch.no_grad():
            f = ref.stem(split.x[i:i + batch_size])
        imp = agilenn.channel_importance(ref.body, f, split.y[i:i + batch_size], base).detach()
        shares.append(imp / imp.sum(1, keepdim=True).clamp_min(1e-12))
    return torch.cat(shares).mean(0).argsort(descending=True)


def _fit(config: AgileConfig, ref: agilenn.Reference, tr: data.Split, val: data.Split, progress: bool) -> Trained:
    c_in, n_classes = shape_of(config.flag)
    train.seed_everything(config.seed)
    model = agilenn.AgileNN(c_in, n_classes, config.channels, config.split_ratio, config.stride, config.centroids)
    model.extractor.load_state_dict(ref.stem.state_dict())
    base = baseline_for(ref, config)
    rest = [p for name, p in model.named_parameters() if not name.startswith("extractor.")]
    opt = torch.optim.Adam([{"params": model.extractor.parameters(), "lr": config.extractor_lr}, {"params": rest}],
                           lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-len(tr) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history, best, best_state = [], -1.0, None
    tag = f"AgileNN r={config.split_ratio} c={config.centroids}" + ("" if config.importance_losses else " CE only")
    with tqdm(total=steps, desc=tag, unit="step", mininterval=2.0, disable=not progress) as bar:
        for epoch in range(config.epochs):
            model.train()
            sums = np.zeros(3)
            for idx in batches(len(tr), config.batch_size, gen):
                x, y = tr.x[idx], tr.y[idx]
                out = model.outputs(x)
                ce = agilenn.per_sample_loss(out["logits"], y).mean()
                loss, skew = ce, torch.tensor(float("nan"))
                if config.importance_losses:
                    imp = agilenn.channel_importance(ref.body, out["features"], y, base, create_graph=True)
                    loss = config.klambda * ce + (1 - config.klambda) * (
                        agilenn.skewness_loss(imp, model.k, config.rho) + agilenn.disorder_loss(imp, model.k))
                    skew = agilenn.skewness(imp.detach(), model.k).mean()
                step(opt, sched, loss, bar)
                sums += [ce.item() * len(idx), skew.item() * len(idx), len(idx)]
            on_val = endpoints(model, val)
            skew_mean = float(sums[1] / sums[2]) if config.importance_losses else None  # not measured without the losses
            history.append({"epoch": epoch + 1, "train_ce": float(sums[0] / sums[2]), "train_skewness": skew_mean,
                            "val_acc": float(on_val["acc"]), "val_auc": float(on_val["auc"])})
            bar.set_postfix(epoch=epoch + 1, ce=f"{sums[0] / sums[2]:.3f}", skew=f"{sums[1] / sums[2]:.2f}",
                            val_auc=f"{on_val['auc']:.3f}")
            if best_state is None or on_val["auc"] > best:
                best, best_state = on_val["auc"], {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return Trained(model.eval(), ref, config, history)


def train_or_load(config: AgileConfig, data_root: str | None = None, progress: bool = True) -> Trained:
    """Reuse the checkpoint of this exact config if present, else train (reference first) and save it."""
    import time

    start = time.perf_counter()
    path = checkpoint_path(config.validate())
    ref = reference_or_load(config, data_root, progress)
    c_in, n_classes = shape_of(config.flag)
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = agilenn.AgileNN(c_in, n_classes, config.channels, config.split_ratio, config.stride, config.centroids)
        model.load_state_dict(payload["state_dict"])
        ref = agilenn.permute_channels(ref, torch.tensor(payload["order"]))
        return Trained(model.eval(), ref, config, payload["history"], path, True, time.perf_counter() - start)
    tr, val = splits(config, data_root)
    key = (str(reference_path(config)), len(tr))
    if config.remap and key not in _ORDERS:
        _ORDERS[key] = importance_order(ref, config, tr)
    order = _ORDERS[key] if config.remap else torch.arange(config.channels)
    ref = agilenn.permute_channels(ref, order)
    with train.deterministic():
        trained = _fit(config, ref, tr, val, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(config), "state_dict": trained.model.state_dict(), "history": trained.history,
                "order": order.tolist()}, tmp)
    tmp.replace(path)
    (path.parent / "meta.json").write_text(json.dumps({"config": asdict(config), "cache_key": cache_key(config),
                                                       "order": order.tolist(), "history": trained.history}, indent=2))
    trained.path, trained.seconds = path, time.perf_counter() - start
    return trained


def train_seeds(config: AgileConfig, seeds: list[int], data_root: str | None = None, progress: bool = True
                ) -> list[Trained]:
    """One trained AgileNN per training seed: ``config`` with ``seed`` replaced, the reference network included
    (its seed is the same field), each trained once and then read from its cache."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds}: expected distinct training seeds, at least one")
    return [train_or_load(replace(config, seed=int(s)), data_root, progress) for s in seeds]


def probabilities(model: nn.Module, split: data.Split) -> np.ndarray:
    """Per-image probabilities (N, classes) of ``model`` on ``split``, as :func:`xaiprune.stats.endpoints` reads them."""
    return train.predict(model, split.x, split.flag)


def endpoints(model: nn.Module, split: data.Split) -> dict[str, float]:
    """ACC, balanced accuracy and AUC of ``model`` on ``split`` (:func:`xaiprune.stats.endpoints`)."""
    return stats.endpoints(split.y.numpy(), probabilities(model, split), INFO[split.flag]["task"])


def load(path: str | Path) -> agilenn.AgileNN:
    """An AgileNN checkpoint written by :func:`train_or_load` (``weights_only=True``), in eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = AgileConfig(**payload["config"])
    c_in, n_classes = shape_of(config.flag)
    model = agilenn.AgileNN(c_in, n_classes, config.channels, config.split_ratio, config.stride, config.centroids)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


class LocalOnly(nn.Module):
    """AgileNN's local predictor alone, as a model :func:`xaiprune.train.evaluate` can score."""

    def __init__(self, model: agilenn.AgileNN):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.local_logits(x)


def importance_on(trained: Trained, split: data.Split, batch_size: int = 256) -> torch.Tensor:
    """Per-channel importance (N, channels) of every image of ``split`` (no graph kept)."""
    model, base = trained.model.eval(), baseline_for(trained.reference, trained.config)
    out = []
    for i in range(0, len(split), batch_size):
        with torch.no_grad():
            f = model.extractor(split.x[i:i + batch_size])
        out.append(agilenn.channel_importance(trained.reference.body, f, split.y[i:i + batch_size], base).detach())
    return torch.cat(out)


def evaluate(trained: Trained, split: data.Split) -> dict:
    """ACC, balanced accuracy and AUC of AgileNN and of its local predictor alone (``local_*``); achieved
    skewness and ordered share on ``split``.

    ``skewness``: mean share of the importance held by the local channels; ``ordered``: share of images
    whose every local channel outranks every remote one (the disorder loss's aim).
    """
    imp, k = importance_on(trained, split), trained.model.k
    full, local = endpoints(trained.model, split), endpoints(LocalOnly(trained.model), split)
    ordered = (imp[:, :k].min(1).values >= imp[:, k:].max(1).values).float().mean()
    return {**full, **{f"local_{m}": v for m, v in local.items()},
            "skewness": float(agilenn.skewness(imp, k).mean()), "ordered": float(ordered)}


def costs(model: agilenn.AgileNN, in_channels: int, size: int) -> dict:
    """Device and remote FLOPs (2 x MACs of :func:`xaiprune.pruning.prune.profile`, plus the quantiser), values offloaded."""
    model = model.eval()
    dev = prune.profile(model.device_segments(), (in_channels, size, size))
    side = -(-size // model.stride)
    n_values = (model.channels - model.k) * side * side
    rem = prune.profile(model.remote_segments(), (model.channels - model.k, side, side))
    return {"device_flops": 2 * sum(dev["segment_macs"].values())
            + agilenn.quantizer_flops(n_values, len(model.quantizer.theta)),
            "remote_flops": 2 * sum(rem["segment_macs"].values()), "offloaded_values": n_values,
            "offloaded_shape": (model.channels - model.k, side, side),
            "device_weight_bytes": prune.weight_bytes(model.extractor) + prune.weight_bytes(model.local)
            + prune.weight_bytes(model.quantizer)}
