"""07's estimator loop replayed offline: planners judged on the view a real coordinator has of its links.

Notebook 07 plans every request on bandwidths estimated from past transfers
(:class:`xaiprune.planning.estimation.LinkEstimator`): the estimate lags a fade, and the links a plan has not
crossed for a while keep older, shallower estimates. Held-out windows drawn from the ward's own dynamics never
contain such states. Here the same loop runs without processes: each planner gets its own
:class:`xaiprune.serving.planning.Planner` (07's, with its estimator, its checks and its fallbacks), request t
really meets the scenario's bandwidths times ``trace[t]``, the planner decides on its estimate, its plan is
judged on the true conditions (:func:`xaiprune.planning.system.evaluate`: feasible? its surrogate accuracy)
against the exact optimum on them (what the oracle plans), and its estimator is fed the plan's hop times on the
true links (the emulated send times, without the messaging overhead; 07 measures them with the real loopback transfer
added, a fraction of a millisecond).

:func:`replay` returns a row per planner and request in the columns of :mod:`xaiprune.planning.judging`, so its
summaries (and :func:`xaiprune.planning.evaluation.seed_bootstrap` for the agent's seeds) apply unchanged.
Used by ``06_rl`` (its estimator-view window).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from xaiprune.planning import evaluation, judging, masked, nlp, rl, system
from xaiprune.serving.config import rank_order
from xaiprune.serving.planning import Planner


def replay(ward: system.Scenario, profiles: system.Profiles, planners: dict, trace: np.ndarray, alpha: float = 0.5,
           shields: dict | None = None, name: str = "", progress: bool = True) -> pd.DataFrame:
    """Every planner (ward -> plan, :mod:`xaiprune.planning.judging`'s) through 07's estimator loop on ``trace``.

    ``alpha``: the estimator's weight of the newest measurement (07's ``ewma``); ``shields``: planner name ->
    :class:`xaiprune.planning.shield.Shield` settings for the planners 07 serves behind one.
    """
    T = len(trace)
    truths, optima = [], []
    for t in range(T):
        truths.append(ward.with_changes(bandwidth_scale=trace[t]))
        optima.append(nlp.solve_enumeration(truths[-1], profiles))
    rows = []
    for planner_name, planner in tqdm(planners.items(), desc=f"{name} estimator view", unit="planner",
                                      disable=not progress, leave=False):
        policy = {"name": planner_name, **({"shield": shields[planner_name]} if shields and planner_name in shields else {})}
        p = Planner(ward, profiles, policy, rank_order(ward), None, T, choose=lambda env, obs, f=planner: env.action_of(f(env)),
                    alpha=alpha)
        for t in range(T):
            plan, how, seconds, _ = p.decide(t=t)
            rows.append(_row(planner_name, t, plan, how, seconds, truths[t], optima[t], profiles, float(trace[t].min())))
            p.estimator.observe_plan(plan, truths[t], profiles)
            p.step(plan)
    return pd.DataFrame(rows).assign(ward=name or ward.name, seed=0)


def _row(policy: str, t: int, plan: system.Plan, how: str, seconds: float, truth: system.Scenario, optimum,
         profiles: system.Profiles, multiplier: float) -> dict:
    ev = system.evaluate(plan, truth, profiles)
    exists = optimum.plan is not None
    return {"policy": policy, "t": t, "window": "fade" if multiplier < 1 else "nominal", "multiplier": multiplier,
            "feasible_exists": exists, "optimum_accuracy": optimum.accuracy if exists else np.nan,
            "accuracy": ev.accuracy, "feasible": ev.feasible, "delivered": ev.accuracy * ev.feasible,
            "latency_ms": ev.latency * 1e3, "deadline_ms": truth.deadline * 1e3, "planned_by": how,
            "pruning": float(np.mean([profiles.levels[lv] for lv in plan.levels])), "levels": tuple(plan.levels),
            "plan": f"{tuple(plan.devices)}{tuple(plan.levels)}", "decision_ms": seconds * 1e3}


NLP_ON_ESTIMATES = "XAI + NLP (on estimates)"


def judged_planners(runs: list, served, shield: dict) -> tuple[dict, dict]:
    """06's planners for the replay: the agent of every training seed (named by
    :func:`xaiprune.planning.evaluation.agent_label`), the served one behind 07's ``shield`` (its settings), the exact
    optimum on the estimate (07's XAI + NLP), greedy and masked greedy. Returns the planners and the shields."""
    out = {evaluation.agent_label(r.seed): judging.sequential(r.agent) for r in runs}
    out[evaluation.SHIELDED] = judging.sequential(served)
    out[NLP_ON_ESTIMATES] = judging.from_policy(rl.nlp_policy("enumeration"))
    out["greedy"] = judging.from_policy(rl.greedy_policy)
    out["masked greedy"] = masked.planners()["masked greedy"]
    return out, {evaluation.SHIELDED: shield}


def summary(viewed: pd.DataFrame, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """The agent's numbers on the whole replay (pooled over training seeds, with the nested bootstrap interval of
    :func:`xaiprune.planning.evaluation.seed_bootstrap`), and every planner's per window
    (:func:`xaiprune.planning.judging.summary`)."""
    b = evaluation.seed_bootstrap(viewed.assign(window="all"), "all", seed=seed)
    table = judging.summary(viewed, by=("policy", "window"))
    whole = judging.summary(viewed, by=("policy",))
    head = {"acc_vs_optimum": round(b["acc"], 4), "interval": [round(v, 4) for v in evaluation.interval(b["acc_boot"])],
            "violation_rate": round(b["violations"], 4), "seeds": b["seeds"], "requests": b["requests"],
            "by_seed": b["by_seed"],
            "planners": {p: {"acc_vs_optimum": round(float(r["acc_vs_optimum"]), 4),
                             "violation_rate": round(float(r["violation_rate"]), 4),
                             "decision_ms_p50": round(float(r["decision_ms"]), 3)} for p, r in whole.iterrows()}}
    return head, table


def describe(head: dict) -> str:
    """:func:`summary`'s headline in one line."""
    lo, hi = head["interval"]
    return (f"the agent on 07's estimator loop ({head['requests']} requests, {head['seeds']} seeds pooled): "
            f"{head['acc_vs_optimum']:.2%} of the optimum on the true links ({lo:.2%}-{hi:.2%}), "
            f"{head['violation_rate']:.2%} violations")
