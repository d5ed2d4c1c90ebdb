"""Bad input on real processes: each gives a clear error or a logged rejection, never a hang, never a lost request.

An address that does not answer, workers that never connect, a peer that never joins, a port in use: the
process ends within its connect timeout with a one-line reason. A malformed header or a tensor of the wrong
shape from a peer is refused, the worker keeps serving, and the request is served again.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
import torch
import torch.distributed as dist

from conftest import needs_real_data
from serving_setup import as_rank0, config, gone, pids, process, setup, wait_listening  # noqa: F401 (setup: fixture)
from xaiprune import serving
from xaiprune.pruning import prune
from xaiprune.serving import wire
from xaiprune.serving.launcher import EXIT_STARTUP

LIMITS = wire.Limits(world_size=2, n_segments=3, n_levels=3, n_criteria=2)
WAIT = 90  # s: a generous bound on a process that must end by itself (a hang fails the test)


def finished(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the process did not end within {WAIT} s")


# ----- joining a run -------------------------------------------------------------------------------
def test_a_coordinator_address_that_does_not_answer_ends_the_worker_with_the_reason(tmp_path):
    port = serving.free_port()  # nobody listens there
    proc = process(1, 2, port, tmp_path / "rank1.log", "--connect-timeout", "1")
    assert finished(proc) == EXIT_STARTUP
    assert f"rank 1: no coordinator answered at 127.0.0.1:{port} within 1 s" in (tmp_path / "rank1.log").read_text()


def test_workers_that_never_connect_end_the_coordinator_with_the_reason(setup, tmp_path):
    cfg = config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}])
    (tmp_path / "config.json").write_text(cfg.to_json())
    proc = process(0, 2, serving.free_port(), tmp_path / "rank0.log", "--connect-timeout", "1",
                   "--config", str(tmp_path / "config.json"))
    assert finished(proc) == EXIT_STARTUP
    log = (tmp_path / "rank0.log").read_text()
    assert "rank 0: not every worker reached 127.0.0.1" in log and "WORLD_SIZE=2 processes must be started" in log


def test_a_peer_that_never_joins_the_group_ends_the_coordinator_with_the_reason(setup, tmp_path):
    """Rank 1 (this test) reaches the store but never joins gloo, as a host whose address others cannot reach."""
    cfg = config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}])
    (tmp_path / "config.json").write_text(cfg.to_json())
    port = serving.free_port()
    proc = process(0, 2, port, tmp_path / "rank0.log", "--connect-timeout", "3",
                   "--config", str(tmp_path / "config.json"))
    import datetime as dt

    wait_listening(port, proc)  # then the client joins within rank 0's 3 s, however late rank 0 started
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=dt.timedelta(seconds=60))
    assert finished(proc) == EXIT_STARTUP
    assert "rank 0: could not connect to every other rank within 3 s" in (tmp_path / "rank0.log").read_text()
    del store


def test_a_port_in_use_is_named_and_no_process_is_left(setup, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config(setup, 3, [{"name": "local", "planner": "local", "criterion": "l1"}])
        with pytest.raises(RuntimeError, match=f"rank 0 exited with code {EXIT_STARTUP}") as err:
            serving.launch(cfg, tmp_path, progress=False, port=port, connect_timeout=2, timeout=WAIT, store="tcp")
    assert f"rank 0: MASTER_PORT={port} is already in use on this host" in str(err.value)
    assert all(gone(p) for p in pids(tmp_path))


# ----- bad messages from a peer --------------------------------------------------------------------
def test_a_worker_refuses_malformed_headers_and_keeps_serving(setup, tmp_path):
    cfg = config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}])
    with as_rank0(cfg, tmp_path) as (proc, store):
        bad = wire.Message(wire.PREPARE, devices=[1, 1, 1], levels=[0, 0, 0]).header()
        bad[wire.FIELDS["magic"]] = 0  # a wrong frame: nothing follows it
        wire.send_frame(bad, None, 1, timeout=10)
        src, reply = wire.receive(LIMITS, timeout=10)
        assert src == 1 and reply.kind == wire.ERROR and reply.error == wire.MALFORMED and reply.detail == 0

        bad = wire.Message(wire.ACTIVATION, request=4, devices=[1, 1, 1], levels=[0, 0, 0],
                           payload=torch.zeros(1, 1, 28, 28)).header()
        bad[wire.FIELDS["levels"]] = 17  # a level index the profile does not have; the payload still follows
        wire.send_frame(bad, torch.zeros(1, 1, 28, 28), 1, timeout=10)  # raises LinkError if it is not drained
        src, reply = wire.receive(LIMITS, timeout=10)
        assert reply.kind == wire.ERROR and reply.error == wire.MALFORMED

        wire.send(wire.Message(wire.PREPARE, request=5, devices=[1, 1, 1], levels=[2, 1, 0]), 1, timeout=10)
        src, reply = wire.receive(LIMITS, timeout=10)
        assert reply.kind == wire.READY and reply.request == 5  # still serving
        wire.send(wire.Message(wire.SHUTDOWN), 1, timeout=10)
        assert finished(proc) == 0 and store.check(["xaiprune/bye/1"])
    log = (tmp_path / "rank1.log").read_text()
    assert "refused a message from rank 0: header field magic" in log
    assert "refused a message from rank 0: header field levels=[17, 0, 0]" in log


def test_a_worker_refuses_a_tensor_of_the_wrong_shape_and_keeps_serving(setup, tmp_path):
    cfg = config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}])
    x = torch.randn(1, 1, 28, 28)
    with as_rank0(cfg, tmp_path) as (proc, store):
        plan = dict(devices=[1, 1, 1], levels=[1, 0, 2], criterion=0)
        wire.send(wire.Message(wire.ACTIVATION, request=3, attempt=1, **plan, payload=torch.zeros(1, 2, 28, 28)),
                  1, timeout=10)
        src, reply = wire.receive(LIMITS, timeout=10)
        assert (reply.kind, reply.error, reply.request, reply.attempt) == (wire.ERROR, wire.REJECTED, 3, 1)

        wire.send(wire.Message(wire.ACTIVATION, request=3, attempt=2, **plan, payload=x), 1, timeout=10)
        src, reply = wire.receive(LIMITS, timeout=10)
        assert (reply.kind, reply.request, reply.attempt, reply.start) == (wire.RESULT, 3, 2, 3)
        scores = torch.load(setup["scores"]["l1"], weights_only=True)
        reference = prune.prune_with_scores(setup["model"], dict(zip(setup["model"].segments, [0.25, 0.0, 0.5])),
                                            scores)
        with torch.no_grad():
            assert torch.allclose(reply.payload, reference(x), atol=1e-6, rtol=0)
        wire.send(wire.Message(wire.SHUTDOWN), 1, timeout=10)
        assert finished(proc) == 0
    assert "refused the tensor of rank 0: request 3: segment block1 takes a tensor of shape (1, 1, 28, 28), " \
           "got (1, 2, 28, 28)" in (tmp_path / "rank1.log").read_text()


BAD = {  # policy -> (fault kind, device): one run serves a policy per bad input, so the processes start once
    "bad_shape d1": ("bad_shape", "d1"), "bad_shape d2": ("bad_shape", "d2"),
    "bad_header d1": ("bad_header", "d1"), "bad_header d2": ("bad_header", "d2")}


@pytest.fixture(scope="module")
def bad_run(setup, tmp_path_factory):
    plan = {"devices": ["d1", "d2", "d2"], "levels": [0.0, 0.25, 0.0]}
    folder = tmp_path_factory.mktemp("bad")
    cfg = config(setup, 3, [{"name": name, "planner": "fixed", "criterion": "l1", "plan": plan} for name in BAD],
                 n_requests=4, fault=[{"policy": name, "device": device, "request": 1, "kind": kind}
                                      for name, (kind, device) in BAD.items()])
    return serving.launch(cfg, folder, progress=False, timeout=WAIT)


@needs_real_data
@pytest.mark.parametrize("policy, reason, evidence", [
    # d1 sends d2 an activation with a channel fewer
    ("bad_shape d1", "rank 2 refused the tensor of rank 1",
     ("rank2.log", "refused the tensor of rank 1: request 1: segment block2 takes a tensor of shape")),
    # d2 returns logits of the wrong shape
    ("bad_shape d2", "rank 0 refused the result of rank 2: request 1: a result must be logits of shape (1, 2), "
                     "got (1, 1)", ("rank2.log", "fault injection: request 1 sent on with a channel fewer")),
    # d1 sends d2 a header with a level index out of range (the payload is drained, the link stays up)
    ("bad_header d1", "rank 2 refused a malformed header from rank 1",
     ("rank2.log", "refused a message from rank 1: header field levels=[1000000")),
    # d2 returns the result under such a header
    ("bad_header d2", "rank 0 refused a malformed header from rank 2",
     ("events.jsonl", "header field levels=[1000000")),
])
def test_bad_input_mid_run_is_refused_and_the_request_served_again(bad_run, policy, reason, evidence):
    out = bad_run
    assert out.returncodes == {0: 0, 1: 0, 2: 0}
    r = out.requests[out.requests["policy"] == policy].sort_values("request")
    assert list(r["request"]) == [0, 1, 2, 3] and (r["answers"] == 1).all()  # each answered exactly once
    assert list(r["attempts"]) == [1, 2, 1, 1]  # the refused attempt was sent again at once
    s = next(p for p in out.summary["policies"] if p["policy"] == policy)
    assert (s["answered"], s["failed"], s["lost"], s["duplicated"]) == (4, 0, 0, 0) and out.summary["dead"] == []
    e = out.events[out.events["policy"] == policy]
    replanned = e[e["event"] == "re-planned"]
    assert list(replanned["request"]) == [1] and replanned["reason"].iloc[0] == reason
    assert evidence[1] in (out.folder / evidence[0]).read_text()
