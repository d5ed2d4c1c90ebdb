"""Device -> remote inference on two real processes: local only, full offload, split computing, AgileNN.

    python -m xaiprune.agilenn.offload --config run.json --rank 0|1 --port P     (what :func:`run` starts)

Rank 0 is the **device** (the scenario's source device): it holds the test images and serves the jobs of
the config in order, one image at a time; rank 1 is the **remote worker** (another device of the
scenario, by default the fastest). They talk through torch.distributed (gloo) with the messages of
:mod:`xaiprune.serving.wire`; payloads are float32 tensors (:mod:`xaiprune.serving.payload` carries
compressed bytes in them). Per job (method, image, bandwidth multiplier, cut):

- ``local``: the study's model runs on the device; nothing is sent;
- ``offload_png`` / ``offload_jpeg``: the image is encoded (PNG, lossless; or JPEG), sent, decoded and
  classified by the study's model on the remote;
- ``split``: the device runs the first ``cut`` segments, sends the float32 activation, the remote runs the rest;
- ``agilenn``: the device runs the feature extractor, the local predictor and the quantiser, sends the
  packed, compressed centroid indices; the remote rebuilds the values and runs the remote predictor; the
  device combines both logits.

The remote's logits come back in a RESULT message. Emulation (:mod:`xaiprune.serving.emulation`) pads each
side's compute to FLOPs / the device's speed and waits :func:`xaiprune.planning.system.transfer_seconds` of the bytes
really sent (the compressed bytes, not their float32 padding; headers are not charged, as in 07) before
each send. The latency of a job is the device's wall clock from the image in memory to the final answer.
Both processes read the same config, so a header's ``step`` names the job. Used by ``10_agilenn.ipynb``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from xaiprune import data, paths, train
from xaiprune.agilenn import model as agilenn, training
from xaiprune.planning import system
from xaiprune.pruning import prune
from xaiprune.serving import emulation, payload, wire
from xaiprune.serving.launcher import free_port

METHODS = ("local", "offload_png", "offload_jpeg", "split", "agilenn")
LIMITS = wire.Limits(world_size=2, n_segments=1, n_levels=1, n_criteria=1)


class OffloadError(RuntimeError):
    """A run that cannot start or did not finish; the message says which process and why."""


@dataclass
class OffloadConfig:
    """Everything both processes need. ``jobs``: [method, test image index, bandwidth multiplier, cut]."""

    flag: str
    size: int
    checkpoint: str            # the study's model (02), relative to the project root
    agilenn: str               # the AgileNN checkpoint, relative to the project root
    scenario: str = "ward-4"
    remote: str = ""           # a device of the scenario; "" picks the fastest device other than the source
    codec: str = "zlib"
    jpeg_quality: int = 90
    emulate: bool = True
    data_root: str = ""
    jobs: list = field(default_factory=list)
    connect_timeout_s: float = 60.0
    request_timeout_s: float = 60.0
    threads: int = 1

    def ends(self) -> tuple[system.Scenario, int, int]:
        """The scenario, the device's and the remote's device indices; a remote that is not there is an error."""
        scn = system.load_scenario(self.scenario)
        names = [d.name for d in scn.devices]
        if not self.remote:
            others = [j for j in range(scn.n) if j != scn.source]
            return scn, scn.source, max(others, key=lambda j: scn.devices[j].speed)
        if self.remote not in names:
            raise OffloadError(f"remote={self.remote!r}: no such device in scenario {scn.name!r} (devices: {names})")
        if names.index(self.remote) == scn.source:
            raise OffloadError(f"remote={self.remote!r} is the source device of {scn.name!r}: expected another device")
        return scn, scn.source, names.index(self.remote)

    def validate(self) -> "OffloadConfig":
        self.ends()
        payload._codec(self.codec)
        bad = [j for j in self.jobs if len(j) != 4 or j[0] not in METHODS or not j[2] > 0]
        if bad:
            raise OffloadError(f"jobs {bad[:3]}: expected [method in {METHODS}, image index, multiplier > 0, cut]")
        return self


def flops_per_segment(model: torch.nn.Module, shape: tuple[int, int, int]) -> list[int]:
    """FLOPs (2 x MACs, :func:`xaiprune.pruning.prune.profile`) of each segment of the study's model."""
    return [2 * m for m in prune.profile(model, shape)["segment_macs"].values()]


def predicted_seconds(scn: system.Scenario, dev: int, rem: int, device_flops: float, sent_bytes: float,
                      remote_flops: float, returned_bytes: float, multiplier: float = 1.0) -> float:
    """The system model's latency: device compute, the send, remote compute, the answer's return."""
    t = device_flops / scn.devices[dev].speed
    if sent_bytes or remote_flops:
        t += (system.transfer_seconds(scn, dev, rem, sent_bytes, multiplier) + remote_flops / scn.devices[rem].speed
              + system.transfer_seconds(scn, rem, dev, returned_bytes, multiplier))
    return t


def best_cut(model, shape, scn: system.Scenario, dev: int, rem: int, n_classes: int, multiplier: float = 1.0) -> int:
    """Neurosurgeon's choice among the interior cuts 1..S-1: the least predicted latency at this bandwidth."""
    flops, out = flops_per_segment(model, shape), list(prune.profile(model, shape)["segment_out_bytes"].values())
    cost = {c: predicted_seconds(scn, dev, rem, sum(flops[:c]), out[c - 1], sum(flops[c:]), 4 * n_classes, multiplier)
            for c in range(1, len(flops))}
    return min(cost, key=cost.get)


class _Side:
    """What one process holds: models, costs, its emulator."""

    def __init__(self, cfg: OffloadConfig, rank: int):
        scn, dev, rem = cfg.ends()
        self.cfg, self.rank = cfg, rank
        self.model = train.load(paths.ROOT / cfg.checkpoint).model.eval()
        self.agile = training.load(paths.ROOT / cfg.agilenn).eval()
        info = data.check_flag_size(cfg.flag, cfg.size)
        self.shape = (info["n_channels"], cfg.size, cfg.size)
        self.flops = flops_per_segment(self.model, self.shape)
        self.outs = list(prune.profile(self.model, self.shape)["segment_out_bytes"].values())
        self.agile_costs = training.costs(self.agile, info["n_channels"], cfg.size)
        self.bits = agilenn.bits_per_index(len(self.agile.quantizer.theta))
        mult = np.array([j[2] for j in cfg.jobs] or [1.0], dtype=float)
        trace = np.ones((len(mult), scn.n, scn.n)) * mult[:, None, None]
        self.emu = emulation.Emulator(scn, [dev, rem], rank, trace, cfg.emulate)
        with torch.inference_mode():  # warm up both networks (first calls are slow) and record every cut's shape
            x, self.cut_shapes = torch.zeros(1, *self.shape), {}
            for c, segment in enumerate(self.model.segments.values(), start=1):
                x = segment(x)
                self.cut_shapes[c] = tuple(x.shape)
            self.agile(torch.zeros(1, *self.shape))


def _join(port: int, rank: int, timeout: float):
    limit = dt.timedelta(seconds=timeout)
    try:
        store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=limit)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=limit)
    except (RuntimeError, dist.DistError) as exc:
        who = "no remote worker (rank 1) joined" if rank == 0 else "the device (rank 0) did not answer"
        raise OffloadError(f"rank {rank}: {who} at 127.0.0.1:{port} within {timeout:g} s "
                           f"({str(exc).splitlines()[0][:120]})") from None
    return store


def _device(cfg: OffloadConfig, side: _Side, out: Path) -> None:
    test = data.load_split(cfg.flag, "test", cfg.size, cfg.data_root or None)
    agile, c = side.agile, side.agile_costs
    with open(out, "w") as log, torch.inference_mode():
        for t, (method, i, mult, cut) in enumerate(cfg.jobs):
            x = test.x[i:i + 1]
            start = time.perf_counter()
            local = None
            if method == "local":
                logits = side.model(x)
                emulation.pad(start, side.emu.compute_seconds(sum(side.flops)))
                nbytes = 0
            else:
                if method.startswith("offload"):
                    buf = payload.encode_image(x[0], method.split("_")[1], cfg.jpeg_quality)
                    tensor, nbytes = payload.to_tensor(buf), len(buf)
                elif method == "split":
                    tensor = side.model.run_segments(x, 0, cut)
                    emulation.pad(start, side.emu.compute_seconds(sum(side.flops[:cut])))
                    nbytes = tensor.numel() * 4
                else:  # agilenn
                    f = agile.extractor(x)
                    local = agile.local(f)
                    _, idx = agile.quantizer(f[:, agile.k:])
                    buf = payload.encode_indices(idx[0], side.bits, cfg.codec)
                    emulation.pad(start, side.emu.compute_seconds(c["device_flops"]))
                    tensor, nbytes = payload.to_tensor(buf), len(buf)
                emulation.pad(time.perf_counter(), side.emu.transfer_seconds(1, nbytes, t))
                wire.send(wire.Message(wire.ACTIVATION, request=t, step=t, devices=[1], levels=[0], sender=0,
                                       detail=nbytes, payload=tensor.contiguous().float()), 1, cfg.request_timeout_s)
                src, msg = wire.receive(LIMITS, cfg.request_timeout_s)
                if not isinstance(msg, wire.Message) or msg.kind != wire.RESULT or msg.request != t:
                    what = msg if not isinstance(msg, wire.Message) else \
                        f"{wire.KINDS[msg.kind]} ({wire.ERRORS.get(msg.error, '')}) for request {msg.request}"
                    raise OffloadError(f"job {t} ({method}): the remote answered {what}")
                logits = msg.payload.reshape(1, -1)
                if local is not None:
                    logits = agile.combine(local, logits)
            latency = time.perf_counter() - start
            rec = {"job": t, "method": method, "image": i, "multiplier": mult, "cut": cut, "bytes": nbytes,
                   "latency_ms": 1e3 * latency, "pred": int(logits.argmax(1)),
                   "pred_local": -1 if local is None else int(local.argmax(1))}
            log.write(json.dumps(rec) + "\n")
            log.flush()
    wire.send(wire.Message(wire.SHUTDOWN, sender=0), 1, cfg.request_timeout_s)


def _remote(cfg: OffloadConfig, side: _Side) -> None:
    agile, shape = side.agile, side.agile_costs["offloaded_shape"]
    with torch.inference_mode():
        while True:
            src, msg = wire.receive(LIMITS, cfg.request_timeout_s)
            if isinstance(msg, wire.Message) and msg.kind == wire.SHUTDOWN:
                return
            try:
                if not isinstance(msg, wire.Message) or msg.kind != wire.ACTIVATION or not 0 <= msg.step < len(cfg.jobs):
                    raise OffloadError(f"unexpected message {msg}")
                method, _, _, cut = cfg.jobs[msg.step]
                start = time.perf_counter()
                if method.startswith("offload"):
                    x = payload.decode_image(payload.from_tensor(msg.payload, msg.detail))[None]
                    logits, flops = side.model(x), sum(side.flops)
                elif method == "split":
                    a = msg.payload.reshape(side.cut_shapes[cut])
                    logits, flops = side.model.run_segments(a, cut), sum(side.flops[cut:])
                else:
                    idx = payload.decode_indices(payload.from_tensor(msg.payload, msg.detail), side.bits, shape, cfg.codec)
                    logits, flops = agile.remote(agile.quantizer.dequantize(idx)[None]), side.agile_costs["remote_flops"]
                emulation.pad(start, side.emu.compute_seconds(flops))
                reply = wire.Message(wire.RESULT, request=msg.request, step=msg.step, sender=1,
                                     payload=logits.reshape(-1).float().contiguous())
                emulation.pad(time.perf_counter(), side.emu.transfer_seconds(0, logits.numel() * 4, msg.step))
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
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads)}
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
    failed = {r: p.returncode for r, p in procs.items() if p.returncode != 0}
    if failed:
        tails = "; ".join(f"rank {r} (exit {c}): " + " | ".join((folder / f"rank{r}.log").read_text().strip()
                                                                  .splitlines()[-3:]) for r, c in failed.items())
        raise OffloadError(f"the offload run failed: {tails}")
    return pd.read_json(records, lines=True)


if __name__ == "__main__":
    sys.exit(main())
