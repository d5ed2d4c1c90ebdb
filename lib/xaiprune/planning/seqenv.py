"""The sequential environment: one request is S decisions, one (device, level) per segment, under exact masks.

The ward evolves as in :class:`xaiprune.planning.env.WardEnv` (link walks and fades, dropouts, load, batteries,
priorities); a Gymnasium *episode* here is one request. Its S steps place segment 0, 1, ..., S-1: the
action ``a = j * L + l`` (``Discrete(N * L)``) runs the current segment on device j at level l. Rewards
are 0 until the last segment; then, with the plan's surrogate accuracy A, the optimum's A* (exact
enumeration of the same request, :mod:`xaiprune.planning.nlp`), mean pruning level p, latency T and deadline D,

    r = A / A*  -  w_p p  -  w_T T / D  -  lambda * overshoot,

the NLP's objective in the same order (accuracy first, then least pruning and latency as small
tie-breaks) and ``overshoot`` the relative excess over every violated cap (T/D - 1, m_j/M_j - 1,
E_j/E_j^max - 1) plus 1 per unavailable device used: a violation costs in proportion to how far it
misses. The discount is 1 within a request, which is all an episode holds. After the last segment the
ward moves to the next request; :meth:`SegmentEnv.reset` with a seed (or at the end of a run of
``episode_length`` requests) starts a new ward run, otherwise it serves the next request of the run.

:meth:`SegmentEnv.action_masks` (read by sb3-contrib's ``MaskablePPO``) allows exactly the choices
after which some completion of the plan is feasible (:class:`xaiprune.planning.feasibility.Tables`); when the
request has no feasible plan at all, it allows every available device. The observation
(:func:`features`) describes the request (link rates, availability, load, battery, deadline, priority)
and the partial plan (segment index, current device, elapsed latency over the deadline, memory and
energy used against each cap, bytes leaving the segment, accuracy so far), plus, per action, the slack
the deadline would keep after it with the least latency of the rest; every entry is finite (the scenario and
profiles are checked on construction, :func:`xaiprune.planning.env.check_inputs`, and an observation holding a
NaN is an error naming its block). A :class:`~xaiprune.planning.fades.Randomisation`
draws a new ward for every run (domain randomisation for training). With ``estimate`` (an EWMA weight) the agent
does not see the links as they are: it plans on the bandwidths a :class:`xaiprune.planning.estimation.LinkEstimator`
estimates from the transfers of the run's earlier requests (07's closed loop: the estimate lags a fade, links not
crossed lately keep older estimates), and the plan is then carried out on the true links, which feed the estimate.
Used by :mod:`xaiprune.planning.imitation`,
:mod:`xaiprune.planning.agent` and ``06_rl.ipynb``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from xaiprune.planning import fades, nlp
from xaiprune.planning.env import PRIORITIES, Dynamics, WardEnv, check_inputs, ratio
from xaiprune.planning.estimation import LinkEstimator
from xaiprune.planning.feasibility import Partial, Tables
from xaiprune.planning.solution import Result
from xaiprune.planning.system import Evaluation, Plan, Profiles, Scenario, evaluate

LINK_SCALE = np.log(1e4)  # log bandwidth multipliers are divided by this (1e-4 .. 1e4 -> -1 .. 1)
TRAINING_SEEDS = 2**20    # ward runs drawn inside the env are seeded from here up; held-out runs use seeds below it


@dataclass(frozen=True)
class Reward:
    """Weights of the terminal reward (module docstring): pruning and latency tie-breaks, the overshoot penalty."""

    prune: float = 0.02
    latency: float = 0.01
    penalty: float = 1.0

    def validate(self) -> "Reward":
        for name, value in asdict(self).items():
            if not 0 <= value < np.inf:
                raise ValueError(f"Reward.{name}={value}: expected a finite non-negative weight")
        return self


def overshoot(ev: Evaluation, conditions: Scenario) -> float:
    """Relative excess over every violated cap, plus 1 per unavailable device used (0 for a feasible plan).

    A cap of 0 is exceeded infinitely by any use of it and not at all by none.
    """
    out = max(0.0, ev.latency / conditions.deadline - 1)
    for j, dev in enumerate(conditions.devices):
        out += max(0.0, float(ratio(ev.memory[j], dev.memory)) - 1) \
            + max(0.0, float(ratio(ev.energy[j], dev.energy_budget)) - 1)
    return out + sum(1.0 for v in ev.violations if v.startswith("availability"))


def obs_size(n: int, S: int, L: int) -> int:
    return S + 6 * n + n * (n - 1) + n * L + 7


def _accuracy_scale(P: Profiles) -> np.ndarray:
    """(S, L) log rho / log(A_floor / A_0): the share of the way down to the floor; 0 when the table is flat."""
    span = np.log(max(P.floor, 1e-3) / max(P.base_accuracy, 1e-3))
    return np.log(P.retention) / span if span < -1e-9 else np.zeros(P.retention.shape)


def _request(nominal: Scenario, conditions: Scenario, priority: int, tables: Tables) -> list[tuple[str, np.ndarray]]:
    """The named blocks that stay the same for every segment of the request."""
    off = ~np.eye(conditions.n, dtype=bool)
    with np.errstate(divide="ignore"):  # a cut link's log rate is -inf (clipped to -1)
        links = np.log(ratio(conditions.bandwidth[off], nominal.bandwidth[off])) / LINK_SCALE
    speed = ratio([d.speed for d in conditions.devices], [d.speed for d in nominal.devices])
    budget = ratio([d.energy_budget for d in conditions.devices], [d.energy_budget for d in nominal.devices])
    return [("deadline", [np.log(conditions.deadline / nominal.deadline) / np.log(4)]),
            ("priority", 2 * np.eye(len(PRIORITIES))[priority] - 1), ("available", 2 * tables.available - 1.0),
            ("speed", 2 * speed - 1), ("energy budget", 2 * budget - 1), ("links", links)]


def features(nominal: Scenario, conditions: Scenario, priority: int, tables: Tables, part: Partial) -> np.ndarray:
    """The observation of one decision (see the module docstring), every entry in [-1, 1].

    Infinities clip to +-1 (a cut link's log rate, the elapsed latency and slack after one); a NaN raises a
    ValueError naming its block, so that a bug fails here rather than inside the policy.
    """
    P, n, S = tables.profiles, conditions.n, tables.S
    if "features" not in tables.cache:  # what stays the same for every segment of the request
        tables.cache["features"] = (_request(nominal, conditions, priority, tables),
                                    np.array([d.memory for d in conditions.devices]),
                                    np.array([d.energy_budget for d in conditions.devices]), _accuracy_scale(P))
    request, cap_m, cap_e, log_acc = tables.cache["features"]
    seg = np.zeros(S)
    if part.s < S:
        seg[part.s] = 1
        slack = tables.slack(part).ravel()
        slack[~np.repeat(tables.available, tables.L)] = -1.0
    else:
        slack = np.zeros(n * tables.L)
    blocks = [("segment", seg), ("device", tables.eye[part.prev]), ("elapsed", [part.elapsed / conditions.deadline]),
              *request, ("memory", ratio(part.memory, cap_m)), ("energy", ratio(part.energy, cap_e)),
              ("out bytes", [np.log10(max(part.out_bytes, 1.0)) / 6]), ("slack", slack),
              ("accuracy", [log_acc[np.arange(part.s), part.levels].sum()])]
    obs = np.clip(np.concatenate([b for _, b in blocks]), -1, 1)
    if not np.isfinite(obs).all():
        bad = [name for name, b in blocks if np.isnan(np.asarray(b, dtype=float)).any()]
        raise ValueError(f"observation of segment {part.s}: feature block(s) {bad} not finite")
    return obs.astype(np.float32)


def fallback_mask(tables: Tables) -> np.ndarray:
    """(n, L) every level of every available device: what is allowed when no completion is feasible."""
    return np.repeat(tables.available[:, None], tables.L, axis=1)


class SegmentEnv(gym.Env):
    """Place one segment per step; an episode is one request of a ward that keeps evolving (module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, scenario: Scenario, profiles: Profiles, dynamics: Dynamics | None = None,
                 episode_length: int = 100, overlay: np.ndarray | None = None,
                 randomise: fades.Randomisation | None = None, reward: Reward | None = None,
                 estimate: float | None = None):
        super().__init__()
        if episode_length < 1:
            raise ValueError(f"episode_length={episode_length}; expected a positive integer")
        if overlay is not None and randomise is not None:
            raise ValueError("overlay and randomise: expected at most one (a randomised ward draws its own fades)")
        check_inputs(scenario, profiles)
        self.scenario, self.profiles = scenario, profiles
        self.dynamics = (dynamics or Dynamics()).validate()
        self.episode_length, self.overlay = episode_length, overlay
        self.randomise = randomise.validate() if randomise is not None else None
        self.reward_weights = (reward or Reward()).validate()
        if estimate is not None and not 0 < estimate <= 1:
            raise ValueError(f"estimate={estimate}: expected the estimator's weight of the newest measurement, in (0, 1]")
        self.estimate, self.estimator, self.truth = estimate, None, None
        n, S, L = scenario.n, profiles.S, profiles.L
        self.n, self.S, self.L = n, S, L
        self.action_space = spaces.Discrete(n * L)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(obs_size(n, S, L),), dtype=np.float32)
        self.ward: WardEnv | None = None
        self.conditions: Scenario | None = None
        self.tables: Tables | None = None
        self.part: Partial | None = None
        self._optimum: Result | None = None
        self._mask: np.ndarray | None = None

    # ----- the ward and its requests ----------------------------------------------------------
    def _new_run(self) -> None:
        dynamics, overlay = self.dynamics, self.overlay
        if self.randomise is not None:
            drawn, p_drop = self.randomise.draw(self.np_random, self.episode_length, self.n)
            dynamics = replace(dynamics, p_drop=p_drop)
            overlay = fades.overlay(self.episode_length, self.n, drawn) if drawn else None
        self.ward = WardEnv(self.scenario, self.profiles, dynamics, self.episode_length, overlay=overlay)
        self.ward.reset(seed=int(self.np_random.integers(TRAINING_SEEDS, 2**31 - 1)))
        if self.estimate is not None:
            self.estimator = LinkEstimator(self.scenario, self.estimate)

    def _new_request(self) -> None:
        self.truth = self.ward.instance()
        self.conditions = self.truth if self.estimator is None else self.estimator.view(self.truth)
        self.tables = Tables(self.conditions, self.profiles)
        self.part = self.tables.start()
        self._optimum, self._mask = None, None

    def optimum(self) -> Result:
        """The exact optimum of the current request (solved once per request)."""
        if self._optimum is None:
            self._optimum = nlp.solve_enumeration(self.conditions, self.profiles)
        return self._optimum

    def observation(self) -> np.ndarray:
        return features(self.scenario, self.conditions, self.ward.state.priority, self.tables, self.part)

    def action_masks(self) -> np.ndarray:
        """(N * L,) bool: the feasible-completion mask, or every available device when none is feasible."""
        if self.part.s >= self.S:
            return np.ones(self.n * self.L, dtype=bool)
        if self._mask is None:
            mask = self.tables.mask(self.part)
            self._mask = (mask if mask.any() else fallback_mask(self.tables)).ravel()
        return self._mask

    def score(self, plan: Plan, ev: Evaluation) -> float:
        """The terminal reward of a complete plan (module docstring)."""
        w = self.reward_weights
        best = self.optimum()
        ref = best.accuracy if best.plan is not None else self.profiles.base_accuracy
        pruning = float(np.mean([self.profiles.levels[l] for l in plan.levels]))
        latency = min(ev.latency / self.conditions.deadline, 10.0)  # bounded: a cut link makes it infinite
        return float(ev.accuracy / ref - w.prune * pruning - w.latency * latency
                     - w.penalty * min(overshoot(ev, self.conditions), 100.0))

    # ----- Gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self.ward is None or self.ward.t >= self.episode_length:
            self._new_run()
        self._new_request()
        return self.observation(), {"request": self.ward.t, "priority": PRIORITIES[self.ward.state.priority]}

    def step(self, action):
        if self.part is None:
            raise RuntimeError("call reset() before step()")
        if self.part.s >= self.S:
            raise RuntimeError("the request is complete: call reset() for the next one")
        j, l = divmod(int(action), self.L)
        if not (0 <= j < self.n and 0 <= l < self.L):
            raise ValueError(f"action={action}: expected an integer in [0, {self.n * self.L})")
        self.part = self.tables.advance(self.part, j, l)
        self._mask = None
        if self.part.s < self.S:
            return self.observation(), 0.0, False, False, {"segment": self.part.s}
        plan = self.part.plan
        ev = evaluate(plan, self.conditions, self.profiles)
        reward = self.score(plan, ev)
        best = self.optimum()
        info = {"plan": plan, "accuracy": ev.accuracy, "feasible": ev.feasible, "violations": list(ev.violations),
                "latency": ev.latency, "energy": ev.total_energy, "optimum_accuracy": best.accuracy,
                "feasible_exists": best.plan is not None, "request": self.ward.t,
                "priority": PRIORITIES[self.ward.state.priority]}
        obs = self.observation()
        if self.estimator is not None:
            self.estimator.observe_plan(plan, self.truth, self.profiles)
        self.ward.step(WardEnv.action_of(plan))
        return obs, reward, True, False, info

    def config(self) -> dict:
        return {"scenario": self.scenario.name, "episode_length": self.episode_length,
                "dynamics": asdict(self.dynamics), "reward": asdict(self.reward_weights),
                "randomise": asdict(self.randomise) if self.randomise else None, "overlay": self.overlay is not None,
                **({} if self.estimate is None else {"estimate": self.estimate})}


SEQ_ENV_ID = "xaiprune/WardSegments-v0"
if SEQ_ENV_ID not in gym.registry:
    gym.register(id=SEQ_ENV_ID, entry_point="xaiprune.planning.seqenv:SegmentEnv")
