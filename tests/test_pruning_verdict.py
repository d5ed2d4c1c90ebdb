"""The paired test behind notebook 04's claim: LRP against each baseline, Holm-corrected, read at the headline ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xaiprune import stats
from xaiprune.pruning import verdict
from xaiprune.study import protocol

Y = np.repeat([0, 1], 60)[:, None]
TASK = "binary-class"


def probs(signal: float, seed: int) -> np.ndarray:
    """Probabilities whose AUC grows with ``signal`` (noise of unit scale)."""
    s = signal * Y[:, 0] + np.random.default_rng(seed).normal(size=len(Y))
    p = 1 / (1 + np.exp(-s))
    return np.c_[1 - p, p]


def toy_sweep(signal: dict, draws: int = 3, ratios=(0.0, 0.3, 0.6)) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """A sweep frame: ``signal[(criterion, ratio)]`` sets each model's quality; l1 has one draw, the others ``draws``."""
    rows, scores = [], []
    for criterion in sorted({c for c, _ in signal}):
        for ratio in ratios:
            for d in range(1 if criterion == "l1" else draws):
                scores.append(probs(signal[criterion, ratio], seed=len(scores)))
                rows.append({"criterion": criterion, "draw": d, "ratio": ratio, "model": len(scores) - 1,
                             **stats.endpoints(Y, scores[-1], TASK)})
    return pd.DataFrame(rows), scores


def run(signal: dict, **kwargs) -> dict:
    frame, scores = toy_sweep(signal, **kwargs)
    return verdict.claim(frame, scores, Y, TASK, "toy", 0.0, 0.5, n_boot=300, seed=1)


def every(value: dict) -> dict:
    return {(c, r): value[c] for c in value for r in (0.0, 0.3, 0.6)}


@pytest.mark.parametrize("ratios, expected", [([0.0, 0.3, 0.6], 0.6), ([0.0, 0.4, 0.6], 0.4), ([0.5, 0.1], 0.5),
                                              ([0.0], None)])
def test_the_headline_ratio_is_the_pruned_ratio_nearest_half(ratios, expected):
    assert verdict.nearest_pruned(ratios, 0.5) == expected


def test_a_clear_lrp_win_everywhere_is_supported():
    out = run(every({"lrp": 4.0, "l1": 0.5, "taylor": 1.0, "random": 0.0}))
    assert out["row"]["verdict_"] == stats.SUPPORTED and out["headline"] == 0.6
    assert len(out["comparisons"]) == 2 * 3  # two pruned ratios x three baselines
    at = [c for c in out["comparisons"] if c["ratio"] == 0.6]
    strongest = min(at, key=lambda c: c["diff"])
    assert out["strongest"] == strongest["baseline"] == "taylor"
    assert out["row"]["measured"] == pytest.approx(strongest["diff"], abs=1e-4) and out["row"]["interval"][0] > 0
    assert out["row"]["n_seeds"] == 3
    assert {c["baseline"]: c["paired"] for c in at} == {"l1": False, "taylor": True, "random": True}
    row = protocol.row("xai_criterion", **out["row"], suffix="[toy]")
    assert row["id"] == "xai_criterion[toy]" and row["verdict"] == protocol.SUPPORTED
    assert "toy, 60% of filters removed, no repair: test AUC lrp" in row["evidence"]
    assert "Holm-corrected interval" in row["evidence"] and "balanced acc" in row["evidence"]


def test_a_tie_is_not_supported():
    frame, scores = toy_sweep(every({"lrp": 2.0, "l1": 2.0, "taylor": 2.0, "random": 2.0}))
    for c in ("l1", "taylor", "random"):  # every baseline gives LRP's very probabilities: an exact tie
        same = frame.merge(frame[frame["criterion"] == "lrp"], on=["draw", "ratio"], suffixes=("", "_lrp"))
        for m, m_lrp in zip(same.loc[same["criterion"] == c, "model"], same.loc[same["criterion"] == c, "model_lrp"]):
            scores[m] = scores[m_lrp]
    out = verdict.claim(frame, scores, Y, TASK, "toy", 0.0, 0.5, n_boot=300, seed=1)
    assert out["row"]["verdict_"] == stats.NOT and out["row"]["measured"] == 0.0
    assert not any(c["above_margin"] for c in out["comparisons"])


def test_a_win_at_one_ratio_and_a_loss_at_another_is_partly_supported():
    signal = every({"l1": 1.0, "taylor": 1.0, "random": 1.0})
    signal["lrp", 0.0], signal["lrp", 0.3], signal["lrp", 0.6] = 1.0, 5.0, 0.0  # wins at 30%, loses at the headline ratio
    out = run(signal)
    assert out["row"]["verdict_"] == stats.PARTLY
    assert all(c["interval_holm"][1] < 0 for c in out["comparisons"] if c["ratio"] == 0.6)


def test_a_win_at_the_headline_ratio_with_a_loss_elsewhere_misses_the_target():
    signal = every({"l1": 1.0, "taylor": 1.0, "random": 1.0})
    signal["lrp", 0.0], signal["lrp", 0.3], signal["lrp", 0.6] = 1.0, 0.0, 5.0
    out = run(signal)
    assert all(c["above_margin"] for c in out["comparisons"] if c["ratio"] == 0.6)
    assert out["row"]["verdict_"] == stats.PARTLY  # below 0 at 30%: the target says "at no ratio a lower one"


def test_without_lrp_or_a_baseline_the_claim_is_not_measured():
    for signal in (every({"taylor": 1.0, "l1": 1.0}), every({"lrp": 3.0, "deeplift": 1.0})):
        out = run(signal)
        assert out["row"]["verdict_"] == stats.MISSING and out["row"]["n_seeds"] == 0 and out["comparisons"] == []
        assert protocol.row("xai_criterion", **out["row"])["verdict"] == protocol.MISSING


def test_a_claim_against_only_some_baselines_is_not_measured():
    out = run(every({"lrp": 3.0, "l1": 1.0}))
    assert out["row"]["verdict_"] == stats.MISSING and "every baseline" in out["row"]["evidence"]


def test_comparisons_respect_min_ratio_and_the_family_is_corrected():
    frame, scores = toy_sweep(every({"lrp": 3.0, "l1": 1.0, "taylor": 1.0, "random": 1.0}))
    got = verdict.comparisons(frame, scores, Y, TASK, metric="bal_acc", min_ratio=0.5, n_boot=200)
    assert {c["ratio"] for c in got} == {0.6} and {c["metric"] for c in got} == {"bal_acc"}
    assert all(c["p_holm"] >= c["p"] for c in got) and "boot" not in got[0]
    assert set(verdict.compact(got)[0]) == {"ratio", "baseline", "metric", "diff", "interval", "interval_holm", "interval_family",
                                            "p_holm", "above_margin", "n_seeds", "paired"}
