"""Notebook 05's measurements: the surrogate's error on a design of plans, the verified answers of a sweep, the metrics."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from xaiprune.planning import candidates, nlp, sweep, system, verify


class FakeMeasurements:
    """Stands in for :class:`candidates.Measurements`: a known accuracy per plan and split, counted like it."""

    def __init__(self, accuracy):
        self.accuracy, self.asked, self.pruned = accuracy, [], 0

    def measure(self, levels, split):
        plan = tuple(round(float(v), 6) for v in levels)
        if plan not in {p for p, _ in self.asked}:
            self.pruned += 1
        self.asked.append((plan, split))
        return {"acc": self.accuracy(plan, split), "bal_acc": 0.6, "auc": 0.5}

    def metric(self, split, metric="acc"):
        return lambda levels: self.measure(levels, split)[metric]


def toy():
    return system.random_instance(3, 3, 3, seed=3, tightness=3.0)


def test_the_surrogate_checks_compare_prediction_and_measurement_plan_by_plan():
    _, profiles = toy()
    meas = FakeMeasurements(lambda plan, split: 0.9 - sum(plan) / 10)
    design = candidates.design(profiles, 6, seed=0)
    checks = verify.surrogate_checks(meas, profiles, design)
    assert len(checks) == len(design) and {s for _, s in meas.asked} == {"val"}, "the surrogate is judged on validation"
    assert list(checks.columns)[5] == "error (points)" and list(checks.columns)[-3:] == ["acc", "bal_acc", "auc"]
    assert (checks["bal_acc"] == 0.6).all() and (checks["acc"] == checks["measured"]).all()
    for row, levels in zip(checks.itertuples(), design):
        fractions = [profiles.levels[l] for l in levels]
        measured = 0.9 - sum(round(f, 6) for f in fractions) / 10
        assert row.measured == pytest.approx(measured)
        assert row.surrogate == profiles.accuracy(list(levels))
        assert row[6] == pytest.approx(100 * (row.surrogate - measured))  # "error (points)"
        assert row.kind == ("uniform" if len(set(levels)) == 1 else "random")


def test_the_surrogate_error_counts_the_target_and_the_plans_above_the_floor():
    checks = pd.DataFrame({"error (points)": [1.0, -3.0, 0.5, 2.0], "error without floor": [1.0, -5.0, 0.5, 4.0],
                           "product only": [0.9, 0.4, 0.8, 0.45]})
    e = verify.surrogate_error(checks, floor=0.5, margin=0.02)
    assert e["n_plans"] == 4 and e["within_margin"] == 3 and e["share_within_margin"] == 0.75 and e["margin_points"] == 2
    assert e["mean_abs_points"] == pytest.approx(6.5 / 4) and e["max_abs_points"] == 3.0
    assert e["mean_points"] == pytest.approx(0.125) and e["without_floor_max_abs_points"] == 5.0
    assert e["above_floor_plans"] == 2 and e["above_floor_mean_abs_points"] == pytest.approx(0.75)
    assert e["above_floor_within_margin"] == 2
    assert "\nover the 2 plans" in verify.describe_surrogate_error(e, 0.5, 1.0)
    assert "within the 2-point margin" in verify.describe_surrogate_error(e, 0.5, 1.0)
    assert verify.surrogate_error(checks, floor=0.5, margin=0.01)["within_margin"] == 2
    none = verify.surrogate_error(checks, floor=1.0, margin=0.02)
    assert none["above_floor_plans"] == 0 and none["above_floor_mean_abs_points"] is None
    assert "\n" not in verify.describe_surrogate_error(none, 1.0, 1.0)


def test_the_surrogate_claim_is_the_mean_error_over_pruned_plans_with_a_bootstrap_over_plans():
    checks = pd.DataFrame({"mean level": [0.0, 0.1, 0.3, 0.5, 0.7], "error (points)": [0.0, 1.0, -1.0, 0.5, -1.5],
                           "acc": 0.8, "bal_acc": [0.8, 0.7, 0.6, 0.55, 0.5], "auc": 0.9})
    c = verify.surrogate_claim(checks, 0.02, n_boot=500)
    assert c["n_plans"] == 4 and c["measured"] == pytest.approx(0.01), "the unpruned plan is left out"
    assert 0.005 <= c["interval"][0] <= 0.01 <= c["interval"][1] <= 0.015 and c["max"] == pytest.approx(0.015)
    assert c["target_met"] and c["wins_somewhere"] and c["within_margin"] == 4 and c["p"] < 0.05
    wide = verify.surrogate_claim(checks.assign(**{"error (points)": [0.0, 0.5, 0.5, 0.5, 6.0]}), 0.02, n_boot=500)
    assert wide["measured"] <= 0.02 < wide["interval"][1] and not wide["target_met"] and wide["wins_somewhere"]
    bad = verify.surrogate_claim(checks.assign(**{"error (points)": [0.0, 5.0, -4.0, 3.0, 6.0]}), 0.02, n_boot=500)
    assert not bad["target_met"] and not bad["wins_somewhere"]
    text = verify.claim_evidence(c, checks, "acc")
    assert "Over 4 pruned plans" in text and "1.00 points" in text and "bal_acc 0.500-0.700" in text and "ACC only" in text
    shifted = verify.claim_evidence(c, checks.assign(**{"error (points)": [9.4, 1.0, -1.0, 0.5, -1.5]}), "acc", "test")
    assert "unpruned plan alone is off by +9.40 points" in shifted and "not the product of retentions" in shifted
    with pytest.raises(ValueError, match="no pruned plan"):
        verify.surrogate_claim(checks.head(1), 0.02)


def test_the_sensitivity_table_must_have_been_measured_on_validation():
    class Unpruned(FakeMeasurements):
        def measure(self, levels, split):
            assert list(levels) == [0.0] * 3
            return {"val": {"acc": 0.8, "bal_acc": 0.7, "auc": 0.9}, "test": {"acc": 0.75, "bal_acc": 0.6, "auc": 0.85}}[split]
    meas = Unpruned(None)
    table = pd.DataFrame({"segment": ["a", "a", "b", "b"], "level": [0.0, 0.5, 0.0, 0.5], "acc": [0.8, 0.6, 0.8, 0.7],
                          "auc": [0.9, 0.7, 0.9, 0.8]})
    assert verify.split_of_table(table, meas, 3) == "val"
    with pytest.raises(ValueError, match="not measured on 'val'"):
        verify.split_of_table(table.assign(acc=[0.75, 0.6, 0.75, 0.7], auc=0.85), meas, 3)
    assert verify.split_of_table(table.assign(acc=[0.75, 0.6, 0.75, 0.7], auc=0.85), meas, 3, split="test") == "test"
    with pytest.raises(ValueError, match="no unpruned row"):
        verify.split_of_table(table[table["level"] > 0], meas, 3)


@pytest.fixture(scope="module")
def verified():
    scenario, profiles = toy()
    swept = sweep.sweep({"a": scenario, "ample": sweep.ample(scenario)}, profiles, [0.01, 1.0], [1.0])
    table = {}

    def accuracy(plan, split):  # a fixed pseudo-random accuracy per plan and split
        return table.setdefault((plan, split), float(np.random.default_rng(zlib.crc32(repr((plan, split)).encode())).random()))
    meas = FakeMeasurements(accuracy)
    return verify.verify_sweep(swept.optima, swept.instances, profiles, meas, 3), swept, profiles, accuracy


def test_every_pruning_optimum_is_verified_by_its_best_candidate_on_validation(verified):
    v, swept, profiles, accuracy = verified
    with_plan = {k for k, r in swept.optima.items() if r.plan is not None}
    assert len(v.table) == len(with_plan) and set(v.candidates) <= with_plan
    assert 0 < v.table["verified"].sum() < len(v.table) < len(swept.optima), "some verified, some final, some without a plan"
    for _, row in v.table.iterrows():
        key = (row["scenario"], row["axis"], row["factor"])
        optimum = swept.optima[key]
        assert row["verified"] == any(optimum.plan.levels) == (key in v.candidates)
        fractions = lambda r: tuple(round(profiles.levels[l], 6) for l in r.plan.levels)  # noqa: E731
        if not row["verified"]:
            assert row["chosen"] == 0 and row["candidates"] == 1 and row["gain (points)"] == 0.0
            continue
        found = v.candidates[key]
        val = [accuracy(fractions(r), "val") for r in found]
        assert row["chosen"] == max(range(len(found)), key=lambda i: (val[i], -i)) and row["candidates"] == len(found)
        test_opt, test_chosen = accuracy(fractions(optimum), "test"), accuracy(fractions(found[row["chosen"]]), "test")
        assert row["gain (points)"] == pytest.approx(100 * (test_chosen - test_opt))
        assert row["gain bal_acc (points)"] == 0.0 and row["gain auc (points)"] == 0.0, "the other endpoints beside"
    verify.check_candidates(v.candidates, profiles)


def test_the_verification_summary_counts_what_verification_changed(verified):
    v = verified[0]
    s = verify.verification_summary(v, 3)
    checked = v.table[v.table["verified"]]
    assert s["instances"] == len(v.table) and s["verified"] == len(checked) and s["candidates_per_instance"] == 3
    assert s["changed"] == int((checked["chosen"] > 0).sum()) and s["models_pruned"] == v.models_pruned > 0
    assert s["instances_gained"] + s["instances_lost"] <= s["verified"]
    assert "were verified" in verify.describe_verification(s) or s["verified"] == 0
    assert s["mean_gain_points_bal_acc"] == 0.0 and "bal_acc +0.00" in verify.describe_verification(s)
    with pytest.raises(RuntimeError, match="nothing to verify"):
        verify.verification_summary(verify.Verification(pd.DataFrame(), {}, 0, 0.0), 3)


def test_bad_candidates_are_caught():
    scenario, profiles = toy()
    found = candidates.top_candidates(scenario, profiles, 3)
    assert len(found) == 3
    with pytest.raises(RuntimeError, match="repeats"):
        verify.check_candidates({"k": [found[0], found[0]]}, profiles)
    with pytest.raises(RuntimeError, match="order"):
        verify.check_candidates({"k": [found[2], found[0]]}, profiles)
    tight = scenario.with_changes(deadline=1e-9)
    bad = nlp.Result("milp", "optimal", found[1].plan, system.evaluate(found[1].plan, tight, profiles))
    with pytest.raises(RuntimeError, match="infeasible"):
        verify.check_candidates({"k": [found[0], bad]}, profiles)


def test_the_metrics_keep_their_keys_and_rounding(verified):
    v, swept, _, _ = verified
    base = {"a": swept.optima[("a", "deadline", 1.0)]}
    error = {"n_plans": 2, "mean_abs_points": 1.234567, "above_floor_mean_abs_points": None}
    timing = pd.DataFrame([{"segments": 3, "devices": 3, "levels": 3, "milp_s": 0.123456, "milp": "optimal",
                            "enumeration_s": 0.0123456, "enumeration": "optimal", "agree": True}])
    m = verify.metrics(base, error, verify.verification_summary(v, 3), sweep.against_optimum(swept.plans), timing)
    assert set(m) == {"solve_seconds", "status", "surrogate_accuracy", "surrogate_error", "verification", "heuristics",
                      "scaling"}
    assert m["surrogate_error"] == {"n_plans": 2, "mean_abs_points": 1.2346, "above_floor_mean_abs_points": None}
    assert m["scaling"][0]["milp_s"] == 0.1235 and m["status"] == {"a": base["a"].status}
    assert set(m["heuristics"]) == set(swept.plans["policy"])
    assert set(m["heuristics"][sweep.OPTIMUM]) == {"feasible_rate", "mean_gap_to_optimum"}
