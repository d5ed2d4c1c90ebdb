"""The figures of ``09_compression``: weight pruning with and without the correction, bits per layer, the endpoints
against size for every technique (all on the validation subset, where the choices are made), and where the saved
model's bits go.

Each function draws one figure from values the notebook computed and shows it.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaiprune import stats
from xaiprune.compression import results

LABELS = {"acc": "ACC", "bal_acc": "balanced accuracy", "auc": "AUC"}
COLOURS = {"deeplift": "C3", "taylor": "C0"}  # the XAI variant and its Taylor counterpart; the rest in grey tones


def weight_pruning(view: pd.DataFrame, base: dict) -> None:
    """Validation ACC, balanced accuracy and AUC against the fraction of live weights removed, per variant, with and
    without the BatchNorm correction (``view``: mean over draws per technique, variant and setting); dashed: the
    32-bit model."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for ax, value in zip(axes, stats.ENDPOINTS):
        for (tech, variant), g in view.groupby(["technique", "variant"], sort=False):
            ax.plot(g["setting"], g[value], "o-" if tech == "weight_pruning" else "x:",
                    label=variant + (" (no correction)" if tech != "weight_pruning" else ""))
        ax.axhline(base[value], color="k", lw=0.8, ls="--")
        ax.set_xlabel("fraction of live weights removed"); ax.set_ylabel(f"validation {LABELS[value]}")
    axes[2].legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def allocations(frame: pd.DataFrame, budget: float) -> None:
    """Bits per layer of each allocation (columns of ``frame``) at one average budget; dashed: uniform bits."""
    frame.plot.bar(figsize=(11, 3.4), rot=45)
    plt.axhline(budget, color="k", lw=0.8, ls="--", label=f"uniform {budget} bits")
    plt.ylabel("bits per weight"); plt.title(f"bits per layer at an average budget of {budget} bits per weight")
    plt.legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def _log_ticks(axis, formatter) -> None:
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs="all"))  # 1..9 x 10^k: labels in any range
    axis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(formatter))


def _technique_panel(ax, here: pd.DataFrame, value: str, base: dict) -> None:
    others = iter(["0.25", "0.5", "0.7"])
    for variant, g in here.groupby("variant", sort=False):
        g = g.sort_values("bits")
        color = COLOURS.get(variant) or next(others)
        ax.plot(g["bits"], g[value], "o-", ms=3, color=color, label=variant)
        ax.fill_between(g["bits"], g[f"{value}_lo"].clip(0, 1), g[f"{value}_hi"].clip(0, 1), color=color, alpha=0.2, lw=0)
    ax.axhline(base[value], color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, lambda v, _: f"{v / 1e6:g}")


def curves(frame: pd.DataFrame, base: dict, full_bits: int, points: float) -> None:
    """One column per technique: validation ACC, balanced accuracy and AUC (rows) against the size in Mbit, DeepLIFT in
    red and Taylor in blue with their 95% intervals over the draws, the other counterparts in grey; dashed: the 32-bit
    model, dotted: its AUC minus ``points`` (the claim's: the operating points' limit); the top axis gives the overall
    compression ratio."""
    techs = results.TECHNIQUES
    fig, axes = plt.subplots(3, len(techs), figsize=(4.2 * len(techs), 10), sharey="row")
    for j, tech in enumerate(techs):
        for i, value in enumerate(stats.ENDPOINTS):
            ax = axes[i, j]
            _technique_panel(ax, frame[frame["technique"] == tech], value, base)
            ax.set_xlabel("size (Mbit)" if i == 2 else "")
            if value == "auc":
                ax.axhline(base["auc"] - points / 100, color="k", lw=0.8, ls=":")
            if i == 0:
                ax.set_title(tech.replace("_", " "))
                top = ax.secondary_xaxis("top", functions=(lambda b: full_bits / np.maximum(b, 1),
                                                           lambda r: full_bits / np.maximum(r, 1e-9)))
                top.set_xlabel("compression ratio", fontsize=8)
                _log_ticks(top.xaxis, lambda v, _: f"{v:g}x")
            if j == 0:
                ax.set_ylabel(f"validation {LABELS[value]}")
            if i == 2:
                ax.legend(fontsize=7, loc="lower right")
    plt.tight_layout()
    plt.show()


def bits_per_weight(frame: pd.DataFrame, ratio: float) -> None:
    """Stacked bars of codes, table and index bits per original weight, per layer; dashed: the whole model's average."""
    ax = frame.plot.bar(stacked=True, figsize=(11, 3.4), rot=45)
    ax.axhline(32 / ratio, color="k", lw=0.8, ls="--", label="whole model")
    ax.set_ylabel("bits per original weight"); ax.legend(fontsize=8)
    ax.set_title("where the saved model's bits go (32 bits per weight before compression)")
    plt.tight_layout()
    plt.show()
