"""One rank's segments: built from the checkpoint and fixed filter scores, cached, run, and sent on.

Every device loads the trained checkpoint and the criterion's per-filter scores (``torch.save`` of
``{conv name: scores}``, from :func:`write_scores`) and builds the segments a plan gives it with
:func:`xaiprune.pruning.prune.prune_with_scores`: pruned, never retrained. Built segments are cached per
(criterion, levels, segments held); a tensor is checked against the input shape of the segment it is
for before that segment runs (:class:`PayloadError` otherwise).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xaiprune import models, paths
from xaiprune.planning import system
from xaiprune.pruning import prune
from xaiprune.serving import wire
from xaiprune.serving.config import RunConfig, rank_order, resolve
from xaiprune.serving.emulation import Emulator, pad, us


class PayloadError(ValueError):
    """A tensor that the segment it is sent to cannot take (wrong shape), or sent to the wrong rank."""


def write_scores(model: models.SegmentedModel, criteria: list[str], reference, folder: Path,
                 input_shape: tuple[int, int, int] = (1, 28, 28)) -> dict[str, str]:
    """Score every filter once per criterion on the unpruned model; save ``scores_<criterion>.pt``.

    Returns ``{criterion: path relative to the project root when inside it}`` for :class:`RunConfig`.
    Used by ``07_distributed.ipynb``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for criterion in criteria:
        scores = prune.criterion_scores(model, criterion, reference, input_shape)
        path = folder / f"scores_{criterion}.pt"
        torch.save({k: v.contiguous() for k, v in scores.items()}, path)
        out[criterion] = paths.relative(path)
    return out


@dataclass
class Built:
    """The segments of one plan that one rank holds: modules, FLOPs, and the input shape each takes."""

    segments: dict[int, torch.nn.Module]
    flops: dict[int, int]
    inputs: dict[int, tuple[int, ...]]


class Node:
    """What one rank needs to run its segments: the model, the scores, the scenario, the emulation."""

    CACHE = 16  # built plans kept per rank

    def __init__(self, cfg: RunConfig, rank: int):
        from xaiprune import train

        self.cfg, self.rank = cfg, rank
        self.scenario = system.parse_scenario(cfg.scenario, where="config field scenario")
        self.order = rank_order(self.scenario)           # rank -> device index of the scenario
        self.device = self.order[rank]
        self.criteria = sorted(cfg.scores)
        self.base = train.load(resolve(cfg.checkpoint)).model.eval()
        self.names = list(self.base.segments)
        if len(self.names) > wire.MAX_SEGMENTS:
            raise ValueError(f"{cfg.arch} has {len(self.names)} segments; the wire format carries at most "
                             f"{wire.MAX_SEGMENTS}")
        self.scores = {c: torch.load(resolve(p), map_location="cpu", weights_only=True) for c, p in cfg.scores.items()}
        self.levels = system.load_profiles(resolve(cfg.profiles)).levels
        self.input_shape = tuple(self.base_input_shape())
        trace = None if cfg.trace is None else np.asarray(cfg.trace, dtype=float)
        self.emulator = Emulator(self.scenario, self.order, rank, trace, cfg.emulate)
        self.built: "OrderedDict[tuple, Built]" = OrderedDict()
        self._output_shape: tuple[int, ...] | None = None
        self.max_payload = self.largest_tensor()

    def base_input_shape(self) -> tuple[int, int, int]:
        from medmnist import INFO

        return INFO[self.cfg.flag]["n_channels"], self.cfg.size, self.cfg.size

    def largest_tensor(self) -> int:
        """Elements of the largest tensor any plan can send: the image or a segment's output, unpruned (pruning
        only removes channels). A receiver refuses a larger payload before allocating it."""
        sizes = [math.prod(self.input_shape)]
        with torch.inference_mode():
            x = torch.zeros(1, *self.input_shape)
            for name in self.names:
                x = self.base.segments[name](x)
                sizes.append(x.numel())
        return max(sizes)

    @property
    def limits(self) -> wire.Limits:
        return wire.Limits(len(self.order), len(self.names), len(self.levels), len(self.criteria), self.max_payload)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the logits of one image (pruning never changes it)."""
        if self._output_shape is None:
            with torch.inference_mode():
                self._output_shape = tuple(self.base(torch.zeros(1, *self.input_shape)).shape)
        return self._output_shape

    def prepare(self, criterion: int, levels: list[int], devices: list[int]) -> Built:
        """Build (or take from the cache) this rank's segments of a plan."""
        mine = tuple(s for s, r in enumerate(devices) if r == self.rank)
        key = (criterion, tuple(levels), mine)
        if key in self.built:
            self.built.move_to_end(key)
            return self.built[key]
        full = prune.prune_with_scores(self.base, {n: self.levels[lv] for n, lv in zip(self.names, levels)},
                                       self.scores[self.criteria[criterion]], self.input_shape)
        costs = prune.profile(full, self.input_shape)["segment_macs"]
        inputs = {}
        with torch.inference_mode():  # warm up (the first pass through new modules allocates); note input shapes
            x = torch.zeros(1, *self.input_shape)
            for s in range(max(mine, default=-1) + 1):
                inputs[s] = tuple(x.shape)
                x = full.segments[self.names[s]](x)
        built = Built({s: full.segments[self.names[s]] for s in mine}, {s: 2 * costs[self.names[s]] for s in mine},
                      {s: inputs[s] for s in mine})
        self.built[key] = built
        if len(self.built) > self.CACHE:
            self.built.popitem(last=False)
        return built

    def run(self, msg: wire.Message, x: torch.Tensor) -> int:
        """Run the plan's segments placed on this rank from ``msg.start``; fill ``msg`` with the output.

        Returns the destination rank of the output (0 for the result), or -1 when the request finished
        here (only on rank 0, when it runs the last segment itself). Raises :class:`PayloadError` for a
        tensor the segment cannot take, before running anything.
        """
        S, s = len(msg.devices), msg.start
        if s >= S:
            raise PayloadError(f"request {msg.request}: an activation for segment {s} of a {S}-segment plan")
        if msg.devices[s] != self.rank:
            raise PayloadError(f"request {msg.request}: segment {self.names[s]} is placed on rank {msg.devices[s]}, "
                               f"not on rank {self.rank}")
        built = self.prepare(msg.criterion, msg.levels, msg.devices)
        if tuple(x.shape) != built.inputs[s]:
            raise PayloadError(f"request {msg.request}: segment {self.names[s]} takes a tensor of shape "
                               f"{built.inputs[s]}, got {tuple(x.shape)}")
        run_start, emulated = time.perf_counter(), 0.0
        with torch.inference_mode():
            while s < S and msg.devices[s] == self.rank:
                start = time.perf_counter()
                x = built.segments[s](x)
                # pad the device's whole run of segments to sum(FLOPs) / speed: a segment this machine computes
                # more slowly than the emulated device can use the slack of the others, as on one real device
                emulated += self.emulator.compute_seconds(built.flops[s])
                pad(run_start, emulated)
                msg.compute_us[s] = us(time.perf_counter() - start)
                msg.flops[s] = built.flops[s]
                s += 1
        msg.start, msg.payload, msg.sender = s, x.contiguous(), self.rank
        dst = msg.devices[s] if s < S else 0
        msg.kind = wire.RESULT if s == S else wire.ACTIVATION
        return -1 if dst == self.rank else dst

    def hop(self, msg: wire.Message, dst: int, tamper=None) -> None:
        """Wait the emulated transfer time of ``msg``'s payload, note it in the header, and send it to ``dst``.

        ``tamper(header)``, if given, edits the header tensor in place before it is sent (fault injection).
        Raises :class:`xaiprune.serving.wire.LinkError` when the send fails.
        """
        if self.emulator.is_cut(dst):
            raise wire.LinkError(dst, "the link is cut (emulated partition)")
        nbytes = msg.payload.numel() * msg.payload.element_size()
        start = time.perf_counter()
        pad(start, self.emulator.transfer_seconds(dst, nbytes, msg.step))
        msg.link_us[msg.start], msg.link_bytes[msg.start] = us(time.perf_counter() - start), nbytes  # the send: end to end only
        header = msg.header()
        if tamper is not None:
            tamper(header)
        wire.send_frame(header, msg.payload, dst, self.cfg.request_timeout_s)

    def advance(self, msg: wire.Message, x: torch.Tensor) -> int:
        """:meth:`run`, then :meth:`hop` unless the request finished here; returns the destination (or -1)."""
        dst = self.run(msg, x)
        if dst != -1:
            self.hop(msg, dst)
        return dst

    def send_image(self, msg: wire.Message, image: torch.Tensor) -> int:
        """The source's first step of a request: run it from here if segment 0 is placed here, else send the image.

        Returns the destination rank (or -1, as :meth:`advance`).
        """
        if msg.devices[0] == self.rank:
            return self.advance(msg, image)
        msg.payload, msg.sender = image.contiguous(), self.rank
        self.hop(msg, msg.devices[0])
        return msg.devices[0]

    def check_result(self, msg: wire.Message) -> None:
        """Raise :class:`PayloadError` unless ``msg`` carries the logits of one image."""
        if tuple(msg.payload.shape) != self.output_shape:
            raise PayloadError(f"request {msg.request}: a result must be logits of shape {self.output_shape}, "
                               f"got {tuple(msg.payload.shape)}")
