"""DyFiP under the study's protocol: over branch seeds, the operating point chosen on validation, the test once.

``08_dyfip`` trains the branch with several seeds for each candidate count ``k`` (the branch's objective depends on
``k``); :func:`engines` gives one :class:`~xaiprune.dyfip.core.Engine` per branch on a split (the features are
computed once). Then:

1. :func:`grid` evaluates DyFiP on the validation split at every ``k``, ``keep`` and exit threshold, per branch
   seed, beside static pruning (per ``keep``) and early exit alone (per ``k`` and threshold); :func:`seed_means`
   averages over the seeds;
2. :func:`choose` picks the operating point on that grid by the rule :data:`RULE`, fixed before any number
   is seen;
3. :func:`at_point` evaluates, on the test split and once, every policy at that point: DyFiP per branch seed,
   the ablations (the branch alone; the branch with one class-agnostic XAI tail; random class-specific and random
   class-agnostic tails of the same width, ``draws`` per branch seed), the oracle candidate set, DyFiP without
   BatchNorm refresh, early exit alone and the full tail restricted to the candidates; :func:`static_at` the
   static models whose FLOPs match the point's mean FLOPs *on validation*.

:func:`tails` is the step they share: each candidate set's sub-network is built once and run on the images
of every engine (split, branch seed) whose candidate set it is, so extra seeds cost inference, not builds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from xaiprune.dyfip import core

METRICS = ["acc", "bal_acc", "auc", "mean_flops_ratio", "max_flops_ratio", "exit_rate"]
RULE = ("the lowest mean FLOPs among the (k, keep, tau) points whose validation balanced accuracy, averaged over the "
        "branch seeds, is within the claim's margin of the full model's; if no point is, the highest validation "
        "balanced accuracy")
STATIC = (("l1", "static_l1"), ("xai_total", "static_xai"))


def engines(model, block: int, branches: list, relevance: dict, reference, split, aggregate: str = "max",
            seed: int = 0) -> list[core.Engine]:
    """One engine per branch on ``split``; all share the first one's features, tail and sub-network builder."""
    first = core.Engine(model, block, branches[0], relevance, reference, split, aggregate, seed)
    return [first] + [first.with_branch(b, j) for j, b in enumerate(branches[1:], start=1)]


def engines_by_k(model, block: int, branches: dict[int, list], relevance: dict, reference, split, aggregate: str = "max",
                 seed: int = 0) -> dict[int, list[core.Engine]]:
    """:func:`engines` for the branches of every ``k``; all share one engine's features, tail and builder."""
    first = engines(model, block, next(iter(branches.values()))[:1], relevance, reference, split, aggregate, seed)[0]
    return {k: [first.with_branch(b, j) for j, b in enumerate(bs)] for k, bs in branches.items()}


def features(prefix, split) -> torch.Tensor:
    """The frozen prefix's features of every image of ``split`` (in batches of 256; plain tensors, so a branch can
    train on them)."""
    with torch.no_grad():
        return torch.cat([prefix(c) for c in split.x.split(256)])


def tails(jobs: list[tuple[core.Engine, list[tuple[int, ...]]]], selection: str, keep: float, modes: list[str],
          draw: int = 0) -> list[dict[str, tuple[torch.Tensor, np.ndarray]]]:
    """Per job (an engine and the candidate set of each of its images), per BatchNorm refresh mode: the tail's logits
    restricted to each image's set (N x classes) and the tail MACs per image.

    A sub-network is built once per distinct set (``selection``: ``xai`` or ``random`` with ``draw``; one for all
    sets under :data:`~xaiprune.dyfip.core.AGNOSTIC`), refreshed once per mode and set, and run on the images of
    every job that has that set; a random selection (:data:`~xaiprune.dyfip.core.RANDOM`) is built per job instead,
    since each branch seed draws its own filters. The engines must share one frozen model.
    """
    first, nets, refreshed = jobs[0][0], {}, {}
    out = [{m: (torch.empty_like(e.full_logits), np.zeros(len(e.y), dtype=np.int64)) for m in modes} for e, _ in jobs]
    for s in sorted({t for _, sets in jobs for t in sets}):
        for j, ((e, sets), res) in enumerate(zip(jobs, out)):
            idx = torch.as_tensor([i for i, t in enumerate(sets) if t == s], dtype=torch.long)
            if not len(idx):
                continue
            key = (j if selection in core.RANDOM else -1, None if selection in core.AGNOSTIC else s)
            if key not in nets:
                nets[key] = (e if selection in core.RANDOM else first).build(selection, s, keep, draw)
            net, macs = nets[key]
            for mode in modes:
                if (key, s, mode) not in refreshed:
                    refreshed[key, s, mode] = first.refresh(net, s, mode)
                res[mode][0][idx] = e.run(refreshed[key, s, mode], idx)
                res[mode][1][idx.numpy()] = macs
        refreshed.clear()  # a set's networks are not needed again (an agnostic tail's unrefreshed one is)
        nets = {key: v for key, v in nets.items() if key[1] is None}
    return [{m: (core.restrict(logits, sets), macs) for m, (logits, macs) in res.items()} for (_, sets), res in zip(jobs, out)]


def grid(by_k: dict[int, list[core.Engine]], keeps: list[float], taus: list[float], mode: str) -> pd.DataFrame:
    """Every point of the operating grid on the engines' split: one row per policy, k, branch seed, keep and threshold.

    ``by_k``: the engines of the branches trained for each ``k``. DyFiP takes every (k, keep, tau) per branch seed;
    static L1 and static XAI pruning (no branch: k 0, seed -1, tau 1) every keep; early exit alone (keep 1) every k
    and tau per seed. Each keep's sub-networks are built once for the candidate sets of every k. Columns: policy, k,
    branch_seed, keep, tau_exit and :data:`METRICS`.
    """
    rows, first = [], next(iter(by_k.values()))[0]
    jobs = [(k, j, e) for k, engs in by_k.items() for j, e in enumerate(engs)]
    for keep in keeps:
        results = tails([(e, core.candidate_sets(e.branch_probs, k)) for k, _, e in jobs], "xai", keep, [mode])
        for (k, j, e), res in zip(jobs, results):
            rows += [{"policy": "dyfip", "k": k, "branch_seed": j, "keep": keep, "tau_exit": tau,
                      **e.metrics(e.outcome(*res[mode], core.exits(e.branch_probs, tau)))} for tau in taus]
        rows += [{"policy": name, "k": 0, "branch_seed": -1, "keep": keep, "tau_exit": 1.0,
                  **first.metrics(first.static(criterion, keep, [mode])[mode])} for criterion, name in STATIC]
    rows += [{"policy": "exit_only", "k": k, "branch_seed": j, "keep": 1.0, "tau_exit": tau, **e.metrics(e.exit_only(tau))}
             for k, j, e in jobs for tau in taus]
    return pd.DataFrame(rows)


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`grid` averaged over the branch seeds per policy, k, keep and threshold (the worst-case FLOPs: the
    maximum), with the seeds' standard deviation of the balanced accuracy (``bal_acc_sd``, 0 for one seed) and their
    count."""
    g = frame.groupby(["policy", "k", "keep", "tau_exit"], sort=False)
    out = g[[m for m in METRICS if m != "max_flops_ratio"]].mean().join(g["max_flops_ratio"].max())
    return out.join(g["bal_acc"].std(ddof=1).fillna(0.0).rename("bal_acc_sd")).join(g.size().rename("seeds")).reset_index()


def choose(means: pd.DataFrame, full_bal_acc: float, margin: float) -> dict:
    """DyFiP's operating point on the validation grid (:func:`seed_means`) by :data:`RULE`.

    ``margin`` is negative (non-inferiority): a point qualifies when its balanced accuracy is at least
    ``full_bal_acc + margin``. Returns k, keep, tau_exit, the point's validation balanced accuracy and mean FLOPs,
    the full model's, and how many points qualified (0: the fallback chose).
    """
    dy = means[means["policy"] == "dyfip"]
    within = dy[dy["bal_acc"] >= full_bal_acc + margin - 1e-12]
    pick = (within.sort_values(["mean_flops_ratio", "bal_acc"], ascending=[True, False]) if len(within)
            else dy.sort_values(["bal_acc", "mean_flops_ratio"], ascending=[False, True])).iloc[0]
    return {"k": int(pick["k"]), "keep": float(pick["keep"]), "tau_exit": float(pick["tau_exit"]), "val_bal_acc": float(pick["bal_acc"]),
            "val_mean_flops_ratio": float(pick["mean_flops_ratio"]), "val_full_bal_acc": float(full_bal_acc),
            "margin": margin, "points_within_margin": int(len(within)), "points": int(len(dy))}


def at_point(engs: list[core.Engine], k: int, keep: float, tau: float, mode: str, draws: int
             ) -> dict[str, list[core.Outcome]]:
    """Every policy that uses the branch, at one operating point, one :class:`~xaiprune.dyfip.core.Outcome` per
    branch seed (the random ones: draw-major, ``draws`` x seeds; draw ``d`` seeds its filters with ``seed + d``).

    The ablations share DyFiP's branch, exits, candidate sets, restriction and BatchNorm refresh: ``branch_only``
    (every image exits), ``branch_static_tail`` (one class-agnostic tail by the total XAI relevance),
    ``random_specific`` (random filters per candidate set) and ``random_agnostic`` (one random tail per draw)."""
    n, modes = len(engs), ["none"] if mode == "none" else ["none", mode]
    sets = [core.candidate_sets(e.branch_probs, k) for e in engs]
    oracle = [core.oracle_sets(e.branch_probs, e.split.y, k) for e in engs]
    xai = tails(list(zip(engs, sets)) + list(zip(engs, oracle)), "xai", keep, modes)
    gone = [core.exits(e.branch_probs, tau) for e in engs]
    random = {name: [tails(list(zip(engs, sets)), selection, keep, [mode], d) for d in range(draws)]
              for name, selection in (("random_specific", "random"), ("random_agnostic", "random_agnostic"))}
    agnostic = tails(list(zip(engs, sets)), "xai_total", keep, [mode])
    return {"dyfip": [e.outcome(*r[mode], x) for e, r, x in zip(engs, xai[:n], gone)],
            "dyfip_no_refresh": [e.outcome(*r["none"], x) for e, r, x in zip(engs, xai[:n], gone)],
            "oracle": [e.outcome(*r[mode], x) for e, r, x in zip(engs, xai[n:], gone)],
            "branch_only": [e.exit_only(0.0) for e in engs],
            "branch_static_tail": [e.outcome(*r[mode], x) for e, r, x in zip(engs, agnostic, gone)],
            **{name: [e.outcome(*r[mode], x) for draw in runs for e, r, x in zip(engs, draw, gone)]
               for name, runs in random.items()},
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
