"""The coordinator (rank 0, the source device): plans, sends and collects every request, ``window`` at a time.

Requests are pipelined: up to ``window`` are in flight at once (:mod:`xaiprune.serving.flights`). For
each the policy's :class:`~xaiprune.serving.planning.Planner` picks a plan, every rank of the plan is
made to hold its segments (PREPARE, answered by READY; its time is logged apart from the latency), and
the image is sent. Every attempt is watched: a worker declared dead (silent heartbeat), a rank that
misses its hop deadline (a worker that hangs or straggles while its heartbeat goes on), a link a worker
could not send over (cut: a partition, when the peer's heartbeat is fresh; else the peer is dead), an
attempt a worker refused (a malformed header or a tensor of the wrong shape) or whose segments failed,
and one unanswered for ``request_timeout_s``: each makes the request be planned again and re-sent (a
new attempt). A rank that misses ``strikes`` hop deadlines in a row is excluded from the policy's plans;
a dead one that beats again (it rejoined) is planned on again. After ``max_attempts`` the request is
given up with its reason (``failed``). One answer per request is accepted: a late answer of an earlier
attempt, or a repeated one, is counted and discarded.

Outputs in the run folder: ``requests.jsonl`` (:mod:`xaiprune.serving.records`), ``events.jsonl``
(deaths, rejoins, missed deadlines, exclusions, cut links, re-plans, rejected plans and messages,
discarded answers, failures) and ``summary.json``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np
import torch

from xaiprune.planning import system
from xaiprune.serving import wire
from xaiprune.serving.config import FAULTS, RunConfig, resolve
from xaiprune.serving.dispatch import Dispatch
from xaiprune.serving.flights import Flight
from xaiprune.serving.liveness import Liveness, policy_key, simulated_key, wait_shut_down, wait_started
from xaiprune.serving.planning import Planner, hop_seconds
from xaiprune.serving.records import Ledger, request_row
from xaiprune.serving.segments import Node, PayloadError

START_TIMEOUT_S = 300  # every worker must have loaded its model and said so within this


class Coordinator(Dispatch):
    """Rank 0's state: its own segments, the test images, liveness, the flights, the ledger and the event log."""

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
        self.liveness = Liveness(store, range(1, world), cfg.dead_after_s, self._died, self._rejoined)
        self.held: dict[int, tuple] = {}                  # rank -> plan key whose segments it holds
        self.events = open(out_dir / "events.jsonl", "a", buffering=1)
        self.ledger = Ledger(out_dir / "requests.jsonl")
        self.policy_index, self.planner, self.t0 = 0, None, time.perf_counter()
        self.flights: dict[int, Flight] = {}
        self.redo: deque = deque()                        # (request, attempt, reason, ranks to avoid)
        self.progress: dict[int, float] = {}              # rank -> last time it showed progress
        self.strikes: Counter = Counter()                 # rank -> hop deadlines missed in a row
        self.suspect: set[int] = set()                    # ranks that missed a deadline and still owe work
        self.owed: dict[tuple, Flight] = {}               # abandoned attempts a late rank still holds
        self.rejected: set[tuple] = set()                 # (policy, problems) of plans already logged as rejected
        self.cuts: set[tuple[int, int]] = set()           # (rank, rank) links found cut, for the rest of the run
        self.observed: set[tuple] = set()                 # (policy, request, attempt) whose hops fed the estimate
        self.checked = 0.0                                # last liveness check
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
        row = {"time": time.time(), "t_s": time.perf_counter() - self.t0,
               "policy": self.cfg.policies[self.policy_index]["name"], "event": what, **detail}
        self.events.write(json.dumps(row) + "\n")
        print(f"EVENT {json.dumps(row)}", flush=True)

    def name(self, rank: int) -> str:
        return self.scenario.devices[self.order[rank]].name

    # -- serving --
    def launch(self, t: int, criterion: int) -> None:
        """Plan request ``t`` and start its first attempt."""
        plan, how, seconds = self.decide(t)
        self.planner.step(plan)
        self.flights[t] = self.flight(t, plan, how, seconds, criterion)
        self.start(self.flights[t])

    def decide(self, t: int, avoid=()) -> tuple[system.Plan, str, float]:
        plan, how, seconds, problems = self.planner.decide(t=t, avoid=set(avoid) | self.suspect)
        if problems and (self.policy_index, tuple(problems)) not in self.rejected:  # logged once per kind
            self.rejected.add((self.policy_index, tuple(problems)))
            self.event("plan rejected", request=t, problems=problems, how=how)
        return plan, how, seconds

    def flight(self, t: int, plan: system.Plan, how: str, seconds: float, criterion: int, old: Flight | None = None):
        conditions = self.planner.conditions(t)
        msg = wire.Message(wire.ACTIVATION, request=t, attempt=0 if old is None else old.attempt, step=t,
                           criterion=criterion, policy=self.policy_index,
                           devices=[self.order.index(j) for j in plan.devices], levels=list(plan.levels))
        f = Flight(t, plan, how, msg, conditions, hop_seconds(plan, conditions, self.profiles), seconds)
        if old is not None:
            f.attempt, f.prepare_s, f.first_send, f.avoid = old.attempt, old.prepare_s, old.first_send, old.avoid
            f.decision_s += old.decision_s
        return f

    def start(self, f: Flight) -> None:
        """PREPARE the ranks of the plan that do not hold its segments yet; send at once if none."""
        m = f.msg
        self.node.prepare(m.criterion, m.levels, m.devices)
        key = (m.criterion, tuple(m.levels), tuple(m.devices))
        f.awaiting, f.prepare_start = {r for r in set(m.devices) - {0} if self.held.get(r) != key}, time.perf_counter()
        for r in sorted(f.awaiting):
            try:
                wire.send(wire.Message(wire.PREPARE, request=m.request, attempt=m.attempt, policy=m.policy,
                                       criterion=m.criterion, devices=m.devices, levels=m.levels, sender=0),
                          r, self.cfg.request_timeout_s)
            except wire.LinkError:
                self.liveness.mark_dead(r, "PREPARE could not be sent")
                return
        if not f.awaiting:
            self.send(f)

    def send(self, f: Flight) -> None:
        now = time.perf_counter()
        f.sent, f.first_send = now, now if f.first_send is None else f.first_send
        msg = wire.Message(**{**f.msg.__dict__, "compute_us": [0] * wire.MAX_SEGMENTS, "flops": [0] * wire.MAX_SEGMENTS,
                              "link_us": [0] * (wire.MAX_SEGMENTS + 1), "link_bytes": [0] * (wire.MAX_SEGMENTS + 1)})
        self.advance(f, lambda: self.node.send_image(msg, self.images[f.request:f.request + 1]), msg)

    def advance(self, f: Flight, step, msg: wire.Message) -> None:
        """Run ``step`` (the source's part of the attempt); follow the request to its next rank, or finish it."""
        try:
            dst = step()
        except PayloadError as exc:
            self.event("rejected", rank=0, message="activation", request=f.request, attempt=f.attempt, error=str(exc))
            self.retry(f, f"rank 0 refused a tensor: {exc}")
            return
        except wire.LinkError as exc:
            self.liveness.mark_dead(exc.peer, "rank 0 could not send to it")
            self.retry(f, f"rank 0 could not send to rank {exc.peer}")
            return
        if dst == -1:  # the source ran the last segment: the result is here
            self.ledger.received(f.msg.policy, f.request)
            self.complete(f, msg)
        else:
            f.move(dst, msg.start)

    def complete(self, f: Flight, out: wire.Message) -> None:
        now = time.perf_counter()
        p, policy, t = self.policy_index, self.cfg.policies[self.policy_index], f.request
        self.ledger.accept(p, request_row(
            self.scenario, self.profiles, self.order, policy, t, f.attempt + 1, f.plan, f.how, f.decision_s,
            f.prepare_s, f.conditions, out, (now - f.first_send, now - f.sent), self.index[t], self.labels[t],
            truth=self.planner.truth(t), times=(f.first_send - self.t0, now - self.t0)))
        self.planner.observe(f.plan, out.link_bytes, out.link_us)
        self.observed.add((out.policy, t, out.attempt))
        del self.flights[t]

    def _redo(self) -> None:
        """Serve again the attempts that failed: a new plan (avoiding what failed), or give up after max_attempts."""
        while self.redo:
            t, attempt, reason, avoid = self.redo.popleft()
            f = self.flights.get(t)
            if f is None or f.attempt != attempt:
                continue  # answered meanwhile, or already re-sent
            f.attempt += 1
            f.avoid |= avoid
            if f.attempt >= self.cfg.max_attempts:
                self.event("request failed", request=t, attempts=f.attempt, reason=reason)
                self.ledger.fail(self.policy_index, t, reason)
                del self.flights[t]
                continue
            plan, how, seconds = self.decide(t, f.avoid)
            self.event("re-planned", request=t, attempt=f.attempt, reason=reason,
                       old_plan=f.plan.describe(self.scenario, self.profiles),
                       new_plan=plan.describe(self.scenario, self.profiles), how=how)
            self.flights[t] = self.flight(t, plan, how, seconds, f.msg.criterion, old=f)
            self.start(self.flights[t])

    def serve(self, p: int, policy: dict) -> dict:
        """Serve every test image with one policy, ``window`` at a time; one line per answered request."""
        self.policy_index, self.t0 = p, time.perf_counter()
        self.store.set(policy_key(p), repr(time.time()))  # a fault timed from the policy's start reads it
        self.planner = Planner(self.scenario, self.profiles, policy, self.order, self.trace, len(self.labels),
                               self.cfg.seed, alpha=self.cfg.ewma)
        self.planner.lose(self.liveness.dead)
        for a, b in self.cuts:  # a link cut for real stays cut for every later policy
            self.planner.cut_link(a, b)
        self.planner.lose(self.suspect, "missed a hop deadline and showed nothing since")
        self.strikes.clear()
        criterion = self.node.criteria.index(policy.get("criterion", "lrp"))
        n, todo, done = len(self.labels), deque(range(len(self.labels))), 0
        window = policy.get("window", self.cfg.window)
        self.ledger.open(p)
        while todo or self.flights or self.redo:
            while todo and len(self.flights) < window:
                self.launch(todo.popleft(), criterion)
            self.pump(0.005)
            self._redo()
            finished = n - len(todo) - len(self.flights)
            if finished > done:
                done = finished
                print(f"PROGRESS {json.dumps({'policy': policy['name'], 'done': done, 'total': n})}", flush=True)
        # a late rank finishes what it owes before the next policy starts (so a fault stays in its policy), and
        # answers that arrive after their request was answered are counted
        end = time.perf_counter() + (self.cfg.request_timeout_s if p < len(self.cfg.policies) - 1 else 0.0)
        while self.owed and time.perf_counter() < end:
            self.pump(0.02)
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            self.pump(0.02)
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
        wait_shut_down(self.store, [r for r in alive if r not in self.suspect], 10)  # a hung rank never says bye


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
             "world_size": world, "devices": [coord.name(r) for r in range(world)],
             "simulated_faults": [k for k in FAULTS if store.check([simulated_key(k)])]}, indent=2))
    return 0
