"""The shared feasibility module: latency floor, exact masks, partial plans (checked against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xaiprune.planning import feasibility, nlp, system


def brute_force(scenario, profiles) -> dict[tuple, bool]:
    """Every plan of a small instance -> whether it meets every constraint."""
    S, n, L = profiles.S, scenario.n, profiles.L
    out = {}
    for choice in itertools.product(itertools.product(range(n), range(L)), repeat=S):
        plan = system.Plan([j for j, _ in choice], [l for _, l in choice])
        out[choice] = system.evaluate(plan, scenario, profiles).feasible
    return out


def instances():
    """Small random instances from loose to infeasible, some with a device down or a link cut."""
    for seed in range(18):
        scenario, profiles = system.random_instance(3, 3, 3, seed=seed, tightness=0.8 + 0.3 * (seed % 6))
        if seed % 3 == 1:
            scenario = scenario.with_changes(unavailable=(scenario.devices[2].name,))
        if seed % 4 == 2:
            scenario.bandwidth[0, 1] = 0.0  # a cut link: transfer_seconds is inf over it
        yield seed, scenario, profiles


@pytest.mark.parametrize("case", list(instances()), ids=lambda case: f"seed{case[0]}")
def test_masks_allow_exactly_the_choices_with_a_feasible_completion(case):
    seed, scenario, profiles = case
    feasible = brute_force(scenario, profiles)
    tables = feasibility.Tables(scenario, profiles)
    assert tables.feasible() == any(feasible.values())
    rng = np.random.default_rng(seed)
    for _ in range(4):  # random prefixes, following the mask when it allows anything
        part = tables.start()
        for s in range(profiles.S):
            mask = tables.mask(part)
            prefix = tuple(zip(part.devices, part.levels))
            for j in range(scenario.n):
                for l in range(profiles.L):
                    truth = any(ok for plan, ok in feasible.items() if plan[:s] == prefix and plan[s] == (j, l))
                    assert mask[j, l] == truth, (s, prefix, j, l)
            pool = np.argwhere(mask) if mask.any() else np.argwhere(np.ones_like(mask))
            j, l = pool[rng.integers(len(pool))]
            part = tables.advance(part, int(j), int(l))


def test_a_masked_walk_never_violates_when_a_feasible_plan_exists():
    for seed, scenario, profiles in instances():
        tables = feasibility.Tables(scenario, profiles)
        if not tables.feasible():
            continue
        rng = np.random.default_rng(seed)
        for _ in range(20):
            part = tables.start()
            for _ in range(profiles.S):
                pool = np.argwhere(tables.mask(part))
                assert len(pool), "a mask emptied part-way though the walk followed masks"
                j, l = pool[rng.integers(len(pool))]
                part = tables.advance(part, int(j), int(l))
            assert system.evaluate(part.plan, scenario, profiles).feasible


def test_partial_plans_add_up_to_the_evaluation_of_the_plan():
    scenario, profiles = system.random_instance(4, 3, 4, seed=3)
    tables = feasibility.Tables(scenario, profiles)
    rng = np.random.default_rng(0)
    for _ in range(30):
        part = tables.start()
        for s in range(profiles.S):
            part = tables.advance(part, int(rng.integers(3)), int(rng.integers(4)))
        ev = system.evaluate(part.plan, scenario, profiles)
        assert part.elapsed == pytest.approx(ev.latency, rel=1e-12)
        assert np.allclose(part.memory, ev.memory) and np.allclose(part.energy, ev.energy)


def test_the_latency_floor_is_attained_and_never_above_a_completion():
    scenario, profiles = system.random_instance(3, 3, 3, seed=5)
    tables = feasibility.Tables(scenario, profiles)
    for j in range(3):
        for l in range(3):
            best = np.inf
            for rest in itertools.product(itertools.product(range(3), range(3)), repeat=2):
                plan = system.Plan([j] + [k for k, _ in rest], [l] + [m for _, m in rest])
                ev = system.evaluate(plan, scenario, profiles)
                own = system.transfer_seconds(scenario, scenario.source, j, profiles.input_bytes) \
                    + profiles.flops[0, l] / scenario.devices[j].speed
                best = min(best, ev.latency - own)
            assert tables.togo[0, j, l] == pytest.approx(best, rel=1e-12)


def test_the_enumeration_with_a_fixed_prefix_completes_it_optimally():
    scenario, profiles = system.random_instance(3, 3, 4, seed=2, tightness=1.3)
    full = nlp.solve_enumeration(scenario, profiles)
    prefix = nlp.solve_enumeration(scenario, profiles, fix_devices=[full.plan.devices[0], None, None],
                                   fix_levels=[full.plan.levels[0], None, None])
    assert prefix.plan.levels == full.plan.levels and prefix.accuracy == pytest.approx(full.accuracy)
    other = (full.plan.devices[0] + 1) % 3
    forced = nlp.solve_enumeration(scenario, profiles, fix_devices=[other, None, None])
    feasible = [ev.accuracy for devices in itertools.product(range(3), repeat=3) if devices[0] == other
                for levels in itertools.product(range(profiles.L), repeat=3)
                if (ev := system.evaluate(system.Plan(list(devices), list(levels)), scenario, profiles)).feasible]
    assert feasible, "the instance must leave the forced first device some feasible plan, or this checks nothing"
    assert forced.plan.devices[0] == other and forced.accuracy == pytest.approx(max(feasible))


def test_masks_agree_with_the_exact_enumeration_on_random_faded_states():
    rng = np.random.default_rng(11)
    checked = 0
    for seed in range(6):
        base, profiles = system.random_instance(4, 3, 5, seed=seed, tightness=1.2)
        for _ in range(4):
            scenario = base.with_changes(bandwidth_scale=float(np.exp(rng.uniform(np.log(1e-3), 0))),
                                         deadline=base.deadline * float(rng.uniform(0.6, 2.0)))
            tables = feasibility.Tables(scenario, profiles)
            exists = nlp.solve_enumeration(scenario, profiles).plan is not None
            assert tables.feasible() == exists
            part = tables.start()
            for s in range(2):  # the first two segments, following the mask
                mask = tables.mask(part)
                for j in range(scenario.n):
                    for l in range(profiles.L):
                        devices = part.devices + [j] + [None] * (profiles.S - s - 1)
                        levels = part.levels + [l] + [None] * (profiles.S - s - 1)
                        best = nlp.solve_enumeration(scenario, profiles, fix_devices=devices, fix_levels=levels)
                        assert mask[j, l] == (best.plan is not None), (seed, s, j, l)
                        checked += 1
                if not mask.any():
                    break
                j, l = np.argwhere(mask)[rng.integers(mask.sum())]
                part = tables.advance(part, int(j), int(l))
    assert checked > 500
