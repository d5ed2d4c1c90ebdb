"""Planning: which plan serves the next request, and what changes after a device is lost.

A :class:`Planner` serves one policy. It keeps a view of the ward, a :class:`xaiprune.env.WardEnv`
that replays the run's bandwidth trace one request per step with no random dynamics, and asks the
policy for a plan on it. The view is an *oracle*: at request t the planner sees exactly the bandwidths
the emulated links will have (``trace[t % T]``). A planner that estimates bandwidth from measured
transfers would replace the multipliers this view replays; the choice, the checks and the fallback stay.

Every plan is checked before it is used (:func:`check_plan`): one device and one level per segment,
devices the ward has, alive and available, levels that were profiled. A plan that fails is logged with
its reason and replaced by the exact optimum on the live devices, so no request is lost to a bad plan.
"""

from __future__ import annotations

import time

import numpy as np

from xaiprune import system
from xaiprune.serving.config import resolve


def policy_function(policy: dict, scenario: system.Scenario, profiles: system.Profiles):
    """The ``(env, observation) -> action`` of a config policy (see :class:`xaiprune.serving.config.RunConfig`)."""
    from xaiprune import nlp, rl

    S, kind = profiles.S, policy["planner"]
    if kind == "nlp":
        return rl.nlp_policy("enumeration")
    if kind == "no_pruning":
        return rl.no_pruning_policy
    if kind == "rl":
        model, _ = rl.load(resolve(policy["agent"]))
        return rl.agent_policy(model)
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


def check_plan(plan: system.Plan, conditions: system.Scenario, profiles: system.Profiles) -> list[str]:
    """Why ``plan`` cannot be served on ``conditions`` (empty when it can)."""
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
    return problems


class Planner:
    """Plans of one policy, request after request.

    Args:
        scenario: the ward; ``order[r]`` is the scenario's device index of rank r.
        profiles: measured per-segment costs (notebook 05).
        policy: one entry of the config's ``policies``.
        trace: (T, N, N) bandwidth multipliers or None; n_requests: requests the view steps through.
        seed: seeds the view (it has no randomness with these dynamics, but Gymnasium wants one).
        choose: the policy function; by default :func:`policy_function` of ``policy``.
    """

    def __init__(self, scenario: system.Scenario, profiles: system.Profiles, policy: dict, order: list[int],
                 trace: np.ndarray | None, n_requests: int, seed: int = 0, choose=None):
        from xaiprune import env as ward_env

        self.scenario, self.profiles, self.order = scenario, profiles, order
        dyn = ward_env.Dynamics(p_drop=0.0, p_return=0.0, load_step=0.0, priority_probs=(0, 1, 0))
        self.env = ward_env.WardEnv(scenario, profiles, dyn, episode_length=max(n_requests, 1), trace=trace)
        self.env.reset(seed=seed)
        self.choose = choose or policy_function(policy, scenario, profiles)
        self.lost: set[int] = set()

    def conditions(self) -> system.Scenario:
        """The ward as the planner sees it for the current request."""
        return self.env.instance()

    def lose(self, ranks) -> None:
        """Remove dead ranks' devices from the planner's view of the ward."""
        new = set(ranks) - self.lost
        if not new:
            return
        self.lost |= new
        names = tuple(self.scenario.devices[self.order[r]].name for r in new)
        self.env.scenario = self.env.scenario.with_changes(unavailable=names)
        for r in new:
            self.env.state.available[self.order[r]] = False

    def decide(self, dead=()) -> tuple[system.Plan, str, float, list[str]]:
        """The policy's plan on the current view; if it cannot be served, the exact optimum on the live devices.

        Returns the plan, how it was chosen, the decision time (s) and the problems of the policy's plan.
        """
        from xaiprune import rl

        start = time.perf_counter()
        self.lose(dead)
        plan = self.env.plan_of(self.choose(self.env, self.env.observation()))
        problems, how = check_plan(plan, self.conditions(), self.profiles), "policy"
        if problems:
            plan = self.env.plan_of(rl.nlp_policy("enumeration")(self.env, self.env.observation()))
            how = "fallback: optimum"
        return plan, how, time.perf_counter() - start, problems

    def step(self, plan: system.Plan) -> None:
        """Move the view to the next request."""
        self.env.step(self.env.action_of(plan))
