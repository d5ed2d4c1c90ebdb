"""Shared set-up of the serving tests: a small CNN's checkpoint, scores and profiles; configs; process helpers.

The small CNN is untrained but has non-trivial weights; emulation is off, so real-process runs take seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from conftest import real_root, small, split
from xaiprune import serving, train
from xaiprune.planning import system
from xaiprune.pruning import prune
from xaiprune.serving import transport

LEVELS = [0.0, 0.25, 0.5]


def device(name: str, memory_mb: float = 100.0) -> dict:
    return {"name": name, "speed_gflops": 5.0, "memory_mb": memory_mb, "energy_budget_j": 5.0,
            "energy_nj_per_flop": 0.4, "radio_w": 1.0}


def scenario(n: int) -> dict:
    """n devices; the source (d0) is slow to tempt the planner elsewhere, links at 50 Mbit/s."""
    devices = [device(f"d{j}") for j in range(n)]
    devices[0]["speed_gflops"] = 0.5
    return {"name": f"test-{n}", "source": "d0", "deadline_ms": 1000, "devices": devices,
            "links": {"default_mbps": 50}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, L1 and LRP scores, and measured profiles of the small CNN, in a scratch folder."""
    folder = tmp_path_factory.mktemp("serving")
    model = small()
    config = train.TrainConfig(arch="small_cnn", flag="pneumoniamnist", size=28, epochs=1)
    checkpoint = train.save(train.Trained(model=model, config=config), folder / "checkpoint.pt")
    scores = serving.write_scores(model, ["l1", "lrp"], split(6), folder)
    table = []  # measured costs of every segment alone at every level (what 04's sensitivity table holds)
    for segment in model.segments:
        for level in LEVELS:
            pruned = prune.prune_with_scores(model, {segment: level}, torch.load(scores["l1"], weights_only=True))
            cost = prune.profile(pruned, (1, 28, 28))
            table.append({"segment": segment, "level": level, "draw": 0, "acc": 0.9, "auc": 0.9,
                          **{k: cost[f"segment_{k}"][segment] for k in ("macs", "weight_bytes", "peak_bytes", "out_bytes")}})
    profiles = system.profiles_from_sensitivity(pd.DataFrame(table), input_bytes=28 * 28 * 4)
    system.save_profiles(profiles, folder / "profiles.json")
    return {"folder": folder, "model": model, "checkpoint": str(checkpoint), "scores": scores,
            "profiles": str(folder / "profiles.json")}


def config(setup, n_devices: int, policies: list[dict], **kw) -> serving.RunConfig:
    """A run config of the small CNN, emulation off.

    With emulation off a hop is expected to take milliseconds, so its deadline is almost all ``hop_margin_s``:
    the margins here are generous (2 s, a death after 3 s of silence), so a worker that is only slow because the
    machine is loaded (CI runs the whole suite on 2 cores) is never taken for a hung or dead one. They cost no
    time unless a deadline is missed. Tests of deadlines and deaths pass their own (``test_serving_faults``).
    """
    fields = dict(arch="small_cnn", flag="pneumoniamnist", size=28, checkpoint=setup["checkpoint"],
                  scores=setup["scores"], scenario=scenario(n_devices), profiles=setup["profiles"],
                  policies=policies, data_root=str(real_root() or ""), emulate=False, n_requests=6,
                  hop_margin_s=2.0, dead_after_s=3.0)
    return serving.RunConfig(**{**fields, **kw})


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def pids(folder: Path) -> list[int]:
    return list(json.loads((folder / "pids.json").read_text()).values())


TOKEN = transport.new_token()  # the secret of every run these tests start by hand


def process(rank: int, world: int, port: int, log: Path, *args: str, token: str = TOKEN) -> subprocess.Popen:
    """Start ``python -m xaiprune.serving`` as one rank under ``token``, its output in ``log``."""
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), transport.TOKEN_ENV: token}
    with open(log, "w") as out:  # the child keeps its own copy of the file
        return subprocess.Popen([sys.executable, "-m", "xaiprune.serving", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``proc`` (a rank 0) listens on ``port``, so a store client connects at once.

    A TCPStore client that finds nobody listening retries with a growing back-off; on a loaded machine rank 0
    may start listening (after its imports) late, and a short ``--connect-timeout`` window could pass in the
    client's back-off. A bare connection that closes at once does not count as a client of the store.
    """
    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"rank 0 ended (code {proc.returncode}) before it listened on port {port}")
            if time.monotonic() > end:
                pytest.fail(f"rank 0 did not listen on port {port} within {timeout:g} s")
            time.sleep(0.02)


@contextmanager
def as_rank0(cfg: serving.RunConfig, tmp_path: Path):
    """This test process is rank 0 of a two-device world; rank 1 is a real worker process.

    Yields ``(proc, store)`` once the worker is up; the worker is stopped on exit.
    """
    port = serving.free_port()
    proc = process(1, 2, port, tmp_path / "rank1.log")
    try:
        store = transport.rendezvous("127.0.0.1", port, 2, 0, 60, TOKEN)
        store.set("xaiprune/config", cfg.to_json())
        store.wait(["xaiprune/up/1"], dt.timedelta(seconds=60))
        yield proc, store
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
