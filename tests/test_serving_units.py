"""Serving without processes: the wire format, the config checks, plan checks and re-planning, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from serving_setup import config, scenario, setup  # noqa: F401 (setup is a fixture)
from xaiprune import serving
from xaiprune.planning import system
from xaiprune.serving import planning, wire
from xaiprune.serving.records import Ledger

LIMITS = wire.Limits(world_size=3, n_segments=3, n_levels=3, n_criteria=2)


# ----- wire format ---------------------------------------------------------------------------------
def test_header_round_trip_carries_plan_timings_and_payload_shape():
    x = torch.randn(1, 16, 14, 14)
    msg = wire.Message(wire.ACTIVATION, request=7, attempt=1, step=7, criterion=1, devices=[0, 2, 1],
                       levels=[0, 2, 1], start=1, sender=2, payload=x)
    msg.compute_us[0], msg.link_bytes[1] = 1234, x.numel() * 4
    back, shape = wire.Message.parse(msg.header(), LIMITS)
    assert shape == (1, 16, 14, 14)
    assert (back.kind, back.request, back.attempt, back.devices, back.levels, back.start, back.sender) == \
           (wire.ACTIVATION, 7, 1, [0, 2, 1], [0, 2, 1], 1, 2)
    assert back.compute_us[0] == 1234 and back.link_bytes[1] == x.numel() * 4


def activation_header() -> torch.Tensor:
    return wire.Message(wire.ACTIVATION, request=0, devices=[0, 1, 2], levels=[0, 0, 0],
                        payload=torch.zeros(1, 1, 28, 28)).header()


@pytest.mark.parametrize("field, value, match", [
    ("magic", 123, "magic"), ("version", 9, "version"), ("kind", 42, "kind"), ("n_segments", 5, "n_segments"),
    ("devices", 7, "devices"), ("levels", 3, "levels"), ("ndim", 0, "dtype=1, ndim=0"),
    ("shape", -4, "shape"), ("start", 9, "start"),
])
def test_malformed_header_is_refused_naming_the_field(field, value, match):
    h = activation_header()
    h[wire.FIELDS[field]] = value
    with pytest.raises(wire.ProtocolError, match=match):
        wire.Message.parse(h, LIMITS)


@pytest.mark.parametrize("field, value, frame_ok", [
    ("levels", 3, True), ("devices", 7, True), ("kind", 42, True), ("start", 9, True),   # content: payload is read
    ("magic", 123, False), ("version", 9, False), ("shape", -4, False), ("ndim", 0, False),  # frame: nothing is read
])
def test_a_refused_header_whose_frame_is_right_still_announces_its_payload(field, value, frame_ok):
    """The receiver drains the payload of a header refused for its content, so the sender's send completes."""
    h = activation_header()
    h[wire.FIELDS[field]] = value
    if frame_ok:
        assert wire.Message.frame(h) == (1, 1, 28, 28)
    else:
        with pytest.raises(wire.ProtocolError):
            wire.Message.frame(h)


def test_payload_kind_mismatch_and_wrong_header_type_are_refused():
    with pytest.raises(wire.ProtocolError, match="carries payload"):
        wire.Message.parse(wire.Message(wire.RESULT, devices=[0, 1, 2], levels=[0, 0, 0]).header(), LIMITS)
    with pytest.raises(wire.ProtocolError, match="int64"):
        wire.Message.parse(torch.zeros(wire.HEADER, dtype=torch.float32), LIMITS)
    h = activation_header()
    h[wire.FIELDS["shape"]:wire.FIELDS["shape"] + 4] = torch.tensor([1 << 20, 1 << 20, 1, 1])
    with pytest.raises(wire.ProtocolError, match="at most"):
        wire.Message.parse(h, LIMITS)


# ----- configuration -------------------------------------------------------------------------------
def test_config_errors_name_the_field(setup):
    bad = config(setup, 3, [{"name": "a", "planner": "teleport"}, {"name": "b", "planner": "nlp", "criterion": "taylor"},
                            {"name": "c", "planner": "fixed", "plan": {"devices": ["d0"], "levels": [0.3]}},
                            {"name": "d", "planner": "fixed", "plan": {"devices": ["d1", "d9", "d2"],
                                                                       "levels": [0.0, 0.0, 0.0]}}],
                 fault={"policy": "a", "device": "d0", "request": 0, "kind": "explode"}, n_requests=-1,
                 checkpoint="nope.pt", max_attempts=0)
    with pytest.raises(ValueError) as err:
        bad.validate()
    text = str(err.value)
    for expected in ("policies[0].planner='teleport'", "policies[1].criterion='taylor'", "policies[2].plan",
                     "policies[3].plan names devices ['d9'] the scenario does not have", "fault.device='d0'",
                     "fault.kind='explode'", "n_requests=-1", "field checkpoint: no file", "max_attempts=0"):
        assert expected in text
    assert "policies[3].plan={" not in text  # the right length and levels: only the missing device is named


def test_launch_refuses_a_folder_holding_a_run(setup, tmp_path):
    (tmp_path / "requests.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="already holds a run"):
        serving.launch(config(setup, 3, [{"name": "local", "planner": "local", "criterion": "l1"}]), tmp_path)
    assert (tmp_path / "requests.jsonl").read_text() == "{}\n"


# ----- planning ------------------------------------------------------------------------------------
def planner(setup, choose, n_devices: int = 3) -> planning.Planner:
    ward = system.parse_scenario(scenario(n_devices))
    profiles = system.load_profiles(Path(setup["profiles"]))
    return planning.Planner(ward, profiles, {"name": "p", "planner": "nlp"}, list(range(n_devices)), None, 5,
                            choose=choose)


def test_a_plan_naming_a_missing_device_is_replaced_by_the_optimum_and_says_why(setup):
    p = planner(setup, lambda env, obs: env.action_of(system.Plan([1, 7, 2], [0, 0, 5])))
    plan, how, _, problems = p.decide()
    assert how == "fallback: optimum"
    assert problems == ["segment block2 on device index 7: the ward has 3 devices",
                        "segment block3 at level index 5: 3 levels were profiled"]
    assert planning.check_plan(plan, p.conditions(), p.profiles) == [] and plan.devices != [1, 7, 2]
    good = system.Plan([1, 2, 2], [0, 1, 0])
    assert planning.Planner(p.scenario, p.profiles, {}, [0, 1, 2], None, 5,
                            choose=lambda env, obs: env.action_of(good)).decide()[:2] == (good, "policy")


def test_a_dead_device_is_never_planned_again(setup):
    p = planner(setup, lambda env, obs: env.action_of(system.Plan([1, 2, 2], [0, 0, 0])))
    assert p.decide()[0].devices == [1, 2, 2]
    plan, how, _, problems = p.decide(dead={2})
    assert how == "fallback: optimum" and 2 not in plan.devices
    assert problems == [f"segment {s} on d2, which is dead or unavailable" for s in ("block2", "block3")]
    p.step(plan)
    assert 2 not in p.decide()[0].devices and not p.conditions().devices[2].available


# ----- records ---------------------------------------------------------------------------------------
def test_failed_requests_are_reported_apart_from_lost_ones(tmp_path):
    ledger = Ledger(tmp_path / "requests.jsonl")
    ledger.open(0)
    for t in (0, 1, 3):
        ledger.received(0, t)
        ledger.accept(0, {"request": t})
    ledger.received(0, 3)                         # a repeat: received twice, discarded
    ledger.fail(0, 2, "ranks [2] dead")
    s = ledger.summary(0, "p", 5, [])             # request 4: neither answered nor failed
    assert (s["answered"], s["answered_once"], s["failed"], s["lost"], s["duplicated"], s["received_twice"],
            s["late_discarded"]) == (3, 3, 1, 1, 0, 1, 1)
    assert s["failures"] == {"2": "ranks [2] dead"}
    ledger.write()
    rows = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [r["answers"] for r in rows] == [1, 1, 2]
    ledger.accept(0, {"request": 1})              # a request answered twice is counted, whatever its receipts
    s = ledger.summary(0, "p", 5, [])
    assert (s["answered"], s["answered_once"], s["duplicated"], s["late_discarded"]) == (3, 2, 1, 0)


def test_bytes_saved_is_zero_when_nothing_crosses_a_link(setup):
    profiles = system.load_profiles(Path(setup["profiles"]))
    local = pd.DataFrame({"policy": "one device", "criterion": "lrp", "logits": [[0.0, 1.0], [1.0, 0.0]],
                          "label": [1, 0], "energy_j": [{"d0": 0.1}] * 2, "latency_ms": [5.0, 6.0],
                          "predicted_latency_ms": [5.0, 5.0], "deadline_ms": [10.0, 10.0], "bytes": [0, 0],
                          "link_bytes": [[0, 0, 0, 0]] * 2, "levels": [[0.0] * 3] * 2, "plan": "p", "attempts": 1,
                          "answers": [1, 3]})
    row = serving.summarise(local, "pneumoniamnist", profiles=profiles).loc["one device"]
    assert row["bytes_saved_by_pruning"] == 0.0 and row["acc"] == 1.0 and row["deadline_hit_rate"] == 1.0
    assert row["received_twice"] == 1 and row["duplicated"] == 0 and row["replanned"] == 0
    assert np.isclose(serving.unpruned_bytes([784 * 4, 0, 0, 8], profiles),
                      profiles.input_bytes + profiles.out_bytes[2, 0])


# ----- what the planner knows: the estimate, the oracle, cut links, devices back -----------------------
def test_the_estimate_is_an_ewma_of_measured_bandwidth_from_a_nominal_prior():
    from xaiprune.planning.estimation import CUT, LinkEstimator

    ward = system.parse_scenario(scenario(3))          # 50 Mbit/s = 6.25e6 B/s on every link, no latency
    est = LinkEstimator(ward, alpha=0.5)
    assert (est.multipliers() == 1).all()               # the prior: nominal bandwidth
    est.observe(0, 1, 6.25e5, 0.2)                      # measured at half the nominal rate
    est.observe(0, 1, 6.25e5, 0.2)
    m = est.multipliers()
    assert m[0, 1] == pytest.approx(0.625) and m[1, 0] == 1 and m[0, 2] == 1   # 1 -> 0.75 -> 0.625; others untouched
    est.observe_route([0, 2, 2, 0], [100, 0, 6.25e4], [0.0, 0.0, 0.1])     # an unused hop (0 bytes) says nothing
    assert est.multipliers()[2, 2] == 1 and est.multipliers()[2, 0] == pytest.approx(0.55)
    est.cut(0, 1)
    est.observe(0, 1, 6.25e5, 0.1)
    assert est.multipliers()[0, 1] == CUT               # a cut link stays cut


def test_the_oracle_reads_the_trace_and_the_estimate_only_what_was_measured(setup):
    ward = system.parse_scenario(scenario(3))
    profiles = system.load_profiles(Path(setup["profiles"]))
    trace = np.stack([np.full((3, 3), 1.0), np.full((3, 3), 0.1)])
    oracle = planning.Planner(ward, profiles, {"name": "o", "planner": "nlp", "view": "oracle"}, [0, 1, 2], trace, 4)
    estimate = planning.Planner(ward, profiles, {"name": "e", "planner": "nlp"}, [0, 1, 2], trace, 4)
    assert (oracle.multipliers(1) == 0.1).all() and (estimate.multipliers(1) == 1).all()
    assert estimate.truth(1).bandwidth[0, 1] == pytest.approx(0.1 * ward.bandwidth[0, 1])   # predictions use the truth
    estimate.observe(system.Plan([1, 1, 1], [0, 0, 0]), [1000, 0, 0, 8], [1600, 0, 0, 1])  # 1000 B in 1.6 ms on 0 -> 1
    assert estimate.multipliers(1)[0, 1] == pytest.approx(0.5 + 0.5 * 1000 / 1.6e-3 / ward.bandwidth[0, 1])


def test_a_plan_over_a_cut_link_is_replaced_and_a_device_back_is_planned_on_again(setup):
    p = planner(setup, lambda env, obs: env.action_of(system.Plan([1, 2, 2], [0, 0, 0])))
    p.cut_link(1, 2)
    plan, how, _, problems = p.decide()
    assert how == "fallback: optimum" and problems == ["link d1 -> d2 is cut"]
    route = [0, *plan.devices, 0]
    assert not {(1, 2), (2, 1)} & set(zip(route, route[1:]))
    p.lose({1})
    assert not p.conditions().devices[1].available and p.decide()[0].devices.count(1) == 0
    p.regain(1)
    assert p.conditions().devices[1].available and 1 not in p.excluded
    assert p.decide(avoid={1})[0].devices.count(1) == 0 and 1 not in p.excluded   # avoided this time only


# ----- the per-hop deadline ----------------------------------------------------------------------------
def flight(holder: int, at: int, since: float, hops=(0.1, 0.2, 0.3), devices=(1, 2, 2)) -> "Flight":
    from xaiprune.serving.flights import Flight

    msg = wire.Message(wire.ACTIVATION, request=0, devices=list(devices), levels=[0, 0, 0])
    f = Flight(0, system.Plan(list(devices), [0, 0, 0]), "policy", msg, None, list(hops), 0.0)
    f.holder, f.at, f.since = holder, at, since
    return f


def test_a_hop_deadline_covers_the_holders_run_of_segments_and_restarts_with_its_progress():
    from xaiprune.serving.flights import late_holders

    f = flight(holder=2, at=1, since=10.0)                 # rank 2 runs segments 1 and 2: 0.5 s expected
    assert f.allowance(3.0, 0.5) == pytest.approx(3 * 0.5 + 0.5)
    assert late_holders([f], {}, 3.0, 0.5, now=11.9) == {}
    assert late_holders([f], {}, 3.0, 0.5, now=12.1) == {2: [f]}
    assert late_holders([f], {2: 11.0}, 3.0, 0.5, now=12.1) == {}       # it made progress at 11.0: a queue, not a hang
    g = flight(holder=1, at=0, since=0.0)
    g.awaiting = {2}                                        # rank 2 is building segments for another request
    assert 2 not in late_holders([f, g], {}, 3.0, 0.5, now=20.0)
    assert f.ahead() == {2} and g.ahead() == {1, 2}


def test_a_malformed_message_that_overtakes_the_progress_before_it_still_has_its_attempt_served_again():
    """d1 -> d2 -> d2: rank 2's malformed result can reach the source before rank 1's PROGRESS (no order between
    senders), while the source still has rank 1 as the holder; the attempt must be served again at once."""
    from collections import deque

    from xaiprune.serving.dispatch import Dispatch

    class Source(Dispatch):
        def __init__(self, flights):
            self.flights, self.redo, self.events = {f.request: f for f in flights}, deque(), []

        def event(self, what, **detail):
            self.events.append(what)

    f = flight(holder=1, at=0, since=0.0)                   # its PROGRESS (to rank 2) has not arrived yet
    other = flight(holder=1, at=0, since=0.0, devices=(1, 1, 1))
    other.request = other.msg.request = 1                  # rank 2 has no part in it
    source = Source([f, other])
    source._handle(2, wire.ProtocolError("header field levels=[1000000, 0, 0]"))
    assert source.events == ["malformed message"]
    assert list(source.redo) == [(0, 0, "rank 0 refused a malformed header from rank 2", set())]
    source.redo.clear()                                    # a worker's refusal, before the PROGRESS of the sender
    g = flight(holder=1, at=0, since=0.0, devices=(1, 2, 3))
    source = Source([g])
    source._handle(3, wire.Message(wire.ERROR, error=wire.MALFORMED, sender=3, detail=2))
    assert [r[:3] for r in source.redo] == [(0, 0, "rank 3 refused a malformed header from rank 2")]


def test_config_checks_every_fault_kind_and_the_window(setup):
    bad = config(setup, 3, [{"name": "a", "planner": "nlp", "window": 0, "view": "psychic"}],
                 fault=[{"policy": "a", "device": "d1", "request": 0, "kind": "partition"},
                        {"policy": "a", "device": "d1", "request": 0, "kind": "straggler", "delay_s": -1},
                        {"policy": "a", "device": "d2", "request": 0, "kind": "rejoin", "down_s": 2, "when": 3},
                        {"policy": "a", "device": "d2", "request": 0, "at_s": 1.0, "kind": "hang"}],
                 window=0, strikes=0, ewma=1.5)
    with pytest.raises(ValueError) as err:
        bad.validate()
    text = str(err.value)
    for expected in ("policies[0].window=0", "policies[0].view='psychic'", "fault[0].peer=None",
                     "fault[1].delay_s=-1", "fault[2]: unknown keys ['when']",
                     "fault[3]: expected a request index 'request' or a time 'at_s', one of them", "window=0",
                     "strikes=0", "ewma=1.5"):
        assert expected in text
    good = config(setup, 3, [{"name": "a", "planner": "nlp"}],
                  fault=[{"policy": "a", "device": d, "request": 1, "kind": k} for d, k in (("d1", "hang"), ("d2", "kill"))])
    assert good.validate().faults()[1]["kind"] == "kill"


def test_a_faults_outcome_counts_its_requests_and_bounds_the_recovery():
    requests = pd.DataFrame({"policy": "rejoin", "request": [0, 1, 2, 3], "attempts": [1, 2, 1, 1],
                             "latency_ms": [20.0, 900.0, 30.0, 25.0], "sent_s": [0.0, 0.1, 1.0, 2.0],
                             "devices": [["d2"], ["d1"], ["d1"], ["d2"]]})
    events = pd.DataFrame({"policy": "rejoin", "event": ["device dead", "device rejoined"], "device": ["d2", "d2"],
                           "t_s": [0.6, 1.5]})
    summary = {"requests": 5, "answered_once": 4, "failed": 1, "failures": {"4": "ranks [2] dead"}, "lost": 0,
               "duplicated": 0, "received_twice": 0}
    out = serving.fault_outcome(summary, requests, events, {"policy": "rejoin", "device": "d2", "request": 1,
                                                            "kind": "rejoin"})
    assert (out["answered_once"], out["failed"], out["failure_reasons"], out["replanned"]) == (4, 1, ["ranks [2] dead"], 1)
    assert out["recovery_s"] == pytest.approx(0.9) and out["triggered"] and out["rejoined"] and out["used_again"]
    quiet = serving.fault_outcome(summary, requests.assign(attempts=1), events.iloc[:0],
                                  {"policy": "rejoin", "device": "d2", "request": 1, "kind": "hang"})
    assert not quiet["triggered"] and quiet["recovery_s"] == 0.0   # nothing shows the fault: it never acted
    hang = {"policy": "rejoin", "device": "d2", "request": 1, "kind": "hang"}
    spared = pd.DataFrame({"policy": "rejoin", "event": ["re-planned"], "reason": ["timed out"], "t_s": [5.0]})
    assert serving.fault_outcome(summary, requests, spared, hang)["triggered"]  # a hung rank that still owed a READY
    other = spared.assign(reason="rank 1 could not send to rank 2")
    assert not serving.fault_outcome(summary, requests, other, hang)["triggered"]


def test_a_late_result_is_discarded_but_still_teaches_the_link_estimate():
    """A plan over a link that has faded far below the estimate times out on every attempt; its answers come too
    late to be used, but each one measured the links it crossed, so the estimate must learn from them, or the
    planner keeps choosing the same plan."""
    from types import SimpleNamespace

    from xaiprune.planning.system import Plan
    from xaiprune.serving.dispatch import Dispatch

    seen = []

    class Source(Dispatch):
        def __init__(self):
            self.flights, self.events, self.order = {}, [], [0, 2, 1]  # rank -> device index
            self.planner = SimpleNamespace(observe=lambda plan, b, us: seen.append((plan, list(b), list(us))))
            self.node = SimpleNamespace(check_result=lambda msg: None)
            self.ledger = SimpleNamespace(received=lambda policy, request: None)
            self.observed = set()

        def _seen(self, rank, msg=None, in_time=False):
            pass

        def event(self, what, **detail):
            self.events.append(what)

    source = Source()
    late = wire.Message(wire.RESULT, request=7, attempt=0, devices=[1, 2], levels=[0, 1], link_bytes=[100, 200, 8],
                        link_us=[10, 4_500_000, 5])
    source._handle(2, late)
    assert source.events == ["discarded"]
    assert seen == [(Plan([2, 1], [0, 1]), [100, 200, 8], [10, 4_500_000, 5])]
    source._handle(2, late)  # the same result again (sent twice): discarded, and its hops not counted twice
    assert source.events == ["discarded", "discarded"] and len(seen) == 1


def test_a_rejoined_device_owes_nothing_and_is_planned_on_again():
    from types import SimpleNamespace

    from xaiprune.serving.dispatch import Dispatch

    events, regained = [], []
    owed = {(0, 5, 1): SimpleNamespace(holder=3), (0, 6, 1): SimpleNamespace(holder=2)}
    coordinator = SimpleNamespace(held={3: "segments"}, owed=owed, suspect={3, 2}, strikes={3: 2},
                                  event=lambda kind, **kw: events.append(kind), name=lambda r: f"d{r}",
                                  planner=SimpleNamespace(regain=regained.append))
    Dispatch._rejoined(coordinator, 3)
    assert coordinator.suspect == {2} and set(coordinator.owed) == {(0, 6, 1)}, "it rebooted: what it held is gone"
    assert coordinator.held == {} and coordinator.strikes[3] == 0 and regained == [3] and events == ["device rejoined"]
