"""Plotting helpers shared by the notebooks: image montages, relevance heatmaps, mean lines with interval bands.

Images of :mod:`xaiprune.data` are normalised as in the MedMNIST v2 benchmark, ``x -> (x/255 - 0.5)/0.5``;
:func:`to_image` undoes that for display. Every function draws on a new figure (or the axes it is given) and,
with ``show=True``, shows it at once (the notebooks' inline backend), then returns the figure.
Used by ``01_data`` (:func:`montage`), ``03_xai_scores`` (:func:`relevance_grid`) and the interval bands of
``04_pruning_comparison`` (:func:`bands`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from xaiprune import data


def finish(fig: plt.Figure, show: bool = True) -> plt.Figure:
    """Lay the figure out, show it in the notebook when ``show``, and return it."""
    fig.tight_layout()
    if show:
        plt.show()
    return fig


def to_image(x: torch.Tensor) -> np.ndarray:
    """One normalised image (C x H x W in [-1, 1]) as an array for ``imshow`` in [0, 1]: H x W, or H x W x C."""
    return (x * 0.5 + 0.5).permute(1, 2, 0).squeeze(-1).numpy()


def montage(split: data.Split, names: list[str], per_row: int = 8, seed: int = 0, title: str = "",
            show: bool = True) -> plt.Figure:
    """Up to ``per_row`` images of each class of ``split``, one row per class, drawn with ``seed``.

    ``names`` are the class names in label order (:func:`xaiprune.data.class_names`); a class with fewer
    images leaves the rest of its row blank. The same seed shows the same images.
    """
    gen = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(len(names), per_row, figsize=(per_row * 1.1, len(names) * 1.25), squeeze=False)
    for c, row in enumerate(axes):
        idx = data.class_indices(split.y, c)
        pick = idx[torch.randperm(len(idx), generator=gen)[:per_row]]
        for ax, i in zip(row, pick.tolist()):
            img = to_image(split.x[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        for ax in row:
            ax.axis("off")
        row[0].set_title(names[c], loc="left", fontsize=9)
    fig.suptitle(title)
    return finish(fig, show)


def relevance_grid(x: torch.Tensor, heatmaps: dict[str, torch.Tensor], titles: list[str], per_row: int,
                   title: str = "", quantile: float = 0.99, show: bool = True) -> plt.Figure:
    """Each image of ``x`` beside its heatmaps, ``per_row`` images (each with its maps) to a row.

    ``heatmaps``: label -> relevance (N x H x W, e.g. summed over channels). Red is positive, blue negative;
    each map's colours are clipped at its ``quantile`` of |R|, so that a few extreme pixels do not wash it out.
    ``titles``: one per image.
    """
    k = 1 + len(heatmaps)
    rows = -(-len(x) // per_row)
    fig, axes = plt.subplots(rows, k * per_row, figsize=(1.5 * k * per_row, 1.8 * rows), squeeze=False)
    for i in range(len(x)):
        row, col = divmod(i, per_row)
        axes[row, k * col].imshow(to_image(x[i]), cmap="gray")
        axes[row, k * col].set_title(titles[i], fontsize=7)
        for j, (label, heat) in enumerate(heatmaps.items(), start=1):
            h = heat[i].numpy()
            lim = np.quantile(np.abs(h), quantile) + 1e-12
            axes[row, k * col + j].imshow(h, cmap="bwr", vmin=-lim, vmax=lim)
            axes[row, k * col + j].set_title(label, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    return finish(fig, show)


def bands(summary: pd.DataFrame, x: str, hue: str, ax: plt.Axes, baseline: float | None = None,
          value: str = "auc") -> None:
    """A mean line and its interval band per ``hue`` group of ``summary`` (columns ``x``, mean, lo, hi).

    ``summary`` is e.g. :func:`xaiprune.stats.intervals` or :func:`xaiprune.stats.mean_ci`. The metric lies in
    [0, 1], so bands are clipped to it; ``baseline`` draws a dashed horizontal line (the unpruned model).
    """
    for key, g in summary.groupby(hue, sort=False):
        line, = ax.plot(g[x], g["mean"], marker="o", ms=3, label=key)
        ax.fill_between(g[x], g["lo"].clip(0, 1), g["hi"].clip(0, 1), color=line.get_color(), alpha=0.18, lw=0)
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel(f"test {value.upper()}")
    ax.set_ylim(0, 1.02)
