"""07's verdict: each fault's outcome, the ``metrics.json`` of the notebook, its checks and its summary sentences.

The claims' evidence is computed in :mod:`xaiprune.serving.evidence`; the notebook writes the claim rows and
:func:`verdict` prints them beside the checks of the fault injection. The report reads ``policies`` and ``stress``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune.serving import sockets
from xaiprune.serving.analysis import Views, label
from xaiprune.serving.records import fault_outcome
from xaiprune.serving.runs import Served

ENERGY = ("modelled, not measured: scenario J/FLOP x FLOPs run + radio W x send time (the emulated wait plus the real "
          "transfer; energy_j keys)")


SIMULATED = ("rejoin",)  # acted out by flags: the device goes dark and forgets its segments, its process never restarts


def fault_rows(load: Served, answers: dict[str, dict] | None = None) -> dict[str, dict]:
    """Kind -> :func:`~xaiprune.serving.records.fault_outcome` of every fault of the load-and-faults run, with
    ``simulated`` (a kind in :data:`SIMULATED`, or one the run could only act out by a flag: a partition whose
    connection could not be closed) and, given ``answers`` (:func:`~xaiprune.serving.runs.wrong_answers` of
    the run), ``wrong_answers`` and ``max_logit_difference`` of the fault's policy."""
    ledger = {s["policy"]: s for s in load.outcome.summary["policies"]}
    rows = {}
    for f in load.faults:
        checked = (answers or {}).get(f["policy"], {})
        rows[f["kind"]] = {**fault_outcome(ledger[f["policy"]], load.requests, load.outcome.events, f),
                           "simulated": f["kind"] in SIMULATED + tuple(load.outcome.summary.get("simulated_faults", [])),
                           **{k: checked[k] for k in ("wrong_answers", "max_logit_difference") if k in checked}}
    return rows


def fault_table(rows: dict[str, dict], path) -> pd.DataFrame:
    """:func:`fault_rows` as a table, one row per fault kind, written to ``path`` (csv)."""
    table = pd.DataFrame(rows).T
    table.to_csv(path)
    return table


def tidy(row) -> dict:
    """A summary row as JSON values: floats rounded to 4 digits, integers as int, the rest as is."""
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else int(v)
                if isinstance(v, (int, np.integer)) else v) for k, v in row.items()}


def finite(row: dict) -> dict:
    """``row`` with NaN and infinite floats as None."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()}


def _replayed(replayed: dict[str, dict]) -> dict:
    return {ward: {f"{label(c)} + {r['plans_of'].split(' + ', 1)[1]}":
                   {"plans_of": r["plans_of"], "criterion": c, **finite(tidy(row)),
                    "max_abs_logit_difference": float(r["max_difference"])}
                   for c, row in r["table"].astype(object).iterrows() if c != r["criterion"]}
            for ward, r in replayed.items()}


def listened(*served: Served | None) -> dict:
    """Every address any process of these runs listened on (``address:port``; the launcher reads them off ``/proc``),
    the distinct addresses, and whether all are loopback (None where nothing could be read)."""
    seen = sorted({a for run in served if run is not None for a in run.outcome.summary.get("listen_addresses", [])})
    hosts = sorted({a.rsplit(":", 1)[0] for a in seen})  # none seen: no /proc to read here (not Linux)
    return {"listen_addresses": seen, "hosts": hosts,
            "loopback_only": all(map(sockets.is_loopback, seen)) if seen else None}


def shield(requests: pd.DataFrame, policy: str = "XAI + RL") -> dict:
    """How often the shield replaced ``policy``'s plan (its requests ``planned_by`` "shield: <reason>"), why, and the
    median decision time (ms) of the requests it replaced against those it let through."""
    g = requests[requests["policy"] == policy]
    fired = g["planned_by"].str.startswith("shield")
    reasons = g.loc[fired, "planned_by"].str.removeprefix("shield: ").value_counts()
    return {"policy": policy, "requests": int(len(g)), "fired": int(fired.sum()),
            "fired_share": round(float(fired.mean()), 4) if len(g) else 0.0,
            "reasons": {k: int(v) for k, v in reasons.items()},
            "decision_ms_p50_fired": round(float(g.loc[fired, "decision_ms"].median()), 3) if fired.any() else None,
            "decision_ms_p50_passed": round(float(g.loc[~fired, "decision_ms"].median()), 3) if (~fired).any() else None}


def premise(summary: pd.DataFrame, share: float = 0.5) -> dict:
    """The premise of the papers on this ward: the whole model on one device meets at most ``share`` of the deadlines."""
    hit = float(summary.loc["one device", "deadline_hit_rate"])
    return {"one_device_deadline_hit_rate": round(hit, 4), "at_most": share, "holds": bool(hit <= share)}


def metrics(values: dict, arch: str, ward: Served, stress: Served | None, replayed: dict[str, dict],
            compared: dict[str, Views], pipe: dict, faults: dict[str, dict], hop: dict | None = None,
            listen: dict | None = None) -> dict:
    """The notebook's ``metrics.json``.

    ``replayed``: ward -> :func:`~xaiprune.serving.runs.replay_served` (the served plans of an XAI policy with each
    baseline's filters, computed offline: no latency of their own, not policies; ``max_abs_logit_difference`` is
    the served criterion replayed on the same plans against the logits the system returned); ``compared``: ward ->
    :class:`~xaiprune.serving.analysis.Views`; ``pipe``: :func:`~xaiprune.serving.analysis.pipelining`;
    ``faults``: :func:`fault_rows`; ``hop``: :func:`xaiprune.serving.analysis.hop_overhead` of the ward's run;
    ``listen``: :func:`listened` of every run of the notebook.
    """
    summary, window = ward.summary, values["window"]
    return {
        "arch": arch, "scenario": values["scenario"], "requests_per_policy": int(ward.n), "emulated": values["emulate"],
        "policy_order": ward.order, "energy": ENERGY,
        "policies": {name: tidy(row) for name, row in summary.iterrows()},
        "replayed": _replayed(replayed), "shield": shield(ward.requests), "premise": premise(summary),
        "serving": {"hop_overhead_ms": hop, **(listen or {})},
        "stress": None if stress is None else {"scenario": values["stress_scenario"], "requests_per_policy": int(stress.n),
                                               "policy_order": list(stress.summary.index),
                                               "policies": {name: tidy(row) for name, row in stress.summary.iterrows()}},
        "estimator": {"rule": f"EWMA of measured bytes/s per link, weight {values['ewma']} on the newest, prior: the "
                              "scenario's nominal bandwidth",
                      **{name: {"requests": v.caused["requests"], "missed_deadline_estimate": int(v.table.iloc[0, 0]),
                                "missed_deadline_oracle": int(v.table.iloc[1, 0]), "caused_by_estimate": v.caused["measured"],
                                "caused_by_estimate_predicted": v.caused["predicted"]} for name, v in compared.items()}},
        "throughput_rps": {"window_1": float(pipe["table"].loc["window 1", "throughput_rps"]),
                           f"window_{window}": float(pipe["table"].loc[f"window {window}", "throughput_rps"])},
        "throughput": {"window": window, "requests": values["fault_requests"], "speedup": float(pipe["speedup"]),
                       "busiest_device": pipe["busiest"], "speedup_bound": float(pipe["bound"]),
                       "rows": {name: tidy(row) for name, row in pipe["table"].iterrows()}},
        "faults": {kind: {k: (v if not isinstance(v, (float, np.floating)) else round(float(v), 4)) for k, v in row.items()}
                   for kind, row in faults.items()},
    }


def checks(faults: dict[str, dict], listen: dict | None = None) -> dict[str, bool]:
    """What the fault injection must show for its evidence to count (a sentence each, and whether this run shows it),
    and, given ``listen`` (:func:`listened`), that every process listened on loopback only."""
    safe = {} if listen is None or listen["loopback_only"] is None else \
        {"every process of every run listened on loopback only": listen["loopback_only"]}
    return {**safe, **{f"{kind}: every request answered once or failed with a reason":
               row["answered_once"] + row["failed"] == row["requests"] for kind, row in faults.items()},
            **{f"{kind}: the fault acted and the source saw it": bool(row["triggered"]) for kind, row in faults.items()},
            **{f"{kind}: every answer equals the single-process reference": row["wrong_answers"] == 0
               for kind, row in faults.items() if "wrong_answers" in row},
            "rejoin: the device came back and was planned on again": bool(faults.get("rejoin", {}).get("used_again"))}


def _replayed_accs(r: dict, prefix: str = "") -> str:
    return ", ".join(f"{label(c)} {prefix}{row['acc']:.3f}" for c, row in r["table"].iterrows() if c != r["criterion"])


def _three(row) -> str:
    return " / ".join(f"{row[k]:.3f}" for k in ("acc", "bal_acc", "auc"))


def sentences(ward: Served, stress: Served | None, replayed: dict[str, dict]) -> list[str]:
    """The verdict's findings: accuracy, deadlines and bytes of the main policies, and the stress ward's."""
    s = ward.summary
    nlp, rl, base = s.loc["XAI + NLP"], s.loc["XAI + RL"], s.loc["no pruning"]
    out = [f"ACC / balanced ACC / AUC: XAI + NLP {_three(nlp)}, XAI + RL {_three(rl)}, no pruning {_three(base)}; ACC on "
           f"XAI + RL's plans (replayed): {_replayed_accs(replayed[ward.scenario])}",
           f"deadline hit rate: XAI + NLP {nlp['deadline_hit_rate']:.1%}, XAI + RL {rl['deadline_hit_rate']:.1%}, "
           f"no pruning {base['deadline_hit_rate']:.1%}, one device {s.loc['one device', 'deadline_hit_rate']:.1%}",
           f"bytes per inference: no pruning {base['bytes_per_inference']:,.0f}, XAI + NLP {nlp['bytes_per_inference']:,.0f} "
           f"(pruning saved {nlp['bytes_saved_by_pruning']:.1%} on its routes), XAI + RL {rl['bytes_per_inference']:,.0f} "
           f"(saved {rl['bytes_saved_by_pruning']:.1%})"]
    sh, pr = shield(ward.requests), premise(s)
    out.append(f"the premise on {ward.scenario}: the whole model on the source met {pr['one_device_deadline_hit_rate']:.1%} of "
               f"the deadlines ({'at most' if pr['holds'] else 'MORE than'} {pr['at_most']:.0%}: the premise "
               f"{'holds' if pr['holds'] else 'does NOT hold'}); the shield replaced XAI + RL's plan on {sh['fired']} of "
               f"{sh['requests']} requests ({sh['fired_share']:.1%}; {sh['reasons'] or 'never'})")
    if stress is not None:
        sx = stress.summary.loc["XAI + NLP"]
        out.append(f"{stress.scenario}: XAI + NLP ACC / balanced ACC / AUC {_three(sx)} with deadline met for {sx['deadline_hit_rate']:.1%} "
                   f"(unpruned placement: {stress.summary.loc['no pruning', 'deadline_hit_rate']:.1%}; the whole model on "
                   f"the source: {stress.summary.loc['one device', 'deadline_hit_rate']:.1%}); pruning saved "
                   f"{sx['bytes_saved_by_pruning']:.1%} of its bytes; on the same plans (replayed): "
                   f"{_replayed_accs(replayed[stress.scenario], 'ACC ')}")
    return out


def verdict(claims: list[dict], faults: dict[str, dict], listen: dict | None = None) -> list[str]:
    """Each claim row's verdict against its declared target, then each check of :func:`checks`, ``ok`` or ``FAILED``."""
    lines = [f"{r['verdict'].upper()}: {r['id']} (target: {r['target']})\n    {r['evidence']}" for r in claims]
    return lines + [f"{'ok    ' if ok else 'FAILED'}  {name}" for name, ok in checks(faults, listen).items()]
