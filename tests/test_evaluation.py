"""Notebook 06's judgement: held-out runs, the bound check, decision times, the replayed fade, the metrics and targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xaiprune.planning import evaluation, judging, masked, rl, shield, system
from xaiprune.planning.env import WardEnv
from xaiprune.study import protocol

DECLARED = protocol.CLAIMS["rl_near_optimum"].params  # nominal_share, max_violations


def toy():
    return system.random_instance(3, 3, 4, seed=1, tightness=1.3)


class Greedy:
    """Stands in for a SequentialAgent: ``decide`` gives greedy's plan."""

    def __init__(self, profiles):
        self.profiles = profiles

    def decide(self, conditions, priority):
        from xaiprune.planning import nlp

        return nlp.greedy(conditions, self.profiles).plan


@pytest.fixture(scope="module")
def judged():
    scenario, profiles = toy()
    planners = {evaluation.agent_label(0): judging.from_policy(rl.no_pruning_policy),
                evaluation.agent_label(1000): judging.from_policy(rl.greedy_policy),
                "greedy": judging.from_policy(rl.greedy_policy), "masked greedy": masked.planners()["masked greedy"]}
    frame = evaluation.held_out("w", scenario, profiles, planners, [10_000, 10_001], 16, 0.05, progress=False)
    return frame, scenario, profiles


def test_held_out_runs_judge_every_planner_on_the_same_requests_with_a_fade(judged):
    frame, _, _ = judged
    assert set(frame["policy"]) == {judging.OPTIMUM, evaluation.agent_label(0), evaluation.agent_label(1000), "greedy",
                                    "masked greedy"}
    assert len(frame) == 2 * 16 * 5 and set(frame["seed"]) == {10_000, 10_001} and (frame["ward"] == "w").all()
    assert set(frame["window"]) == {"nominal", "fade"} and frame["fade_shape"].notna().all()
    per_request = frame.groupby(["seed", "t"])["optimum_accuracy"].nunique(dropna=False)
    assert (per_request == 1).all(), "every planner is judged against the same optimum on a request"


def test_the_bound_check_finds_a_plan_above_the_optimum(judged):
    frame, _, _ = judged
    bound = evaluation.optimum_bound(frame)
    assert bound == {"requests": 32, "largest_accuracy_above_optimum": pytest.approx(bound["largest_accuracy_above_optimum"]),
                     "feasible_where_optimum_has_no_plan": 0}
    assert bound["largest_accuracy_above_optimum"] <= 1e-6
    cheat = frame.copy()
    hit = (cheat["policy"] == "greedy") & cheat["feasible"] & cheat["feasible_exists"]
    assert hit.any()
    cheat.loc[hit.idxmax(), "accuracy"] = cheat.loc[hit.idxmax(), "optimum_accuracy"] + 0.1
    assert evaluation.optimum_bound(cheat)["largest_accuracy_above_optimum"] == pytest.approx(0.1)
    cheat.loc[hit.idxmax(), "feasible_exists"] = False  # a feasible plan where the optimum has none
    assert evaluation.optimum_bound(cheat)["feasible_where_optimum_has_no_plan"] == 1


def test_ward_metrics_and_targets_come_from_the_summary(judged):
    frame, _, _ = judged
    results, _ = evaluation.pool_seeds(judging.summary(frame, by=("ward", "window", "policy")))
    timing = evaluation.decision_times(frame, [5.0, 7.0, 9.0], "w")
    assert timing.loc["w", "CBC MILP"] == 7.0
    m = evaluation.ward_metrics("w", results, frame, timing, 12.34)
    for window in evaluation.WINDOWS:
        r = results.loc[("w", window, evaluation.AGENT)]
        assert m[window]["acc_vs_optimum"] == round(float(r["acc_vs_optimum"]), 4)
        assert m[window]["requests"] == int(r["requests"])
    assert m["greedy"] == m["policies"]["greedy"] and set(m["policies"]) == {evaluation.AGENT, judging.OPTIMUM, "greedy",
                                                                                    "masked greedy"}
    assert m["training_seconds"] == 12.3 and m["decision_ms"] == round(float(timing.loc["w", evaluation.AGENT]), 4)
    targets = evaluation.targets_of(m, 0.95, **DECLARED)
    assert set(targets) == set(evaluation.targets(0.95, **DECLARED)) and all(isinstance(v, bool) for v in targets.values())
    assert "fade: >= 95% of the optimum" in targets and "fade: >= 90% of the optimum" in evaluation.targets(0.9, **DECLARED)
    assert targets["training < 8 min"] and targets["decision faster than the enumeration"] == (
        m["decision_ms"] < m["enumeration_ms"])
    text = evaluation.describe_ward("w", m, 0.95, **DECLARED)
    assert text.count("\n") == len(targets) and ("NOT met" in text) == (not all(targets.values()))


def test_the_metrics_have_the_keys_the_study_reads(judged):
    frame, _, _ = judged
    results, _ = evaluation.pool_seeds(judging.summary(frame, by=("ward", "window", "policy")))
    timing = evaluation.decision_times(frame, [5.0], "w")
    per_ward = {"w": evaluation.ward_metrics("w", results, frame, timing, 1.0)}
    adapted = {judging.OPTIMUM: {"distinct_plans": 2, "mean_pruning_nominal": 0.0, "mean_pruning_fade_bottom": 0.3,
                                 "violations_fade": 0, "fade_requests": 5, "pruning_after_recovery": 0.0}}
    m = evaluation.metrics("w", per_ward, adapted, evaluation.optimum_bound(frame), {"w": 0.123456789}, [5.0, 6.0],
                           0.95, **DECLARED, criterion="lrp", timesteps=10, demo_requests=5, fade_low=0.003)
    assert set(m) == {"scenario", "criterion", "timesteps", "demo_requests", "nominal", "fade", "greedy", "decision_ms",
                      "enumeration_ms", "cbc_ms", "distinct_plans", "training_seconds", "wards", "unpruned_limit",
                      "fade_low", "trace", "optimum_prunes_in_fade", "optimum_bound", "targets"}
    assert m["cbc_ms"] == 5.5 and m["unpruned_limit"] == {"w": 0.12346} and m["optimum_prunes_in_fade"] is True
    assert m["nominal"] == per_ward["w"]["nominal"] and set(m["targets"]["w"]) == set(evaluation.targets(0.95, **DECLARED))


def test_adaptation_reads_pruning_at_nominal_bandwidth_at_the_bottom_and_after_recovery():
    multiplier = np.array([1, 1, 0.5, 0.01, 0.01, 0.5, 1, 1, 1, 1, 1, 1.0])
    pruning = np.array([0, 0, 0.1, 0.6, 0.6, 0.1, 0, 0, 0, 0, 0, 0.0])
    traced = pd.DataFrame({"policy": "p", "t": np.arange(12)[::-1], "pruning": pruning[::-1],
                           "plan": [f"x{v}" for v in pruning[::-1]], "feasible": [True] * 11 + [False]})
    a = evaluation.adaptation(traced, multiplier, 0.01)["p"]
    assert a == {"distinct_plans": 3, "mean_pruning_nominal": 0.0, "mean_pruning_fade_bottom": pytest.approx(0.6),
                 "violations_fade": 0, "fade_requests": 4, "pruning_after_recovery": 0.0}
    assert evaluation.prunes_in_fade(a) and "3 distinct plans" in evaluation.describe_adaptation("p", a)
    assert not evaluation.prunes_in_fade({**a, "pruning_after_recovery": 0.2})
    traced.loc[traced["t"] == 3, "feasible"] = False
    assert evaluation.adaptation(traced, multiplier, 0.01)["p"]["violations_fade"] == 1


def test_cbc_is_timed_on_the_requests_of_a_run_stepped_by_the_agent():
    scenario, profiles = toy()
    times = evaluation.cbc_times(scenario, profiles, Greedy(profiles), 10_000, 3, 20)
    assert len(times) == 3 and all(t > 0 for t in times)


def test_the_unpruned_limit_is_said_in_words():
    assert "even the nominal ward needs pruning" in evaluation.describe_limit("w", 1.0, 0.003)
    assert "no fade needs pruning" in evaluation.describe_limit("w", 0.0, 0.003)
    assert "deep enough" in evaluation.describe_limit("w", 0.01, 0.003)
    assert "NOT deep enough" in evaluation.describe_limit("w", 0.001, 0.003)


def test_the_judged_planners_are_the_agent_the_baseline_the_rules_and_the_masked_rules():
    scenario, profiles = toy()
    old, _, _ = rl.train_ppo(lambda: WardEnv(scenario, profiles, episode_length=20), 64, seed=0, eval_every=10**9,
                             progress=False, n_steps=32, batch_size=16)
    guard = shield.Shield()
    planners = evaluation.planners({0: Greedy(profiles), 1000: Greedy(profiles)}, old, Greedy(profiles), guard)
    assert list(planners) == [evaluation.agent_label(0), evaluation.agent_label(1000), evaluation.SHIELDED,
                              "MultiDiscrete PPO (baseline)", "greedy", "no pruning", "random", "masked greedy",
                              "masked random", "one device"]
    assert [evaluation.seed_of(p) for p in planners] == [0, 1000, *[None] * 8]
    assert "MultiDiscrete PPO (baseline)" not in evaluation.planners({0: Greedy(profiles)}, None)
    ward = WardEnv(scenario, profiles, episode_length=5)
    ward.reset(seed=0)
    assert planners[evaluation.agent_label(1000)](ward) == Greedy(profiles).decide(ward.instance(), 1)
    assert all(len(p(ward).levels) == profiles.S for p in planners.values())
    assert guard.decisions == 1, "the shielded agent's decision went through the shield"


def test_pooling_the_seeds_averages_their_rows_and_keeps_them_per_seed(judged):
    frame, _, _ = judged
    results = judging.summary(frame, by=("ward", "window", "policy"))
    pooled, per_seed = evaluation.pool_seeds(results)
    for window in evaluation.WINDOWS:
        seeds = [results.loc[("w", window, evaluation.agent_label(s))] for s in (0, 1000)]
        got = pooled.loc[("w", window, evaluation.AGENT)]
        assert got["acc_vs_optimum"] == pytest.approx(np.mean([r["acc_vs_optimum"] for r in seeds]))
        assert got["requests"] == seeds[0]["requests"], "the seeds decide on the same requests"
        assert per_seed.loc[("w", window, 1000), "violation_rate"] == seeds[1]["violation_rate"]
    assert not any(evaluation.seed_of(p) is not None for p in pooled.index.get_level_values("policy"))
    with pytest.raises(ValueError, match="agent_label"):
        evaluation.pool_seeds(results.drop(index=[evaluation.agent_label(0), evaluation.agent_label(1000)], level="policy"))


def toy_frame(share: dict[int, float], violated: dict[int, int] = None, runs=2, n=5, nominal_share=1.0):
    """Agent rows of 2 wards x ``runs`` held-out runs x ``n`` faded and ``n`` nominal requests: seed s delivers
    ``share[s]`` of the optimum on faded requests (``violated[s]`` of each run's first ones violate), nominal ones all."""
    rows = []
    for ward in ("a", "b"):
        for run in range(runs):
            for t in range(2 * n):
                fade = t < n
                for s, sh in share.items():
                    bad = fade and t < (violated or {}).get(s, 0)
                    rows.append({"ward": ward, "seed": 10_000 + run, "t": t, "policy": evaluation.agent_label(s),
                                 "window": "fade" if fade else "nominal", "feasible_exists": True,
                                 "optimum_accuracy": 0.8, "feasible": not bad,
                                 "delivered": 0.0 if bad else 0.8 * (sh if fade else nominal_share)})
    return pd.DataFrame(rows)


def test_the_nested_bootstrap_resamples_seeds_then_runs_then_requests():
    frame = toy_frame({0: 1.0, 1000: 0.5})
    b = evaluation.seed_bootstrap(frame, "fade", n_boot=400, seed=1)
    assert b["acc"] == pytest.approx(0.75) and b["seeds"] == 2 and b["runs"] == 4 and b["requests"] == 20
    assert b["by_seed"] == {0: {"acc_vs_optimum": 1.0, "violation_rate": 0.0},
                            1000: {"acc_vs_optimum": 0.5, "violation_rate": 0.0}}
    assert set(np.round(b["acc_boot"], 6)) == {0.5, 0.75, 1.0}, "every run and request is alike: only the seeds vary"
    one = evaluation.seed_bootstrap(toy_frame({0: 0.9}), "fade", n_boot=200)
    assert np.allclose(one["acc_boot"], 0.9) and one["seeds"] == 1
    rng = np.random.default_rng(0)
    episodes, wards = np.repeat([0, 1, 2], [3, 5, 4]), np.array([0] * 8 + [1] * 4)
    w = evaluation._request_weights(episodes, wards, 300, rng)
    assert (w >= 0).all() and np.allclose(w, np.round(w))
    drawn_runs = w[:, :3].sum(1) / 3 + w[:, 3:8].sum(1) / 5
    assert np.allclose(drawn_runs, np.round(drawn_runs)) and (w[:, :8].sum(1) > 0).all()
    assert np.allclose(w[:, 8:].sum(1), 4), "a ward with one run always draws it once"
    with pytest.raises(ValueError, match="nothing to judge"):
        evaluation.seed_bootstrap(frame[frame["window"] == "nominal"], "fade")


def test_the_claim_needs_the_interval_above_the_margin_few_violations_and_the_nominal_share():
    good = evaluation.near_optimum(toy_frame({0: 0.99, 1000: 0.97, 2000: 0.98}), 0.95, **DECLARED, n_boot=400)
    assert good["measured"] == pytest.approx(0.98) and good["interval"][0] >= 0.95 and good["target_met"]
    assert good["wins_somewhere"] and good["seeds"] == 3 and good["violation_rate"] == 0.0 and good["nominal"] == pytest.approx(1.0)
    assert good["by_seed"][1000]["fade"]["acc_vs_optimum"] == pytest.approx(0.97)
    spread = evaluation.near_optimum(toy_frame({0: 1.0, 1000: 0.91}), 0.95, **DECLARED, n_boot=400)
    assert spread["measured"] >= 0.95 and spread["interval"][0] < 0.95
    assert not spread["target_met"] and spread["wins_somewhere"], "a seed below the margin: partly supported"
    violating = evaluation.near_optimum(toy_frame({0: 1.0}, {0: 1}), 0.95, **DECLARED, n_boot=200)
    assert violating["violation_rate"] == pytest.approx(0.2) and not violating["target_met"]
    nominal = evaluation.near_optimum(toy_frame({0: 1.0}, nominal_share=0.97), 0.95, **DECLARED, n_boot=200)
    assert nominal["interval"][0] >= 0.95 and nominal["nominal"] == pytest.approx(0.97) and not nominal["target_met"]
    text = evaluation.claim_evidence(good)
    assert "3 training seed(s)" in text and "98.00%" in text and "98% asked" in text
