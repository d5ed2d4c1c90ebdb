"""Notebook 05's studies of the integer program: the sweep, the heuristics against the optimum, solve time, ample resources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xaiprune.planning import nlp, sweep, system


def toy(seed: int = 3, tightness: float = 3.0):
    return system.random_instance(3, 3, 3, seed=seed, tightness=tightness)


def test_an_instance_scales_the_deadline_or_every_link():
    scenario, _ = toy()
    assert sweep.instance(scenario, "deadline", 0.5).deadline == pytest.approx(scenario.deadline * 0.5)
    scaled = sweep.instance(scenario, "bandwidth", 0.1)
    off = ~np.eye(scenario.n, dtype=bool)
    assert np.allclose(scaled.bandwidth[off], scenario.bandwidth[off] * 0.1) and scaled.deadline == scenario.deadline
    with pytest.raises(ValueError, match="axis="):
        sweep.instance(scenario, "memory", 2.0)


@pytest.fixture(scope="module")
def swept():
    scenario, profiles = toy()
    return sweep.sweep({"a": scenario}, profiles, [0.01, 1.0, 4.0], [0.1, 1.0]), profiles


def test_the_sweep_solves_every_instance_by_every_policy_and_none_beats_the_optimum(swept):
    s, profiles = swept
    policies = [sweep.OPTIMUM, *nlp.heuristics(*toy())]
    assert set(s.optima) == set(s.instances) == {("a", "deadline", f) for f in (0.01, 1.0, 4.0)} | {
        ("a", "bandwidth", f) for f in (0.1, 1.0)}
    assert len(s.plans) == len(s.optima) * len(policies) and set(s.plans["policy"]) == set(policies)
    for key, optimum in s.optima.items():
        rows = s.plans[(s.plans["scenario"] == key[0]) & (s.plans["axis"] == key[1]) & (s.plans["factor"] == key[2])]
        best = rows[rows["policy"] == sweep.OPTIMUM].iloc[0]
        assert best["feasible"] == (optimum.plan is not None)
        if optimum.plan is not None:
            assert best["accuracy"] == optimum.accuracy and best["levels"] == tuple(optimum.plan.levels)
            assert best["pruning"] == pytest.approx(np.mean([profiles.levels[l] for l in optimum.plan.levels]))
        assert (rows["accuracy"].dropna() <= best["accuracy"] + 1e-12).all()
    infeasible = s.plans[~s.plans["feasible"]]
    assert infeasible[["accuracy", "pruning", "latency_ms"]].isna().all().all() and infeasible["levels"].isna().all()


def test_the_comparison_gives_the_optimum_no_gap_and_refuses_a_heuristic_above_it(swept):
    s, _ = swept
    summary = sweep.against_optimum(s.plans)
    assert summary.loc[sweep.OPTIMUM, "mean_gap_to_optimum"] == pytest.approx(0.0)
    assert (summary["mean_gap_to_optimum"].dropna() >= -1e-9).all()
    feasible = s.plans[s.plans["feasible"]]
    assert summary.loc[sweep.OPTIMUM, "feasible_rate"] == pytest.approx(
        s.plans[s.plans["policy"] == sweep.OPTIMUM]["feasible"].mean())
    cheat = s.plans.copy()
    cheat.loc[(cheat["policy"] == "greedy") & cheat["feasible"], "accuracy"] += 1.0
    if feasible["policy"].eq("greedy").any():
        with pytest.raises(RuntimeError, match="beat the optimum"):
            sweep.against_optimum(cheat)


def test_a_heuristic_above_the_optimum_on_one_instance_is_caught_even_when_its_mean_gap_is_positive():
    plans = pd.DataFrame({"scenario": ["a"] * 4 + ["b"] * 2, "axis": ["deadline"] * 6,
                          "factor": [1.0, 1.0, 2.0, 2.0, 1.0, 1.0], "policy": [sweep.OPTIMUM, "greedy"] * 3,
                          "accuracy": [0.9, 0.5, 0.9, 0.91, 0.8, 0.8], "feasible": [True] * 6})
    with pytest.raises(RuntimeError, match=r"greedy beat the optimum on a \(deadline x 2\)"):
        sweep.against_optimum(plans)
    fair = plans.assign(accuracy=[0.9, 0.5, 0.9, 0.9, 0.8, np.nan], feasible=[True, True, True, True, True, False])
    summary = sweep.against_optimum(fair)
    assert summary.loc["greedy", "mean_gap_to_optimum"] == pytest.approx(0.2)


def test_the_solve_time_line_names_the_scenario_and_the_target():
    scenario, profiles = toy()
    r = nlp.solve_milp(scenario, profiles)
    line = sweep.solve_time_line("ward-x", r)
    assert line.startswith("ward-x (the first of `scenarios`) solved by CBC in")
    assert f"target < {sweep.SOLVE_TARGET_S:g} s" in line and line.endswith("met")


def test_pruning_by_factor_lists_where_the_optimum_prunes_and_where_nothing_is_feasible():
    plans = pd.DataFrame({"scenario": ["a"] * 4, "axis": ["deadline"] * 4, "policy": [sweep.OPTIMUM] * 3 + ["greedy"],
                          "factor": [0.1, 0.5, 2.0, 2.0], "pruning": [np.nan, 0.3, 0.0, 0.6],
                          "feasible": [False, True, True, True]})
    table = sweep.pruning_by_factor(plans)
    assert table.loc[("a", "deadline"), "optimum prunes at"] == "0.5"
    assert table.loc[("a", "deadline"), "no feasible plan at"] == "0.1"


def test_the_scaling_study_times_both_solvers_and_they_agree(monkeypatch):
    timing = sweep.scaling([[3, 3, 3], [3, 2, 4]], time_limit=10, enumeration_limit=5)
    assert list(timing[["segments", "devices", "levels"]].itertuples(index=False, name=None)) == [(3, 3, 3), (3, 2, 4)]
    assert (timing["agree"] == True).all() and (timing[["milp_s", "enumeration_s"]] > 0).all().all()  # noqa: E712
    scenario, profiles = toy()
    other = nlp.solve_milp(scenario, profiles)  # a plan of another instance: the solvers then disagree
    monkeypatch.setattr(nlp, "solve_enumeration", lambda *a, **k: other)
    with pytest.raises(RuntimeError, match="solvers disagree"):
        sweep.scaling([[3, 3, 4]])


def test_with_ample_resources_nothing_is_pruned_and_an_infeasible_optimum_is_caught():
    scenario, profiles = toy(tightness=3.0)
    big = sweep.ample(scenario, 10.0)
    assert big.deadline == scenario.deadline * 10 and big.devices[0].memory == scenario.devices[0].memory * 10
    assert big.devices[0].speed == scenario.devices[0].speed
    r = sweep.check_ample(scenario, profiles)
    assert r.status == "optimal" and not any(r.plan.levels)
    plan = r.plan
    tight = scenario.with_changes(deadline=1e-9)
    bad = nlp.Result("milp", "optimal", plan, system.evaluate(plan, tight, profiles))
    sweep.check_feasible({"ok": r})
    with pytest.raises(RuntimeError, match="violates"):
        sweep.check_feasible({"tight": bad})
