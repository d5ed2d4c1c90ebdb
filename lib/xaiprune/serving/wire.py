"""The wire format: a header of :data:`HEADER` int64 values, then a float32 payload if it announces one.

Never a pickle. A receiver checks a header in three stages. The *frame* (magic, version, payload dtype
and shape) says whether a payload follows and how large it is; a header whose frame is wrong, or whose
payload is larger than the largest tensor this run can send (:attr:`Limits.max_payload`), is refused at
once, before anything is allocated, and nothing more is read from that sender for it. A header whose
frame is right has its payload read (so the link stays in step), then its *code* checked: every message
carries a keyed BLAKE2b code of its header and payload under the run's key (:func:`set_key`,
:mod:`xaiprune.serving.transport`), so a message from a process without the run's secret, or altered on
the way, is refused. Last its *content*: kind, plan, ranges of every field. Any refusal is a
:class:`ProtocolError` naming the field, returned by :func:`receive` instead of a message; the receiver
answers it with an ERROR and never acts on it.

A receiver times the payload it reads, from posting its receive to holding every byte: the real transfer,
added to the hop's link time in the header (``link_us[start]``, where the sender put the emulated wait, 0
without emulation), so the coordinator's link estimate measures the real send on real hardware.

gloo sends are rendezvous (a send completes when the peer has posted the matching receive), and a gloo
operation that times out closes the link to that peer for good. So every send and every payload receive
here has a timeout, and a failure of either is a :class:`LinkError`: the link to that peer is gone. The
wait for the next header is the one unbounded wait: a device may legitimately wait for work for a long
time, and :mod:`xaiprune.serving.liveness` ends the process when its coordinator disappears.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

MAGIC, VERSION = 0x58414950, 1  # "XAIP"
HEADER = 80                      # int64 values per header
MAX_SEGMENTS = 8
MAX_PAYLOAD = 1 << 26            # float32 elements (256 MB): the cap when a receiver's limits give none
TAG_HEADER, TAG_PAYLOAD = 1, 2
PREPARE, READY, ACTIVATION, RESULT, SHUTDOWN, ERROR, PROGRESS = 1, 2, 3, 4, 5, 6, 7
KINDS = {PREPARE: "prepare", READY: "ready", ACTIVATION: "activation", RESULT: "result",
         SHUTDOWN: "shutdown", ERROR: "error", PROGRESS: "progress"}
# PROGRESS: a worker tells the source it has sent request/attempt on (``detail``: the rank it went to,
# ``start``: the segment that rank runs next), so the source can hold every hop to a deadline
# error codes: a header refused; a peer that could not be sent to (detail: its rank); a request whose
# segments failed to run; a payload refused (a tensor of the wrong shape for the segment it is sent to)
MALFORMED, UNREACHABLE, FAILED, REJECTED = 1, 2, 3, 4
ERRORS = {MALFORMED: "malformed header", UNREACHABLE: "unreachable peer", FAILED: "segments failed",
          REJECTED: "payload rejected"}
IDLE = dt.timedelta(days=7)  # the wait for the next header (see the module docstring)
# header layout: fixed fields, then per-segment and per-hop arrays (hop h carries the input of
# segment h; hop S carries the logits back to the source)
FIELDS = dict(magic=0, version=1, kind=2, request=3, attempt=4, step=5, criterion=6, policy=7, n_segments=8,
              start=9, dtype=10, ndim=11, shape=12, sender=16, error=17, detail=18, extra_us=19,
              devices=20, levels=28, compute_us=36, flops=44, link_us=52, link_bytes=61, code=72)
_F = FIELDS
CODE_BYTES = 16                  # the message code: two int64 fields
_KEY: bytes | None = None        # this process's run key (set_key)


def set_key(key: bytes) -> None:
    """The key every message this process sends is signed with and every message it receives is checked with."""
    global _KEY
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("the run key must be at least 16 bytes")
    _KEY = key


def code(header: torch.Tensor, payload: torch.Tensor | None) -> bytes:
    """The keyed BLAKE2b code of a header (its code fields as zeros) and its payload: two int64 fields' bytes."""
    if _KEY is None:
        raise RuntimeError("no run key: join the run (xaiprune.serving.transport.rendezvous) or call wire.set_key")
    h = header.clone()
    h[_F["code"]:_F["code"] + 2] = 0
    mac = hashlib.blake2b(h.numpy().data, key=_KEY, digest_size=CODE_BYTES)
    if payload is not None:
        mac.update(payload.contiguous().numpy().data)
    return mac.digest()


def sign(header: torch.Tensor, payload: torch.Tensor | None) -> None:
    """Write the message code into ``header`` (in place)."""
    header[_F["code"]:_F["code"] + 2] = torch.frombuffer(bytearray(code(header, payload)), dtype=torch.int64)


def verify(header: torch.Tensor, payload: torch.Tensor | None) -> None:
    """ProtocolError unless ``header`` carries the code of itself and ``payload`` under this run's key."""
    if not hmac.compare_digest(header[_F["code"]:_F["code"] + 2].numpy().tobytes(), code(header, payload)):
        raise ProtocolError("header field code: not signed with this run's key (a process without the run's "
                            "secret, or a message altered on the way)")


class ProtocolError(ValueError):
    """A header that does not follow the wire format; the message says which field and why."""


class LinkError(RuntimeError):
    """A send or a payload receive that failed or timed out; ``peer`` is the rank at the other end."""

    def __init__(self, peer: int, what: str):
        super().__init__(f"link to rank {peer}: {what}")
        self.peer = peer


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts: ranks, segments, pruning levels and criteria of this run."""

    world_size: int
    n_segments: int
    n_levels: int
    n_criteria: int
    max_payload: int = MAX_PAYLOAD   # float32 elements: the largest tensor this run can send


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

    @staticmethod
    def frame(h: torch.Tensor, max_payload: int = MAX_PAYLOAD) -> tuple[int, ...] | None:
        """Check the frame of a received header; return the payload shape that follows (None: no payload).

        ``max_payload``: the most float32 elements a payload may have (the receiver's :attr:`Limits.max_payload`).
        """
        if h.dtype != torch.int64 or h.shape != (HEADER,):
            raise ProtocolError(f"header must be {HEADER} int64 values, got {h.dtype} {tuple(h.shape)}")
        v = h.tolist()
        if v[_F["magic"]] != MAGIC:
            raise ProtocolError(f"header field magic={v[_F['magic']]:#x}: expected {MAGIC:#x} (not an xaiprune message)")
        _check(v, "version", VERSION, VERSION)
        dtype, ndim = _check(v, "dtype", 0, 1), _check(v, "ndim", 0, 4)
        if (dtype == 0) != (ndim == 0):
            raise ProtocolError(f"header fields dtype={dtype}, ndim={ndim}: both zero (no payload) or both set")
        if not dtype:
            return None
        shape = tuple(v[_F["shape"]:_F["shape"] + ndim])
        if any(d < 1 for d in shape) or math.prod(shape) > max_payload:
            raise ProtocolError(f"header field shape={shape}: expected positive sizes, at most {max_payload} elements "
                                "(the largest tensor this run sends)")
        return shape

    @classmethod
    def parse(cls, h: torch.Tensor, limits: Limits) -> tuple["Message", tuple[int, ...] | None]:
        """Check every field of a received header; return the message and the payload shape to expect."""
        shape = cls.frame(h, limits.max_payload)
        v = h.tolist()
        kind = v[_F["kind"]]
        if kind not in KINDS:
            raise ProtocolError(f"header field kind={kind}: expected one of {sorted(KINDS)}")
        S = _check(v, "n_segments", 0, MAX_SEGMENTS)
        if S not in (0, limits.n_segments):
            raise ProtocolError(f"header field n_segments={S}: this model has {limits.n_segments} segments")
        devices, levels = v[_F["devices"]:_F["devices"] + S], v[_F["levels"]:_F["levels"] + S]
        if any(not 0 <= d < limits.world_size for d in devices):
            raise ProtocolError(f"header field devices={devices}: expected ranks 0..{limits.world_size - 1}")
        if any(not 0 <= lv < limits.n_levels for lv in levels):
            raise ProtocolError(f"header field levels={levels}: expected level indices 0..{limits.n_levels - 1}")
        msg = cls(kind=kind, request=_check(v, "request", -1, 2 ** 40), attempt=_check(v, "attempt", 0, 1000),
                  step=_check(v, "step", 0, 2 ** 40), criterion=_check(v, "criterion", 0, max(limits.n_criteria - 1, 0)),
                  policy=_check(v, "policy", 0, 1000), devices=devices, levels=levels, start=_check(v, "start", 0, S),
                  sender=_check(v, "sender", -1, limits.world_size - 1), error=_check(v, "error", 0, 100),
                  detail=_check(v, "detail", -1, 2 ** 40), extra_us=_check(v, "extra_us", 0, 2 ** 50),
                  compute_us=v[_F["compute_us"]:_F["compute_us"] + MAX_SEGMENTS],
                  flops=v[_F["flops"]:_F["flops"] + MAX_SEGMENTS],
                  link_us=v[_F["link_us"]:_F["link_us"] + MAX_SEGMENTS + 1],
                  link_bytes=v[_F["link_bytes"]:_F["link_bytes"] + MAX_SEGMENTS + 1])
        if kind in (ACTIVATION, PREPARE, PROGRESS) and S == 0:
            raise ProtocolError(f"header field n_segments=0: a {KINDS[kind]} message needs the plan")
        needs = kind in (ACTIVATION, RESULT)
        if needs != (shape is not None):
            raise ProtocolError(f"header field dtype={v[_F['dtype']]}: a {KINDS[kind]} message "
                                f"{'carries' if needs else 'carries no'} payload")
        return msg, shape


def _check(v: list[int], name: str, lo: int, hi: int) -> int:
    x = v[_F[name]]
    if not lo <= x <= hi:
        raise ProtocolError(f"header field {name}={x}: expected {lo}..{hi}")
    return x


def send_frame(header: torch.Tensor, payload: torch.Tensor | None, dst: int, timeout: float) -> None:
    """Sign a header tensor with its payload, send both to rank ``dst``, each within ``timeout`` s, or raise LinkError."""
    sign(header, payload)
    for tensor, tag in ((header, TAG_HEADER), (payload, TAG_PAYLOAD)):
        if tensor is None:
            continue
        try:
            dist.isend(tensor.contiguous(), dst, tag=tag).wait(timeout=dt.timedelta(seconds=timeout))
        except RuntimeError as exc:
            raise LinkError(dst, f"send failed ({str(exc).splitlines()[0][:160]})") from exc


def send(msg: Message, dst: int, timeout: float) -> None:
    """Send a message to rank ``dst`` (see :func:`send_frame`)."""
    send_frame(msg.header(), msg.payload, dst, timeout)


def receive(limits: Limits, timeout: float) -> tuple[int, Message | ProtocolError | LinkError]:
    """Wait for a header from any rank, then its payload (within ``timeout`` s, its transfer timed into ``link_us``).

    Returns the sender and the message, or the ProtocolError of a refused header, or the LinkError of a
    payload that did not arrive.
    """
    h = torch.zeros(HEADER, dtype=torch.int64)
    work = dist.irecv(h, tag=TAG_HEADER)
    work.wait(timeout=IDLE)
    src = work._source_rank()
    try:
        shape = Message.frame(h, limits.max_payload)
    except ProtocolError as exc:
        return src, exc
    payload, start = None, time.perf_counter()
    if shape is not None:
        payload = torch.empty(shape, dtype=torch.float32)
        try:
            dist.irecv(payload, src=src, tag=TAG_PAYLOAD).wait(timeout=dt.timedelta(seconds=timeout))
        except RuntimeError as exc:
            return src, LinkError(src, f"payload of {shape} did not arrive ({str(exc).splitlines()[0][:160]})")
    transfer = time.perf_counter() - start
    try:
        verify(h, payload)
        msg, _ = Message.parse(h, limits)
    except ProtocolError as exc:
        return src, exc
    msg.payload = payload
    if payload is not None and msg.start <= MAX_SEGMENTS:  # the hop's link time: the emulated wait + the real transfer
        msg.link_us[msg.start] += int(round(transfer * 1e6))
    return src, msg
