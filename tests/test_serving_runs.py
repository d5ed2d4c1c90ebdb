"""Serving on real processes (loopback): the same logits as one process, the profile's bytes, no process left.

Faults survived on real processes are in ``test_serving_faults.py``.

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
from xaiprune import data, serving
from xaiprune.planning import system
from xaiprune.pruning import prune
from xaiprune.serving import sockets


# ----- real processes ------------------------------------------------------------------------------
@needs_real_data
@pytest.mark.parametrize("n_devices, plan, store", [
    (3, {"devices": ["d1", "d2", "d1"], "levels": [0.25, 0.0, 0.5]}, "file"),
    (4, {"devices": ["d1", "d2", "d3"], "levels": [0.5, 0.25, 0.0]}, "tcp"),
])
def test_two_and_three_workers_give_the_single_process_predictions_and_profile_bytes_listening_on_loopback_only(
        setup, tmp_path, n_devices, plan, store):
    cfg = config(setup, n_devices, [{"name": "fixed", "planner": "fixed", "criterion": "lrp", "plan": plan}])
    port = serving.free_port()
    out = serving.launch(cfg, tmp_path, progress=False, port=port, store=store)
    assert out.returncodes == {r: 0 for r in range(n_devices)}
    assert all(gone(p) for p in pids(tmp_path))
    seen = out.summary["listen_addresses"]  # read off /proc: one gloo device per process, and a TCP store on the
    assert len(seen) == n_devices + (store == "tcp") and all(sockets.is_loopback(a) for a in seen), seen
    assert (f"127.0.0.1:{port}" in seen) == (store == "tcp")  # address it was given (not *:port); a file store: none
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
@pytest.mark.parametrize("failure", ["broken checkpoint", "timeout"])
def test_processes_are_gone_after_a_failed_run(setup, tmp_path, failure):
    bad = Path(tmp_path / "broken.pt")
    bad.write_bytes(b"not a checkpoint")
    cfg = config(setup, 3, [{"name": "local", "planner": "local", "criterion": "l1"}],
                 **({"checkpoint": str(bad)} if failure == "broken checkpoint" else {}))
    with pytest.raises(RuntimeError, match="rank 0 exited"):
        serving.launch(cfg, tmp_path / "run", progress=False, timeout=0.5 if failure == "timeout" else None)
    assert all(gone(p) for p in pids(tmp_path / "run"))
