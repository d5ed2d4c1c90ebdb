"""Distributed serving: one process per device, torch.distributed (gloo) over TCP.

The modules, lowest layer first (a module imports only modules above it in this list):

- :mod:`~xaiprune.serving.wire`: the message header, signed and capped, send and receive with timeouts;
- :mod:`~xaiprune.serving.sockets`: the run's TCP sockets read off ``/proc`` (what it listens on; a real partition);
- :mod:`~xaiprune.serving.transport`: joining a run: loopback unless told otherwise, under the run's secret;
- :mod:`~xaiprune.serving.config`: the run configuration every rank shares, and its validation;
- :mod:`~xaiprune.serving.emulation`: the scenario's device speeds and links imposed on one machine;
- :mod:`~xaiprune.serving.segments`: one rank's pruned segments, built, cached, checked, run and sent on;
- :mod:`~xaiprune.serving.liveness`: heartbeats and failure detection;
- :mod:`~xaiprune.serving.worker`: the serving loop of ranks r > 0 and fault injection;
- :mod:`~xaiprune.serving.planning`: the plan for the next request, on estimates (each link's bandwidth estimated
  from past measured transfers, :mod:`xaiprune.planning.estimation`) or (a baseline) the trace, and re-planning
  after a loss;
- :mod:`~xaiprune.serving.records`: the per-request record, the ledger of every request, the summary tables;
- :mod:`~xaiprune.serving.flights`: the requests in flight and the deadline of each hop;
- :mod:`~xaiprune.serving.dispatch`: what rank 0 does with each message it receives and each clock it checks;
- :mod:`~xaiprune.serving.coordinator`: rank 0's pipelined loop;
- :mod:`~xaiprune.serving.launcher`: the process entry point (``python -m xaiprune.serving``) and :func:`launch`.

Beside them: :mod:`~xaiprune.serving.replay` (a served policy's plans recomputed offline with other criteria's
filters) and :mod:`~xaiprune.serving.payload` (packed quantiser indices and images as bytes on the wire, which
:mod:`xaiprune.agilenn.offload` sends over the same wire and link emulation).

For ``07_distributed.ipynb``, on top of them: :mod:`~xaiprune.serving.runs` (what its runs share, the policies
each serves, who each fault hits, the replays), :mod:`~xaiprune.serving.analysis` (what it reads off the logs:
tables, the estimate against the oracle, the pipelining bound), :mod:`~xaiprune.serving.plots` (its figures),
:mod:`~xaiprune.serving.evidence` (its four claims' evidence: paired bootstraps over requests, Holm) and
:mod:`~xaiprune.serving.verdict` (its ``metrics.json`` and checks). None of them is imported by the serving
processes; the names below are.
"""

from xaiprune.serving.config import FAULTS, PLANNERS, VIEWS, RunConfig
from xaiprune.serving.launcher import Outcome, free_port, launch
from xaiprune.serving.records import fault_outcome, summarise, unpruned_bytes
from xaiprune.serving.segments import write_scores

__all__ = ["FAULTS", "PLANNERS", "VIEWS", "Outcome", "RunConfig", "fault_outcome", "free_port", "launch", "summarise",
           "unpruned_bytes", "write_scores"]
