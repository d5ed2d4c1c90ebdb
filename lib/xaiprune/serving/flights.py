"""A request in flight at the source: its plan, its attempt, where it is, and the deadline of its hop.

With a window of W requests in flight, the source keeps one :class:`Flight` per request until it is
answered or given up. A flight is *preparing* while the ranks of its plan build their segments (it
waits for their READY), then *running*: the image has been sent, and ``holder`` is the rank that has it
now (the PROGRESS of each worker moves it on).

**The per-hop deadline.** A rank holding flights must make progress (a PROGRESS, a READY or a RESULT)
within ``hop_slack x E + hop_margin_s`` of the later of the oldest flight's arrival and its last progress,
where E is the largest expected time of the hops it holds: the compute of its run of segments plus sending
their output on, on the planner's view (:func:`xaiprune.serving.planning.hop_seconds`). A worker that hangs
while its heartbeat still beats, or that has become slow, misses it; the heartbeat alone cannot tell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from xaiprune.planning import system
from xaiprune.serving import wire


@dataclass
class Flight:
    """One request in flight (see the module docstring)."""

    request: int
    plan: system.Plan
    how: str
    msg: wire.Message                    # the ACTIVATION of this attempt (ranks, levels, criterion, policy)
    conditions: system.Scenario          # the ward as the planner saw it
    hops: list[float]                    # expected seconds per segment on that view
    decision_s: float
    attempt: int = 0
    prepare_s: float = 0.0
    awaiting: set[int] = field(default_factory=set)   # ranks whose READY is awaited
    prepare_start: float = 0.0
    first_send: float | None = None      # time.perf_counter() of the first send of the request
    sent: float = 0.0                    # ... of this attempt
    holder: int = -1                     # rank that has it now (-1: not sent yet)
    at: int = 0                          # the segment the holder runs next
    since: float = 0.0                   # when the holder got it
    avoid: set[int] = field(default_factory=set)      # ranks this request must not use again

    @property
    def key(self) -> tuple:
        return self.msg.policy, self.request, self.attempt

    def matches(self, msg: wire.Message) -> bool:
        return (msg.policy, msg.request, msg.attempt) == self.key

    def running(self) -> bool:
        return not self.awaiting and self.holder > 0

    def ahead(self) -> set[int]:
        """Ranks this attempt still needs: those awaited, or the holder and the ranks of the segments after it."""
        if self.awaiting or self.holder < 0:
            return set(self.msg.devices) - {0}
        return ({self.holder} | set(self.msg.devices[self.at:])) - {0}

    def allowance(self, slack: float, margin: float) -> float:
        """Seconds the holder may take for its run of segments from ``at`` and sending on."""
        devices, s, expected = self.msg.devices, self.at, 0.0
        while s < len(devices) and devices[s] == self.holder:
            expected += self.hops[s]
            s += 1
        return slack * expected + margin

    def move(self, holder: int, at: int) -> None:
        self.holder, self.at, self.since = holder, at, time.perf_counter()


def late_holders(flights, progress: dict[int, float], slack: float, margin: float, now: float) -> dict[int, list]:
    """Ranks that missed their hop deadline, each with the flights they hold (see the module docstring).

    A rank still awaited for a READY is building segments and is not held to a hop deadline meanwhile.
    """
    held: dict[int, list[Flight]] = {}
    for f in flights:
        if f.running():
            held.setdefault(f.holder, []).append(f)
    busy = {r for f in flights for r in f.awaiting}
    late = {}
    for r, fs in held.items():
        if r in busy:
            continue
        start = max(min(f.since for f in fs), progress.get(r, 0.0))
        if now > start + max(f.allowance(slack, margin) for f in fs):
            late[r] = fs
    return late
