"""The serving system is safe to run: every key and message needs the run's secret, and no peer can make a process
allocate more than the largest tensor a plan sends. That a launched run listens on loopback only is checked in
``test_serving_runs.py``, on its real runs."""

from __future__ import annotations

import datetime as dt
import os
import socket

import pytest
import torch
import torch.distributed as dist

from serving_setup import TOKEN, as_rank0, config, process, setup  # noqa: F401 (setup: fixture)
from xaiprune import serving
from xaiprune.serving import sockets, transport, wire
from xaiprune.serving.launcher import EXIT_STARTUP
from xaiprune.serving.segments import Node

LIMITS = wire.Limits(world_size=2, n_segments=3, n_levels=3, n_criteria=2)
WAIT = 90


def test_listening_sockets_are_read_with_their_address():
    with socket.socket() as lo, socket.socket() as anywhere:
        lo.bind(("127.0.0.1", 0))
        lo.listen()
        anywhere.bind(("0.0.0.0", 0))
        anywhere.listen()
        seen = sockets.listening([os.getpid()])
        assert f"127.0.0.1:{lo.getsockname()[1]}" in seen and f"0.0.0.0:{anywhere.getsockname()[1]}" in seen
    assert sockets.is_loopback("127.0.0.1:80") and sockets.is_loopback("::1:80") and not sockets.is_loopback("0.0.0.0:80")
    row = "  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1"
    assert sockets.listening_table("header\n" + row) == {4242: "127.0.0.1:8080"}


def test_a_process_with_another_token_is_refused_with_the_reason(tmp_path):
    port = serving.free_port()
    proc = process(1, 2, port, tmp_path / "rank1.log", "--connect-timeout", "30", token=transport.new_token())
    try:
        raw = transport.open_store("127.0.0.1", port, 2, 0, 60, TOKEN)  # returns once the worker connected
        assert proc.wait(timeout=WAIT) == EXIT_STARTUP
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "rank1.log").read_text()
    assert "rank 1: refused by the run at 127.0.0.1" in log and "XAIPRUNE_TOKEN is not the run's" in log
    del raw


def test_a_value_written_without_the_secret_is_refused_even_where_the_key_can_be_listed(tmp_path, capsys):
    """A TCP store lists its keys to any client, so key names are no secret: the values carry the run's code."""
    port = serving.free_port()
    server = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=dt.timedelta(seconds=10),
                           master_listen_fd=transport.listening_socket("127.0.0.1", port))
    run = transport.SignedStore.of(dist.PrefixStore(transport.prefix(TOKEN), server), TOKEN)
    run.set("xaiprune/config", "{}")
    intruder = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=dt.timedelta(seconds=10),
                             wait_for_workers=False)
    name = next(k for k in intruder.list_keys() if k.endswith("xaiprune/config"))
    assert run.get("xaiprune/config") == b"{}" and run.check(["xaiprune/config"])
    intruder.set(name, b'{"policies": []}')                      # a forged config under the run's own key
    intruder.set(name.replace("config", "up/1"), b"1")           # and a forged "up" mark
    assert not run.check(["xaiprune/config"]) and not run.check(["xaiprune/up/1"])
    with pytest.raises(transport.StoreRefused, match="store key xaiprune/config: not written with this run's secret"):
        run.get("xaiprune/config")
    assert "refused store key xaiprune/config" in capsys.readouterr().out


def test_the_file_store_of_a_run_on_one_host_must_be_private(tmp_path):
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    with pytest.raises(transport.StartupError, match="XAIPRUNE_STORE=.*others cannot open"):
        transport.open_store("127.0.0.1", 0, 1, 0, 5, TOKEN, store_file=str(open_folder / "store"))
    private = transport.private_store()
    assert private.parent.stat().st_mode & 0o777 == 0o700
    private.parent.rmdir()


def test_gloo_is_bound_to_loopback_and_another_interface_is_refused():
    lo = transport.loopback_interface()
    environ = {}
    transport.bind_gloo("127.0.0.1", environ)
    assert environ == {"GLOO_SOCKET_IFNAME": lo}
    with pytest.raises(transport.StartupError, match="GLOO_SOCKET_IFNAME=eth9 but the run listens on 127.0.0.1"):
        transport.bind_gloo("127.0.0.1", {"GLOO_SOCKET_IFNAME": "eth9"})
    assert sockets.is_loopback_host("::1") and sockets.is_loopback_host("localhost")
    assert not sockets.is_loopback_host("10.0.0.1")


def test_a_process_without_a_token_is_told_the_variable():
    for environ in ({}, {transport.TOKEN_ENV: "short"}):
        with pytest.raises(transport.StartupError, match="XAIPRUNE_TOKEN is (not set|shorter than 16 characters)"):
            transport.run_token(environ)
    assert transport.run_token({transport.TOKEN_ENV: TOKEN}) == TOKEN


def test_a_message_signed_with_another_key_is_refused_logged_and_the_worker_keeps_serving(setup, tmp_path):
    cfg = config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}])
    run_key = transport.derive(TOKEN, "wire")
    with as_rank0(cfg, tmp_path) as (proc, store):
        wire.set_key(transport.derive(transport.new_token(), "wire"))  # an intruder's messages
        wire.send(wire.Message(wire.PREPARE, request=5, devices=[1, 1, 1], levels=[0, 0, 0]), 1, timeout=10)
        wire.set_key(run_key)
        src, reply = wire.receive(LIMITS, timeout=10)
        assert reply.kind == wire.ERROR and reply.error == wire.MALFORMED
        wire.send(wire.Message(wire.PREPARE, request=6, devices=[1, 1, 1], levels=[0, 0, 0]), 1, timeout=10)
        src, reply = wire.receive(LIMITS, timeout=10)
        assert reply.kind == wire.READY and reply.request == 6
        wire.send(wire.Message(wire.SHUTDOWN), 1, timeout=10)
        assert proc.wait(timeout=WAIT) == 0
    assert "refused a message from rank 0: header field code: not signed with this run's key" in \
        (tmp_path / "rank1.log").read_text()


def test_a_message_altered_on_the_way_is_refused():
    wire.set_key(b"k" * 32)
    x = torch.randn(1, 2, 4, 4)
    h = wire.Message(wire.ACTIVATION, devices=[1], levels=[0], payload=x).header()
    wire.sign(h, x)
    wire.verify(h, x)
    for header, payload in ((h, x + 1e-3), (h.clone().index_fill_(0, torch.tensor([wire.FIELDS["request"]]), 9), x)):
        with pytest.raises(wire.ProtocolError, match="header field code"):
            wire.verify(header, payload)


def test_a_payload_larger_than_the_largest_tensor_of_the_run_is_refused_by_its_frame(setup):
    node = Node(config(setup, 2, [{"name": "local", "planner": "local", "criterion": "l1"}]), 1)
    with torch.inference_mode():
        x, sizes = torch.zeros(1, 1, 28, 28), [28 * 28]
        for name in node.names:
            x = node.base.segments[name](x)
            sizes.append(x.numel())
    assert node.max_payload == max(sizes) == node.limits.max_payload
    h = wire.Message(wire.ACTIVATION, devices=[1, 1, 1], levels=[0, 0, 0], payload=torch.zeros(max(sizes) + 1)).header()
    with pytest.raises(wire.ProtocolError, match=f"at most {max(sizes)} elements"):
        wire.Message.frame(h, node.max_payload)
    ok = wire.Message(wire.ACTIVATION, devices=[1, 1, 1], levels=[0, 0, 0], payload=torch.zeros(max(sizes))).header()
    assert wire.Message.frame(ok, node.max_payload) == (max(sizes),)
