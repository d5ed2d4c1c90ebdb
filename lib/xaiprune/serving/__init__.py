"""Distributed serving: one process per device, torch.distributed (gloo) over TCP.

The modules, lowest layer first (a module imports only modules above it in this list):

- :mod:`~xaiprune.serving.wire`: the message header, send and receive with timeouts;
- :mod:`~xaiprune.serving.config`: the run configuration every rank shares, and its validation;
- :mod:`~xaiprune.serving.emulation`: the scenario's device speeds and links imposed on one machine;
- :mod:`~xaiprune.serving.segments`: one rank's pruned segments, built, cached, checked, run and sent on;
- :mod:`~xaiprune.serving.liveness`: heartbeats and failure detection;
- :mod:`~xaiprune.serving.worker`: the serving loop of ranks r > 0 and fault injection;
- :mod:`~xaiprune.serving.planning`: the plan for the next request, and re-planning after a loss;
- :mod:`~xaiprune.serving.records`: the per-request record, the ledger of every request, the summary table;
- :mod:`~xaiprune.serving.coordinator`: rank 0's loop;
- :mod:`~xaiprune.serving.launcher`: the process entry point (``python -m xaiprune.serving``) and :func:`launch`.

Used by ``07_distributed.ipynb`` through the names below.
"""

from xaiprune.serving.config import FAULTS, PLANNERS, RunConfig
from xaiprune.serving.launcher import Outcome, free_port, launch
from xaiprune.serving.records import summarise, unpruned_bytes
from xaiprune.serving.segments import write_scores

__all__ = ["FAULTS", "PLANNERS", "Outcome", "RunConfig", "free_port", "launch", "summarise", "unpruned_bytes",
           "write_scores"]
