"""DyFiP served one image at a time (batch 1) through an LRU cache of sub-networks, and the serving log.

:func:`stream` times each request of ``08_dyfip``'s section on serving; :func:`requests_frame`,
:func:`latency_summary` and :func:`serving_lines` turn its log into the notebook's table, summary and sentences.
Timings depend on the machine's load: the notebook keeps them out of ``metrics.json``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from xaiprune.dyfip import core, subnets


def stream(engine: core.Engine, k: int, keep: float, tau: float, mode: str, capacity: int, n_images: int) -> dict:
    """Serve test images one at a time (batch 1) through an LRU cache of sub-networks, timing each request.

    Returns per-image milliseconds (building excluded and included), the cache's hit rate and build
    times, and the full model's batch-1 milliseconds on the same images, for comparison.
    """
    sets_of = {}
    cache = subnets.SubnetCache(lambda s: engine.refresh(engine.build("xai", s, keep)[0], s, mode), capacity)
    x = engine.split.x[:n_images or len(engine.split)]
    served, total, full, preds = [], [], [], []
    with torch.inference_mode():
        for img in x.split(1):
            start = time.perf_counter()
            h = engine.prefix(img)
            p = torch.softmax(engine.branch(h), dim=1)
            if bool(core.exits(p, tau)[0]):
                preds.append(int(p.argmax()))
                built = 0.0
            else:
                s = core.candidate_sets(p, k)[0]
                before = sum(cache.build_seconds)
                net = cache.get(s)
                built = sum(cache.build_seconds) - before
                preds.append(int(core.restrict(net(h), [s]).argmax()))
                sets_of[s] = sets_of.get(s, 0) + 1
            elapsed = time.perf_counter() - start
            total.append(1e3 * elapsed)
            served.append(1e3 * (elapsed - built))
            start = time.perf_counter()
            engine.model(img)
            full.append(1e3 * (time.perf_counter() - start))
    return {"ms": np.array(served), "ms_with_build": np.array(total), "full_ms": np.array(full), "preds": np.array(preds),
            "hit_rate": cache.hit_rate, "hits": cache.hits, "misses": cache.misses, "build_s": np.array(cache.build_seconds),
            "peak_cache_bytes": cache.peak_bytes, "sets": sets_of}


def requests_frame(served: dict, y: torch.Tensor) -> pd.DataFrame:
    """:func:`stream`'s log, one row per image served: milliseconds (DyFiP, with build, full model), answer, label."""
    n = len(served["ms"])
    return pd.DataFrame({"dyfip_ms": served["ms"], "dyfip_ms_with_build": served["ms_with_build"],
                         "full_ms": served["full_ms"], "prediction": served["preds"], "label": y[:n].numpy()})


def latency_summary(requests: pd.DataFrame) -> dict:
    """Median and p95 milliseconds of DyFiP (building excluded and included) and of the full model."""
    return {name: {"median_ms": float(np.median(requests[col])), "p95_ms": float(np.percentile(requests[col], 95))}
            for name, col in (("dyfip", "dyfip_ms"), ("dyfip_with_build", "dyfip_ms_with_build"), ("full", "full_ms"))}


def serving_lines(latency: dict, served: dict, capacity: int, tail_bytes: int, agree: float) -> list[str]:
    """The latency summary, the cache's hit rate, build times and memory, and the agreement with the batched answers."""
    lines = [f"{name:17s} median {v['median_ms']:7.2f} ms   p95 {v['p95_ms']:7.2f} ms" for name, v in latency.items()]
    return lines + [f"cache of {capacity}: hit rate {served['hit_rate']:.1%} ({served['hits']} hits, {served['misses']} misses, "
                    f"{len(served['sets'])} distinct candidate sets); building a sub-network took "
                    f"{np.median(served['build_s']) * 1e3:.0f} ms median, {served['build_s'].max() * 1e3:.0f} ms at most; "
                    f"the cache held at most {served['peak_cache_bytes'] / 2**20:.1f} MB (full tail: {tail_bytes / 2**20:.1f} MB); "
                    f"answers equal to the batched ones: {agree:.1%}"]
