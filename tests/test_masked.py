"""Greedy and random inside the agent's exact masks: feasible whenever any plan is."""

import pytest

from xaiprune.planning import masked, nlp, system
from xaiprune.planning.env import WardEnv


@pytest.mark.parametrize("seed,tightness", [(0, 1.0), (1, 1.5), (2, 2.0), (3, 0.5)])
def test_masked_planners_are_feasible_whenever_a_plan_exists(seed, tightness):
    scenario, profiles = system.random_instance(4, 3, 4, seed=seed, tightness=tightness)
    ward = WardEnv(scenario, profiles)
    ward.reset(seed=seed)
    conditions = ward.instance()
    exists = nlp.solve_enumeration(conditions, profiles).plan is not None
    for name, plan_of in masked.planners(seed).items():
        plan = plan_of(ward)
        ev = system.evaluate(plan, conditions, profiles)
        assert ev.feasible == exists, (name, ev.violations)
        if not exists:
            assert plan == system.Plan([scenario.source] * profiles.S, [0] * profiles.S)


def test_masked_greedy_prunes_nothing_when_nothing_needs_it():
    scenario, profiles = system.random_instance(4, 3, 4, seed=3, tightness=0.2)
    ward = WardEnv(scenario, profiles)
    ward.reset(seed=0)
    assert masked.planners()["masked greedy"](ward).levels == [0] * profiles.S


def test_masked_random_is_seeded():
    scenario, profiles = system.random_instance(4, 3, 4, seed=3, tightness=0.2)
    ward = WardEnv(scenario, profiles)
    ward.reset(seed=0)
    draws = [[masked.planners(s)["masked random"](ward) for _ in range(3)] for s in (5, 5, 6)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
