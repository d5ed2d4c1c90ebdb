"""Planning: which plan serves the next request, and what changes after a device is lost.

A :class:`Planner` serves one policy. It keeps a view of the ward, a :class:`xaiprune.planning.env.WardEnv`
with no random dynamics stepped once per request, and asks the policy for a plan on it. What the view
holds of the links depends on the policy's ``view``: ``estimate`` (the default, what a real coordinator
can know) puts in the bandwidths :class:`xaiprune.planning.estimation.LinkEstimator` estimates from the
transfers of requests already answered; ``oracle`` (a labelled baseline) puts in exactly the bandwidths
the emulated links will have at request t (``trace[t % T]``), reading the future. Devices excluded
(dead, or missing their hop deadlines too often) are unavailable in the view until they come back;
a cut link carries nothing in either view.

Every plan is checked before it is used (:func:`check_plan`): one device and one level per segment,
devices the ward has, alive and available, levels that were profiled, no cut link. A plan that fails is
logged with its reason and replaced by the exact optimum on the live devices (and if even that fails,
by the whole model on the source), so no request is lost to a bad plan. A policy with a ``shield``
(:class:`xaiprune.planning.shield.Shield`'s settings) has every servable plan checked on its view too: one that
leaves less than the shield's margin to the deadline, or is clearly less accurate than a reachable plan, is
replaced by the exact optimum on that view (its requests are ``planned_by`` "shield: <reason>").
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from xaiprune.planning import system
from xaiprune.planning.shield import Shield
from xaiprune.serving.config import resolve
from xaiprune.planning.estimation import CUT, LinkEstimator


def policy_function(policy: dict, scenario: system.Scenario, profiles: system.Profiles):
    """The ``(env, observation) -> action`` of a config policy (see :class:`xaiprune.serving.config.RunConfig`)."""
    from xaiprune.planning import nlp, rl

    S, kind = profiles.S, policy["planner"]
    if kind == "nlp":
        return rl.nlp_policy("enumeration")
    if kind == "no_pruning":
        return rl.no_pruning_policy
    if kind == "rl":  # the sequential agent of 06 (or an earlier MultiDiscrete one: its metadata says which)
        from xaiprune.planning import agent

        return agent.load_policy(resolve(policy["agent"]), scenario, profiles)
    if kind == "static":
        level = profiles.levels.index(min(profiles.levels, key=lambda lv: abs(lv - policy["level"])))

        def static(env, obs):
            r = nlp.solve_enumeration(env.instance(), env.profiles, fix_levels=[level] * S)
            devices = r.plan.devices if r.plan is not None else nlp.greedy(env.instance(), env.profiles).plan.devices
            return env.action_of(system.Plan(devices, [level] * S))
        return static
    if kind == "fixed":
        fixed = system.Plan([scenario.index(d) for d in policy["plan"]["devices"]],
                            [profiles.levels.index(lv) for lv in policy["plan"]["levels"]])
        return lambda env, obs: env.action_of(fixed)
    return lambda env, obs: env.action_of(system.Plan([scenario.source] * S, [0] * S))


def check_plan(plan: system.Plan, conditions: system.Scenario, profiles: system.Profiles,
               cut: set[tuple[int, int]] = frozenset()) -> list[str]:
    """Why ``plan`` cannot be served on ``conditions`` (empty when it can); ``cut``: device pairs cut."""
    S, problems = profiles.S, []
    if len(plan.devices) != S or len(plan.levels) != S:
        return [f"{len(plan.devices)} devices and {len(plan.levels)} levels for {S} segments"]
    for s, (j, lv) in enumerate(zip(plan.devices, plan.levels)):
        if not 0 <= j < conditions.n:
            problems.append(f"segment {profiles.segments[s]} on device index {j}: the ward has {conditions.n} devices")
        elif not conditions.devices[j].available:
            problems.append(f"segment {profiles.segments[s]} on {conditions.devices[j].name}, which is dead or unavailable")
        if not 0 <= lv < profiles.L:
            problems.append(f"segment {profiles.segments[s]} at level index {lv}: {profiles.L} levels were profiled")
    route = [conditions.source, *plan.devices, conditions.source]
    problems += [f"link {conditions.devices[a].name} -> {conditions.devices[b].name} is cut"
                 for a, b in zip(route, route[1:]) if (a, b) in cut]
    return problems


def hop_seconds(plan: system.Plan, conditions: system.Scenario, profiles: system.Profiles) -> list[float]:
    """Expected seconds of each segment of ``plan``: its compute, plus sending its output on if it leaves the device.

    The source holds the device of segment s to a deadline built from the sum over its run of segments.
    """
    route = [*plan.devices, conditions.source]
    return [profiles.flops[s, lv] / conditions.devices[j].speed
            + system.transfer_seconds(conditions, j, route[s + 1], profiles.out_bytes[s, lv])
            for s, (j, lv) in enumerate(zip(plan.devices, plan.levels))]


class Planner:
    """Plans of one policy, request after request.

    Args:
        scenario: the ward; ``order[r]`` is the scenario's device index of rank r.
        profiles: measured per-segment costs (notebook 05).
        policy: one entry of the config's ``policies`` (its ``view``: ``estimate`` or ``oracle``).
        trace: (T, N, N) bandwidth multipliers or None; n_requests: requests the view steps through.
        seed: seeds the view (it has no randomness with these dynamics, but Gymnasium wants one).
        choose: the policy function; by default :func:`policy_function` of ``policy``.
        alpha: the estimator's weight of the newest measurement.
    """

    def __init__(self, scenario: system.Scenario, profiles: system.Profiles, policy: dict, order: list[int],
                 trace: np.ndarray | None, n_requests: int, seed: int = 0, choose=None, alpha: float = 0.5):
        from xaiprune.planning import env as ward_env

        self.scenario, self.profiles, self.order, self.trace = scenario, profiles, order, trace
        self.view = policy.get("view", "estimate")
        dyn = ward_env.Dynamics(p_drop=0.0, p_return=0.0, load_step=0.0, priority_probs=(0, 1, 0))
        self.env = ward_env.WardEnv(scenario, profiles, dyn, episode_length=max(n_requests, 1), trace=trace)
        self.env.reset(seed=seed)
        self.choose = choose or policy_function(policy, scenario, profiles)
        self.estimator = LinkEstimator(scenario, alpha)
        self.excluded: dict[int, str] = {}        # rank -> why it is not planned on
        self.shield = None if policy.get("shield") is None else Shield(**policy["shield"])
        self.cut: set[tuple[int, int]] = set()    # device pairs whose link is cut

    @property
    def lost(self) -> set[int]:
        return set(self.excluded)

    def multipliers(self, t: int) -> np.ndarray:
        """The link multipliers the planner sees for request ``t`` (see the module docstring)."""
        if self.view == "oracle":
            m = np.ones((self.scenario.n,) * 2) if self.trace is None else self.trace[t % len(self.trace)].copy()
        else:
            m = self.estimator.multipliers()
        for a, b in self.cut:
            m[a, b] = CUT
        return m

    def _view(self, t: int, avoid=()) -> None:
        names = tuple(self.scenario.devices[self.order[r]].name for r in set(self.excluded) | set(avoid))
        self.env.scenario = self.scenario.with_changes(unavailable=names)
        self.env.state.available = np.array([d.available for d in self.env.scenario.devices])
        self.env.state.available[self.scenario.source] = True
        self.env.state.bandwidth_mult = self.multipliers(t)

    def conditions(self, t: int | None = None) -> system.Scenario:
        """The ward as the planner sees it for request ``t`` (default: the current one)."""
        self._view(self.env.t if t is None else t)
        return self.env.instance()

    def truth(self, t: int) -> system.Scenario:
        """The ward as the emulated links really are at request ``t`` (for the predicted latency)."""
        cond = self.conditions(t)
        m = np.ones((self.scenario.n,) * 2) if self.trace is None else self.trace[t % len(self.trace)]
        bw = self.scenario.bandwidth * m
        np.fill_diagonal(bw, np.inf)
        return replace(cond, bandwidth=bw)

    def lose(self, ranks, why: str = "dead") -> None:
        """Remove ranks' devices from the planner's view of the ward (until :meth:`regain`)."""
        for r in ranks:
            self.excluded.setdefault(r, why)

    def regain(self, rank: int) -> None:
        """A device back in the ward (it rejoined)."""
        self.excluded.pop(rank, None)

    def cut_link(self, a_rank: int, b_rank: int) -> None:
        """The link between two ranks is cut, both ways (a partition is seldom one-way)."""
        a, b = self.order[a_rank], self.order[b_rank]
        self.cut |= {(a, b), (b, a)}
        self.estimator.cut(a, b)
        self.estimator.cut(b, a)

    def observe(self, plan: system.Plan, link_bytes: list[int], link_us: list[int]) -> None:
        """The measured transfers of an answered request feed the estimate."""
        route = [self.scenario.source, *plan.devices, self.scenario.source]
        self.estimator.observe_route(route, link_bytes, [u / 1e6 for u in link_us])

    def decide(self, dead=(), t: int | None = None, avoid=()) -> tuple[system.Plan, str, float, list[str]]:
        """The policy's plan for request ``t`` (default: the current one); if it cannot be served, the exact
        optimum on the live devices. ``dead``: ranks to lose for good; ``avoid``: ranks not to use this time.

        Returns the plan, how it was chosen, the decision time (s) and the problems of the policy's plan.
        """
        from xaiprune.planning import rl

        start = time.perf_counter()
        self.lose(dead)
        self._view(self.env.t if t is None else t, avoid)
        conditions = self.env.instance()
        plan = self.env.plan_of(self.choose(self.env, self.env.observation()))
        problems, how = check_plan(plan, conditions, self.profiles, self.cut), "policy"
        if not problems and self.shield is not None:
            plan, reason = self.shield.apply(plan, conditions, self.profiles)
            how = how if reason is None else f"shield: {reason}"
            problems = check_plan(plan, conditions, self.profiles, self.cut)
        if problems:
            plan = self.env.plan_of(rl.nlp_policy("enumeration")(self.env, self.env.observation()))
            how = "fallback: optimum"
            if check_plan(plan, conditions, self.profiles, self.cut):
                plan, how = system.Plan([self.scenario.source] * self.profiles.S, [0] * self.profiles.S), \
                    "fallback: the source alone"
        return plan, how, time.perf_counter() - start, problems

    def step(self, plan: system.Plan) -> None:
        """Move the view to the next request."""
        self.env.step(self.env.action_of(plan))
