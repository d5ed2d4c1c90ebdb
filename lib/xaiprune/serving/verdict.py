"""07's verdict: each fault's outcome, the ``metrics.json`` of the notebook, its checks and its summary sentences.

The claims' evidence is computed in :mod:`xaiprune.serving.evidence`; the notebook writes the claim rows and
:func:`verdict` prints them beside the checks of the fault injection. The report reads ``policies`` and ``stress``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaiprune.serving.analysis import Views, label
from xaiprune.serving.records import fault_outcome
from xaiprune.serving.runs import Served

ENERGY = "modelled, not measured: scenario J/FLOP x FLOPs run + radio W x emulated send time (energy_j keys)"


def fault_rows(load: Served) -> dict[str, dict]:
    """Kind -> :func:`~xaiprune.serving.records.fault_outcome` of every fault of the load-and-faults run."""
    ledger = {s["policy"]: s for s in load.outcome.summary["policies"]}
    return {f["kind"]: fault_outcome(ledger[f["policy"]], load.requests, load.outcome.events, f) for f in load.faults}


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


def metrics(values: dict, arch: str, ward: Served, stress: Served | None, replayed: dict[str, dict],
            compared: dict[str, Views], pipe: dict, faults: dict[str, dict]) -> dict:
    """The notebook's ``metrics.json``.

    ``replayed``: ward -> :func:`~xaiprune.serving.runs.replay_served` (the served plans of an XAI policy with each
    baseline's filters, computed offline: no latency of their own, not policies; ``max_abs_logit_difference`` is
    the served criterion replayed on the same plans against the logits the system returned); ``compared``: ward ->
    :class:`~xaiprune.serving.analysis.Views`; ``pipe``: :func:`~xaiprune.serving.analysis.pipelining`;
    ``faults``: :func:`fault_rows`.
    """
    summary, window = ward.summary, values["window"]
    return {
        "arch": arch, "scenario": values["scenario"], "requests_per_policy": int(ward.n), "emulated": values["emulate"],
        "policy_order": ward.order, "energy": ENERGY,
        "policies": {name: tidy(row) for name, row in summary.iterrows()},
        "replayed": _replayed(replayed),
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


def checks(faults: dict[str, dict]) -> dict[str, bool]:
    """What the fault injection must show for its evidence to count (a sentence each, and whether this run shows it)."""
    return {**{f"{kind}: every request answered once or failed with a reason":
               row["answered_once"] + row["failed"] == row["requests"] for kind, row in faults.items()},
            **{f"{kind}: the fault acted and the source saw it": bool(row["triggered"]) for kind, row in faults.items()},
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
    if stress is not None:
        sx = stress.summary.loc["XAI + NLP"]
        out.append(f"{stress.scenario}: XAI + NLP ACC / balanced ACC / AUC {_three(sx)} with deadline met for {sx['deadline_hit_rate']:.1%} "
                   f"(unpruned placement: {stress.summary.loc['no pruning', 'deadline_hit_rate']:.1%}); pruning saved "
                   f"{sx['bytes_saved_by_pruning']:.1%} of its bytes; on the same plans (replayed): "
                   f"{_replayed_accs(replayed[stress.scenario], 'ACC ')}")
    return out


def verdict(claims: list[dict], faults: dict[str, dict]) -> list[str]:
    """Each claim row's verdict against its declared target, then each check of :func:`checks`, ``ok`` or ``FAILED``."""
    lines = [f"{r['verdict'].upper()}: {r['id']} (target: {r['target']})\n    {r['evidence']}" for r in claims]
    return lines + [f"{'ok    ' if ok else 'FAILED'}  {name}" for name, ok in checks(faults).items()]
