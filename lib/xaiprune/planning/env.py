"""A Gymnasium environment that replays the ward over time: one request per step.

Each step the agent sees the current conditions (link bandwidths, which devices are up, their
background load and battery, the request's deadline and priority), chooses a device and a pruning
level for every segment, and receives ``reward = surrogate accuracy of the plan - penalties`` for
each violated constraint (deadline, memory, energy, an unavailable device). With no violation the
reward is exactly the plan's accuracy. ``info`` carries latency, energy, violations and accuracy.

Dynamics (all seeded through ``reset(seed=...)``):

- bandwidth of every link: a mean-reverting log-normal random walk on a multiplier of the scenario's
  value, ``log m' = (1 - kappa) log m + sigma * N(0, 1)``, clipped to [m_min, m_max]; or replayed from
  a trace array (T x N x N multipliers) given as ``trace``; an ``overlay`` (T x N x N, e.g. the fades of
  :mod:`xaiprune.planning.fades`) multiplies either at request t (``overlay[t % T]``);
- devices other than the source drop out with probability ``p_drop`` per step and come back with
  ``p_return``;
- background load per device: a clipped random walk in [0, load_max] (load_max < 1); speed = c_j (1 - load);
- batteries drain by the energy each device spends; a device's per-request energy budget is scaled
  by its battery fraction below ``low_battery``; batteries recharge by ``recharge`` of capacity per step;
- request priority (urgent, routine, background) with its deadline multiplier.

Registered as ``xaiprune/Ward-v0``. This is the ward process of the sequential agent's environment
(:mod:`xaiprune.planning.seqenv`) and the environment of the earlier MultiDiscrete agent (:mod:`xaiprune.planning.rl`, kept
as 06's labelled baseline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from xaiprune.planning.system import Device, Plan, Profiles, Scenario, evaluate

PRIORITIES = ("urgent", "routine", "background")


@dataclass(frozen=True)
class Dynamics:
    """How the ward changes from one request to the next (per step)."""

    sigma: float = 0.25            # log-bandwidth noise
    kappa: float = 0.1             # pull of the log-multiplier back to 0
    m_min: float = 0.05            # bandwidth multiplier range
    m_max: float = 2.0
    p_drop: float = 0.02           # a device (not the source) drops out
    p_return: float = 0.2          # a dropped device comes back
    load_step: float = 0.08        # background load random-walk step
    load_max: float = 0.7
    battery_requests: float = 300.0  # battery capacity in requests at the full energy budget
    low_battery: float = 0.3       # below this fraction the energy budget shrinks proportionally
    recharge: float = 0.002        # fraction of capacity recharged per step
    priority_probs: tuple = (0.2, 0.6, 0.2)
    priority_deadline: tuple = (0.6, 1.0, 2.0)  # deadline multiplier per priority
    penalty: float = 1.0           # subtracted per violated constraint

    def validate(self) -> "Dynamics":
        for name, value in asdict(self).items():
            if not np.isfinite(np.asarray(value, dtype=float)).all():
                raise ValueError(f"{name}={value}: expected finite numbers")
        if not 0 < self.m_min <= 1 <= self.m_max:
            raise ValueError(f"m_min={self.m_min}, m_max={self.m_max}: expected 0 < m_min <= 1 <= m_max")
        for name in ("p_drop", "p_return", "low_battery", "recharge"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a probability/fraction in [0, 1]")
        if not 0 <= self.load_max < 1:
            raise ValueError(f"load_max={self.load_max}: expected a fraction in [0, 1) (speed c_j (1 - load) stays > 0)")
        for name in ("sigma", "load_step", "penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a non-negative number")
        if not self.battery_requests > 0:
            raise ValueError(f"battery_requests={self.battery_requests}: expected a positive number of requests")
        if len(self.priority_probs) != len(PRIORITIES) or abs(sum(self.priority_probs) - 1) > 1e-9 \
                or min(self.priority_probs) < 0:
            raise ValueError(f"priority_probs={self.priority_probs}: expected {len(PRIORITIES)} probabilities summing to 1")
        if len(self.priority_deadline) != len(PRIORITIES) or min(self.priority_deadline) <= 0:
            raise ValueError(f"priority_deadline={self.priority_deadline}: expected {len(PRIORITIES)} positive multipliers")
        return self


def ratio(num, den) -> np.ndarray:
    """``num / den`` elementwise, never NaN for numbers: 0 / 0 is 0, inf / inf is 1 (x / 0 is inf, x / inf is 0).

    For a share of a cap or of a nominal value that may be 0 (nothing of nothing) or unlimited.
    """
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out = np.where((num == 0) & (den == 0), 0.0, out)
    return np.where(np.isinf(num) & np.isinf(den), np.sign(num) * np.sign(den), out)


def _refuse(where: str, values, finite: bool = True, positive: bool = False) -> None:
    """A ValueError naming ``where`` at its first entry that is NaN, < 0 (or 0 when ``positive``), or inf when ``finite``."""
    v = np.atleast_1d(np.asarray(values, dtype=float))
    bad = np.isnan(v) | (v < 0) | (positive & (v == 0)) | (finite & np.isinf(v))
    if bad.any():
        at = np.unravel_index(int(np.argmax(bad)), v.shape)
        raise ValueError(f"{where}{list(map(int, at)) if v.size > 1 else ''}={v[at]}: expected "
                         f"{'finite ' if finite else ''}numbers {'> 0' if positive else '>= 0'}")


def check_inputs(scenario: Scenario, profiles: Profiles) -> None:
    """Refuse a scenario or profiles that would make an observation or a reward NaN (a ValueError naming the field).

    Speeds, radio powers and energies per FLOP are finite and >= 0 (a speed of 0: every segment on the
    device takes forever); memories, energy budgets, bandwidths and link latencies >= 0 (inf: unlimited,
    or a cut link); the deadline finite and > 0. Costs, levels, the input size and the floor are finite
    and >= 0; retentions and the base accuracy finite and > 0 (rewards are relative to the accuracy).
    """
    for j, d in enumerate(scenario.devices):
        for name in ("speed", "energy_per_flop", "radio_power", "memory", "energy_budget"):
            _refuse(f"devices[{j}] ({d.name}).{name}", getattr(d, name), finite=name not in ("memory", "energy_budget"))
    _refuse("scenario.deadline", scenario.deadline, positive=True)
    _refuse("scenario.hop_overhead", scenario.hop_overhead)
    _refuse("scenario.bandwidth", scenario.bandwidth, finite=False)
    if scenario.link_latency is not None:
        _refuse("scenario.link_latency", scenario.link_latency, finite=False)
    for name in ("flops", "weight_bytes", "peak_bytes", "out_bytes", "levels", "input_bytes", "floor"):
        _refuse(f"profiles.{name}", getattr(profiles, name))
    for name in ("retention", "base_accuracy"):
        _refuse(f"profiles.{name}", getattr(profiles, name), positive=True)


@dataclass
class State:
    """The ward's conditions at one step."""

    bandwidth_mult: np.ndarray   # (N, N)
    available: np.ndarray        # (N,) bool
    load: np.ndarray             # (N,) in [0, load_max]
    battery: np.ndarray          # (N,) fraction of capacity
    priority: int


class WardEnv(gym.Env):
    """Serve one inference request per step on a scenario whose conditions change."""

    metadata = {"render_modes": []}

    def __init__(self, scenario: Scenario, profiles: Profiles, dynamics: Dynamics | None = None,
                 episode_length: int = 200, trace: np.ndarray | None = None, overlay: np.ndarray | None = None):
        super().__init__()
        check_inputs(scenario, profiles)
        self.scenario, self.profiles = scenario, profiles
        self.dynamics = (dynamics or Dynamics()).validate()
        if episode_length < 1:
            raise ValueError(f"episode_length={episode_length}; expected a positive integer")
        self.episode_length = episode_length
        n = scenario.n
        for name, m in (("trace", trace), ("overlay", overlay)):
            if m is not None and (m.ndim != 3 or m.shape[1:] != (n, n) or not (np.isfinite(m) & (m > 0)).all()):
                raise ValueError(f"{name}: expected a finite positive array of shape (T, {n}, {n}), "
                                 f"got {getattr(m, 'shape', None)}")
        self.trace, self.overlay = trace, overlay
        S, L = profiles.S, profiles.L
        self.action_space = spaces.MultiDiscrete([n] * S + [L] * S)
        self.obs_size = n * n + 3 * n + 1 + len(PRIORITIES)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(self.obs_size,), dtype=np.float32)
        self._finite = np.isfinite(scenario.bandwidth)
        self.state: State | None = None
        self.t = 0

    # ----- dynamics -------------------------------------------------------------------------
    def _initial_state(self) -> State:
        n = self.scenario.n
        return State(bandwidth_mult=np.ones((n, n)), available=np.array([d.available for d in self.scenario.devices]),
                     load=np.zeros(n), battery=np.ones(n), priority=self._draw_priority())

    def _draw_priority(self) -> int:
        return int(self.np_random.choice(len(PRIORITIES), p=self.dynamics.priority_probs))

    def _advance(self) -> None:
        d, st, rng, n = self.dynamics, self.state, self.np_random, self.scenario.n
        if self.trace is not None:
            st.bandwidth_mult = self.trace[self.t % len(self.trace)].copy()
        else:
            log_m = (1 - d.kappa) * np.log(st.bandwidth_mult) + d.sigma * rng.standard_normal((n, n))
            st.bandwidth_mult = np.clip(np.exp(log_m), d.m_min, d.m_max)
        drop = rng.random(n) < d.p_drop
        back = rng.random(n) < d.p_return
        st.available = np.where(st.available, ~drop, back)
        st.available[self.scenario.source] = True
        st.available &= np.array([dev.available for dev in self.scenario.devices]) | (np.arange(n) == self.scenario.source)
        st.load = np.clip(st.load + d.load_step * rng.standard_normal(n), 0.0, d.load_max)
        st.battery = np.minimum(1.0, st.battery + d.recharge)
        st.priority = self._draw_priority()

    # ----- what the agent faces -------------------------------------------------------------
    def multiplier(self) -> np.ndarray:
        """(N, N) bandwidth multipliers at this request: the walk (or trace), times the overlay if any."""
        m = self.state.bandwidth_mult
        return m if self.overlay is None else m * self.overlay[self.t % len(self.overlay)]

    def instance(self) -> Scenario:
        """The scenario as it is at this step (speeds, availability, budgets, bandwidths, deadline)."""
        st, d = self.state, self.dynamics
        devices = []
        for j, dev in enumerate(self.scenario.devices):
            budget_scale = min(1.0, st.battery[j] / d.low_battery) if d.low_battery > 0 else 1.0
            devices.append(Device(dev.name, dev.speed * (1 - st.load[j]), dev.memory,
                                  dev.energy_budget * max(budget_scale, 1e-3), dev.energy_per_flop,
                                  dev.radio_power, bool(st.available[j])))
        bw = self.scenario.bandwidth * self.multiplier()
        np.fill_diagonal(bw, np.inf)
        deadline = self.scenario.deadline * d.priority_deadline[st.priority]
        return replace(self.scenario, devices=devices, bandwidth=bw, deadline=deadline)

    def observation(self) -> np.ndarray:
        st, d = self.state, self.dynamics
        log_m = np.log(self.multiplier()) / max(abs(np.log(d.m_min)), np.log(d.m_max))
        log_m = np.where(self._finite, log_m, 0.0)
        deadline = np.log(d.priority_deadline[st.priority]) / np.log(4.0)
        onehot = np.eye(len(PRIORITIES))[st.priority]
        obs = np.concatenate([log_m.ravel(), 2 * st.available.astype(float) - 1, 2 * ratio(st.load, d.load_max) - 1,
                              2 * st.battery - 1, [deadline], 2 * onehot - 1])
        return np.clip(obs, -1, 1).astype(np.float32)

    def plan_of(self, action) -> Plan:
        S = self.profiles.S
        action = np.asarray(action, dtype=int)
        return Plan(devices=action[:S].tolist(), levels=action[S:].tolist())

    @staticmethod
    def action_of(plan: Plan) -> np.ndarray:
        return np.array(plan.devices + plan.levels, dtype=np.int64)

    # ----- Gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.state = self._initial_state()
        if self.trace is not None:
            self.state.bandwidth_mult = self.trace[0].copy()
        return self.observation(), {"priority": PRIORITIES[self.state.priority]}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        plan = self.plan_of(action)
        instance = self.instance()
        ev = evaluate(plan, instance, self.profiles)
        reward = ev.accuracy - self.dynamics.penalty * len(ev.violations)
        capacity = np.array([dev.energy_budget for dev in self.scenario.devices]) * self.dynamics.battery_requests
        self.state.battery = np.maximum(0.0, self.state.battery - ratio(ev.energy, capacity))
        info = {"latency": ev.latency, "energy": ev.total_energy, "violations": list(ev.violations),
                "accuracy": ev.accuracy, "feasible": ev.feasible, "plan": plan,
                "priority": PRIORITIES[self.state.priority]}
        self.t += 1
        truncated = self.t >= self.episode_length
        self._advance()
        return self.observation(), float(reward), False, truncated, info

    def config(self) -> dict:
        return {"scenario": self.scenario.name, "episode_length": self.episode_length,
                "dynamics": asdict(self.dynamics), "trace": self.trace is not None, "overlay": self.overlay is not None}


def fade_trace(T: int, n: int, low: float = 0.05) -> np.ndarray:
    """A (T, n, n) bandwidth trace: nominal, a fade of every link to ``low`` x, a hold, and a recovery.

    Nominal for the first quarter, a geometric fade from 25% to 55% of the requests, ``low`` until 75%,
    then a geometric recovery. Used by ``06_rl`` (the agent under a fade) and ``07_distributed``.
    """
    if T < 4 or not 0 < low <= 1:
        raise ValueError(f"T={T}, low={low}: expected at least 4 steps and 0 < low <= 1")
    a, b, c = int(0.25 * T), int(0.55 * T), int(0.75 * T)
    fade = np.ones(T)
    fade[a:b] = np.geomspace(1, low, b - a)
    fade[b:c] = low
    fade[c:] = np.geomspace(low, 1, T - c)
    return np.stack([np.full((n, n), f) for f in fade])


ENV_ID = "xaiprune/Ward-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="xaiprune.planning.env:WardEnv")
