"""A worker (rank r > 0): build segments on PREPARE, run them on ACTIVATION, send the tensor on.

A receiving thread always has a receive posted (gloo sends wait for one), so two peers sending to each
other never block each other, and the main thread serves one message at a time. After forwarding an
activation to another worker it tells the source (PROGRESS), which holds every hop to a deadline.
Bad input never stops a worker: a refused header is answered with ERROR ``MALFORMED``, a tensor its
segment cannot take with ERROR ``REJECTED``, segments that fail with ERROR ``FAILED`` (the last two name
the request and attempt, so the coordinator serves the request again at once), and a peer it cannot
send to with ERROR ``UNREACHABLE``; then it waits for the next message. Fault injection
(:class:`xaiprune.serving.config.RunConfig` ``fault``) happens here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time

import torch

from xaiprune.serving import sockets, wire
from xaiprune.serving.config import RunConfig
from xaiprune.serving.emulation import us
from xaiprune.serving.liveness import Quiet, bye_key, policy_key, simulated_key, start_heartbeat, up_key
from xaiprune.serving.segments import Node, PayloadError


class Fault:
    """The faults of the config that concern this rank (its device, or the peer of a partition)."""

    ONCE = ("rejoin", "duplicate", "bad_header", "bad_shape")  # act once; the others from their request on

    def __init__(self, cfg: RunConfig, node: Node, store=None):
        names = [p["name"] for p in cfg.policies]
        self.node, self.store, self.items, self.starts = node, store, [], {}
        for f in cfg.faults():
            kind = f.get("kind", "kill")
            ends = [f["device"]] + ([f["peer"]] if kind == "partition" else [])
            me = node.scenario.devices[node.device].name
            if me in ends:
                other = [node.order.index(node.scenario.index(e)) for e in ends if e != me]
                self.items.append({**f, "kind": kind, "p": names.index(f["policy"]), "other": other, "done": False,
                                   "peer_end": me != f["device"]})

    def active(self, msg: wire.Message, kind: str) -> dict | None:
        """The fault of this kind that acts on ``msg``, if any (a once-only fault is used up)."""
        for f in self.items:
            if f["kind"] == kind and not f["done"] and msg.policy == f["p"] and self._due(f, msg):
                f["done"] = kind in self.ONCE
                return f
        return None

    def partition(self, msg: wire.Message) -> set[int]:
        """Ranks whose links from here a flag cuts for ``msg`` (a real cut leaves nothing for a flag to do).

        When a partition first acts, the TCP connections to the peer's process are closed both ways
        (:func:`xaiprune.serving.sockets.cut`): every later send over them fails in gloo, for the rest of the run.
        Where there is no such connection to see (the peer on another host), a flag cuts the link for the fault's
        policy instead, and the store records the kind as simulated.
        """
        f = self.active(msg, "partition")
        if f is None:
            return set()
        if f["peer_end"]:  # the device's end closes the connection (both ways) or, failing that, sets the flag
            return set(f["other"]) if self.store.check([simulated_key("partition")]) else set()
        if "how" not in f:
            try:
                closed = sum(sockets.cut(int(self.store.get(up_key(r)).decode())) for r in f["other"])
            except (RuntimeError, ValueError) as exc:  # a peer's pid the run did not write: no real cut
                print(f"rank {self.node.rank}: partition: {exc}", flush=True)
                closed = 0
            f["how"] = "real" if closed else "flag"
            print(f"rank {self.node.rank}: fault injection: partition from rank(s) {f['other']} at request {msg.request}: "
                  + (f"closed {closed} TCP connection(s)" if closed else "no connection to close here: cut by a flag "
                     "(simulated)"), flush=True)
            if not closed:
                self.store.set(simulated_key("partition"), "flag")
        return set(f["other"]) if f["how"] == "flag" else set()

    def _due(self, f: dict, msg: wire.Message) -> bool:
        if "at_s" not in f:
            return msg.request >= f["request"]
        if msg.policy not in self.starts:  # rank 0 wrote it before sending anything of that policy
            self.starts[msg.policy] = float(self.store.get(policy_key(msg.policy)).decode())
        return time.time() >= self.starts[msg.policy] + f["at_s"]


def _receive_loop(node: Node, cfg: RunConfig, inbox: queue.Queue) -> None:
    """Always have a receive posted (gloo sends wait for one), so peers sending to each other never block."""
    while True:
        try:
            src, msg = wire.receive(node.limits, cfg.request_timeout_s)
        except RuntimeError as exc:  # the wait itself failed: say so and wait again (liveness ends a lost cause)
            print(f"rank {node.rank}: receive failed: {str(exc).splitlines()[0][:160]}", flush=True)
            time.sleep(0.5)
            continue
        inbox.put((time.monotonic(), src, msg))


def serve(cfg: RunConfig, rank: int, store, connect) -> int:
    """Serve until SHUTDOWN; returns the exit code (``connect(timeout)``: another connection to the store, for the
    heartbeat)."""
    node = Node(cfg, rank)
    torch.set_num_threads(cfg.threads)
    fault, quiet = Fault(cfg, node, store), Quiet()
    stop = start_heartbeat(connect, rank, cfg.heartbeat_s, quiet)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_receive_loop, args=(node, cfg, inbox), daemon=True, name="receive").start()
    store.set(up_key(rank), str(os.getpid()))  # the pid: a real partition finds its peer's connections by it
    print(f"rank {rank}: device {node.scenario.devices[node.device].name} ready", flush=True)
    rebooting = False
    while True:
        arrived, src, msg = inbox.get()
        if rebooting and time.monotonic() >= quiet.until:
            node.built.clear()
            rebooting = False
            print(f"rank {rank}: fault injection: back after going dark; segments must be built again", flush=True)
        if arrived < quiet.until:  # dark: whatever arrives is lost
            print(f"rank {rank}: dark: dropped a {wire.KINDS.get(getattr(msg, 'kind', 0), 'bad')} message", flush=True)
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
            f = fault.active(msg, "rejoin")
            if f:
                quiet.until, rebooting = time.monotonic() + f.get("down_s", 2.0), True
                print(f"rank {rank}: fault injection: dark for {f.get('down_s', 2.0)} s from request {msg.request} "
                      "(no heartbeat, every message dropped)", flush=True)
                continue
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
    """Run this rank's segments of one request, send the tensor on, tell the source; report what goes wrong."""
    rank = node.rank
    if fault.active(msg, "kill"):
        print(f"rank {rank}: fault injection: dying mid-request {msg.request} (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.active(msg, "hang"):
        print(f"rank {rank}: fault injection: hanging at request {msg.request} (the heartbeat goes on)", flush=True)
        while True:
            time.sleep(3600)
    slow = fault.active(msg, "straggler")
    if slow:
        time.sleep(slow.get("delay_s", 1.0))
    node.emulator.cut = fault.partition(msg)
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
    if fault.active(msg, "bad_shape"):
        print(f"rank {rank}: fault injection: request {msg.request} sent on with a channel fewer", flush=True)
        msg.payload = _one_channel_fewer(msg.payload)
    elif fault.active(msg, "bad_header"):
        print(f"rank {rank}: fault injection: request {msg.request} sent on with level index 10**6", flush=True)
        tamper = _bad_level
    try:
        node.hop(msg, dst, tamper)
        if msg.kind == wire.RESULT and fault.active(msg, "duplicate"):
            print(f"rank {rank}: fault injection: sending the result of request {msg.request} twice", flush=True)
            wire.send(msg, dst, cfg.request_timeout_s)
    except wire.LinkError as exc:  # the next device is gone, or the link to it: tell the coordinator which
        print(f"rank {rank}: send to rank {dst} failed: {exc}", flush=True)
        _error(cfg, rank, msg, wire.UNREACHABLE, dst)
        return
    if msg.kind == wire.ACTIVATION and dst != 0:  # the source holds every hop to a deadline
        _reply(cfg, wire.Message(wire.PROGRESS, request=msg.request, attempt=msg.attempt, policy=msg.policy,
                                 devices=msg.devices, levels=msg.levels, start=msg.start, sender=rank, detail=dst))


def _one_channel_fewer(x: torch.Tensor) -> torch.Tensor:
    """A tensor of the wrong shape that is no larger than the right one (a larger one is refused by its frame)."""
    return x[:, :-1].contiguous() if x.shape[1] > 1 else x[..., :-1].contiguous()


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
