"""The shield at decision time, and the per-hop overhead of the one transfer model."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from xaiprune.planning import nlp, shield, system
from xaiprune.serving import analysis, verdict
from xaiprune.serving.config import _shield_ok
from xaiprune.serving.emulation import Emulator


@pytest.fixture(scope="module")
def loose():
    """An instance with ample resources: its optimum prunes nothing and leaves most of the deadline free."""
    return system.random_instance(4, 3, 4, seed=3, tightness=0.2)


def test_a_safe_accurate_plan_passes_untouched(loose):
    scenario, profiles = loose
    best = nlp.solve_enumeration(scenario, profiles)
    assert best.evaluation.latency < 0.5 * scenario.deadline
    guard = shield.Shield()
    plan, reason = guard.apply(best.plan, scenario, profiles)
    assert reason is None and plan == best.plan
    assert guard.counts()["fired"] == 0 and guard.counts()["decisions"] == 1


def test_an_infeasible_plan_is_replaced_by_the_exact_optimum():
    scenario, profiles = system.random_instance(4, 3, 4, seed=1, tightness=1.5)
    slowest = min(range(scenario.n), key=lambda j: scenario.devices[j].speed)
    bad = system.Plan([slowest] * profiles.S, [0] * profiles.S)
    assert not system.evaluate(bad, scenario, profiles).feasible
    guard = shield.Shield()
    plan, reason = guard.apply(bad, scenario, profiles)
    assert reason == "infeasible"
    assert plan == nlp.solve_enumeration(scenario, profiles).plan
    assert guard.counts()["reasons"] == {"infeasible": 1}


def test_a_plan_at_the_deadline_fires_the_margin(loose):
    scenario, profiles = loose
    best = nlp.solve_enumeration(scenario, profiles)
    tight = replace(scenario, deadline=best.evaluation.latency / 0.98)  # feasible, 2% free: inside a 5% margin
    assert system.evaluate(best.plan, tight, profiles).feasible
    assert shield.Shield(margin=0.05).why(best.plan, tight, profiles) == "margin"
    assert shield.Shield(margin=0.01).why(best.plan, tight, profiles) is None
    guard = shield.Shield(margin=0.05)  # the optimum itself sits inside the margin: confirmed, not replaced
    assert guard.apply(best.plan, tight, profiles) == (best.plan, None)
    assert (guard.fired, guard.confirmed) == (0, 1)


def test_a_feasible_but_needlessly_pruned_plan_fires_the_accuracy_bound(loose):
    scenario, profiles = loose
    best = nlp.solve_enumeration(scenario, profiles)
    pruned = system.Plan(best.plan.devices, [profiles.L - 1] * profiles.S)
    assert system.evaluate(pruned, scenario, profiles).feasible
    assert profiles.accuracy(pruned.levels) < 0.98 * nlp.greedy(scenario, profiles).accuracy
    guard = shield.Shield()
    plan, reason = guard.apply(pruned, scenario, profiles)
    assert reason == "accuracy" and plan.levels == best.plan.levels
    assert shield.Shield(accuracy_share=0.0).why(pruned, scenario, profiles) is None


def test_the_shield_refuses_settings_out_of_range():
    with pytest.raises(ValueError, match="margin"):
        shield.Shield(margin=1.0)
    with pytest.raises(ValueError, match="share"):
        shield.Shield(accuracy_share=1.5)
    assert _shield_ok({"margin": 0.05, "accuracy_share": 0.98}) and _shield_ok({})
    assert not _shield_ok({"margin": 1.0}) and not _shield_ok({"radius": 0.1}) and not _shield_ok([0.05])


def test_07s_defaults_are_the_shields():
    from xaiprune.study import parameters

    spec = parameters.NOTEBOOKS["07_distributed"]
    assert spec["shield_margin"].default == shield.MARGIN
    assert spec["shield_accuracy"].default == shield.ACCURACY_SHARE


# ----- the per-hop overhead ------------------------------------------------------------------------
def _spec(hop_ms=None) -> dict:
    links = {"default_mbps": 8, **({} if hop_ms is None else {"hop_overhead_ms": hop_ms})}
    dev = {"speed_gflops": 1.0, "memory_mb": 10, "energy_budget_j": 1.0, "energy_nj_per_flop": 0.0, "radio_w": 0.0}
    return {"name": "two", "source": "a", "deadline_ms": 100, "devices": [{"name": "a", **dev}, {"name": "b", **dev}],
            "links": links}


def test_every_message_between_two_devices_pays_the_overhead_once():
    plain, over = system.parse_scenario(_spec()), system.parse_scenario(_spec(2.5))
    assert over.hop_overhead == pytest.approx(2.5e-3)
    assert system.transfer_seconds(plain, 0, 1, 1e6) == pytest.approx(1.0)          # 1 MB at 8 Mbit/s
    assert system.transfer_seconds(over, 0, 1, 1e6) == pytest.approx(1.0025)
    assert system.transfer_seconds(over, 0, 1, 1e6, overhead=False) == pytest.approx(1.0)
    assert system.transfer_seconds(over, 1, 1, 1e6) == 0.0
    assert over.with_changes(bandwidth_scale=0.5).hop_overhead == over.hop_overhead
    with pytest.raises(system.ScenarioError, match="hop_overhead_ms"):
        system.parse_scenario(_spec(-1.0))


def test_the_planners_latency_counts_the_overhead_and_the_emulation_does_not():
    scenario, profiles = system.random_instance(3, 3, 2, seed=0)
    plan = system.Plan([1, 2, 2], [0, 0, 0])  # source -> 1 -> 2 -> 2 -> source: three messages
    base = system.evaluate(plan, scenario, profiles).latency
    busy = replace(scenario, hop_overhead=2e-3)
    assert system.evaluate(plan, busy, profiles).latency == pytest.approx(base + 3 * 2e-3)
    emulated = Emulator(busy, [0, 1, 2], 0, None, enabled=True)
    assert emulated.transfer_seconds(1, 1000, step=0) == pytest.approx(system.transfer_seconds(scenario, 0, 1, 1000))


def test_the_measured_overhead_is_the_residual_per_hop():
    ward = system.parse_scenario(_spec(1.0))
    devices = [["a"], ["b"], ["b"], ["a"]]                                  # 0, 2, 2, 0 messages
    predicted = np.array([10.0, 20.0, 30.0, 5.0])                            # ms, with the declared 1 ms per hop
    hops = np.array([analysis.hops(d, ward) for d in devices])
    measured = predicted - 1.0 * hops + np.array([0.0, 1.5, 2.0, 0.0]) * hops  # the system added 1.5 and 2.0 ms per hop
    frame = pd.DataFrame({"devices": devices, "predicted_latency_ms": predicted, "latency_ms": measured,
                          "attempts": [1, 1, 1, 1]})
    h = analysis.hop_overhead(frame, ward)
    assert list(hops) == [0, 2, 2, 0] and h["requests"] == 2
    assert h["median_ms"] == pytest.approx(1.75) and h["declared_ms"] == pytest.approx(1.0)
    assert "does NOT cover" in analysis.describe_hop_overhead(h)


def test_the_verdict_counts_the_shields_replacements():
    requests = pd.DataFrame({"policy": ["XAI + RL"] * 4 + ["XAI + NLP"],
                             "planned_by": ["policy", "shield: margin", "shield: margin", "shield: accuracy", "policy"],
                             "decision_ms": [0.5, 4.0, 6.0, 5.0, 3.0]})
    s = verdict.shield(requests)
    assert (s["requests"], s["fired"], s["reasons"]) == (4, 3, {"margin": 2, "accuracy": 1})
    assert s["fired_share"] == 0.75 and s["decision_ms_p50_fired"] == 5.0 and s["decision_ms_p50_passed"] == 0.5
    summary = pd.DataFrame({"deadline_hit_rate": [0.3]}, index=["one device"])
    assert verdict.premise(summary)["holds"] and not verdict.premise(summary.assign(deadline_hit_rate=0.8))["holds"]
