"""Link and compute emulation: the scenario's speeds and bandwidths imposed on one machine.

On one machine every link and device is equally fast, so with ``emulate=True`` a device pads the
compute of the segments it runs for a request to FLOPs / speed (the FLOPs of the segments it really
built, the speed from the scenario), and a sender waits :func:`xaiprune.planning.system.transfer_seconds` of the
bytes of the tensor it really sends, with the scenario's bandwidth times the trace's multiplier at that
request, before sending (without the scenario's per-hop overhead: the system adds that by itself). With ``emulate=False`` (real hardware) nothing is padded. A link cut by fault
injection (a partition) carries nothing: :meth:`Emulator.is_cut`, whatever ``emulate`` says.
"""

from __future__ import annotations

import time

import numpy as np

from xaiprune.planning import system


def us(seconds: float) -> int:
    """Seconds as whole microseconds (the header's unit)."""
    return int(round(seconds * 1e6))


def pad(start: float, seconds: float) -> None:
    """Sleep until ``seconds`` after ``start`` (a ``time.perf_counter()`` value); no-op if already past."""
    left = start + seconds - time.perf_counter()
    if left > 0:
        time.sleep(left)


class Emulator:
    """The emulated speed of one rank's device and of the links leaving it.

    Args:
        scenario: the ward; ``order[r]`` is the scenario's device index of rank r.
        rank: this process's rank.
        trace: (T, N, N) bandwidth multipliers (request t sees ``trace[t % T]``), or None for nominal links.
        enabled: False on real hardware (every emulated time is 0).
    """

    def __init__(self, scenario: system.Scenario, order: list[int], rank: int, trace: np.ndarray | None,
                 enabled: bool):
        self.scenario, self.order, self.rank, self.trace, self.enabled = scenario, order, rank, trace, enabled
        self.device = order[rank]
        self.cut: set[int] = set()  # ranks the links from this rank to are cut (a partition)

    def is_cut(self, dst_rank: int) -> bool:
        """The link from this rank to ``dst_rank`` is cut: a send over it fails."""
        return dst_rank in self.cut

    def multiplier(self, a: int, b: int, step: int) -> float:
        """The trace's bandwidth factor for link a -> b (device indices) at request ``step``."""
        return 1.0 if self.trace is None else float(self.trace[step % len(self.trace)][a, b])

    def transfer_seconds(self, dst_rank: int, nbytes: int, step: int) -> float:
        """Emulated seconds to send ``nbytes`` from this rank to ``dst_rank`` at request ``step``."""
        if not self.enabled or dst_rank == self.rank:
            return 0.0
        a, b = self.device, self.order[dst_rank]
        return system.transfer_seconds(self.scenario, a, b, nbytes, self.multiplier(a, b, step), overhead=False)

    def compute_seconds(self, flops: int) -> float:
        """Emulated seconds this rank's device takes for ``flops``."""
        return flops / self.scenario.devices[self.device].speed if self.enabled else 0.0
