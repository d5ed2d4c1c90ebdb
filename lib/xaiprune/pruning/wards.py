"""XAI pruning in the regime it was proposed for: a broad hospital-wide model pruned for one ward's narrow task.

Notebook 04 prunes a model trained for exactly the ward's task, where no filter is irrelevant to it. Baccour
et al. start from a *pre-trained* model deployed where local data is scarce, and Yeom et al. ("Pruning by
explaining", Pattern Recognition 2021) measured the advantage of LRP there: a 1000-class model pruned for
3-class subsets, without fine-tuning (:data:`ANCHOR`). Filters that serve classes the ward never sees carry
no relevance on its reference set; relevance can find them, a weight norm cannot.

Here the broad model is the ``hospital`` model of :mod:`xaiprune.data` (9 classes from three MedMNIST files,
the project's own construction), and a *ward* is one source. For each ward (:class:`WardData`):

- the reference sets are ``draws`` scarce draws of ``n_per_class`` validation images of the ward's classes
  (the study's one scarce-class rule, :func:`xaiprune.data.reference_set`), the BatchNorm repair's images
  are unlabelled validation images of the ward, and the test set is the source's test split;
- every model answers among the ward's classes (:func:`xaiprune.data.restrict`); the unrestricted
  figures (argmax over all nine) are kept beside;
- the claim's criteria (LRP, L1, Taylor) and random are scored on each draw and the model pruned globally at
  each ratio, measured as it is (``none``) and after the no-label repairs (``batchnorm+recalibrate``: BatchNorm
  statistics of the unlabelled ward images, then the final bias refitted on the labelled reference set); the
  exploration criteria (IG, DeepLIFT, Gradient x Activation) on fewer draws, as pruned only:
  :func:`run_ward`, built on :func:`xaiprune.pruning.repair_study.repair_sweep`.

The test (:func:`comparisons`, :func:`claim`): LRP (declared primary before any number, as in 04) minus each
of L1 and Taylor, balanced accuracy on the ward's test images, at each claim ratio, paired over test images
with the draws nested; one Holm family per architecture and repair state (wards x ratios x baselines). A
ward counts when, at one of the ratios, LRP is at least ``points`` above both baselines with both corrected
intervals above 0. The ratios, ``points`` and the wards needed are the protocol's (claim ``ward_regime``):
the notebook passes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from xaiprune import data, models, stats
from xaiprune.pruning import comparison, repair_study, verdict

PRIMARY = verdict.PRIMARY
BASELINES = ("l1", "taylor")
REPAIRED = "batchnorm+recalibrate"
STATES = ("none", REPAIRED)
POINTS_NOTE = 0.02  # two regimes whose mean LRP advantages differ by less than this are read as alike (prose only)

# Yeom et al. 2021 (Fig. 4 and 5): ImageNet models pruned for random 3-class subsets, no fine-tuning, mean of
# 20 runs; test accuracy (%) by criterion. Drawn for orientation only: another data set, another model.
ANCHOR = {
    ("vgg16", 0.30): {"lrp": 78.4, "taylor": 70.6, "gradient": 56.8, "weight": 61.7},
    ("vgg16", 0.45): {"lrp": 54.6, "taylor": 50.4, "gradient": 40.3, "weight": 40.1},
    ("resnet18", 0.30): {"lrp": 94.7, "taylor": 34.8, "gradient": 33.6, "weight": 53.7},
    ("resnet50", 0.50): {"lrp": 85.2, "taylor": 37.2, "gradient": 37.1, "weight": 53.2},
}


@dataclass
class WardData:
    """One ward's images: its test split, its reference draws and its unlabelled images (hospital labels)."""

    name: str
    test: data.Split
    references: list[data.Split]
    unlabelled: torch.Tensor

    @property
    def drawn(self) -> dict[int, dict]:
        """Per class of the ward, images asked, available and drawn per reference set (the scarce-class rule)."""
        return self.references[0].counts


def ward_data(val: data.Split, test: data.Split, name: str, n_per_class: int, draws: int, unlabelled: int,
              seed: int = 0) -> WardData:
    """The ward's test images, ``draws`` reference sets (seeds ``seed + k``) and up to ``unlabelled`` unlabelled
    validation images (all of them when the ward has fewer)."""
    classes = data.ward(name).classes
    val_w = data.ward_split(val, name)
    refs = [data.reference_set(val_w, n_per_class, seed=seed + k, classes=classes) for k in range(draws)]
    images = repair_study.unlabelled_images(val_w, min(unlabelled, len(val_w)), seed)
    return WardData(name, data.ward_split(test, name), refs, images)


def run_ward(model: models.SegmentedModel, ward: WardData, criteria: list[str], ratios: list[float],
             explore: list[str] = (), explore_draws: int = 2, progress: bool = True,
             **options) -> tuple[comparison.Evaluator, pd.DataFrame]:
    """Every criterion on every draw at every ratio, as pruned and repaired, on the ward's test images.

    ``criteria`` (the claim's and random) run on every reference draw, as pruned and after the repairs;
    ``explore`` (the exploration criteria) on the first ``explore_draws`` draws, as pruned only, since scoring
    them is what costs most (integrated gradients and DeepLIFT explain one layer at a time). Returns the
    ward's :class:`~xaiprune.pruning.comparison.Evaluator` (restricted probabilities in ``scores``, all nine
    logits in ``logits``) and the frame of :func:`~xaiprune.pruning.repair_study.repair_sweep` with ``ward``,
    ``unrestricted_acc`` and ``unrestricted_bal_acc`` added.
    """
    ev = comparison.Evaluator(model, ward.test, ward=ward.name)
    refs = ward.references
    frames = [repair_study.repair_sweep(ev, criteria, ratios, refs, ward.unlabelled, len(refs), progress=progress,
                                        which=STATES, **options)]
    if explore:
        frames.append(repair_study.repair_sweep(ev, list(explore), ratios, refs[:explore_draws], ward.unlabelled, 1,
                                                progress=progress, which=("none",), **options))
    frame = pd.concat(frames, ignore_index=True)
    y, classes = ward.test.y.numpy(), data.ward(ward.name).classes
    wide = pd.DataFrame([stats.unrestricted(y, ev.logits[m], classes) for m in frame["model"]], index=frame.index)
    return ev, frame.assign(ward=ward.name, unrestricted_acc=wide["acc"], unrestricted_bal_acc=wide["bal_acc"])


def unpruned(ev: comparison.Evaluator, frame: pd.DataFrame) -> dict[str, float]:
    """The unpruned model's endpoints on the ward (restricted) and its unrestricted ACC and balanced accuracy."""
    row = frame[(frame["ratio"] == 0) & (frame["repair"] == "none")].iloc[0]
    return {k: float(row[k]) for k in (*stats.ENDPOINTS, "unrestricted_acc", "unrestricted_bal_acc")}


def comparisons(runs: dict[str, tuple[comparison.Evaluator, pd.DataFrame]], state: str, ratios: list[float],
                metric: str = "bal_acc", n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """LRP minus each baseline for every ward of ``runs`` at every ratio of ``ratios``, under repair ``state``,
    Holm-corrected as one family (:func:`xaiprune.pruning.verdict.comparisons` per ward, ``ward`` added)."""
    raw = []
    for name, (ev, frame) in runs.items():
        at = frame[(frame["repair"] == state) & frame["ratio"].round(3).isin([round(r, 3) for r in ratios])]
        found = verdict.comparisons(at, ev.scores, ev.y, ev.task, PRIMARY, BASELINES, metric, 0.0,
                                    n_boot=n_boot, seed=seed, correct=False)
        raw += [{**r, "ward": name, "state": state} for r in found]
    return stats.holm(raw)


def ward_margins(results: list[dict], points: float) -> pd.DataFrame:
    """Per ward and ratio: LRP minus the better baseline (the smaller difference), that comparison's corrected
    interval, and whether the ward meets the target there (at least ``points`` above both baselines, both
    corrected intervals above 0)."""
    rows = []
    for (ward, ratio), group in pd.DataFrame(results).groupby(["ward", "ratio"], sort=False):
        worst = group.loc[group["diff"].idxmin()]
        rows.append({"ward": ward, "ratio": ratio, "better_baseline": worst["baseline"], "diff": float(worst["diff"]),
                     "interval_holm": worst["interval_holm"], "baselines": len(group),
                     "met": bool(len(group) == len(BASELINES) and group["above_margin"].all()
                                 and worst["diff"] >= points)})
    return pd.DataFrame(rows)


def claim(results: list[dict], arch: str, wards: list[str], n_seeds: int, points: float, min_wards: int,
          ratios: list[float]) -> dict:
    """The claim row's numbers for one architecture, no repair (``protocol.row``'s arguments but the id).

    measured: the LRP advantage over the better baseline in the ward ranked ``min_wards``-th (each ward at its
    better claim ratio), with that comparison's corrected interval; supported when at least ``min_wards`` wards
    meet the target (:func:`ward_margins`), partly when fewer but at least one does, else not supported (a
    corrected interval above 0 against one baseline alone, or by less than ``points``, e.g. 0.501 against 0.500
    between two collapsed models, is no win); not measured when a ward lacks a comparison at a ratio of ``ratios``.
    """
    have = {(r["ward"], r["ratio"], r["baseline"]) for r in results}
    need = {(w, round(r, 3), b) for w in wards for r in ratios for b in BASELINES}
    if need - have:
        return {"measured": None, "interval": None, "n_seeds": 0, "verdict_": stats.MISSING,
                "evidence": f"{arch}: not measured: LRP, L1 and Taylor at {', '.join(f'{r:.0%}' for r in ratios)} "
                            f"are needed on every ward ({', '.join(wards)}) and some are missing."}
    margins = ward_margins(results, points)
    best = margins.sort_values("diff", ascending=False).groupby("ward", sort=False).head(1).set_index("ward")
    ranked = best.sort_values("diff", ascending=False)
    pick = ranked.iloc[min(min_wards, len(ranked)) - 1]
    met = [w for w in wards if w in set(margins.loc[margins["met"], "ward"])]
    cells = "; ".join(f"{w} {best.loc[w, 'diff']:+.3f} vs {best.loc[w, 'better_baseline']} at {best.loc[w, 'ratio']:.0%} "
                      f"[{best.loc[w, 'interval_holm'][0]:+.3f}, {best.loc[w, 'interval_holm'][1]:+.3f}]"
                      for w in ranked.index)
    evidence = (f"{arch}, no repair, balanced accuracy among the ward's classes: LRP minus the better of L1 and Taylor "
                f"at the ward's better claim ratio (Holm-corrected over {len(results)} comparisons): {cells}. "
                f"Wards meeting the target ({points * 100:g} points, both intervals above 0): {len(met)} of {len(wards)}"
                + (f" ({', '.join(met)})." if met else "."))
    return {"measured": float(pick["diff"]), "interval": list(pick["interval_holm"]), "n_seeds": n_seeds,
            "verdict_": stats.verdict(len(met) >= min_wards, bool(met)), "evidence": evidence}


def metrics(arch: str, runs: dict[str, tuple[comparison.Evaluator, pd.DataFrame]]) -> dict:
    """``regime.<arch>.<ward>.<criterion>.<ratio>.{acc, bal_acc, auc}`` (no repair, mean over draws; ratios as in 04)
    and ``regime.<arch>.<ward>.unpruned`` (with the unrestricted ACC and balanced accuracy), nested."""
    out = {}
    for name, (ev, frame) in runs.items():
        plain = frame[(frame["repair"] == "none") & (frame["ratio"] > 0)]
        means = plain.groupby(["criterion", "ratio"])[list(stats.ENDPOINTS)].mean()
        ward = {c: {} for c in means.index.get_level_values(0)}
        for (c, r), m in means.iterrows():
            ward[c][f"{r:g}"] = {k: round(float(m[k]), 4) for k in stats.ENDPOINTS}
        ward["unpruned"] = {k: round(v, 4) for k, v in unpruned(ev, frame).items()}
        out[name] = ward
    return {"regime": {arch: out}}


def _advantage(means: dict, ratio: float) -> float | None:
    """LRP minus the better of L1 and Taylor in ``means`` (criterion -> ratio string -> endpoints), balanced accuracy."""
    key = f"{ratio:g}"
    try:
        return means[PRIMARY][key]["bal_acc"] - max(means[b][key]["bal_acc"] for b in BASELINES)
    except KeyError:
        return None


def two_regimes(regime: dict, own: dict | None, ratios: list[float]) -> list[str]:
    """Sentences on what the two regimes say together: LRP's advantage over the better of L1 and Taylor (mean test
    balanced accuracy, no repair) per ward here (``regime``: :func:`metrics`'s ``regime``), beside the same
    advantage on the model of the ward's own task (``own``: notebook 04's metrics, or None when it did not run)."""
    out = []
    for arch, by_ward in regime.items():
        for r in ratios:
            here = {w: _advantage(m, r) for w, m in by_ward.items()}
            here = {w: v for w, v in here.items() if v is not None}
            if not here:
                continue
            there = _advantage(own[arch], r) if own and arch in own else None
            mean = float(np.mean(list(here.values())))
            text = (f"{arch}, {r:.0%} of filters removed: LRP minus the better of L1 and Taylor is "
                    + ", ".join(f"{v * 100:+.1f} points ({w})" for w, v in here.items())
                    + f" on the broad model's wards (mean {mean * 100:+.1f})")
            if there is None:
                out.append(text + f"; 04 measured no own-task {arch} at this ratio in this profile.")
                continue
            gap = mean - there
            if gap > POINTS_NOTE:
                reading = ("breadth helps LRP, as Yeom et al. argue" if mean > 0 else "LRP trails the better weight "
                           "criterion in both regimes, by less on the broad model: breadth narrows the gap, it does not "
                           "reverse it")
            else:
                reading = ("breadth does not help LRP here" if gap < -POINTS_NOTE else
                           f"the two regimes are within {POINTS_NOTE * 100:g} points of each other")
            out.append(text + f", against {there * 100:+.1f} on 04's model, trained for the study's flag alone: "
                       f"{reading}.")
    return out

