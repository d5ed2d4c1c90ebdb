"""Notebook ``05_nlp``'s studies of the integer program: the deadline and bandwidth sweep, the heuristics, solve time.

:func:`sweep` scales each scenario's deadline, then all its link bandwidths, and solves every instance with
the lexicographic MILP (:func:`xaiprune.planning.nlp.solve_milp`) and the heuristics
(:func:`xaiprune.planning.nlp.heuristics`); a row per instance and policy. :func:`against_optimum` compares the
policies with the optimum, :func:`pruning_by_factor` says where the optimum prunes, :func:`scaling` times
the MILP and the exact enumeration on random instances of growing size (and checks that they agree), and
:func:`ample` / :func:`check_ample` check that with ample resources nothing is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from xaiprune.planning import nlp, system
from xaiprune.planning.solution import Result
from xaiprune.planning.system import Profiles, Scenario

OPTIMUM = "optimum (MILP)"  # the optimum's policy name in the sweep's table
AXES = ("deadline", "bandwidth")
SOLVE_TARGET_S = 1.0  # CBC must solve the first scenario of 05's `scenarios` within this many seconds


def instance(scenario: Scenario, axis: str, factor: float) -> Scenario:
    """The scenario with its deadline (``axis="deadline"``) or every link bandwidth (``"bandwidth"``) scaled."""
    if axis not in AXES:
        raise ValueError(f"axis={axis!r}; expected one of {AXES}")
    if axis == "deadline":
        return scenario.with_changes(deadline=scenario.deadline * factor)
    return scenario.with_changes(bandwidth_scale=factor)


def row(profiles: Profiles, policy: str, r: Result, **where) -> dict:
    """One line of the sweep's table: a policy's answer on an instance (NaN and None where it has no feasible plan)."""
    ok = r.evaluation is not None and r.evaluation.feasible
    return {**where, "policy": policy, "status": r.status, "feasible": ok,
            "accuracy": r.evaluation.accuracy if ok else np.nan,
            "pruning": np.mean([profiles.levels[l] for l in r.plan.levels]) if ok else np.nan,
            "latency_ms": r.evaluation.latency * 1e3 if ok else np.nan,
            "levels": tuple(r.plan.levels) if ok else None, "seconds": r.seconds}


@dataclass
class Sweep:
    """Every instance of the sweep, by ``(scenario, axis, factor)``: the instance, its optimum, and the table."""

    instances: dict[tuple, Scenario]
    optima: dict[tuple, Result]
    plans: pd.DataFrame  # a row per instance and policy (:func:`row`)


def sweep(scenarios: dict[str, Scenario], profiles: Profiles, deadline_factors, bandwidth_factors,
          time_limit: float = 30.0) -> Sweep:
    """Solve every scenario with its deadline scaled by each of ``deadline_factors``, then its bandwidths by each of
    ``bandwidth_factors``, by the MILP (``time_limit`` s per solve) and by every heuristic."""
    rows, optima, instances = [], {}, {}
    cases = [("deadline", f) for f in deadline_factors] + [("bandwidth", f) for f in bandwidth_factors]
    for name, sc in scenarios.items():
        for axis, factor in cases:
            key = (name, axis, factor)
            instances[key] = inst = instance(sc, axis, factor)
            optima[key] = nlp.solve_milp(inst, profiles, time_limit, explain_infeasible=False)
            results = {OPTIMUM: optima[key], **nlp.heuristics(inst, profiles, time_limit)}
            rows += [row(profiles, policy, r, scenario=name, axis=axis, factor=factor) for policy, r in results.items()]
    return Sweep(instances, optima, pd.DataFrame(rows))


def against_optimum(plans: pd.DataFrame) -> pd.DataFrame:
    """Per policy: how often it is feasible, its mean accuracy, and its mean and largest accuracy gap to the optimum
    (where both are feasible). Raises ``RuntimeError`` naming the policy and the instance if a policy beats the
    optimum on any instance where both are feasible (gap below -1e-9)."""
    opt = plans.query("policy == @OPTIMUM").set_index(["scenario", "axis", "factor"])["accuracy"]
    where = pd.MultiIndex.from_frame(plans[["scenario", "axis", "factor"]])
    comp = plans.assign(gap=opt.reindex(where).values - plans["accuracy"])
    beaten = comp[comp["gap"].notna() & (comp["gap"] < -1e-9)]
    if not beaten.empty:
        r = beaten.iloc[0]
        raise RuntimeError(f"{r['policy']} beat the optimum on {r['scenario']} ({r['axis']} x {r['factor']:g}) by "
                           f"{-r['gap']:.3g} in accuracy ({len(beaten)} such rows in all)")
    summary = comp.groupby("policy").agg(feasible_rate=("feasible", "mean"), mean_accuracy=("accuracy", "mean"),
                                         mean_gap_to_optimum=("gap", "mean"), max_gap=("gap", "max"))
    return summary


def pruning_by_factor(plans: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and axis: the swept factors at which the optimum prunes, and those without a feasible plan."""
    opt = plans.query("policy == @OPTIMUM")

    def factors(g: pd.DataFrame) -> pd.Series:
        return pd.Series({"optimum prunes at": ", ".join(f"{f:g}" for f in g.loc[g["pruning"] > 0, "factor"]) or "-",
                          "no feasible plan at": ", ".join(f"{f:g}" for f in g.loc[~g["feasible"], "factor"]) or "-"})
    return opt.groupby(["scenario", "axis"], sort=False)[["factor", "pruning", "feasible"]].apply(factors)


def scaling(sizes, time_limit: float = 30.0, enumeration_limit: float = 20.0, tightness: float = 1.5) -> pd.DataFrame:
    """Solve time of the MILP and of the enumeration on random instances of each ``(segments, devices, levels)`` size
    (:func:`xaiprune.planning.system.random_instance`, seed ``100 S + 10 N + L``). Where both prove an optimum they
    must agree (``RuntimeError`` otherwise)."""
    timing = []
    for S, N, L in sizes:
        sc, pr = system.random_instance(S, N, L, seed=S * 100 + N * 10 + L, tightness=tightness)
        m = nlp.solve_milp(sc, pr, time_limit)
        e = nlp.solve_enumeration(sc, pr, time_limit=enumeration_limit)
        agree = None
        if m.status == "optimal" and e.status == "optimal":
            agree = nlp.same(m.key(pr), e.key(pr))
            if not agree:
                raise RuntimeError(f"solvers disagree on {(S, N, L)}: {m.plan} vs {e.plan}")
        timing.append({"segments": S, "devices": N, "levels": L, "milp_s": m.seconds, "milp": m.status,
                       "enumeration_s": e.seconds, "enumeration": e.status, "agree": agree})
    return pd.DataFrame(timing)


def ample(scenario: Scenario, factor: float = 1e3) -> Scenario:
    """The scenario with every resource (memory, energy budget, bandwidth, deadline) multiplied by ``factor``."""
    devices = [system.Device(**{**d.__dict__, "memory": d.memory * factor, "energy_budget": d.energy_budget * factor})
               for d in scenario.devices]
    return replace(scenario, devices=devices, bandwidth=scenario.bandwidth * factor, deadline=scenario.deadline * factor)


def check_ample(scenario: Scenario, profiles: Profiles, time_limit: float = 30.0) -> Result:
    """Solve :func:`ample` of the scenario; ``RuntimeError`` unless the optimum is proven and prunes nothing."""
    r = nlp.solve_milp(ample(scenario), profiles, time_limit)
    if r.status != "optimal" or any(r.plan.levels):
        raise RuntimeError(f"ample resources gave {r.status}: {r.plan}")
    return r


def check_feasible(results: dict[str, Result]) -> None:
    """``RuntimeError`` if any result with a plan violates a constraint."""
    for name, r in results.items():
        if r.plan is not None and not r.evaluation.feasible:
            raise RuntimeError(f"{name}: the optimum violates {r.evaluation.violations}")


def solve_time_line(name: str, result: Result) -> str:
    """Whether CBC solved scenario ``name`` (the first of 05's ``scenarios``) within :data:`SOLVE_TARGET_S`, in words."""
    met = "met" if result.seconds < SOLVE_TARGET_S else "NOT met"
    return (f"{name} (the first of `scenarios`) solved by CBC in {result.seconds:.3f} s "
            f"(target < {SOLVE_TARGET_S:g} s): {met}")
