"""The figures of ``08_dyfip``: the branch, the class overlap of the relevance, accuracy against FLOPs, per class, latency.

Each function draws one figure from values the notebook computed (:mod:`xaiprune.dyfip.evaluation`,
:mod:`xaiprune.dyfip.analysis`) and shows it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaiprune.dyfip import evaluation


def branch(histories: list[list[dict]], recall: dict, exit_frame: pd.DataFrame, k: int, taus: list[float]) -> None:
    """Left: each branch seed's validation loss per epoch (circle: the kept epoch). Middle: validation top-k recall per
    k, averaged over the seeds. Right: the first seed's exit rate and the ACC of the exited validation images against
    the exit threshold (dotted: the thresholds of the grid)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for j, history in enumerate(histories):
        hist = pd.DataFrame(history)
        axes[0].plot(hist["epoch"], hist["val_loss"], marker="o", ms=3, label=f"branch seed {j}")
        best = hist.loc[hist["val_loss"].idxmin()]
        axes[0].scatter([best["epoch"]], [best["val_loss"]], s=120, facecolors="none", edgecolors="k")
    axes[0].set_xlabel("epoch"); axes[0].set_ylabel("val loss"); axes[0].legend(fontsize=8); axes[0].set_title("branch training")
    axes[1].bar([str(j) for j in recall], list(recall.values()), color=["C1" if j == k else "C0" for j in recall])
    axes[1].set_xlabel("k"); axes[1].set_ylabel("validation top-k recall"); axes[1].set_ylim(0, 1)
    axes[1].set_title("is the true class among the branch's top k?")
    axes[2].plot(exit_frame["tau"], exit_frame["exit rate"], label="exit rate")
    axes[2].plot(exit_frame["tau"], exit_frame["ACC of exited"], label="ACC of the exited images")
    for tau in taus:
        axes[2].axvline(tau, color="k", ls=":", lw=0.6)
    axes[2].set_xlabel("tau_exit"); axes[2].legend(); axes[2].set_title("early exit on the validation split")
    plt.tight_layout()
    plt.show()


def overlap(frame: pd.DataFrame, method: str, keep: float) -> None:
    """Per tail layer, the mean Jaccard overlap of two classes' kept filters against two random selections."""
    ax = frame.plot(x="layer", y=["class pairs", "random"], marker="o", figsize=(9, 3.4))
    ax.set_ylabel("Jaccard overlap of kept filters"); ax.set_ylim(0, 1.02)
    ax.set_title(f"{method}: do two classes keep the same {keep:.0%} of a layer's filters?")
    ax.tick_params(axis="x", rotation=45)
    plt.tight_layout()
    plt.show()


def pareto(means: pd.DataFrame, point: dict, max_flops: float, chance: float) -> None:
    """Validation balanced accuracy against mean FLOPs per image (relative to the full model), averaged over the branch
    seeds: every DyFiP (keep, tau) point and its Pareto front, static pruning per keep, early exit per tau, the full
    model, the margin the choice rule allows (dashed), and the chosen point (circled)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    dy = means[means["policy"] == "dyfip"]
    sc = ax.scatter(dy["mean_flops_ratio"], dy["bal_acc"], c=dy["keep"], cmap="viridis", s=28, label="DyFiP (keep x tau)")
    front = evaluation.pareto(dy)
    ax.plot(front["mean_flops_ratio"], front["bal_acc"], color="k", lw=1, label="DyFiP Pareto front")
    for policy, style in (("static_xai", "D-"), ("static_l1", "v-"), ("exit_only", "o:")):
        g = means[means["policy"] == policy].sort_values("mean_flops_ratio")
        ax.plot(g["mean_flops_ratio"], g["bal_acc"], style, ms=4, lw=1, label=policy.replace("_", " "))
    ax.scatter([1.0], [point["val_full_bal_acc"]], marker="*", s=220, color="k", label="full model", zorder=5)
    ax.axhline(point["val_full_bal_acc"] + point["margin"], color="k", lw=0.6, ls="--")
    ax.scatter([point["val_mean_flops_ratio"]], [point["val_bal_acc"]], s=260, facecolors="none", edgecolors="r", lw=1.5,
               label=f"chosen: keep {point['keep']:g}, tau {point['tau_exit']:g}", zorder=6)
    ax.axvline(max_flops, color="k", lw=0.6, ls="-.")
    ax.axhline(chance, color="k", lw=0.6, ls=":")
    ax.set_xlabel("mean FLOPs per image / full model"); ax.set_ylabel("validation balanced accuracy")
    ax.set_title("validation split, mean over branch seeds: where the operating point is chosen")
    plt.colorbar(sc, ax=ax, label="keep")
    ax.legend(fontsize=7, loc="lower right")
    plt.tight_layout()
    plt.show()


def per_class(frame: pd.DataFrame) -> None:
    """The share of each true class answered correctly (``study.per_class``), one bar group per class."""
    frame.drop(columns="images").plot.bar(figsize=(9, 3.4), rot=0)
    plt.ylabel("share of the class answered correctly"); plt.ylim(0, 1.05); plt.title("test split, per true class")
    plt.legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def latency(requests: pd.DataFrame) -> None:
    """Histogram (log scale) of the milliseconds per image at batch 1: the full model and DyFiP (building excluded)."""
    times = requests[["dyfip_ms", "full_ms"]]
    bins = np.geomspace(max(0.1, min(times.min())), times.max().max(), 40)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.hist(requests["full_ms"], bins=bins, alpha=0.6, label="full model")
    ax.hist(requests["dyfip_ms"], bins=bins, alpha=0.6, label="DyFiP (building excluded)")
    ax.set_xscale("log"); ax.set_xlabel("ms per image, batch 1"); ax.set_ylabel("images"); ax.legend()
    ax.set_title(f"{len(requests)} test images served one at a time")
    plt.tight_layout()
    plt.show()
