"""The faults a ward really has, on real processes: a worker killed, a worker that hangs while its heartbeat
beats, a straggler, a link partition between two workers, a device that goes dark and comes back, a result sent
twice; and requests pipelined.

One run (one process per device, loopback, emulation off) serves one policy per fault kind, each with its own
fault, so the processes start once. Every check is on counts and events, never on wall times: each request is
answered exactly once or failed with a reason, none is lost, none answered twice, and the planner stops (or
starts again) using the device the fault concerns.
"""

from __future__ import annotations

import pytest

from conftest import needs_real_data
from serving_setup import config, scenario, setup  # noqa: F401 (setup is a fixture)
from xaiprune import serving

N = 90          # requests per policy (enough that some are sent after a straggler is excluded)
AT = 5          # the request at which each fault acts
FIXED = {"devices": ["d1", "d2", "d2"], "levels": [0.0, 0.0, 0.0]}
ON_D3 = {"devices": ["d1", "d3", "d3"], "levels": [0.0, 0.0, 0.0]}
SPREAD = {"devices": ["d1", "d2", "d3"], "levels": [0.0, 0.0, 0.0]}
POLICIES = [
    {"name": "pipelined", "planner": "fixed", "criterion": "l1", "plan": SPREAD},
    {"name": "duplicate", "planner": "fixed", "criterion": "l1", "plan": FIXED},
    {"name": "straggler", "planner": "fixed", "criterion": "l1", "plan": FIXED},
    {"name": "rejoin", "planner": "fixed", "criterion": "l1", "plan": ON_D3},
    {"name": "partition", "planner": "fixed", "criterion": "l1", "plan": SPREAD},  # d2 - d3 stays cut: no plan after
    {"name": "kill", "planner": "fixed", "criterion": "l1", "plan": FIXED},    # crosses it; a killed worker stays dead
    {"name": "hang", "planner": "fixed", "criterion": "l1", "plan": ON_D3},   # last: a hung worker stays hung
]
FAULTS = [
    {"policy": "partition", "device": "d2", "peer": "d3", "request": AT, "kind": "partition"},
    {"policy": "duplicate", "device": "d2", "request": AT, "kind": "duplicate"},
    {"policy": "straggler", "device": "d2", "request": AT, "kind": "straggler", "delay_s": 0.8},
    {"policy": "rejoin", "device": "d3", "at_s": 0.2, "kind": "rejoin", "down_s": 0.7},   # timed, not by request
    {"policy": "kill", "device": "d2", "request": AT, "kind": "kill"},
    {"policy": "hang", "device": "d3", "request": AT, "kind": "hang"},
]


def slow_ward() -> dict:
    """Four devices whose emulated compute paces the run: the small CNN (4 MFLOP) takes ~20 ms on a worker,
    so the rejoin policy still has requests to serve when its device comes back; the source is slower still."""
    ward = scenario(4)
    for d in ward["devices"]:
        d["speed_gflops"] = 0.02 if d["name"] == "d0" else 0.2
    return ward


@pytest.fixture(scope="module")
def run(setup, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    cfg = config(setup, 4, POLICIES, n_requests=N, fault=FAULTS, scenario=slow_ward(), emulate=True,
                 heartbeat_s=0.05, dead_after_s=0.5, hop_margin_s=0.4, window=3)
    return serving.launch(cfg, folder, progress=False, timeout=240)  # every policy with 3 requests in flight


def policy(run, name: str):
    s = next(p for p in run.summary["policies"] if p["policy"] == name)
    r = run.requests[run.requests["policy"] == name]
    e = run.events[run.events["policy"] == name]
    return s, r, e


def exactly_once(s: dict, r) -> None:
    assert s["lost"] == 0 and s["duplicated"] == 0
    assert s["answered_once"] + s["failed"] == N and s["answered"] == s["answered_once"]
    assert all(reason for reason in s["failures"].values())           # every failure carries its reason
    assert sorted(r["request"]) == sorted(set(range(N)) - {int(t) for t in s["failures"]})


@needs_real_data
def test_a_cut_link_is_planned_around_and_loses_nothing(run):
    s, r, e = policy(run, "partition")
    exactly_once(s, r)
    assert s["failed"] == 0 and run.returncodes[0] == 0
    cut = e[e["event"] == "link cut"]
    assert len(cut) >= 1 and sorted(cut["devices"].iloc[0]) == ["d2", "d3"]
    assert "device dead" not in set(e["event"])                         # both ends are alive: only the link is cut
    after = r[r["request"] > AT]
    assert not any(a == "d2" and b == "d3" or a == "d3" and b == "d2"  # no hop over the cut link any more
                   for devices in after["devices"] for a, b in zip(devices, devices[1:]))
    assert (r[r["request"] < AT]["attempts"] == 1).all()
    assert run.summary["simulated_faults"] == []                        # the TCP connection was closed for real
    assert "closed 1 TCP connection(s)" in (run.folder / "rank2.log").read_text()


@needs_real_data
def test_a_straggler_misses_its_deadlines_and_is_planned_around(run):
    s, r, e = policy(run, "straggler")
    exactly_once(s, r)
    assert s["failed"] == 0
    missed = e[(e["event"] == "missed hop deadline") & (e["device"] == "d2")]
    assert len(missed) >= 2                                             # repeated misses before it is excluded
    assert list(missed["strikes"].iloc[:2]) == [1, 2]
    excluded = e[(e["event"] == "device excluded") & (e["device"] == "d2")]
    assert len(excluded) == 1 and "device dead" not in set(e["event"])  # its heartbeat never stopped
    later = r[r["sent_s"] > excluded["t_s"].iloc[0]]
    assert len(later) > 0 and not any("d2" in d for d in later["devices"])
    assert s["received_twice"] >= 1                                     # its late answers arrived and were discarded


@needs_real_data
def test_a_device_that_goes_dark_is_declared_dead_then_used_again_when_it_rejoins(run):
    """The fault is timed (0.2 s into the policy), not tied to a request."""
    s, r, e = policy(run, "rejoin")
    exactly_once(s, r)
    assert s["failed"] == 0
    d3 = e[e["device"] == "d3"]
    assert list(d3["event"][d3["event"].isin(["device dead", "device rejoined"])]) == ["device dead", "device rejoined"]
    back = d3[d3["event"] == "device rejoined"]["t_s"].iloc[0]
    gone = d3[d3["event"] == "device dead"]["t_s"].iloc[0]
    while_dead = r[(r["sent_s"] > gone) & (r["answered_s"] < back)]
    assert not any("d3" in d for d in while_dead["devices"])
    assert any("d3" in d for d in r[r["sent_s"] > back]["devices"])    # the planner uses it again
    assert "d3" not in run.summary["dead"]
    assert r[r["answered_s"] < 0.2]["attempts"].max() == 1 and gone > 0.2           # nothing happened before 0.2 s


@needs_real_data
def test_a_hung_worker_whose_heartbeat_beats_is_caught_by_the_hop_deadline(run):
    s, r, e = policy(run, "hang")
    exactly_once(s, r)
    assert s["failed"] == 0
    assert "device dead" not in set(e["event"])                         # the heartbeat alone never tells
    excluded = e[(e["event"] == "device excluded") & (e["device"] == "d3")]
    assert len(excluded) == 1
    later = r[r["sent_s"] > excluded["t_s"].iloc[0]]
    assert len(later) > 0 and not any("d3" in d for d in later["devices"])
    assert s["received_twice"] == 0                                     # a hung worker answers nothing late
    assert "hanging at request" in (run.folder / "rank3.log").read_text()


@needs_real_data
def test_pipelined_requests_overlap_and_each_is_answered_once(run):
    s, r, e = policy(run, "pipelined")
    exactly_once(s, r)
    assert s["failed"] == 0 and (r["attempts"] == 1).all()
    spans = r.sort_values("sent_s")[["sent_s", "answered_s"]].to_numpy()
    overlapping = sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert overlapping > 0                                              # a request left before the previous one was answered


@needs_real_data
def test_a_worker_killed_mid_run_loses_no_request_and_is_never_planned_on_again(run):
    s, r, e = policy(run, "kill")
    exactly_once(s, r)
    assert s["failed"] == 0 and s["received_twice"] == 0
    assert run.returncodes[2] == -9 and run.summary["dead"] == ["d2"]     # it SIGKILLed itself
    dead = e[(e["event"] == "device dead") & (e["device"] == "d2")]
    assert len(dead) == 1   # by its silence at a hop deadline, its heartbeat, or a send to it that failed
    again = r[r["attempts"] > 1]
    assert AT in set(again["request"]) and (r[r["request"] < AT]["attempts"] == 1).all()
    # a re-planned request's latency runs from its first send, so it carries the detection (unless it was re-planned
    # before it was ever sent: a PREPARE to the dead rank failed)
    assert (again["latency_ms"] >= again["attempt_latency_ms"]).all()
    assert (again["latency_ms"] > again["attempt_latency_ms"]).any()
    assert not any("d2" in d for d in r[r["sent_s"] > dead["t_s"].iloc[0]]["devices"])


@needs_real_data
def test_a_result_sent_twice_is_counted_at_the_receiver_and_used_once(run):
    s, r, e = policy(run, "duplicate")
    exactly_once(s, r)
    assert "sending the result of request 5 twice" in (run.folder / "rank2.log").read_text()
    answers = dict(zip(r["request"], r["answers"]))
    assert answers[AT] == 2 and all(a == 1 for t, a in answers.items() if t != AT)   # the receiver counted the repeat
    assert (s["answered_once"], s["duplicated"], s["received_twice"], s["late_discarded"]) == (N, 0, 1, 1)
    table = serving.summarise(r, "pneumoniamnist").loc["duplicate"]
    assert (table["received_twice"], table["duplicated"]) == (1, 0)
    discarded = e[e["event"] == "discarded"]
    assert list(discarded["request"]) == [AT] and list(discarded["message"]) == ["result"]
