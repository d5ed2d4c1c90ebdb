"""The evidence of 07's four claims, read off the runs' logs with the study's one procedure (:mod:`xaiprune.stats`).

Every policy of a run serves the same test images (request ``t`` is test image ``test_index``), so comparisons
between policies are **paired over requests**: a bootstrap resample draws the requests once, for both sides.

- :func:`distributed_accuracy`: each dynamic XAI policy against the unpruned model on one device and distributed:
  the test AUC of the answers (:func:`xaiprune.stats.paired_difference`, margin given) and the share of requests
  answered within the deadline (per-request hits, :func:`paired_share`, margin 0), Holm-corrected as one family;
- :func:`bytes_saved`: the share of the bytes between devices that pruning removed (against the same routes
  unpruned), with its interval over requests, Holm-corrected across the dynamic XAI policies;
- :func:`latency_model`: each policy's mean measured latency against the model's, with its interval over requests,
  and the requests the faults lost or answered twice (exact counts);
- :func:`pipelining`: the throughput gain of pipelining as a share of the bound the busiest device sets.

Each returns what a claim row needs (``measured``, ``interval``, ``n_seeds``, ``evidence``: sentences with this
run's numbers), the verdict's inputs (``target_met``, ``wins_somewhere``) and extra keys for the row. Margins and
targets are arguments: ``07_distributed.ipynb`` passes those :mod:`xaiprune.study.protocol` declares.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from xaiprune import stats
from xaiprune.planning import system
from xaiprune.serving.records import unpruned_bytes

N_BOOT = 2000
DYNAMIC = ("XAI + NLP", "XAI + RL")  # the dynamic XAI policies, the one the claim is about first
ONE, UNPRUNED = "one device", "no pruning"


def _r(v):
    """Floats rounded to 4 digits, numpy scalars as Python's, through lists and dicts (row values)."""
    if isinstance(v, dict):
        return {k: _r(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_r(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 4)
    return int(v) if isinstance(v, np.integer) else v


def probabilities(g: pd.DataFrame) -> np.ndarray:
    """(N, C) softmax of the logits the system returned for the rows of ``g``."""
    return torch.softmax(torch.tensor(g["logits"].tolist(), dtype=torch.float64), dim=1).numpy()


def endpoints_table(requests: pd.DataFrame, task: str) -> pd.DataFrame:
    """ACC, balanced accuracy and AUC of each policy's answers (:func:`xaiprune.stats.endpoints`), one row each."""
    return pd.DataFrame({name: stats.endpoints(g["label"].to_numpy()[:, None], probabilities(g), task)
                         for name, g in requests.groupby("policy", sort=False)}).T[list(stats.ENDPOINTS)]


def aligned(requests: pd.DataFrame, names) -> tuple[np.ndarray, dict[str, pd.DataFrame]]:
    """The labels (N, 1) of the test images every policy of ``names`` answered, and each policy's rows on them."""
    groups = {n: requests[requests["policy"] == n].set_index("test_index") for n in names}
    empty = [n for n, g in groups.items() if g.empty]
    if empty:
        raise ValueError(f"policies {empty}: no answered request in the run")
    common = sorted(set.intersection(*(set(g.index) for g in groups.values())))
    groups = {n: g.loc[common] for n, g in groups.items()}
    labels = groups[names[0]]["label"].to_numpy()
    if any(not np.array_equal(g["label"].to_numpy(), labels) for g in groups.values()):
        raise ValueError("the policies' labels differ on the same test_index: not the same test split")
    return labels[:, None], groups


def hits(g: pd.DataFrame) -> np.ndarray:
    """1.0 where a request's measured latency met its deadline, else 0.0."""
    return (g["latency_ms"] <= g["deadline_ms"]).to_numpy(np.float64)


def paired_share(a, b, margin: float = 0.0, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """mean(a) - mean(b) of two per-request arrays on the same requests, bootstrapped over the requests (paired)
    with the same resamples as :func:`xaiprune.stats.paired_difference` for this ``seed``."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    w = stats.resample_weights(len(d), n_boot, seed)
    return stats.summarise_bootstrap(float(d.mean()), w @ d / len(d), margin)


def _clean(r: dict) -> dict:
    keys = ("policy", "against", "endpoint", "diff", "interval", "interval_holm", "margin", "p", "p_holm", "above_margin")
    return _r({k: r[k] for k in keys if k in r})


def distributed_accuracy(requests: pd.DataFrame, task: str, margin: float, deadline_share: float,
                         dynamic=DYNAMIC, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Each dynamic policy's AUC against one device's and the unpruned distributed model's (``margin``), and its
    deadline share against one device's (margin 0), as one Holm family; the claim is about ``dynamic[0]``.

    ``target_met``: ``dynamic[0]``'s three comparisons above their margins and its deadline share at least
    ``deadline_share``; ``wins_somewhere``: any comparison of the family above its margin.
    """
    names = [*dynamic, ONE, UNPRUNED]
    y, g = aligned(requests, names)
    probs, hit = {n: probabilities(g[n]) for n in names}, {n: hits(g[n]) for n in names}
    family = []
    for p in dynamic:
        family += [{"policy": p, "against": ref, "endpoint": "auc",
                    **stats.paired_difference([probs[p]], [probs[ref]], y, task, "auc", margin, n_boot, seed)}
                   for ref in (ONE, UNPRUNED)]
        family.append({"policy": p, "against": ONE, "endpoint": "deadline share",
                       **paired_share(hit[p], hit[ONE], 0.0, n_boot, seed)})
    stats.holm(family)
    ends = {n: {**stats.endpoints(y, probs[n], task), "deadline_share": float(hit[n].mean())} for n in names}
    main = [r for r in family if r["policy"] == dynamic[0]]
    target = all(r["above_margin"] for r in main) and ends[dynamic[0]]["deadline_share"] >= deadline_share
    return {"measured": main[0]["diff"], "interval": main[0]["interval_holm"], "n_seeds": 1,
            "evidence": _accuracy_text(family, ends, len(y), deadline_share), "target_met": bool(target),
            "wins_somewhere": any(r["above_margin"] for r in family), "requests": len(y),
            "family": [_clean(r) for r in family], "endpoints": _r(ends)}


def _accuracy_text(family: list[dict], ends: dict, n: int, deadline_share: float) -> str:
    def one(p):
        auc = [r for r in family if r["policy"] == p and r["endpoint"] == "auc"]
        dl = next(r for r in family if r["policy"] == p and r["endpoint"] == "deadline share")
        lo, hi = auc[0]["interval_holm"]
        return (f"{p}: AUC {ends[p]['auc']:.3f} ({auc[0]['diff']:+.3f} against one device, Holm interval [{lo:+.3f}, "
                f"{hi:+.3f}]; {auc[1]['diff']:+.3f} against the unpruned model distributed), deadlines met "
                f"{ends[p]['deadline_share']:.1%} ({dl['diff']:+.1%} against one device, [{dl['interval_holm'][0]:+.1%}, "
                f"{dl['interval_holm'][1]:+.1%}])")
    dynamic = list(dict.fromkeys(r["policy"] for r in family))
    shown = "; ".join(f"{p} {e['acc']:.3f} / {e['bal_acc']:.3f}" for p, e in ends.items())
    return (f"Over {n} test requests: " + "; ".join(one(p) for p in dynamic) + f". One device: AUC {ends[ONE]['auc']:.3f}, "
            f"deadlines met {ends[ONE]['deadline_share']:.1%} (target for {dynamic[0]}: {deadline_share:.0%}). "
            f"ACC / balanced accuracy (not deciding): {shown}.")


def dynamic_requests(served: list) -> dict[str, pd.DataFrame]:
    """``"<scenario>: <policy>"`` -> the requests of each dynamic XAI policy of each run (runs that are None skipped)."""
    return {f"{run.scenario}: {name}": g for run in served if run is not None
            for name, g in run.requests.groupby("policy", sort=False) if name in DYNAMIC}


def _share(sent, full):
    sent, full = np.asarray(sent, np.float64), np.asarray(full, np.float64)
    return np.where(full > 0, 1 - sent / np.where(full > 0, full, 1.0), 0.0)


def saved_share(g: pd.DataFrame, profiles: system.Profiles, margin: float, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """1 - bytes sent / bytes the same routes send unpruned, over the requests of ``g``, bootstrapped over them
    (0 where nothing crossed a link, as :func:`xaiprune.serving.summarise` has it)."""
    sent = g["bytes"].to_numpy(np.float64)
    full = np.array([unpruned_bytes(b, profiles) for b in g["link_bytes"]], dtype=np.float64)
    w = stats.resample_weights(len(sent), n_boot, seed)
    return stats.summarise_bootstrap(float(_share(sent.sum(), full.sum())), _share(w @ sent, w @ full), margin)


def bytes_saved(runs: dict[str, pd.DataFrame], profiles: system.Profiles, margin: float, n_boot: int = N_BOOT,
                seed: int = 0) -> dict:
    """The share pruning saved for each of ``runs`` (:func:`dynamic_requests`), Holm-corrected across them.

    ``target_met``: some policy's corrected interval above ``margin``; ``wins_somewhere``: some share above 0.
    ``measured`` is the largest share, with its corrected interval.
    """
    if not runs:
        raise ValueError("no dynamic XAI policy among the runs")
    res = stats.holm([{"policy": k, **saved_share(g, profiles, margin, n_boot, seed)} for k, g in runs.items()])
    best = max(res, key=lambda r: r["diff"])
    text = "; ".join(f"{r['policy']} {r['diff']:.1%} [{r['interval_holm'][0]:.1%}, {r['interval_holm'][1]:.1%}]"
                     for r in res)
    return {"measured": best["diff"], "interval": best["interval_holm"], "n_seeds": 1,
            "evidence": f"Share of the bytes between devices that pruning removed, Holm intervals over requests: {text} "
                        f"(target: an interval above {margin:.0%}).",
            "target_met": any(r["above_margin"] for r in res), "wins_somewhere": any(r["diff"] > 0 for r in res),
            "best": best["policy"], "policies": {r["policy"]: _clean(r) for r in res}}


def latency_error(g: pd.DataFrame, tolerance: float = 0.2, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Mean measured / mean predicted latency - 1 over the requests of ``g``, with its bootstrap interval over them,
    and the bootstrap of ``tolerance - |error|`` (``within``) that :func:`latency_model` corrects across policies."""
    m, p = g["latency_ms"].to_numpy(np.float64), g["predicted_latency_ms"].to_numpy(np.float64)
    w = stats.resample_weights(len(m), n_boot, seed)
    boot, error = (w @ m) / (w @ p) - 1, m.mean() / p.mean() - 1
    lo, hi = np.quantile(boot, [0.025, 0.975])
    out = _r({"error": error, "interval": [lo, hi], "measured_ms": m.mean(), "predicted_ms": p.mean(), "requests": len(m)})
    return {**out, "within": stats.summarise_bootstrap(tolerance - abs(error), tolerance - np.abs(boot))}


def machine_load() -> dict:
    """The machine's load averages (1, 5, 15 min: the runs' background) and its cores."""
    one, five, fifteen = os.getloadavg()
    return _r({"1min": one, "5min": five, "15min": fifteen, "cpus": os.cpu_count()})


def latency_model(served: list, faults: dict[str, dict], tolerance: float, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Every policy of the runs with one request in flight (``served``, None skipped) against the model, and faults.

    ``target_met``: every policy's error within ``tolerance`` with its interval (the interval of ``tolerance - |error|``
    above 0, Holm-corrected across the policies), every fault kind seen acting, and no fault lost or duplicated a
    request; ``wins_somewhere``: some policy within. ``measured``: the error furthest from 0, with its interval.
    The load averages are read when the evidence is computed, right after the runs (the 15-minute one spans them).
    """
    per = {f"{run.scenario}: {name}": latency_error(g, tolerance, n_boot, seed) for run in served if run is not None
           for name, g in run.requests.groupby("policy", sort=False)}
    stats.holm([v["within"] for v in per.values()])
    within = {k: bool(v.pop("within")["above_margin"]) for k, v in per.items()}
    worst = max(per, key=lambda k: abs(per[k]["error"]))
    lost, dup = (sum(int(f[k]) for f in faults.values()) for k in ("lost", "duplicated"))
    acted = sum(bool(f["triggered"]) for f in faults.values())
    load = machine_load()
    text = (f"{sum(within.values())} of {len(per)} policies within {tolerance:.0%} of the model's mean latency with the "
            f"Holm-corrected interval (errors "
            f"{min(v['error'] for v in per.values()):+.1%} to {max(v['error'] for v in per.values()):+.1%}; furthest: "
            f"{worst}, {per[worst]['error']:+.1%} [{per[worst]['interval'][0]:+.1%}, {per[worst]['interval'][1]:+.1%}]). "
            f"{len(faults)} fault kinds ({acted} seen acting): {lost} requests lost, {dup} answered twice, recovery at "
            f"most {max(float(f['recovery_s']) for f in faults.values()):.2f} s"
            + ("" if acted == len(faults) else "; a fault that never acted tested nothing, so the fault part is not met")
            + f". Load after the runs {load['1min']:.2f} / {load['5min']:.2f} / {load['15min']:.2f} (1 / 5 / 15 min) "
            f"on {load['cpus']} cores.")
    return {"measured": per[worst]["error"], "interval": per[worst]["interval"], "n_seeds": 1, "evidence": text,
            "target_met": all(within.values()) and lost == 0 and dup == 0 and acted == len(faults),
            "wins_somewhere": any(within.values()),
            "policies": {k: {**v, "within": within[k]} for k, v in per.items()}, "lost": lost, "duplicated": dup,
            "faults": _r({k: {c: f[c] for c in ("lost", "duplicated", "triggered", "recovery_s")}
                          for k, f in faults.items()}), "load": load}


def pipelining(pipe: dict, share: float) -> dict:
    """The gain of :func:`xaiprune.serving.analysis.pipelining` as a share of its bound; target: at least ``share``.
    ``wins_somewhere``: pipelining raised the throughput at all."""
    ratio, load = pipe["speedup"] / pipe["bound"], machine_load()
    text = (f"With {pipe['window']} requests in flight, throughput rose {pipe['speedup']:.2f}x ({pipe['xw']:.1f} against "
            f"{pipe['x1']:.1f} requests/s); the busiest device ({pipe['busiest']}, {pipe['busy_ms']:.1f} ms per request) "
            f"bounds the gain at {pipe['bound']:.2f}x: {ratio:.0%} of the bound (target {share:.0%}; one timed run, load after it "
            f"{load['1min']:.2f} / {load['5min']:.2f} / {load['15min']:.2f} on {load['cpus']} cores).")
    return {"measured": _r(ratio), "interval": None, "n_seeds": 1, "evidence": text, "target_met": bool(ratio >= share),
            "wins_somewhere": bool(pipe["speedup"] > 1), "speedup": _r(pipe["speedup"]), "bound": _r(pipe["bound"]),
            "window": pipe["window"], "busiest_device": pipe["busiest"], "load": load}
