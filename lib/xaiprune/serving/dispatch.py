"""What rank 0 does with every message it receives, and with every clock it watches.

:class:`Dispatch` is the half of :class:`xaiprune.serving.coordinator.Coordinator` that reacts: a READY
lets a prepared request go, a PROGRESS moves a request to its next rank, a RESULT answers it (once), an
ERROR or a refused message has the attempt served again, a dead rank has every request that still needs
it served again, a rank back from the dead is planned on again, and a rank that misses its hop deadline
(:mod:`xaiprune.serving.flights`) has its requests served again without it and, after ``strikes`` misses
in a row, is excluded. A failed attempt is only queued here (:meth:`Dispatch.retry`); the coordinator's
loop plans and sends it again, so no handler ever re-enters another.
"""

from __future__ import annotations

import dataclasses
import queue
import time

from xaiprune.planning.system import Plan
from xaiprune.serving import wire
from xaiprune.serving.flights import Flight, late_holders
from xaiprune.serving.segments import PayloadError


class Dispatch:
    """Message and clock handlers; the coordinator holds the state they use (``cfg``, ``node``, ``inbox``,
    ``liveness``, ``planner``, ``flights``, ``owed``, ``redo``, ``progress``, ``strikes``, ``suspect``, ``held``,
    ``ledger``, ``cuts``, ``observed``)
    and provides ``event``, ``name``, ``send``, ``advance`` and ``complete``."""

    def _died(self, rank: int, reason: str) -> None:
        self.held.pop(rank, None)
        self.owed = {k: f for k, f in self.owed.items() if f.holder != rank}
        self.event("device dead", rank=rank, device=self.name(rank), reason=reason)
        if self.planner is not None:
            self.planner.lose({rank})
        for f in list(self.flights.values()):
            if rank in f.ahead():
                self.retry(f, f"rank {rank} dead")

    def _rejoined(self, rank: int) -> None:
        self.held.pop(rank, None)  # it rebooted: its segments must be built again
        self.owed = {k: f for k, f in self.owed.items() if f.holder != rank}  # and it owes nothing it held before
        self.suspect.discard(rank)
        self.strikes[rank] = 0
        self.event("device rejoined", rank=rank, device=self.name(rank))
        if self.planner is not None:
            self.planner.regain(rank)

    def _seen(self, rank: int, msg: wire.Message | None = None, in_time: bool = False) -> None:
        """``rank`` showed progress (``msg``); in time for a live attempt, or on work it still owed."""
        self.progress[rank] = time.perf_counter()
        if in_time:
            self.strikes[rank] = 0
        if msg is not None and (msg.policy, msg.request, msg.attempt) in self.owed:
            key = (msg.policy, msg.request, msg.attempt)
            if msg.kind == wire.PROGRESS:
                self.owed[key].move(msg.detail, msg.start)
            else:
                del self.owed[key]
        if not any(f.holder == rank for f in self.owed.values()):
            self.suspect.discard(rank)  # it has caught up with what it owed

    def retry(self, f: Flight, reason: str, avoid=()) -> None:
        """Have attempt ``f.attempt`` of ``f.request`` served again (in the main loop)."""
        self.redo.append((f.request, f.attempt, reason, set(avoid)))

    def stale(self, rank: int) -> bool:
        """The rank's heartbeat has stopped (it is dead, not hung nor cut off)."""
        return not self.liveness.fresh(rank, max(3 * self.cfg.heartbeat_s, self.cfg.dead_after_s / 2))

    # -- messages --
    def pump(self, timeout: float) -> None:
        """Act on every message received (waiting at most ``timeout`` s for the first), then check the clocks."""
        try:
            item = self.inbox.get(timeout=timeout)
            while True:
                self._handle(*item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        now = time.perf_counter()
        if now - self.checked > min(0.25, self.cfg.dead_after_s / 4):  # store reads cost the requests latency
            self.checked = now
            self.liveness.check()
        self._deadlines(now)

    def _flight(self, msg: wire.Message) -> Flight | None:
        f = self.flights.get(msg.request)
        return f if f is not None and msg.policy == self.policy_index and f.matches(msg) else None

    def _handle(self, src: int, msg) -> None:
        if isinstance(msg, wire.LinkError):
            self.event("link error", rank=src, error=str(msg))
            self.liveness.mark_dead(msg.peer, str(msg))
            return
        if isinstance(msg, wire.ProtocolError):
            # which attempt it was about is unknown (the header is not trusted): every one that src may be
            # sending on. Not only those src holds: the PROGRESS that moves an attempt to src comes from
            # another rank and may arrive after src's own message (no order between senders).
            self.event("malformed message", rank=src, error=str(msg))
            for f in list(self.flights.values()):
                if src in f.ahead():
                    self.retry(f, f"rank 0 refused a malformed header from rank {src}")
            return
        f = self._flight(msg)
        if msg.kind == wire.ERROR:
            self._error(src, msg, f)
        elif msg.kind == wire.READY and f is not None and src in f.awaiting:
            self._seen(src)
            f.awaiting.discard(src)
            self.held[src] = (msg.criterion, tuple(msg.levels), tuple(msg.devices))
            if not f.awaiting:
                f.prepare_s += time.perf_counter() - f.prepare_start
                self.send(f)
        elif msg.kind == wire.PROGRESS:
            self._seen(src, msg, in_time=f is not None)
            if f is not None:
                f.move(msg.detail, msg.start)
        elif msg.kind == wire.RESULT:
            self._seen(src, msg, in_time=f is not None)
            try:
                self.node.check_result(msg)
            except PayloadError as exc:
                self.event("rejected", rank=src, message="result", request=msg.request, attempt=msg.attempt,
                           error=str(exc))
                if f is not None:
                    self.retry(f, f"rank 0 refused the result of rank {src}: {exc}")
                return
            self.ledger.received(msg.policy, msg.request)  # every well-formed result counts, used or not
            if f is not None:
                self.complete(f, msg)
            else:  # too late to answer, not too late to teach: its hops measured the links it crossed (once)
                if (msg.policy, msg.request, msg.attempt) not in self.observed:
                    self.observed.add((msg.policy, msg.request, msg.attempt))
                    self.planner.observe(Plan([self.order[r] for r in msg.devices], list(msg.levels)),
                                         msg.link_bytes, msg.link_us)
                self.event("discarded", rank=src, message="result", request=msg.request, attempt=msg.attempt)
        elif msg.kind == wire.ACTIVATION and f is not None:  # the plan passes through the source midway
            self.advance(f, lambda: self.node.advance(msg, msg.payload), msg)
        else:
            self.event("discarded", rank=src, message=wire.KINDS[msg.kind], request=msg.request, attempt=msg.attempt)

    def _error(self, src: int, msg: wire.Message, f: Flight | None) -> None:
        code = wire.ERRORS.get(msg.error, "unknown")
        self.event("worker error", rank=src, code=msg.error, error=code, detail=msg.detail, request=msg.request)
        if msg.error == wire.UNREACHABLE:
            peer = msg.detail
            if peer not in self.liveness.alive:  # rank 0 itself, or no rank at all: nothing to learn
                pass
            elif self.stale(peer):
                self.liveness.mark_dead(peer, f"rank {src} could not send to it and its heartbeat has stopped")
                self.liveness.silent.add(peer)
            elif self.planner is not None and self.liveness.is_alive(peer):
                self.planner.cut_link(src, peer)
                self.cuts.add((src, peer))
                self.event("link cut", rank=src, peer=peer, devices=[self.name(src), self.name(peer)])
            if f is not None:
                self.retry(f, f"rank {src} could not send to rank {peer}")
        elif msg.error == wire.MALFORMED:
            for g in list(self.flights.values()):  # src refused detail's header: the attempt went on to src
                if {src, msg.detail} <= set(g.msg.devices) | {0} and (g.holder in (src, msg.detail)
                                                                       or src in g.ahead()):
                    self.retry(g, f"rank {src} refused a malformed header from rank {msg.detail}")
        elif f is not None:
            self.retry(f, f"rank {src} refused the tensor of rank {msg.detail}" if msg.error == wire.REJECTED
                       else f"the segments of rank {src} failed")

    def _deadlines(self, now: float) -> None:
        """Hop deadlines (see :mod:`xaiprune.serving.flights`), READYs and attempts that take too long.

        A rank that misses its deadline has its requests served again without it; until it has caught up
        with the abandoned attempts it still holds (``owed``) it is *suspect*: no new request is planned on
        it, and it is held to the same deadline on what it owes. ``strikes`` misses in a row exclude it.
        """
        late = late_holders([*self.flights.values(), *self.owed.values()], self.progress, self.cfg.hop_slack,
                            self.cfg.hop_margin_s, now)
        for r, held in late.items():
            if self.stale(r):
                self.liveness.mark_dead(r, "missed its hop deadline and its heartbeat has stopped")
                self.liveness.silent.add(r)
                continue
            self.strikes[r] += 1
            self.suspect.add(r)
            self.progress[r] = now
            self.event("missed hop deadline", rank=r, device=self.name(r), requests=[f.request for f in held],
                       strikes=self.strikes[r])
            if self.strikes[r] >= self.cfg.strikes and r not in self.planner.excluded:
                self.planner.lose({r}, "missed hop deadlines")
                self.event("device excluded", rank=r, device=self.name(r),
                           reason=f"{self.strikes[r]} hop deadlines missed")
            for f in held:
                if f.key not in self.owed:
                    self.owed[f.key] = dataclasses.replace(f)
                    self.retry(f, f"rank {r} missed its hop deadline", avoid={r})
        for f in list(self.flights.values()):
            if f.awaiting and now - f.prepare_start > self.cfg.request_timeout_s:
                self.retry(f, f"ranks {sorted(f.awaiting)} did not build their segments in time", avoid=f.awaiting)
            elif f.holder > 0 and now - f.sent > self.cfg.request_timeout_s:
                self.retry(f, "timed out")

