"""Device -> remote inference on two real processes, for every method of ``10_agilenn`` in one regime.

    python -m xaiprune.agilenn.offload --config run.json --rank 0|1 --port P     (what :func:`run` starts)

Rank 0 is the **device**: it holds the test images and serves the config's jobs in order, one image at a time; rank
1 is the **remote**. They talk through torch.distributed (gloo) on 127.0.0.1 under a per-run secret, their store a
file only this user can open (:mod:`xaiprune.serving.transport`), with the messages of :mod:`xaiprune.serving.wire`;
payloads are float32 tensors (:mod:`xaiprune.serving.payload` carries coded bytes in them). The methods
(:data:`xaiprune.agilenn.regimes.METHODS`):

- ``local_vgg`` / ``local_small`` / ``local_tiny``: the study's VGG-16-BN, AgileNN's network without its split
  (:mod:`xaiprune.agilenn.small`), or that network narrowed for the device runs on the device; nothing is sent;
- ``offload_vgg`` / ``offload_small``: the image is coded as PNG (lossless), sent, decoded and classified by that
  network on the remote;
- ``split_small``: the device runs the small network's first ``cut`` segments and sends the activation as
  compressed uint8 codes; the remote runs the rest;
- ``agilenn``: the device runs the feature extractor, the local predictor and the quantiser and sends the packed,
  compressed centroid indices; the remote rebuilds the values and runs the remote predictor; the device combines
  both answers.

With ``emulate`` each side pads its compute, coder included, to :func:`xaiprune.agilenn.regimes.device_ops` (or
``remote_ops``) over its speed, and the sender waits :func:`xaiprune.planning.system.transfer_seconds` of the coded
bytes before each send (:mod:`xaiprune.serving.emulation`); the modelled latency charges the same work.

**Timing.** The latency of a job is the device's wall clock from the image in memory to the final answer. Its parts
come from timestamps of both processes on the machine's monotonic clock, which one host's processes share: the
device's compute (until it starts sending), the uplink (from then until the remote holds the message: the
receiver's timestamp, so that it measures the real send with emulation off too), the remote's compute and the
downlink (from the remote's reply until the device holds it). The remote returns its two timestamps after the
logits, modulo :data:`STAMP_PERIOD` seconds so that float32 keeps them to within 8 microseconds; on two hosts the
clocks differ and only the total and the remote's own time are meaningful. Used by ``10_agilenn.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from xaiprune import data, paths, train
from xaiprune.agilenn import model as agilenn, regimes, small, training
from xaiprune.pruning import prune
from xaiprune.serving import emulation, payload, transport, wire
from xaiprune.serving.launcher import free_port

STAMP_PERIOD = 100.0  # seconds: the remote's timestamps travel modulo this


class OffloadError(RuntimeError):
    """A run that cannot start or did not finish; the message says which process and why."""


@dataclass
class OffloadConfig:
    """Everything both processes need. ``jobs``: [method, test image index]; ``regime``: a
    :class:`xaiprune.agilenn.regimes.Regime` as a dict; ``cut``: the split's segments on the device."""

    flag: str
    size: int
    checkpoint: str            # the study's VGG-16-BN (02), relative to the project root
    agilenn: str               # the AgileNN checkpoint, relative to the project root
    small: str                 # AgileNN's network without its split
    tiny: str                  # the same narrowed for the device
    regime: dict
    cut: int = 1
    codec: str = "zlib"
    emulate: bool = True
    data_root: str = ""
    jobs: list = field(default_factory=list)
    connect_timeout_s: float = 60.0
    request_timeout_s: float = 60.0
    threads: int = 1

    def validate(self) -> "OffloadConfig":
        try:
            regimes.Regime(**self.regime)
        except TypeError as exc:
            raise OffloadError(f"regime={self.regime!r}: expected the fields of a Regime ({exc})") from None
        payload._codec(self.codec)
        bad = [j for j in self.jobs if len(j) != 2 or j[0] not in regimes.METHODS or not isinstance(j[1], int)]
        if bad:
            raise OffloadError(f"jobs {bad[:3]}: expected [method in {regimes.METHODS}, test image index]")
        return self


def networks(vgg: torch.nn.Module, net: torch.nn.Module, tiny: torch.nn.Module, agile: agilenn.AgileNN,
             shape: tuple[int, int, int], n_classes: int) -> regimes.Networks:
    """The cost model's summary of the four networks for images of ``shape`` (activations counted as float32 by
    :func:`xaiprune.pruning.prune.profile`, one uint8 code per value on the wire)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    pv, ps, pt = prune.profile(vgg, shape), prune.profile(net, shape), prune.profile(tiny, shape)
    c = training.costs(agile, shape[0], shape[1])
    bits = agilenn.bits_per_index(len(agile.quantizer.theta))
    return regimes.Networks(
        int(torch.tensor(shape).prod()), 4 * n_classes, 2.0 * sum(pv["segment_macs"].values()), count(vgg),
        tuple(2.0 * m for m in ps["segment_macs"].values()), tuple(b // 4 for b in ps["segment_out_bytes"].values()),
        tuple(count(s) for s in net.segments.values()), 2.0 * sum(pt["segment_macs"].values()), count(tiny),
        float(c["device_flops"]), float(c["remote_flops"]),
        -(-c["offloaded_values"] * bits // 8), count(agile.extractor) + count(agile.local) + count(agile.quantizer))


class _Side:
    """What one process holds: the networks, their costs, the regime and its emulator."""

    def __init__(self, cfg: OffloadConfig, rank: int):
        self.cfg, self.rank, self.regime = cfg, rank, regimes.Regime(**cfg.regime)
        self.vgg = train.load(paths.ROOT / cfg.checkpoint).model.eval()
        self.small, self.tiny = small.load(paths.ROOT / cfg.small), small.load(paths.ROOT / cfg.tiny)
        self.agile = training.load(paths.ROOT / cfg.agilenn).eval()
        info = data.check_flag_size(cfg.flag, cfg.size)
        self.shape = (info["n_channels"], cfg.size, cfg.size)
        self.nets = networks(self.vgg, self.small, self.tiny, self.agile, self.shape, len(info["label"]))
        self.bits = agilenn.bits_per_index(len(self.agile.quantizer.theta))
        self.offloaded = training.costs(self.agile, self.shape[0], cfg.size)["offloaded_shape"]
        self.emu = emulation.Emulator(self.regime.scenario(), [0, 1], rank, None, cfg.emulate)
        with torch.inference_mode():  # warm up every network and coder (first calls are slow); the split's shape
            x = torch.zeros(1, *self.shape)
            self.vgg(x), self.small(x), self.tiny(x)
            self.cut_shape = tuple(self.small.run_segments(x, 0, cfg.cut).shape)
            payload.decode_image(_encode(self, "offload_small", x)[0])
            payload.decode_activation(_encode(self, "split_small", x)[0], self.cut_shape, cfg.codec)
            _encode(self, "agilenn", x)
        # the largest payload: coded bytes at most twice the raw 8-bit image or split activation, plus 4 KB
        biggest = max(math.prod(self.shape), math.prod(self.cut_shape))
        self.limits = wire.Limits(world_size=2, n_segments=1, n_levels=1, n_criteria=1,
                                  max_payload=biggest // 2 + 1024)

    def ops(self, method: str, sent: int = 0, remote: bool = False) -> float:
        cost = regimes.method_cost(method, self.nets, sent, self.cfg.cut)
        return (regimes.remote_ops if remote else regimes.device_ops)(self.regime, cost)


def _join(port: int, rank: int, timeout: float):
    """Join the two-process run on loopback under its secret (:mod:`xaiprune.serving.transport`)."""
    try:
        return transport.rendezvous(transport.LOOPBACK, port, 2, rank, timeout, transport.run_token(),
                                    store_file=os.environ.get(transport.STORE_ENV) or None)
    except transport.StartupError as exc:
        who = "no remote worker (rank 1) joined" if rank == 0 else "the device (rank 0) did not answer"
        raise OffloadError(f"rank {rank}: {who} on {transport.LOOPBACK} within {timeout:g} s ({exc})") from None


def _since(a: float, b: float) -> float:
    """Milliseconds from stamp ``a`` to stamp ``b``, both modulo :data:`STAMP_PERIOD` (a gap within half a period
    either way: a rounding error of a few microseconds below 0 stays a few microseconds below 0)."""
    half = STAMP_PERIOD / 2
    return 1e3 * (((b - a + half) % STAMP_PERIOD) - half)


def _encode(side: _Side, method: str, x: torch.Tensor) -> tuple[bytes, torch.Tensor | None]:
    """The device's part of an offloading method: the coded bytes to send, and AgileNN's local logits."""
    if method.startswith("offload"):
        return payload.encode_image(x[0], "png"), None
    if method == "split_small":
        return payload.encode_activation(side.small.run_segments(x, 0, side.cfg.cut), side.cfg.codec), None
    agile = side.agile
    f = agile.extractor(x)
    _, idx = agile.quantizer(f[:, agile.k:])
    return payload.encode_indices(idx[0], side.bits, side.cfg.codec), agile.local(f)


def _request(side: _Side, t: int, method: str, x: torch.Tensor, start: float) -> dict:
    """Serve one offloading job; the logits and the timing parts (ms)."""
    cfg = side.cfg
    buf, local = _encode(side, method, x)
    emulation.pad(start, side.emu.compute_seconds(side.ops(method, len(buf))))
    sent_at = time.monotonic()
    emulation.pad(time.perf_counter(), side.emu.transfer_seconds(1, len(buf), t))
    wire.send(wire.Message(wire.ACTIVATION, request=t, step=t, devices=[1], levels=[0], sender=0, detail=len(buf),
                           payload=payload.to_tensor(buf)), 1, cfg.request_timeout_s)
    _, msg = wire.receive(side.limits, cfg.request_timeout_s)
    back = time.monotonic()
    if not isinstance(msg, wire.Message) or msg.kind != wire.RESULT or msg.request != t:
        what = msg if not isinstance(msg, wire.Message) else \
            f"{wire.KINDS[msg.kind]} ({wire.ERRORS.get(msg.error, '')}) for request {msg.request}"
        raise OffloadError(f"job {t} ({method}): the remote answered {what}")
    logits, (got, replied) = msg.payload[:-2].reshape(1, -1), msg.payload[-2:].double().tolist()
    if local is not None:
        logits = side.agile.combine(local, logits)
    return {"logits": logits, "local": local, "bytes": len(buf), "sent_at": sent_at,
            "up_ms": _since(sent_at % STAMP_PERIOD, got),
            "remote_ms": _since(got, replied), "down_ms": _since(replied, back % STAMP_PERIOD)}


def _device(cfg: OffloadConfig, side: _Side, out: Path) -> None:
    test = data.load_split(cfg.flag, "test", cfg.size, cfg.data_root or None)
    local_nets = {"local_vgg": side.vgg, "local_small": side.small, "local_tiny": side.tiny}
    with open(out, "w") as log, torch.inference_mode():
        for t, (method, i) in enumerate(cfg.jobs):
            x = test.x[i:i + 1]
            start, mono = time.perf_counter(), time.monotonic()
            if method in local_nets:
                logits, r = local_nets[method](x), {"local": None, "bytes": 0, "up_ms": 0.0, "remote_ms": 0.0,
                                                    "down_ms": 0.0}
                emulation.pad(start, side.emu.compute_seconds(side.ops(method)))
            else:
                r = _request(side, t, method, x, start)
                logits = r["logits"]
            latency = 1e3 * (time.perf_counter() - start)
            device_ms = latency if method in local_nets else 1e3 * (r["sent_at"] - mono)
            rec = {"job": t, "method": method, "image": i, "bytes": r["bytes"], "latency_ms": latency,
                   "device_ms": device_ms, "up_ms": r["up_ms"], "remote_ms": r["remote_ms"], "down_ms": r["down_ms"],
                   "started": mono, "pred": int(logits.argmax(1)),
                   "pred_local": -1 if r["local"] is None else int(r["local"].argmax(1))}
            log.write(json.dumps(rec) + "\n")
            log.flush()
    wire.send(wire.Message(wire.SHUTDOWN, sender=0), 1, cfg.request_timeout_s)


def _answer(side: _Side, method: str, msg: wire.Message) -> torch.Tensor:
    """The remote's part of an offloading method: decode the payload, run the rest of the network."""
    buf = payload.from_tensor(msg.payload, msg.detail)
    if method.startswith("offload"):
        net = side.vgg if method == "offload_vgg" else side.small
        return net(payload.decode_image(buf)[None])
    if method == "split_small":
        return side.small.run_segments(payload.decode_activation(buf, side.cut_shape, side.cfg.codec), side.cfg.cut)
    idx = payload.decode_indices(buf, side.bits, side.offloaded, side.cfg.codec)
    return side.agile.remote(side.agile.quantizer.dequantize(idx)[None])


def _remote(cfg: OffloadConfig, side: _Side) -> None:
    with torch.inference_mode():
        while True:
            _, msg = wire.receive(side.limits, cfg.request_timeout_s)
            got, start = time.monotonic(), time.perf_counter()
            if isinstance(msg, wire.Message) and msg.kind == wire.SHUTDOWN:
                return
            try:
                if not isinstance(msg, wire.Message) or msg.kind != wire.ACTIVATION or not 0 <= msg.step < len(cfg.jobs):
                    raise OffloadError(f"unexpected message {msg}")
                method = cfg.jobs[msg.step][0]
                logits = _answer(side, method, msg)
                emulation.pad(start, side.emu.compute_seconds(side.ops(method, msg.detail, remote=True)))
                replied = time.monotonic()
                stamps = torch.tensor([got % STAMP_PERIOD, replied % STAMP_PERIOD], dtype=torch.float32)
                reply = wire.Message(wire.RESULT, request=msg.request, step=msg.step, sender=1,
                                     payload=torch.cat([logits.reshape(-1).float(), stamps]).contiguous())
                emulation.pad(time.perf_counter(), side.emu.transfer_seconds(0, 4 * logits.numel(), msg.step))
            except Exception as exc:  # answer with an error, never hang the device
                print(f"rank 1: job failed: {exc}", file=sys.stderr, flush=True)
                reply = wire.Message(wire.ERROR, error=wire.FAILED, sender=1, request=getattr(msg, "request", -1))
            wire.send(reply, 0, cfg.request_timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xaiprune.agilenn.offload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--rank", type=int, choices=(0, 1), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    cfg = OffloadConfig(**json.loads(Path(args.config).read_text())).validate()
    torch.set_num_threads(cfg.threads)
    side = _Side(cfg, args.rank)  # load the models before joining: the timeout covers the join only
    try:
        _join(args.port, args.rank, cfg.connect_timeout_s)
    except OffloadError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 4
    if args.rank == 0:
        _device(cfg, side, Path(args.config).parent / "requests.jsonl")
    else:
        _remote(cfg, side)
    sys.stdout.flush()
    os._exit(0)  # no gloo teardown: the peer may already be gone


def run(cfg: OffloadConfig, folder: Path, progress: bool = True, ranks: tuple[int, ...] = (0, 1),
        timeout: float = 3600.0) -> pd.DataFrame:
    """Start the device and the remote worker, serve every job, return one row per job (see :func:`_device`).

    ``ranks=(0,)`` starts the device alone (a test of the missing worker's error). A process that fails
    raises :class:`OffloadError` with the end of its log.
    """
    cfg.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "config.json"
    conf.write_text(json.dumps(asdict(cfg)))
    records = folder / "requests.jsonl"
    records.unlink(missing_ok=True)
    port = free_port()
    private = transport.private_store()  # the two processes' store: a file only this user can open, no socket
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), transport.TOKEN_ENV: transport.new_token(),
           transport.STORE_ENV: str(private)}
    procs = {}
    for r in ranks:
        with open(folder / f"rank{r}.log", "w") as logf:
            procs[r] = subprocess.Popen([sys.executable, "-m", "xaiprune.agilenn.offload", "--config", str(conf),
                                         "--rank", str(r), "--port", str(port)], env=env, stdout=logf,
                                        stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    with tqdm(total=len(cfg.jobs), desc="serving", unit="job", disable=not progress, mininterval=1.0) as bar:
        while any(p.poll() is None for p in procs.values()):
            done = sum(1 for _ in open(records)) if records.is_file() else 0
            bar.update(done - bar.n)
            if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs.values()):
                break  # one process failed (or the run is too long): the other would wait for it forever
            time.sleep(0.2)
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        done = sum(1 for _ in open(records)) if records.is_file() else 0
        bar.update(done - bar.n)
    shutil.rmtree(private.parent, ignore_errors=True)
    failed = {r: p.returncode for r, p in procs.items() if p.returncode != 0}
    if failed:
        tails = "; ".join(f"rank {r} (exit {c}): " + " | ".join((folder / f"rank{r}.log").read_text().strip()
                                                                  .splitlines()[-3:]) for r, c in failed.items())
        raise OffloadError(f"the offload run failed: {tails}")
    return pd.read_json(records, lines=True)


if __name__ == "__main__":
    sys.exit(main())
