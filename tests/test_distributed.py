"""Distributed inference: the wire format, the config checks, and real multi-process runs on loopback.

The process tests start one ``python -m xaiprune.distributed`` process per device on 127.0.0.1 with
the small CNN (untrained but with non-trivial weights) and emulation off, so they take seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import needs_real_data, real_root, small, split
from xaiprune import data, distributed as D, paths, prune, system, train

LEVELS = [0.0, 0.25, 0.5]


def device(name: str, memory_mb: float = 100.0) -> dict:
    return {"name": name, "speed_gflops": 5.0, "memory_mb": memory_mb, "energy_budget_j": 5.0,
            "energy_nj_per_flop": 0.4, "radio_w": 1.0}


def scenario(n: int) -> dict:
    """n devices; the source (d0) is slow to tempt the planner elsewhere, links at 50 Mbit/s."""
    devices = [device(f"d{j}") for j in range(n)]
    devices[0]["speed_gflops"] = 0.5
    return {"name": f"test-{n}", "source": "d0", "deadline_ms": 1000, "devices": devices,
            "links": {"default_mbps": 50}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, L1 and LRP scores, and measured profiles of the small CNN, in a scratch folder."""
    folder = tmp_path_factory.mktemp("distributed")
    model = small()
    config = train.TrainConfig(arch="small_cnn", flag="pneumoniamnist", size=28, epochs=1)
    checkpoint = train.save(train.Trained(model=model, config=config), folder / "checkpoint.pt")
    scores = D.write_scores(model, ["l1", "lrp"], split(6), folder)
    table = []  # measured costs of every segment alone at every level (what 04's sensitivity table holds)
    for segment in model.segments:
        for level in LEVELS:
            pruned = prune.prune_with_scores(model, {segment: level}, torch.load(scores["l1"], weights_only=True))
            cost = prune.profile(pruned, (1, 28, 28))
            table.append({"segment": segment, "level": level, "draw": 0, "acc": 0.9, "auc": 0.9,
                          **{k: cost[f"segment_{k}"][segment] for k in ("macs", "weight_bytes", "peak_bytes", "out_bytes")}})
    import pandas as pd

    profiles = system.profiles_from_sensitivity(pd.DataFrame(table), input_bytes=28 * 28 * 4)
    system.save_profiles(profiles, folder / "profiles.json")
    return {"folder": folder, "model": model, "checkpoint": str(checkpoint), "scores": scores,
            "profiles": str(folder / "profiles.json")}


def config(setup, n_devices: int, policies: list[dict], **kw) -> D.RunConfig:
    fields = dict(arch="small_cnn", flag="pneumoniamnist", size=28, checkpoint=setup["checkpoint"],
                  scores=setup["scores"], scenario=scenario(n_devices), profiles=setup["profiles"],
                  policies=policies, data_root=str(real_root() or ""), emulate=False, n_requests=6)
    return D.RunConfig(**{**fields, **kw})


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def pids(folder: Path) -> list[int]:
    return list(json.loads((folder / "pids.json").read_text()).values())


# ----- wire format ---------------------------------------------------------------------------------
def parse(h: torch.Tensor):
    return D.Message.parse(h, world_size=3, n_segments=3, n_levels=3, n_criteria=2)


def test_header_round_trip_carries_plan_timings_and_payload_shape():
    x = torch.randn(1, 16, 14, 14)
    msg = D.Message(D.ACTIVATION, request=7, attempt=1, step=7, criterion=1, devices=[0, 2, 1], levels=[0, 2, 1],
                    start=1, sender=2, payload=x)
    msg.compute_us[0], msg.link_bytes[1] = 1234, x.numel() * 4
    back, shape = parse(msg.header())
    assert shape == (1, 16, 14, 14)
    assert (back.kind, back.request, back.attempt, back.devices, back.levels, back.start, back.sender) == \
           (D.ACTIVATION, 7, 1, [0, 2, 1], [0, 2, 1], 1, 2)
    assert back.compute_us[0] == 1234 and back.link_bytes[1] == x.numel() * 4


@pytest.mark.parametrize("field, value, match", [
    ("magic", 123, "magic"), ("version", 9, "version"), ("kind", 42, "kind"), ("n_segments", 5, "n_segments"),
    ("devices", 7, "devices"), ("levels", 3, "levels"), ("ndim", 0, "dtype=1, ndim=0"),
    ("shape", -4, "shape"), ("start", 9, "start"),
])
def test_malformed_header_is_refused_naming_the_field(field, value, match):
    h = D.Message(D.ACTIVATION, request=0, devices=[0, 1, 2], levels=[0, 0, 0], payload=torch.zeros(1, 1, 28, 28)).header()
    h[D._F[field]] = value
    with pytest.raises(D.ProtocolError, match=match):
        parse(h)


def test_payload_kind_mismatch_and_wrong_header_type_are_refused():
    with pytest.raises(D.ProtocolError, match="carries payload"):
        parse(D.Message(D.RESULT, devices=[0, 1, 2], levels=[0, 0, 0]).header())
    with pytest.raises(D.ProtocolError, match="int64"):
        parse(torch.zeros(D.HEADER, dtype=torch.float32))
    h = D.Message(D.ACTIVATION, devices=[0, 1, 2], levels=[0, 0, 0], payload=torch.zeros(1, 1, 28, 28)).header()
    h[D._F["shape"]:D._F["shape"] + 4] = torch.tensor([1 << 20, 1 << 20, 1, 1])
    with pytest.raises(D.ProtocolError, match="at most"):
        parse(h)


# ----- configuration -------------------------------------------------------------------------------
def test_config_errors_name_the_field(setup):
    bad = config(setup, 3, [{"name": "a", "planner": "teleport"}, {"name": "b", "planner": "nlp", "criterion": "taylor"},
                            {"name": "c", "planner": "fixed", "plan": {"devices": ["d0"], "levels": [0.3]}}],
                 fault={"policy": "a", "device": "d0", "request": 0, "kind": "explode"}, n_requests=-1,
                 checkpoint="nope.pt")
    with pytest.raises(ValueError) as err:
        bad.validate()
    text = str(err.value)
    for expected in ("policies[0].planner='teleport'", "policies[1].criterion='taylor'", "policies[2].plan",
                     "fault.device='d0'", "fault.kind='explode'", "n_requests=-1", "field checkpoint: no file"):
        assert expected in text


def test_launch_refuses_a_folder_holding_a_run(setup, tmp_path):
    (tmp_path / "requests.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="already holds a run"):
        D.launch(config(setup, 3, [{"name": "local", "planner": "local", "criterion": "l1"}]), tmp_path)
    assert (tmp_path / "requests.jsonl").read_text() == "{}\n"


# ----- real processes ------------------------------------------------------------------------------
@needs_real_data
@pytest.mark.parametrize("n_devices, plan", [
    (3, {"devices": ["d1", "d2", "d1"], "levels": [0.25, 0.0, 0.5]}),
    (4, {"devices": ["d1", "d2", "d3"], "levels": [0.5, 0.25, 0.0]}),
])
def test_two_and_three_workers_give_the_single_process_predictions_and_profile_bytes(setup, tmp_path, n_devices, plan):
    cfg = config(setup, n_devices, [{"name": "fixed", "planner": "fixed", "criterion": "lrp", "plan": plan}])
    out = D.launch(cfg, tmp_path, progress=False)
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

    table = D.summarise(out.requests, "pneumoniamnist", profiles=profiles)
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
    out = D.launch(cfg, tmp_path, progress=False)
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
    out = D.launch(cfg, tmp_path, progress=False)
    assert out.returncodes == {0: 0, 1: 0, 2: 0}
    assert "sending the result of request 2 twice" in (tmp_path / "rank2.log").read_text()
    r = out.requests.sort_values("request")
    assert list(r["request"]) == list(range(5))  # one answer accepted per request
    assert list(r["answers"]) == [1, 1, 2, 1, 1]  # the receiver counted the repeat
    s = out.summary["policies"][0]
    assert (s["answered"], s["lost"], s["duplicated"], s["late_discarded"]) == (5, 0, 1, 1)
    assert D.summarise(out.requests, "pneumoniamnist").loc["fixed", "duplicated"] == 1
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
        D.launch(cfg, tmp_path / "run", progress=False, timeout=0.5 if failure == "timeout" else None)
    assert all(gone(p) for p in pids(tmp_path / "run"))


def test_a_worker_refuses_a_malformed_header_and_keeps_serving(setup, tmp_path):
    """This test is rank 0 of a two-device world; rank 1 is a real worker process."""
    cfg = config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}])
    port = D.free_port()
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    log = open(tmp_path / "rank1.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "xaiprune.distributed"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        store = dist.TCPStore("127.0.0.1", port, 2, is_master=True, timeout=dt.timedelta(seconds=60))
        dist.init_process_group("gloo", store=store, rank=0, world_size=2, timeout=dt.timedelta(seconds=60))
        store.set("xaiprune/config", cfg.to_json())
        store.wait(["xaiprune/up/1"], dt.timedelta(seconds=60))
        dims = (2, 3, len(LEVELS), 2)

        bad = D.Message(D.PREPARE, devices=[1, 1, 1], levels=[0, 0, 0]).header()
        bad[D._F["magic"]] = 0
        dist.send(bad, 1, tag=D.TAG_HEADER)
        src, reply = D.receive(*dims)
        assert src == 1 and reply.kind == D.ERROR and reply.error == D.MALFORMED

        bad = D.Message(D.PREPARE, devices=[1, 1, 1], levels=[0, 0, 0]).header()
        bad[D._F["levels"]] = 17  # a level index the profile does not have
        dist.send(bad, 1, tag=D.TAG_HEADER)
        src, reply = D.receive(*dims)
        assert reply.kind == D.ERROR and reply.error == D.MALFORMED

        D.send(D.Message(D.PREPARE, request=5, devices=[1, 1, 1], levels=[2, 1, 0]), 1)
        src, reply = D.receive(*dims)
        assert reply.kind == D.READY and reply.request == 5  # still serving
        D.send(D.Message(D.SHUTDOWN), 1)
        assert proc.wait(timeout=30) == 0
        assert store.check(["xaiprune/bye/1"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "refused a message from rank 0: header field magic" in (tmp_path / "rank1.log").read_text()


def test_bytes_saved_is_zero_when_nothing_crosses_a_link(setup):
    import pandas as pd

    profiles = system.load_profiles(Path(setup["profiles"]))
    local = pd.DataFrame({"policy": "one device", "criterion": "lrp", "logits": [[0.0, 1.0], [1.0, 0.0]],
                          "label": [1, 0], "energy_j": [{"d0": 0.1}] * 2, "latency_ms": [5.0, 6.0],
                          "predicted_latency_ms": [5.0, 5.0], "deadline_ms": [10.0, 10.0], "bytes": [0, 0],
                          "link_bytes": [[0, 0, 0, 0]] * 2, "levels": [[0.0] * 3] * 2, "plan": "p", "attempts": 1,
                          "answers": [1, 3]})
    row = D.summarise(local, "pneumoniamnist", profiles=profiles).loc["one device"]
    assert row["bytes_saved_by_pruning"] == 0.0 and row["acc"] == 1.0 and row["deadline_hit_rate"] == 1.0
    assert row["duplicated"] == 1 and row["replanned"] == 0
