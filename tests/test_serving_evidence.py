"""07's claims read off the runs' logs: paired comparisons over requests, bytes saved, the latency model, pipelining."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xaiprune import stats
from xaiprune.serving import evidence, runs, verdict

BINARY = "binary-class"


def policy(name: str, labels, good: bool, latency: float, deadline: float = 100.0, rng=None) -> pd.DataFrame:
    """One policy's answers: logits that rank the labels (``good``) or noise, every request at ``latency`` ms."""
    n = len(labels)
    score = np.where(labels == 1, 2.0, -2.0) + 0.3 * np.arange(n) / n if good else rng.normal(size=n)
    return pd.DataFrame({"policy": name, "request": range(n), "test_index": range(n), "label": labels,
                         "logits": [[0.0, s] for s in score], "latency_ms": latency, "deadline_ms": deadline})


def ward_requests(one_device_ms: float = 150.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 30)
    rl = policy("XAI + RL", y, False, 50.0, rng=rng).iloc[1:]  # one request of RL unanswered: 59 paired requests
    return pd.concat([policy("XAI + NLP", y, True, 50.0), rl, policy("one device", y, True, one_device_ms),
                      policy("no pruning", y, True, 80.0)], ignore_index=True)


def test_paired_share_bootstraps_the_difference_of_per_request_hits():
    r = evidence.paired_share(np.ones(40), np.r_[np.ones(10), np.zeros(30)], 0.0, n_boot=200)
    assert r["diff"] == pytest.approx(0.75) and 0.5 < r["interval"][0] < 0.75 < r["interval"][1] <= 1 and r["p"] == 0
    assert evidence.paired_share(np.ones(5), np.ones(5), 0.0, n_boot=50)["p"] == 1  # a tie is not above margin 0


def test_distributed_accuracy_pairs_the_requests_and_decides_on_the_corrected_family():
    e = evidence.distributed_accuracy(ward_requests(), BINARY, -0.02, 0.95, n_boot=300)
    assert e["requests"] == 59 and len(e["family"]) == 6  # two policies x (AUC vs 2, deadlines vs one device)
    nlp = [r for r in e["family"] if r["policy"] == "XAI + NLP"]
    assert all(r["above_margin"] for r in nlp) and e["measured"] == pytest.approx(0.0)
    rl_auc = [r for r in e["family"] if r["policy"] == "XAI + RL" and r["endpoint"] == "auc"]
    assert not any(r["above_margin"] for r in rl_auc) and all(r["diff"] < -0.2 for r in rl_auc)
    assert e["target_met"] and e["wins_somewhere"] and e["interval"] == nlp[0]["interval_holm"]
    assert set(e["endpoints"]["one device"]) == {"acc", "bal_acc", "auc", "deadline_share"}
    assert e["endpoints"]["one device"]["deadline_share"] == 0 and "XAI + RL: AUC" in e["evidence"]
    tied = evidence.distributed_accuracy(ward_requests(one_device_ms=60.0), BINARY, -0.02, 0.95, n_boot=300)
    assert not tied["target_met"] and tied["wins_somewhere"]  # deadlines met by both: not more than one device
    short = evidence.distributed_accuracy(ward_requests(), BINARY, -0.02, 1.01, n_boot=100)
    assert not short["target_met"]  # the share of deadlines met is part of the target


def test_aligned_refuses_policies_that_served_other_labels():
    a = ward_requests()
    a.loc[(a["policy"] == "no pruning") & (a["test_index"] == 3), "label"] = 0
    with pytest.raises(ValueError, match="labels differ"):
        evidence.aligned(a, ["XAI + NLP", "no pruning"])
    with pytest.raises(ValueError, match="no answered request"):
        evidence.aligned(a, ["XAI + NLP", "static 50% XAI"])


PROFILES = SimpleNamespace(input_bytes=100, out_bytes=np.array([[50, 25], [10, 5]]))  # 2 segments, levels 0 and 1


def sent(policy_name: str, link_bytes: list[list[int]]) -> pd.DataFrame:
    return pd.DataFrame({"policy": policy_name, "link_bytes": link_bytes, "bytes": [sum(b) for b in link_bytes]})


def test_bytes_saved_is_the_share_pruning_removed_on_the_same_routes():
    pruned = sent("XAI + NLP", [[100, 25, 0]] * 8 + [[100, 50, 0]] * 2)  # halving hop 1 saves 25 of 150 bytes
    local = sent("XAI + RL", [[0, 0, 0]] * 10)  # nothing crossed a link: nothing to save
    r = evidence.saved_share(pruned, PROFILES, 0.10, n_boot=200)
    assert r["diff"] == pytest.approx(200 / 1500) and r["interval"][0] <= r["diff"] <= r["interval"][1]
    e = evidence.bytes_saved({"w: XAI + NLP": pruned, "w: XAI + RL": local}, PROFILES, 0.05, n_boot=200)
    assert e["best"] == "w: XAI + NLP" and e["target_met"] and e["wins_somewhere"]
    assert e["policies"]["w: XAI + RL"]["diff"] == 0 and not e["policies"]["w: XAI + RL"]["above_margin"]
    high = evidence.bytes_saved({"w: XAI + NLP": pruned}, PROFILES, 0.5, n_boot=200)
    assert not high["target_met"] and high["wins_somewhere"]
    run = SimpleNamespace(scenario="w", requests=pd.concat([pruned, local, sent("no pruning", [[100, 50, 0]])]))
    assert list(evidence.dynamic_requests([run, None])) == ["w: XAI + NLP", "w: XAI + RL"]


def timed(name: str, measured, predicted) -> pd.DataFrame:
    return pd.DataFrame({"policy": name, "latency_ms": measured, "predicted_latency_ms": predicted})


def test_latency_model_needs_every_policy_within_and_no_request_lost():
    r = evidence.latency_error(timed("a", [11.0, 22.0, 33.0], [10.0, 20.0, 30.0]), n_boot=100)
    assert r["error"] == pytest.approx(0.1) and r["interval"] == pytest.approx([0.1, 0.1])
    run = SimpleNamespace(scenario="w", requests=pd.concat([timed("a", [11.0] * 4, [10.0] * 4),
                                                            timed("b", [13.0] * 4, [10.0] * 4)]))
    ok = {"lost": 0, "duplicated": 0, "triggered": True, "recovery_s": 0.4}
    e = evidence.latency_model([run, None], {"kill": ok}, 0.2, n_boot=100)  # b is 30% over the model
    assert not e["target_met"] and e["wins_somewhere"] and e["measured"] == pytest.approx(0.3)
    assert e["policies"]["w: a"]["within"] and not e["policies"]["w: b"]["within"] and "1 of 2 policies" in e["evidence"]
    tight = evidence.latency_model([run], {"kill": ok}, 0.35, n_boot=100)
    assert tight["target_met"] and tight["measured"] == pytest.approx(0.3) and set(tight["load"]) >= {"1min", "cpus"}
    lost = evidence.latency_model([run], {"kill": {**ok, "lost": 1}}, 0.35, n_boot=100)
    assert not lost["target_met"] and lost["wins_somewhere"] and lost["lost"] == 1
    idle = evidence.latency_model([run], {"kill": ok, "hang": {**ok, "triggered": False}}, 0.35, n_boot=100)
    assert not idle["target_met"] and "never acted" in idle["evidence"], "a fault that did not act tests nothing"


def test_a_latency_error_is_within_only_when_its_corrected_interval_is():
    rng = np.random.default_rng(0)
    noisy = timed("n", rng.uniform(5.0, 30.0, 12), [15.0] * 12)  # mean error near +17%, wide interval
    run = SimpleNamespace(scenario="w", requests=noisy)
    e = evidence.latency_model([run], {"kill": {"lost": 0, "duplicated": 0, "triggered": True, "recovery_s": 0.1}},
                               0.2, n_boot=500)
    err = e["policies"]["w: n"]
    assert err["interval"][1] > 0.2 and not err["within"] and not e["target_met"]


def test_pipelining_is_measured_against_the_busiest_device_bound():
    pipe = {"speedup": 1.36, "bound": 1.47, "window": 4, "xw": 136.0, "x1": 100.0, "busiest": "d1", "busy_ms": 6.8}
    e = evidence.pipelining(pipe, 0.9)
    assert e["measured"] == pytest.approx(1.36 / 1.47, abs=1e-4) and e["target_met"] and e["interval"] is None
    slow = evidence.pipelining({**pipe, "speedup": 0.95}, 0.9)
    assert not slow["target_met"] and not slow["wins_somewhere"] and "0.95x" in slow["evidence"]


def test_summaries_carry_the_study_endpoints_and_the_verdict_prints_the_rows():
    requests = ward_requests()
    summary = pd.DataFrame({"acc": 0.0, "auc": 0.0, "p50_ms": 1.0},
                           index=pd.Index(["XAI + NLP", "one device"], name="policy"))
    out = runs.with_endpoints(summary, requests, BINARY)
    assert list(out.columns) == ["acc", "bal_acc", "auc", "p50_ms"]
    again = runs.with_endpoints(summary.assign(bal_acc=0.0)[["acc", "bal_acc", "auc", "p50_ms"]], requests, BINARY)
    assert list(again.columns) == ["acc", "bal_acc", "auc", "p50_ms"], "a summary that has balanced accuracy keeps one"
    g = requests[requests["policy"] == "XAI + NLP"]
    want = stats.endpoints(g["label"].to_numpy()[:, None], evidence.probabilities(g), BINARY)
    assert out.loc["XAI + NLP", ["acc", "bal_acc", "auc"]].tolist() == pytest.approx([want[k] for k in stats.ENDPOINTS])
    faults = {"kill": {"answered_once": 9, "failed": 1, "requests": 10, "triggered": True},
              "rejoin": {"answered_once": 9, "failed": 0, "requests": 10, "triggered": False, "used_again": True}}
    rows = [{"id": "pipelining", "verdict": "partly supported", "target": "gain at least 90%", "evidence": "x"}]
    lines = verdict.verdict(rows, faults)
    assert lines[0].startswith("PARTLY SUPPORTED: pipelining (target: gain at least 90%)")
    assert "FAILED  rejoin: every request answered once or failed with a reason" in lines
    assert "FAILED  rejoin: the fault acted and the source saw it" in lines and lines[-1].startswith("ok")
