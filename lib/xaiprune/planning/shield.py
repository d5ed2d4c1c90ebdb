"""A shield at decision time: a learned plan is used only when it is safely feasible and not clearly worse.

A learned planner (the sequential agent of :mod:`xaiprune.planning.agent`) decides in a fraction of the exact
enumeration's time, but nothing in its training guarantees the plan of a state it has never seen. The shield
checks every plan it proposes, on the planner's own view of the ward (the conditions it planned on), against

- **feasibility with a margin**: every memory and energy cap met, and the latency bound of the plan (the
  project's latency model, :func:`xaiprune.planning.system.evaluate`, with the ward's per-hop overhead) at most
  ``(1 - margin)`` x the deadline, so that the real system's jitter does not push a plan planned at the deadline
  over it;
- **accuracy against a bound of the best reachable**: the plan's surrogate accuracy at least
  ``accuracy_share`` x that of the greedy heuristic's plan on the same view (when greedy finds a feasible plan:
  the best reachable is at least that good, so a plan below it is certainly worse than the optimum).

A plan that fails either is replaced by the exact enumeration's optimum on the same view
(:func:`xaiprune.planning.nlp.solve_enumeration`); when that has no plan, or is the learned plan itself (the
optimum of a tight request sits inside the margin too), the learned plan stays and the check counts as
*confirmed*. The shield counts its decisions, how often it replaced a plan (``fired``) and why, how often the
enumeration confirmed the learned plan, and the seconds its checks and enumerations cost.
Used by ``06_rl`` (the agent judged with and without it) and by the serving system's ``rl`` planner (``07``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from xaiprune.planning import nlp
from xaiprune.planning.system import Plan, Profiles, Scenario, evaluate

MARGIN = 0.05          # share of the deadline a learned plan must leave free on the planner's view
ACCURACY_SHARE = 0.98  # of the greedy plan's surrogate accuracy, below which a learned plan is replaced


@dataclass
class Shield:
    """The checks and their counts (see the module docstring)."""

    margin: float = MARGIN
    accuracy_share: float = ACCURACY_SHARE
    decisions: int = 0
    fired: int = 0                # plans replaced
    confirmed: int = 0            # checks that failed, where the enumeration returned the same plan (or none)
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0          # spent checking and replacing, over every decision

    def __post_init__(self):
        if not 0 <= self.margin < 1 or not 0 <= self.accuracy_share <= 1:
            raise ValueError(f"shield margin={self.margin}, accuracy_share={self.accuracy_share}: expected a margin "
                             "in [0, 1) and a share in [0, 1]")

    def why(self, plan: Plan, conditions: Scenario, profiles: Profiles) -> str | None:
        """Why ``plan`` must be replaced on ``conditions`` ("infeasible", "margin", "accuracy"), or None."""
        ev = evaluate(plan, conditions, profiles)
        if not ev.feasible:
            return "infeasible"
        if ev.latency > (1 - self.margin) * conditions.deadline:
            return "margin"
        floor = nlp.greedy(conditions, profiles)
        if floor.plan is not None and ev.accuracy < self.accuracy_share * floor.accuracy:
            return "accuracy"
        return None

    def apply(self, plan: Plan, conditions: Scenario, profiles: Profiles) -> tuple[Plan, str | None]:
        """``plan``, or the exact optimum on ``conditions`` when the shield fires; and the reason it fired (None: kept)."""
        started = time.perf_counter()
        self.decisions += 1
        reason = self.why(plan, conditions, profiles)
        if reason is not None:
            exact = nlp.solve_enumeration(conditions, profiles).plan
            if exact is None or exact == plan:
                self.confirmed += 1
                reason = None
            else:
                self.fired += 1
                self.reasons[reason] += 1
                plan = exact
        self.seconds += time.perf_counter() - started
        return plan, reason

    def guard(self, planner):
        """A planner (ward -> plan, as :mod:`xaiprune.planning.judging`'s) whose every plan goes through :meth:`apply`."""
        return lambda ward: self.apply(planner(ward), ward.instance(), ward.profiles)[0]

    def describe(self, name: str) -> str:
        """The counts in one line, for ward ``name``."""
        c = self.counts()
        return (f"{name}: the shield replaced the agent's plan on {c['fired']} of {c['decisions']} decisions "
                f"({c['reasons'] or 'never'}); the enumeration confirmed it on {c['confirmed']} more; "
                f"{c['ms_per_decision']:.2f} ms per decision")

    def counts(self) -> dict:
        """Decisions, plans replaced (and the share), per reason, checks the enumeration confirmed, and the mean ms
        per decision the shield cost."""
        return {"decisions": self.decisions, "fired": self.fired, "confirmed": self.confirmed,
                "fired_share": self.fired / self.decisions if self.decisions else 0.0,
                "reasons": dict(self.reasons),
                "ms_per_decision": 1e3 * self.seconds / self.decisions if self.decisions else 0.0}
