"""DyFiP: an early branch picks the likely classes, then only their filters run (the project's reconstruction).

Sabih, Hannig and Teich, "DyFiP: Explainable AI-based Dynamic Filter Pruning of Convolutional Neural
Networks", EuroMLSys 2022, https://doi.org/10.1145/3517207.3526982. The full text is not available here;
this is the project's reconstruction, from the abstract and the authors' earlier work:

1. a frozen base classifier (trained by :func:`xaiprune.train.train_or_load`), cut after block ``b``;
2. a small **branch** (:class:`BranchHead`: 1x1 conv, BN, ReLU, global average pool, linear) trained on
   the frozen features of the train split; if its top-1 probability is at least ``tau_exit`` the image
   exits with the branch's label (:func:`exits`), otherwise its top-``k`` classes are the candidates
   (:func:`candidate_sets`);
3. class-specific filter relevance and subset scores (:mod:`xaiprune.dyfip.subnets`);
4. the tail pruned to the candidates' filters, cached per candidate set, its logits restricted to the
   candidates (:func:`restrict`).

Departure (recorded in the notebook): without fine-tuning the thinned tails collapse, so the
default re-estimates each sub-network's BatchNorm statistics on the reference images of its candidate
classes when it is built (:data:`REFRESH`; ``"none"`` is the plain reconstruction). No weight changes.

:class:`Engine` evaluates DyFiP and its baselines (full model, early exit only, static pruning at the
same FLOPs with the XAI criterion and with L1, random filters of the same width, an oracle candidate
set) on one split; FLOPs by :func:`xaiprune.pruning.prune.profile`, metrics by MedMNIST's ``getACC``/``getAUC``.
Used by ``08_dyfip.ipynb``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from medmnist import INFO
from medmnist.evaluator import getACC, getAUC
from torch import nn

from xaiprune import data, models, train
from xaiprune.dyfip import subnets
from xaiprune.pruning import prune, repairs

REFRESH = ("candidates", "all", "none")  # BN statistics of a sub-network from the candidates' reference images, all, or none


def multiclass(flag: str) -> bool:
    """A single-label flag with more than two classes: the only kind where top-k candidates prune anything."""
    info = INFO[flag]
    return info["task"] != "multi-label, binary-class" and len(info["label"]) > 2


def check_setting(flag: str, size: int, n_segments: int, k: int, keep: float, tau_exit: float, branch_block: int) -> None:
    """Refuse a setting before any training, naming the parameter (the schema of ``08_dyfip`` checks the same)."""
    data.check_flag_size(flag, size)
    n = len(INFO[flag]["label"])
    problems = []
    if not multiclass(flag):
        problems.append(f"dyfip_flag={flag!r}: expected a single-label flag with more than 2 classes ({flag} has {n} "
                        f"{'labels (multi-label)' if INFO[flag]['task'].startswith('multi-label') else 'classes'}; "
                        "top-k of 2 classes prunes nothing)")
    elif not 1 <= k < n:
        problems.append(f"k={k}: expected 1 <= k < {n}, the number of classes of {flag}")
    if isinstance(keep, bool) or not 0 < keep <= 1:
        problems.append(f"keep={keep}: expected a fraction of filters in (0, 1]")
    if not 0 < tau_exit <= 1:
        problems.append(f"tau_exit={tau_exit}: expected a probability in (0, 1] (1.0 never exits)")
    if not 1 <= branch_block < n_segments:
        problems.append(f"branch_block={branch_block}: expected 1 <= branch_block < {n_segments} (segments of the model; "
                        "at least one must follow the branch)")
    if problems:
        raise ValueError("; ".join(problems))


def capped_reference_set(val: data.Split, n_per_class: int, seed: int = 0) -> tuple[data.Split, dict[int, dict]]:
    """:func:`xaiprune.data.reference_set`, with each class capped at its number of validation images.

    Returns the draw and, per class, ``{"asked", "available", "drawn"}`` so that a cap can be shown.
    (Candidate for :mod:`xaiprune.data`: ``reference_set(..., cap=True)``.)
    """
    if val.split != "val" or n_per_class < 1:
        raise ValueError(f"expected the validation split and n_per_class >= 1, got {val.split!r} and {n_per_class}")
    gen, chosen, caps = torch.Generator().manual_seed(seed), [], {}
    for c in range(len(INFO[val.flag]["label"])):
        idx = data.class_indices(val.y, c)
        drawn = min(n_per_class, len(idx))
        caps[c] = {"asked": n_per_class, "available": len(idx), "drawn": drawn}
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:drawn]])
    idx = torch.cat(chosen)
    return data.Split(x=val.x[idx], y=val.y[idx], flag=val.flag, split="val", size=val.size), caps


# ----- the branch ----------------------------------------------------------------------------------
class BranchHead(nn.Module):
    """The coarse branch: 1x1 conv (``width`` filters), BatchNorm, ReLU, global average pool, linear."""

    def __init__(self, c_in: int, n_classes: int, width: int = 128):
        super().__init__()
        self.conv = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.head = models.Head(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.bn(self.conv(x))))


def train_branch(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 n_classes: int, width: int = 128, epochs: int = 40, seed: int = 0, lr: float = 1e-3,
                 batch_size: int = 64) -> tuple[BranchHead, list[dict]]:
    """Train a :class:`BranchHead` on frozen features (N x C x H x W) with cross-entropy and Adam.

    Seeded and deterministic; the epoch with the lowest validation cross-entropy is kept (the exit
    rule reads the probabilities, so calibration matters more than ranking). Returns it in eval mode
    and the per-epoch history.
    """
    with train.deterministic():
        torch.manual_seed(seed)
        head = BranchHead(train_x.shape[1], n_classes, width)
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
        gen, history, best = torch.Generator().manual_seed(seed), [], (float("inf"), None)
        for epoch in range(epochs):
            head.train()
            for idx in torch.randperm(len(train_x), generator=gen).split(batch_size):
                loss = nn.functional.cross_entropy(head(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            head.eval()
            with torch.no_grad():
                logits = head(val_x)
            val_loss = float(nn.functional.cross_entropy(logits, val_y))
            history.append({"epoch": epoch + 1, "val_loss": val_loss,
                            "val_acc": float((logits.argmax(1) == val_y).float().mean())})
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy(head.state_dict()))
        head.load_state_dict(best[1])
    return head.eval(), history


def exits(probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Images that exit at the branch: top-1 probability at least ``tau`` (``tau == 1`` never exits)."""
    top = probs.max(dim=1).values
    return top >= float(tau) if tau < 1 else torch.zeros_like(top, dtype=torch.bool)


def candidate_sets(probs: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """Each image's top-``k`` classes as a sorted tuple (the key of its sub-network)."""
    return [tuple(sorted(row.tolist())) for row in probs.topk(k, dim=1).indices]


def oracle_sets(probs: torch.Tensor, y: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """The top-``k`` with the true class forced in (replacing the k-th candidate when missing): the branch's upper bound."""
    out = []
    for row, label in zip(probs.topk(k, dim=1).indices.tolist(), y.tolist()):
        out.append(tuple(sorted(row if label in row else row[:-1] + [label])))
    return out


def topk_recall(probs: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Fraction of images whose true class is among the branch's top ``k``."""
    return float((probs.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean())


def restrict(logits: torch.Tensor, sets: list[tuple[int, ...]]) -> torch.Tensor:
    """``logits`` with every class outside the image's candidate set at -inf (its softmax is 0 there)."""
    mask = torch.full_like(logits, float("-inf"))
    for i, s in enumerate(sets):
        mask[i, list(s)] = 0
    return logits + mask


# ----- evaluation ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Per-image probabilities (N x classes) and MACs of one policy on one split."""

    probs: np.ndarray
    macs: np.ndarray
    exited: np.ndarray


class Engine:
    """DyFiP and its baselines on one split, from one frozen model, branch and class relevance.

    Args:
        model: the frozen base classifier (never modified).
        block: the branch follows this segment (1-based).
        branch: the trained :class:`BranchHead`.
        relevance: :func:`xaiprune.dyfip.subnets.class_relevance` of ``model``.
        reference: the reference set (its images re-estimate BN statistics, see :data:`REFRESH`).
        split: the evaluation split (the test split in ``08_dyfip``).
        aggregate: ``"max"`` or ``"sum"`` over the candidate classes.
        seed: seeds the random-filter baseline (per candidate set).
    """

    def __init__(self, model: models.SegmentedModel, block: int, branch: BranchHead, relevance: dict,
                 reference: data.Split, split: data.Split, aggregate: str = "max", seed: int = 0):
        self.model, self.branch, self.relevance, self.aggregate, self.seed = model.eval(), branch.eval(), relevance, aggregate, seed
        self.prefix, self.tail = subnets.split_model(model, block)
        self.split, self.task = split, INFO[split.flag]["task"]
        self.y = split.y.numpy()[:, None]
        input_shape = tuple(split.x.shape[1:])
        with torch.inference_mode():
            self.features = torch.cat([self.prefix(c) for c in split.x.split(256)])
            self.ref_features = self.prefix(reference.x)
            self.branch_probs = torch.softmax(branch(self.features), dim=1)
            self.full_logits = torch.cat([self.tail(c) for c in self.features.split(256)])
        self.reference = reference
        self.builder = subnets.SubnetBuilder(self.tail, tuple(self.features.shape[1:]))
        self.prefix_macs = subnets.macs(self.prefix, input_shape)
        self.branch_macs = subnets.macs(models.SegmentedModel({"branch": branch}), self.builder.input_shape)
        self.full_macs = self.prefix_macs + self.builder.full_macs
        self._static_macs: dict[tuple[str, float], int] = {}
        self.build_seconds: list[float] = []

    # -- sub-networks --
    def scores(self, selection: str, classes: tuple[int, ...] | None) -> dict[str, torch.Tensor]:
        """Filter scores: ``xai`` for a candidate set, ``random`` (seeded by the set), or static ``xai_total``/``l1``."""
        if selection == "xai":
            return subnets.subset_scores(self.relevance, classes, self.aggregate)
        if selection == "random":
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + sum(c * 31 ** i for i, c in enumerate(classes)))
            return {layer: torch.rand(rows.shape[1], generator=gen) for layer, rows in self.relevance.items()}
        if selection == "xai_total":
            return {layer: rows.sum(0) for layer, rows in self.relevance.items()}
        if selection == "l1":
            return prune.criterion_scores(self.tail, "l1", input_shape=self.builder.input_shape)
        raise ValueError(f"selection={selection!r}; expected 'xai', 'random', 'xai_total' or 'l1'")

    def build(self, selection: str, classes: tuple[int, ...] | None, keep: float) -> tuple[nn.Module, int]:
        """The tail pruned for ``classes`` at ``keep`` by ``selection``'s scores (timed), and its MACs."""
        start = time.perf_counter()
        net = self.builder.build(self.builder.plan(self.scores(selection, classes), keep))
        self.build_seconds.append(time.perf_counter() - start)
        return net, self.builder.macs(net)

    def refresh(self, subnet: nn.Module, classes: tuple[int, ...] | None, mode: str) -> nn.Module:
        """``subnet`` with BN statistics re-estimated on reference images (:data:`REFRESH`); weights untouched."""
        if mode not in REFRESH:
            raise ValueError(f"refresh={mode!r}; expected one of {REFRESH}")
        if mode == "none":
            return subnet
        x = self.ref_features
        if mode == "candidates" and classes is not None:
            inside = torch.isin(self.reference.y, torch.as_tensor(classes))
            x = x[inside] if int(inside.sum()) >= 2 else x  # a BN needs two values per channel
        ref = data.Split(x=x, y=torch.zeros(len(x), dtype=torch.long), flag=self.split.flag, split="val", size=self.split.size)
        return repairs.reestimate_batchnorm(subnet, ref.x)

    def _run(self, net: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([net(self.features[c]) for c in idx.split(256)])

    # -- policies --
    def _outcome(self, logits: torch.Tensor, tail_macs: np.ndarray, exited: torch.Tensor) -> Outcome:
        probs = torch.softmax(logits, dim=1)
        probs[exited] = self.branch_probs[exited]
        macs = np.where(exited.numpy(), 0, tail_macs) + self.prefix_macs + self.branch_macs
        return Outcome(probs.numpy(), macs, exited.numpy())

    def dynamic(self, k: int, keep: float, modes: list[str], policies: tuple[str, ...] = ("dyfip", "oracle", "random")
                ) -> dict[tuple[str, str], tuple[torch.Tensor, np.ndarray]]:
        """Restricted tail logits (N x classes) and tail MACs per image of DyFiP (``dyfip``), the oracle candidate
        set (``oracle``) and random filters (``random``), for every BN refresh mode: ``{(policy, mode): ...}``.

        DyFiP and the oracle share their sub-networks (built once per candidate set); each is dropped after use.
        """
        sets = {"dyfip": candidate_sets(self.branch_probs, k), "oracle": oracle_sets(self.branch_probs, self.split.y, k)}
        sets["random"] = sets["dyfip"]
        sets = {p: sets[p] for p in policies}
        out = {(p, m): (torch.empty_like(self.full_logits), np.zeros(len(self.y), dtype=np.int64))
               for p in sets for m in modes}
        for selection, group in (("xai", ("dyfip", "oracle")), ("random", ("random",))):
            group = [p for p in group if p in sets]
            for s in sorted({t for p in group for t in sets[p]}):
                who = {p: torch.as_tensor([i for i, t in enumerate(sets[p]) if t == s], dtype=torch.long) for p in group}
                idx = torch.unique(torch.cat(list(who.values())))
                net, n = self.build(selection, s, keep)
                for mode in modes:
                    rows = torch.empty_like(self.full_logits)
                    rows[idx] = self._run(self.refresh(net, s, mode), idx)
                    for p, i in who.items():
                        out[p, mode][0][i] = rows[i]
                        out[p, mode][1][i.numpy()] = n
        return {key: (restrict(logits, sets[key[0]]), n) for key, (logits, n) in out.items()}

    def dynamic_outcome(self, k: int, keep: float, tau: float, mode: str) -> Outcome:
        """DyFiP alone at one setting (probabilities, MACs and exits per image)."""
        logits, n = self.dynamic(k, keep, [mode], ("dyfip",))["dyfip", mode]
        return self._outcome(logits, n, exits(self.branch_probs, tau))

    def exit_only(self, tau: float) -> Outcome:
        """The branch's early exit, then the full tail for the rest."""
        return self._outcome(self.full_logits.clone(), np.full(len(self.y), self.builder.full_macs), exits(self.branch_probs, tau))

    def full_restricted(self, k: int, tau: float) -> Outcome:
        """Early exit, then the *unpruned* tail with its logits restricted to the top-k: what the branch alone costs."""
        logits = restrict(self.full_logits.clone(), candidate_sets(self.branch_probs, k))
        return self._outcome(logits, np.full(len(self.y), self.builder.full_macs), exits(self.branch_probs, tau))

    def static(self, criterion: str, keep: float, modes: list[str]) -> dict[str, Outcome]:
        """The tail pruned once (``xai_total`` or ``l1`` scores, every layer keeping ``keep``), no branch, per mode."""
        net, n = self.build(criterion, None, keep)
        self._static_macs[criterion, keep] = n
        everyone, none = torch.arange(len(self.y)), np.zeros(len(self.y), dtype=bool)
        return {m: Outcome(torch.softmax(self._run(self.refresh(net, None, m), everyone), 1).numpy(),
                           np.full(len(self.y), self.prefix_macs + n), none) for m in modes}

    def static_macs(self, criterion: str, keep: float) -> int:
        if (criterion, keep) not in self._static_macs:
            self._static_macs[criterion, keep] = self.build(criterion, None, keep)[1]
        return self.prefix_macs + self._static_macs[criterion, keep]

    def matched_keep(self, budget_macs: float, steps: int = 10, criterion: str = "l1") -> float:
        """The largest ``keep`` (bisection to 2^-steps) whose static model costs at most ``budget_macs``.

        A model's FLOPs depend only on how many filters each layer keeps, not on which, so one bisection
        (with ``criterion``'s models) serves every static criterion.
        """
        if self.static_macs(criterion, 1.0) <= budget_macs:
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(steps):
            mid = round((lo + hi) / 2, 6)
            lo, hi = (mid, hi) if self.static_macs(criterion, mid) <= budget_macs else (lo, mid)
        return max(lo, 1e-6)

    def metrics(self, out: Outcome) -> dict:
        """ACC and AUC (MedMNIST's functions), mean and max FLOPs relative to the full model, exit rate."""
        return {"acc": float(getACC(self.y, out.probs, self.task)), "auc": float(getAUC(self.y, out.probs, self.task)),
                "mean_flops_ratio": float(out.macs.mean() / self.full_macs),
                "max_flops_ratio": float(out.macs.max() / self.full_macs), "exit_rate": float(out.exited.mean())}

    def curve(self, k: int, keeps: list[float], taus: list[float], modes: list[str]) -> pd.DataFrame:
        """Every policy at every keep, exit threshold and BN refresh mode: the points of the Pareto plot.

        Returns one row per point with policy, refresh, keep, tau_exit, acc, auc, mean/max FLOPs ratio, exit rate.
        The dynamic policies and early exit take every ``tau``; static pruning has no branch (tau 1).
        """
        rows = []
        for keep in keeps:
            for (policy, mode), (logits, n) in self.dynamic(k, keep, modes).items():
                for tau in taus:
                    rows.append({"policy": policy, "refresh": mode, "keep": keep, "tau_exit": tau,
                                 **self.metrics(self._outcome(logits, n, exits(self.branch_probs, tau)))})
            for criterion, name in (("xai_total", "static_xai"), ("l1", "static_l1")):
                for mode, out in self.static(criterion, keep, modes).items():
                    rows.append({"policy": name, "refresh": mode, "keep": keep, "tau_exit": 1.0, **self.metrics(out)})
        for tau in taus:
            rows.append({"policy": "exit_only", "refresh": "none", "keep": 1.0, "tau_exit": tau,
                         **self.metrics(self.exit_only(tau))})
        return pd.DataFrame(rows)


def pareto(frame: pd.DataFrame, x: str = "mean_flops_ratio", y: str = "acc") -> pd.DataFrame:
    """The rows no other row beats on both ``x`` (lower) and ``y`` (higher), sorted by ``x``."""
    frame = frame.sort_values([x, y], ascending=[True, False])
    best, keep = -np.inf, []
    for i, row in frame.iterrows():
        if row[y] > best:
            keep.append(i)
            best = row[y]
    return frame.loc[keep]


def stream(engine: Engine, k: int, keep: float, tau: float, mode: str, capacity: int, n_images: int) -> dict:
    """Serve test images one at a time (batch 1) through an LRU cache of sub-networks, timing each request.

    Returns per-image milliseconds (building excluded and included), the cache's hit rate and build
    times, and the full model's batch-1 milliseconds on the same images, for comparison.
    """
    sets_of = {}
    cache = subnets.SubnetCache(lambda s: engine.refresh(engine.build("xai", s, keep)[0], s, mode), capacity)
    x = engine.split.x[:n_images or len(engine.split)]
    served, total, full, preds = [], [], [], []
    with torch.inference_mode():
        for img in x.split(1):
            start = time.perf_counter()
            h = engine.prefix(img)
            p = torch.softmax(engine.branch(h), dim=1)
            if bool(exits(p, tau)[0]):
                preds.append(int(p.argmax()))
                built = 0.0
            else:
                s = candidate_sets(p, k)[0]
                before = sum(cache.build_seconds)
                net = cache.get(s)
                built = sum(cache.build_seconds) - before
                preds.append(int(restrict(net(h), [s]).argmax()))
                sets_of[s] = sets_of.get(s, 0) + 1
            elapsed = time.perf_counter() - start
            total.append(1e3 * elapsed)
            served.append(1e3 * (elapsed - built))
            start = time.perf_counter()
            engine.model(img)
            full.append(1e3 * (time.perf_counter() - start))
    return {"ms": np.array(served), "ms_with_build": np.array(total), "full_ms": np.array(full), "preds": np.array(preds),
            "hit_rate": cache.hit_rate, "hits": cache.hits, "misses": cache.misses, "build_s": np.array(cache.build_seconds),
            "peak_cache_bytes": cache.peak_bytes, "sets": sets_of}
