"""What a real coordinator can know of its links: an estimate of each link's bandwidth from past transfers.

The estimator (used by :mod:`xaiprune.serving.planning` for every policy whose ``view`` is ``estimate``, and by the
training wards of :mod:`xaiprune.planning.seqenv` that plan through it, so that the agent learns on such states):
for each ordered link a -> b, an exponentially weighted moving average of the measured bandwidth,
as a multiplier of the scenario's nominal bandwidth B[a, b]:

    m_ab <- (1 - alpha) * m_ab + alpha * clip(nbytes / ((t - lambda_ab) * B[a, b]), M_MIN, M_MAX)

for every hop of every answered request that crossed a -> b, with t the hop's measured transfer time
(the sender's emulated wait, 0 on real links, plus the payload's real transfer as its receiver timed it;
carried back in the result's header) and lambda_ab the link latency. The prior is the scenario's
nominal bandwidth (m = 1) on every link not measured yet. Heartbeats say nothing about bandwidth; they
only say which devices are alive. The estimate lags: requests decided before a fade shows up in an
answer are planned on the bandwidth before it, which is what the oracle view (the exact trace) never
suffers. A link cut by a partition is set to :data:`CUT` until the end of the run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from xaiprune.planning import system

M_MIN, M_MAX = 1e-3, 10.0  # a measured multiplier is clipped to this range (timer noise on tiny sends)
CUT = 1e-9                 # the multiplier of a cut link: finite (the solvers need numbers), never worth it


class LinkEstimator:
    """EWMA of each link's bandwidth multiplier from measured transfers (see the module docstring).

    Args:
        scenario: the ward (nominal bandwidths ``B`` and link latencies).
        alpha: weight of the newest measurement, in (0, 1].
    """

    def __init__(self, scenario: system.Scenario, alpha: float = 0.5):
        self.scenario, self.alpha = scenario, alpha
        n = scenario.n
        self.m = np.ones((n, n))
        self.samples = np.zeros((n, n), dtype=int)

    def observe(self, a: int, b: int, nbytes: float, seconds: float) -> None:
        """One measured transfer of ``nbytes`` from device ``a`` to device ``b`` that took ``seconds``."""
        if a == b or nbytes <= 0 or self.m[a, b] <= CUT:
            return
        lat = 0.0 if self.scenario.link_latency is None else float(self.scenario.link_latency[a, b])
        rate = nbytes / max(seconds - lat, 1e-6)
        sample = float(np.clip(rate / self.scenario.bandwidth[a, b], M_MIN, M_MAX))
        self.m[a, b] = (1 - self.alpha) * self.m[a, b] + self.alpha * sample
        self.samples[a, b] += 1

    def observe_route(self, route: list[int], link_bytes: list[int], link_seconds: list[float]) -> None:
        """Every hop of one answered request: ``route[h] -> route[h + 1]`` sent ``link_bytes[h]``."""
        for h in range(len(route) - 1):
            if link_bytes[h] > 0:
                self.observe(route[h], route[h + 1], link_bytes[h], link_seconds[h])

    def cut(self, a: int, b: int) -> None:
        """The link a -> b carries nothing any more (a partition)."""
        self.m[a, b] = CUT

    def multipliers(self) -> np.ndarray:
        """The current (N, N) estimate."""
        return self.m.copy()

    def view(self, truth: system.Scenario) -> system.Scenario:
        """``truth`` (the ward at a request) with its links at the estimate instead: what a planner on it sees."""
        bw = self.scenario.bandwidth * self.m
        np.fill_diagonal(bw, np.inf)
        return replace(truth, bandwidth=bw)

    def observe_plan(self, plan: system.Plan, truth: system.Scenario, profiles: system.Profiles) -> None:
        """Every hop of ``plan`` carried out on the true links of ``truth``: the modelled send time of its bytes
        (without the per-hop overhead: 07 measures the emulated wait plus the payload's real transfer on loopback,
        a fraction of a millisecond) feeds the estimate."""
        route = [truth.source, *plan.devices, truth.source]
        sent = [profiles.input_bytes, *(profiles.out_bytes[s, lv] for s, lv in enumerate(plan.levels))]
        seconds = [min(system.transfer_seconds(truth, a, b, n, overhead=False), 1e6)
                   for a, b, n in zip(route, route[1:], sent)]
        self.observe_route(route, sent, seconds)
