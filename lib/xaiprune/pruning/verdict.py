"""The paired test behind notebook 04's claim: the declared XAI criterion against each baseline.

The protocol (:mod:`xaiprune.study.protocol`, claim ``xai_criterion``) declares LRP the primary criterion
before any number is seen (:data:`PRIMARY`); the other XAI methods are exploration. At every pruned ratio
of the sweep, LRP is compared with each baseline present among :data:`BASELINES` on the test AUC of the
pruned models, no repair: :func:`xaiprune.stats.paired_difference` over the same test images, with the
reference draws (LRP, Taylor) or random draws nested inside (draw k against draw k when both sides have
as many draws, unpaired otherwise: L1 is one deterministic model). The family (ratios x baselines) is
Holm-corrected (:func:`xaiprune.stats.holm`) and the verdict reads the corrected intervals at the
headline ratio, the sweep's ratio nearest the claim's declared one (:func:`claim`).

This module computes; it does not import the study package: the notebook passes the returned
``row`` to ``protocol.row``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune import stats

PRIMARY = "lrp"  # the paper's criterion, declared the primary one
BASELINES = ("l1", "taylor", "random")


def nearest_pruned(ratios, near: float) -> float | None:
    """The pruned ratio (> 0) of ``ratios`` nearest ``near`` (the smaller one on a tie); None if none is pruned."""
    pruned = sorted({round(float(r), 6) for r in ratios if r > 0})
    return min(pruned, key=lambda r: (abs(r - near), r)) if pruned else None


def comparisons(frame: pd.DataFrame, scores: list[np.ndarray], y: np.ndarray, task: str, primary: str = PRIMARY,
                baselines: tuple[str, ...] = BASELINES, metric: str = "auc", margin: float = 0.0,
                min_ratio: float = 0.0, n_boot: int = 2000, seed: int = 0, correct: bool = True) -> list[dict]:
    """``primary`` minus each baseline present in ``frame``, at every pruned ratio of at least ``min_ratio``, Holm-corrected.

    ``frame`` has one row per criterion, draw and ratio (a sweep of :mod:`xaiprune.pruning.comparison`), its
    ``model`` column indexing ``scores`` (per-image probabilities). Every comparison uses the same ``seed``,
    hence the same test resamples. Each result is :func:`xaiprune.stats.paired_difference`'s (after
    :func:`xaiprune.stats.holm`: ``p_holm``, ``interval_holm``, ``above_margin``) with ``ratio``, ``baseline``,
    ``primary``, ``metric`` and ``paired`` (draws paired) added; empty when ``primary`` is absent. With
    ``correct=False`` the results are returned uncorrected (with their bootstrap values), for a caller that
    corrects a wider family at once.
    """
    out = []
    pruned = frame[(frame["ratio"] > 0) & (frame["ratio"] >= min_ratio - 1e-9)]
    for ratio, at in pruned.groupby("ratio"):
        a = at[at["criterion"] == primary].sort_values("draw")
        for baseline in (x for x in baselines if x != primary):
            b = at[at["criterion"] == baseline].sort_values("draw")
            if a.empty or b.empty:
                continue
            paired = len(a) == len(b)
            res = stats.paired_difference([scores[m] for m in a["model"]], [scores[m] for m in b["model"]], y, task,
                                          metric, margin, n_boot, seed, paired_seeds=paired)
            out.append({**res, "ratio": round(float(ratio), 3), "baseline": baseline, "primary": primary,
                        "metric": metric, "paired": paired})
    return stats.holm(out) if correct else out


def compact(results: list[dict]) -> list[dict]:
    """The JSON of :func:`comparisons` (rounded): what a claim row carries per comparison."""
    keys = ("ratio", "baseline", "metric", "diff", "interval", "interval_holm", "interval_family", "p_holm", "above_margin",
            "n_seeds",
            "paired")
    return [{k: (round(r[k], 4) if isinstance(r[k], float) else
                 [round(x, 4) for x in r[k]] if k.startswith("interval") else r[k]) for k in keys} for r in results]


def _means(frame: pd.DataFrame, ratio: float) -> pd.DataFrame:
    at = frame[np.isclose(frame["ratio"], ratio)]
    return at.groupby("criterion")[list(stats.ENDPOINTS)].mean()


def _evidence(frame: pd.DataFrame, results: list[dict], headline: float, strongest: dict, arch: str) -> str:
    m = _means(frame, headline)
    side = [strongest["primary"]] + [r["baseline"] for r in results if r["ratio"] == round(headline, 3)]
    cells = ", ".join(f"{c} {m.loc[c, 'auc']:.3f} (balanced acc {m.loc[c, 'bal_acc']:.3f}, ACC {m.loc[c, 'acc']:.3f})"
                      for c in side)
    above = sum(r["above_margin"] for r in results)
    below = sum(r["interval_family"][1] < 0 for r in results)
    lo, hi = strongest["interval_holm"]
    return (f"{arch}, {headline:.0%} of filters removed, no repair: test AUC {cells}. {strongest['primary']} minus the "
            f"strongest baseline ({strongest['baseline']}) {strongest['diff']:+.3f}, Holm-corrected interval "
            f"[{lo:+.3f}, {hi:+.3f}]; over all {len(results)} comparisons ({frame.loc[frame['ratio'] > 0, 'ratio'].nunique()} "
            f"ratios x the baselines) {strongest['primary']} is above 0 with its corrected interval in {above} and "
            f"below 0 (family-wise interval) in {below}.")


def claim(frame: pd.DataFrame, scores: list[np.ndarray], y: np.ndarray, task: str, arch: str, margin: float,
          headline_ratio: float, primary: str = PRIMARY, baselines: tuple[str, ...] = BASELINES, n_boot: int = 2000,
          seed: int = 0) -> dict:
    """The claim's numbers for one architecture: ``row`` (the arguments of ``protocol.row`` but the id), the
    ``headline`` ratio (the sweep's pruned ratio nearest the declared ``headline_ratio``), the ``strongest``
    baseline there and the ``comparisons`` (:func:`compact`).

    measured = ``primary`` minus the strongest baseline (the smallest difference) at the headline ratio,
    interval = its Holm-corrected interval; the target is met when the corrected interval lies above
    ``margin`` against every baseline at the headline ratio and below 0 in no comparison at any ratio; a
    win somewhere is any comparison above the margin. ``n_seeds``: the primary criterion's draws. When
    the primary criterion, a baseline or a pruned ratio is missing, the verdict is "not measured".
    """
    headline = nearest_pruned(frame["ratio"], headline_ratio)
    results = comparisons(frame, scores, y, task, primary, baselines, "auc", margin, n_boot=n_boot, seed=seed)
    at = [r for r in results if headline is not None and r["ratio"] == round(headline, 3)]
    wanted = [b for b in baselines if b != primary]
    if sorted(r["baseline"] for r in at) != sorted(wanted):
        why = (f"{arch}: not measured: the criteria ({', '.join(sorted(frame['criterion'].unique()))}) need {primary} "
               f"and every baseline ({', '.join(wanted)}) at a pruned ratio; a claim against some of them is not the claim.")
        return {"row": {"measured": None, "interval": None, "n_seeds": 0, "verdict_": stats.MISSING, "evidence": why},
                "headline": headline, "strongest": None, "comparisons": []}
    strongest = min(at, key=lambda r: r["diff"])
    target_met = all(r["above_margin"] for r in at) and not any(r["interval_family"][1] < 0 for r in results)
    wins = any(r["above_margin"] for r in results)
    draws = int((frame["criterion"] == primary).groupby(frame["ratio"]).sum().max())
    row = {"measured": strongest["diff"], "interval": strongest["interval_holm"], "n_seeds": draws,
           "verdict_": stats.verdict(target_met, wins), "evidence": _evidence(frame, results, headline, strongest, arch)}
    return {"row": row, "headline": headline, "strongest": strongest["baseline"], "comparisons": compact(results)}
