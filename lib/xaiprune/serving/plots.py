"""The figures of ``07_distributed.ipynb``, drawn from the runs of :mod:`xaiprune.serving.runs`.

Each function draws one figure with matplotlib (imported here, never by the serving processes) and shows it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from xaiprune.serving.analysis import Views, busiest_hop, hop_multipliers
from xaiprune.serving.runs import Served

MARKS = {"device dead": "C3", "missed hop deadline": "C1", "device excluded": "C4", "link cut": "C2",
         "device rejoined": "C0", "malformed message": "C5", "worker error": "C5", "rejected": "C5"}


def served(run: Served) -> None:
    """Measured latency per policy against the deadline, the ACC of the served labels, kB over links per inference."""
    requests, summary, order = run.requests, run.summary, run.order
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    sns.boxplot(data=requests, y="policy", x="latency_ms", order=order, ax=axes[0], fliersize=1)
    axes[0].axvline(run.ward.deadline * 1e3, color="C3", ls="--", label="deadline")
    axes[0].legend()
    axes[0].set_xlabel("measured latency (ms)")
    axes[1].barh(order, summary["acc"], color="C0")
    axes[1].set_xlim(0.0, 1.0)
    axes[1].set_xlabel("test ACC of the served labels")
    axes[2].barh(order, summary["bytes_per_inference"] / 1e3, color="C2")
    axes[2].set_xlabel("kB over links per inference")
    for ax in axes[1:]:
        ax.invert_yaxis()  # first policy on top, as in the box plot
        ax.set_yticklabels([])
    plt.tight_layout()
    plt.show()


def predicted_vs_measured(run: Served, shown=("XAI + NLP", "XAI + NLP (oracle)", "XAI + RL", "no pruning")) -> None:
    """Left: each request's predicted against measured latency; right: latency along the run, with the fade."""
    requests = run.requests
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    sns.scatterplot(data=requests, x="predicted_latency_ms", y="latency_ms", hue="policy", hue_order=run.order, s=10,
                    ax=axes[0], linewidth=0)
    lim = [0, max(requests["latency_ms"].max(), requests["predicted_latency_ms"].max()) * 1.05]
    axes[0].plot(lim, lim, color="k", lw=0.8)
    axes[0].fill_between(lim, [0.8 * v for v in lim], [1.2 * v for v in lim], color="k", alpha=0.07, label="±20%")
    axes[0].set_xlabel("predicted latency (ms)")
    axes[0].set_ylabel("measured latency (ms)")
    axes[0].legend(fontsize=7, markerscale=2)
    for name in shown:
        g = requests[requests["policy"] == name].sort_values("request")
        axes[1].plot(g["request"], g["latency_ms"], lw=0.8, label=name)
    axes[1].axhline(run.ward.deadline * 1e3, color="C3", ls="--", lw=0.8)
    ax2 = axes[1].twinx()
    ax2.plot(np.arange(run.n), run.trace[:, 0, 1], color="k", lw=1.2, alpha=0.4)
    ax2.set_yscale("log")
    ax2.set_ylabel("bandwidth multiplier (grey)")
    axes[1].set_xlabel("request")
    axes[1].set_ylabel("measured latency (ms)")
    axes[1].legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def stress(run: Served) -> None:
    """Left: the mean pruning level of each request's plan; right: its measured latency against the deadline."""
    requests = run.requests
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
    for name, g in requests[requests["policy"] != "XAI + NLP (oracle)"].groupby("policy", sort=False):
        g = g.sort_values("request")
        axes[0].plot(g["request"], [np.mean(lv) for lv in g["levels"]], lw=1.5, label=name)
        axes[1].plot(g["request"], g["latency_ms"], lw=0.8, label=name)
    axes[0].set_ylabel("mean pruning level of the plan")
    axes[1].axhline(run.ward.deadline * 1e3, color="C3", ls="--", lw=0.8, label="deadline")
    axes[1].set_ylabel("measured latency (ms)")
    for ax in axes:
        ax.set_xlabel("request (the link fades from 25% to 55% of the run)")
        ax.legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def estimate_vs_oracle(compared: dict[str, Views]) -> None:
    """Per ward, left: the multiplier the estimate measured on its busiest link against the trace; right: the latency
    the estimate-planned optimum expected, the latency its plan really needs, and the oracle's."""
    fig, axes = plt.subplots(len(compared), 2, figsize=(13, 3.6 * len(compared)), squeeze=False)
    for (name, v), (left, right) in zip(compared.items(), axes):
        hop = busiest_hop(v.est, v.ward)
        if hop:
            a, b = hop
            left.plot(np.arange(len(v.fade)), v.fade[:, v.ward.index(a), v.ward.index(b)], color="k", lw=1,
                      label="trace (what the oracle sees)")
            at, m = hop_multipliers(v.est, a, b, v.ward)
            left.scatter(at, m, s=6, color="C1", label="measured on that hop (what the estimate learns from)")
            left.set_ylabel(f"multiplier {a} -> {b}")
            left.set_yscale("log")
            left.legend(fontsize=7)
        left.set_title(name, fontsize=10)
        left.set_xlabel("request")
        right.plot(v.est.index, v.est["predicted_latency_ms"], lw=0.8, label="estimate: true latency of its plan")
        right.plot(v.est.index, v.est["planned_latency_ms"], lw=0.8, ls="--", label="estimate: latency it expected")
        right.plot(v.ora.index, v.ora["predicted_latency_ms"], lw=0.8, label="oracle: true latency of its plan")
        right.axhline(v.ward.deadline * 1e3, color="C3", ls="--", lw=0.8, label="deadline")
        right.set_yscale("log")
        right.set_xlabel("request")
        right.set_ylabel("ms")
        right.legend(fontsize=7)
    plt.tight_layout()
    plt.show()


def fault_timelines(load: Served) -> None:
    """One panel per fault: each request's latency against its first send, those sent again (red), and the events."""
    requests, events = load.requests, load.outcome.events
    kinds = [f["kind"] for f in load.faults]
    fig, axes = plt.subplots(2, (len(kinds) + 1) // 2, figsize=(16, 6), sharey=True, squeeze=False)
    for ax, kind in zip(axes.ravel(), kinds):
        g = requests[requests["policy"] == kind].sort_values("sent_s")
        ax.scatter(g["sent_s"], g["latency_ms"], s=5, color="k")
        again = g[g["attempts"] > 1]
        ax.scatter(again["sent_s"], again["latency_ms"], color="C3", s=12, zorder=3)
        e = events[(events["policy"] == kind) & events["event"].isin(MARKS)] if len(events) else events
        for _, row in e.drop_duplicates("event").iterrows():
            ax.axvline(row["t_s"], color=MARKS[row["event"]], lw=1, ls="--", label=row["event"])
        ax.set_title(kind, fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("s since the policy began")
        if len(e):
            ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("latency (ms)")
    plt.tight_layout()
    plt.show()
