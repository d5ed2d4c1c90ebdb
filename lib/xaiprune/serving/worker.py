"""A worker (rank r > 0): build segments on PREPARE, run them on ACTIVATION, send the tensor on.

Bad input never stops a worker: a refused header is answered with ERROR ``MALFORMED``, a tensor its
segment cannot take with ERROR ``REJECTED``, segments that fail with ERROR ``FAILED`` (the last two name
the request and attempt, so the coordinator serves the request again at once), and a peer it cannot
send to with ERROR ``UNREACHABLE``; then it waits for the next message. Fault injection
(:class:`xaiprune.serving.config.RunConfig` ``fault``) happens here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import torch

from xaiprune.serving import wire
from xaiprune.serving.config import RunConfig
from xaiprune.serving.emulation import us
from xaiprune.serving.liveness import bye_key, start_heartbeat, up_key
from xaiprune.serving.segments import Node, PayloadError


class Fault:
    """The fault this rank injects, if the config's ``fault`` names its device; it acts once."""

    def __init__(self, cfg: RunConfig, node: Node):
        f = cfg.fault
        mine = f is not None and node.scenario.index(f["device"]) == node.device
        self.kind = f.get("kind", "kill") if mine else None
        self.policy = [p["name"] for p in cfg.policies].index(f["policy"]) if mine else -1
        self.request = f["request"] if mine else 0

    def hits(self, msg: wire.Message) -> bool:
        return self.kind is not None and msg.policy == self.policy and msg.request >= self.request


def serve(cfg: RunConfig, rank: int, store, host: str, port: int) -> int:
    """Serve until SHUTDOWN; returns the exit code."""
    node = Node(cfg, rank)
    torch.set_num_threads(cfg.threads)
    fault = Fault(cfg, node)
    stop = start_heartbeat(host, port, rank, cfg.heartbeat_s)
    store.set(up_key(rank), "1")
    print(f"rank {rank}: device {node.scenario.devices[node.device].name} ready", flush=True)
    while True:
        try:
            src, msg = wire.receive(node.limits, cfg.request_timeout_s)
        except RuntimeError as exc:  # the wait itself failed: say so and wait again (liveness ends a lost cause)
            print(f"rank {rank}: receive failed: {str(exc).splitlines()[0][:160]}", flush=True)
            time.sleep(0.5)
            continue
        if isinstance(msg, wire.ProtocolError):
            print(f"rank {rank}: refused a message from rank {src}: {msg}", flush=True)
            _reply(cfg, wire.Message(wire.ERROR, error=wire.MALFORMED, sender=rank, detail=src))
        elif isinstance(msg, wire.LinkError):
            print(f"rank {rank}: {msg}", flush=True)
            _reply(cfg, wire.Message(wire.ERROR, error=wire.UNREACHABLE, sender=rank, detail=src))
        elif msg.kind == wire.SHUTDOWN:
            break
        elif msg.kind == wire.PREPARE:
            start = time.perf_counter()
            node.prepare(msg.criterion, msg.levels, msg.devices)
            _reply(cfg, wire.Message(wire.READY, request=msg.request, attempt=msg.attempt, policy=msg.policy,
                                     sender=rank, devices=msg.devices, levels=msg.levels, criterion=msg.criterion,
                                     extra_us=us(time.perf_counter() - start)))
        elif msg.kind == wire.ACTIVATION:
            activation(cfg, node, src, msg, fault)
        else:
            print(f"rank {rank}: refused a {wire.KINDS[msg.kind]} message from rank {src}: workers take "
                  f"prepare, activation and shutdown", flush=True)
            _reply(cfg, wire.Message(wire.ERROR, request=msg.request, error=wire.MALFORMED, sender=rank, detail=src))
    stop.set()
    store.set(bye_key(rank), "1")
    print(f"rank {rank}: shut down", flush=True)
    return 0


def activation(cfg: RunConfig, node: Node, src: int, msg: wire.Message, fault: Fault) -> None:
    """Run this rank's segments of one request and send the tensor on; report what goes wrong."""
    rank, hit = node.rank, fault.hits(msg)
    if hit and fault.kind == "kill":
        print(f"rank {rank}: fault injection: dying mid-request {msg.request} (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        dst = node.run(msg, msg.payload)
    except PayloadError as exc:
        print(f"rank {rank}: refused the tensor of rank {src}: {exc}", flush=True)
        _error(cfg, rank, msg, wire.REJECTED, src)
        return
    except Exception as exc:  # a segment that cannot run: the request must be served elsewhere
        print(f"rank {rank}: request {msg.request} failed: {type(exc).__name__}: {exc}", flush=True)
        _error(cfg, rank, msg, wire.FAILED, rank)
        return
    tamper = None
    if hit and fault.kind == "bad_shape":
        print(f"rank {rank}: fault injection: request {msg.request} sent on with an extra channel", flush=True)
        msg.payload = torch.cat([msg.payload, msg.payload[:, :1]], dim=1)
        fault.kind = None
    elif hit and fault.kind == "bad_header":
        print(f"rank {rank}: fault injection: request {msg.request} sent on with level index 10**6", flush=True)
        tamper = _bad_level
        fault.kind = None
    try:
        node.hop(msg, dst, tamper)
        if hit and fault.kind == "duplicate" and msg.kind == wire.RESULT:
            print(f"rank {rank}: fault injection: sending the result of request {msg.request} twice", flush=True)
            wire.send(msg, dst, cfg.request_timeout_s)
            fault.kind = None
    except wire.LinkError as exc:  # the next device is gone: tell the coordinator which
        print(f"rank {rank}: send to rank {dst} failed: {exc}", flush=True)
        _error(cfg, rank, msg, wire.UNREACHABLE, dst)


def _bad_level(header: torch.Tensor) -> None:
    header[wire.FIELDS["levels"]] = 10 ** 6


def _error(cfg: RunConfig, rank: int, about: wire.Message, code: int, detail: int) -> None:
    """Tell the coordinator what went wrong with the attempt ``about`` (code: one of :data:`wire.ERRORS`)."""
    _reply(cfg, wire.Message(wire.ERROR, policy=about.policy, request=about.request, attempt=about.attempt,
                             error=code, sender=rank, detail=detail))


def _reply(cfg: RunConfig, msg: wire.Message) -> None:
    """Send to the coordinator; if it is unreachable, the heartbeat thread ends this process."""
    with contextlib.suppress(wire.LinkError):
        wire.send(msg, 0, cfg.request_timeout_s)
