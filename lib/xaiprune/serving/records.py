"""The per-request record, the ledger of every request's fate, and the per-policy summary table.

``requests.jsonl`` has one line per answered request: plan, prediction, logits, measured latency (from
the first send of the request to its answer, so a re-planned request carries its detection and
re-planning time; ``attempt_latency_ms`` is that of the last attempt alone) and predicted latency,
per-segment and per-link times and bytes, energy per device (**modelled, not measured**: the scenario's
J/FLOP times the FLOPs run, and radio power times the measured send time: the emulated wait plus the real
transfer), and ``answers``: the well-formed results received for its request id until the end of the run, used
or not.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from xaiprune import stats
from xaiprune.planning import system
from xaiprune.serving import wire


def request_row(scenario: system.Scenario, profiles: system.Profiles, order: list[int], policy: dict, request: int,
                attempts: int, plan: system.Plan, how: str, decision_s: float, prepare_s: float,
                conditions: system.Scenario, out: wire.Message, measured: tuple[float, float],
                test_index: int, label: int, truth: system.Scenario | None = None,
                times: tuple[float, float] = (0.0, 0.0)) -> dict:
    """One line of ``requests.jsonl`` for an accepted answer ``out`` (a RESULT carrying the logits).

    ``measured`` is (seconds since the first send of the request, seconds of its last attempt);
    ``conditions`` the ward as the planner saw it when it chose the plan (``planned_latency_ms``);
    ``truth`` the ward as the emulated links really were (default ``conditions``), on which the latency
    is predicted (``predicted_latency_ms``); ``times`` (first send, answer) in seconds since the policy began.
    """
    S = profiles.S
    truth = conditions if truth is None else truth
    predicted = system.evaluate(plan, truth, profiles)
    planned = system.evaluate(plan, conditions, profiles)
    ranks = [order.index(j) for j in plan.devices]
    energy = np.zeros(scenario.n)
    for s, r in enumerate(ranks):
        d = order[r]
        energy[d] += scenario.devices[d].energy_per_flop * out.flops[s]
    senders = [0] + ranks  # hop h is sent by the device of segment h-1 (the source for h = 0)
    for h in range(S + 1):
        if out.link_bytes[h]:
            d = order[senders[h]]
            energy[d] += scenario.devices[d].radio_power * out.link_us[h] / 1e6
    logits = out.payload.reshape(-1)
    return {"policy": policy["name"], "criterion": policy.get("criterion", "lrp"), "request": request,
            "test_index": int(test_index), "label": int(label), "prediction": int(logits.argmax()),
            "logits": [float(v) for v in logits], "attempts": attempts, "planned_by": how,
            "plan": plan.describe(scenario, profiles), "devices": [scenario.devices[j].name for j in plan.devices],
            "levels": [profiles.levels[lv] for lv in plan.levels],
            "latency_ms": measured[0] * 1e3, "attempt_latency_ms": measured[1] * 1e3,
            "predicted_latency_ms": predicted.latency * 1e3, "planned_latency_ms": planned.latency * 1e3,
            "sent_s": times[0], "answered_s": times[1],
            "deadline_ms": conditions.deadline * 1e3, "predicted_violations": predicted.violations,
            "surrogate_accuracy": predicted.accuracy,
            "compute_ms": [c / 1e3 for c in out.compute_us[:S]], "flops": out.flops[:S],
            "link_ms": [c / 1e3 for c in out.link_us[:S + 1]], "link_bytes": out.link_bytes[:S + 1],
            "bytes": int(sum(out.link_bytes[:S + 1])), "energy_j": dict(zip([d.name for d in scenario.devices],
                                                                            energy.tolist())),
            "predicted_energy_j": float(predicted.energy.sum()), "decision_ms": decision_s * 1e3,
            "prepare_ms": prepare_s * 1e3}


class Ledger:
    """What became of every request of every policy (indexed by position in the config's ``policies``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[tuple[int, dict]] = []           # (policy index, row) of every accepted answer
        self.answers: Counter = Counter()                 # (policy index, request) -> well-formed results received
        self.accepted: Counter = Counter()                # (policy index, request) -> answers accepted (used)
        self.answered: dict[int, set[int]] = {}           # policy index -> requests whose answer was accepted
        self.failed: dict[int, dict[int, str]] = {}       # policy index -> {request: why it was given up}

    def open(self, p: int) -> None:
        """Start counting policy ``p``."""
        self.answered.setdefault(p, set())
        self.failed.setdefault(p, {})

    def received(self, p: int, request: int) -> None:
        """A result for this request id arrived (counted whether it is used or discarded)."""
        self.answers[(p, request)] += 1

    def accept(self, p: int, row: dict) -> None:
        self.rows.append((p, row))
        self.accepted[(p, row["request"])] += 1
        self.answered[p].add(row["request"])

    def fail(self, p: int, request: int, reason: str) -> None:
        self.failed[p][request] = reason

    def summary(self, p: int, name: str, n: int, dead: list[str]) -> dict:
        """One policy's counts over its ``n`` requests.

        ``answered``: an answer accepted; ``answered_once``: exactly one; ``failed``: given up after
        ``max_attempts`` with a reason (``failures``; also in events.jsonl); ``lost``: neither (must be 0);
        ``duplicated``: requests answered (an answer accepted) more than once (must be 0);
        ``received_twice``: requests the source received more than one result for (``answers`` > 1: a
        late answer of an abandoned attempt, or a repeat), the extra ones discarded; ``late_discarded``:
        results received but not used.
        """
        answered, failed = self.answered.get(p, set()), self.failed.get(p, {})
        counts = [self.answers[(p, t)] for t in range(n)]
        accepted = [self.accepted[(p, t)] for t in range(n)]
        return {"policy": name, "requests": n, "answered": len(answered),
                "answered_once": sum(a == 1 for a in accepted), "failed": len(failed),
                "lost": n - len(answered) - len(set(failed) - answered), "duplicated": sum(a > 1 for a in accepted),
                "received_twice": sum(c > 1 for c in counts), "late_discarded": sum(counts) - sum(accepted),
                "failures": {str(t): why for t, why in sorted(failed.items())}, "dead": dead}

    def write(self) -> None:
        """(Re)write ``requests.jsonl`` with every accepted answer so far and its request's current ``answers``."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for p, row in self.rows:
                f.write(json.dumps({**row, "answers": self.answers[(p, row["request"])]}) + "\n")
        tmp.replace(self.path)


def fault_outcome(summary: dict, requests, events, fault: dict) -> dict:
    """What one fault did to its policy's requests (one row of 07's fault table; ``metrics.json``).

    ``requests``/``events``: the run's logs (pandas); ``summary``: the policy's :meth:`Ledger.summary`;
    ``fault``: its entry of the config. ``answered_once``, ``failed`` (each with its reason in
    ``failure_reasons``), ``lost`` and ``duplicated`` (answered more than once) come from the ledger, which
    counts answers per request id at the source. ``triggered``: the run shows the fault (an event about it,
    or a repeat received; for a hang, a missed hop deadline, or attempts timed out or segments never built
    when the hung rank still owed a READY, which spares it the hop deadline). ``recovery_s``: the longest time
    from the first send of a request the fault
    caught (one sent again) to its answer: the fault cannot have acted before that send, so this bounds the
    time from the fault to the first answer after it (wall clock, emulated devices and links); 0 when no
    request had to be sent again.
    """
    name, kind, device = fault["policy"], fault.get("kind", "kill"), fault["device"]
    r = requests[requests["policy"] == name] if len(requests) else requests
    e = events[events["policy"] == name] if len(events) else events
    shown = {"kill": ("device dead",), "hang": ("missed hop deadline",), "straggler": ("missed hop deadline",),
             "partition": ("link cut",), "rejoin": ("device dead", "missed hop deadline"),
             "bad_header": ("malformed message", "worker error"), "bad_shape": ("rejected", "worker error")}
    triggered = summary["received_twice"] > 0 if kind == "duplicate" else \
        bool(len(e)) and bool(e["event"].isin(shown[kind]).any())
    if kind == "hang" and not triggered and len(e) and "reason" in e:  # a hung rank with a PREPARE pending is
        reasons = e.loc[e["event"] == "re-planned", "reason"].astype(str)  # spared the hop deadline (it may be
        triggered = bool(reasons.str.contains("timed out|did not build their segments in time").any())  # building)
    caught = r[r["attempts"] > 1] if len(r) else r
    out = {"kind": kind, "device": device, "at_request": fault.get("request"), "at_s": fault.get("at_s"),
           "requests": summary["requests"],
           "answered_once": summary["answered_once"], "failed": summary["failed"],
           "failure_reasons": sorted(set(summary["failures"].values())), "lost": summary["lost"],
           "duplicated": summary["duplicated"], "received_twice": summary["received_twice"],
           "replanned": int(len(caught)), "triggered": triggered,
           "recovery_s": float(caught["latency_ms"].max() / 1e3) if len(caught) else 0.0}
    if kind == "rejoin":
        back = e[e["event"] == "device rejoined"] if len(e) else e
        back = back[back["device"] == device] if len(back) else back
        out["rejoined"] = bool(len(back))
        out["used_again"] = bool(len(back)) and any(device in d for d in r[r["sent_s"] > back["t_s"].iloc[0]]["devices"])
    return out


def unpruned_bytes(link_bytes: list[int], profiles: system.Profiles) -> int:
    """Bytes the same route would send with nothing pruned: the level-0 tensor on every hop that was used."""
    level0 = [profiles.input_bytes] + list(profiles.out_bytes[:, 0])
    return int(sum(level0[h] for h, b in enumerate(link_bytes) if b > 0))


def _saved(g, profiles: system.Profiles) -> float:
    """1 - bytes sent / bytes the same routes send unpruned; 0 when nothing crossed a link."""
    unpruned = sum(unpruned_bytes(b, profiles) for b in g["link_bytes"])
    return float(1 - g["bytes"].sum() / unpruned) if unpruned else 0.0


def _throughput(g) -> float:
    span = g["answered_s"].max() - g["sent_s"].min()
    return float(len(g) / span) if span > 0 else float("nan")


def summarise(requests, flag: str, order: list[str] | None = None, profiles: system.Profiles | None = None):
    """One row per policy from ``requests.jsonl``: accuracy, latency, deadline hits, bytes and energy.

    ACC and AUC use MedMNIST's metric functions on the softmax of the logits the system returned;
    ``latency_error`` is mean measured / mean predicted latency - 1; energies are J per request,
    **modelled** (scenario J/FLOP x FLOPs run, radio W x measured send time), not measured;
    ``duplicated`` is the number of requests answered more than once (must be 0), ``received_twice`` of
    those the source received more than one result for (``answers`` > 1, the extra one discarded),
    ``replanned`` of those sent more than once; ``throughput_rps`` answers per second from the first
    send to the last answer. With
    ``profiles``, ``bytes_saved_by_pruning`` is 1 - bytes sent / bytes the same routes would send
    unpruned (:func:`unpruned_bytes`): the effect of pruning alone, placement held equal.
    Used by ``07_distributed.ipynb``.
    """
    import pandas as pd
    from medmnist import INFO

    task = INFO[flag]["task"]
    rows = []
    for name, g in requests.groupby("policy", sort=False):
        scores = torch.softmax(torch.tensor(g["logits"].tolist()), dim=1).numpy()
        y = g["label"].to_numpy()[:, None]
        energy = pd.DataFrame(g["energy_j"].tolist())
        rows.append({"policy": name, "criterion": g["criterion"].iloc[0], "requests": len(g),
                     **stats.endpoints(y, scores, task),
                     "p50_ms": float(g["latency_ms"].median()), "p95_ms": float(g["latency_ms"].quantile(0.95)),
                     "mean_ms": float(g["latency_ms"].mean()), "predicted_ms": float(g["predicted_latency_ms"].mean()),
                     "latency_error": float(g["latency_ms"].mean() / g["predicted_latency_ms"].mean() - 1),
                     "deadline_hit_rate": float((g["latency_ms"] <= g["deadline_ms"]).mean()),
                     "bytes_per_inference": float(g["bytes"].mean()),
                     **({"bytes_saved_by_pruning": _saved(g, profiles)} if profiles is not None else {}),
                     "mean_pruning": float(np.mean([np.mean(lv) for lv in g["levels"]])),
                     "distinct_plans": int(g["plan"].nunique()), "replanned": int((g["attempts"] > 1).sum()),
                     "duplicated": int(g["request"].duplicated().sum()) if "request" in g else 0,
                     "received_twice": int((g["answers"] > 1).sum()),
                     **({"throughput_rps": _throughput(g)} if "answered_s" in g else {}),
                     "energy_j": float(energy.sum(axis=1).mean()),
                     **{f"energy_j.{k}": float(v) for k, v in energy.mean().items()}})
    out = pd.DataFrame(rows).set_index("policy")
    return out.loc[order] if order else out
