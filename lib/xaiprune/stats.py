"""Metrics from probabilities, the study's one test procedure, and the descriptive intervals of notebook 04.

**What decides every claim** (the end of this module; :mod:`xaiprune.study.protocol` declares how each claim
uses it): :func:`endpoints` turns a model's probabilities into ACC, balanced accuracy and AUC (the one place in
the study); :func:`paired_difference` compares a method with its comparator on the same test images, with
the seeds of each side nested in the bootstrap; :func:`holm` corrects a claim's family of comparisons;
:func:`verdict` names the outcome.

**What only describes** (the rest): intervals for 04's figures and tables. Notebook ``04_pruning_comparison`` measures each criterion at each ratio on K reference draws, all on one
fixed test split. Two sources of error follow:

- **reference draws**: :func:`mean_ci`, the Student-t interval of the mean over the K draws,
  ``mean +- t_{0.975, K-1} s / sqrt(K)``. It says nothing about the test images;
- **test images**: a bootstrap over the test split (Efron & Tibshirani, *An Introduction to the
  Bootstrap*, 1993). :func:`resample_weights` draws B resamples of the N test images (seeded, with
  replacement) as multiplicities; the same B resamples serve every model, so comparisons between
  criteria are paired. :func:`resampled_metrics` recomputes ACC and AUC of every stored model on every
  resample from its per-image probabilities (weighted forms of MedMNIST's ``getACC``/``getAUC``: with
  unit weights they return the same numbers), and the percentile interval of the mean over draws
  is the test-set interval.

:func:`intervals` gives both and their combination: the two half-widths (each side separately,
since the bootstrap interval need not be symmetric) add in quadrature, a descriptive band for the
figures that decides nothing. :func:`xai_against_baselines` is 04's exploratory best-of-XAI against
best-of-baselines comparison, picked after the fact; the claim is decided by :func:`paired_difference`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from xaiprune.names import XAI_CRITERIA

MULTILABEL, BINARY = "multi-label, binary-class", "binary-class"


def mean_ci(frame: pd.DataFrame, by: list[str], value: str, level: float = 0.95) -> pd.DataFrame:
    """Mean of ``value`` per group with a two-sided Student-t confidence interval over the draws.

    Groups with a single row (deterministic criteria) get a zero-width interval.
    """
    def one(s):
        n, m = len(s), s.mean()
        half = float(sps.t.ppf(0.5 + level / 2, n - 1) * s.std(ddof=1) / n ** 0.5) if n > 1 else 0.0
        return {"mean": m, "lo": m - half, "hi": m + half, "n": n}

    return pd.DataFrame([{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **one(g[value])}
                         for key, g in frame.groupby(by, sort=False)])


def resample_weights(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) multiplicities of the n test images in ``n_boot`` bootstrap resamples (each row sums to n)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"n={n}, n_boot={n_boot}: expected positive integers")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)


def _weighted_binary_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of weights: P(score_pos > score_neg) + P(tie) / 2, pairs weighted by w_i w_j."""
    order = np.argsort(score, kind="stable")
    score, y, w = score[order], y[order].astype(bool), w[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])  # blocks of tied scores
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def weighted_auc(y: np.ndarray, probs: np.ndarray, task: str, w: np.ndarray) -> np.ndarray:
    """MedMNIST's ``getAUC`` under each row of weights ``w`` (B, N): binary uses the last column,
    multi-class averages one-vs-rest, multi-label averages the labels. A class (label) that is absent, or present
    alone, has no AUC: the average runs over the others (on a whole split, where every class is present, this is
    MedMNIST's number; on a subset without a scarce class, the classes it has); NaN when none has one."""
    y = y.reshape(len(y), -1)
    if task == BINARY:
        return _weighted_binary_auc(y[:, 0], probs[:, -1], w)
    if task == MULTILABEL:
        per = [_weighted_binary_auc(y[:, i], probs[:, i], w) for i in range(probs.shape[1])]
    else:
        per = [_weighted_binary_auc(y[:, 0] == i, probs[:, i], w) for i in range(probs.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no class has an AUC stays NaN
        return np.nanmean(np.stack(per), axis=0)


def weighted_acc(y: np.ndarray, probs: np.ndarray, task: str, w: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """MedMNIST's ``getACC`` under each row of weights ``w`` (B, N)."""
    y = y.reshape(len(y), -1)
    if task == MULTILABEL:
        correct = ((probs > threshold) == y.astype(bool)).mean(axis=1)
    elif task == BINARY:
        correct = (probs[:, -1] > threshold) == y[:, 0].astype(bool)
    else:
        correct = np.argmax(probs, axis=-1) == y[:, 0]
    return w @ correct.astype(np.float64) / w.sum(1)


def resampled_metrics(scores: list[np.ndarray], y: np.ndarray, task: str, weights: np.ndarray) -> dict[str, np.ndarray]:
    """ACC and AUC of every model (its per-image probabilities ``scores[i]``) on every resample: (models, B) each."""
    return {"acc": np.stack([weighted_acc(y, p, task, weights) for p in scores]),
            "auc": np.stack([weighted_auc(y, p, task, weights) for p in scores])}


def _combine(mean: float, half_draws: float, lo_test: float, hi_test: float) -> tuple[float, float]:
    return (mean - float(np.hypot(half_draws, max(mean - lo_test, 0.0))),
            mean + float(np.hypot(half_draws, max(hi_test - mean, 0.0))))


def _one(observed: np.ndarray, resampled: np.ndarray, level: float) -> dict:
    """Intervals of the mean over draws: observed (K,) metrics, resampled (K, B) on the test resamples."""
    k, m = len(observed), float(np.mean(observed))
    half = float(sps.t.ppf(0.5 + level / 2, k - 1) * np.std(observed, ddof=1) / k ** 0.5) if k > 1 else 0.0
    lo_t, hi_t = np.nanquantile(resampled.mean(0), [0.5 - level / 2, 0.5 + level / 2])
    lo, hi = _combine(m, half, float(lo_t), float(hi_t))
    return {"mean": m, "lo_draws": m - half, "hi_draws": m + half, "lo_test": float(lo_t), "hi_test": float(hi_t),
            "lo": lo, "hi": hi, "n": k}


def intervals(frame: pd.DataFrame, resampled: dict[str, np.ndarray], value: str, by: tuple = ("criterion", "ratio"),
              level: float = 0.95) -> pd.DataFrame:
    """Per group: mean over draws and its intervals over draws (t), test images (bootstrap) and both.

    ``frame`` is a :func:`xaiprune.pruning.comparison.sweep` result (one row per draw, its ``model`` column
    indexing ``resampled[value]``). Columns: ``by``, mean, lo_draws/hi_draws, lo_test/hi_test, lo/hi
    (both sources), n (draws).
    """
    rows = []
    for key, g in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **_one(g[value].to_numpy(), resampled[value][g["model"].to_numpy()], level)})
    return pd.DataFrame(rows)


def _paired_difference(rows: pd.DataFrame, resampled: np.ndarray, value: str, a: str, b: str, level: float) -> dict:
    """Criterion ``a`` minus ``b`` at one ratio: draw k against draw k (a deterministic criterion's single
    row stands for every draw), with its interval from both sources on the shared resamples."""
    ga, gb = (rows[rows["criterion"] == c].sort_values("draw") for c in (a, b))
    k = max(len(ga), len(gb))
    if {len(ga), len(gb)} - {1, k}:
        raise ValueError(f"{a} has {len(ga)} draws and {b} {len(gb)}: expected equal counts, or one of them 1")
    ia, ib = (np.resize(np.arange(len(g)), k) for g in (ga, gb))
    observed = ga[value].to_numpy(np.float64)[ia] - gb[value].to_numpy(np.float64)[ib]
    diff = resampled[ga["model"].to_numpy()[ia]] - resampled[gb["model"].to_numpy()[ib]]
    out = _one(observed, diff, level)
    return {"diff": round(out["mean"], 4), "diff_ci": [round(out["lo"], 4), round(out["hi"], 4)]}


def _outcome(x: pd.Series, b: pd.Series, lo: str, hi: str) -> str:
    return "XAI better" if x[lo] > b[hi] else "baseline better" if b[lo] > x[hi] else "tie"


def xai_against_baselines(frame: pd.DataFrame, value: str = "auc", resampled: dict[str, np.ndarray] | None = None,
                          level: float = 0.95, baselines: tuple[str, ...] | None = None) -> list[dict]:
    """At each ratio, the best XAI criterion against the best baseline (L1, Taylor, random, ...).

    ``frame`` is a sweep result. Each side is the criterion with the best mean ``value`` over the draws,
    picked after the fact among the XAI criteria and among the baselines the sweep compares (so the
    XAI side, usually with more members, is favoured slightly). The outcome is ``"XAI better"`` or
    ``"baseline better"`` when one 95% interval lies entirely above the other, else ``"tie"``.
    With ``resampled`` (from :func:`resampled_metrics`) the intervals cover reference draws *and*
    test images and decide ``outcome``; ``outcome_draws`` is the verdict with draw-only intervals, and
    ``diff``/``diff_ci`` the paired difference (best XAI minus best baseline) with its interval from both
    sources. Without it, only draw-only intervals exist and decide ``outcome``. ``baselines`` restricts the
    baseline side to these criteria (e.g. ``("l1", "taylor")``); by default every non-XAI criterion.
    Exploratory in ``04_pruning_comparison.ipynb``: both sides are picked after the fact, so it decides nothing.
    """
    if resampled is None:
        summary = mean_ci(frame, ["ratio", "criterion"], value, level)
        summary = summary.assign(lo_draws=summary["lo"], hi_draws=summary["hi"])
    else:
        summary = intervals(frame, resampled, value, ("ratio", "criterion"), level)
    out = []
    for r, g in summary.groupby("ratio"):
        xai_rows = g[g["criterion"].isin(XAI_CRITERIA)].sort_values("mean", ascending=False)
        base_side = g["criterion"].isin(baselines) if baselines else ~g["criterion"].isin(XAI_CRITERIA)
        base_rows = g[base_side].sort_values("mean", ascending=False)
        if r == 0 or xai_rows.empty or base_rows.empty:
            continue
        x, b = xai_rows.iloc[0], base_rows.iloc[0]
        row = {"ratio": round(float(r), 3), "metric": value, "outcome": _outcome(x, b, "lo", "hi"),
               "best_xai": x["criterion"], "xai_mean": round(float(x["mean"]), 4),
               "xai_ci": [round(float(x["lo"]), 4), round(float(x["hi"]), 4)],
               "best_baseline": b["criterion"], "baseline_mean": round(float(b["mean"]), 4),
               "baseline_ci": [round(float(b["lo"]), 4), round(float(b["hi"]), 4)],
               "n_xai": len(xai_rows), "n_baselines": len(base_rows),
               "intervals": "draws" if resampled is None else "draws and test images"}
        if resampled is not None:
            row.update(outcome_draws=_outcome(x, b, "lo_draws", "hi_draws"),
                       xai_ci_draws=[round(float(x["lo_draws"]), 4), round(float(x["hi_draws"]), 4)],
                       baseline_ci_draws=[round(float(b["lo_draws"]), 4), round(float(b["hi_draws"]), 4)],
                       **_paired_difference(frame[np.isclose(frame["ratio"], r)], resampled[value], value,
                                            x["criterion"], b["criterion"], level))
        out.append(row)
    return out


# --- The study's one procedure for a claim: endpoints from probabilities, paired nested bootstrap, Holm --------------

def weighted_balanced_acc(y: np.ndarray, probs: np.ndarray, task: str, w: np.ndarray,
                          threshold: float = 0.5) -> np.ndarray:
    """Balanced accuracy (the mean of the per-class recalls) at the trained decision rule, under each row of ``w``.

    A model that answers one class for every image scores 1 / classes whatever the class shares, so a drift
    of the decision threshold that keeps ACC at the majority rate cannot hide here. Multi-label: the mean over
    labels of the binary balanced accuracy. NaN where a class has no weight.
    """
    y = y.reshape(len(y), -1)
    if task == MULTILABEL:
        pred = probs > threshold
        return np.nanmean([_recall_mean(y[:, i].astype(int), pred[:, i].astype(int), 2, w)
                           for i in range(y.shape[1])], axis=0)
    pred = (probs[:, -1] > threshold).astype(int) if task == BINARY else np.argmax(probs, axis=-1)
    return _recall_mean(y[:, 0].astype(int), pred, probs.shape[1] if task != BINARY else 2, w)


def _recall_mean(y: np.ndarray, pred: np.ndarray, n_classes: int, w: np.ndarray) -> np.ndarray:
    recalls = []
    for c in range(n_classes):
        member = y == c
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append((w @ (member & (pred == c)).astype(np.float64)) / (w @ member.astype(np.float64)))
    return np.nanmean(np.stack(recalls), axis=0) if n_classes else np.full(len(w), np.nan)


SUPPORTED, PARTLY, NOT, MISSING = "supported", "partly supported", "not supported", "not measured"
VERDICTS = (SUPPORTED, PARTLY, NOT, MISSING)


def verdict(target_met: bool | None, wins_somewhere: bool | None = None) -> str:
    """The protocol's verdict (:mod:`xaiprune.study.protocol`): ``target_met`` None means the data is missing,
    which is never a win; a missed target with a win somewhere is "partly supported"."""
    if target_met is None:
        return MISSING
    return SUPPORTED if target_met else PARTLY if wins_somewhere else NOT


ENDPOINTS = ("acc", "bal_acc", "auc")  # what every notebook reports for a model's probabilities


def weighted_endpoints(y: np.ndarray, probs: np.ndarray, task: str, w: np.ndarray) -> dict[str, np.ndarray]:
    """ACC, balanced accuracy and AUC under each row of weights ``w`` (B, N): each (B,)."""
    return {"acc": weighted_acc(y, probs, task, w), "bal_acc": weighted_balanced_acc(y, probs, task, w),
            "auc": weighted_auc(y, probs, task, w)}


def endpoints(y: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
    """ACC (MedMNIST's ``getACC``), balanced accuracy and AUC (``getAUC``) of one model's probabilities (N, C).

    The one place where the study turns probabilities into metrics: with unit weights the weighted forms
    return MedMNIST's own numbers (``tests/test_stats.py`` checks it).
    """
    ones = np.ones((1, len(probs)))
    return {k: float(v[0]) for k, v in weighted_endpoints(np.asarray(y), np.asarray(probs), task, ones).items()}


def _seed_means(per_seed: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """Mean over a resample of seeds: per_seed (S, B) metrics on the B test resamples, pick (B, S) seed indices."""
    return per_seed[pick, np.arange(per_seed.shape[1])[:, None]].mean(1)


def paired_difference(a: list[np.ndarray], b: list[np.ndarray], y: np.ndarray, task: str, metric: str = "auc",
                      margin: float = 0.0, n_boot: int = 2000, seed: int = 0, paired_seeds: bool = False) -> dict:
    """``a`` minus ``b`` on ``metric``, over the same test images, with a nested bootstrap and a one-sided test.

    ``a`` and ``b`` are lists of per-image probabilities (N, C), one per seed (a training seed, a reference
    draw or a random draw; a deterministic method is a list of one). Each of ``n_boot`` resamples draws the
    test images with replacement (the same images for both sides: the comparison is paired) and, within
    it, the seeds of each side with replacement (jointly when ``paired_seeds``: draw k against draw k); the
    difference of the seed means on the resampled images is one bootstrap value. ``p`` is the one-sided
    bootstrap p-value of "the difference is at most ``margin``", doubled so that ``p < alpha`` exactly when the
    two-sided ``1 - alpha`` percentile interval lies above the margin. The interval here is at 95%; the
    family's correction (:func:`holm`) narrows the level per comparison.
    """
    if not a or not b:
        raise ValueError(f"a has {len(a)} and b {len(b)} seeds: expected at least one each")
    if paired_seeds and len(a) != len(b):
        raise ValueError(f"paired_seeds needs equal seed counts, got {len(a)} and {len(b)}")
    y = np.asarray(y)
    w = resample_weights(len(y), n_boot, seed)
    ma = np.stack([weighted_endpoints(y, p, task, w)[metric] for p in a])
    mb = np.stack([weighted_endpoints(y, p, task, w)[metric] for p in b])
    rng = np.random.default_rng(seed + 1)
    pick_a = rng.integers(0, len(a), size=(n_boot, len(a)))
    pick_b = pick_a if paired_seeds else rng.integers(0, len(b), size=(n_boot, len(b)))
    boot = _seed_means(ma, pick_a) - _seed_means(mb, pick_b)
    one = np.ones((1, len(y)))
    observed = float(np.mean([weighted_endpoints(y, p, task, one)[metric][0] for p in a])
                     - np.mean([weighted_endpoints(y, p, task, one)[metric][0] for p in b]))
    return summarise_bootstrap(observed, boot, margin, n_seeds=(len(a), len(b)))


def paired_by_seed(a: list[np.ndarray], b_groups: list[list[np.ndarray]], y: np.ndarray, task: str, metric: str = "auc",
                   margin: float = 0.0, n_boot: int = 2000, seed: int = 0) -> dict:
    """As :func:`paired_difference`, when each of ``a``'s seeds has its own draws on the other side: ``a[j]`` (one
    probability array per seed j, e.g. a trained branch) against ``b_groups[j]`` (the random draws made with that
    same seed j). Each resample draws the test images, then the seeds jointly for both sides, then within each
    drawn seed its draws; so the variation between seeds counts once, not twice as in an unpaired comparison.
    """
    if len(a) != len(b_groups) or not a or len({len(g) for g in b_groups}) != 1 or not b_groups[0]:
        raise ValueError(f"a has {len(a)} seeds and b_groups {[len(g) for g in b_groups]} draws per seed: expected one "
                         "group per seed of a, every group with the same positive number of draws")
    y = np.asarray(y)
    w = resample_weights(len(y), n_boot, seed)
    ma = np.stack([weighted_endpoints(y, p, task, w)[metric] for p in a])                               # (S, B)
    mb = np.stack([[weighted_endpoints(y, p, task, w)[metric] for p in g] for g in b_groups])         # (S, D, B)
    rng = np.random.default_rng(seed + 1)
    n_seeds, n_draws = mb.shape[:2]
    pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    draws = rng.integers(0, n_draws, size=(n_boot, n_seeds, n_draws))
    cols = np.arange(n_boot)
    boot = _seed_means(ma, pick) - mb[pick[:, :, None], draws, cols[:, None, None]].mean(axis=(1, 2))
    one = np.ones((1, len(y)))
    observed = float(np.mean([weighted_endpoints(y, p, task, one)[metric][0] for p in a])
                     - np.mean([weighted_endpoints(y, p, task, one)[metric][0] for g in b_groups for p in g]))
    return summarise_bootstrap(observed, boot, margin, n_seeds=(len(a), n_seeds * n_draws))


def summarise_bootstrap(observed: float, boot: np.ndarray, margin: float = 0.0, level: float = 0.95,
                        n_seeds: tuple[int, int] = (1, 1)) -> dict:
    """A paired difference as the study reports it: observed value, percentile interval, one-sided p against
    ``margin`` (doubled), the bootstrap values kept for :func:`holm`'s corrected interval."""
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        raise ValueError("no finite bootstrap value: is a class missing from every resample?")
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * float(np.mean(boot <= margin)))
    return {"diff": observed, "interval": [float(lo), float(hi)], "level": level, "margin": margin, "p": p,
            "n_boot": int(boot.size), "n_seeds": list(n_seeds), "boot": boot}


def holm(results: list[dict], alpha: float = 0.05) -> list[dict]:
    """Holm's step-down correction over a family of :func:`paired_difference` results, in place and returned.

    Sorted by p, the i-th smallest (from 0) is tested at ``alpha / (m - i)``; once one fails, every later
    one fails and keeps the failing step's level, so that an interval printed as corrected never clears the
    margin while its comparison is marked as failed. Each result gains ``p_holm`` (the adjusted p-value),
    ``level_holm`` and ``interval_holm`` (the percentile interval at that level), ``above_margin`` (the
    verdict's input: the corrected interval lies above the margin) and ``interval_family``: the interval at
    the Bonferroni level ``1 - alpha / m``, for a check in the other direction ("below 0 nowhere"), which
    the one-sided step-down does not control. The bootstrap values are dropped after use (not JSON).
    """
    m = len(results)
    order = sorted(range(m), key=lambda i: results[i]["p"])
    running, failed_level = 0.0, None
    for rank, i in enumerate(order):
        r = results[i]
        running = max(running, min(1.0, (m - rank) * r["p"]))
        if failed_level is None and running >= alpha:
            failed_level = 1 - alpha / (m - rank)
        level = failed_level if failed_level is not None else 1 - alpha / (m - rank)
        lo, hi = np.quantile(r["boot"], [(1 - level) / 2, (1 + level) / 2])
        flo, fhi = np.quantile(r["boot"], [alpha / (2 * m), 1 - alpha / (2 * m)])
        r.update(p_holm=running, level_holm=level, interval_holm=[float(lo), float(hi)],
                 interval_family=[float(flo), float(fhi)], above_margin=failed_level is None)
    for r in results:
        r.pop("boot", None)
    return results


def unrestricted(y: np.ndarray, logits: np.ndarray, classes: list[int]) -> dict[str, float]:
    """ACC and balanced accuracy of the argmax over *all* outputs, on images whose labels are among ``classes``
    (a ward of a wider model): an answer outside ``classes`` is wrong. Balanced accuracy: mean recall over the
    ``classes`` present in ``y``."""
    y, pred = np.asarray(y).reshape(-1), np.asarray(logits).argmax(1)
    present = [c for c in classes if (y == c).any()]
    return {"acc": float((pred == y).mean()), "bal_acc": float(np.mean([(pred[y == c] == c).mean() for c in present]))}
