"""The figures of ``10_agilenn``: training per seed, importance per channel, the headline (latency against balanced
accuracy per method and regime), latency in its modelled and measured parts, bytes against image size, ablations.
Each function draws one figure from values the notebook computed and shows it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd



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


MARKERS = {"agilenn": "*", "local_tiny": "p", "local_small": "o", "offload_small": "s", "split_small": "D", "local_vgg": "v",
           "offload_vgg": "^"}


def headline(tables: dict[str, pd.DataFrame], endpoints: dict[str, dict[str, dict]]) -> None:
    """One panel per regime: each method's test balanced accuracy (mean over seeds, bars: the seeds' range) against
    its latency: filled, the measured median with its 95% interval; hollow, the modelled median. A method that does
    not fit on the device has its modelled figure only (crossed)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.2), squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        for j, m in enumerate(t.index):
            e, r, c = endpoints[name][m], t.loc[m], f"C{j}"
            yerr = [[e["bal_acc"] - e["bal_acc_min"]], [e["bal_acc_max"] - e["bal_acc"]]]
            ax.errorbar([r["modelled ms"]], [e["bal_acc"]], yerr=yerr, fmt=MARKERS[m], mfc="none", color=c, ms=9,
                        alpha=0.7 if r["fits"] else 0.4)
            if not r["fits"]:
                ax.plot([r["modelled ms"]], [e["bal_acc"]], "x", color=c, ms=12)
            if pd.notna(r.get("measured ms", np.nan)):
                ax.errorbar([r["measured ms"]], [e["bal_acc"]], xerr=[[r["measured ms"] - r["measured lo"]],
                            [r["measured hi"] - r["measured ms"]]], fmt=MARKERS[m], color=c, ms=9, capsize=3, label=m)
            else:
                ax.plot([], [], MARKERS[m], color=c, label=f"{m} (modelled only)")
        ax.set_xscale("log"); ax.set_xlabel("latency per image (ms; filled: measured, hollow: modelled)")
        ax.set_ylabel("test balanced accuracy"); ax.set_title(f"{name} regime"); ax.legend(fontsize=7)
    plt.tight_layout(); plt.show()


def latency_parts(tables: dict[str, pd.DataFrame]) -> None:
    """Per regime and served method: the modelled milliseconds stacked (device, link, remote) above the measured
    medians of the parts (device, uplink, remote, downlink; the rest of the round trip in grey)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.6), squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        t = t[t["measured ms"].notna()]
        y = np.arange(len(t))
        left = np.zeros(len(t))
        for col, color in (("modelled device ms", "C0"), ("modelled link ms", "C1"), ("modelled remote ms", "C2")):
            ax.barh(y + 0.2, t[col], left=left, height=0.38, color=color, label=col.replace(" ms", ""))
            left += t[col].to_numpy()
        left = np.zeros(len(t))
        for col, color in (("measured device ms", "C0"), ("measured up ms", "C1"), ("measured remote ms", "C2"),
                           ("measured down ms", "C3")):
            ax.barh(y - 0.2, t[col], left=left, height=0.38, color=color, hatch="//", alpha=0.7,
                    label=col.replace(" ms", ""))
            left += t[col].to_numpy()
        ax.set_yticks(y, t.index); ax.set_xlabel("ms per image (median)"); ax.set_title(f"{name} regime")
        ax.legend(fontsize=6)
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
