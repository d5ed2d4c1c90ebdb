"""Notebook ``06_rl``'s judgement of the agents: held-out wards, the bound check, decision times, the fade, targets.

:func:`held_out` judges every planner (:func:`planners`) on held-out ward runs with a fade of a held-out shape
(:func:`xaiprune.planning.judging.paired`); :func:`optimum_bound` checks that no planner's feasible plan beats the
optimum; :func:`cbc_times` and :func:`decision_times` time the decisions; :func:`adaptation` summarises the replayed
fade (:func:`xaiprune.planning.env.fade_trace`); :func:`ward_metrics`, :func:`targets_of` and :func:`metrics`
assemble the notebook's ``metrics.json``, :func:`describe_ward` says a ward's results in words.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune.planning import fades, judging, nlp, rl
from xaiprune.planning.env import WardEnv
from xaiprune.planning.system import Profiles, Scenario

AGENT = "sequential agent"
WINDOWS = ("nominal", "fade")
TARGETS = {  # the study's targets for the agent (per ward), checked by :func:`targets_of`
    "nominal: >= 98% of the optimum": lambda m: m["nominal"]["acc_vs_optimum"] >= 0.98,
    "nominal: < 1% violations": lambda m: m["nominal"]["violation_rate"] < 0.01,
    "fade: >= 95% of the optimum": lambda m: m["fade"]["acc_vs_optimum"] >= 0.95,
    "fade: < 2% violations": lambda m: m["fade"]["violation_rate"] < 0.02,
    "fade: beats greedy": lambda m: m["fade"]["acc_vs_optimum"] > m["greedy"]["fade"]["acc_vs_optimum"],
    "decision < 1 ms": lambda m: m["decision_ms"] < 1.0,
    "decision faster than the enumeration": lambda m: m["decision_ms"] < m["enumeration_ms"],
    "training < 8 min": lambda m: m["training_seconds"] < 480,
}


def describe_limit(name: str, m_star: float, fade_low: float) -> str:
    """What the unpruned limit ``m_star`` (:func:`xaiprune.planning.judging.unpruned_limit`) means for a fade to
    ``fade_low`` x nominal bandwidth."""
    if m_star >= 1.0:
        return f"{name}: even the nominal ward needs pruning (no unpruned placement fits): the optimum prunes throughout"
    if m_star == 0.0:
        return (f"{name}: an unpruned placement meets every constraint at any bandwidth down to 1e-6 x nominal (the "
                f"model fits where the image is): no fade needs pruning on this ward")
    verdict = ("deep enough: the optimum must prune at its bottom" if fade_low < m_star else
               "NOT deep enough: the optimum can meet every constraint by moving segments alone")
    return (f"{name}: below m* = {m_star:.4f} x nominal bandwidth no unpruned placement meets every constraint; "
            f"fade_low = {fade_low} is {verdict}")


def planners(sequential, baseline) -> dict[str, judging.Planner]:
    """The judged planners: the sequential agent, the MultiDiscrete baseline (a PPO model), greedy, no pruning, random."""
    return {AGENT: judging.sequential(sequential),
            "MultiDiscrete PPO (baseline)": judging.from_policy(rl.agent_policy(baseline)),
            "greedy": judging.from_policy(rl.greedy_policy), "no pruning": judging.from_policy(rl.no_pruning_policy),
            "random": judging.from_policy(rl.random_policy)}


def held_out(name: str, ward: Scenario, profiles: Profiles, judged: dict[str, judging.Planner], seeds: list[int],
             episode_length: int, fade_low: float, progress: bool = True) -> pd.DataFrame:
    """:func:`~xaiprune.planning.judging.paired` on one run per seed, each with one held-out fade of every link
    (:func:`xaiprune.planning.fades.held_out`, depth around ``fade_low``, drawn from the run's seed)."""
    frames = []
    for k, run_seed in enumerate(seeds):
        fade = fades.held_out(np.random.default_rng(run_seed), episode_length, fade_low)
        frames.append(judging.paired(ward, profiles, judged, run_seed, episode_length,
                                     overlay=fades.overlay(episode_length, ward.n, [fade]), progress=progress,
                                     desc=f"{name} run {k + 1}/{len(seeds)}")
                      .assign(ward=name, fade_shape=fade.shape, fade_depth=fade.depth))
    return pd.concat(frames, ignore_index=True)


def optimum_bound(evaluation: pd.DataFrame) -> dict:
    """Over every held-out request: the largest accuracy of a planner's feasible plan above the optimum's (0 if none,
    where the optimum has a plan), and the requests where some planner is feasible but the optimum has no plan."""
    where = ["ward", "seed", "t"]
    opt = evaluation[evaluation["policy"] == judging.OPTIMUM].set_index(where)
    others = evaluation[evaluation["policy"] != judging.OPTIMUM].join(
        opt[["accuracy"]].rename(columns={"accuracy": "opt_acc"}), on=where)
    feasible = others[others["feasible"]]
    above = float((feasible["accuracy"] - feasible["opt_acc"]).where(feasible["feasible_exists"]).max())
    return {"requests": int(len(opt)), "largest_accuracy_above_optimum": max(above, 0.0),
            "feasible_where_optimum_has_no_plan": int((~feasible["feasible_exists"]).sum())}


def cbc_times(ward: Scenario, profiles: Profiles, sequential, seed: int, samples: int, episode_length: int) -> list[float]:
    """CBC's decision time (ms) on the first ``samples`` requests of the ward run ``seed``, stepped by the agent."""
    run = WardEnv(ward, profiles, episode_length=episode_length)
    run.reset(seed=seed)
    times = []
    for _ in range(samples):
        times.append(nlp.solve_milp(run.instance(), profiles, explain_infeasible=False).seconds * 1e3)
        run.step(run.action_of(sequential.decide(run.instance(), run.state.priority)))
    return times


def decision_times(evaluation: pd.DataFrame, cbc_ms: list[float], scenario: str) -> pd.DataFrame:
    """Median decision time per ward and planner (ms), with CBC's on ``scenario``."""
    timing = evaluation.pivot_table(index="ward", columns="policy", values="decision_ms", aggfunc="median")
    timing["CBC MILP"] = np.nan
    timing.loc[scenario, "CBC MILP"] = float(np.median(cbc_ms))
    return timing


def adaptation(traced: pd.DataFrame, multiplier: np.ndarray, fade_low: float, last: int = 5) -> dict[str, dict]:
    """Per planner on the replayed fade (``multiplier``: one per request): distinct plans, mean pruning at nominal
    bandwidth, at the bottom of the fade (``fade_low``) and over the ``last`` requests, violations during the fade."""
    faded = multiplier < 1
    out = {}
    for name, g in traced.groupby("policy", sort=False):
        g = g.sort_values("t")
        bottom = multiplier[g["t"]] <= fade_low * (1 + 1e-9)
        out[name] = {"distinct_plans": int(g["plan"].nunique()),
                     "mean_pruning_nominal": float(g["pruning"][~faded].mean()),
                     "mean_pruning_fade_bottom": float(g["pruning"][bottom].mean()),
                     "violations_fade": int((~g["feasible"][faded]).sum()), "fade_requests": int(faded.sum()),
                     "pruning_after_recovery": float(g["pruning"].iloc[-last:].mean())}
    return out


def prunes_in_fade(a: dict) -> bool:
    """Whether a planner's :func:`adaptation` prunes more at the bottom of the fade than at nominal bandwidth, and no
    more after the recovery than at nominal bandwidth."""
    return bool(a["mean_pruning_fade_bottom"] > a["mean_pruning_nominal"]
                and a["pruning_after_recovery"] <= a["mean_pruning_nominal"] + 1e-9)


def describe_adaptation(name: str, a: dict, last: int = 5) -> str:
    """A planner's :func:`adaptation` in words."""
    return (f"{name}: {a['distinct_plans']} distinct plans; mean pruning {a['mean_pruning_nominal']:.3f} at nominal "
            f"bandwidth, {a['mean_pruning_fade_bottom']:.3f} at the bottom of the fade, "
            f"{a['pruning_after_recovery']:.3f} over the last {last} requests; {a['violations_fade']} of "
            f"{a['fade_requests']} faded requests violate a constraint")


def block(results: pd.DataFrame, ward: str, policy: str, window: str) -> dict:
    """One planner's numbers on one window of one ward (``results``: ``judging.summary`` by ward, window, policy)."""
    r = results.loc[(ward, window, policy)]
    return {"acc_vs_optimum": round(float(r["acc_vs_optimum"]), 4), "violation_rate": round(float(r["violation_rate"]), 4),
            "mean_pruning": round(float(r["mean_pruning"]), 4), "requests": int(r["requests"]),
            "no_feasible_plan": int(r["no_feasible_plan"])}


def ward_metrics(name: str, results: pd.DataFrame, evaluation: pd.DataFrame, timing: pd.DataFrame,
                 training_seconds: float) -> dict:
    """The agent's numbers on ward ``name`` per window, its decision time against the enumeration's, its distinct
    plans and training time, and every planner's windows (``policies``; ``greedy`` repeated at the top)."""
    seq = evaluation[(evaluation["ward"] == name) & (evaluation["policy"] == AGENT)]
    out = {window: block(results, name, AGENT, window) for window in WINDOWS}
    out.update({"decision_ms": round(float(timing.loc[name, AGENT]), 4),
                "enumeration_ms": round(float(timing.loc[name, judging.OPTIMUM]), 4),
                "distinct_plans": int(seq["plan"].nunique()), "training_seconds": round(float(training_seconds), 1),
                "policies": {p: {w: block(results, name, p, w) for w in WINDOWS} for p in evaluation["policy"].unique()}})
    out["greedy"] = out["policies"]["greedy"]
    return out


def targets_of(m: dict) -> dict[str, bool]:
    """Every target of :data:`TARGETS`, met or not, for a ward's :func:`ward_metrics`."""
    return {target: bool(check(m)) for target, check in TARGETS.items()}


def describe_ward(name: str, m: dict) -> str:
    """A ward's :func:`ward_metrics` in words, then one line per target (``met`` or ``NOT met``)."""
    lines = [f"{name}: nominal {m['nominal']['acc_vs_optimum']:.2%} of the optimum, "
             f"{m['nominal']['violation_rate']:.2%} violations; fade {m['fade']['acc_vs_optimum']:.2%} "
             f"({m['fade']['violation_rate']:.2%} violations; greedy {m['greedy']['fade']['acc_vs_optimum']:.2%}); "
             f"decision {m['decision_ms']:.3f} ms vs enumeration {m['enumeration_ms']:.3f} ms; "
             f"{m['distinct_plans']} distinct plans; trained in {m['training_seconds']:.0f} s"]
    lines += [f"    {'met    ' if ok else 'NOT met'}  {target}" for target, ok in targets_of(m).items()]
    return "\n".join(lines)


def metrics(scenario: str, per_ward: dict[str, dict], adapted: dict[str, dict], bound: dict, limits: dict[str, float],
            cbc_ms: list[float], **settings) -> dict:
    """06's ``metrics.json``: the first ward's numbers at the top, every ward's under ``wards``, the unpruned limits,
    the replayed fade, the bound check, the targets; ``settings`` (criterion, timesteps, ...) copied as they are."""
    head = per_ward[scenario]
    return {
        "scenario": scenario, **settings,
        "nominal": head["nominal"], "fade": head["fade"], "greedy": head["greedy"],
        "decision_ms": head["decision_ms"], "enumeration_ms": head["enumeration_ms"],
        "cbc_ms": round(float(np.median(cbc_ms)), 2), "distinct_plans": head["distinct_plans"],
        "training_seconds": head["training_seconds"],
        "wards": per_ward, "unpruned_limit": {k: round(v, 5) for k, v in limits.items()},
        "trace": {p: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in a.items()} for p, a in adapted.items()},
        "optimum_prunes_in_fade": prunes_in_fade(adapted[judging.OPTIMUM]),
        "optimum_bound": {**bound, "largest_accuracy_above_optimum": round(bound["largest_accuracy_above_optimum"], 8)},
        "targets": {name: targets_of(m) for name, m in per_ward.items()},
    }
