"""Judging planners on the same held-out states: every planner decides for every request of one ward run.

The runs of :mod:`xaiprune.planning.rl` let each policy's own plans drain the batteries, so after the first
request the policies face different wards. Here (:func:`paired`) one ward run is stepped with the exact
optimum's plans, and at each request every planner chooses a plan for that very state; each plan is
evaluated on it. So "accuracy over the optimum's" is a ratio of sums over identical requests, and a
planner's violation is a request where its plan breaks a constraint that the optimum's plan meets.

A *planner* maps the ward (a :class:`xaiprune.planning.env.WardEnv` at the current request) to a
:class:`~xaiprune.planning.system.Plan`: :func:`from_policy` adapts the ``(env, observation) -> action``
policies of :mod:`xaiprune.planning.rl` (greedy, no pruning, random, the MultiDiscrete agent),
:func:`sequential` the agent of :mod:`xaiprune.planning.agent`. Every request is labelled with its *window*:
``fade`` while an overlay fade acts on it, ``nominal`` otherwise. :func:`summary` reports per planner
and window. Used by ``06_rl.ipynb``.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from xaiprune.planning import nlp
from xaiprune.planning.env import Dynamics, WardEnv
from xaiprune.planning.system import Plan, Profiles, Scenario, evaluate

Planner = Callable[[WardEnv], Plan]
OPTIMUM = "NLP optimum"


def from_policy(policy) -> Planner:
    """A planner from an ``(env, observation) -> action`` policy of :mod:`xaiprune.planning.rl`."""
    return lambda ward: ward.plan_of(policy(ward, ward.observation()))


def sequential(agent) -> Planner:
    """A planner from a :class:`xaiprune.planning.agent.SequentialAgent`."""
    return lambda ward: agent.decide(ward.instance(), ward.state.priority)


def paired(scenario: Scenario, profiles: Profiles, planners: dict[str, Planner], seed: int, T: int,
           dynamics: Dynamics | None = None, overlay: np.ndarray | None = None, trace: np.ndarray | None = None,
           progress: bool = False, desc: str = "") -> pd.DataFrame:
    """One ward run of T requests stepped with the optimum's plans; a row per request and planner (the optimum too)."""
    ward = WardEnv(scenario, profiles, dynamics, T, trace=trace, overlay=overlay)
    ward.reset(seed=seed)
    ward.action_space.seed(seed)
    rows = []
    bar = tqdm(range(T), desc=desc or f"seed {seed}", unit="request", mininterval=2.0, disable=not progress, leave=False)
    for t in bar:
        conditions = ward.instance()
        started = time.perf_counter()
        best = nlp.solve_enumeration(conditions, profiles)
        seconds = {OPTIMUM: time.perf_counter() - started}
        plans = {OPTIMUM: best.plan if best.plan is not None else nlp.greedy(conditions, profiles).plan}
        for name, planner in planners.items():
            started = time.perf_counter()
            plans[name] = planner(ward)
            seconds[name] = time.perf_counter() - started
        multiplier = 1.0 if overlay is None else float(overlay[t % len(overlay)].min())
        if trace is not None:
            multiplier *= float(trace[t % len(trace)].min())
        for name, plan in plans.items():
            ev = evaluate(plan, conditions, profiles)
            rows.append({"policy": name, "seed": seed, "t": t, "window": "fade" if multiplier < 1 else "nominal",
                         "multiplier": multiplier, "feasible_exists": best.plan is not None,
                         "optimum_accuracy": best.accuracy if best.plan is not None else np.nan,
                         "accuracy": ev.accuracy, "feasible": ev.feasible, "delivered": ev.accuracy * ev.feasible,
                         "latency_ms": ev.latency * 1e3, "deadline_ms": conditions.deadline * 1e3,
                         "pruning": float(np.mean([profiles.levels[l] for l in plan.levels])),
                         "on_source": int(sum(j == scenario.source for j in plan.devices)),
                         "plan": f"{tuple(plan.devices)}{tuple(plan.levels)}", "decision_ms": seconds[name] * 1e3})
        ward.step(WardEnv.action_of(plans[OPTIMUM]))
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame, by: tuple[str, ...] = ("policy", "window")) -> pd.DataFrame:
    """Per planner (and window): accuracy over the optimum's, violation rate, pruning, decision time, distinct plans.

    ``acc_vs_optimum`` = sum of the accuracy delivered (a plan's surrogate accuracy if it meets every
    constraint, else 0) over sum of the optimum's, both on the requests where a feasible plan exists;
    ``violation_rate`` = share of those requests where the planner's plan breaks a constraint;
    ``no_feasible_plan`` counts the requests where none exists (every planner violates there; they are left
    out of both ratios); ``decision_ms`` and ``decision_ms_p95``: the median and 95th percentile decision time.
    """
    def one(g: pd.DataFrame) -> pd.Series:
        ok = g[g["feasible_exists"]]
        return pd.Series({"requests": len(g), "no_feasible_plan": int((~g["feasible_exists"]).sum()),
                          "acc_vs_optimum": ok["delivered"].sum() / max(ok["optimum_accuracy"].sum(), 1e-12),
                          "violation_rate": float((~ok["feasible"]).mean()) if len(ok) else np.nan,
                          "accuracy": ok["delivered"].mean(), "mean_pruning": g["pruning"].mean(),
                          "latency_ms": g["latency_ms"].mean(), "decision_ms": g["decision_ms"].median(),
                          "decision_ms_p95": g["decision_ms"].quantile(0.95),
                          "distinct_plans": g["plan"].nunique()})
    return frame.groupby(list(by), sort=False)[frame.columns.tolist()].apply(one)


def unpruned_limit(scenario: Scenario, profiles: Profiles, tol: float = 0.01) -> float:
    """The largest all-link bandwidth multiplier at which no unpruned plan meets every constraint (0: one always does).

    Below it the optimum must prune; found by bisection in log space (to ``tol`` relative) on the exact
    enumeration with every level fixed at 0, over multipliers in [1e-6, 1]; 1.0 when even the nominal ward
    needs pruning.
    """
    def needs(m: float) -> bool:
        faded = scenario.with_changes(bandwidth_scale=m)
        return nlp.solve_enumeration(faded, profiles, fix_levels=[0] * profiles.S).plan is None
    if needs(1.0):
        return 1.0
    lo, hi = 1e-6, 1.0  # needs(hi) is False
    if not needs(lo):
        return 0.0
    while hi / lo > 1 + tol:
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if needs(mid) else (lo, mid)
    return lo


FORMATS = {"acc_vs_optimum": "{:.4f}", "violation_rate": "{:.2%}", "accuracy": "{:.4f}", "mean_pruning": "{:.3f}",
           "latency_ms": "{:.1f}", "decision_ms": "{:.3f}", "decision_ms_p95": "{:.3f}", "requests": "{:.0f}",
           "no_feasible_plan": "{:.0f}", "distinct_plans": "{:.1f}"}


def styled(table: pd.DataFrame):
    """A :func:`summary` table with the notebook's number formats (a pandas Styler)."""
    return table.style.format({c: f for c, f in FORMATS.items() if c in table.columns})
