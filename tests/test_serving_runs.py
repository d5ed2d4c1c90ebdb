"""Serving on real processes (loopback): the same logits as one process, the profile's bytes, faults survived.

One ``python -m xaiprune.serving`` process per device on 127.0.0.1 with the small CNN (untrained but with
non-trivial weights) and emulation off, so each run takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import needs_real_data, real_root
from serving_setup import config, gone, pids, setup  # noqa: F401 (setup is a fixture)
from xaiprune import data, prune, serving, system


# ----- real processes ------------------------------------------------------------------------------
@needs_real_data
@pytest.mark.parametrize("n_devices, plan", [
    (3, {"devices": ["d1", "d2", "d1"], "levels": [0.25, 0.0, 0.5]}),
    (4, {"devices": ["d1", "d2", "d3"], "levels": [0.5, 0.25, 0.0]}),
])
def test_two_and_three_workers_give_the_single_process_predictions_and_profile_bytes(setup, tmp_path, n_devices, plan):
    cfg = config(setup, n_devices, [{"name": "fixed", "planner": "fixed", "criterion": "lrp", "plan": plan}])
    out = serving.launch(cfg, tmp_path, progress=False)
    assert out.returncodes == {r: 0 for r in range(n_devices)}
    assert all(gone(p) for p in pids(tmp_path))
    r = out.requests.sort_values("request")
    assert list(r["request"]) == list(range(cfg.n_requests))

    test = data.load_split("pneumoniamnist", "test", 28, real_root())
    scores = torch.load(setup["scores"]["lrp"], weights_only=True)
    reference = prune.prune_with_scores(setup["model"], dict(zip(setup["model"].segments, plan["levels"])), scores)
    with torch.no_grad():
        expected = torch.cat([reference(test.x[i:i + 1]) for i in r["test_index"]])
    assert torch.allclose(torch.tensor(r["logits"].tolist()), expected, atol=1e-6, rtol=0)
    assert list(r["prediction"]) == expected.argmax(1).tolist()

    profiles = system.load_profiles(Path(setup["profiles"]))
    levels = [profiles.levels.index(lv) for lv in plan["levels"]]
    expected_bytes = [profiles.input_bytes] + [profiles.out_bytes[s, lv] for s, lv in enumerate(levels)]
    route = ["d0"] + plan["devices"] + ["d0"]  # hop h goes from route[h] to route[h + 1]
    expected_bytes = [b if route[h] != route[h + 1] else 0 for h, b in enumerate(expected_bytes)]
    for hops in r["link_bytes"]:
        assert hops == expected_bytes

    table = serving.summarise(out.requests, "pneumoniamnist", profiles=profiles)
    row = table.loc["fixed"]
    unpruned = [profiles.input_bytes] + list(profiles.out_bytes[:, 0])
    saved = 1 - sum(expected_bytes) / sum(u for u, b in zip(unpruned, expected_bytes) if b)
    assert np.isclose(row["bytes_saved_by_pruning"], saved) and (saved > 0) == (plan["levels"][0] > 0)
    assert row["requests"] == cfg.n_requests and row["distinct_plans"] == 1 and row["replanned"] == 0
    assert np.isclose(row["acc"], (r["prediction"] == r["label"]).mean())
    assert row["bytes_per_inference"] == sum(expected_bytes) and 0 <= row["deadline_hit_rate"] <= 1
    assert np.isclose(row["energy_j"], sum(row[f"energy_j.d{j}"] for j in range(n_devices)))


@needs_real_data
def test_a_worker_killed_mid_run_loses_no_request_and_none_is_answered_twice(setup, tmp_path):
    plan = {"devices": ["d1", "d2", "d2"], "levels": [0.0, 0.0, 0.0]}
    cfg = config(setup, 3, [{"name": "fixed", "planner": "fixed", "criterion": "l1", "plan": plan}],
                 n_requests=8, fault={"policy": "fixed", "device": "d2", "request": 3},
                 heartbeat_s=0.05, dead_after_s=0.5)
    out = serving.launch(cfg, tmp_path, progress=False)
    assert out.returncodes[0] == 0 and out.returncodes[1] == 0 and out.returncodes[2] == -9  # SIGKILLed itself
    assert all(gone(p) for p in pids(tmp_path))
    r = out.requests
    assert sorted(r["request"]) == list(range(8)) and (r["answers"] == 1).all()  # every request answered exactly once
    assert out.summary["policies"][0]["lost"] == out.summary["policies"][0]["duplicated"] == 0
    assert out.summary["dead"] == ["d2"]
    events = out.events
    assert "device dead" in set(events["event"]) and "re-planned" in set(events["event"])
    replanned = r[r["attempts"] > 1]
    assert list(replanned["request"]) == [3]
    # its latency runs from the first send, so it carries the detection (>= 0.5 s of silence)
    assert replanned["latency_ms"].iloc[0] >= 500 > replanned["attempt_latency_ms"].iloc[0]
    assert "d2" not in replanned["devices"].iloc[0] and "d2" not in sum(r[r["request"] > 3]["devices"], [])


@needs_real_data
def test_a_result_sent_twice_is_counted_as_a_duplicate_and_used_once(setup, tmp_path):
    plan = {"devices": ["d1", "d2", "d2"], "levels": [0.0, 0.25, 0.0]}  # d2 returns every result to the source
    cfg = config(setup, 3, [{"name": "fixed", "planner": "fixed", "criterion": "l1", "plan": plan}], n_requests=5,
                 fault={"policy": "fixed", "device": "d2", "request": 2, "kind": "duplicate"})
    out = serving.launch(cfg, tmp_path, progress=False)
    assert out.returncodes == {0: 0, 1: 0, 2: 0}
    assert "sending the result of request 2 twice" in (tmp_path / "rank2.log").read_text()
    r = out.requests.sort_values("request")
    assert list(r["request"]) == list(range(5))  # one answer accepted per request
    assert list(r["answers"]) == [1, 1, 2, 1, 1]  # the receiver counted the repeat
    s = out.summary["policies"][0]
    assert (s["answered"], s["lost"], s["duplicated"], s["late_discarded"]) == (5, 0, 1, 1)
    assert serving.summarise(out.requests, "pneumoniamnist").loc["fixed", "duplicated"] == 1
    discarded = out.events[out.events["event"] == "discarded"]
    assert list(discarded["request"]) == [2] and list(discarded["message"]) == ["result"]


@needs_real_data
@pytest.mark.parametrize("failure", ["broken checkpoint", "timeout"])
def test_processes_are_gone_after_a_failed_run(setup, tmp_path, failure):
    bad = Path(tmp_path / "broken.pt")
    bad.write_bytes(b"not a checkpoint")
    cfg = config(setup, 3, [{"name": "local", "planner": "local", "criterion": "l1"}],
                 **({"checkpoint": str(bad)} if failure == "broken checkpoint" else {}))
    with pytest.raises(RuntimeError, match="rank 0 exited"):
        serving.launch(cfg, tmp_path / "run", progress=False, timeout=0.5 if failure == "timeout" else None)
    assert all(gone(p) for p in pids(tmp_path / "run"))
