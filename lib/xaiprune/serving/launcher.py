"""Real distributed inference: one process per device, torch.distributed with gloo over TCP.

    python -m xaiprune.serving --config run.json       # rank 0, the source device
    python -m xaiprune.serving                         # every other rank (gets the config from rank 0)

Each process reads the standard variables ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (default
127.0.0.1) and ``MASTER_PORT``, and the run's secret ``XAIPRUNE_TOKEN`` (the same on every process), so the
same code runs on several hosts; :func:`launch` starts every rank on this machine with a fresh secret and
a store in a private file (``XAIPRUNE_STORE``). Every process listens on loopback only unless ``--listen``
gives this host's address for a run across hosts (:mod:`xaiprune.serving.transport`). Rank 0 is the
scenario's source device: it holds the test images, plans every request (NLP, RL or a fixed rule), and
receives the label. Rank r > 0 is another device. WORLD_SIZE must equal the scenario's number of devices.
Joining is bounded by ``--connect-timeout``: a coordinator address that does not answer, workers that do
not connect, a port already in use or peers that cannot reach each other end the process with a one-line
reason (exit code 4) instead of a hang.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xaiprune.planning import system
from xaiprune.serving import sockets, transport
from xaiprune.serving.config import RunConfig
from xaiprune.serving.coordinator import coordinate
from xaiprune.serving.liveness import failed_key
from xaiprune.serving.transport import LOOPBACK, STORE_ENV, TOKEN_ENV, new_token, rendezvous, run_token
from xaiprune.serving.worker import serve

EXIT_STARTUP = 4          # a process that could not join the run (the reason is its last line)
CONNECT_TIMEOUT_S = 120.0


def main(argv: list[str] | None = None) -> int:
    """One process of a run (see the module docstring); never returns normally (``os._exit``)."""
    parser = argparse.ArgumentParser(prog="python -m xaiprune.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config JSON (rank 0 only; other ranks receive it from rank 0)")
    parser.add_argument("--out", help="folder for requests.jsonl, events.jsonl, summary.json (rank 0; default: "
                                      "the config's folder)")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S,
                        help=f"seconds to join the run (default {CONNECT_TIMEOUT_S:g})")
    parser.add_argument("--listen", default=LOOPBACK,
                        help=f"this host's address for a run across hosts: rank 0's TCP store listens on it, and gloo "
                             "on the interface GLOO_SOCKET_IFNAME names (set it too). Default "
                             f"{LOOPBACK}: the store and gloo on loopback, processes of this host only")
    args = parser.parse_args(argv)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_PORT") if k not in os.environ]
    if missing:
        parser.error(f"environment variables {missing} are not set (torch.distributed's RANK, WORLD_SIZE, "
                     "MASTER_ADDR, MASTER_PORT)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    if not args.connect_timeout > 0:
        parser.error(f"--connect-timeout={args.connect_timeout}: expected a positive number of seconds")
    cfg = None
    if rank == 0:
        if not args.config:
            parser.error("rank 0 needs --config")
        cfg = RunConfig.from_json(Path(args.config).read_text()).validate()
        n = system.parse_scenario(cfg.scenario).n
        if world != n:
            parser.error(f"WORLD_SIZE={world}, but the scenario has {n} devices (one process per device)")
    store_file = os.environ.get(STORE_ENV) or None
    try:
        token = run_token()
        store = rendezvous(host, port, world, rank, args.connect_timeout, token, args.listen, store_file)
        if rank != 0:
            store.wait(["xaiprune/config"], dt.timedelta(seconds=args.connect_timeout))
    except RuntimeError as exc:  # StartupError, or rank 0's config not shared in time
        print(f"rank {rank}: {str(exc).splitlines()[0]}", flush=True)
        os._exit(EXIT_STARTUP)
    if rank == 0:
        out = Path(args.out) if args.out else Path(args.config).parent
        out.mkdir(parents=True, exist_ok=True)
        code = coordinate(cfg, world, store, out)
    else:
        try:
            code = serve(RunConfig.from_json(store.get("xaiprune/config").decode()), rank, store,
                         lambda limit: transport.connect(host, port, token, limit, store_file))
        except Exception as exc:
            store.set(failed_key(rank), f"{type(exc).__name__}: {exc}")
            raise
    sys.stdout.flush()
    os._exit(code)  # the receiving thread may still wait in gloo; nothing is left to flush


@dataclass
class Outcome:
    """What :func:`launch` returns: the run folder, the per-request and event logs, exit codes."""

    folder: Path
    requests: "object"   # pandas DataFrame
    events: "object"
    summary: dict
    returncodes: dict[int, int]
    seconds: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # Linux: children get SIGTERM if the launching process dies
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


def launch(cfg: RunConfig, folder: Path, progress: bool = True, timeout: float | None = None,
           overwrite: bool = False, port: int | None = None, connect_timeout: float = CONNECT_TIMEOUT_S,
           store: str = "file") -> Outcome:
    """Run ``cfg`` with one local process per device (gloo on 127.0.0.1) under a fresh secret; collect the results.

    ``folder`` receives config.json, the logs of every rank and rank 0's outputs; it must be empty or
    absent unless ``overwrite``. ``store``: ``"file"`` (a file in a private folder, removed at the end: no
    socket) or ``"tcp"`` (rank 0's TCP store on 127.0.0.1, as a run across hosts has it); ``port``: rank 0's
    port then (default: a free one); ``connect_timeout``: seconds every process has to join. Every process is
    gone when this returns, raises or is interrupted. Used by ``07_distributed.ipynb``.
    """
    if store not in ("file", "tcp"):
        raise ValueError(f"store={store!r}: expected 'file' or 'tcp'")
    import pandas as pd

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
    private = transport.private_store() if store == "file" else None
    env = {**{k: v for k, v in os.environ.items() if k != STORE_ENV}, "WORLD_SIZE": str(world), "MASTER_ADDR": LOOPBACK,
           "MASTER_PORT": str(port or free_port()), "OMP_NUM_THREADS": str(cfg.threads), "PYTHONUNBUFFERED": "1",
           TOKEN_ENV: new_token(), **({STORE_ENV: str(private)} if private else {})}
    procs: dict[int, subprocess.Popen] = {}
    logs = {}
    start = time.perf_counter()
    try:
        for rank in range(world):
            logs[rank] = open(folder / f"rank{rank}.log", "w")
            cmd = [sys.executable, "-m", "xaiprune.serving", "--connect-timeout", str(connect_timeout)] \
                + (["--config", str(folder / "config.json")] if rank == 0 else [])
            procs[rank] = subprocess.Popen(cmd, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                           stdout=subprocess.PIPE if rank == 0 else logs[rank],
                                           stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
        (folder / "pids.json").write_text(json.dumps({r: p.pid for r, p in procs.items()}))
        watchdog = None
        if timeout:
            watchdog = threading.Timer(timeout, lambda: [p.kill() for p in procs.values() if p.poll() is None])
            watchdog.daemon = True
            watchdog.start()
        listening = sockets.Watch(procs)  # what the processes listen on, once every rank has joined
        _follow(procs[0], logs[0], progress, listening.look)
        if procs[0].wait() == 0:  # workers leave on SHUTDOWN; after a failure they are stopped at once
            for p in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=15)
        if watchdog:
            watchdog.cancel()
    finally:
        _stop(procs)
        for f in logs.values():
            f.close()
        if private is not None:
            shutil.rmtree(private.parent, ignore_errors=True)
    codes = {r: p.returncode for r, p in procs.items()}
    if codes[0] != 0:
        tail = (folder / "rank0.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"rank 0 exited with code {codes[0]}; the end of {folder / 'rank0.log'}:\n" + "\n".join(tail))

    def read(name):
        path = folder / name
        return pd.DataFrame([json.loads(x) for x in path.read_text().splitlines()]) if path.is_file() else pd.DataFrame()

    summary = {**json.loads((folder / "summary.json").read_text()), "listen_addresses": listening.addresses}
    return Outcome(folder, read("requests.jsonl"), read("events.jsonl"), summary, codes, time.perf_counter() - start)


def _follow(proc: subprocess.Popen, log, progress: bool, joined=None) -> None:
    """Copy rank 0's output to its log; show its PROGRESS lines as bars and its EVENT lines; call ``joined()`` at
    the first PROGRESS line (every rank has joined the run)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    try:
        for line in proc.stdout:
            log.write(line)
            if line.startswith("PROGRESS "):
                p = json.loads(line[9:])
                if joined is not None and not bars:
                    joined()
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
    finally:
        for b in bars.values():
            b.close()


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
