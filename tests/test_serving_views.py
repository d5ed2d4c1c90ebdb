"""What 07 reads off its runs: the estimate against the oracle, measured hops, the pipelining bound, who faults hit, the verdict."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from serving_setup import scenario, setup  # noqa: F401 (setup is a fixture)
from xaiprune.planning import system
from xaiprune.serving import analysis, runs, verdict

WARD = system.parse_scenario(scenario(3))  # d0 the source, d1 and d2 workers, links at 50 Mbit/s
BW = 50e6 / 8


def served(policy: str, latency, predicted, planned=None, devices=None) -> pd.DataFrame:
    n = len(latency)
    return pd.DataFrame({"policy": policy, "request": range(n), "latency_ms": latency, "predicted_latency_ms": predicted,
                         "planned_latency_ms": predicted if planned is None else planned, "deadline_ms": 100.0,
                         "devices": devices or [["d1", "d1", "d2"]] * n})


def test_the_estimate_causes_a_miss_only_where_the_oracle_met_the_deadline():
    est = served("XAI + NLP", [50, 150, 150, 50], [50, 150, 90, 120], planned=[50, 80, 90, 60])
    ora = served("XAI + NLP (oracle)", [50, 50, 150, 50, 60], [50, 90, 90, 90, 60])  # request 4: the estimate lost it
    summary = pd.DataFrame({"acc": [0.8, 0.9]}, index=["XAI + NLP", "XAI + NLP (oracle)"])
    v = analysis.compare_views(pd.concat([est, ora]), summary, WARD, np.ones((5, 3, 3)))
    assert v.caused == {"requests": 4, "measured": 1, "predicted": 2}  # request 2 missed by both: not caused
    assert list(v.table.iloc[:, 0]) == [2, 1] and list(v.table.iloc[:, 1]) == [2, 0]
    assert v.table.loc["estimate (EWMA)", "mean |expected - predicted| (ms)"] == pytest.approx((70 + 60) / 4)
    assert list(v.table["ACC"]) == [0.8, 0.9] and "caused 1 missed deadlines" in analysis.describe_views("w", v.caused)


def test_a_hop_multiplier_is_what_the_planner_measures_on_that_link():
    g = pd.DataFrame({"devices": [["d1", "d1", "d2"], ["d1", "d1", "d1"], ["d2", "d2", "d2"]],
                      "link_bytes": [[1000, 0, 500, 8], [1000, 0, 0, 8], [1000, 0, 0, 8]],
                      "link_ms": [[1.0, 0.0, 0.2, 0.1], [1.0, 0.0, 0.0, 0.1], [2.0, 0.0, 0.0, 0.1]]}, index=[7, 8, 9])
    at, m = analysis.hop_multipliers(g, "d1", "d2", WARD)
    assert at == [7] and m == pytest.approx([500 / 0.2e-3 / BW])
    at, m = analysis.hop_multipliers(g, "d0", "d1", WARD)  # the first hop of two requests; d1 -> d1 is no hop
    assert at == [7, 8] and m == pytest.approx([1000 / 1e-3 / BW] * 2)
    assert analysis.busiest_hop(g, WARD) == ("d0", "d1")  # crossed twice; ties broken by name
    assert analysis.busiest_hop(g.assign(devices=[["d0"] * 3] * 3), WARD) is None


def test_the_pipelining_bound_is_set_by_the_busiest_device():
    alone = pd.DataFrame({"policy": "window 1", "devices": [["d1", "d1", "d2"]] * 2, "compute_ms": [[3.0, 4.0, 1.0]] * 2,
                          "link_ms": [[1.0, 0.0, 2.0, 0.5]] * 2, "latency_ms": [12.0, 14.0]})
    busy = analysis.busy_per_device(alone, WARD)
    assert busy.iloc[0].to_dict() == {"d0": 1.0, "d1": 9.0, "d2": 1.5}  # d1: 3 + 4 compute, 0 + 2 sent on
    summary = pd.DataFrame({c: [0.0, 0.0] for c in analysis.LOAD}, index=["window 1", "window 4"]).assign(
        throughput_rps=[50.0, 80.0])
    p = analysis.pipelining(alone, summary, WARD, 4)
    assert (p["busiest"], p["busy_ms"], p["alone_ms"]) == ("d1", 9.0, 13.0)
    assert p["speedup"] == pytest.approx(1.6) and p["bound"] == pytest.approx(1e3 / 9 / 50)
    assert "1.60x the throughput" in analysis.describe_pipelining(p)


def test_latency_gaps_split_slow_segments_from_messaging():
    requests = pd.DataFrame({"policy": ["a", "a", "b"], "devices": [["d1", "d2"]] * 3,
                             "flops": [[5e6, 5e6]] * 3,  # 1 ms each at 5 GFLOP/s
                             "compute_ms": [[3.0, 0.5], [1.0, 1.0], [1.0, 1.0]], "link_ms": [[1.0, 1.0, 1.0]] * 3})
    summary = pd.DataFrame({"mean_ms": [8.0, 6.0], "latency_error": [0.5, 0.1]}, index=["a", "b"])
    profiles = SimpleNamespace(segments=["s1", "s2"], weight_bytes=np.array([[2e6, 1e6], [4e6, 2e6]]))
    gaps, worst, per_segment = analysis.latency_gaps(requests, summary, WARD, profiles)
    assert gaps.loc["a"].tolist() == [0.75, 2.25] and gaps.loc["b"].tolist() == [0.0, 1.0]  # (1.5 + 0) / 2; 8 - 5.75
    assert worst == "a" and per_segment["measured ms"].tolist() == [2.0, 0.75]
    assert per_segment["emulated ms"].tolist() == [1.0, 1.0] and per_segment["weights MB (unpruned)"].tolist() == [2.0, 4.0]


def test_faults_hit_the_most_used_workers_and_fall_back_to_a_spread_plan(setup):
    assert runs.most_used(["d2", "d1", "d2", "d0"], ["d1", "d2"]) == ["d2", "d1"]
    assert runs.most_used(["d1", "d2"], ["d1", "d2"], without=("d1",)) == ["d2"]
    profiles = system.load_profiles(Path(setup["profiles"]))
    values = {"down_s": 1.5, "straggler_delay_s": 1.0}
    study = SimpleNamespace(ward=system.parse_scenario(scenario(4)), profiles=profiles, values=values)
    plan = runs.fault_plan(study, ["d2", "d3", "d2"])
    assert (plan["victim"], plan["peer"], plan["base"]["planner"]) == ("d2", "d3", "nlp")
    assert plan["kinds"]["partition"] == {"peer": "d3"} and plan["kinds"]["duplicate"] == {"device": "d2"}
    assert plan["hang"] != "d2" and set(plan["kinds"]) == {"duplicate", "bad_header", "bad_shape", "partition",
                                                           "rejoin", "straggler", "kill", "hang"}
    local = runs.fault_plan(study, ["d0", "d0", "d0"])  # nothing leaves the source: spread over every worker
    assert local["base"]["planner"] == "fixed" and local["base"]["plan"]["devices"] == ["d1", "d2", "d3"]
    assert (local["victim"], local["peer"]) == ("d1", "d2") and local["kinds"]["duplicate"] == {"device": "d3"}


def test_tidy_rows_and_the_fault_checks():
    row = pd.Series({"acc": np.float64(0.123456), "n": np.int64(3), "name": "x", "nan": float("nan")}, dtype=object)
    tidy = verdict.tidy(row)
    assert (tidy["acc"], tidy["n"], tidy["name"]) == (0.1235, 3, "x") and type(tidy["n"]) is int
    assert np.isnan(tidy["nan"]) and verdict.finite(tidy)["nan"] is None
    ok = {"lost": 0, "duplicated": 0, "answered_once": 9, "failed": 1, "requests": 10, "triggered": True,
          "recovery_s": 0.5, "used_again": True}
    faults = {"kill": ok, "rejoin": {**ok, "answered_once": 8, "used_again": False}}
    met = verdict.checks(faults)
    assert met["kill: every request answered once or failed with a reason"] and met["kill: the fault acted and the source saw it"]
    assert not met["rejoin: every request answered once or failed with a reason"]
    assert not met["rejoin: the device came back and was planned on again"]