"""The figures of ``10_agilenn``: training per seed, importance per channel, latency against bandwidth, latency in its
modelled parts and measured overhead, bytes against image size, ablations. Each function draws one figure from values
the notebook computed and shows it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xaiprune.agilenn import analysis as agilenn_analysis


def training(histories: list[list[dict]], seeds: list[int], rho: float) -> None:
    """Per training seed. Left: validation AUC per epoch (circles: the kept epochs). Right: skewness on the training
    batches against rho."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for j, (history, seed) in enumerate(zip(histories, seeds)):
        hist = pd.DataFrame(history)
        best = hist.loc[hist["val_auc"].idxmax()]
        axes[0].plot(hist["epoch"], hist["val_auc"], marker="o", ms=3, color=f"C{j}", label=f"seed {seed}")
        axes[0].plot([best["epoch"]], [best["val_auc"]], "o", ms=10, mfc="none", color=f"C{j}")
        axes[1].plot(hist["epoch"], hist["train_skewness"], marker="o", ms=3, color=f"C{j}", label=f"seed {seed}")
    axes[0].set_xlabel("epoch"); axes[0].set_ylabel("validation AUC"); axes[0].legend(fontsize=8)
    axes[1].axhline(rho, color="C3", ls="--", lw=0.8, label=f"rho = {rho}")
    axes[1].set_xlabel("epoch"); axes[1].set_ylabel("skewness (training batches)"); axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8)
    plt.tight_layout(); plt.show()


def importance(share: np.ndarray, skewness: np.ndarray, k: int, rho: float) -> None:
    """Left: mean share of the importance per channel (the first k, on the device, in orange). Right: per-image skewness."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    axes[0].bar(range(len(share)), share, color=["C1" if c < k else "C0" for c in range(len(share))])
    axes[0].set_xlabel("feature channel (orange: on the device)"); axes[0].set_ylabel("mean share of importance")
    axes[1].hist(skewness, bins=30)
    axes[1].axvline(rho, color="C3", ls="--", lw=0.8, label=f"rho = {rho}")
    axes[1].set_xlabel("skewness of one test image"); axes[1].set_ylabel("images"); axes[1].legend()
    plt.tight_layout(); plt.show()


def latency(frame: pd.DataFrame, link: "agilenn_analysis.Link", factors: list[float], sent: dict) -> None:
    """Median latency per method (markers, p5-p95 bars) against the device -> remote bandwidth, with the system model's
    prediction (lines; for split, the best interior cut at each bandwidth)."""
    grid = np.geomspace(min(factors) / 3, max(factors) * 3, 60)
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    for j, method in enumerate(agilenn_analysis.METHODS):
        g = frame[frame["method"] == method].sort_values("multiplier")
        xs = g["multiplier"] if method != "local" else np.array(factors)
        ys = lambda col: np.repeat(g[col].values, len(xs)) if method == "local" else g[col].values  # noqa: E731
        ax.errorbar(np.asarray(xs) * link.mbps(), ys("p50"), yerr=[ys("p50") - ys("p5"), ys("p95") - ys("p50")],
                    fmt="o", color=f"C{j}", capsize=3, label=f"{method} (measured)")
        ax.plot(grid * link.mbps(), [link.predicted_ms(method, m, sent) for m in grid], color=f"C{j}", lw=1, alpha=0.7)
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel(f"device -> remote bandwidth (Mbit/s; the scenario's: {link.mbps():.0f})"); ax.set_ylabel("latency per image (ms)")
    ax.legend(fontsize=7, ncol=2); plt.tight_layout(); plt.show()


def latency_parts(table: pd.DataFrame) -> None:
    """Per method at the scenario's bandwidth (:func:`xaiprune.agilenn.claim.latency_parts`): the modelled milliseconds
    stacked (device, link, remote), then the overhead the model does not charge; black: the measured median with its
    95% interval over the served images."""
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    y, left = np.arange(len(table)), np.zeros(len(table))
    for col, color in (("modelled device ms", "C0"), ("modelled link ms", "C1"), ("modelled remote ms", "C2"),
                       ("overhead ms", "0.75")):
        width = table[col].clip(lower=0).to_numpy()
        ax.barh(y, width, left=left, color=color, label=col.replace(" ms", ""))
        left += width
    med, lo, hi = (table[f"measured {c} ms"].to_numpy() for c in ("median", "lo", "hi"))
    ax.errorbar(med, y, xerr=[med - lo, hi - med], fmt="k|", ms=12, capsize=3, label="measured median (95% interval)")
    ax.set_yticks(y, table.index); ax.set_xlabel("ms per image at the scenario's bandwidth"); ax.legend(fontsize=7)
    plt.tight_layout(); plt.show()


def crossover(offloaded_channels: int, bits_per_value: float, png_ratio: float, size: int, sent_bytes: float) -> None:
    """Bytes per image against the image side: the PNG image (grayscale, RGB) and AgileNN at strides 2, 3 and 4."""
    sides = np.array([28, 64, 96, 128, 224])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for n_ch, style in ((1, "-"), (3, "--")):
        ax.plot(sides, sides ** 2 * n_ch * png_ratio, style, color="k", label=f"image, PNG, {n_ch} channel(s)")
    for j, s in enumerate((2, 3, 4)):
        ax.plot(sides, offloaded_channels * np.ceil(sides / s) ** 2 * bits_per_value / 8, ":", marker="o", ms=3,
                color=f"C{j}", label=f"AgileNN, stride {s}")
    ax.plot([size], [sent_bytes], "*", ms=14, color="C3", label="this run (measured)")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("image side (pixels)"); ax.set_ylabel("bytes per image")
    ax.legend(fontsize=8); plt.tight_layout(); plt.show()


def ablations(frame: pd.DataFrame, rho: float) -> None:
    """Per variant: test AUC, the local predictor's AUC and the achieved skewness (dashed: rho)."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    frame[["test AUC", "local AUC", "skewness"]].plot.bar(ax=ax, rot=20)
    ax.axhline(rho, color="C3", ls="--", lw=0.8); ax.set_ylim(0, 1); ax.legend(fontsize=8)
    plt.tight_layout(); plt.show()
