"""DyFiP under the study's protocol: over branch seeds, the operating point chosen on validation, the test once.

``08_dyfip`` trains the branch with several seeds; :func:`engines` gives one :class:`~xaiprune.dyfip.core.Engine`
per seed on a split (the features are computed once). Then:

1. :func:`grid` evaluates DyFiP on the validation split at every ``keep`` and exit threshold, per branch seed,
   beside static pruning (per ``keep``) and early exit alone (per threshold); :func:`seed_means` averages
   over the seeds;
2. :func:`choose` picks the operating point on that grid by the rule :data:`RULE`, fixed before any number
   is seen;
3. :func:`at_point` evaluates, on the test split and once, every policy at that point: DyFiP per branch seed,
   random filters of the same width (``draws`` per branch seed), the oracle candidate set, DyFiP without
   BatchNorm refresh, the branch alone, early exit alone and the full tail restricted to the candidates;
   :func:`static_at` the static models whose FLOPs match the point's mean FLOPs *on validation*.

:func:`tails` is the step they share: each candidate set's sub-network is built once and run on the images
of every engine (split, branch seed) whose candidate set it is, so extra seeds cost inference, not builds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from xaiprune.dyfip import core

METRICS = ["acc", "bal_acc", "auc", "mean_flops_ratio", "max_flops_ratio", "exit_rate"]
RULE = ("the lowest mean FLOPs among the (keep, tau) points whose validation balanced accuracy, averaged over the "
        "branch seeds, is within the claim's margin of the full model's; if no point is, the highest validation "
        "balanced accuracy")
STATIC = (("l1", "static_l1"), ("xai_total", "static_xai"))


def engines(model, block: int, branches: list, relevance: dict, reference, split, aggregate: str = "max",
            seed: int = 0) -> list[core.Engine]:
    """One engine per branch on ``split``; all share the first one's features, tail and sub-network builder."""
    first = core.Engine(model, block, branches[0], relevance, reference, split, aggregate, seed)
    return [first] + [first.with_branch(b) for b in branches[1:]]


def tails(jobs: list[tuple[core.Engine, list[tuple[int, ...]]]], selection: str, keep: float, modes: list[str],
          draw: int = 0) -> list[dict[str, tuple[torch.Tensor, np.ndarray]]]:
    """Per job (an engine and the candidate set of each of its images), per BatchNorm refresh mode: the tail's logits
    restricted to each image's set (N x classes) and the tail MACs per image.

    Each distinct set's sub-network is built once (``selection``: ``xai`` or ``random`` with ``draw``), refreshed
    once per mode, and run on the images of every job that has that set. The engines must share one frozen model.
    """
    first = jobs[0][0]
    out = [{m: (torch.empty_like(e.full_logits), np.zeros(len(e.y), dtype=np.int64)) for m in modes} for e, _ in jobs]
    for s in sorted({t for _, sets in jobs for t in sets}):
        net, macs = first.build(selection, s, keep, draw)
        who = [torch.as_tensor([i for i, t in enumerate(sets) if t == s], dtype=torch.long) for _, sets in jobs]
        for mode in modes:
            refreshed = first.refresh(net, s, mode)
            for (e, _), idx, res in zip(jobs, who, out):
                if len(idx):
                    res[mode][0][idx] = e.run(refreshed, idx)
                    res[mode][1][idx.numpy()] = macs
    return [{m: (core.restrict(logits, sets), macs) for m, (logits, macs) in res.items()} for (_, sets), res in zip(jobs, out)]


def grid(engs: list[core.Engine], k: int, keeps: list[float], taus: list[float], mode: str) -> pd.DataFrame:
    """Every point of the operating grid on the engines' split: one row per policy, branch seed, keep and threshold.

    DyFiP takes every (keep, tau) per branch seed; static L1 and static XAI pruning (no branch, seed -1, tau 1)
    every keep; early exit alone (keep 1) every tau per seed. Columns: policy, branch_seed, keep, tau_exit and
    :data:`METRICS`.
    """
    rows = []
    for keep in keeps:
        results = tails([(e, core.candidate_sets(e.branch_probs, k)) for e in engs], "xai", keep, [mode])
        for j, (e, res) in enumerate(zip(engs, results)):
            rows += [{"policy": "dyfip", "branch_seed": j, "keep": keep, "tau_exit": tau,
                      **e.metrics(e.outcome(*res[mode], core.exits(e.branch_probs, tau)))} for tau in taus]
        rows += [{"policy": name, "branch_seed": -1, "keep": keep, "tau_exit": 1.0,
                  **engs[0].metrics(engs[0].static(criterion, keep, [mode])[mode])} for criterion, name in STATIC]
    rows += [{"policy": "exit_only", "branch_seed": j, "keep": 1.0, "tau_exit": tau, **e.metrics(e.exit_only(tau))}
             for j, e in enumerate(engs) for tau in taus]
    return pd.DataFrame(rows)


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`grid` averaged over the branch seeds per policy, keep and threshold (the worst-case FLOPs: the maximum),
    with the seeds' standard deviation of the balanced accuracy (``bal_acc_sd``, 0 for one seed) and their count."""
    g = frame.groupby(["policy", "keep", "tau_exit"], sort=False)
    out = g[[m for m in METRICS if m != "max_flops_ratio"]].mean().join(g["max_flops_ratio"].max())
    return out.join(g["bal_acc"].std(ddof=1).fillna(0.0).rename("bal_acc_sd")).join(g.size().rename("seeds")).reset_index()


def choose(means: pd.DataFrame, full_bal_acc: float, margin: float) -> dict:
    """DyFiP's operating point on the validation grid (:func:`seed_means`) by :data:`RULE`.

    ``margin`` is negative (non-inferiority): a point qualifies when its balanced accuracy is at least
    ``full_bal_acc + margin``. Returns keep, tau_exit, the point's validation balanced accuracy and mean FLOPs,
    the full model's, and how many points qualified (0: the fallback chose).
    """
    dy = means[means["policy"] == "dyfip"]
    within = dy[dy["bal_acc"] >= full_bal_acc + margin - 1e-12]
    pick = (within.sort_values(["mean_flops_ratio", "bal_acc"], ascending=[True, False]) if len(within)
            else dy.sort_values(["bal_acc", "mean_flops_ratio"], ascending=[False, True])).iloc[0]
    return {"keep": float(pick["keep"]), "tau_exit": float(pick["tau_exit"]), "val_bal_acc": float(pick["bal_acc"]),
            "val_mean_flops_ratio": float(pick["mean_flops_ratio"]), "val_full_bal_acc": float(full_bal_acc),
            "margin": margin, "points_within_margin": int(len(within)), "points": int(len(dy))}


def at_point(engs: list[core.Engine], k: int, keep: float, tau: float, mode: str, draws: int
             ) -> dict[str, list[core.Outcome]]:
    """Every policy that uses the branch, at one operating point, one :class:`~xaiprune.dyfip.core.Outcome` per
    branch seed (``random``: draw-major, ``draws`` x seeds; draw ``d`` seeds its filters with ``seed + d``)."""
    n, modes = len(engs), ["none"] if mode == "none" else ["none", mode]
    sets = [core.candidate_sets(e.branch_probs, k) for e in engs]
    oracle = [core.oracle_sets(e.branch_probs, e.split.y, k) for e in engs]
    xai = tails(list(zip(engs, sets)) + list(zip(engs, oracle)), "xai", keep, modes)
    gone = [core.exits(e.branch_probs, tau) for e in engs]
    random = [tails(list(zip(engs, sets)), "random", keep, [mode], d) for d in range(draws)]
    return {"dyfip": [e.outcome(*r[mode], x) for e, r, x in zip(engs, xai[:n], gone)],
            "dyfip_no_refresh": [e.outcome(*r["none"], x) for e, r, x in zip(engs, xai[:n], gone)],
            "oracle": [e.outcome(*r[mode], x) for e, r, x in zip(engs, xai[n:], gone)],
            "random": [e.outcome(*r[mode], x) for draw in random for e, r, x in zip(engs, draw, gone)],
            "branch_alone": [e.exit_only(0.0) for e in engs],
            "exit_only": [e.exit_only(tau) for e in engs],
            "branch_topk_full_tail": [e.full_restricted(k, tau) for e in engs]}


def static_at(engine: core.Engine, flops_ratio: float, modes: list[str]) -> tuple[float, dict[str, dict[str, core.Outcome]]]:
    """The static L1 and static XAI models at the largest keep whose FLOPs do not exceed ``flops_ratio`` of the full
    model's (one bisection serves both: FLOPs depend on how many filters a layer keeps, not which): the keep and
    ``{policy: {mode: outcome}}`` on the engine's split."""
    kp = engine.matched_keep(flops_ratio * engine.full_macs)
    return kp, {name: engine.static(criterion, kp, modes) for criterion, name in STATIC}


def recall(engs: list[core.Engine], n_classes: int) -> dict[int, float]:
    """Top-k recall of the branch for every k below the number of classes, averaged over the branch seeds."""
    return {j: float(np.mean([core.topk_recall(e.branch_probs, e.split.y, j) for e in engs])) for j in range(1, n_classes)}


def pareto(frame: pd.DataFrame, x: str = "mean_flops_ratio", y: str = "bal_acc") -> pd.DataFrame:
    """The rows no other row beats on both ``x`` (lower) and ``y`` (higher), sorted by ``x``."""
    frame = frame.sort_values([x, y], ascending=[True, False])
    best, keep = -np.inf, []
    for i, row in frame.iterrows():
        if row[y] > best:
            keep.append(i)
            best = row[y]
    return frame.loc[keep]
