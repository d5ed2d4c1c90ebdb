"""Real distributed inference: one process per device, torch.distributed with gloo over TCP.

    python -m xaiprune.distributed --config run.json       # rank 0, the source device
    python -m xaiprune.distributed                         # every other rank (gets the config from rank 0)

Each process reads the standard variables ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (default
127.0.0.1) and ``MASTER_PORT``, so the same code runs on several hosts; :func:`launch` starts every
rank on this machine. Rank 0 is the scenario's source device: it holds the test images, plans every
request (NLP, RL or a fixed rule), and receives the label. Rank r > 0 is another device. WORLD_SIZE
must equal the scenario's number of devices.

**Segments.** Every device loads the trained checkpoint and the criterion's per-filter scores
(``torch.save`` of ``{conv name: scores}``, from :func:`write_scores`) and builds the segments the plan
gives it with :func:`xaiprune.prune.prune_with_scores`: pruned, never retrained. Built segments are
cached per (criterion, levels), and rebuilt when the plan changes (a PREPARE message, answered by
READY, before the request is sent; its time is logged apart from the inference latency).

**Wire format.** A message is a header of :data:`HEADER` int64 values (magic, version, kind, request,
attempt, the plan, the shape and dtype of the payload, timing fields), then, if the header announces
one, a float32 payload of exactly that shape. Never a pickle: a receiver checks every header field
and answers a malformed header with an ERROR message instead of acting on it.

**Emulation.** On one machine every link and device is equally fast, so the scenario's are emulated
(``emulate=True``): a device pads the compute of the segments it runs for a request to FLOPs / speed
(the FLOPs of the segments it really built, speed from the scenario), and a sender waits bytes / bandwidth + link latency before
sending, with the bandwidth of the scenario times the trace's multiplier at that request. The bytes
are those of the tensor really sent. With ``emulate=False`` (real hardware) nothing is padded.

**Faults.** Every worker increments a heartbeat counter in rank 0's TCP store every
``heartbeat_s``; a worker whose counter stops for ``dead_after_s``, or whose link fails a send, is
declared dead, removed from the planner's scenario, and the request is re-planned on the remaining
devices and sent again (a new attempt). One answer per request is accepted: a late answer of an
earlier attempt, or a repeated one, is logged and discarded. Rank 0 counts every result it receives
per request id, accepted or not (``answers``); a request with ``answers`` > 1 is *duplicated* (it was
answered more than once, whichever answer was used). Workers exit when rank 0's store disappears;
:func:`launch` kills whatever is left on success, failure, timeout or interrupt.

Outputs (rank 0, in the run folder): ``requests.jsonl`` (one line per answered request: plan,
prediction, measured latency (from the first send of the request to its answer, so a re-planned request
carries its detection and re-planning time; ``attempt_latency_ms`` is that of the last attempt alone) and
predicted latency, per-segment and per-link times and bytes, energy per device, and ``answers``: the
results received for its request id until the end of the run), ``events.jsonl`` (deaths, re-plans,
discarded answers, faults) and ``summary.json`` (per policy: answered, lost, duplicated, late_discarded).
Used by ``07_distributed.ipynb``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from xaiprune import models, paths, prune, system

# ----- wire format ---------------------------------------------------------------------------------
MAGIC, VERSION = 0x58414950, 1  # "XAIP"
HEADER = 80                      # int64 values per header
MAX_SEGMENTS = 8
MAX_PAYLOAD = 1 << 26            # float32 elements (256 MB): anything larger is refused
TAG_HEADER, TAG_PAYLOAD = 1, 2
PREPARE, READY, ACTIVATION, RESULT, SHUTDOWN, ERROR = 1, 2, 3, 4, 5, 6
KINDS = {PREPARE: "prepare", READY: "ready", ACTIVATION: "activation", RESULT: "result",
         SHUTDOWN: "shutdown", ERROR: "error"}
MALFORMED, UNREACHABLE, FAILED = 1, 2, 3  # error codes
# header layout: fixed fields, then per-segment and per-hop arrays (hop h carries the input of
# segment h; hop S carries the logits back to the source)
_F = dict(magic=0, version=1, kind=2, request=3, attempt=4, step=5, criterion=6, policy=7, n_segments=8,
          start=9, dtype=10, ndim=11, shape=12, sender=16, error=17, detail=18, extra_us=19,
          devices=20, levels=28, compute_us=36, flops=44, link_us=52, link_bytes=61)


class ProtocolError(ValueError):
    """A header that does not follow the wire format; the message says which field and why."""


@dataclass
class Message:
    """One message: what the header says, and the payload tensor if any."""

    kind: int
    request: int = -1
    attempt: int = 0
    step: int = 0
    criterion: int = 0
    policy: int = 0
    devices: list[int] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    start: int = 0
    sender: int = -1
    error: int = 0
    detail: int = 0
    extra_us: int = 0
    compute_us: list[int] = field(default_factory=lambda: [0] * MAX_SEGMENTS)
    flops: list[int] = field(default_factory=lambda: [0] * MAX_SEGMENTS)
    link_us: list[int] = field(default_factory=lambda: [0] * (MAX_SEGMENTS + 1))
    link_bytes: list[int] = field(default_factory=lambda: [0] * (MAX_SEGMENTS + 1))
    payload: torch.Tensor | None = None

    def header(self) -> torch.Tensor:
        h = torch.zeros(HEADER, dtype=torch.int64)
        for name in ("kind", "request", "attempt", "step", "criterion", "policy", "start", "sender", "error",
                     "detail", "extra_us"):
            h[_F[name]] = getattr(self, name)
        h[_F["magic"]], h[_F["version"]], h[_F["n_segments"]] = MAGIC, VERSION, len(self.devices)
        for name in ("devices", "levels"):
            values = getattr(self, name)
            h[_F[name]:_F[name] + MAX_SEGMENTS] = -1
            h[_F[name]:_F[name] + len(values)] = torch.tensor(values, dtype=torch.int64)
        for name, n in (("compute_us", MAX_SEGMENTS), ("flops", MAX_SEGMENTS), ("link_us", MAX_SEGMENTS + 1),
                        ("link_bytes", MAX_SEGMENTS + 1)):
            h[_F[name]:_F[name] + n] = torch.tensor(getattr(self, name), dtype=torch.int64)
        if self.payload is not None:
            if self.payload.dtype != torch.float32 or not 1 <= self.payload.ndim <= 4:
                raise ProtocolError(f"payload must be float32 with 1-4 dimensions, got {self.payload.dtype} "
                                    f"{tuple(self.payload.shape)}")
            h[_F["dtype"]], h[_F["ndim"]] = 1, self.payload.ndim
            h[_F["shape"]:_F["shape"] + self.payload.ndim] = torch.tensor(self.payload.shape)
        return h

    @classmethod
    def parse(cls, h: torch.Tensor, world_size: int, n_segments: int, n_levels: int,
              n_criteria: int) -> tuple["Message", tuple[int, ...] | None]:
        """Check every field of a received header; return the message and the payload shape to expect."""
        if h.dtype != torch.int64 or h.shape != (HEADER,):
            raise ProtocolError(f"header must be {HEADER} int64 values, got {h.dtype} {tuple(h.shape)}")
        v = h.tolist()

        def field_(name: str, lo: int, hi: int) -> int:
            x = v[_F[name]]
            if not lo <= x <= hi:
                raise ProtocolError(f"header field {name}={x}: expected {lo}..{hi}")
            return x

        if v[_F["magic"]] != MAGIC:
            raise ProtocolError(f"header field magic={v[_F['magic']]:#x}: expected {MAGIC:#x} (not an xaiprune message)")
        field_("version", VERSION, VERSION)
        kind = v[_F["kind"]]
        if kind not in KINDS:
            raise ProtocolError(f"header field kind={kind}: expected one of {sorted(KINDS)}")
        S = field_("n_segments", 0, MAX_SEGMENTS)
        if S not in (0, n_segments):
            raise ProtocolError(f"header field n_segments={S}: this model has {n_segments} segments")
        devices = v[_F["devices"]:_F["devices"] + S]
        levels = v[_F["levels"]:_F["levels"] + S]
        if any(not 0 <= d < world_size for d in devices):
            raise ProtocolError(f"header field devices={devices}: expected ranks 0..{world_size - 1}")
        if any(not 0 <= lv < n_levels for lv in levels):
            raise ProtocolError(f"header field levels={levels}: expected level indices 0..{n_levels - 1}")
        msg = cls(kind=kind, request=field_("request", -1, 2 ** 40), attempt=field_("attempt", 0, 1000),
                  step=field_("step", 0, 2 ** 40), criterion=field_("criterion", 0, max(n_criteria - 1, 0)),
                  policy=field_("policy", 0, 1000), devices=devices, levels=levels, start=field_("start", 0, S),
                  sender=field_("sender", -1, world_size - 1), error=field_("error", 0, 100),
                  detail=field_("detail", -1, 2 ** 40), extra_us=field_("extra_us", 0, 2 ** 50),
                  compute_us=v[_F["compute_us"]:_F["compute_us"] + MAX_SEGMENTS],
                  flops=v[_F["flops"]:_F["flops"] + MAX_SEGMENTS],
                  link_us=v[_F["link_us"]:_F["link_us"] + MAX_SEGMENTS + 1],
                  link_bytes=v[_F["link_bytes"]:_F["link_bytes"] + MAX_SEGMENTS + 1])
        if kind in (ACTIVATION, PREPARE) and S == 0:
            raise ProtocolError(f"header field n_segments=0: a {KINDS[kind]} message needs the plan")
        dtype, ndim = field_("dtype", 0, 1), field_("ndim", 0, 4)
        if (dtype == 0) != (ndim == 0):
            raise ProtocolError(f"header fields dtype={dtype}, ndim={ndim}: both zero (no payload) or both set")
        needs = kind in (ACTIVATION, RESULT)
        if needs != (dtype == 1):
            raise ProtocolError(f"header field dtype={dtype}: a {KINDS[kind]} message "
                                f"{'carries' if needs else 'carries no'} payload")
        if not dtype:
            return msg, None
        shape = tuple(v[_F["shape"]:_F["shape"] + ndim])
        if any(d < 1 for d in shape) or math.prod(shape) > MAX_PAYLOAD:
            raise ProtocolError(f"header field shape={shape}: expected positive sizes, at most {MAX_PAYLOAD} elements")
        return msg, shape


def send(msg: Message, dst: int) -> None:
    """Send a header and its payload (if any) to rank ``dst``."""
    dist.send(msg.header(), dst, tag=TAG_HEADER)
    if msg.payload is not None:
        dist.send(msg.payload.contiguous(), dst, tag=TAG_PAYLOAD)


def receive(world_size: int, n_segments: int, n_levels: int, n_criteria: int) -> tuple[int, Message | ProtocolError]:
    """Wait for a message from any rank; return the sender and the message, or the ProtocolError."""
    h = torch.zeros(HEADER, dtype=torch.int64)
    src = dist.recv(h, tag=TAG_HEADER)
    try:
        msg, shape = Message.parse(h, world_size, n_segments, n_levels, n_criteria)
    except ProtocolError as exc:
        return src, exc
    if shape is not None:
        msg.payload = torch.empty(shape, dtype=torch.float32)
        dist.recv(msg.payload, src=src, tag=TAG_PAYLOAD)
    return src, msg


# ----- configuration -------------------------------------------------------------------------------
PLANNERS = ("nlp", "rl", "no_pruning", "static", "local", "fixed")
FAULTS = ("kill", "duplicate")  # what fault injection does (see RunConfig)


def resolve(path: str | os.PathLike) -> Path:
    """A path of the config: absolute, or relative to the project root (the same on every host)."""
    p = Path(path)
    return p if p.is_absolute() else paths.ROOT / p


@dataclass
class RunConfig:
    """Everything every rank needs, as JSON; rank 0 shares it with the others through the TCP store.

    Paths are relative to the project root (or absolute). ``policies`` is a list of
    ``{"name", "planner", "criterion", "agent", "level", "plan"}``: planner one of :data:`PLANNERS`
    (``nlp`` the exact optimum per request, ``rl`` a saved agent, ``no_pruning`` the best placement
    unpruned, ``static`` every segment at ``level`` with the best placement, ``local`` the whole
    unpruned model on the source, ``fixed`` the ``plan`` ``{"devices": [names], "levels": [fractions]}``
    for every request). Whatever the planner, a plan that uses a dead device is replaced by the exact
    optimum on the live ones. ``trace`` is a (T, N, N) list of bandwidth multipliers, request t
    seeing ``trace[t % T]``. ``fault`` is ``{"policy", "device", "request", "kind"}``: with kind
    ``kill`` (the default) that device's process kills itself (SIGKILL) on receiving the first activation
    of that policy at or after that request; with ``duplicate`` it sends the first result it returns to
    the source for that policy at or after that request twice (to test that duplicates are counted).
    """

    arch: str
    flag: str
    size: int
    checkpoint: str
    scores: dict[str, str]
    scenario: dict
    profiles: str
    policies: list[dict]
    n_requests: int = 0               # 0: the whole test split
    data_root: str = ""
    seed: int = 0
    trace: list | None = None
    emulate: bool = True
    heartbeat_s: float = 0.1
    dead_after_s: float = 1.0
    request_timeout_s: float = 5.0
    max_attempts: int = 4
    fault: dict | None = None
    threads: int = 1                  # torch threads per process (one request runs at a time)

    def validate(self) -> "RunConfig":
        """Check the config before any process starts; errors name the field."""
        errors = []
        scenario = system.parse_scenario(self.scenario, where="config field scenario")
        for name, value in (("checkpoint", self.checkpoint), ("profiles", self.profiles),
                            *((f"scores[{c}]", p) for c, p in self.scores.items())):
            if not resolve(value).is_file():
                errors.append(f"config field {name}: no file {resolve(value)}")
        profile = system.load_profiles(resolve(self.profiles)) if resolve(self.profiles).is_file() else None
        if not self.policies:
            errors.append("config field policies: expected at least one policy")
        names = [p.get("name") for p in self.policies]
        if len(set(names)) != len(names) or not all(names):
            errors.append(f"config field policies: every policy needs a distinct name, got {names}")
        for i, p in enumerate(self.policies):
            unknown = set(p) - {"name", "planner", "criterion", "agent", "level", "plan"}
            if unknown:
                errors.append(f"config field policies[{i}]: unknown keys {sorted(unknown)}")
            if p.get("planner") not in PLANNERS:
                errors.append(f"config field policies[{i}].planner={p.get('planner')!r}: expected one of {PLANNERS}")
            if p.get("criterion", "lrp") not in self.scores:
                errors.append(f"config field policies[{i}].criterion={p.get('criterion')!r}: no scores file for it "
                              f"(scores has {sorted(self.scores)})")
            if p.get("planner") == "fixed" and profile is not None:
                plan = p.get("plan") or {}
                devs, levs = plan.get("devices", []), plan.get("levels", [])
                if len(devs) != len(profile.segments) or len(levs) != len(profile.segments) \
                        or any(d not in [x.name for x in scenario.devices] for d in devs) \
                        or any(lv not in profile.levels for lv in levs):
                    errors.append(f"config field policies[{i}].plan={plan}: expected {len(profile.segments)} device "
                                  f"names of the scenario and {len(profile.segments)} levels of {profile.levels}")
            if p.get("planner") == "rl" and not resolve(str(p.get("agent", ""))).with_suffix(".zip").is_file():
                errors.append(f"config field policies[{i}].agent: no agent file {p.get('agent')!r}")
        if not isinstance(self.n_requests, int) or self.n_requests < 0:
            errors.append(f"config field n_requests={self.n_requests!r}: expected 0 (all) or a positive integer")
        if self.trace is not None:
            t = np.asarray(self.trace, dtype=float)
            if t.ndim != 3 or t.shape[1:] != (scenario.n, scenario.n) or (t <= 0).any():
                errors.append(f"config field trace: expected positive multipliers of shape (T, {scenario.n}, "
                              f"{scenario.n}), got {t.shape}")
        for name in ("heartbeat_s", "dead_after_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                errors.append(f"config field {name}={getattr(self, name)}: expected a positive number of seconds")
        if self.dead_after_s < 3 * self.heartbeat_s:
            errors.append(f"config field dead_after_s={self.dead_after_s}: expected at least 3 heartbeats "
                          f"({3 * self.heartbeat_s} s)")
        if self.fault is not None:
            devices = [d.name for d in scenario.devices]
            if self.fault.get("policy") not in names:
                errors.append(f"config field fault.policy={self.fault.get('policy')!r}: expected one of {names}")
            if self.fault.get("device") not in devices or self.fault.get("device") == devices[scenario.source]:
                errors.append(f"config field fault.device={self.fault.get('device')!r}: expected a device other "
                              f"than the source {devices[scenario.source]!r}, one of {devices}")
            if not isinstance(self.fault.get("request"), int) or self.fault["request"] < 0:
                errors.append(f"config field fault.request={self.fault.get('request')!r}: expected a request index")
            if self.fault.get("kind", "kill") not in FAULTS:
                errors.append(f"config field fault.kind={self.fault.get('kind')!r}: expected one of {FAULTS}")
            unknown = set(self.fault) - {"policy", "device", "request", "kind"}
            if unknown:
                errors.append(f"config field fault: unknown keys {sorted(unknown)}")
        if errors:
            raise ValueError("distributed run config rejected:\n  " + "\n  ".join(errors))
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls(**json.loads(text))


def write_scores(model: models.SegmentedModel, criteria: list[str], reference, folder: Path,
                 input_shape: tuple[int, int, int] = (1, 28, 28)) -> dict[str, str]:
    """Score every filter once per criterion on the unpruned model; save ``scores_<criterion>.pt``.

    Returns ``{criterion: path relative to the project root when inside it}`` for :class:`RunConfig`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for criterion in criteria:
        scores = prune.criterion_scores(model, criterion, reference, input_shape)
        path = folder / f"scores_{criterion}.pt"
        torch.save({k: v.contiguous() for k, v in scores.items()}, path)
        out[criterion] = paths.relative(path)
    return out


# ----- one device: its segments, its emulated speed and links --------------------------------------
@dataclass
class Built:
    segments: dict[int, torch.nn.Module]
    flops: dict[int, int]


class Device:
    """What one rank needs to run its segments: the model, the scores, the scenario, the emulation."""

    CACHE = 16  # built plans kept per device

    def __init__(self, cfg: RunConfig, rank: int):
        from xaiprune import train

        self.cfg, self.rank = cfg, rank
        self.scenario = system.parse_scenario(cfg.scenario, where="config field scenario")
        self.order = rank_order(self.scenario)           # rank -> device index of the scenario
        self.device = self.order[rank]
        self.criteria = sorted(cfg.scores)
        self.base = train.load(resolve(cfg.checkpoint)).model.eval()
        self.names = list(self.base.segments)
        if len(self.names) > MAX_SEGMENTS:
            raise ValueError(f"{cfg.arch} has {len(self.names)} segments; the wire format carries at most {MAX_SEGMENTS}")
        self.scores = {c: torch.load(resolve(p), map_location="cpu", weights_only=True) for c, p in cfg.scores.items()}
        self.levels = system.load_profiles(resolve(cfg.profiles)).levels
        self.input_shape = tuple(self.base_input_shape())
        self.trace = None if cfg.trace is None else np.asarray(cfg.trace, dtype=float)
        self.built: "OrderedDict[tuple, Built]" = OrderedDict()

    def base_input_shape(self) -> tuple[int, int, int]:
        from medmnist import INFO

        return INFO[self.cfg.flag]["n_channels"], self.cfg.size, self.cfg.size

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
        built = Built({s: full.segments[self.names[s]] for s in mine},
                      {s: 2 * costs[self.names[s]] for s in mine})
        with torch.inference_mode():  # warm up: the first pass through new modules allocates
            x = torch.zeros(1, *self.input_shape)
            for s in range(max(mine, default=-1) + 1):
                x = full.segments[self.names[s]](x)
        self.built[key] = built
        if len(self.built) > self.CACHE:
            self.built.popitem(last=False)
        return built

    def transfer_seconds(self, dst_rank: int, nbytes: int, step: int) -> float:
        if not self.cfg.emulate or dst_rank == self.rank:
            return 0.0
        a, b = self.device, self.order[dst_rank]
        bw = self.scenario.bandwidth[a, b] * (1.0 if self.trace is None else self.trace[step % len(self.trace)][a, b])
        lat = 0.0 if self.scenario.link_latency is None else self.scenario.link_latency[a, b]
        return nbytes / bw + lat

    def compute_seconds(self, flops: int) -> float:
        return flops / self.scenario.devices[self.device].speed if self.cfg.emulate else 0.0

    def advance(self, msg: Message, x: torch.Tensor) -> tuple[int, Message]:
        """Run the plan's segments placed on this rank from ``msg.start``, then send the tensor on.

        Returns ``(destination rank, message)``; destination -1 means the request finished here
        (only on rank 0, when it runs the last segment itself). Raises RuntimeError when the send fails.
        """
        built = self.prepare(msg.criterion, msg.levels, msg.devices)
        S = len(msg.devices)
        s = msg.start
        run_start, emulated = time.perf_counter(), 0.0
        with torch.inference_mode():
            while s < S and msg.devices[s] == self.rank:
                start = time.perf_counter()
                x = built.segments[s](x)
                # pad the device's whole run of segments to sum(FLOPs) / speed: a segment this machine computes
                # more slowly than the emulated device can use the slack of the others, as on one real device
                emulated += self.compute_seconds(built.flops[s])
                _pad(run_start, emulated)
                msg.compute_us[s] = _us(time.perf_counter() - start)
                msg.flops[s] = built.flops[s]
                s += 1
        msg.start, msg.payload, msg.sender = s, x.contiguous(), self.rank
        dst = msg.devices[s] if s < S else 0
        if dst == self.rank:
            msg.kind = RESULT
            return -1, msg
        msg.kind = RESULT if s == S else ACTIVATION
        nbytes = msg.payload.numel() * msg.payload.element_size()
        start = time.perf_counter()
        _pad(start, self.transfer_seconds(dst, nbytes, msg.step))
        msg.link_us[s], msg.link_bytes[s] = _us(time.perf_counter() - start), nbytes  # the send itself: end to end only
        send(msg, dst)
        return dst, msg


def rank_order(scenario: system.Scenario) -> list[int]:
    """Rank r runs device ``rank_order(scenario)[r]``: the source is rank 0, the others follow in order."""
    return [scenario.source] + [j for j in range(scenario.n) if j != scenario.source]


def _us(seconds: float) -> int:
    return int(round(seconds * 1e6))


def _pad(start: float, seconds: float) -> None:
    """Sleep until ``seconds`` after ``start`` (no-op if already past)."""
    left = start + seconds - time.perf_counter()
    if left > 0:
        time.sleep(left)


# ----- worker --------------------------------------------------------------------------------------
def _heartbeat(host: str, port: int, rank: int, every: float, stop: threading.Event) -> None:
    """Count up ``xaiprune/hb/<rank>`` in rank 0's store; exit the process when the store is gone."""
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=dt.timedelta(seconds=10), wait_for_workers=False)
        while not stop.is_set():
            store.add(f"xaiprune/hb/{rank}", 1)
            stop.wait(every)
    except Exception as exc:  # rank 0 and its store are gone: nobody will ever send us anything
        print(f"rank {rank}: lost the coordinator's store ({type(exc).__name__}); exiting", flush=True)
        os._exit(3)


def worker(cfg: RunConfig, rank: int, world: int, store, host: str, port: int) -> int:
    dev = Device(cfg, rank)
    torch.set_num_threads(cfg.threads)
    fault = cfg.fault if cfg.fault and dev.scenario.index(cfg.fault["device"]) == dev.device else None
    fault_policy = [p["name"] for p in cfg.policies].index(fault["policy"]) if fault else -1
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(host, port, rank, cfg.heartbeat_s, stop), daemon=True).start()
    store.set(f"xaiprune/up/{rank}", "1")
    dims = (world, len(dev.names), len(dev.levels), len(dev.criteria))
    print(f"rank {rank}: device {dev.scenario.devices[dev.device].name} ready", flush=True)
    while True:
        src, msg = receive(*dims)
        if isinstance(msg, ProtocolError):
            print(f"rank {rank}: refused a message from rank {src}: {msg}", flush=True)
            _try_send(Message(ERROR, error=MALFORMED, sender=rank, detail=src), 0)
            continue
        if msg.kind == SHUTDOWN:
            break
        if msg.kind == PREPARE:
            start = time.perf_counter()
            dev.prepare(msg.criterion, msg.levels, msg.devices)
            _try_send(Message(READY, request=msg.request, attempt=msg.attempt, policy=msg.policy, sender=rank,
                              devices=msg.devices, levels=msg.levels, criterion=msg.criterion,
                              extra_us=_us(time.perf_counter() - start)), 0)
        elif msg.kind == ACTIVATION:
            hit = fault is not None and msg.policy == fault_policy and msg.request >= fault["request"]
            if hit and fault.get("kind", "kill") == "kill":
                print(f"rank {rank}: fault injection: dying mid-request {msg.request} (SIGKILL)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                dst, out = dev.advance(msg, msg.payload)
                if hit and out.kind == RESULT:  # a "duplicate" fault (a "kill" never gets here): send it again, once
                    print(f"rank {rank}: fault injection: sending the result of request {msg.request} twice",
                          flush=True)
                    send(out, dst)
                    fault = None
            except RuntimeError as exc:  # the next device is gone: tell the coordinator which
                dst = msg.devices[msg.start] if msg.start < len(msg.devices) else 0
                print(f"rank {rank}: send to rank {dst} failed: {str(exc).splitlines()[0][:120]}", flush=True)
                _try_send(Message(ERROR, request=msg.request, attempt=msg.attempt, error=UNREACHABLE,
                                  sender=rank, detail=dst), 0)
        else:
            _try_send(Message(ERROR, request=msg.request, error=MALFORMED, sender=rank, detail=src), 0)
    stop.set()
    store.set(f"xaiprune/bye/{rank}", "1")
    print(f"rank {rank}: shut down", flush=True)
    return 0


def _try_send(msg: Message, dst: int) -> None:
    with contextlib.suppress(RuntimeError):
        send(msg, dst)


# ----- coordinator (rank 0) ------------------------------------------------------------------------
class Coordinator:
    """Plans, sends and collects every request; detects dead workers and re-plans."""

    def __init__(self, cfg: RunConfig, world: int, store, out_dir: Path):
        from xaiprune import data

        self.cfg, self.store = cfg, store
        self.dev = Device(cfg, 0)
        self.scenario, self.order = self.dev.scenario, self.dev.order
        self.profiles = system.load_profiles(resolve(cfg.profiles))
        if self.profiles.segments != self.dev.names:
            raise ValueError(f"profiles {cfg.profiles} are for segments {self.profiles.segments}, the model has "
                             f"{self.dev.names}")
        test = data.load_split(cfg.flag, "test", cfg.size, cfg.data_root or None)
        n = len(test) if cfg.n_requests == 0 else min(cfg.n_requests, len(test))
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(test))[:n]) if n < len(test) else np.arange(n)
        self.images, self.labels, self.index = test.x[idx], test.y[idx], idx
        self.inbox: queue.Queue = queue.Queue()
        self.dims = (world, len(self.dev.names), len(self.dev.levels), len(self.dev.criteria))
        self.alive = {r: True for r in range(1, world)}
        self.beats = {r: (-1, time.monotonic()) for r in range(1, world)}
        self.held: dict[int, tuple] = {}
        self.events = open(out_dir / "events.jsonl", "a", buffering=1)
        self.requests_path = out_dir / "requests.jsonl"
        self.rows: list[tuple[int, dict]] = []           # (policy index, row) of every accepted answer
        self.answers: Counter = Counter()                 # (policy index, request) -> results received
        self.answered: dict[int, set[int]] = {}           # policy index -> requests whose answer was accepted
        self.policy_index = 0
        self.current = (-1, -1)  # (request, attempt) in flight
        threading.Thread(target=self._receive_loop, daemon=True).start()

    # -- plumbing --
    def _receive_loop(self) -> None:
        while True:
            self.inbox.put(receive(*self.dims))

    def event(self, what: str, **detail) -> None:
        row = {"time": time.time(), "policy": self.cfg.policies[self.policy_index]["name"], "event": what, **detail}
        self.events.write(json.dumps(row) + "\n")
        print(f"EVENT {json.dumps(row)}", flush=True)

    def _name(self, rank: int) -> str:
        return self.scenario.devices[self.order[rank]].name

    def check_heartbeats(self) -> list[int]:
        """Ranks whose heartbeat counter has not moved for ``dead_after_s``; they are marked dead."""
        now, dead = time.monotonic(), []
        for r, ok in self.alive.items():
            if not ok:
                continue
            count = self.store.add(f"xaiprune/hb/{r}", 0)
            last, since = self.beats[r]
            if count != last:
                self.beats[r] = (count, now)
            elif now - since > self.cfg.dead_after_s:
                self.mark_dead(r, f"no heartbeat for {now - since:.2f} s")
                dead.append(r)
        return dead

    def mark_dead(self, rank: int, reason: str) -> None:
        if rank == 0 or not self.alive.get(rank, False):
            return
        self.alive[rank] = False
        self.held.pop(rank, None)
        self.event("device dead", rank=rank, device=self._name(rank), reason=reason)

    def wait(self, want, watch: set[int], timeout: float):
        """Wait for a message ``want(src, msg)`` accepts; ("dead", ranks) if a watched rank dies; ("timeout",)."""
        end = time.monotonic() + timeout
        last_check = 0.0
        while True:
            try:
                src, msg = self.inbox.get(timeout=0.01)
            except queue.Empty:
                pass
            else:
                if not isinstance(msg, ProtocolError) and msg.kind == RESULT:
                    self.answers[(msg.policy, msg.request)] += 1  # every result received counts, used or not
                if isinstance(msg, ProtocolError):
                    self.event("malformed message", rank=src, error=str(msg))
                elif msg.kind == ERROR:
                    if msg.error == UNREACHABLE:
                        self.mark_dead(msg.detail, f"rank {src} could not send to it")
                    else:
                        self.event("worker error", rank=src, code=msg.error, detail=msg.detail)
                elif want(src, msg):
                    return ("ok", src, msg)
                elif msg.kind == ACTIVATION and self.current == (msg.request, msg.attempt):
                    try:  # the plan passes through the source device midway
                        dst, out = self.dev.advance(msg, msg.payload)
                    except RuntimeError:
                        self.mark_dead(msg.devices[msg.start], "rank 0 could not send to it")
                        continue
                    if dst == -1:  # the source ran the last segment: the result arrives here
                        self.answers[(out.policy, out.request)] += 1
                        if want(0, out):
                            return ("ok", 0, out)
                else:
                    self.event("discarded", rank=src, message=KINDS[msg.kind], request=msg.request, attempt=msg.attempt)
            now = time.monotonic()
            if now - last_check > min(0.25, self.cfg.dead_after_s / 4):  # store reads cost the request latency
                last_check = now
                self.check_heartbeats()
            gone = {r for r in watch if not self.alive.get(r, True)}
            if gone:
                return ("dead", gone)
            if now > end:
                return ("timeout",)

    # -- planning --
    def make_env(self):
        from xaiprune import env as ward_env

        dyn = ward_env.Dynamics(p_drop=0.0, p_return=0.0, load_step=0.0, priority_probs=(0, 1, 0))
        trace = None if self.cfg.trace is None else np.asarray(self.cfg.trace, dtype=float)
        env = ward_env.WardEnv(self.scenario, self.profiles, dyn, episode_length=max(len(self.labels), 1), trace=trace)
        env.reset(seed=self.cfg.seed)
        return env

    def planner(self, policy: dict):
        from xaiprune import nlp, rl

        S = self.profiles.S
        kind = policy["planner"]
        if kind == "nlp":
            return rl.nlp_policy("enumeration")
        if kind == "no_pruning":
            return rl.no_pruning_policy
        if kind == "rl":
            model, _ = rl.load(resolve(policy["agent"]))
            return rl.agent_policy(model)
        if kind == "static":
            level = self.profiles.levels.index(min(self.profiles.levels, key=lambda lv: abs(lv - policy["level"])))

            def static(env, obs):
                r = nlp.solve_enumeration(env.instance(), env.profiles, fix_levels=[level] * S)
                devices = r.plan.devices if r.plan is not None else nlp.greedy(env.instance(), env.profiles).plan.devices
                return env.action_of(system.Plan(devices, [level] * S))
            return static
        if kind == "fixed":
            fixed = system.Plan([self.scenario.index(d) for d in policy["plan"]["devices"]],
                                [self.profiles.levels.index(lv) for lv in policy["plan"]["levels"]])
            return lambda env, obs: env.action_of(fixed)
        return lambda env, obs: env.action_of(system.Plan([self.scenario.source] * S, [0] * S))

    def decide(self, env, planner) -> tuple[system.Plan, str, float]:
        """The policy's plan; if it uses a dead device, the exact optimum on the live ones (logged)."""
        from xaiprune import rl

        start = time.perf_counter()
        plan = env.plan_of(planner(env, env.observation()))
        how = "policy"
        dead = {self.order[r] for r, ok in self.alive.items() if not ok}
        if dead & set(plan.devices):
            plan, how = env.plan_of(rl.nlp_policy("enumeration")(env, env.observation())), "fallback: optimum"
        return plan, how, time.perf_counter() - start

    def lose(self, env, ranks: set[int]) -> None:
        """Remove dead devices from the planner's view of the ward."""
        names = tuple(self._name(r) for r in ranks)
        env.scenario = env.scenario.with_changes(unavailable=names)
        for r in ranks:
            env.state.available[self.order[r]] = False

    # -- serving --
    def prepare(self, msg: Message) -> tuple[str, set[int]] | tuple[str, float]:
        """Make every rank of the plan hold its segments; ("ok", seconds) or ("dead", ranks)."""
        start = time.perf_counter()
        self.dev.prepare(msg.criterion, msg.levels, msg.devices)
        key = (msg.criterion, tuple(msg.levels), tuple(msg.devices))
        todo = {r for r in set(msg.devices) - {0} if self.held.get(r) != key}
        for r in sorted(todo):
            try:
                send(Message(PREPARE, request=msg.request, attempt=msg.attempt, policy=msg.policy, criterion=msg.criterion,
                             devices=msg.devices, levels=msg.levels, sender=0), r)
            except RuntimeError:
                self.mark_dead(r, "PREPARE could not be sent")
                return ("dead", {r})
        while todo:
            got = self.wait(lambda src, m: m.kind == READY and src in todo and m.request == msg.request
                            and m.attempt == msg.attempt, todo, self.cfg.request_timeout_s)
            if got[0] != "ok":
                return ("dead", got[1]) if got[0] == "dead" else ("dead", set(todo))
            todo.discard(got[1])
            self.held[got[1]] = key
        return ("ok", time.perf_counter() - start)

    def serve(self, p_index: int, policy: dict) -> dict:
        """Serve every test image with one policy; one line per answered request in requests.jsonl."""
        self.policy_index = p_index
        env = self.make_env()
        planner = self.planner(policy)
        criterion = self.dev.criteria.index(policy.get("criterion", "lrp"))
        n, answered = len(self.labels), self.answered.setdefault(p_index, set())
        dead_before = {r for r, ok in self.alive.items() if not ok}
        if dead_before:
            self.lose(env, dead_before)
        for t in range(n):
            attempt, plan, how, decision = 0, *self.decide(env, planner)
            extra_prepare, first_send = 0.0, None
            while True:
                instance = env.instance()
                msg = Message(ACTIVATION, request=t, attempt=attempt, step=t, criterion=criterion, policy=p_index,
                              devices=[self.order.index(j) for j in plan.devices], levels=list(plan.levels))
                status = self.prepare(msg)
                if status[0] == "ok":
                    extra_prepare += status[1]
                    self.current = (t, attempt)
                    start = time.perf_counter()
                    first_send = start if first_send is None else first_send
                    try:
                        dst, out = self.dev.advance(msg, self.images[t:t + 1])
                        if dst == -1:  # the whole plan ran on the source
                            self.answers[(p_index, t)] += 1
                        got = ("ok", 0, out) if dst == -1 else self.wait(
                            lambda src, m: m.kind == RESULT and m.request == t and m.attempt == attempt,
                            set(msg.devices) - {0}, self.cfg.request_timeout_s)
                    except RuntimeError:
                        self.mark_dead(msg.devices[msg.start], "rank 0 could not send to it")
                        got = ("dead", {msg.devices[msg.start]})
                    measured = (time.perf_counter() - first_send, time.perf_counter() - start)
                else:
                    got = status
                if got[0] == "ok":
                    break
                attempt += 1
                reason = f"ranks {sorted(got[1])} dead" if got[0] == "dead" else "timed out"
                if got[0] == "dead":
                    self.lose(env, got[1])
                if attempt >= self.cfg.max_attempts:
                    self.event("request failed", request=t, attempts=attempt, reason=reason)
                    break
                old = plan.describe(self.scenario, self.profiles)
                plan, how, d2 = self.decide(env, planner)
                decision += d2
                self.event("re-planned", request=t, attempt=attempt, reason=reason, old_plan=old,
                           new_plan=plan.describe(self.scenario, self.profiles), how=how)
            if got[0] != "ok":
                env.step(env.action_of(plan))
                continue
            out = got[2]
            answered.add(t)
            self._record(p_index, policy, t, attempt, plan, how, decision, extra_prepare, instance, out, measured)
            env.step(env.action_of(plan))
            print(f"PROGRESS {json.dumps({'policy': policy['name'], 'done': t + 1, 'total': n})}", flush=True)
        # answers that arrive after their request was answered (abandoned attempts, repeats) are drained;
        # :meth:`wait` counted them in ``answers``
        while True:
            got = self.wait(lambda src, m: m.kind == RESULT, set(), 0.05)
            if got[0] != "ok":
                break
            self.event("discarded", rank=got[1], message="result", request=got[2].request, attempt=got[2].attempt)
        self.write_requests()
        return self.summary(p_index)

    def summary(self, p_index: int) -> dict:
        """One policy's counts: requests, answered, lost, duplicated, late_discarded, dead devices.

        ``lost``: requests with no answer accepted; ``duplicated``: requests the source received more than
        one result for (``answers`` > 1, the extra ones accepted or discarded); ``late_discarded``: results
        received but not used.
        """
        n, answered = len(self.labels), self.answered.get(p_index, set())
        counts = [self.answers[(p_index, t)] for t in range(n)]
        return {"policy": self.cfg.policies[p_index]["name"], "requests": n, "answered": len(answered),
                "lost": n - len(answered), "duplicated": sum(c > 1 for c in counts),
                "late_discarded": sum(counts) - len(answered),
                "dead": [self._name(r) for r, ok in self.alive.items() if not ok]}

    def write_requests(self) -> None:
        """(Re)write ``requests.jsonl`` with every accepted answer so far and its request's current ``answers``."""
        tmp = self.requests_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for p_index, row in self.rows:
                f.write(json.dumps({**row, "answers": self.answers[(p_index, row["request"])]}) + "\n")
        tmp.replace(self.requests_path)

    def _record(self, p_index, policy, t, attempt, plan, how, decision, prepare_s, instance, out, measured) -> None:
        S = self.profiles.S
        predicted = system.evaluate(plan, instance, self.profiles)
        ranks = [self.order.index(j) for j in plan.devices]
        energy = np.zeros(self.scenario.n)
        for s, r in enumerate(ranks):
            d = self.order[r]
            energy[d] += self.scenario.devices[d].energy_per_flop * out.flops[s]
        senders = [0] + ranks  # hop h is sent by the device of segment h-1 (the source for h = 0)
        for h in range(S + 1):
            if out.link_bytes[h]:
                d = self.order[senders[h]]
                energy[d] += self.scenario.devices[d].radio_power * out.link_us[h] / 1e6
        logits = out.payload.reshape(-1)
        row = {"policy": policy["name"], "criterion": policy.get("criterion", "lrp"), "request": t,
               "test_index": int(self.index[t]), "label": int(self.labels[t]), "prediction": int(logits.argmax()),
               "logits": [float(v) for v in logits], "attempts": attempt + 1, "planned_by": how,
               "plan": plan.describe(self.scenario, self.profiles), "devices": [self.scenario.devices[j].name for j in plan.devices],
               "levels": [self.profiles.levels[lv] for lv in plan.levels],
               "latency_ms": measured[0] * 1e3, "attempt_latency_ms": measured[1] * 1e3,
               "predicted_latency_ms": predicted.latency * 1e3,
               "deadline_ms": instance.deadline * 1e3, "predicted_violations": predicted.violations,
               "surrogate_accuracy": predicted.accuracy,
               "compute_ms": [c / 1e3 for c in out.compute_us[:S]], "flops": out.flops[:S],
               "link_ms": [c / 1e3 for c in out.link_us[:S + 1]], "link_bytes": out.link_bytes[:S + 1],
               "bytes": int(sum(out.link_bytes[:S + 1])), "energy_j": dict(zip([d.name for d in self.scenario.devices],
                                                                               energy.tolist())),
               "predicted_energy_j": float(predicted.energy.sum()), "decision_ms": decision * 1e3,
               "prepare_ms": prepare_s * 1e3}
        self.rows.append((p_index, row))

    def shutdown(self) -> None:
        for r, ok in self.alive.items():
            if ok:
                _try_send(Message(SHUTDOWN, sender=0), r)
        end = time.monotonic() + 10
        for r, ok in self.alive.items():
            while ok and time.monotonic() < end:
                if self.store.check([f"xaiprune/bye/{r}"]):
                    break
                time.sleep(0.02)


def coordinator(cfg: RunConfig, world: int, store, out_dir: Path) -> int:
    torch.set_num_threads(cfg.threads)
    store.set("xaiprune/config", cfg.to_json())
    waiting, end = set(range(1, world)), time.monotonic() + 300
    while waiting:  # every worker loads the model and says it is up, or says why it failed
        for r in sorted(waiting):
            if store.check([f"xaiprune/failed/{r}"]):
                raise RuntimeError(f"rank {r} failed to start: {store.get(f'xaiprune/failed/{r}').decode()}")
            if store.check([f"xaiprune/up/{r}"]):
                waiting.discard(r)
        if time.monotonic() > end:
            raise RuntimeError(f"ranks {sorted(waiting)} did not start within 300 s")
        time.sleep(0.05)
    coord = Coordinator(cfg, world, store, out_dir)
    try:
        for i, policy in enumerate(cfg.policies):
            print(f"rank 0: {policy['name']}: {coord.serve(i, policy)}", flush=True)
    finally:
        coord.shutdown()
        coord.write_requests()  # answers counted until the end, a late one for an earlier policy included
        summaries = [coord.summary(i) for i in sorted(coord.answered)]
        (out_dir / "summary.json").write_text(json.dumps(
            {"policies": summaries, "dead": [coord._name(r) for r, ok in coord.alive.items() if not ok],
             "world_size": world, "devices": [coord._name(r) for r in range(world)]}, indent=2))
    return 0


# ----- process entry point and launcher ------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xaiprune.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config JSON (rank 0 only; other ranks receive it from rank 0)")
    parser.add_argument("--out", help="folder for requests.jsonl, events.jsonl, summary.json (rank 0; default: "
                                      "the config's folder)")
    args = parser.parse_args(argv)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_PORT") if k not in os.environ]
    if missing:
        parser.error(f"environment variables {missing} are not set (torch.distributed's RANK, WORLD_SIZE, "
                     "MASTER_ADDR, MASTER_PORT)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    cfg = None
    if rank == 0:
        if not args.config:
            parser.error("rank 0 needs --config")
        cfg = RunConfig.from_json(Path(args.config).read_text()).validate()
        n = system.parse_scenario(cfg.scenario).n
        if world != n:
            parser.error(f"WORLD_SIZE={world}, but the scenario has {n} devices (one process per device)")
    timeout = dt.timedelta(seconds=120)
    store = dist.TCPStore(host, port, world, is_master=(rank == 0), timeout=timeout)
    # A device may legitimately wait for work for a long time (a policy that never uses it), so gloo's
    # receive timeout is effectively off; liveness is the heartbeats' job.
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=dt.timedelta(days=7))
    if rank == 0:
        out = Path(args.out) if args.out else Path(args.config).parent
        out.mkdir(parents=True, exist_ok=True)
        code = coordinator(cfg, world, store, out)
    else:
        store.wait(["xaiprune/config"], timeout)
        try:
            code = worker(RunConfig.from_json(store.get("xaiprune/config").decode()), rank, world, store, host, port)
        except Exception as exc:
            store.set(f"xaiprune/failed/{rank}", f"{type(exc).__name__}: {exc}")
            raise
    sys.stdout.flush()
    os._exit(code)  # a gloo recv may still block a thread; nothing is left to flush


@dataclass
class Outcome:
    """What :func:`launch` returns: the run folder, the per-request and event logs, exit codes."""

    folder: Path
    requests: "object"   # pandas DataFrame
    events: "object"
    summary: dict
    returncodes: dict[int, int]
    seconds: float


def unpruned_bytes(link_bytes: list[int], profiles: system.Profiles) -> int:
    """Bytes the same route would send with nothing pruned: the level-0 tensor on every hop that was used."""
    level0 = [profiles.input_bytes] + list(profiles.out_bytes[:, 0])
    return int(sum(level0[h] for h, b in enumerate(link_bytes) if b > 0))


def _saved(g, profiles: system.Profiles) -> float:
    """1 - bytes sent / bytes the same routes send unpruned; 0 when nothing crossed a link."""
    unpruned = sum(unpruned_bytes(b, profiles) for b in g["link_bytes"])
    return float(1 - g["bytes"].sum() / unpruned) if unpruned else 0.0


def summarise(requests, flag: str, order: list[str] | None = None, profiles: system.Profiles | None = None):
    """One row per policy from ``requests.jsonl``: accuracy, latency, deadline hits, bytes and energy.

    ACC and AUC use MedMNIST's metric functions on the softmax of the logits the system returned;
    ``latency_error`` is mean measured / mean predicted latency - 1; energies are J per request;
    ``duplicated`` is the number of requests the source received more than one result for (``answers`` > 1,
    whether the extra one was used or discarded), ``replanned`` of those sent more than once. With
    ``profiles``, ``bytes_saved_by_pruning`` is 1 - bytes sent / bytes the same routes would send
    unpruned (:func:`unpruned_bytes`): the effect of pruning alone, placement held equal.
    """
    import pandas as pd
    from medmnist import INFO
    from medmnist.evaluator import getACC, getAUC

    task = INFO[flag]["task"]
    rows = []
    for name, g in requests.groupby("policy", sort=False):
        scores = torch.softmax(torch.tensor(g["logits"].tolist()), dim=1).numpy()
        y = g["label"].to_numpy()[:, None]
        energy = pd.DataFrame(g["energy_j"].tolist())
        rows.append({"policy": name, "criterion": g["criterion"].iloc[0], "requests": len(g),
                     "acc": float(getACC(y, scores, task)), "auc": float(getAUC(y, scores, task)),
                     "p50_ms": float(g["latency_ms"].median()), "p95_ms": float(g["latency_ms"].quantile(0.95)),
                     "mean_ms": float(g["latency_ms"].mean()), "predicted_ms": float(g["predicted_latency_ms"].mean()),
                     "latency_error": float(g["latency_ms"].mean() / g["predicted_latency_ms"].mean() - 1),
                     "deadline_hit_rate": float((g["latency_ms"] <= g["deadline_ms"]).mean()),
                     "bytes_per_inference": float(g["bytes"].mean()),
                     **({"bytes_saved_by_pruning": _saved(g, profiles)} if profiles is not None else {}),
                     "mean_pruning": float(np.mean([np.mean(lv) for lv in g["levels"]])),
                     "distinct_plans": int(g["plan"].nunique()), "replanned": int((g["attempts"] > 1).sum()),
                     "duplicated": int((g["answers"] > 1).sum()),
                     "energy_j": float(energy.sum(axis=1).mean()),
                     **{f"energy_j.{k}": float(v) for k, v in energy.mean().items()}})
    out = pd.DataFrame(rows).set_index("policy")
    return out.loc[order] if order else out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # Linux: children get SIGTERM if the launching process dies
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


def launch(cfg: RunConfig, folder: Path, progress: bool = True, timeout: float | None = None,
           overwrite: bool = False) -> Outcome:
    """Run ``cfg`` with one local process per device (ranks on 127.0.0.1) and collect the results.

    ``folder`` receives config.json, the logs of every rank and rank 0's outputs; it must be empty or
    absent unless ``overwrite``. Every process is gone when this returns, raises or is interrupted.
    """
    import pandas as pd
    from tqdm import tqdm

    cfg.validate()
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} already holds a run; pass overwrite=True or choose another folder")
        for name in ("requests.jsonl", "events.jsonl", "summary.json"):
            (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    world = system.parse_scenario(cfg.scenario).n
    env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": str(cfg.threads), "PYTHONUNBUFFERED": "1"}
    procs: dict[int, subprocess.Popen] = {}
    logs = {}
    start = time.perf_counter()
    bars: dict[str, tqdm] = {}
    try:
        for rank in range(world):
            logs[rank] = open(folder / f"rank{rank}.log", "w")
            cmd = [sys.executable, "-m", "xaiprune.distributed"] + (["--config", str(folder / "config.json")] if rank == 0 else [])
            procs[rank] = subprocess.Popen(cmd, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                           stdout=subprocess.PIPE if rank == 0 else logs[rank],
                                           stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
        (folder / "pids.json").write_text(json.dumps({r: p.pid for r, p in procs.items()}))
        watchdog = None
        if timeout:
            watchdog = threading.Timer(timeout, lambda: [p.kill() for p in procs.values() if p.poll() is None])
            watchdog.daemon = True
            watchdog.start()
        for line in procs[0].stdout:
            logs[0].write(line)
            if line.startswith("PROGRESS "):
                p = json.loads(line[9:])
                if p["policy"] not in bars:
                    for b in bars.values():
                        b.close()
                    bars[p["policy"]] = tqdm(total=p["total"], desc=p["policy"], unit="req", mininterval=1.0,
                                             disable=not progress)
                bars[p["policy"]].update(p["done"] - bars[p["policy"]].n)
            elif line.startswith("EVENT ") and progress:
                e = json.loads(line[6:])
                if e["event"] != "discarded":
                    print(f"  [{e['policy']}] {e['event']}: " + ", ".join(f"{k}={v}" for k, v in e.items()
                                                                         if k not in ("time", "policy", "event")))
        if procs[0].wait() == 0:  # workers leave on SHUTDOWN; after a failure they are stopped at once
            for p in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=15)
        if watchdog:
            watchdog.cancel()
    finally:
        for b in bars.values():
            b.close()
        _stop(procs)
        for f in logs.values():
            f.close()
    codes = {r: p.returncode for r, p in procs.items()}
    if codes[0] != 0:
        tail = (folder / "rank0.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"rank 0 exited with code {codes[0]}; the end of {folder / 'rank0.log'}:\n" + "\n".join(tail))

    def read(name):
        path = folder / name
        return pd.DataFrame([json.loads(x) for x in path.read_text().splitlines()]) if path.is_file() else pd.DataFrame()

    summary = json.loads((folder / "summary.json").read_text())
    return Outcome(folder, read("requests.jsonl"), read("events.jsonl"), summary, codes, time.perf_counter() - start)


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    """Terminate, then kill, every process still running."""
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + 5
    for p in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, end - time.monotonic()))
        if p.poll() is None:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
