"""Baselines under the agent's own exact masks: what the masks alone are worth, without learning.

The sequential agent never violates a constraint because it chooses, segment by segment, only among the
choices :class:`xaiprune.planning.feasibility.Tables` allows (those after which some completion is feasible).
An unmasked greedy or random planner is not a fair comparator for its violation rate: any planner that picks
inside the same masks is feasible by construction. These planners do:

- **masked greedy**: at each segment the allowed choice of least pruning, ties broken by the least elapsed
  latency after it (then the lower device index);
- **masked random**: at each segment an allowed choice uniformly at random (seeded per planner).

When the first mask is empty the instance has no feasible plan; like the agent, they then return the unpruned
model on the source (every planner violates there, and :mod:`xaiprune.planning.judging` leaves such requests
out of its ratios). Used by ``06_rl``.
"""

from __future__ import annotations

import numpy as np

from xaiprune.planning.feasibility import Partial, Tables
from xaiprune.planning.system import Plan


def least_pruning(tables: Tables, part: Partial, mask: np.ndarray, rng) -> tuple[int, int]:
    """The allowed (device, level) of least level, then least elapsed latency after it."""
    elapsed = np.where(mask, tables.after(part)["elapsed"], np.inf)
    level = int(np.flatnonzero(mask.any(axis=0))[0])
    return int(np.argmin(elapsed[:, level])), level


def uniform(tables: Tables, part: Partial, mask: np.ndarray, rng) -> tuple[int, int]:
    """An allowed (device, level) drawn uniformly."""
    j, l = np.nonzero(mask)
    k = int(rng.integers(len(j)))
    return int(j[k]), int(l[k])


def planner(choose, seed: int = 0):
    """A planner (ward -> plan, as :mod:`xaiprune.planning.judging`'s) choosing with ``choose`` inside the exact masks."""
    rng = np.random.default_rng(seed)

    def plan(ward) -> Plan:
        tables = Tables(ward.instance(), ward.profiles)
        part = tables.start()
        for _ in range(ward.profiles.S):
            mask = tables.mask(part)
            if not mask.any():
                return Plan([ward.scenario.source] * ward.profiles.S, [0] * ward.profiles.S)
            part = tables.advance(part, *choose(tables, part, mask, rng))
        return part.plan
    return plan


def planners(seed: int = 0) -> dict:
    """The masked baselines of 06, by name."""
    return {"masked greedy": planner(least_pruning), "masked random": planner(uniform, seed)}
