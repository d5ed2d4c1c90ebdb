"""The figures of ``08_dyfip``: the branch, the class overlap of the relevance, accuracy against FLOPs, per class, latency.

Each function draws one figure from values the notebook computed (:mod:`xaiprune.dyfip.evaluation`,
:mod:`xaiprune.dyfip.analysis`) and shows it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaiprune.dyfip import evaluation


def branch(histories: dict[int, list[list[dict]]], recall: dict[int, dict[int, float]], exit_frame: pd.DataFrame,
           taus: list[float]) -> None:
    """Left: each branch's (per k and seed) validation objective per epoch (circle: the kept epoch). Middle: validation
    top-j recall against j of the branches trained for each k, averaged over the seeds. Right: the first branch's exit
    rate and the ACC of the exited validation images against the exit threshold (dotted: the thresholds of the grid)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for i, (k, runs) in enumerate(histories.items()):
        for j, history in enumerate(runs):
            hist = pd.DataFrame(history)
            axes[0].plot(hist["epoch"], hist["val_loss"], marker="o", ms=3, color=f"C{i}", alpha=0.5 + 0.5 * (j == 0),
                         label=f"top-{k} branches" if j == 0 else None)
            best = hist.loc[hist["val_loss"].idxmin()]
            axes[0].scatter([best["epoch"]], [best["val_loss"]], s=120, facecolors="none", edgecolors="k")
        axes[1].plot(list(recall[k]), list(recall[k].values()), marker="o", color=f"C{i}", label=f"trained for top-{k}")
    axes[0].set_xlabel("epoch"); axes[0].set_ylabel("validation objective"); axes[0].legend(fontsize=8)
    axes[0].set_title("branch training (per k and seed)")
    axes[1].set_xlabel("j"); axes[1].set_ylabel("validation top-j recall"); axes[1].set_ylim(0, 1.02); axes[1].legend(fontsize=8)
    axes[1].set_title("is the true class among the branch's top j?")
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
    for i, (k, g) in enumerate(dy.groupby("k")):
        sc = ax.scatter(g["mean_flops_ratio"], g["bal_acc"], c=g["keep"], cmap="viridis", vmin=dy["keep"].min(),
                        vmax=dy["keep"].max(), s=28, marker="os^D"[i % 4], label=f"DyFiP, k={k} (keep x tau)")
    front = evaluation.pareto(dy)
    ax.plot(front["mean_flops_ratio"], front["bal_acc"], color="k", lw=1, label="DyFiP Pareto front")
    for policy, style in (("static_xai", "D-"), ("static_l1", "v-")):
        g = means[means["policy"] == policy].sort_values("mean_flops_ratio")
        ax.plot(g["mean_flops_ratio"], g["bal_acc"], style, ms=4, lw=1, label=policy.replace("_", " "))
    for k, g in means[means["policy"] == "exit_only"].groupby("k"):
        g = g.sort_values("mean_flops_ratio")
        ax.plot(g["mean_flops_ratio"], g["bal_acc"], "o:", ms=4, lw=1, label=f"early exit alone (top-{k} branch)")
    ax.scatter([1.0], [point["val_full_bal_acc"]], marker="*", s=220, color="k", label="full model", zorder=5)
    ax.axhline(point["val_full_bal_acc"] + point["margin"], color="k", lw=0.6, ls="--")
    ax.scatter([point["val_mean_flops_ratio"]], [point["val_bal_acc"]], s=260, facecolors="none", edgecolors="r", lw=1.5,
               label=f"chosen: k {point['k']}, keep {point['keep']:g}, tau {point['tau_exit']:g}", zorder=6)
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


def latency(log: pd.DataFrame) -> None:
    """Histogram (log scale) of the milliseconds per image at batch 1, one per served policy; a tick marks each
    policy's worst case."""
    bins = np.geomspace(max(0.05, log["ms"].min()), log["ms"].max(), 50)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for i, (policy, g) in enumerate(log.groupby("policy", sort=False)):
        ax.hist(g["ms"], bins=bins, alpha=0.45, color=f"C{i}", label=policy)
        ax.axvline(g["ms"].max(), color=f"C{i}", lw=1.2, ls="--")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("ms per image, batch 1 (dashed: the worst case)")
    ax.set_ylabel("images"); ax.legend(fontsize=8)
    ax.set_title(f"{log['image'].nunique()} test images served one at a time by every policy (sub-networks built ahead)")
    plt.tight_layout()
    plt.show()


def ablation(frame: pd.DataFrame) -> None:
    """Per flag (a panel each), the test balanced accuracy of every ablation policy (bars; whiskers: the interval over
    draws and seeds where there are several) with its mean FLOPs ratio written on the bar."""
    flags = list(dict.fromkeys(frame.index.get_level_values("flag")))
    fig, axes = plt.subplots(1, len(flags), figsize=(6.5 * len(flags), 3.8), squeeze=False)
    for ax, flag in zip(axes[0], flags):
        g = frame.loc[flag]
        err = np.vstack([g["bal_acc"] - g["bal_acc_lo"], g["bal_acc_hi"] - g["bal_acc"]])
        ax.bar(range(len(g)), g["bal_acc"], yerr=err, capsize=3, color=[f"C{i}" for i in range(len(g))])
        for i, (acc, flops) in enumerate(zip(g["bal_acc"], g["mean_flops_ratio"])):
            ax.text(i, acc / 2, f"{flops:.0%}\nFLOPs", ha="center", fontsize=7, color="w")
        ax.set_xticks(range(len(g)), [p.replace("_", " ") for p in g.index], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test balanced accuracy"); ax.set_title(f"{flag}: DyFiP and its ablations")
    plt.tight_layout()
    plt.show()
