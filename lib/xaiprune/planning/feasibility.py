"""Feasibility of partial plans: the least latency the rest of a plan needs, and exact action masks.

A plan is built segment by segment: after segments 0..s-1 are placed, a :class:`Partial` holds the
device the last one ran on, the bytes it sends on, the elapsed latency and the memory and energy used
on every device. Two things are asked of it, by the exact enumeration of :mod:`xaiprune.planning.nlp` and by
the sequential agent of :mod:`xaiprune.planning.seqenv`, with the same numbers (:class:`Tables`):

- **a latency floor for the rest**. ``togo[s, j, l]`` is the least latency after segment s ran on
  device j at level l: sending its output on, running segments s+1..S-1 on any available devices at any
  levels, and sending the label back to the source, by the recursion

      togo[S-1, j, l] = t(j, src, O[S-1, l])
      togo[s, j, l]   = min_k  t(j, k, O[s, l]) + min_l' ( F[s+1, l'] / c_k + togo[s+1, k, l'] )

  with t the project's one transfer model (:func:`xaiprune.planning.system.transfer_seconds`, linear in the
  bytes). It ignores memory and energy, so it never exceeds the latency of any feasible completion:
  a choice with ``elapsed + t(prev, j) + F[s,l]/c_j + togo[s, j, l] > deadline`` has none.
- **which choices of the next segment leave a feasible completion** (:meth:`Tables.mask`). A choice
  (j, l) is allowed exactly when some completion meets the deadline and every memory and energy cap:
  first the local checks and the floor above, then a certificate (the completion that attains the
  floor, checked for memory and energy, vectorised over all choices), and for the few choices the
  certificate does not settle, a depth-first search for any feasible completion (:meth:`Tables.completes`).
  So a mask never excludes a choice that can still end feasibly, never allows one that cannot, and is
  empty at the first segment exactly when the instance has no feasible plan.

Tolerances are :func:`xaiprune.planning.system.evaluate`'s (relative 1e-9 on every cap). A cut link (no
bandwidth, even for 0 bytes) or a device of speed 0 takes infinite time, never NaN; a radio is charged
for at most ``FOREVER`` seconds, as in :func:`~xaiprune.planning.system.evaluate`, so that 0 W over a cut link is 0 J.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xaiprune.planning.system import Plan, Profiles, Scenario, transfer_seconds

TOL = 1e-9  # relative slack on every cap, as system.evaluate
FOREVER = 1e30  # seconds a radio is charged for over a cut link (finite, so that a radio of 0 W gives no inf * 0)


def hop_seconds(lat, slope, nbytes):
    """``lat + slope * nbytes`` (broadcast), with 0 bytes costing ``lat``: a cut link (both inf) is inf, never NaN."""
    with np.errstate(invalid="ignore"):
        return lat + np.where(np.equal(nbytes, 0), 0.0, slope * nbytes)


@dataclass
class Partial:
    """Segments 0..s-1 placed: where the last ran, what it sends on, elapsed latency, memory and energy used."""

    s: int
    prev: int
    out_bytes: float
    elapsed: float
    memory: np.ndarray
    energy: np.ndarray
    devices: list[int] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        return Plan(list(self.devices), list(self.levels))


class Tables:
    """Per-instance arrays of the bounds and masks (see the module docstring); built in well under a millisecond."""

    def __init__(self, scenario: Scenario, profiles: Profiles):
        P, n, S, L = profiles, scenario.n, profiles.S, profiles.L
        self.scenario, self.profiles, self.n, self.S, self.L = scenario, profiles, n, S, L
        self.src = scenario.source
        # transfer_seconds(a, b, x) = lat[a, b] + slope[a, b] * x: read its two coefficients from the one formula
        self.lat = np.array([[transfer_seconds(scenario, a, b, 0.0) for b in range(n)] for a in range(n)])
        one = np.array([[transfer_seconds(scenario, a, b, 1.0) for b in range(n)] for a in range(n)])
        with np.errstate(invalid="ignore"):
            self.slope = np.where(np.isfinite(self.lat), one - self.lat, np.inf)
        self.available = np.array([d.available for d in scenario.devices])
        speed = np.array([d.speed for d in scenario.devices])[None, :, None]
        with np.errstate(divide="ignore", invalid="ignore"):                # a speed of 0 runs nothing: inf
            self.compute = np.where(speed > 0, P.flops[:, None, :] / speed, np.inf)  # (S, n, L) seconds
        self.compute[:, ~self.available, :] = np.inf
        self.mem = P.weight_bytes + P.peak_bytes                                  # (S, L) bytes
        self.e_flop = np.array([d.energy_per_flop for d in scenario.devices])
        self.radio = np.array([d.radio_power for d in scenario.devices])
        self.cap_mem = np.array([d.memory for d in scenario.devices]) * (1 + TOL)
        self.cap_e = np.array([d.energy_budget for d in scenario.devices]) * (1 + TOL)
        self.deadline = scenario.deadline * (1 + TOL)
        self.eye, self.devices = np.eye(n), np.arange(n)
        self.cache: dict = {}        # per-request values other modules derive once (e.g. observation parts)
        self._after: tuple = (None, None)
        self._floor()

    def _floor(self) -> None:
        """``togo`` (S, n, L), and per (s, j, l) the memory and energy per device of the completion attaining it."""
        S, n, L, P, eye = self.S, self.n, self.L, self.profiles, self.eye
        J, Lx = np.arange(n)[:, None], np.arange(L)[None, :]
        self.togo = np.zeros((S, n, L))
        self.rest_mem = np.zeros((S, n, L, n))
        self.rest_energy = np.zeros((S, n, L, n))
        back = hop_seconds(self.lat[:, self.src, None], self.slope[:, self.src, None], P.out_bytes[S - 1][None, :])
        back[self.src] = 0.0                                                                        # (n, L)
        self.togo[S - 1] = back
        self.rest_energy[S - 1] = eye[:, None, :] * (self.radio[:, None] * np.minimum(back, FOREVER))[:, :, None]
        for s in range(S - 2, -1, -1):
            after = self.compute[s + 1] + self.togo[s + 1]                                        # (k, l')
            best_l = after.argmin(axis=1)
            g = after[np.arange(n), best_l]                                                         # (k,)
            t = hop_seconds(self.lat[:, None, :], self.slope[:, None, :], P.out_bytes[s][None, :, None])  # (j, l, k)
            t[np.arange(n), :, np.arange(n)] = 0.0                                                  # same device
            total = t + g
            best_k = total.argmin(axis=2)                                                          # (j, l)
            self.togo[s] = total[J, Lx, best_k]
            nl, on_k = best_l[best_k], eye[best_k]                                                  # on_k: (j, l, n)
            self.rest_mem[s] = on_k * self.mem[s + 1][nl][..., None] + self.rest_mem[s + 1][best_k, nl]
            self.rest_energy[s] = (eye[:, None, :] * (self.radio[:, None] * np.minimum(t[J, Lx, best_k], FOREVER))[..., None]
                                   + on_k * (self.e_flop[best_k] * P.flops[s + 1][nl])[..., None]
                                   + self.rest_energy[s + 1][best_k, nl])

    # ----- partial plans --------------------------------------------------------------------
    def start(self) -> Partial:
        """Nothing placed yet: the image waits on the source."""
        return Partial(0, self.src, self.profiles.input_bytes, 0.0, np.zeros(self.n), np.zeros(self.n))

    def _hop1(self, a: int, b: int, nbytes: float) -> float:
        """t(a, b, nbytes): 0 on one device, inf over a dead link."""
        return 0.0 if a == b else float(hop_seconds(self.lat[a, b], self.slope[a, b], nbytes))

    def advance(self, part: Partial, j: int, l: int) -> Partial:
        """``part`` with segment ``part.s`` on device ``j`` at level ``l`` (the label sent back after the last)."""
        t = self._hop1(part.prev, j, part.out_bytes)
        memory, energy = part.memory.copy(), part.energy.copy()
        memory[j] += self.mem[part.s, l]
        energy[part.prev] += self.radio[part.prev] * min(t, FOREVER)
        energy[j] += self.e_flop[j] * self.profiles.flops[part.s, l]
        elapsed = part.elapsed + t + self.compute[part.s, j, l]
        out = self.profiles.out_bytes[part.s, l]
        if part.s == self.S - 1:
            back = self._hop1(j, self.src, out)
            elapsed += back
            energy[j] += self.radio[j] * min(back, FOREVER)
        return Partial(part.s + 1, j, out, elapsed, memory, energy, part.devices + [j], part.levels + [l])

    def after(self, part: Partial) -> dict[str, np.ndarray]:
        """Per choice (j, l) of segment ``part.s``: the hop time to j, the elapsed latency after it, the local checks.

        Local: j is up, nothing placed so far breaks a cap, and j's memory, j's energy and the energy of the
        device sending to j stay within their caps.
        """
        if self._after[0] is part:
            return self._after[1]
        s, p = part.s, part.prev
        t = hop_seconds(self.lat[p], self.slope[p], part.out_bytes)                               # (n,)
        t[p] = 0.0
        elapsed = part.elapsed + t[:, None] + self.compute[s]                                       # (n, L)
        flops = self.profiles.flops[s][None, :]
        so_far = bool((part.memory <= self.cap_mem).all() and (part.energy <= self.cap_e).all())
        local = (so_far & self.available[:, None] & np.isfinite(elapsed)
                 & (part.memory[:, None] + self.mem[s][None, :] <= self.cap_mem[:, None])
                 & (part.energy[:, None] + self.e_flop[:, None] * flops <= self.cap_e[:, None])
                 & (part.energy[p] + self.radio[p] * np.minimum(t, FOREVER) <= self.cap_e[p])[:, None])
        out = {"hop": t, "elapsed": elapsed, "local": local}
        self._after = (part, out)
        return out

    def slack(self, part: Partial) -> np.ndarray:
        """(deadline - elapsed after (j, l) - togo[s, j, l]) / deadline per choice: below 0 no completion meets it."""
        return (self.scenario.deadline - self.after(part)["elapsed"] - self.togo[part.s]) / self.scenario.deadline

    def mask(self, part: Partial) -> np.ndarray:
        """(n, L) bool: the choices of segment ``part.s`` after which some completion is feasible (exact)."""
        a = self.after(part)
        s, p, eye = part.s, part.prev, self.eye
        ok = a["local"] & (a["elapsed"] + self.togo[s] <= self.deadline)
        if not ok.any():
            return ok
        # the certificate: every device's memory and energy once the floor's own completion has run
        on_j = eye[:, None, :]                                                                     # (j, 1, n)
        memory = part.memory + on_j * self.mem[s][None, :, None] + self.rest_mem[s]                # (j, l, n)
        radio = self.radio[p] * np.minimum(a["hop"], FOREVER)
        energy = (part.energy + eye[p] * radio[:, None, None] + self.rest_energy[s]
                  + on_j * (self.e_flop[:, None] * self.profiles.flops[s][None, :])[..., None])
        certified = ok & (memory <= self.cap_mem).all(-1) & (energy <= self.cap_e).all(-1)
        for j, l in zip(*np.nonzero(ok & ~certified)):
            certified[j, l] = self.completes(self.advance(part, int(j), int(l)))
        return certified

    def completes(self, part: Partial) -> bool:
        """Whether some completion of ``part`` is feasible (depth-first, most latency-frugal choices first)."""
        if part.s == self.S:
            return part.elapsed <= self.deadline and bool((part.memory <= self.cap_mem).all()) \
                and bool((part.energy <= self.cap_e).all())
        a = self.after(part)
        bound = a["elapsed"] + self.togo[part.s]
        ok = a["local"] & (bound <= self.deadline)
        order = np.argsort(np.where(ok, bound, np.inf), axis=None)[: int(ok.sum())]
        for flat in order:
            j, l = divmod(int(flat), self.L)
            if self.completes(self.advance(part, j, l)):
                return True
        return False

    def feasible(self) -> bool:
        """Whether the instance has any feasible plan."""
        return bool(self.mask(self.start()).any())

