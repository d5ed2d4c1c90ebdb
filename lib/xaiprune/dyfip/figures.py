"""The figures of ``08_dyfip``: the branch, the class overlap of the relevance, accuracy against FLOPs, per class, latency.

Each function draws one figure from values the notebook computed (:mod:`xaiprune.dyfip.analysis`) and shows it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaiprune.dyfip import core
from xaiprune.dyfip.analysis import TARGETS


def branch(history: list[dict], recall: dict, exit_frame: pd.DataFrame, k: int, tau_exit: float) -> None:
    """Left: the branch's validation loss and ACC per epoch (circle: the kept epoch). Middle: test top-k recall per k.
    Right: exit rate and the ACC of the exited images against the exit threshold (dashed: ``tau_exit``)."""
    hist = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(hist["epoch"], hist["val_loss"], marker="o", ms=3, label="val loss")
    axes[0].plot(hist["epoch"], hist["val_acc"], marker="o", ms=3, label="val ACC")
    best = hist.loc[hist["val_loss"].idxmin()]
    axes[0].scatter([best["epoch"]], [best["val_loss"]], s=120, facecolors="none", edgecolors="k")
    axes[0].set_xlabel("epoch"); axes[0].legend(); axes[0].set_title("branch training")
    axes[1].bar([str(j) for j in recall], list(recall.values()), color=["C1" if j == k else "C0" for j in recall])
    axes[1].set_xlabel("k"); axes[1].set_ylabel("test top-k recall"); axes[1].set_ylim(0, 1)
    axes[1].set_title("is the true class among the branch's top k?")
    axes[2].plot(exit_frame["tau"], exit_frame["exit rate"], label="exit rate")
    axes[2].plot(exit_frame["tau"], exit_frame["ACC of exited"], label="ACC of the exited images")
    axes[2].axvline(tau_exit, color="k", ls="--", lw=0.8)
    axes[2].set_xlabel("tau_exit"); axes[2].legend(); axes[2].set_title("early exit on the test split")
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


def _pareto_panel(ax, here: pd.DataFrame, tau_exit: float):
    dy = here[here["policy"] == "dyfip"]
    sc = ax.scatter(dy["mean_flops_ratio"], dy["acc"], c=dy["keep"], cmap="viridis", s=28, label="DyFiP (keep x tau)")
    front = core.pareto(dy)
    ax.plot(front["mean_flops_ratio"], front["acc"], color="k", lw=1, label="DyFiP Pareto front")
    for policy, style in (("random", "s--"), ("oracle", "^--")):
        g = here[(here["policy"] == policy) & (here["tau_exit"] == tau_exit)].sort_values("keep")
        ax.plot(g["mean_flops_ratio"], g["acc"], style, ms=5, lw=0.8, label=f"{policy} (tau {tau_exit})")
    for policy, style in (("static_xai", "D-"), ("static_l1", "v-")):
        g = here[here["policy"] == policy].sort_values("keep")
        ax.plot(g["mean_flops_ratio"], g["acc"], style, ms=5, lw=1, label=policy.replace("_", " "))
    g = here[here["policy"] == "exit_only"].sort_values("mean_flops_ratio")
    ax.plot(g["mean_flops_ratio"], g["acc"], "o:", ms=4, color="grey", label="early exit only")
    return sc


def pareto(curve: pd.DataFrame, modes: list[str], tau_exit: float, full_acc: float, majority: float) -> None:
    """Test ACC against mean FLOPs per image (relative to the full model), one panel per BatchNorm refresh mode."""
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.6), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        sc = _pareto_panel(ax, curve[(curve["refresh"] == mode) | (curve["policy"] == "exit_only")], tau_exit)
        ax.scatter([1.0], [full_acc], marker="*", s=220, color="k", label="full model", zorder=5)
        ax.axvline(TARGETS["mean_flops_ratio"], color="k", lw=0.6, ls="--")
        ax.axhline(majority, color="k", lw=0.6, ls=":")
        ax.set_xlabel("mean FLOPs per image / full model"); ax.set_ylabel("test ACC")
        ax.set_title(f"BN refresh: {mode}")
        plt.colorbar(sc, ax=ax, label="keep")
    axes[0][-1].legend(fontsize=7, loc="lower right")
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
