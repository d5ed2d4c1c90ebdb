"""Notebook ``05_nlp``'s measurements on really pruned models: the surrogate's error, and the verified answers.

:func:`split_of_table` tells on which split the sensitivity table behind the surrogate was measured.
:func:`surrogate_checks` prunes the model as each plan of a fixed design says (:func:`xaiprune.planning.candidates.design`)
and compares the measured accuracy (on validation, where the surrogate's A_0 and rho were measured) with the
surrogate's prediction; :func:`surrogate_error` summarises the error, :func:`describe_surrogate_error` says it in
words, :func:`surrogate_claim` gives the claim's numbers (the mean absolute error over the pruned plans with its
bootstrap interval over plans, against a margin the caller passes). :func:`verify_sweep` verifies the optimum of every
instance of the sweep (:mod:`xaiprune.planning.sweep`) that prunes: the best few candidates under the surrogate
(:func:`xaiprune.planning.candidates.top_candidates`), measured on validation (:func:`~xaiprune.planning.candidates.choose`),
both choices then measured on test; :func:`verification_summary` and :func:`describe_verification` report it,
:func:`check_candidates` checks the candidates, :func:`metrics` assembles the notebook's ``metrics.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xaiprune import stats
from xaiprune.planning import candidates, nlp
from xaiprune.planning.solution import Result
from xaiprune.planning.system import Profiles, Scenario


def _levels_text(fractions) -> str:
    return " ".join(f"{v:.1f}" for v in fractions)


def split_of_table(table: pd.DataFrame, meas: candidates.Measurements, n_segments: int, split: str = "val",
                   tol: float = 1e-4) -> str:
    """``split`` if the sensitivity ``table`` (04's, behind the surrogate's A_0 and rho) was measured on it, else
    ``ValueError``: its unpruned rows (level 0) must carry the endpoints the unpruned model measures on ``split``."""
    unpruned = table[np.isclose(table["level"], 0.0)]
    if unpruned.empty:
        raise ValueError("the sensitivity table has no unpruned row (level 0): it cannot say on which split it was measured")
    here = meas.measure([0.0] * n_segments, split)
    for k in ("acc", "auc"):
        if abs(float(unpruned[k].mean()) - here[k]) > tol:
            raise ValueError(f"the sensitivity table's unpruned {k.upper()} is {float(unpruned[k].mean()):.4f}, the "
                             f"unpruned model's on {split!r} {here[k]:.4f}: the table was not measured on {split!r} "
                             f"(rerun 04_pruning_comparison)")
    return split


def surrogate_checks(meas: candidates.Measurements, profiles: Profiles, plan_design, metric: str = "acc",
                     split: str = "val") -> pd.DataFrame:
    """A row per plan of ``plan_design`` (level indices per segment): the surrogate's prediction (floored, and the
    bare product of retentions) against the accuracy ``metric`` measured on ``split`` of the model pruned so, the
    error in points (positive: the surrogate is optimistic), and every endpoint the plan measures (columns
    ``acc``, ``bal_acc``, ``auc``: what the surrogate does not model is shown beside)."""
    checks = []
    for levels in plan_design:
        fractions = [profiles.levels[l] for l in levels]
        ends = meas.measure(fractions, split)
        measured = ends[metric]
        surrogate, product = profiles.accuracy(list(levels)), profiles.accuracy(list(levels), floored=False)
        checks.append({"levels": _levels_text(fractions), "mean level": float(np.mean(fractions)),
                       "kind": "uniform" if len(set(levels)) == 1 else "random", "surrogate": surrogate,
                       "measured": measured, "error (points)": 100 * (surrogate - measured),
                       "product only": product, "error without floor": 100 * (product - measured),
                       **{k: ends[k] for k in stats.ENDPOINTS}})
    return pd.DataFrame(checks)


def surrogate_error(checks: pd.DataFrame, floor: float, margin: float) -> dict:
    """The error of :func:`surrogate_checks` over every plan, without the floor, and over the plans the surrogate
    predicts above its ``floor`` (``None`` where there are none); ``margin`` (a fraction, the claim's) counts the
    plans within it."""
    err, bare, points = checks["error (points)"], checks["error without floor"], 100 * margin
    out = {"n_plans": int(len(checks)), "margin_points": points, "mean_abs_points": float(err.abs().mean()),
           "max_abs_points": float(err.abs().max()), "mean_points": float(err.mean()),
           "within_margin": int((err.abs() <= points).sum()), "share_within_margin": float((err.abs() <= points).mean()),
           "without_floor_mean_abs_points": float(bare.abs().mean()),
           "without_floor_max_abs_points": float(bare.abs().max())}
    above = checks["product only"] > floor  # plans the surrogate predicts above its floor (not collapsed)
    some = bool(above.any())
    out.update({"above_floor_plans": int(above.sum()),
                "above_floor_mean_abs_points": float(err[above].abs().mean()) if some else None,
                "above_floor_max_abs_points": float(err[above].abs().max()) if some else None,
                "above_floor_within_margin": int((err[above].abs() <= points).sum())})
    return out


def change_error(checks: pd.DataFrame, base_accuracy: float, unpruned: float) -> dict:
    """The error of :func:`surrogate_checks` on what pruning *costs*: the predicted change from the unpruned model
    (surrogate - A_0) against the measured one on the checks' split (measured - ``unpruned``, the unpruned model's
    accuracy there), over the pruned plans; the difference between the split A_0 was measured on and this one drops
    out. Points: mean and largest |error|."""
    pruned = checks[checks["mean level"] > 0]
    err = 100 * ((pruned["surrogate"] - base_accuracy) - (pruned["measured"] - unpruned))
    return {"change_mean_abs_points": float(err.abs().mean()), "change_max_abs_points": float(err.abs().max()),
            "change_plans": int(len(err))}


def model_errors(checks: pd.DataFrame, product: pd.DataFrame, on_val: pd.DataFrame, profiles: Profiles,
                 unpruned: float, margin: float) -> dict:
    """05's ``surrogate_error``: :func:`surrogate_error` of the planners' accuracy model on the held-out plans
    (``checks``, test), with its :func:`change_error`, its error on the same plans measured on validation
    (``validation_*``) and 04's product surrogate's on test (``product_*``, the model before the refit)."""
    out = {**surrogate_error(checks, profiles.floor, margin), **change_error(checks, profiles.base_accuracy, unpruned)}
    keys = ("mean_abs_points", "max_abs_points")
    val = surrogate_error(on_val, profiles.floor, margin)
    before = {**surrogate_error(product, profiles.floor, margin), **change_error(product, profiles.base_accuracy, unpruned)}
    out.update({f"validation_{k}": val[k] for k in keys})
    out.update({f"product_{k}": before[k] for k in (*keys, "change_mean_abs_points", "change_max_abs_points")})
    return out


def describe_model_errors(e: dict) -> str:
    """The accuracy model's held-out errors of :func:`model_errors` in words, 04's product surrogate beside."""
    return (f"the accuracy model on {e['n_plans']} plans it was not fitted on: on validation mean |error| "
            f"{e['validation_mean_abs_points']:.2f} points, largest {e['validation_max_abs_points']:.2f}; on test, what "
            f"pruning costs (the change from the unpruned model) {e['change_mean_abs_points']:.2f} on average, "
            f"{e['change_max_abs_points']:.2f} at worst, and the accuracy itself {e['mean_abs_points']:.2f} / "
            f"{e['max_abs_points']:.2f} (the split's own shift included); 04's product surrogate on test: change "
            f"{e['product_change_mean_abs_points']:.2f} / {e['product_change_max_abs_points']:.2f}, accuracy "
            f"{e['product_mean_abs_points']:.2f} / {e['product_max_abs_points']:.2f}")


def describe_surrogate_error(e: dict, floor: float, seconds: float) -> str:
    """:func:`surrogate_error` in words (two sentences when some plans are predicted above the floor)."""
    m = e["margin_points"]
    text = (f"surrogate error over {e['n_plans']} plans ({seconds:.0f} s to prune and evaluate): mean |error| "
            f"{e['mean_abs_points']:.2f} points, max {e['max_abs_points']:.2f}, mean signed {e['mean_points']:+.2f}; "
            f"{e['within_margin']} of {e['n_plans']} plans ({e['share_within_margin']:.0%}) within the {m:g}-point "
            f"margin (without the floor: mean {e['without_floor_mean_abs_points']:.2f}, "
            f"max {e['without_floor_max_abs_points']:.2f})")
    if e["above_floor_plans"]:
        text += (f"\nover the {e['above_floor_plans']} plans predicted above the floor {floor:.3f}: mean |error| "
                 f"{e['above_floor_mean_abs_points']:.2f}, max {e['above_floor_max_abs_points']:.2f}; "
                 f"{e['above_floor_within_margin']} within {m:g} points")
    return text


def surrogate_claim(checks: pd.DataFrame, margin: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """The claim's numbers: the mean absolute error (a fraction) of the surrogate over the **pruned** plans of
    ``checks`` (mean level above 0; the unpruned plan is A_0 itself), its 95% bootstrap interval over the plans
    (``n_boot`` resamples, seeded), the one-sided p of "the mean error is at least ``margin``", ``target_met``
    (the interval's upper end at most ``margin``) and ``wins_somewhere`` (the mean at most ``margin``)."""
    err = checks.loc[checks["mean level"] > 0, "error (points)"].abs().to_numpy(np.float64) / 100
    if err.size == 0:
        raise ValueError("no pruned plan among the checks: the surrogate's error needs at least one")
    boot = err[np.random.default_rng(seed).integers(0, err.size, (n_boot, err.size))].mean(1)
    s = stats.summarise_bootstrap(-float(err.mean()), -boot, -margin)  # negated: p of "error >= margin"
    lo, hi = -s["interval"][1], -s["interval"][0]
    return {"measured": float(err.mean()), "interval": [lo, hi], "p": s["p"], "margin": margin,
            "n_plans": int(err.size), "max": float(err.max()), "within_margin": int((err <= margin).sum()),
            "target_met": bool(hi <= margin), "wins_somewhere": bool(err.mean() <= margin)}


def claim_evidence(c: dict, checks: pd.DataFrame, metric: str, split: str = "validation") -> str:
    """:func:`surrogate_claim` in one or two sentences, with the other endpoints of the same plans beside."""
    pruned = checks[checks["mean level"] > 0]
    beside = ", ".join(f"{k} {pruned[k].min():.3f}-{pruned[k].max():.3f}" for k in stats.ENDPOINTS if k != metric)
    unpruned = checks.loc[checks["mean level"] == 0, "error (points)"]
    shift = ("" if unpruned.empty else f" The unpruned plan alone is off by {float(unpruned.iloc[0]):+.2f} points: A_0 "
             f"is the unpruned model's accuracy on the split the table was measured on, so this much of the error is the "
             f"difference between that split and {split}, not the product of retentions.")
    return (f"Over {c['n_plans']} pruned plans of the fixed design, measured on {split}, the surrogate's {metric.upper()} "
            f"is off by {100 * c['measured']:.2f} points on average (95% bootstrap over plans "
            f"{100 * c['interval'][0]:.2f}-{100 * c['interval'][1]:.2f}; largest {100 * c['max']:.2f}; "
            f"{c['within_margin']} plans within {100 * c['margin']:g} points).{shift} The surrogate models "
            f"{metric.upper()} only; the same plans measure {beside}.")


def measured_by_policy(frame: pd.DataFrame, measure, profiles: Profiles, metric: str) -> pd.DataFrame:
    """Per planner of ``frame`` (rows with ``policy``, ``levels``: level indices, ``accuracy``: the surrogate's), the
    mean over its requests of the ``metric`` its plans *measure* (``measure``: level fractions -> metric, e.g.
    :meth:`~xaiprune.planning.candidates.Measurements.metric` on test), beside the mean surrogate accuracy; each
    distinct level vector is measured once."""
    cache = {lv: float(measure([profiles.levels[l] for l in lv])) for lv in dict.fromkeys(map(tuple, frame["levels"]))}
    rows = frame.assign(measured=[cache[tuple(lv)] for lv in frame["levels"]])
    return rows.groupby("policy", sort=False).agg(**{f"measured {metric}": ("measured", "mean"),
                                                   "surrogate": ("accuracy", "mean"),
                                                   "level vectors": ("levels", lambda v: len(set(map(tuple, v))))})


@dataclass
class Verification:
    """The verified answers of a sweep: a row per instance with a plan, the candidates of each verified one."""

    table: pd.DataFrame
    candidates: dict[tuple, list[Result]]
    models_pruned: int
    seconds: float


def verify_one(key: tuple, optimum: Result, scenario: Scenario, profiles: Profiles, meas: candidates.Measurements,
               k: int, time_limit: float, metric: str) -> tuple[dict, list[Result] | None]:
    """The row of one instance (and its candidates, ``None`` when the optimum prunes nothing: it is final)."""
    val_opt = val_chosen = np.nan
    chosen, choice, found = 0, optimum, None
    if any(optimum.plan.levels):  # verify: the best candidates under the surrogate, measured on val
        found = candidates.top_candidates(scenario, profiles, k, time_limit, explain_infeasible=False, first=optimum)
        v = candidates.choose(found, profiles, meas.metric("val", metric))
        chosen, choice, val_opt, val_chosen = v.chosen, v.result, v.measured[0], v.measured[v.chosen]
    levels_opt = [profiles.levels[l] for l in optimum.plan.levels]
    levels_chosen = [profiles.levels[l] for l in choice.plan.levels]
    test_opt, test_chosen = meas.measure(levels_opt, "test"), meas.measure(levels_chosen, "test")
    return {"scenario": key[0], "axis": key[1], "factor": key[2], "verified": found is not None,
            "candidates": len(found) if found else 1, "chosen": chosen, "status": choice.status,
            "optimum levels": _levels_text(levels_opt), "chosen levels": _levels_text(levels_chosen),
            "surrogate optimum": optimum.accuracy, "surrogate chosen": choice.accuracy,
            "val optimum": val_opt, "val chosen": val_chosen, "test optimum": test_opt[metric],
            "test chosen": test_chosen[metric], "gain (points)": 100 * (test_chosen[metric] - test_opt[metric]),
            **{f"gain {k} (points)": 100 * (test_chosen[k] - test_opt[k]) for k in stats.ENDPOINTS if k != metric}
            }, found


def verify_sweep(optima: dict[tuple, Result], instances: dict[tuple, Scenario], profiles: Profiles,
                 meas: candidates.Measurements, k: int, time_limit: float = 30.0, metric: str = "acc") -> Verification:
    """:func:`verify_one` on every instance whose optimum has a plan (``k`` candidates, ``time_limit`` s per solve)."""
    started, pruned_before = time.perf_counter(), meas.pruned
    rows, found = [], {}
    for key, optimum in optima.items():
        if optimum.plan is None:
            continue
        r, cands = verify_one(key, optimum, instances[key], profiles, meas, k, time_limit, metric)
        rows.append(r)
        if cands is not None:
            found[key] = cands
    return Verification(pd.DataFrame(rows), found, meas.pruned - pruned_before, time.perf_counter() - started)


def verification_summary(v: Verification, k: int) -> dict:
    """How many instances were verified, changed, gained and lost on test, and the gains in points."""
    if v.table.empty:
        raise RuntimeError("no instance of the sweep has a plan: nothing to verify; "
                           "widen deadline_factors or bandwidth_factors")
    checked = v.table.query("verified")
    gain = checked["gain (points)"]
    some = len(gain) > 0
    others = {f"mean_gain_points_{c.split()[1]}": float(checked[c].mean()) if some else None
              for c in v.table.columns if c.startswith("gain ") and c != "gain (points)"}
    return {"instances": int(len(v.table)), "verified": int(len(checked)), "candidates_per_instance": k,
            "changed": int((checked["chosen"] > 0).sum()), "instances_gained": int((gain > 0).sum()),
            "instances_lost": int((gain < 0).sum()),
            "mean_gain_points": float(gain.mean()) if some else None,
            "max_gain_points": float(gain.max()) if some else None,
            "min_gain_points": float(gain.min()) if some else None,
            "mean_gain_points_all": float(v.table["gain (points)"].mean()),
            **others, "models_pruned": int(v.models_pruned), "seconds": round(v.seconds, 1)}


def describe_verification(s: dict) -> str:
    """:func:`verification_summary` in words."""
    if not s["verified"]:
        return f"none of the {s['instances']} instances with a plan prunes: every optimum is final, nothing to verify"
    return (f"{s['verified']} of {s['instances']} instances with a plan prune and were verified "
            f"({s['candidates_per_instance']} candidates each); the verified choice differs from the surrogate's "
            f"optimum on {s['changed']}, and measured on test it gains on {s['instances_gained']} and loses on "
            f"{s['instances_lost']}.\nAccuracy lost by trusting the surrogate alone (test, verified minus optimum): "
            f"mean {s['mean_gain_points']:+.2f} points over the verified instances (largest "
            f"{s['max_gain_points']:+.2f}, smallest {s['min_gain_points']:+.2f}), {s['mean_gain_points_all']:+.2f} "
            f"over all{_beside(s)}. {s['models_pruned']} more models pruned, {s['seconds']:.0f} s.")


def _beside(s: dict) -> str:
    """The mean gains in the endpoints the choice did not use, as a parenthesis ('' when there are none)."""
    others = [f"{k.removeprefix('mean_gain_points_')} {v:+.2f}" for k, v in s.items()
              if k.startswith("mean_gain_points_") and k != "mean_gain_points_all" and v is not None]
    return f" (the other endpoints over the verified instances: {', '.join(others)})" if others else ""


def check_candidates(found: dict[tuple, list[Result]], profiles: Profiles) -> None:
    """``RuntimeError`` unless every instance's candidates are distinct, feasible level vectors in the solver's order."""
    for key, cands in found.items():
        if len({tuple(r.plan.levels) for r in cands}) != len(cands):
            raise RuntimeError(f"{key}: a level vector repeats")
        if not all(r.evaluation.feasible for r in cands):
            raise RuntimeError(f"{key}: an infeasible candidate")
        if any(nlp.better(b.key(profiles), a.key(profiles)) for a, b in zip(cands, cands[1:]) if b.status == "optimal"):
            raise RuntimeError(f"{key}: candidates out of the solver's order")


def _rounded(d: dict, digits: int = 4) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}


def metrics(base: dict[str, Result], error: dict, verification: dict, heuristics: pd.DataFrame,
            timing: pd.DataFrame) -> dict:
    """05's ``metrics.json``: the scenarios' solves, the surrogate's error, the verification, the heuristics against
    the optimum (:func:`xaiprune.planning.sweep.against_optimum`) and the solve-time study."""
    return {
        "solve_seconds": {name: round(r.seconds, 4) for name, r in base.items()},
        "status": {name: r.status for name, r in base.items()},
        "surrogate_accuracy": {name: (round(r.accuracy, 6) if r.plan else None) for name, r in base.items()},
        "surrogate_error": _rounded(error), "verification": _rounded(verification),
        "heuristics": {p: {"feasible_rate": round(float(v["feasible_rate"]), 4),
                           "mean_gap_to_optimum": None if pd.isna(v["mean_gap_to_optimum"])
                           else round(float(v["mean_gap_to_optimum"]), 6)}
                       for p, v in heuristics.iterrows()},
        "scaling": timing.assign(milp_s=timing["milp_s"].round(4),
                                 enumeration_s=timing["enumeration_s"].round(4)).to_dict("records"),
    }
