"""The claim of ``10_agilenn`` and its ``metrics.json``: in the paper's regime, AgileNN against the baselines of its size.

The claim is decided in the regime it was made for (the notebook's ``claim_regime``, by default ``paper``) in four
parts, by the protocol's rules (margins and targets from :mod:`xaiprune.study.protocol`):

- :func:`accuracy`: AgileNN over its training seeds minus the equal-capacity network offloaded whole
  (``offload_small``: the lossless PNG image, so its answers are the small network's), on balanced accuracy and AUC,
  each by :func:`xaiprune.stats.paired_difference` (test images resampled, the seeds nested and paired: seed j of
  both starts from the same reference stem), Holm-corrected over the two, against the margin;
- :func:`modelled_ratio`: the least modelled median latency among the baselines it must beat that fit on the device
  (:data:`xaiprune.agilenn.regimes.PEERS`: its own network locally, offloaded whole and split, and narrowed to the
  device) over AgileNN's, at least the target;
- :func:`measured_ratio`: the same on the served medians, decided on the lower end of its interval: each resample of
  the served images (the same for every method) gives the smallest of those baselines' medians over AgileNN's. The
  interval covers the images, not the load of another run: the load average is recorded beside.

:func:`claim` gives the verdict, its evidence and the row's extra keys, :func:`claim_lines` the notebook's lines and
:func:`metrics` the notebook's ``metrics.json``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from xaiprune import stats
from xaiprune.agilenn import analysis
from xaiprune.agilenn.regimes import PEERS, Networks

ACCURACY = ("bal_acc", "auc")  # the endpoints of the parity test


def accuracy(agile: list[np.ndarray], other: list[np.ndarray], y: np.ndarray, task: str, margin: float,
             n_boot: int = 2000, seed: int = 0) -> dict:
    """AgileNN's seeds (probabilities each) minus ``other``'s on the same test images: per endpoint of
    :data:`ACCURACY`, the paired difference, Holm-corrected over the two. Seed j of one side is drawn with seed j of
    the other (the small network of seed j starts from the same reference stem and sees the same batches)."""
    y = np.asarray(y)
    diffs = stats.holm([stats.paired_difference(agile, other, y, task, m, margin, n_boot, seed, paired_seeds=True)
                        for m in ACCURACY])
    return dict(zip(ACCURACY, diffs))


def _baselines(table: pd.DataFrame, column: str) -> list[str]:
    return [m for m in PEERS if m in table.index and table.loc[m, "fits"] and pd.notna(table.loc[m, column])]


def modelled_ratio(table: pd.DataFrame) -> dict:
    """The nearest peer's modelled median over AgileNN's (:func:`analysis.latency_table` rows)."""
    base = _baselines(table, "modelled ms")
    each = {m: float(table.loc[m, "modelled ms"] / table.loc["agilenn", "modelled ms"]) for m in base}
    best = min(each, key=each.get)
    return {"ratio": each[best], "against": best, "each": each}


def coder_free_ratio(run: "analysis.RegimeRun", nets: Networks, test_sent: dict[str, np.ndarray]) -> dict:
    """:func:`modelled_ratio` with the coder charged nothing on either side: whether the coder's cost decides it."""
    free = dataclasses.replace(run.regime, coder_ops=0.0)
    return modelled_ratio(analysis.latency_table(free, nets, run.served, run.cut, run.boot, run.methods, test_sent))


def measured_ratio(boot: np.ndarray, observed: dict, methods: list[str], table: pd.DataFrame, level: float = 0.95) -> dict:
    """The nearest peer's measured median over AgileNN's, with its paired bootstrap interval (``boot``: resampled
    medians (B, M) of :func:`analysis.medians`, columns in ``methods``' order; the peers that fit, from ``table``)."""
    base = [m for m in _baselines(table, "measured ms") if m in methods]
    if "agilenn" not in methods or not base:
        raise ValueError(f"methods={methods}: expected agilenn and at least one of {PEERS} that fits")
    best = min(base, key=observed.get)
    resampled = boot[:, [methods.index(m) for m in base]].min(1) / boot[:, methods.index("agilenn")]
    lo, hi = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return {"ratio": observed[best] / observed["agilenn"], "interval": [float(lo), float(hi)], "against": best}


def claim(acc: dict, modelled: dict, measured: dict, target: float, regime: str, load: dict, requests: int) -> dict:
    """The verdict from the four parts; what :func:`xaiprune.study.protocol.row` takes (``measured``: the measured
    ratio, ``interval``, ``n_seeds``, ``verdict``, ``evidence``, ``extra``), with ``parts`` and ``target_met``."""
    parts = {"modelled_ratio_at_least_target": modelled["ratio"] >= target,
             "measured_ratio_lower_end_at_least_target": measured["interval"][0] >= target,
             **{f"{m}_within_margin": bool(acc[m]["above_margin"]) for m in ACCURACY}}
    met, wins = all(parts.values()), any(parts.values())
    b, a = acc["bal_acc"], acc["auc"]
    evidence = (f"In the {regime} regime the nearest baseline AgileNN must beat is {modelled['ratio']:.2f}x AgileNN's "
                f"latency by the model ({modelled['against']}) and {measured['ratio']:.2f}x "
                f"[{measured['interval'][0]:.2f}, {measured['interval'][1]:.2f}] as measured ({measured['against']}, "
                f"{requests} requests per method, load average {load['start'][0]:.2f} then {load['end'][0]:.2f} on "
                f"{load['cpus']} CPUs); the target is {target:g}x. AgileNN minus the same network offloaded whole "
                f"(mean over {b['n_seeds'][0]} training seeds each): balanced accuracy {b['diff']:+.4f} "
                f"[{b['interval_holm'][0]:+.4f}, {b['interval_holm'][1]:+.4f}], AUC {a['diff']:+.4f} "
                f"[{a['interval_holm'][0]:+.4f}, {a['interval_holm'][1]:+.4f}] (Holm-corrected), margin {b['margin']:+.2f}.")
    extra = _rounded({"regime": regime, "target_ratio": target, "modelled_ratio": modelled, "measured_ratio": measured,
                      "accuracy_vs_offload_small": {m: {k: acc[m][k] for k in ("diff", "interval_holm", "p_holm")}
                                                    for m in ACCURACY},
                      "load_average": load, "requests": requests, "parts": parts})
    return {"measured": measured["ratio"], "interval": measured["interval"], "n_seeds": b["n_seeds"][0],
            "verdict": stats.verdict(met, wins), "evidence": evidence, "extra": extra, "parts": parts, "target_met": met}


def claim_lines(c: dict, skew: list[float], rho: float) -> list[str]:
    """Each part met or not, the skewness target beside (it decides nothing), and the verdict."""
    word = lambda key: "met" if c["parts"][key] else "NOT met"  # noqa: E731
    e = c["extra"]
    mo, me, acc = e["modelled_ratio"], e["measured_ratio"], e["accuracy_vs_offload_small"]
    return [f"modelled: the nearest baseline AgileNN must beat ({mo['against']}) is {mo['ratio']:.2f}x AgileNN's latency "
            f"(each: {', '.join(f'{m} {v:.2f}x' for m, v in mo['each'].items())}); target {e['target_ratio']:g}x: "
            f"{word('modelled_ratio_at_least_target')}",
            f"measured: {me['ratio']:.2f}x [{me['interval'][0]:.2f}, {me['interval'][1]:.2f}] ({me['against']}); the lower "
            f"end against {e['target_ratio']:g}x: {word('measured_ratio_lower_end_at_least_target')}",
            *[f"{m} minus offload_small: {acc[m]['diff']:+.4f} [{acc[m]['interval_holm'][0]:+.4f}, "
              f"{acc[m]['interval_holm'][1]:+.4f}] (Holm): {word(f'{m}_within_margin')}" for m in ACCURACY],
            f"skewness per seed {', '.join(f'{s:.3f}' for s in skew)} against rho = {rho}: "
            f"{'met' if min(skew) >= rho else 'NOT met'} (a training target; it decides nothing in the claim)",
            f"verdict ({e['regime']} regime): {c['verdict']}"]


def _rounded(v):
    """Floats to 4 decimals, through dicts and lists (numpy scalars and booleans to plain JSON)."""
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return round(float(v), 4) if isinstance(v, (float, np.floating)) else v


def regime_metrics(table: pd.DataFrame, endpoints: dict[str, dict], cut_after: str) -> dict:
    """``regimes.<regime>`` of ``metrics.json``: per method the latency figures, endpoints, device MFLOPs and bytes
    (``table``: :func:`analysis.latency_table`); a method not served has ``not_served`` (why) and no measured figures."""
    out = {"split_cut_after": cut_after}
    for m, r in table.iterrows():
        get = lambda k: None if k not in r or pd.isna(r[k]) else float(r[k])  # noqa: E731
        out[m] = _rounded({"latency_ms_p50_model": get("modelled ms"), "latency_ms_p50_measured": get("measured ms"),
                           "latency_lo": get("measured lo"), "latency_hi": get("measured hi"),
                           "bal_acc": endpoints[m]["bal_acc"], "auc": endpoints[m]["auc"], "acc": endpoints[m]["acc"],
                           "device_mflops": get("device MFLOPs"), "bytes_per_image": get("bytes"), "fits": bool(r["fits"]),
                           "requests": int(r["requests"]) if get("requests") is not None else 0})
        if get("measured ms") is None:
            out[m]["not_served"] = f"modelled {r['modelled ms']:.0f} ms per request exceeds the serving limit"
    return out


def agilenn_metrics(evs: list[dict], seeds: list[int], costs: dict, nets, coder_ops: float, agile_bytes: float,
                    k: int, centroids: int) -> dict:
    """``agilenn`` of ``metrics.json``: skewness over seeds, device work against its own network and VGG-16-BN."""
    device = costs["device_flops"] + coder_ops * nets.agile_packed
    return _rounded({"n_seeds": len(seeds), "seeds": seeds, "skewness": float(np.mean([e["skewness"] for e in evs])),
                     "skewness_per_seed": [e["skewness"] for e in evs], "skewness_min": min(e["skewness"] for e in evs),
                     "ordered": float(np.mean([e["ordered"] for e in evs])), "k": k, "centroids": centroids,
                     "device_mflops": device / 1e6, "device_network_mflops": costs["device_flops"] / 1e6,
                     "coder_mops": coder_ops * nets.agile_packed / 1e6,
                     "device_share_of_own_network": device / (costs["device_flops"] + costs["remote_flops"]),
                     "device_share_of_vgg": device / nets.vgg_flops, "bytes_per_image": agile_bytes,
                     "bits_per_value": 8 * agile_bytes / costs["offloaded_values"],
                     "local_only_bal_acc": float(np.mean([e["local_bal_acc"] for e in evs])),
                     "local_only_auc": float(np.mean([e["local_auc"] for e in evs]))})


def ablation_metrics(frame: pd.DataFrame) -> dict:
    """``ablations`` of ``metrics.json``: per variant of :func:`analysis.ablations`, its test AUC and ACC, local AUC,
    skewness and bytes."""
    cols = ("test AUC", "test ACC", "local AUC", "skewness", "bytes")
    return {name: {c.replace(" ", "_").lower(): round(float(r[c]), 6) for c in cols} for name, r in frame.iterrows()}
