"""The compression claim of ``09_compression``: ratios read on validation, then the test, once.

Every curve of the notebook is measured on a validation subset (:func:`selection_split`). There, for each technique
and variant, :func:`operating_points` reads the **ratio at 1 point**: the setting with the largest compression ratio
whose mean validation AUC (over the reference draws) is within the claim's ``points`` AUC point of the uncompressed
model's (the overall ratio and the ratio on live weights order the settings alike: same sizes, another numerator).
Those settings are evaluated on the test split, once (:func:`on_test`, :func:`at_test`): the test AUC and balanced
accuracy at each variant's operating point.

The claim (``xaiprune.study.protocol.CLAIMS["compression"]``, its numbers passed in by the notebook) is decided by
:func:`targets`: for weight pruning and for sharing, DeepLIFT's ratio at 1 point on live weights at least ``factor``
times the best counterpart's (Taylor, magnitude or plain k-means); the combined DeepLIFT pipeline at least
``combined`` x overall with its test AUC within ``points`` of the uncompressed model's; and, as the test's check at
equal size, :func:`plan` and :func:`compare`: the DeepLIFT operating point against each counterpart at the **same
or the nearest smaller** ratio (never a larger one), the paired difference of test AUC
(:func:`xaiprune.stats.paired_difference`, the reference draws nested) Holm-corrected over the family
(:func:`xaiprune.stats.holm`); none may lie below 0 (its family-wise interval entirely below). Supported: every
target met and no comparison below 0; partly supported: one of the two ratio targets met; not supported otherwise.

:func:`drift` counts the models whose decision threshold drifted: they answer one class for every image
(ACC at that class's share, balanced accuracy ``1 / classes``) while their AUC stays near the uncompressed
model's, the reason ACC decides nothing here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune import data, stats
from xaiprune.compression import experiments

RATIO_TECHNIQUES = ("weight_pruning", "sharing")  # where DeepLIFT's ratio must beat the counterparts' by the factor

LOOSE_POINTS = 3   # a looser loss, shown beside
DRIFT_POINTS = 5   # a model whose AUC is within this many points of the uncompressed model's "still ranks well"
N_BOOT = 2000      # bootstrap resamples of every paired difference (the protocol's test)


def selection_split(val: data.Split, references: list[data.Split], n: int, seed: int = 0) -> data.Split:
    """Up to ``n`` validation images (0: all) outside every reference draw, drawn with ``seed``: the split on which
    every curve is measured and every choice made (the reference images tuned the relevance and the BatchNorm
    correction, so they are left out)."""
    if val.split != "val":
        raise ValueError(f"choices are made on the validation split, got split={val.split!r}")
    return data.excluding(val, [r.x for r in references], n, seed)


def key(setting) -> tuple:
    """A setting as a hashable tuple (a JSON round trip turns 4 bits into 4.0 and (0.9, 3) into a list)."""
    return tuple(float(v) for v in np.atleast_1d(setting).tolist())


def _point(row: pd.Series | None) -> dict | None:
    if row is None:
        return None
    setting = row["setting"]
    return {"variant": row["variant"], "setting": list(setting) if isinstance(setting, tuple) else float(setting),
            "ratio": float(row["ratio"]), "live_ratio": float(row["live_ratio"]), "val_auc": float(row["auc"]),
            "val_bal_acc": float(row["bal_acc"])}


def operating_points(curves: pd.DataFrame, base_auc: float, points: float) -> dict:
    """``{technique: {variant: point}}`` for every technique of :data:`experiments.TECHNIQUES` in the validation
    ``curves``: each variant's setting with the largest ratio within ``points`` AUC points of ``base_auc``
    (``{variant, setting, ratio, live_ratio, val_auc, val_bal_acc}``), or None where no setting is."""
    return {tech: {v: _point(experiments.ratio_at(g, base_auc, points))
                   for v, g in curves[curves["technique"] == tech].groupby("variant", sort=False)}
            for tech in experiments.TECHNIQUES if tech in set(curves["technique"])}


def _not_larger(curve: pd.DataFrame, ratio: float) -> pd.Series | None:
    """The setting of ``curve`` with the largest ratio not above ``ratio``; None if every setting compresses more."""
    ok = curve[curve["ratio"] <= ratio * (1 + 1e-9)]
    return None if ok.empty else ok.loc[ok["ratio"].idxmax()]


def plan(curves: pd.DataFrame, base_auc: float, points: float) -> list[dict]:
    """One entry per (technique, counterpart) of :data:`experiments.TECHNIQUES` in the validation ``curves``: the
    XAI operating point and the counterpart's matched setting (each ``{variant, setting, ratio, val_auc}`` or
    None) and ``status``: "compared", or why not."""
    out = []
    for tech in [t for t in experiments.TECHNIQUES if t in set(curves["technique"])]:
        here = curves[curves["technique"] == tech]
        chosen = experiments.ratio_at(here[here["xai"]], base_auc, points)
        for variant, g in here[~here["xai"]].groupby("variant", sort=False):
            match = None if chosen is None else _not_larger(g, chosen["ratio"])
            status = ("compared" if match is not None else
                      f"no DeepLIFT setting within {points:g} AUC point of the uncompressed model on validation"
                      if chosen is None else f"every {variant} setting compresses more than {chosen['ratio']:.1f}x")
            out.append({"technique": tech, "xai": _point(chosen), "counterpart": _point(match) or {"variant": variant},
                        "status": status})
    return out


def _side(probs: list[np.ndarray], y: np.ndarray, task: str) -> dict:
    """Mean endpoints over the draws of one side, and how many of its draws answer one class."""
    each = [stats.endpoints(y, p, task) for p in probs]
    return {**{k: float(np.mean([e[k] for e in each])) for k in stats.ENDPOINTS}, "draws": len(probs),
            "one_class": sum(experiments.one_class(p, task) for p in probs)}


def compare(entries: list[dict], probs: dict, y: np.ndarray, task: str, margin: float, n_boot: int = N_BOOT,
            seed: int = 0) -> dict:
    """The claim's numbers: each compared entry's paired difference of test AUC (XAI minus counterpart), Holm
    across all of them, and the per-technique outcome.

    ``probs[(technique, variant, key(setting))]`` holds the test probabilities of a setting, one array per draw.
    Returns ``comparisons`` (one dict per entry: the difference, its corrected interval, ``above_margin``,
    both sides' ACC, balanced accuracy and AUC), ``techniques`` (per technique: ``outcome`` "above the margin",
    "not above the margin" or "not measured", and its smallest difference), ``target_met`` (None when nothing
    was compared), ``wins_somewhere``, ``measured``, ``interval`` (the smallest difference and its corrected
    interval) and ``n_seeds`` (the XAI side's draws behind it).
    """
    found = []
    for e in (e for e in entries if e["status"] == "compared"):
        a, b = (probs[(e["technique"], e[side]["variant"], key(e[side]["setting"]))] for side in ("xai", "counterpart"))
        r = stats.paired_difference(a, b, y, task, "auc", margin, n_boot, seed, paired_seeds=len(a) == len(b))
        found.append({**r, "technique": e["technique"], "counterpart": e["counterpart"]["variant"],
                      "xai_side": _side(a, y, task), "counterpart_side": _side(b, y, task)})
    if found:
        stats.holm(found)
    techniques = {}
    for tech in dict.fromkeys(e["technique"] for e in entries):
        mine, planned = [r for r in found if r["technique"] == tech], [e for e in entries if e["technique"] == tech]
        worst = min(mine, key=lambda r: r["diff"]) if mine else None
        outcome = ("not above the margin" if any(not r["above_margin"] for r in mine) else
                   "above the margin" if mine and len(mine) == len(planned) else "not measured")
        techniques[tech] = {"outcome": outcome, "diff": worst and worst["diff"], "counterpart": worst and worst["counterpart"],
                            "interval_holm": worst and worst["interval_holm"],
                            "why": "; ".join(dict.fromkeys(e["status"] for e in planned if e["status"] != "compared")) or None}
    worst = min(found, key=lambda r: r["diff"]) if found else None
    return {"comparisons": found, "techniques": techniques,
            "target_met": None if not found else all(t["outcome"] == "above the margin" for t in techniques.values()),
            "wins_somewhere": any(r["above_margin"] for r in found), "measured": worst and worst["diff"],
            "interval": worst and worst["interval_holm"], "n_seeds": worst["n_seeds"][0] if worst else 0}


def table(result: dict) -> pd.DataFrame:
    """The comparisons as a table: test ACC, balanced accuracy and AUC of both sides, the draws of each side that
    answer one class for every test image, the difference of AUC, its Holm-corrected interval and p-value."""
    return pd.DataFrame([{"technique": r["technique"], "counterpart": r["counterpart"],
                          **{f"XAI {k}": r["xai_side"][k] for k in stats.ENDPOINTS},
                          **{f"counterpart {k}": r["counterpart_side"][k] for k in stats.ENDPOINTS},
                          "one class (XAI, counterpart)": "{} of {}, {} of {}".format(
                              r["xai_side"]["one_class"], r["xai_side"]["draws"], r["counterpart_side"]["one_class"],
                              r["counterpart_side"]["draws"]),
                          "AUC difference": r["diff"], "Holm interval": "[{:+.4f}, {:+.4f}]".format(*r["interval_holm"]),
                          "p (Holm)": r["p_holm"], "above margin": r["above_margin"]} for r in result["comparisons"]])


def _x(r: float | None) -> str:
    return "none within the loss" if r is None else f"{r:.1f}x"


def evidence(points: dict, found: dict, result: dict, dead: float, draws: int, loss: float) -> str:
    """The claim's row in words: the ratios on live weights, the combined pipeline, the equal-size test, what is not met."""
    parts = []
    for tech, t in found["ratio"].items():
        names = ", ".join(f"{v} {_x(p and p['live_ratio'])}" for v, p in points.get(tech, {}).items())
        parts.append(f"{tech.replace('_', ' ')}: {names} ({'met' if t['met'] else 'NOT met'})")
    c = found["combined"]
    parts.append("combined DeepLIFT pipeline " + ("no setting within the loss" if c["ratio"] is None else
                 f"{c['ratio']:.1f}x overall") + ("" if c["test_auc"] is None else
                 f", test AUC {c['test_auc']:.4f} (loss {c['test_loss'] * 100:+.2f} points)") +
                 f" ({'met' if c['met'] else 'NOT met'})")
    tests = "; ".join(f"{r['technique'].replace('_', ' ')} against {r['counterpart']}: {r['diff']:+.4f} "
                      "[{:+.4f}, {:+.4f}]".format(*r["interval_holm"]) for r in result["comparisons"])
    return (f"Ratio at {loss:g} validation AUC point on live weights ({dead:.1%} of the conv and linear weights are "
            f"dead, removed for every variant; {draws} reference draws): " + "; ".join(parts) + ". DeepLIFT minus each "
            f"counterpart at equal size, test AUC (Holm): {tests or 'nothing compared'}; below 0: "
            f"{', '.join(found['below']) or 'none'}. Not met: {'; '.join(found['not_met']) or 'nothing'}.")


def drift(rows: pd.DataFrame, base_auc: float, points: float = DRIFT_POINTS) -> dict:
    """The measured models that answer one class for every image while their AUC is within ``points`` AUC points
    of ``base_auc``: their count, the models measured, and the count per technique and variant."""
    hit = rows[rows["one_class"].astype(bool) & (rows["auc"] >= base_auc - points / 100)]
    return {"models": int(len(rows)), "one_class_high_auc": int(len(hit)),
            "by_variant": {f"{t} / {v}": int(n) for (t, v), n in hit.groupby(["technique", "variant"]).size().items()}}


def on_test(study: experiments.Study, entries: list[dict], points: dict, evaluator) -> dict:
    """The test probabilities (one array per draw) of every setting :func:`plan` compares and every variant's
    operating point, each evaluated once: ``{(technique, variant, key(setting)): [probs, ...]}``."""
    wanted = {(e["technique"], p["variant"], key(p["setting"])): p["setting"] for e in entries
              if e["status"] == "compared" for p in (e["xai"], e["counterpart"])}
    wanted.update({(tech, v, key(p["setting"])): p["setting"] for tech, by in points.items() for v, p in by.items() if p})
    return {k: study.probabilities(evaluator, *k[:2], s) for k, s in wanted.items()}


def at_test(points: dict, probs: dict, y: np.ndarray, task: str) -> dict:
    """``points`` with each operating point's mean test ACC, balanced accuracy and AUC over its draws (``test_*``)."""
    return {tech: {v: p and {**p, **{f"test_{k}": x for k, x in _side(
        probs[(tech, v, key(p["setting"]))], y, task).items() if k in stats.ENDPOINTS}}
                   for v, p in by.items()} for tech, by in points.items()}


def _ratio_target(by: dict, factor: float) -> dict:
    """DeepLIFT's ratio at 1 point on live weights against the best counterpart's; met when at least ``factor`` times
    it (or DeepLIFT within the loss where no counterpart is)."""
    mine = by.get(experiments.XAI)
    others = {v: p["live_ratio"] for v, p in by.items() if v != experiments.XAI and p}
    best = max(others, key=others.get) if others else None
    ratio = mine and mine["live_ratio"]
    return {"deeplift": ratio, "best": best, "best_ratio": others.get(best),
            "factor": None if ratio is None or best is None else ratio / others[best],
            "met": ratio is not None and (best is None or ratio >= factor * others[best])}


def targets(points: dict, base_test_auc: float, result: dict, factor: float, combined: float, loss: float) -> dict:
    """The claim's targets (points after :func:`at_test`): ``ratio`` per technique of :data:`RATIO_TECHNIQUES`
    (:func:`_ratio_target`), ``combined`` (the DeepLIFT pipeline's overall ratio at least ``combined`` and its test AUC
    within ``loss`` points of ``base_test_auc``), ``below`` (equal-size comparisons whose family-wise interval lies
    below 0), ``not_met`` in words, ``verdict`` and ``measured`` (the smaller DeepLIFT-over-best factor)."""
    ratio = {t: _ratio_target(points.get(t, {}), factor) for t in RATIO_TECHNIQUES}
    mine = points.get("combined", {}).get(experiments.XAI)
    c = {"ratio": mine and mine["ratio"], "test_auc": mine and mine["test_auc"],
         "test_loss": mine and base_test_auc - mine["test_auc"]}
    c["met"] = mine is not None and c["ratio"] >= combined and c["test_loss"] <= loss / 100 + 1e-12
    below = [f"{r['technique'].replace('_', ' ')} against {r['counterpart']}" for r in result["comparisons"]
             if r["interval_family"][1] < 0]
    not_met = [f"{t.replace('_', ' ')}: DeepLIFT {_x(v['deeplift'])} against {v['best']} {_x(v['best_ratio'])} "
               f"(target {factor:g}x the best)" for t, v in ratio.items() if not v["met"]]
    not_met += [] if c["met"] else [f"combined: {_x(c['ratio'])} overall" + ("" if c["test_loss"] is None else
                                    f", test AUC loss {c['test_loss'] * 100:+.2f} points")
                                    + f" (target {combined:g}x with test AUC within {loss:g} point)"]
    not_met += [f"{b} below 0 at equal size" for b in below]
    wins = any(v["met"] for v in ratio.values())
    target_met = all(v["met"] for v in ratio.values()) and c["met"] and not below
    factors = [v["factor"] for v in ratio.values() if v["factor"] is not None]
    return {"ratio": ratio, "combined": c, "below": below, "not_met": not_met,
            "verdict": stats.verdict(None if not points else target_met, wins), "measured": min(factors, default=None)}
