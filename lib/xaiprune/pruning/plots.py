"""The figures of ``04_pruning_comparison``, drawn from its sweep frames (one function per figure).

Each takes the frames of :mod:`xaiprune.pruning.comparison` or :mod:`xaiprune.pruning.repair_study` (and, for
intervals over the split's images, the bootstrap of :meth:`xaiprune.pruning.comparison.Evaluator.resampled`), draws, shows it with
``show=True`` (the notebook's inline backend) and returns the figure. Lines with interval bands are
:func:`xaiprune.figures.bands`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from xaiprune import figures, stats
from xaiprune.pruning import repair_study


LABELS = {"acc": "ACC", "bal_acc": "balanced accuracy", "auc": "AUC"}


def sweep_figure(sweep: pd.DataFrame, res: dict, arch: str, n_test: int, show: bool = True) -> plt.Figure:
    """Test AUC, balanced accuracy and ACC against the ratio, per criterion: the mean over the reference draws and
    its 95% interval over draws and test images; dashed, the unpruned model."""
    base = sweep.query("ratio == 0").iloc[0]
    draws = int(sweep["draw"].nunique())
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, value in zip(axes, ("auc", "bal_acc", "acc")):
        figures.bands(stats.intervals(sweep, res, value, ("criterion", "ratio")), "ratio", "criterion", ax,
                      base[value], value)
        ax.set_ylabel(f"test {LABELS[value]}")
        ax.set_title(f"{arch}: test {LABELS[value]}, no fine-tuning\n(mean over {draws} draws; "
                     f"95% CI over draws and {n_test} test images)", fontsize=9)
    axes[0].legend(ncol=2, fontsize=8)
    return figures.finish(fig, show)


def cost_figure(sweep: pd.DataFrame, arch: str, show: bool = True) -> plt.Figure:
    """FLOPs, parameters and shared activation bytes per image of the pruned models, relative to the unpruned one."""
    cost = sweep.groupby(["criterion", "ratio"], sort=False)[["macs", "params", "out_bytes"]].mean().reset_index()
    base = cost.query("ratio == 0").iloc[0]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, col, label in zip(axes, ("macs", "params", "out_bytes"),
                              ("FLOPs (2 x MACs)", "parameters", "shared activation bytes / image")):
        sns.lineplot(data=cost.assign(rel=cost[col] / base[col]), x="ratio", y="rel", hue="criterion", marker="o",
                     ax=ax, legend=(col == "out_bytes"))
        ax.set_ylabel(f"{label}, relative to unpruned")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{arch}: costs of the pruned models")
    return figures.finish(fig, show)


def sensitivity_figure(sens: pd.DataFrame, segments: list[str], arch: str, criterion: str, split: str = "validation",
                       show: bool = True) -> plt.Figure:
    """Mean ACC and AUC on ``split`` with one segment pruned at each level (rows: segments, columns: levels)."""
    mean = sens.groupby(["segment", "level"], sort=False)[["acc", "auc"]].mean().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(12, 2.2 + 0.3 * len(segments)))
    for ax, value in zip(axes, ("acc", "auc")):
        grid = mean.pivot(index="segment", columns="level", values=value).loc[list(segments)]
        sns.heatmap(grid, annot=True, fmt=".2f", cmap="RdYlGn", vmin=0.5, vmax=1, ax=ax, cbar=False,
                    annot_kws={"size": 7})
        ax.set_title(f"{arch}: {split} {value.upper()}, one segment pruned ({criterion})")
    return figures.finish(fig, show)


def reference_size_figure(study: pd.DataFrame, arch: str, ratios: list[float], show: bool = True) -> plt.Figure:
    """Test AUC against the reference images per class (log scale), one panel per ratio, with 95% intervals
    over the draws; the rows of :func:`xaiprune.pruning.comparison.reference_study` with balanced draws."""
    sized = study[(study["arch"] == arch) & study["reference"].str.endswith("/class")]
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.4 * len(ratios), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, r in zip(axes, ratios):
        figures.bands(stats.mean_ci(sized[sized["ratio"] == r], ["criterion", "n_per_class"], "auc"),
                      "n_per_class", "criterion", ax)
        ax.set_xscale("log")
        ax.set_title(f"{arch}, {r:.0%} pruned", fontsize=9)
    axes[0].legend(fontsize=8)
    return figures.finish(fig, show)


def repair_figure(repaired: pd.DataFrame, res: dict, best: str, arch: str, value: str = "bal_acc",
                  split: str = "validation", show: bool = True) -> plt.Figure:
    """``value`` on ``split`` against the ratio under each repair of :data:`~xaiprune.pruning.repair_study.REPAIRS`
    (one panel each), per criterion, with 95% intervals over draws and the split's images; dashed, the unpruned
    model repaired."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.2), sharex=True, sharey=True)
    for ax, repair in zip(axes.flat, repair_study.REPAIRS):
        rows = repaired[repaired["repair"] == repair]
        figures.bands(stats.intervals(rows, res, value, ("criterion", "ratio")), "ratio", "criterion", ax,
                      float(rows.query("ratio == 0")[value].mean()), value)
        ax.set_ylabel(f"{split} {LABELS[value]}")
        ax.set_title(f"{repair}{' (chosen)' if repair == best else ''}: {rows['draw'].nunique()} draws, "
                     f"{int(rows['labels'].max())} labels", fontsize=10)
    axes.flat[0].legend(ncol=2, fontsize=7)
    fig.suptitle(f"{arch}: {split} {LABELS[value]} after pruning, under each repair (95% CI over draws and {split} "
                 "images; dashed: the unpruned model under the same repair)", fontsize=11)
    return figures.finish(fig, show)


def scaling_figure(scaling: pd.DataFrame, arch: str, ratio: float, value: str = "bal_acc", split: str = "validation",
                   show: bool = True) -> plt.Figure:
    """``value`` on ``split`` against the unlabelled images of the BatchNorm repair (log scale), per criterion and
    repair."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=scaling, x="unlabelled", y=value, hue="criterion", style="repair", marker="o", ax=ax)
    ax.set_xscale("log")
    ax.set_ylabel(f"{split} {LABELS[value]}")
    ax.set_title(f"{arch}, {ratio:.0%} pruned, draw 0: {split} {LABELS[value]} against unlabelled images", fontsize=10)
    return figures.finish(fig, show)


def ward_figure(frames: dict[str, pd.DataFrame], arch: str, anchor: dict, chance: dict[str, float],
                show: bool = True) -> plt.Figure:
    """The ward regime for one architecture: balanced accuracy among the ward's classes against the ratio, per
    criterion (solid: as pruned; dashed: after the no-label repairs), one panel per ward; dotted, chance. Grey
    markers: Yeom et al.'s accuracies for the nearest architecture (another data set and model: orientation only)."""
    fig, axes = plt.subplots(1, len(frames), figsize=(5.2 * len(frames), 4.2), squeeze=False)
    family = "vgg16" if arch.startswith("vgg") else "resnet18" if arch.startswith("resnet") else None
    palette = dict(zip(sorted(next(iter(frames.values()))["criterion"].unique()), sns.color_palette("tab10")))
    for ax, (ward, frame) in zip(axes[0], frames.items()):
        for state, style in (("none", "-"), ("batchnorm+recalibrate", "--")):
            at = frame[frame["repair"] == state]
            means = at.groupby(["criterion", "ratio"])["bal_acc"].mean().reset_index()
            for c, g in means.groupby("criterion"):
                ax.plot(g["ratio"], g["bal_acc"], style, marker="o", ms=3, color=palette[c],
                        label=c if state == "none" else None)
        ax.axhline(chance[ward], color="grey", ls=":", lw=1)
        for (model, ratio), values in anchor.items():
            if model == family:
                for criterion, acc in values.items():
                    ax.scatter([ratio], [acc / 100], marker="*", s=40, color="grey", zorder=3)
                    ax.annotate(criterion, (ratio, acc / 100), fontsize=6, color="grey", xytext=(3, 0),
                                textcoords="offset points")
        ax.set(xlabel="fraction of filters removed", ylabel="test balanced accuracy (ward's classes)", ylim=(0, 1.02),
               title=f"{arch}, ward {ward}")
    axes[0][0].legend(fontsize=8, ncol=2, title="solid: pruned; dashed: + repairs", title_fontsize=7)
    return figures.finish(fig, show)
