"""DyFiP served one image at a time (batch 1), every sub-network built ahead of time, and the serving log.

A cache that can miss puts a build (a copy of the tail, the channel removal, the BatchNorm refresh) on the
longest path of a request. Here every candidate set of size ``k`` (``C(classes, k)`` of them) gets its
sub-network before the first request (:func:`prebuild`, timed and sized apart), so no request ever builds.
:func:`serve` then answers the test images one at a time with each policy of :data:`POLICIES`, interleaved
image by image (the order of the policies rotates, so no policy always runs on a warm or a cold cache line), and
times every answer; each policy's slowest images are then timed again, keeping the fastest: an image's cost
without the machine's scheduling hiccups, which would otherwise decide the worst case of whichever policy they
happened to hit. The **worst case** is the slowest image of the whole split.
:func:`latency_table` and :func:`serving_lines` turn the log into the notebook's table and sentences.
Timings depend on the machine's load: the notebook records the load beside them.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import torch

from xaiprune.dyfip import core, subnets

POLICIES = ("full", "branch_only", "branch_static_tail", "random_specific", "dyfip")
REPEATS = 3  # timings of each of the slowest answers; the fastest is the image's cost
RECHECK = 0.02  # the share of each policy's slowest images timed again
SELECTION = {"branch_static_tail": "xai_total", "random_specific": "random", "dyfip": "xai"}  # their tails' filters


def prebuild(engine: core.Engine, k: int, keep: float, mode: str, selection: str, draw: int = 0) -> dict:
    """Every candidate set's refreshed sub-network for ``selection`` (one build for all sets when the selection
    ignores the set, :data:`~xaiprune.dyfip.core.AGNOSTIC`; the refresh is per set as in the evaluation):
    ``{"nets": {set: net}, "seconds": build time, "bytes": their weights}``."""
    start, built, nets = time.perf_counter(), None, {}
    for s in itertools.combinations(range(engine.full_logits.shape[1]), k):
        if built is None or selection not in core.AGNOSTIC:
            built = engine.build(selection, s, keep, draw)[0]
        nets[s] = engine.refresh(built, s, mode)
    return {"nets": nets, "seconds": time.perf_counter() - start,
            "bytes": sum(subnets.module_bytes(n) for n in nets.values())}


def answer(engine: core.Engine, policy: str, nets: dict | None, k: int, tau: float, img: torch.Tensor) -> int:
    """One image's answer under ``policy``: the full model; the branch alone; or the branch, its exit, and the
    candidate set's prebuilt tail with its logits restricted to the set."""
    if policy == "full":
        return int(engine.model(img).argmax())
    h = engine.prefix(img)
    p = torch.softmax(engine.branch(h), dim=1)
    if policy == "branch_only" or bool(core.exits(p, tau)[0]):
        return int(p.argmax())
    s = core.candidate_sets(p, k)[0]
    return int(core.restrict(nets[s](h), [s]).argmax())


def _timed(engine: core.Engine, policy: str, nets: dict[str, dict], k: int, tau: float, img: torch.Tensor
           ) -> tuple[float, int]:
    start = time.perf_counter()
    pred = answer(engine, policy, nets.get(policy, {}).get("nets"), k, tau, img)
    return 1e3 * (time.perf_counter() - start), pred


def serve(engine: core.Engine, k: int, tau: float, nets: dict[str, dict], n_images: int = 0,
          repeats: int = REPEATS, recheck: float = RECHECK, seed: int = 0) -> pd.DataFrame:
    """Serve the first ``n_images`` test images (0: all) one at a time, in an order shuffled with ``seed`` (so that
    the images that do not exit are not tied to one stretch of the machine's load), with every policy of
    :data:`POLICIES` (``nets``: the :func:`prebuild` of the policies with tails), rotating the policies' order image by
    image; then time each policy's slowest ``recheck`` share of images (at least one) ``repeats - 1`` more times,
    interleaved, keeping the fastest. The images not timed again keep their one timing, so a worst case can only
    come out too high, never too low. One row per image and policy: milliseconds and the answer."""
    if repeats < 1 or not 0 < recheck <= 1:
        raise ValueError(f"repeats={repeats}, recheck={recheck}; expected at least 1 timing and a share in (0, 1]")
    x = engine.split.x[:n_images or len(engine.split)]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).tolist()
    rows = []
    with torch.inference_mode():
        for pos, i in enumerate(order):
            for policy in POLICIES[pos % len(POLICIES):] + POLICIES[:pos % len(POLICIES)]:
                ms, pred = _timed(engine, policy, nets, k, tau, x[i:i + 1])
                rows.append({"image": i, "policy": policy, "ms": ms, "prediction": pred})
        log = pd.DataFrame(rows)
        n = max(1, math.ceil(recheck * len(x)))
        slow = pd.concat([g.nlargest(n, "ms") for _, g in log.groupby("policy", sort=False)]).sort_index()
        for _ in range(repeats - 1):
            for row in slow.itertuples():
                ms, _ = _timed(engine, row.policy, nets, k, tau, x[row.image:row.image + 1])
                log.at[row.Index, "ms"] = min(log.at[row.Index, "ms"], ms)
    return log


def latency_table(log: pd.DataFrame) -> pd.DataFrame:
    """Per policy: median, 99th percentile and worst (the slowest image) milliseconds, and the worst against the full
    model's worst."""
    g = log.groupby("policy", sort=False)["ms"]
    out = pd.DataFrame({"median_ms": g.median(), "p99_ms": g.quantile(0.99), "worst_ms": g.max()}).loc[list(POLICIES)]
    return out.assign(worst_vs_full=out["worst_ms"] / out.loc["full", "worst_ms"])


def agreement(log: pd.DataFrame, batched: dict[str, np.ndarray]) -> dict[str, float]:
    """Per policy with a batched counterpart (``{policy: probabilities of the same engine}``), the share of served
    answers equal to the batched argmax."""
    out = {}
    for p, probs in batched.items():
        served = log[log["policy"] == p]
        out[p] = float((served["prediction"].to_numpy() == probs.argmax(1)[served["image"].to_numpy()]).mean())
    return out


def serving_lines(table: pd.DataFrame, nets: dict[str, dict], agree: dict[str, float], n_images: int) -> list[str]:
    """The worst case against the full model's, the build ahead of time and its memory, and the agreement."""
    lines = [f"{p:19s} median {r['median_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms   worst {r['worst_ms']:7.2f} ms "
             f"({r['worst_vs_full']:.0%} of the full model's worst)" for p, r in table.iterrows()]
    lines += [f"{p}: {len(v['nets'])} sub-networks built ahead of time in {v['seconds']:.1f} s, "
              f"{v['bytes'] / 2**20:.0f} MB of weights" for p, v in nets.items()]
    return lines + [f"{n_images} test images, every policy on each (each policy's slowest {RECHECK:.0%} timed {REPEATS} times, "
                    "the fastest kept); served answers equal to the batched ones: "
                    + ", ".join(f"{p} {a:.1%}" for p, a in agree.items())]
