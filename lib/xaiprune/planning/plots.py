"""The figures of notebooks ``05_nlp`` (the integer program) and ``06_rl`` (the agent).

Each function draws one figure from the tables those notebooks compute and returns it (laid out; the
notebook shows it). Nothing here computes a result.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaiprune.planning.sweep import OPTIMUM


def _log_x(ax, axis: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(f"{axis} x scenario value")


# ----- 05_nlp ---------------------------------------------------------------------------------
def sweep(plans: pd.DataFrame, scenarios: list[str], axis: str, metric: str = "acc"):
    """Per scenario (columns): the surrogate accuracy of every policy (top) and the optimum's mean pruning level
    (bottom) against the factor of ``axis`` ("deadline" or "bandwidth"); a missing point is an infeasible policy."""
    import seaborn as sns

    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.6 * len(scenarios), 6.2), squeeze=False)
    for col, name in enumerate(scenarios):
        sub = plans[(plans["scenario"] == name) & (plans["axis"] == axis)]
        sns.lineplot(data=sub, x="factor", y="accuracy", hue="policy", style="policy", markers=True, ax=axes[0, col],
                     legend=(col == 0))
        sns.lineplot(data=sub[sub["policy"] == OPTIMUM], x="factor", y="pruning", marker="o", ax=axes[1, col])
        for ax in axes[:, col]:
            _log_x(ax, axis)
        axes[0, col].set_title(name)
        axes[0, col].set_ylabel(f"surrogate {metric.upper()} (missing = infeasible)")
        axes[1, col].set_ylabel("mean pruning level of the optimum")
    fig.tight_layout()
    return fig


def surrogate(checks: pd.DataFrame, metric: str = "acc", band: float = 2.0, split: str = "val"):
    """Left: surrogate against measured accuracy (on ``split``), with the +-``band``-point band (the claim's margin,
    in points); right: the error against the plan's mean pruning level."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    both = checks[["measured", "surrogate"]]
    lims = np.array([both.min().min() - 0.02, both.max().max() + 0.02])
    axes[0].fill_between(lims, lims - band / 100, lims + band / 100, color="0.85", label=f"within {band:g} points")
    axes[0].plot(lims, lims, "k--", lw=0.8)
    sns.scatterplot(data=checks, x="measured", y="surrogate", hue="kind", style="kind", ax=axes[0])
    axes[0].set(xlabel=f"measured {split} {metric.upper()}", ylabel=f"surrogate {metric.upper()}",
                title=f"{len(checks)} plans: surrogate against measured")
    axes[1].axhspan(-band, band, color="0.85")
    axes[1].axhline(0, color="k", lw=0.8, ls="--")
    sns.scatterplot(data=checks, x="mean level", y="error (points)", hue="kind", style="kind", ax=axes[1], legend=False)
    axes[1].set(xlabel="mean pruning level of the plan", ylabel="surrogate - measured (points)",
                title="error against pruning")
    fig.tight_layout()
    return fig


def verified(table: pd.DataFrame, scenarios: list[str], k: int, metric: str = "acc"):
    """Per axis (rows) and scenario (columns): the measured test accuracy of the surrogate's optimum and of the
    verified choice, and the surrogate's prediction of the optimum, against the swept factor."""
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.6 * len(scenarios), 6.2), squeeze=False)
    for row, axis in enumerate(("deadline", "bandwidth")):
        for col, name in enumerate(scenarios):
            sub, ax = table[(table["scenario"] == name) & (table["axis"] == axis)], axes[row, col]
            ax.plot(sub["factor"], sub["test optimum"], "o-", label="surrogate's optimum (measured)")
            ax.plot(sub["factor"], sub["test chosen"], "s--", label=f"verified: best of {k} on val (measured)")
            ax.plot(sub["factor"], sub["surrogate optimum"], ":", color="0.5",
                    label="surrogate's prediction of the optimum")
            ax.set(ylabel=f"test {metric.upper()}", title=name)
            _log_x(ax, axis)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def scaling(timing: pd.DataFrame):
    """Solve time of the MILP and of the enumeration per instance size (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"S{r.segments} N{r.devices} L{r.levels}" for r in timing.itertuples()]
    ax.plot(labels, timing["milp_s"], "o-", label="MILP (CBC)")
    ax.plot(labels, timing["enumeration_s"], "s-", label="enumeration")
    ax.set(yscale="log", ylabel="solve time (s)")
    ax.legend()
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


# ----- 06_rl ----------------------------------------------------------------------------------
def training(records: dict[str, dict]):
    """Left: behaviour cloning per ward (agreement with the optimum, cross-entropy) by epoch; right: the fine-tuning
    curve (validation accuracy over the optimum's) by MaskablePPO step. ``records``: ward -> ``agent.train``'s record."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    for name, record in records.items():
        clone = pd.DataFrame(record["clone"])
        axes[0].plot(clone["epoch"], clone["agreement"], marker=".", label=f"{name}: agreement")
        axes[0].plot(clone["epoch"], clone["cross_entropy"], ls="--", label=f"{name}: cross-entropy")
        curve = pd.DataFrame(record["curve"])
        if "timesteps" in curve:
            axes[1].plot(curve["timesteps"], curve["acc_vs_optimum"], marker="o", label=name)
    axes[0].set_xlabel("behaviour-cloning epoch")
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="MaskablePPO fine-tuning steps", ylabel="accuracy / optimum's (validation)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def judged(results: pd.DataFrame, wards: list[str], optimum: str):
    """Per ward (columns): accuracy over the optimum's (top) and violation rate (bottom) of every planner but
    ``optimum``, nominal and faded requests side by side (``results``: ``judging.summary`` by ward, window, policy)."""
    import seaborn as sns

    shown = results.reset_index()
    shown = shown[shown["policy"] != optimum]
    fig, axes = plt.subplots(2, len(wards), figsize=(6.5 * len(wards), 6.5), squeeze=False)
    for col, name in enumerate(wards):
        g = shown[shown["ward"] == name]
        sns.barplot(data=g, x="policy", y="acc_vs_optimum", hue="window", ax=axes[0, col])
        sns.barplot(data=g.assign(violations=100 * g["violation_rate"]), x="policy", y="violations", hue="window",
                    ax=axes[1, col])
        axes[0, col].set(title=name, ylabel="accuracy / optimum's")
        axes[1, col].set_ylabel("requests violating a constraint (%)")
        for ax in axes[:, col]:
            ax.tick_params(axis="x", rotation=25)
            ax.set_xlabel("")
    fig.tight_layout()
    return fig


def trace(multiplier: np.ndarray, traced: pd.DataFrame, source: str):
    """The replayed fade: the bandwidth multiplier, then per planner the mean pruning level, the segments on the
    ``source`` device and the accuracy delivered, request by request."""
    fig, axes = plt.subplots(4, 1, figsize=(11, 8.5), sharex=True)
    axes[0].plot(multiplier, color="k")
    axes[0].set(yscale="log", ylabel="bandwidth x")
    for (name, g), style in zip(traced.groupby("policy", sort=False), ("-", "--", ":")):
        for ax, column in zip(axes[1:], ("pruning", "on_source", "delivered")):
            ax.plot(g["t"], g[column], ls=style, label=name)
    axes[1].set_ylabel("mean pruning level")
    axes[2].set_ylabel(f"segments on {source}")
    axes[3].set(ylabel="accuracy delivered", xlabel="request")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
