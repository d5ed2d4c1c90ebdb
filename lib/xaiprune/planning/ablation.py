"""What each phase of the agent's training adds: behaviour cloning alone, + DAgger, + MaskablePPO fine-tuning.

Training (:func:`xaiprune.planning.agent.train`) keeps the policy's weights after cloning and after the DAgger
rounds (:data:`xaiprune.planning.agent.PHASES`); the finished agent is the third variant. :func:`planners` makes
a planner of every variant of every training seed, judged on the same held-out requests as the agent
(:func:`xaiprune.planning.evaluation.held_out`); :func:`summary` gives each variant's accuracy over the optimum's
and violation rate per window, pooled over the seeds, with the nested bootstrap interval of
:func:`xaiprune.planning.evaluation.seed_bootstrap` (seeds, then runs, then requests; paired with the optimum).
Used by ``06_rl``.
"""

from __future__ import annotations

import re

import pandas as pd

from xaiprune.planning import agent, evaluation, judging
from xaiprune.planning.system import Profiles, Scenario

VARIANTS = (*agent.PHASES, "+ PPO")


def label(variant: str, seed: int) -> str:
    """The planner's name of ``variant`` trained with ``seed``."""
    return f"{variant} [seed {seed}]"


def planners(runs: list, ward: Scenario, profiles: Profiles) -> dict[str, judging.Planner]:
    """Every variant of every training run (:class:`xaiprune.planning.training.Run`), as judged planners."""
    out = {}
    for r in runs:
        for variant in agent.PHASES:
            out[label(variant, r.seed)] = judging.sequential(agent.with_weights(r.model, r.phases[variant], ward, profiles))
        out[label(VARIANTS[-1], r.seed)] = judging.sequential(r.agent)
    return out


def _as_agent(frame: pd.DataFrame, variant: str) -> pd.DataFrame:
    """``variant``'s rows of ``frame``, renamed as the agent's (:func:`xaiprune.planning.evaluation.agent_label`)."""
    pattern = re.compile(re.escape(variant) + r" \[seed (-?\d+)\]$")
    seeds = frame["policy"].map(lambda p: int(m.group(1)) if (m := pattern.match(p)) else None)
    rows = frame[seeds.notna()]
    return rows.assign(policy=[evaluation.agent_label(int(s)) for s in seeds[seeds.notna()]])


def apart(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A held-out frame judged with the variants beside the other planners (one enumeration of the optimum per request
    for both), split into the frame without the variants and the variants' rows."""
    variant = frame["policy"].str.match("|".join(re.escape(v) + r" \[seed -?\d+\]$" for v in VARIANTS))
    return frame[~variant].reset_index(drop=True), frame[variant].reset_index(drop=True)


def summary(judged: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per variant and window: ``acc_vs_optimum`` with its 95% interval, ``violation_rate`` and the seeds pooled."""
    out = {}
    for variant in VARIANTS:
        rows = _as_agent(judged, variant)
        out[variant] = {}
        for k, window in enumerate(evaluation.WINDOWS):
            b = evaluation.seed_bootstrap(rows, window, n_boot=n_boot, seed=seed + k)
            out[variant][window] = {"acc_vs_optimum": round(b["acc"], 4),
                                    "interval": [round(v, 4) for v in evaluation.interval(b["acc_boot"])],
                                    "violation_rate": round(b["violations"], 4), "seeds": b["seeds"]}
    return out


def table(s: dict) -> pd.DataFrame:
    """:func:`summary` as a table: a row per variant, the fade's and the nominal window's numbers."""
    return pd.DataFrame({variant: {f"{w} {k}": (f"{v['acc_vs_optimum']:.4f} [{v['interval'][0]:.4f}, {v['interval'][1]:.4f}]"
                                                if k == "acc_vs_optimum" else v[k])
                                   for w, v in by.items() for k in ("acc_vs_optimum", "violation_rate")}
                         for variant, by in s.items()}).T
