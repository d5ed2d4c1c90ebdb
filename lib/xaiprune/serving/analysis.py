"""What ``07_distributed.ipynb`` reads off its runs: tables, the estimate against the oracle, bounds and its metrics.

Every function takes the logs of a run (``requests.jsonl`` as a DataFrame, one row per answered request) or the
summaries :func:`xaiprune.serving.summarise` makes of them, and computes; the figures are in
:mod:`xaiprune.serving.plots`, the runs in :mod:`xaiprune.serving.runs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from xaiprune.planning import system
from xaiprune.planning.estimation import LinkEstimator

FORMATS = {**{k: "{:.3f}" for k in ("acc", "bal_acc", "auc", "ACC", "balanced ACC", "AUC", "ACC where pruned",
                                     "balanced ACC where pruned", "AUC where pruned", "modelled energy (J)")},
           "p50_ms": "{:.1f}", "p95_ms": "{:.1f}", "mean_ms": "{:.1f}", "predicted_ms": "{:.1f}",
           "deadline_hit_rate": "{:.1%}", "bytes_per_inference": "{:,.0f}", "bytes_saved_by_pruning": "{:.1%}",
           "mean_pruning": "{:.2f}", "latency_error": "{:+.1%}", "throughput_rps": "{:.1f}",
           "mean |expected - predicted| (ms)": "{:.1f}"}
SERVED = ["acc", "bal_acc", "auc", "p50_ms", "p95_ms", "deadline_hit_rate", "bytes_per_inference", "bytes_saved_by_pruning",
          "energy_j", "mean_pruning", "distinct_plans", "duplicated", "received_twice"]
STRESS = ["acc", "bal_acc", "auc", "p50_ms", "p95_ms", "deadline_hit_rate", "bytes_per_inference", "bytes_saved_by_pruning",
          "mean_pruning", "distinct_plans", "latency_error"]
REPLAY = {"acc": "ACC", "bal_acc": "balanced ACC", "auc": "AUC", "acc_pruned": "ACC where pruned",
          "bal_acc_pruned": "balanced ACC where pruned", "auc_pruned": "AUC where pruned",
          "requests": "requests", "pruned_requests": "requests pruned", "distinct_plans": "level vectors"}
LOAD = ["throughput_rps", "p50_ms", "p95_ms", "mean_ms", "predicted_ms", "distinct_plans"]
FAULT = ["device", "simulated", "requests", "answered_once", "failed", "lost", "duplicated", "wrong_answers",
         "received_twice", "replanned", "triggered", "recovery_s", "failure_reasons"]


def styled(frame: pd.DataFrame, caption: str | None = None):
    """``frame`` with the notebook's number formats for the columns it has (a pandas Styler)."""
    style = frame.style.format({c: f for c, f in FORMATS.items() if c in frame.columns})
    return style.set_caption(caption) if caption else style


def served_table(summary: pd.DataFrame):
    """The served policies' table (energy modelled, named so)."""
    return styled(summary[SERVED].rename(columns={"energy_j": "modelled energy (J)"}))


def energy_table(summary: pd.DataFrame):
    """Each policy's modelled energy per request, split over the devices."""
    cols = [c for c in summary.columns if c.startswith("energy_j.")]
    return summary[cols].rename(columns=lambda c: c.split(".", 1)[1]).style.format("{:.3f}").set_caption(
        "modelled (not measured) J per request, per device")


def label(criterion: str) -> str:
    """How a criterion is named in the tables: LRP, L1, Taylor."""
    return "LRP" if criterion == "lrp" else criterion.upper() if criterion == "l1" else criterion.capitalize()


def replay_view(r: dict):
    """One replay (:func:`xaiprune.serving.runs.replay_served`): a sentence on its check, and its table."""
    own = r["criterion"]
    sentence = (f"{r['plans_of']}: {r['requests']} requests, {r['built']} pruned models built in {r['seconds']:.1f} s; "
                f"replaying {label(own)} gives back the served logits to {r['max_difference']:.2g} (largest |difference|)")
    table = r["table"].rename(index=lambda c: f"{label(c)} ({'served' if c == own else 'replayed'})")
    return sentence, styled(table[list(REPLAY)].rename(columns=REPLAY),
                            f"{r['ward']}: the plans {r['plans_of']} served, with each criterion's filters")


def latency_gaps(requests: pd.DataFrame, summary: pd.DataFrame, ward: system.Scenario,
                 profiles: system.Profiles) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """Where measured latency exceeds the prediction, per policy; and per segment for the worst-predicted policy.

    First table: mean ms per request of segments computed slower than their emulated device (measured compute
    minus FLOPs / device speed, clipped at 0) and of messaging overhead (latency minus every segment's compute
    and every hop's send). Second: emulated and measured ms of each segment, its device and its unpruned
    weights (MB), for the policy whose mean latency exceeds its prediction most (named second).
    """
    per_segment, slow = [], {}
    for name, g in requests.groupby("policy", sort=False):
        compute = np.array(g["compute_ms"].tolist())
        speeds = np.array([[ward.devices[ward.index(d)].speed for d in devs] for devs in g["devices"]])
        emulated = np.array(g["flops"].tolist(), dtype=float) / speeds * 1e3
        per_segment.append(pd.DataFrame({"policy": name, "segment": profiles.segments, "device": g["devices"].iloc[0],
                                         "emulated ms": emulated.mean(0), "measured ms": compute.mean(0)}))
        slow[name] = float((compute.sum(1) - emulated.sum(1)).clip(min=0).mean())
    parts = requests.assign(parts=[sum(c) + sum(lk) for c, lk in zip(requests["compute_ms"], requests["link_ms"])])
    overhead = summary["mean_ms"] - parts.groupby("policy", sort=False)["parts"].mean()
    gaps = pd.DataFrame({"segments slower than emulated (ms)": pd.Series(slow), "messaging overhead (ms)": overhead})
    name, worst = summary["latency_error"].idxmax(), pd.concat(per_segment)
    worst = worst[worst["policy"] == name].set_index("segment").drop(columns="policy")
    weights = pd.Series(profiles.weight_bytes[:, 0] / 1e6, index=profiles.segments, name="weights MB (unpruned)")
    return gaps.round(2), name, worst.join(weights).round(2)


def hops(devices: list[str], ward: system.Scenario) -> int:
    """Messages between two devices on a request's route (source, the plan's devices, back to the source)."""
    route = [ward.devices[ward.source].name, *devices, ward.devices[ward.source].name]
    return sum(a != b for a, b in zip(route, route[1:]))


def hop_overhead(requests: pd.DataFrame, ward: system.Scenario) -> dict:
    """The serving system's own cost per message between two devices, measured: what the planners' ``h`` should be.

    Per answered request (first attempts only) that crossed at least one link, the measured latency minus the
    model's prediction without the overhead (the prediction on the true links, less ``h`` x its hops), over its
    hops. Returns the median and 90th percentile (ms), the requests used and the ``h`` the ward declares.
    """
    g = requests[requests["attempts"] == 1]
    n_hops = np.array([hops(d, ward) for d in g["devices"]])
    declared = 1e3 * ward.hop_overhead
    per_hop = (g["latency_ms"].to_numpy() - g["predicted_latency_ms"].to_numpy() + declared * n_hops)[n_hops > 0] \
        / n_hops[n_hops > 0]
    if per_hop.size == 0:
        return {"requests": 0, "declared_ms": declared, "median_ms": None, "p90_ms": None}
    return {"requests": int(per_hop.size), "declared_ms": round(declared, 3),
            "median_ms": round(float(np.median(per_hop)), 3), "p90_ms": round(float(np.quantile(per_hop, 0.9)), 3)}


def describe_hop_overhead(h: dict) -> str:
    if not h["requests"]:
        return "no request crossed a link: the per-hop overhead was not measured"
    covered = "covers" if h["declared_ms"] >= h["median_ms"] else "does NOT cover"
    return (f"per message between two devices the system added {h['median_ms']:.2f} ms (median over {h['requests']} "
            f"requests; 90th percentile {h['p90_ms']:.2f}) beyond the link model; the ward declares "
            f"{h['declared_ms']:.2f} ms, which every planner adds per hop: it {covered} the median")


def contrast(runs: list, profiles: system.Profiles) -> str:
    """Markdown: the image's size, and per ward (a :class:`~xaiprune.serving.runs.Served`) its links, deadline, how
    often and how deep the optimum (XAI + NLP) pruned, and how often the unpruned placement met the deadline."""
    lines = [f"The image is {profiles.input_bytes / 1e3:.1f} kB."]
    for run in runs:
        bw = run.ward.bandwidth[np.isfinite(run.ward.bandwidth)] * 8 / 1e6
        nlp = run.requests[run.requests["policy"] == "XAI + NLP"]
        pruned = float(np.mean([np.mean(lv) > 0 for lv in nlp["levels"]]))
        links = f"{bw.min():.3g}" if np.isclose(bw.min(), bw.max()) else f"{bw.min():.3g} to {bw.max():.3g}"
        lines.append(f"- **{run.scenario}** ({run.ward.n} devices, links of {links} Mbit/s, "
                     f"deadline {run.ward.deadline * 1e3:.0f} ms): XAI + NLP pruned {pruned:.0%} of its requests (mean "
                     f"level {run.summary.loc['XAI + NLP', 'mean_pruning']:.2f}); the unpruned placement met the deadline "
                     f"for {run.summary.loc['no pruning', 'deadline_hit_rate']:.0%} of them.")
    return "\n".join(lines)


def missed(g: pd.DataFrame, col: str) -> pd.Series:
    """Whether each request's ``col`` (ms) exceeds its deadline."""
    return g[col] > g["deadline_ms"]


@dataclass
class Views:
    """The optimum planned on the estimate and on the trace (the oracle), request by request, on one ward."""

    ward: system.Scenario
    fade: np.ndarray             # the trace the run served
    est: pd.DataFrame            # the estimate-planned requests, indexed by request
    ora: pd.DataFrame            # the oracle-planned ones, the same requests
    table: pd.DataFrame          # misses, planning error and ACC of each
    caused: dict                 # requests; misses the estimate caused, measured and predicted


def compare_views(requests: pd.DataFrame, summary: pd.DataFrame, ward: system.Scenario, fade: np.ndarray,
                  est_name: str = "XAI + NLP", oracle_name: str = "XAI + NLP (oracle)") -> Views:
    """The estimate-planned and the oracle-planned optimum on the requests both answered, and the misses the estimate caused.

    The estimate *caused* a miss when its request missed the deadline and the oracle's request of the same index
    did not; counted on the measured latency and on the predicted one (the model on the true conditions).
    """
    est, ora = (requests[requests["policy"] == k].set_index("request").sort_index() for k in (est_name, oracle_name))
    both = est.index.intersection(ora.index)
    est, ora = est.loc[both], ora.loc[both]
    table = pd.DataFrame({
        "measured latency > deadline": [missed(est, "latency_ms").sum(), missed(ora, "latency_ms").sum()],
        "predicted latency > deadline": [missed(est, "predicted_latency_ms").sum(), missed(ora, "predicted_latency_ms").sum()],
        "mean |expected - predicted| (ms)": [(est["planned_latency_ms"] - est["predicted_latency_ms"]).abs().mean(),
                                             (ora["planned_latency_ms"] - ora["predicted_latency_ms"]).abs().mean()],
        "ACC": [summary.loc[est_name, "acc"], summary.loc[oracle_name, "acc"]]},
        index=["estimate (EWMA)", "oracle (trace)"])
    caused = {"requests": int(len(both)),
              "measured": int((missed(est, "latency_ms") & ~missed(ora, "latency_ms")).sum()),
              "predicted": int((missed(est, "predicted_latency_ms") & ~missed(ora, "predicted_latency_ms")).sum())}
    return Views(ward, fade, est, ora, table, caused)


def describe_views(name: str, caused: dict) -> str:
    n = max(caused["requests"], 1)
    return (f"{name}: over {caused['requests']} requests the estimate caused {caused['measured']} missed deadlines the "
            f"oracle met ({caused['measured'] / n:.1%}); on the predicted latency: {caused['predicted']} "
            f"({caused['predicted'] / n:.1%})")


def views_table(compared: dict[str, Views]):
    """Every ward's :attr:`Views.table`, one above the other."""
    return styled(pd.concat({name: v.table for name, v in compared.items()}))


def busiest_hop(g: pd.DataFrame, ward: system.Scenario) -> tuple[str, str] | None:
    """The link the requests of ``g`` crossed most (ties: the first in name order); None if none left the source."""
    src = ward.devices[ward.source].name
    hops = [(x, y) for devs in g["devices"] for x, y in zip([src, *devs], [*devs, src]) if x != y]
    return max(sorted(set(hops)), key=hops.count) if hops else None


def hop_multipliers(g: pd.DataFrame, a: str, b: str, ward: system.Scenario) -> tuple[list[int], list[float]]:
    """Requests (``g``'s index) whose route crossed ``a -> b``, and the bandwidth multiplier measured on that hop.

    The multiplier is bytes / (send time - link latency) / the nominal bandwidth, as the planner's estimate
    measures it; hops that sent nothing or took no time are skipped.
    """
    ia, ib, src = ward.index(a), ward.index(b), ward.devices[ward.source].name
    lat = 0.0 if ward.link_latency is None else float(ward.link_latency[ia, ib])
    at, m = [], []
    for t, devs, nbytes, ms in zip(g.index, g["devices"], g["link_bytes"], g["link_ms"]):
        route = [src, *devs, src]
        for h, hop in enumerate(zip(route, route[1:])):
            if hop == (a, b) and nbytes[h] > 0 and ms[h] > 0:
                at.append(t)
                m.append(nbytes[h] / max(ms[h] / 1e3 - lat, 1e-9) / ward.bandwidth[ia, ib])
    return at, m


def estimate_trajectory(g: pd.DataFrame, ward: system.Scenario, a: str, b: str, alpha: float) -> pd.Series:
    """The planner's estimate of link ``a -> b`` (bytes/s) after each answered request of ``g``, in the order the
    answers arrived: its :class:`~xaiprune.planning.estimation.LinkEstimator` fed every measured hop, as 07's planner
    is (from the nominal prior)."""
    est, src = LinkEstimator(ward, alpha), ward.devices[ward.source].name
    ia, ib, out = ward.index(a), ward.index(b), {}
    for t, row in g.sort_values("answered_s").iterrows():
        route = [ward.index(d) for d in [src, *row["devices"], src]]
        est.observe_route(route, row["link_bytes"], [ms / 1e3 for ms in row["link_ms"]])
        out[t] = est.m[ia, ib] * ward.bandwidth[ia, ib]
    return pd.Series(out, name=f"{a} -> {b} (bytes/s)")


def busy_per_device(alone: pd.DataFrame, ward: system.Scenario) -> pd.DataFrame:
    """ms each device is busy per request (its segments' compute and the hops it sends; hop h sent by segment h-1's device)."""
    src = ward.devices[ward.source].name
    busy = pd.DataFrame(0.0, index=alone.index, columns=[d.name for d in ward.devices])
    for i, devs, comp, link in zip(alone.index, alone["devices"], alone["compute_ms"], alone["link_ms"]):
        for d, c in zip(devs, comp):
            busy.loc[i, d] += c
        for d, lk in zip([src, *devs], link):
            busy.loc[i, d] += lk
    return busy


def pipelining(load: pd.DataFrame, summary: pd.DataFrame, ward: system.Scenario, window: int) -> dict:
    """Throughput of ``window`` requests in flight against one, and the bound the busiest device sets.

    With device j busy b_j s per request (measured with one request in flight), throughput is at most 1/max_j b_j,
    so the gain over window 1 is at most that over window 1's throughput (``bound``).
    """
    table = summary.loc[["window 1", f"window {window}"], LOAD]
    x1, xw = table.loc["window 1", "throughput_rps"], table.loc[f"window {window}", "throughput_rps"]
    alone = load[load["policy"] == "window 1"]
    busy = busy_per_device(alone, ward).mean()
    return {"table": table, "speedup": float(xw / x1), "busiest": busy.idxmax(), "busy_ms": float(busy.max()),
            "bound": float(1e3 / busy.max() / x1), "alone_ms": float(alone["latency_ms"].mean()), "x1": float(x1),
            "xw": float(xw), "window": window}


def describe_pipelining(p: dict) -> str:
    return (f"{p['busiest']} is busy {p['busy_ms']:.1f} ms per request (a request alone takes {p['alone_ms']:.1f} ms): "
            f"at most {1e3 / p['busy_ms']:.1f} requests/s, so pipelining can gain at most {p['bound']:.2f}x with these "
            f"plans.\nwindow {p['window']}: {p['speedup']:.2f}x the throughput of window 1 ({p['xw']:.1f} against "
            f"{p['x1']:.1f} requests/s)")
