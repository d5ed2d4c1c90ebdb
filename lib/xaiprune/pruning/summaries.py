"""Tables, sentences and metrics of ``04_pruning_comparison``, computed from its sweeps.

The notebook states no result by hand: every sentence about this run's outcome is built here from the
sweep frames of :mod:`xaiprune.pruning.comparison` and :mod:`xaiprune.pruning.repair_study`, the bootstrap of
:mod:`xaiprune.stats` and the paired comparisons of :mod:`xaiprune.pruning.verdict` (which alone decide). The
best-of-XAI comparisons of :func:`xaiprune.stats.xai_against_baselines` are exploration and say so. The
summaries show ACC, balanced accuracy and AUC at the profile's own pruning ratios (:func:`summary_ratios`).
The metrics builders give the keys the tests read (ratio keys ``"0.3"``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune import names, stats
from xaiprune.pruning import repair_study

COLLAPSED = 1e-6  # a model whose test probabilities spread less than this answers every image alike


def summary_ratios(ratios: list[float], n: int = 3) -> list[float]:
    """The pruned ratios a summary shows: every nonzero ratio of ``ratios`` when there are at most ``n``, else
    ``n`` distinct ones spread over the sorted list (positions ``floor(i m / (n + 1))``, ``i = 1..n``, of ``m``
    ratios): 0.3, 0.5 and 0.7 of 0.1, 0.2, ..., 0.9."""
    pruned = sorted({float(r) for r in ratios if r > 0})
    if len(pruned) <= n:
        return pruned
    return [pruned[i * len(pruned) // (n + 1)] for i in range(1, n + 1)]


def _at(values: pd.Series, at: list[float]) -> pd.Series:
    return values.round(3).isin([round(r, 3) for r in at])


LABELS = {"acc": "ACC", "bal_acc": "balanced acc", "auc": "AUC"}


def summary_table(frame: pd.DataFrame, res: dict, source: str, at: list[float]) -> pd.DataFrame:
    """"mean [lo, hi]" of test AUC, balanced accuracy and ACC per criterion (rows) at the ratios ``at`` (columns).

    ``source``: ``"draws"`` for the t interval over reference draws only, ``"both"`` for the interval over
    draws and test images (:func:`xaiprune.stats.intervals`).
    """
    if source not in ("draws", "both"):
        raise ValueError(f"source={source!r}; expected 'draws' or 'both'")
    lo, hi = ("lo_draws", "hi_draws") if source == "draws" else ("lo", "hi")
    rows = []
    for value in ("auc", "bal_acc", "acc"):
        s = stats.intervals(frame[_at(frame["ratio"], at)], res, value)
        s["cell"] = [f"{m:.3f} [{a:.3f}, {b:.3f}]" for m, a, b in zip(s["mean"], s[lo], s[hi])]
        rows.append(s.assign(metric=LABELS[value]))
    table = pd.concat(rows).pivot_table(index="criterion", columns=["metric", "ratio"], values="cell", aggfunc="first")
    return table[[c for v in ("auc", "bal_acc", "acc") for c in table.columns if c[0] == LABELS[v]]]


def verdict_field(criteria: list[str]) -> str:
    """Which criteria the exploratory comparison pits against each other: the best XAI one against the best baseline."""
    xai = [c for c in criteria if c in names.XAI_CRITERIA]
    base = [c for c in criteria if c not in names.XAI_CRITERIA]
    return (f"Exploratory (decides nothing): the best of {len(xai)} XAI criteria ({', '.join(xai)}) against the best "
            f"of {len(base)} baselines ({', '.join(base)}), each picked after the fact by its mean.")


def _pair(v: dict, prefix: str = "") -> str:
    return (f"best XAI {v['best_xai']} {v['xai_mean']:.3f} [{v['xai_ci'][0]:.3f}, {v['xai_ci'][1]:.3f}] vs "
            f"{prefix}{v['best_baseline']} {v['baseline_mean']:.3f} "
            f"[{v['baseline_ci'][0]:.3f}, {v['baseline_ci'][1]:.3f}]")


def verdict_lines(winners: list[dict], arch: str, at: list[float]) -> str:
    """One line per exploratory outcome of :func:`xaiprune.stats.xai_against_baselines` (with test resamples) at ``at``."""
    keep = {round(r, 3) for r in at}
    return "\n".join(
        f"exploratory, {arch} at {v['ratio']:.0%}, test {v['metric'].upper()}: {_pair(v, 'best baseline ')}: {v['outcome']} "
        f"(draws only: {v['outcome_draws']}; paired difference {v['diff']:+.3f} "
        f"[{v['diff_ci'][0]:+.3f}, {v['diff_ci'][1]:+.3f}])" for v in winners if round(v["ratio"], 3) in keep)


def verdict_counts(winners: list[dict], arch: str) -> str:
    """Over every pruned ratio, how often the best XAI criterion is better, worse or tied, per metric (exploratory)."""
    lines = []
    for metric in ("auc", "acc"):
        got = [v for v in winners if v["metric"] == metric]
        n = {(key, o): sum(v[key] == o for v in got) for key in ("outcome", "outcome_draws")
             for o in ("XAI better", "baseline better", "tie")}
        lines.append(
            f"exploratory, {arch}, test {metric.upper()} over {len(got)} pruning ratios: the best XAI criterion is better than the "
            f"best baseline at {n['outcome', 'XAI better']}, worse at {n['outcome', 'baseline better']}, and "
            f"indistinguishable (overlapping 95% intervals over draws and test images) at {n['outcome', 'tie']}; "
            f"with intervals over reference draws only: better at {n['outcome_draws', 'XAI better']}, worse at "
            f"{n['outcome_draws', 'baseline better']}, tied at {n['outcome_draws', 'tie']}.")
    return "\n".join(lines)


def collapsed_models(sweep: pd.DataFrame, spread, arch: str) -> str:
    """How many pruned rows of ``sweep`` are collapsed models (``spread(model) <`` :data:`COLLAPSED`), the first
    ratio of a collapse per criterion, and the range of their ACC and AUC. ``spread``: ``Evaluator.spread``."""
    pruned = sweep[sweep["ratio"] > 0]
    flat = pruned[pruned["model"].map(spread) < COLLAPSED]
    text = (f"{arch}: {len(flat)} of {len(pruned)} pruned (criterion, draw, ratio) rows are collapsed models, whose "
            f"probabilities differ by less than {COLLAPSED:g} from one test image to another")
    if flat.empty:
        return text + "."
    first = flat.groupby("criterion", sort=False)["ratio"].min()
    return (text + "; first collapse per criterion at ratio " + ", ".join(f"{c} {r:.1f}" for c, r in first.items())
            + f". Their test AUC ranges from {flat['auc'].min():.3f} to {flat['auc'].max():.3f}, and their ACC is "
            f"{flat['acc'].min():.3f}-{flat['acc'].max():.3f}.")


def decision_collapse(sweep: pd.DataFrame, majority: float, tol: float = 0.01) -> pd.DataFrame:
    """Per criterion: the first pruned ratio whose mean test ACC is at most ``majority + tol`` (the decisions have
    fallen to what always answering the majority class gets), with the mean ACC and AUC there, and the
    unpruned AUC. ``first_ratio`` is NaN when no ratio gets there."""
    mean = sweep.groupby(["criterion", "ratio"], sort=False)[["acc", "auc"]].mean().reset_index()
    rows = []
    for c, g in mean.groupby("criterion", sort=False):
        g = g.sort_values("ratio")
        low = g[(g["ratio"] > 0) & (g["acc"] <= majority + tol)]
        hit = low.iloc[0] if len(low) else pd.Series({"ratio": np.nan, "acc": np.nan, "auc": np.nan})
        rows.append({"criterion": c, "first_ratio": hit["ratio"], "acc": hit["acc"], "auc": hit["auc"],
                     "unpruned_auc": float(g.loc[g["ratio"] == 0, "auc"].mean())})
    return pd.DataFrame(rows)


def collapse_sentences(table: pd.DataFrame, majority: float, tol: float = 0.01) -> str:
    """The rows of :func:`decision_collapse` as sentences: where ACC reaches the majority rate and what AUC does."""
    lines = []
    for r in table.itertuples():
        if np.isnan(r.first_ratio):
            lines.append(f"{r.criterion}: mean test ACC stays above {majority:.3f} + {tol} at every ratio.")
        else:
            lines.append(f"{r.criterion}: mean test ACC first at or below the majority-class rate ({majority:.3f}, "
                         f"+{tol}) at {r.first_ratio:.0%} pruned ({r.acc:.3f}), where its mean test AUC is {r.auc:.3f} "
                         f"(unpruned {r.unpruned_auc:.3f}).")
    return "\n".join(lines)


def bias_table(sweeps: dict[str, pd.DataFrame], study: pd.DataFrame, criteria: list[str], ratios: list[float],
               n_per_class: int) -> pd.DataFrame:
    """Test AUC "mean [95% CI over draws]" per arch, criterion and ratio: the balanced reference sets of the sweep
    (``n_per_class`` per class) beside the biased ones of the reference study, one column each."""
    balanced = pd.concat([s.assign(arch=a, reference=f"balanced {n_per_class}/class") for a, s in sweeps.items()])
    balanced = balanced[balanced["criterion"].isin(criteria) & balanced["ratio"].isin(ratios)]
    biased = study[study["reference"].str.startswith("biased")]
    table = stats.mean_ci(pd.concat([balanced, biased]), ["arch", "criterion", "reference", "ratio"], "auc")
    table["AUC [95% CI]"] = [f"{m:.3f} [{a:.3f}, {b:.3f}]" for m, a, b in zip(table["mean"], table["lo"], table["hi"])]
    return table.pivot_table(index=["arch", "criterion", "ratio"], columns="reference", values="AUC [95% CI]",
                             aggfunc="first")


def rank_table(repaired: pd.DataFrame, metric: str = "bal_acc", min_ratio: float = 0.5) -> pd.DataFrame:
    """Mean ``metric`` over the ratios of at least ``min_ratio`` per criterion (rows) and repair (columns), each cell
    "value (rank among the criteria under that repair)"."""
    rows = repaired[repaired["ratio"] >= min_ratio - 1e-9]
    order = rows.groupby(["repair", "criterion"])[metric].mean().unstack("repair")
    order = order[[r for r in repair_study.REPAIRS if r in order]]
    ranks = order.rank(ascending=False, method="min").astype(int)
    return order.round(3).astype(str).add(" (" + ranks.astype(str) + ")")


def endpoint_table(frame: pd.DataFrame, by: tuple[str, ...] = ("criterion",)) -> pd.DataFrame:
    """Mean AUC, balanced accuracy and ACC over the draws per ``by`` group (rows) and ratio (columns)."""
    mean = frame.groupby([*by, "ratio"])[["auc", "bal_acc", "acc"]].mean().rename(columns=LABELS)
    return mean.unstack("ratio").round(3)


def repair_lines(results: list[dict], frame: pd.DataFrame, repair: str, labels: int) -> str:
    """One line per comparison of :func:`xaiprune.pruning.verdict.comparisons` under the chosen ``repair`` (on test):
    the paired difference of the decisive metric with its Holm-corrected interval, AUC and ACC beside."""
    mean = frame.groupby(["criterion", "ratio"])[list(stats.ENDPOINTS)].mean()
    lines = [f"{repair} (chosen on validation; {labels} labelled images), on test:"]
    for r in results:
        a, b = mean.loc[(r["primary"], r["ratio"])], mean.loc[(r["baseline"], r["ratio"])]
        lo, hi = r["interval_holm"]
        lines.append(f"  {r['ratio']:.0%} pruned, {r['primary']} minus {r['baseline']}: {LABELS[r['metric']]} "
                     f"{r['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] Holm, {'above' if r['above_margin'] else 'not above'} "
                     f"0 (AUC {a['auc']:.3f} vs {b['auc']:.3f}, ACC {a['acc']:.3f} vs {b['acc']:.3f})")
    return "\n".join(lines)


def check_sweep(sweep: pd.DataFrame, res: dict, sensitivity: pd.DataFrame, segments: list[str]) -> None:
    """The sanity checks of notebook 04 on one architecture's sweep; raises AssertionError naming the failure."""
    checks = {"the unpruned model must score the same under every criterion":
              sweep.query("ratio == 0")["acc"].nunique() == 1}
    macs = sweep.groupby(["criterion", "ratio"])["macs"].mean().unstack("ratio")
    checks["FLOPs must not grow with the ratio"] = bool((macs.diff(axis=1).fillna(0) <= 0).all().all())
    checks["the sensitivity table must cover every segment"] = set(sensitivity["segment"]) == set(segments)
    for value in stats.ENDPOINTS:
        ci = stats.intervals(sweep, res, value)
        checks[f"{value}: intervals over draws and test images must contain those over draws alone"] = bool(
            ((ci["lo"] <= ci["lo_draws"] + 1e-12) & (ci["hi"] >= ci["hi_draws"] - 1e-12)).all())
        checks[f"{value}: every interval must contain its mean"] = bool(
            ((ci["lo"] <= ci["mean"]) & (ci["mean"] <= ci["hi"])).all())
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise AssertionError("; ".join(failed))


def ratio_key(r: float) -> str:
    """A pruning ratio as a ``metrics.json`` key: ``str(round(r, 3))``, so "0.0", "0.3" and "0.25" keep their digits."""
    return str(round(float(r), 3))


def _means(frame: pd.DataFrame, by: list[str]) -> dict:
    mean = frame.groupby(by)[list(stats.ENDPOINTS)].mean()
    return {key: {k: round(float(v), 6) for k, v in row.items()} for key, row in mean.iterrows()}


def sweep_metrics(sweep: pd.DataFrame, criteria: list[str], ratios: list[float]) -> dict:
    """``{criterion: {"0.3": {"acc", "bal_acc", "auc"}}}`` (keys :func:`ratio_key`): means over the draws, rounded to
    6 places."""
    mean = _means(sweep, ["criterion", "ratio"])
    return {c: {ratio_key(r): mean[c, r] for r in ratios} for c in criteria}


def repair_metrics(repaired: pd.DataFrame) -> dict:
    """``{repair: {criterion: {"0.3": {"acc", "bal_acc", "auc"}}}}`` of a :func:`~xaiprune.pruning.repair_study.repair_sweep`
    frame (ratio keys :func:`ratio_key`): means over the draws."""
    out: dict = {}
    for (repair, c, r), v in _means(repaired, ["repair", "criterion", "ratio"]).items():
        out.setdefault(repair, {}).setdefault(c, {})[ratio_key(r)] = v
    return out
