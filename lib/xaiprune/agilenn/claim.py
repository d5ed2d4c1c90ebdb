"""The claim of ``10_agilenn``: over 6x lower latency than every other scheme, with an AUC near the full model's.

Decided in three parts, each by the protocol's rules (:mod:`xaiprune.study.protocol`; margins and targets are
arguments, the notebook takes them from there):

- :func:`accuracy`: AgileNN over its training seeds against the full model (the study's model run locally) on the
  same test images: ACC, balanced accuracy and AUC of each (:func:`xaiprune.stats.endpoints`) and the AUC
  difference by :func:`xaiprune.stats.paired_difference` (seeds nested), Holm-corrected (:func:`xaiprune.stats.holm`);
- :func:`modelled_ratios`: the system model's latency of every other scheme over AgileNN's (exact, no interval);
- :func:`measured_ratios`: the served medians' ratios with a bootstrap over the served images
  (:func:`xaiprune.stats.summarise_bootstrap`), decided on the lower end of the smallest ratio's interval;

:func:`latency_parts` separates the modelled milliseconds (device, link, remote) from the overhead of the real
round trip; :func:`claim` gives the verdict, its evidence and the row's extra keys (the load average of the
measurement among them), :func:`claim_lines` the notebook's lines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune import stats
from xaiprune.agilenn.analysis import METHODS, OTHERS, Link, Payloads, at


def accuracy(agile: list[np.ndarray], full: np.ndarray, y: np.ndarray, task: str, margin: float, n_boot: int = 2000,
             seed: int = 0) -> dict:
    """AgileNN over its training seeds (one probability array each) against the full model on the same test images.

    ``agilenn`` (the mean over seeds), ``seeds`` and ``full``: ACC, balanced accuracy and AUC
    (:func:`xaiprune.stats.endpoints`); ``difference``: AgileNN's mean minus the full model's, per endpoint;
    ``auc``: the claim's primary comparison, the AUC difference by :func:`xaiprune.stats.paired_difference` (test
    images resampled, the seeds nested) against ``margin``, Holm-corrected over the claim's family (this one
    comparison: the latency parts are decided separately, each on its own figure).
    """
    y = np.asarray(y)
    diff = stats.holm([stats.paired_difference(agile, [full], y, task, "auc", margin, n_boot, seed)])[0]
    seeds = [stats.endpoints(y, p, task) for p in agile]
    mean = {m: float(np.mean([s[m] for s in seeds])) for m in stats.ENDPOINTS}
    ref = stats.endpoints(y, full, task)
    return {"agilenn": mean, "seeds": seeds, "full": ref, "difference": {m: mean[m] - ref[m] for m in stats.ENDPOINTS},
            "auc": diff}


def modelled_ratios(link: Link, sent_by_method: dict, multiplier: float = 1.0) -> dict[str, float]:
    """Each other scheme's predicted latency over AgileNN's (:meth:`Link.predicted_ms`: no interval, the model is exact)."""
    mine = link.predicted_ms("agilenn", multiplier, sent_by_method)
    return {m: link.predicted_ms(m, multiplier, sent_by_method) / mine for m in OTHERS}


def _ratio(observed: float, boot: np.ndarray, target: float) -> dict:
    r = stats.summarise_bootstrap(observed, boot, target)
    return {"ratio": float(observed), "interval": r["interval"], "p": r["p"], "target": target}


def measured_ratios(served: pd.DataFrame, target: float, n_boot: int = 2000, seed: int = 0, multiplier: float = 1.0) -> dict:
    """Each other scheme's median measured latency over AgileNN's, on the images every scheme served at ``multiplier``.

    The images are resampled with replacement ``n_boot`` times, the same resample for every scheme (paired); each
    resample gives every scheme's median and so every ratio; ``min`` is the smallest ratio of each resample (the
    scheme nearest to AgileNN). Each ratio as :func:`xaiprune.stats.summarise_bootstrap` reports it against ``target``
    (``p``: of "the ratio is at most the target"); ``median_ms``: each scheme's median with its interval.
    """
    rows = served[np.isclose(served["multiplier"], multiplier)]
    lat = rows.pivot_table(index="image", columns="method", values="latency_ms", aggfunc="median")
    missing = [m for m in METHODS if m not in lat.columns]
    if missing:
        raise ValueError(f"no request of {missing} at bandwidth factor {multiplier}")
    x = lat[METHODS].dropna().to_numpy()
    if len(x) < 2:
        raise ValueError(f"{len(x)} image(s) served by every scheme at factor {multiplier}: expected at least 2")
    med = np.median(x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))], axis=1)
    obs, a = np.median(x, axis=0), METHODS.index("agilenn")
    boot = {m: med[:, j] / med[:, a] for j, m in enumerate(METHODS) if m != "agilenn"}
    ratios = {m: _ratio(obs[METHODS.index(m)] / obs[a], boot[m], target) for m in OTHERS}
    nearest = min(ratios, key=lambda m: ratios[m]["ratio"])
    low = _ratio(ratios[nearest]["ratio"], np.min(np.stack(list(boot.values())), axis=0), target)
    medians = {m: {"median": float(obs[j]), "interval": [float(v) for v in np.quantile(med[:, j], [0.025, 0.975])]}
               for j, m in enumerate(METHODS)}
    return {"ratios": ratios, "min": {**low, "against": nearest}, "median_ms": medians, "images": len(x), "n_boot": n_boot}


def latency_parts(link: Link, sent_by_method: dict, measured: dict, multiplier: float = 1.0) -> pd.DataFrame:
    """Per method at ``multiplier``: the modelled milliseconds (device, link, remote, total), the measured median with
    its interval, and the overhead the model does not charge (measured median minus modelled total)."""
    rows = []
    for m in METHODS:
        parts = link.parts_ms(m, multiplier, sent_by_method)
        med = measured["median_ms"][m]
        total = sum(parts.values())
        rows.append({"method": m, **{f"modelled {k} ms": v for k, v in parts.items()}, "modelled ms": total,
                     "measured median ms": med["median"], "measured lo ms": med["interval"][0],
                     "measured hi ms": med["interval"][1],
                     "overhead ms": med["median"] - total})
    return pd.DataFrame(rows).set_index("method")


def _rounded(v):
    """Floats to 4 decimals, through dicts and lists (the row's extra keys go to JSON as the report shows them)."""
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return round(float(v), 4) if isinstance(v, (float, np.floating)) else v


def claim(acc: dict, modelled: dict[str, float], measured: dict, target_ratio: float, load: dict, mbps: float) -> dict:
    """The claim's verdict from its three parts: the AUC difference's corrected interval above the margin, the modelled
    latency ratio against every scheme at least ``target_ratio``, and the lower end of the measured one's interval too.

    Returns what :func:`xaiprune.study.protocol.row` takes (``measured``, ``interval``, ``n_seeds``, ``verdict``,
    ``evidence``, and ``extra``: the latency figures, the load and the endpoints beside), with ``parts``,
    ``target_met`` and ``wins_somewhere``.
    """
    d, low = acc["auc"], min(modelled, key=modelled.get)
    m = measured["min"]
    parts = {"auc_above_margin": bool(d["above_margin"]),
             "modelled_ratio_at_least_target": bool(modelled[low] >= target_ratio),
             "measured_ratio_at_least_target": bool(m["interval"][0] >= target_ratio)}
    met, wins, n = all(parts.values()), any(parts.values()), d["n_seeds"][0]
    evidence = (f"AgileNN's test AUC (mean over {n} training seeds) minus the full model's: {d['diff']:+.4f}, corrected "
                f"interval [{d['interval_holm'][0]:+.4f}, {d['interval_holm'][1]:+.4f}] against the margin {d['margin']:+.2f}. "
                f"At {mbps:.0f} Mbit/s the least ratio of another scheme's latency to AgileNN's is {modelled[low]:.1f}x by "
                f"the model ({low}) and {m['ratio']:.1f}x [{m['interval'][0]:.1f}, {m['interval'][1]:.1f}] as measured "
                f"({m['against']}, {measured['images']} images, load average {load['start'][0]:.2f} then "
                f"{load['end'][0]:.2f} on {load['cpus']} CPUs); the target is {target_ratio:g}x.")
    extra = {"endpoints": {"agilenn": acc["agilenn"], "full_model": acc["full"]}, "p_holm": d["p_holm"],
             "latency_target_ratio": target_ratio, "modelled_ratios": modelled, "modelled_min_ratio": modelled[low],
             "measured_ratios": {k: {"ratio": v["ratio"], "interval": v["interval"]} for k, v in measured["ratios"].items()},
             "measured_min_ratio": {"ratio": m["ratio"], "interval": m["interval"], "against": m["against"]},
             "latency_images": measured["images"], "load_average": load, "parts": parts}
    extra = _rounded(extra)
    return {"measured": d["diff"], "interval": d["interval_holm"], "n_seeds": n, "verdict": stats.verdict(met, wins),
            "evidence": evidence, "extra": extra, "parts": parts, "target_met": met, "wins_somewhere": wins}


def claim_lines(c: dict, acc: dict, modelled: dict, measured: dict, latency: pd.DataFrame, link: Link, costs: dict,
                pay: Payloads) -> list[str]:
    """Each part of the claim met or not (targets as :func:`claim` was given them), the comparison with full offload
    explained by its parts, and the verdict."""
    word = lambda key: "met" if c["parts"][key] else "NOT met"  # noqa: E731
    d, e, m, r = acc["auc"], c["extra"], measured["min"], c["extra"]["latency_target_ratio"]
    a, png_b, ag_b = (lambda k: at(latency, k)), pay.png.mean(), pay.agile.mean()
    return [f"AUC: AgileNN {acc['agilenn']['auc']:.4f} (mean over {c['n_seeds']} seeds) against the full model's "
            f"{acc['full']['auc']:.4f}: {d['diff']:+.4f}, corrected interval [{d['interval_holm'][0]:+.4f}, "
            f"{d['interval_holm'][1]:+.4f}], margin {d['margin']:+.2f}: {word('auc_above_margin')}",
            f"beside it (decides nothing), AgileNN minus the full model: ACC {acc['difference']['acc']:+.4f}, balanced "
            f"accuracy {acc['difference']['bal_acc']:+.4f}",
            "modelled latency ratio (other / AgileNN): " + ", ".join(f"{k} {v:.1f}x" for k, v in modelled.items())
            + f"; the least {e['modelled_min_ratio']:.1f}x against {r:g}x: {word('modelled_ratio_at_least_target')}",
            "measured latency ratio (medians): " + ", ".join(f"{k} {v['ratio']:.1f}x [{v['interval'][0]:.1f}, "
                                                            f"{v['interval'][1]:.1f}]" for k, v in measured["ratios"].items())
            + f"; the least, {m['against']}, lower end {m['interval'][0]:.1f}x against {r:g}x: "
            f"{word('measured_ratio_at_least_target')}",
            f"against full offload (PNG): AgileNN sends {ag_b:.0f} bytes against the image's {png_b:.0f}, and the remote runs "
            f"{costs['remote_flops'] / 1e6:.1f} MFLOPs for it against {link.full_flops / 1e6:.1f}; the measured medians exceed "
            f"the model by {a('agilenn')['p50'] - a('agilenn')['predicted_ms']:.1f} ms (AgileNN) and "
            f"{a('offload_png')['p50'] - a('offload_png')['predicted_ms']:.1f} ms (full offload): the round trip between two "
            "processes on a shared CPU, which the model does not charge",
            f"verdict: {c['verdict']}"]
