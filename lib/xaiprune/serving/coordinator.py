"""The coordinator (rank 0, the source device): plans, sends and collects every request.

For each request it asks the policy's :class:`~xaiprune.serving.planning.Planner` for a plan, makes
every rank of the plan hold its segments (PREPARE, answered by READY; its time is logged apart from
the latency), sends the image and waits for the result. A worker declared dead (silent heartbeat, or a
peer that could not send to it) is removed from the planner's view and the request is planned again
and re-sent (a new attempt); so is an attempt a worker refused (a malformed header or a tensor of the
wrong shape on its route) or whose segments failed, and one unanswered for ``request_timeout_s``. After
``max_attempts`` the request is given up with its reason (``failed``). One answer per request is
accepted: a late answer of an earlier attempt, or a repeated one, is logged and discarded.

Outputs in the run folder: ``requests.jsonl`` (:mod:`xaiprune.serving.records`), ``events.jsonl``
(deaths, re-plans, rejected plans and messages, discarded answers, failures) and ``summary.json``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from xaiprune import system
from xaiprune.serving import wire
from xaiprune.serving.config import RunConfig, resolve
from xaiprune.serving.liveness import Liveness, wait_shut_down, wait_started
from xaiprune.serving.planning import Planner
from xaiprune.serving.records import Ledger, request_row
from xaiprune.serving.segments import Node, PayloadError

START_TIMEOUT_S = 300  # every worker must have loaded its model and said so within this


class Coordinator:
    """Rank 0's state: its own segments, the test images, liveness, the ledger and the event log."""

    def __init__(self, cfg: RunConfig, world: int, store, out_dir: Path):
        from xaiprune import data

        self.cfg, self.store = cfg, store
        self.node = Node(cfg, 0)
        self.scenario, self.order = self.node.scenario, self.node.order
        self.profiles = system.load_profiles(resolve(cfg.profiles))
        if self.profiles.segments != self.node.names:
            raise ValueError(f"profiles {cfg.profiles} are for segments {self.profiles.segments}, the model has "
                             f"{self.node.names}")
        test = data.load_split(cfg.flag, "test", cfg.size, cfg.data_root or None)
        n = len(test) if cfg.n_requests == 0 else min(cfg.n_requests, len(test))
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(test))[:n]) if n < len(test) else np.arange(n)
        self.images, self.labels, self.index = test.x[idx], test.y[idx], idx
        self.trace = None if cfg.trace is None else np.asarray(cfg.trace, dtype=float)
        self.inbox: queue.Queue = queue.Queue()
        self.liveness = Liveness(store, range(1, world), cfg.dead_after_s, self._died)
        self.held: dict[int, tuple] = {}                  # rank -> plan key whose segments it holds
        self.events = open(out_dir / "events.jsonl", "a", buffering=1)
        self.ledger = Ledger(out_dir / "requests.jsonl")
        self.policy_index = 0
        self.current, self.route = (-1, -1), set()        # (request, attempt) in flight and the ranks it passes
        self.rejected: set[tuple] = set()                 # (policy, problems) of plans already logged as rejected
        threading.Thread(target=self._receive_loop, daemon=True, name="receive").start()

    # -- plumbing --
    def _receive_loop(self) -> None:
        while True:
            try:
                self.inbox.put(wire.receive(self.node.limits, self.cfg.request_timeout_s))
            except Exception as exc:  # the wait itself failed: say so, keep receiving
                self.inbox.put((-1, wire.LinkError(-1, f"receive failed: {str(exc).splitlines()[0][:160]}")))
                time.sleep(0.5)

    def event(self, what: str, **detail) -> None:
        row = {"time": time.time(), "policy": self.cfg.policies[self.policy_index]["name"], "event": what, **detail}
        self.events.write(json.dumps(row) + "\n")
        print(f"EVENT {json.dumps(row)}", flush=True)

    def name(self, rank: int) -> str:
        return self.scenario.devices[self.order[rank]].name

    def _died(self, rank: int, reason: str) -> None:
        self.held.pop(rank, None)
        self.event("device dead", rank=rank, device=self.name(rank), reason=reason)

    def wait(self, want, watch: set[int], timeout: float):
        """Wait for a message ``want(src, msg)`` accepts.

        Returns ("ok", src, msg); ("dead", ranks) if a watched rank dies; ("rejected", reason) if the
        attempt in flight was refused or failed; ("timeout",) after ``timeout`` s.
        """
        end, last_check = time.monotonic() + timeout, 0.0
        while True:
            try:
                src, msg = self.inbox.get(timeout=0.01)
            except queue.Empty:
                pass
            else:
                got = self._handle(src, msg, want)
                if got is not None:
                    return got
            now = time.monotonic()
            if now - last_check > min(0.25, self.cfg.dead_after_s / 4):  # store reads cost the request latency
                last_check = now
                self.liveness.check()
            gone = {r for r in watch if not self.liveness.is_alive(r)}
            if gone:
                return ("dead", gone)
            if now > end:
                return ("timeout",)

    def _handle(self, src: int, msg, want):
        """Act on one received message; a result for :meth:`wait` to return, or None to keep waiting."""
        if isinstance(msg, wire.LinkError):
            self.event("link error", rank=src, error=str(msg))
            self.liveness.mark_dead(msg.peer, str(msg))
            return None
        if isinstance(msg, wire.ProtocolError):
            self.event("malformed message", rank=src, error=str(msg))
            return ("rejected", f"rank 0 refused a malformed header from rank {src}") if src in self.route else None
        if msg.kind == wire.ERROR:
            if msg.error == wire.UNREACHABLE:
                self.liveness.mark_dead(msg.detail, f"rank {src} could not send to it")
                return None
            self.event("worker error", rank=src, code=msg.error, error=wire.ERRORS.get(msg.error, "unknown"),
                       detail=msg.detail, request=msg.request)
            if msg.error == wire.MALFORMED and {src, msg.detail} <= self.route:
                return ("rejected", f"rank {src} refused a malformed header from rank {msg.detail}")
            if msg.error == wire.REJECTED and self._in_flight(msg):
                return ("rejected", f"rank {src} refused the tensor of rank {msg.detail}")
            if msg.error == wire.FAILED and self._in_flight(msg):
                return ("rejected", f"the segments of rank {src} failed")
            return None
        if msg.kind == wire.RESULT:
            try:
                self.node.check_result(msg)
            except PayloadError as exc:
                self.event("rejected", rank=src, message="result", request=msg.request, attempt=msg.attempt,
                           error=str(exc))
                return ("rejected", f"rank 0 refused the result of rank {src}: {exc}") if self._in_flight(msg) else None
            self.ledger.received(msg.policy, msg.request)  # every well-formed result counts, used or not
        if want(src, msg):
            return ("ok", src, msg)
        if msg.kind == wire.ACTIVATION and self._in_flight(msg):
            return self._midway(src, msg, want)  # the plan passes through the source device midway
        self.event("discarded", rank=src, message=wire.KINDS[msg.kind], request=msg.request, attempt=msg.attempt)
        return None

    def _in_flight(self, msg: wire.Message) -> bool:
        """``msg`` is about the attempt in flight."""
        return msg.policy == self.policy_index and (msg.request, msg.attempt) == self.current

    def _midway(self, src: int, msg: wire.Message, want):
        try:
            dst = self.node.advance(msg, msg.payload)
        except PayloadError as exc:
            self.event("rejected", rank=src, message="activation", request=msg.request, attempt=msg.attempt,
                       error=str(exc))
            return ("rejected", f"rank 0 refused the tensor of rank {src}: {exc}")
        except wire.LinkError as exc:
            self.liveness.mark_dead(exc.peer, "rank 0 could not send to it")
            return None
        if dst == -1:  # the source ran the last segment: the result is here
            self.ledger.received(msg.policy, msg.request)
            if want(0, msg):
                return ("ok", 0, msg)
        return None

    # -- serving --
    def prepare(self, msg: wire.Message):
        """Make every rank of the plan hold its segments; ("ok", seconds), ("dead", ranks) or ("rejected", why)."""
        start = time.perf_counter()
        self.node.prepare(msg.criterion, msg.levels, msg.devices)
        key = (msg.criterion, tuple(msg.levels), tuple(msg.devices))
        todo = {r for r in set(msg.devices) - {0} if self.held.get(r) != key}
        for r in sorted(todo):
            try:
                wire.send(wire.Message(wire.PREPARE, request=msg.request, attempt=msg.attempt, policy=msg.policy,
                                       criterion=msg.criterion, devices=msg.devices, levels=msg.levels, sender=0),
                          r, self.cfg.request_timeout_s)
            except wire.LinkError:
                self.liveness.mark_dead(r, "PREPARE could not be sent")
                return ("dead", {r})
        while todo:
            got = self.wait(lambda src, m: m.kind == wire.READY and src in todo and m.request == msg.request
                            and m.attempt == msg.attempt and m.policy == msg.policy, todo, self.cfg.request_timeout_s)
            if got[0] != "ok":
                return got if got[0] in ("dead", "rejected") else ("dead", set(todo))
            todo.discard(got[1])
            self.held[got[1]] = key
        return ("ok", time.perf_counter() - start)

    def attempt(self, msg: wire.Message):
        """Send one attempt of a request and wait for its answer (see :meth:`wait` for the results)."""
        t, attempt, p = msg.request, msg.attempt, msg.policy
        self.current, self.route = (t, attempt), set(msg.devices) | {0}
        try:
            dst = self.node.send_image(msg, self.images[t:t + 1])
        except wire.LinkError as exc:
            self.liveness.mark_dead(exc.peer, "rank 0 could not send to it")
            return ("dead", {exc.peer})
        if dst == -1:  # the whole plan ran on the source
            self.ledger.received(p, t)
            return ("ok", 0, msg)
        return self.wait(lambda src, m: m.kind == wire.RESULT and m.policy == p and m.request == t
                         and m.attempt == attempt, set(msg.devices) - {0}, self.cfg.request_timeout_s)

    def decide(self, planner: Planner, t: int) -> tuple[system.Plan, str, float]:
        plan, how, seconds, problems = planner.decide(self.liveness.dead)
        if problems and (self.policy_index, tuple(problems)) not in self.rejected:  # logged once per kind
            self.rejected.add((self.policy_index, tuple(problems)))
            self.event("plan rejected", request=t, problems=problems, how=how)
        return plan, how, seconds

    def request(self, p: int, policy: dict, t: int, planner: Planner, criterion: int) -> bool:
        """Serve request ``t`` until it is answered (True) or given up with a reason (False)."""
        plan, how, decision = self.decide(planner, t)
        attempt, prepare_s, first_send = 0, 0.0, None
        while True:
            conditions = planner.conditions()
            msg = wire.Message(wire.ACTIVATION, request=t, attempt=attempt, step=t, criterion=criterion, policy=p,
                               devices=[self.order.index(j) for j in plan.devices], levels=list(plan.levels))
            got = self.prepare(msg)
            if got[0] == "ok":
                prepare_s += got[1]
                start = time.perf_counter()
                first_send = start if first_send is None else first_send
                got = self.attempt(msg)
                measured = (time.perf_counter() - first_send, time.perf_counter() - start)
                self.current, self.route = (-1, -1), set()
            if got[0] == "ok":
                break
            attempt += 1
            reason = f"ranks {sorted(got[1])} dead" if got[0] == "dead" else got[1] if got[0] == "rejected" \
                else "timed out"
            if got[0] == "dead":
                planner.lose(got[1])
            if attempt >= self.cfg.max_attempts:
                self.event("request failed", request=t, attempts=attempt, reason=reason)
                self.ledger.fail(p, t, reason)
                planner.step(plan)
                return False
            old = plan.describe(self.scenario, self.profiles)
            plan, how, d2 = self.decide(planner, t)
            decision += d2
            self.event("re-planned", request=t, attempt=attempt, reason=reason, old_plan=old,
                       new_plan=plan.describe(self.scenario, self.profiles), how=how)
        self.ledger.accept(p, request_row(self.scenario, self.profiles, self.order, policy, t, attempt + 1, plan, how,
                                          decision, prepare_s, conditions, got[2], measured, self.index[t],
                                          self.labels[t]))
        planner.step(plan)
        return True

    def serve(self, p: int, policy: dict) -> dict:
        """Serve every test image with one policy; one line per answered request in requests.jsonl."""
        self.policy_index = p
        planner = Planner(self.scenario, self.profiles, policy, self.order, self.trace, len(self.labels), self.cfg.seed)
        criterion = self.node.criteria.index(policy.get("criterion", "lrp"))
        n = len(self.labels)
        self.ledger.open(p)
        planner.lose(self.liveness.dead)
        for t in range(n):
            self.request(p, policy, t, planner, criterion)
            print(f"PROGRESS {json.dumps({'policy': policy['name'], 'done': t + 1, 'total': n})}", flush=True)
        # answers that arrive after their request was answered (abandoned attempts, repeats) are drained;
        # :meth:`wait` counted them
        while True:
            got = self.wait(lambda src, m: m.kind == wire.RESULT, set(), 0.05)
            if got[0] != "ok":
                break
            self.event("discarded", rank=got[1], message="result", request=got[2].request, attempt=got[2].attempt)
        self.ledger.write()
        return self.summary(p)

    def summary(self, p: int) -> dict:
        return self.ledger.summary(p, self.cfg.policies[p]["name"], len(self.labels),
                                   [self.name(r) for r in sorted(self.liveness.dead)])

    def shutdown(self) -> None:
        alive = [r for r, ok in self.liveness.alive.items() if ok]
        for r in alive:
            try:
                wire.send(wire.Message(wire.SHUTDOWN, sender=0), r, self.cfg.request_timeout_s)
            except wire.LinkError:
                pass
        wait_shut_down(self.store, alive, 10)


def coordinate(cfg: RunConfig, world: int, store, out_dir: Path) -> int:
    """Share the config, wait for every worker, serve every policy, write the outputs; returns the exit code."""
    torch.set_num_threads(cfg.threads)
    store.set("xaiprune/config", cfg.to_json())
    wait_started(store, range(1, world), START_TIMEOUT_S)
    coord = Coordinator(cfg, world, store, out_dir)
    try:
        for i, policy in enumerate(cfg.policies):
            print(f"rank 0: {policy['name']}: {coord.serve(i, policy)}", flush=True)
    finally:
        coord.shutdown()
        coord.ledger.write()  # answers counted until the end, a late one for an earlier policy included
        summaries = [coord.summary(i) for i in sorted(coord.ledger.answered)]
        (out_dir / "summary.json").write_text(json.dumps(
            {"policies": summaries, "dead": [coord.name(r) for r in sorted(coord.liveness.dead)],
             "world_size": world, "devices": [coord.name(r) for r in range(world)]}, indent=2))
    return 0
