"""Liveness: which workers started, which are alive, which shut down; all through the run's store.

A worker sets ``xaiprune/up/<rank>`` (to its pid) when it is ready (or ``xaiprune/failed/<rank>`` with the reason
it could not start) and ``xaiprune/bye/<rank>`` when it shuts down cleanly. Both ends of the heartbeat
live here too. A worker runs :func:`start_heartbeat`: a thread that adds 1 to
``xaiprune/hb/<rank>`` every ``heartbeat_s`` and ends the process when the store (and so the
coordinator) is gone, which bounds the worker's otherwise unbounded wait for work. (A file store outlives rank 0:
there the launcher, which removes its folder at the end, stops every process when rank 0 ends.) The coordinator's
:class:`Liveness` reads the counters; a rank whose counter has not moved for ``dead_after_s`` is dead,
and comes back (rejoins) if its counter moves again; a rank the source could not send to is dead for
the rest of the run.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from typing import Callable

STORE_TIMEOUT = dt.timedelta(seconds=10)  # a heartbeat that cannot reach the store this long ends the worker


def heartbeat_key(rank: int) -> str:
    return f"xaiprune/hb/{rank}"


def up_key(rank: int) -> str:
    return f"xaiprune/up/{rank}"


def bye_key(rank: int) -> str:
    return f"xaiprune/bye/{rank}"


def failed_key(rank: int) -> str:
    return f"xaiprune/failed/{rank}"


def simulated_key(kind: str) -> str:
    """Set when a fault of ``kind`` could only be acted out by a flag (the run records the kind as simulated)."""
    return f"xaiprune/simulated/{kind}"


def policy_key(policy: int) -> str:
    """Rank 0's wall-clock time (``time.time()``) when it began serving policy ``policy``."""
    return f"xaiprune/policy/{policy}"


def wait_started(store, ranks, timeout: float) -> None:
    """Wait until every rank is up; RuntimeError naming a rank that failed to start, or those late."""
    waiting, end = set(ranks), time.monotonic() + timeout
    while waiting:  # every worker loads the model and says it is up, or says why it failed
        for r in sorted(waiting):
            if store.check([failed_key(r)]):
                raise RuntimeError(f"rank {r} failed to start: {store.get(failed_key(r)).decode()}")
            if store.check([up_key(r)]):
                waiting.discard(r)
        if time.monotonic() > end:
            raise RuntimeError(f"ranks {sorted(waiting)} did not start within {timeout:g} s")
        time.sleep(0.05)


def wait_shut_down(store, ranks, timeout: float) -> None:
    """Wait (at most ``timeout`` s in all) until the given ranks have shut down."""
    end = time.monotonic() + timeout
    for r in ranks:
        while time.monotonic() < end and not store.check([bye_key(r)]):
            time.sleep(0.02)


class Quiet:
    """Until ``until`` (a ``time.monotonic()`` value) the heartbeat is silent (fault injection: a device gone dark)."""

    until: float = 0.0


def _beat(connect: Callable, rank: int, every: float, stop: threading.Event, quiet: Quiet | None) -> None:
    try:
        store = connect(STORE_TIMEOUT)
        while not stop.is_set():
            if quiet is None or time.monotonic() >= quiet.until:
                store.add(heartbeat_key(rank), 1)
            stop.wait(every)
    except Exception as exc:  # rank 0 and its store are gone: nobody will ever send us anything
        print(f"rank {rank}: lost the coordinator's store ({type(exc).__name__}); exiting", flush=True)
        os._exit(3)


def start_heartbeat(connect: Callable, rank: int, every: float, quiet: Quiet | None = None) -> threading.Event:
    """Beat every ``every`` s in a daemon thread, on its own connection to the run's store (``connect(timeout)``,
    :func:`xaiprune.serving.transport.connect`), not while ``quiet`` says so; set the returned event to stop."""
    stop = threading.Event()
    threading.Thread(target=_beat, args=(connect, rank, every, stop, quiet), daemon=True, name="heartbeat").start()
    return stop


class Liveness:
    """Which workers are alive, from their heartbeats and from failed sends.

    Args:
        store: rank 0's TCP store.
        ranks: the worker ranks to watch.
        dead_after_s: silence after which a rank is dead.
        on_death: called once per rank declared dead, with the rank and the reason.
        on_rejoin: called with the rank when a rank declared dead for its silence beats again.
    """

    def __init__(self, store, ranks, dead_after_s: float, on_death: Callable[[int, str], None],
                 on_rejoin: Callable[[int], None] | None = None):
        self.store, self.dead_after_s, self.on_death, self.on_rejoin = store, dead_after_s, on_death, on_rejoin
        self.alive = {r: True for r in ranks}
        self.beats = {r: (-1, time.monotonic()) for r in ranks}
        self.silent: set[int] = set()  # dead for their silence: they may come back

    @property
    def dead(self) -> set[int]:
        return {r for r, ok in self.alive.items() if not ok}

    def is_alive(self, rank: int) -> bool:
        return self.alive.get(rank, True)

    def check(self) -> list[int]:
        """Ranks whose heartbeat counter has not moved for ``dead_after_s``; they are marked dead.

        A rank dead for its silence whose counter moves again is alive again (``on_rejoin``).
        """
        now, dead = time.monotonic(), []
        for r, ok in list(self.alive.items()):
            if not ok and r not in self.silent:
                continue
            count = self.store.add(heartbeat_key(r), 0)
            last, since = self.beats[r]
            if count != last:
                self.beats[r] = (count, now)
                if not ok:
                    self.silent.discard(r)
                    self.alive[r] = True
                    if self.on_rejoin:
                        self.on_rejoin(r)
            elif ok and now - since > self.dead_after_s:
                self.mark_dead(r, f"no heartbeat for {now - since:.2f} s")
                self.silent.add(r)
                dead.append(r)
        return dead

    def fresh(self, rank: int, within: float) -> bool:
        """The rank's heartbeat counter moved within the last ``within`` s (read now)."""
        now, count = time.monotonic(), self.store.add(heartbeat_key(rank), 0)
        if count != self.beats[rank][0]:
            self.beats[rank] = (count, now)
        return now - self.beats[rank][1] <= within

    def mark_dead(self, rank: int, reason: str) -> None:
        """Declare a worker dead (rank 0, unknown and already dead ranks are ignored)."""
        if rank == 0 or not self.alive.get(rank, False):
            return
        self.alive[rank] = False
        self.on_death(rank, reason)
