"""The compression claim of ``09_compression``: operating points chosen on validation, one paired test on test.

Every curve of the notebook is measured on a validation subset (:func:`selection_split`). There, for each
technique, :func:`plan` chooses the XAI variant's **operating point**: the setting with the largest compression
ratio whose mean validation AUC (over the reference draws) is within the claim's ``points`` AUC point of the
uncompressed model's. Each non-XAI counterpart is then taken at the **same or the nearest smaller** compression
ratio (never a larger one: the counterpart compresses at most as much as the XAI variant). Only those
settings are evaluated on the test split, once.

:func:`compare` tests each pair with :func:`xaiprune.stats.paired_difference` on test AUC (the same test
images on both sides; the reference draws nested, paired draw by draw when both sides have them all, as the
BatchNorm correction of both uses the same draw) and corrects the family of every (technique, counterpart)
pair with :func:`xaiprune.stats.holm`. A technique is above the margin when its corrected interval lies above
it against every counterpart; a technique with nothing to compare (no XAI setting within the loss, or every
counterpart setting compressing more) is "not measured" and is never a win. The claim's target is met when
every technique is above the margin; a win somewhere is one comparison above it. The margin and the target
are the protocol's (``xaiprune.study.protocol.CLAIMS["compression"]``), passed in by the notebook.

:func:`drift` counts the models whose decision threshold drifted: they answer one class for every image
(ACC at that class's share, balanced accuracy ``1 / classes``) while their AUC stays near the uncompressed
model's, the reason ACC decides nothing here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from xaiprune import data, stats
from xaiprune.compression import experiments

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


def _point(row: pd.Series | None) -> dict | None:
    if row is None:
        return None
    setting = row["setting"]
    return {"variant": row["variant"], "setting": list(setting) if isinstance(setting, tuple) else float(setting),
            "ratio": float(row["ratio"]), "val_auc": float(row["auc"])}


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
                      f"no XAI setting within {points:g} AUC point of the uncompressed model on validation"
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

    ``probs[(technique, variant)]`` holds the test probabilities of the entry's setting, one array per draw.
    Returns ``comparisons`` (one dict per entry: the difference, its corrected interval, ``above_margin``,
    both sides' ACC, balanced accuracy and AUC), ``techniques`` (per technique: ``outcome`` "above the margin",
    "not above the margin" or "not measured", and its smallest difference), ``target_met`` (None when nothing
    was compared), ``wins_somewhere``, ``measured``, ``interval`` (the smallest difference and its corrected
    interval) and ``n_seeds`` (the XAI side's draws behind it).
    """
    found = []
    for e in (e for e in entries if e["status"] == "compared"):
        a, b = probs[(e["technique"], e["xai"]["variant"])], probs[(e["technique"], e["counterpart"]["variant"])]
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
                            "why": "; ".join(e["status"] for e in planned if e["status"] != "compared") or None}
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


def evidence(entries: list[dict], result: dict, draws: int, points: float) -> str:
    """One or two sentences with this run's numbers for the claim's row."""
    at = {(e["technique"], e["counterpart"]["variant"]): e for e in entries}
    parts = [f"{r['technique']} {at[(r['technique'], r['counterpart'])]['xai']['ratio']:.1f}x against {r['counterpart']} "
             f"{at[(r['technique'], r['counterpart'])]['counterpart']['ratio']:.1f}x: {r['diff']:+.4f} "
             "[{:+.4f}, {:+.4f}]".format(*r["interval_holm"]) for r in result["comparisons"]]
    missing = [f"{t} not measured ({v['why']})" for t, v in result["techniques"].items() if v["why"]]
    return ("Test AUC of each XAI variant at the largest ratio within "
            f"{points:g} AUC point of the uncompressed model on validation, minus its counterpart's at the same or the "
            f"nearest smaller ratio (Holm-corrected 95% intervals, {draws} reference draws; compression is deterministic "
            "given a draw): " + "; ".join(parts + missing) + ". The weight relevance |w dR/dw| of techniques 2-5 is the "
            "weight-level first-order Taylor saliency, so they test a Taylor-type saliency against magnitude, not an "
            "attribution method against the Taylor criterion.")


def drift(rows: pd.DataFrame, base_auc: float, points: float = DRIFT_POINTS) -> dict:
    """The measured models that answer one class for every image while their AUC is within ``points`` AUC points
    of ``base_auc``: their count, the models measured, and the count per technique and variant."""
    hit = rows[rows["one_class"].astype(bool) & (rows["auc"] >= base_auc - points / 100)]
    return {"models": int(len(rows)), "one_class_high_auc": int(len(hit)),
            "by_variant": {f"{t} / {v}": int(n) for (t, v), n in hit.groupby(["technique", "variant"]).size().items()}}


def on_test(study: experiments.Study, entries: list[dict], evaluator) -> dict:
    """The test probabilities (one array per draw) of every setting :func:`plan` compares, each evaluated once:
    ``{(technique, variant): [probs, ...]}`` for :func:`compare`."""
    wanted = {(e["technique"], p["variant"]): p["setting"] for e in entries if e["status"] == "compared"
              for p in (e["xai"], e["counterpart"])}
    return {k: study.probabilities(evaluator, *k, s) for k, s in wanted.items()}
