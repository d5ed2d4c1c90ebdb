"""The equal-capacity baseline of ``10_agilenn``: AgileNN's network without its split, trained on cross-entropy alone.

:func:`xaiprune.agilenn.model.small_network` is AgileNN's feature extractor followed by its remote predictor reading
all the feature channels: the same layers, no local predictor, no quantiser, no explanation. Whatever AgileNN gains
over this network run locally, offloaded whole or split (:func:`split_logits`) comes from AgileNN's idea and not from
a smaller network than the study's VGG-16-BN. The same network narrowed (``width`` < 1, chosen on
validation by :func:`narrowest`) is the local model sized for the device, the role MCUNet plays in the paper.

It is trained exactly as AgileNN (:mod:`xaiprune.agilenn.training`) with what can be shared: the same training seed's
reference stem as the extractor's start, the same epochs, optimiser groups (the extractor at ``extractor_lr``),
schedule, batches and the epoch of best validation AUC kept; cached under ``artifacts/models/agilenn-small-*`` by a
hash of those settings and the data file's MD5. Used by ``10_agilenn.ipynb`` and :mod:`xaiprune.agilenn.offload`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xaiprune import data, models, paths, train
from xaiprune.agilenn import model as agilenn, training
from xaiprune.serving import payload

VERSION = 1  # bump when the code changes what a config produces
FIELDS = ("flag", "size", "channels", "stride", "epochs", "ref_epochs", "batch_size", "lr", "extractor_lr",
          "weight_decay", "seed", "max_train")  # what of an AgileConfig determines the small network


@dataclass
class Small:
    model: models.SegmentedModel
    config: training.AgileConfig
    width: float = 1.0
    history: list[dict] = field(default_factory=list)
    path: Path | None = None
    cached: bool = False
    seconds: float = 0.0


def checkpoint_path(config: training.AgileConfig, width: float = 1.0) -> Path:
    part = {k: getattr(config, k) for k in FIELDS} | {"small_version": VERSION, "width": float(width)}
    return paths.models_dir() / f"agilenn-small-{config.flag}-{config.size}-{training.key(part, config.flag, config.size)}" \
        / "checkpoint.pt"


def build(config: training.AgileConfig, width: float = 1.0) -> models.SegmentedModel:
    c_in, n_classes = training.shape_of(config.flag)
    return agilenn.small_network(c_in, n_classes, config.channels, config.stride, width)


def _fit(config: training.AgileConfig, width: float, stem: torch.nn.Module, tr: data.Split, val: data.Split,
         progress: bool):
    train.seed_everything(config.seed)
    net = build(config, width)
    net.segments["extractor"].load_state_dict(stem.state_dict())
    rest = [p for name, p in net.named_parameters() if not name.startswith("segments.extractor.")]
    opt = torch.optim.Adam([{"params": net.segments["extractor"].parameters(), "lr": config.extractor_lr},
                            {"params": rest}], lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-len(tr) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history, best, best_state = [], -1.0, None
    with tqdm(total=steps, desc=f"small network x{width:g}, seed {config.seed}", unit="step", mininterval=2.0,
              disable=not progress) as bar:
        for epoch in range(config.epochs):
            net.train()
            for idx in training.batches(len(tr), config.batch_size, gen):
                training.step(opt, sched, agilenn.per_sample_loss(net(tr.x[idx]), tr.y[idx]).mean(), bar)
            auc = training.endpoints(net, val)["auc"]
            history.append({"epoch": epoch + 1, "val_auc": float(auc)})
            bar.set_postfix(val_auc=f"{auc:.3f}")
            if best_state is None or auc > best:
                best, best_state = auc, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net.eval(), history


def train_or_load(config: training.AgileConfig, data_root: str | None = None, progress: bool = True,
                  width: float = 1.0) -> Small:
    """The small network of ``config``'s seed at ``width``: read from its cache, or trained from the seed's reference
    stem and saved."""
    if not 0 < width <= 1:
        raise ValueError(f"width={width}: expected a share of the network's width in (0, 1]")
    start, path = time.perf_counter(), checkpoint_path(config.validate(), width)
    if path.is_file():
        return Small(load(path), config, width, torch.load(path, weights_only=True)["history"], path, True,
                     time.perf_counter() - start)
    stem = training.reference_or_load(config, data_root, progress).stem
    tr, val = training.splits(config, data_root)
    with train.deterministic():
        net, history = _fit(config, width, stem, tr, val, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(config), "width": width, "state_dict": net.state_dict(), "history": history}, tmp)
    tmp.replace(path)
    (path.parent / "meta.json").write_text(json.dumps({"config": asdict(config), "width": width, "history": history},
                                                      indent=2))
    return Small(net, config, width, history, path, False, time.perf_counter() - start)


def train_seeds(config: training.AgileConfig, seeds: list[int], data_root: str | None = None,
                progress: bool = True, width: float = 1.0) -> list[Small]:
    """One small network per training seed (AgileNN's seeds: each starts from that seed's reference stem)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds}: expected distinct training seeds, at least one")
    return [train_or_load(replace(config, seed=int(s)), data_root, progress, width) for s in seeds]


def best_val_auc(runs: list[Small]) -> float:
    """Mean over seeds of the kept epoch's validation AUC."""
    return float(np.mean([max(h["val_auc"] for h in r.history) for r in runs]))


def narrowest(config: training.AgileConfig, seeds: list[int], widths: list[float], full: list[Small], margin: float,
              data_root: str | None = None, progress: bool = True) -> tuple[float, dict[float, list[Small]]]:
    """The narrowest of ``widths`` whose validation AUC (mean over seeds) is within ``margin`` (< 0) of the full
    width's, trying them from the narrowest up and training only those tried; the widest if none is. Returns the
    width and the networks of every width tried."""
    if not widths:
        raise ValueError("tiny_widths is empty: expected at least one width in (0, 1)")
    tried = {}
    for w in sorted(widths):
        tried[w] = train_seeds(config, seeds, data_root, progress, width=w)
        if best_val_auc(tried[w]) >= best_val_auc(full) + margin:
            return w, tried
    return max(tried), tried


def load(path: str | Path) -> models.SegmentedModel:
    """A checkpoint written by :func:`train_or_load` (``weights_only=True``), in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = build(training.AgileConfig(**saved["config"]), saved.get("width", 1.0))
    net.load_state_dict(saved["state_dict"])
    return net.eval()


def split_logits(net: models.SegmentedModel, x: torch.Tensor, cut: int) -> torch.Tensor:
    """The split network's answer: the first ``cut`` segments, each image's activation quantised to uint8 over its
    own range (:func:`xaiprune.serving.payload.quantise`, as the wire carries it), the rest."""
    with torch.no_grad():
        a = net.run_segments(x, 0, cut)
        return net.run_segments(payload.dequantise(*payload.quantise(a)), cut)


class Split(torch.nn.Module):
    """The network split after ``cut`` segments with the quantised activation between (:func:`split_logits`)."""

    def __init__(self, net: models.SegmentedModel, cut: int):
        super().__init__()
        self.net, self.cut = net, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_logits(self.net, x, self.cut)


def activation_bytes(net: models.SegmentedModel, split: data.Split, cut: int, codec: str) -> np.ndarray:
    """Bytes on the wire per image of ``split`` for a cut after ``cut`` segments (:func:`payload.encode_activation`)."""
    with torch.no_grad():
        a = net.run_segments(split.x, 0, cut)
    return np.array([len(payload.encode_activation(a[i:i + 1], codec)) for i in range(len(a))])
