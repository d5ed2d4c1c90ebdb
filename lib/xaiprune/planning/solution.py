"""A solver's answer (:class:`Result`), its lexicographic key, and the checks shared by the solvers.

The key of a plan is (-log surrogate accuracy, total pruning, latency, energy), compared component by
component with a relative tolerance (:func:`better`): the objective of :mod:`xaiprune.planning.nlp`. Used by
:mod:`xaiprune.planning.nlp` and :mod:`xaiprune.planning.candidates` (``05_nlp.ipynb`` and ``06_rl.ipynb`` through them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xaiprune.planning.system import Evaluation, Plan, Profiles, Scenario, transfer_seconds

REL = 1e-7  # relative tolerance of lexicographic comparisons
FEASIBLE = "feasible (time limit)"  # a plan, but the time limit stopped the search before a proof


@dataclass
class Result:
    """A solver's answer: the plan (None if infeasible), its status and key, and the solve time (s)."""

    solver: str
    status: str                        # "optimal", "feasible (time limit)", "infeasible", "time limit"
    plan: Plan | None = None
    evaluation: Evaluation | None = None
    seconds: float = 0.0
    binding: list[str] = field(default_factory=list)  # for infeasible instances: what makes them so
    stages: list[tuple[str, int, int]] = field(default_factory=list)  # MILP: (stage, LpStatus, LpSolution) per CBC run

    @property
    def accuracy(self) -> float:
        return self.evaluation.accuracy if self.evaluation else float("nan")

    def key(self, profiles: Profiles) -> tuple[float, float, float, float]:
        """(-log accuracy, total pruning, latency, energy): smaller is better, compared lexicographically."""
        return _key(self.plan, self.evaluation, profiles)


def _key(plan: Plan, ev: Evaluation, profiles: Profiles) -> tuple[float, float, float, float]:
    log_acc = sum(math.log(profiles.retention[s, l]) for s, l in enumerate(plan.levels))
    pruning = sum(profiles.levels[l] for l in plan.levels)
    return (-log_acc, pruning, ev.latency, ev.total_energy)


def better(a: tuple, b: tuple | None, rel: float = REL) -> bool:
    """Lexicographic ``a < b`` with a relative tolerance on each component."""
    if b is None:
        return True
    for u, v in zip(a, b):
        tol = rel * max(1.0, abs(u), abs(v))
        if u < v - tol:
            return True
        if u > v + tol:
            return False
    return False


def same(a: tuple, b: tuple, rel: float = 1e-6) -> bool:
    """Neither key is :func:`better` than the other (equal within ``rel``)."""
    return not better(a, b, rel) and not better(b, a, rel)


def hop(scenario: Scenario, a: int, b: int, nbytes: float) -> float:
    """Seconds to send ``nbytes`` from device ``a`` to device ``b``: :func:`xaiprune.planning.system.transfer_seconds`."""
    return transfer_seconds(scenario, a, b, nbytes)


def check_instance(scenario: Scenario, profiles: Profiles, fix_devices, fix_levels) -> list[int]:
    """The available devices; a clear error for tables or fixed choices of the wrong shape."""
    if profiles.retention.shape != (profiles.S, profiles.L):
        raise ValueError("profiles: retention must be (segments, levels)")
    avail = [j for j, d in enumerate(scenario.devices) if d.available]
    if fix_devices is not None and len(fix_devices) != profiles.S:
        raise ValueError(f"fix_devices needs one device per segment ({profiles.S})")
    if fix_levels is not None and len(fix_levels) != profiles.S:
        raise ValueError(f"fix_levels needs one level index per segment ({profiles.S})")
    return avail
