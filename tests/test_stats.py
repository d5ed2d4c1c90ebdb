"""Intervals of the pruning comparison: t over draws, bootstrap over test images, both, and the verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from medmnist.evaluator import getACC, getAUC
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from xaiprune import stats

TASKS = ("binary-class", "multi-class", "multi-label, binary-class", "ordinal-regression")


def fake(task: str, n: int = 60, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities shaped as train.evaluate gives them, with ties (scores rounded to 0.1)."""
    rng = np.random.default_rng(seed)
    if task == "multi-label, binary-class":
        return rng.integers(0, 2, (n, classes)), np.round(rng.random((n, classes)), 1)
    k = 2 if task == "binary-class" else classes
    y = rng.integers(0, k, (n, 1))
    p = np.round(rng.random((n, k)), 1) + 1e-3
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("task", TASKS)
def test_unit_weights_give_medmnists_metrics(task):
    y, p = fake(task)
    w = np.ones((1, len(y)))
    assert stats.weighted_acc(y, p, task, w)[0] == pytest.approx(getACC(y, p, task), abs=1e-12)
    assert stats.weighted_auc(y, p, task, w)[0] == pytest.approx(getAUC(y, p, task), abs=1e-12)


def test_a_resample_is_the_metric_of_the_repeated_images():
    """Multiplicities act as repeated images: the same as getACC/getAUC on the expanded test set."""
    y, p = fake("binary-class", n=40, seed=1)
    w = stats.resample_weights(len(y), n_boot=5, seed=3)
    for row, acc, auc in zip(w, stats.weighted_acc(y, p, "binary-class", w), stats.weighted_auc(y, p, "binary-class", w)):
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        assert acc == pytest.approx(getACC(y[idx], p[idx], "binary-class"), abs=1e-12)
        assert auc == pytest.approx(getAUC(y[idx], p[idx], "binary-class"), abs=1e-12)
        assert auc == pytest.approx(roc_auc_score(y[:, 0], p[:, 1], sample_weight=row), abs=1e-12)


def test_weighted_auc_by_hand():
    """Positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of 4 pairs ordered (AUC 0.75); dropping the
    negative at 0.4 orders every pair (1.0); weights (2, 1, 1, 0) leave 0.35 against 0.1 twice and 0.4 once (2/3);
    a tie counts one half."""
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    w = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [2, 1, 1, 0]], dtype=float)
    np.testing.assert_allclose(stats.weighted_auc(y, s, "binary-class", w), [0.75, 1.0, 2 / 3])
    tied = np.array([[0.5, 0.5]] * 4)
    assert stats.weighted_auc(y, tied, "binary-class", w[:1])[0] == 0.5
    np.testing.assert_allclose(stats.weighted_acc(y, s, "binary-class", w), [0.75, 2 / 3, 0.75])  # 0.35 is misread


def test_resample_weights_are_seeded_multiplicities():
    w = stats.resample_weights(50, n_boot=200, seed=7)
    assert w.shape == (200, 50) and (w.sum(1) == 50).all() and (w >= 0).all()
    assert np.array_equal(w, stats.resample_weights(50, n_boot=200, seed=7))
    assert not np.array_equal(w, stats.resample_weights(50, n_boot=200, seed=8))
    assert abs(w.mean() - 1) < 0.02  # every image drawn once per resample on average


def sweep_frame(acc_by_draw: dict[str, list[float]], ratio: float = 0.5) -> pd.DataFrame:
    rows, model = [], 0
    for criterion, values in acc_by_draw.items():
        for draw, v in enumerate(values):
            rows.append({"criterion": criterion, "draw": draw, "ratio": ratio, "acc": v, "auc": v, "model": model})
            model += 1
    return pd.DataFrame(rows)


def test_a_perfect_classifier_has_no_test_error_and_keeps_the_draw_interval():
    """Every resample of a perfect model scores 1, so with no spread over draws the interval has zero width;
    with no test-set error, the combined interval is the t-interval over draws."""
    y = np.array([0, 1] * 20)
    perfect = np.eye(2)[y]
    w = stats.resample_weights(len(y), 300, seed=0)
    res = stats.resampled_metrics([perfect] * 3, y, "binary-class", w)
    assert (res["acc"] == 1).all() and (res["auc"] == 1).all()
    frame = sweep_frame({"lrp": [1.0, 1.0, 1.0]})
    row = stats.intervals(frame, res, "acc").iloc[0]
    assert row["lo"] == row["hi"] == row["lo_test"] == row["hi_test"] == 1.0
    spread = sweep_frame({"lrp": [0.9, 1.0, 0.95]})  # draws that differ, each the same on every resample
    row = stats.intervals(spread, {"acc": np.tile(spread["acc"].to_numpy()[:, None], (1, 300))}, "acc").iloc[0]
    half = sps.t.ppf(0.975, 2) * np.std([0.9, 1.0, 0.95], ddof=1) / 3 ** 0.5
    assert row["mean"] == pytest.approx(0.95) and row["lo_test"] == row["hi_test"] == pytest.approx(0.95)
    assert (row["lo"], row["hi"]) == pytest.approx((0.95 - half, 0.95 + half))
    assert (row["lo_draws"], row["hi_draws"]) == pytest.approx((0.95 - half, 0.95 + half))


def test_a_constant_classifier_has_the_binomial_interval_of_the_class_share():
    """Predicting class 1 for everything: ACC is the share of class 1, AUC one half in every resample;
    the bootstrap interval of the share matches the normal approximation p +- 1.96 sqrt(p (1 - p) / n)."""
    y = np.array([1] * 300 + [0] * 200)
    constant = np.tile([0.2, 0.8], (len(y), 1))
    w = stats.resample_weights(len(y), 4000, seed=1)
    res = stats.resampled_metrics([constant], y, "binary-class", w)
    assert (res["auc"] == 0.5).all()
    row = stats.intervals(sweep_frame({"l1": [0.6]}), res, "acc").iloc[0]
    half = 1.96 * np.sqrt(0.6 * 0.4 / len(y))
    assert row["lo_draws"] == row["hi_draws"] == 0.6  # one deterministic draw: no draw interval
    assert row["lo"] == pytest.approx(0.6 - half, abs=0.004) and row["hi"] == pytest.approx(0.6 + half, abs=0.004)


def test_combined_half_widths_add_in_quadrature():
    assert stats._combine(0.5, 0.03, 0.46, 0.54) == pytest.approx((0.45, 0.55))
    assert stats._combine(0.5, 0.0, 0.46, 0.52) == pytest.approx((0.46, 0.52))  # asymmetric test part kept
    assert stats._combine(0.5, 0.02, 0.51, 0.6) == pytest.approx((0.48, 0.5 + np.hypot(0.02, 0.1)))


def verdict_frame() -> pd.DataFrame:
    rows = []
    for draw in range(5):
        jitter = 0.001 * draw
        rows += [{"criterion": "lrp", "draw": draw, "ratio": 0.3, "auc": 0.95 + jitter},
                 {"criterion": "taylor", "draw": draw, "ratio": 0.3, "auc": 0.80 + jitter},
                 {"criterion": "lrp", "draw": draw, "ratio": 0.5, "auc": 0.70 + 0.2 * (draw % 2)},
                 {"criterion": "l1", "draw": draw, "ratio": 0.5, "auc": 0.78},
                 {"criterion": "lrp", "draw": draw, "ratio": 0.7, "auc": 0.50 + jitter},
                 {"criterion": "l1", "draw": draw, "ratio": 0.7, "auc": 0.90}]
    return pd.DataFrame(rows)


def test_xai_against_baselines_reads_the_draw_intervals():
    got = {v["ratio"]: (v["outcome"], v["best_xai"], v["best_baseline"], v["n_xai"], v["n_baselines"])
           for v in stats.xai_against_baselines(verdict_frame(), "auc")}
    assert got == {0.3: ("XAI better", "lrp", "taylor", 1, 1), 0.5: ("tie", "lrp", "l1", 1, 1),
                   0.7: ("baseline better", "lrp", "l1", 1, 1)}


def test_test_set_error_can_turn_a_draw_only_win_into_a_tie():
    """Two criteria 0.03 apart with tiny draw spread beat each other on draws alone; a test-set error
    of +-0.05 (both resampled alike) makes the intervals overlap, while the paired difference stays
    exactly 0.03 on every resample and its interval excludes 0."""
    frame = pd.DataFrame([{"criterion": c, "draw": d, "ratio": 0.5, "auc": base + 0.001 * d, "model": i}
                          for i, (c, d, base) in enumerate([(c, d, b) for c, b in (("ig", 0.9), ("taylor", 0.87))
                                                            for d in range(3)])])
    shift = np.linspace(-0.05, 0.05, 201)  # the same test-set shift for every model on each resample
    auc = frame["auc"].to_numpy()[:, None] + shift[None, :]
    (v,) = stats.xai_against_baselines(frame, "auc", {"auc": auc})
    assert v["outcome_draws"] == "XAI better" and v["outcome"] == "tie"
    assert v["diff"] == pytest.approx(0.03) and v["diff_ci"][0] > 0
    assert v["intervals"] == "draws and test images"


def test_deterministic_baseline_pairs_with_every_draw():
    frame = pd.DataFrame([{"criterion": "lrp", "draw": d, "ratio": 0.5, "auc": v, "model": d}
                          for d, v in enumerate([0.8, 0.9, 0.85])]
                         + [{"criterion": "l1", "draw": 0, "ratio": 0.5, "auc": 0.6, "model": 3}])
    res = {"auc": np.tile(frame["auc"].to_numpy()[:, None], (1, 10))}
    (v,) = stats.xai_against_baselines(frame, "auc", res)
    half = sps.t.ppf(0.975, 2) * np.std([0.2, 0.3, 0.25], ddof=1) / 3 ** 0.5
    assert v["diff"] == pytest.approx(0.25) and v["diff_ci"] == pytest.approx([0.25 - half, 0.25 + half], abs=1e-4)


# ----- the protocol's procedure: endpoints, paired nested bootstrap, Holm ----------------------------------------
def _probs(rng, y, skill, n_classes):
    """Probabilities that put ``skill`` extra mass on the true class."""
    p = rng.dirichlet(np.ones(n_classes), len(y))
    p[np.arange(len(y)), y[:, 0]] += skill
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("task, n_classes", [("binary-class", 2), ("multi-class", 5)])
def test_endpoints_are_medmnists_acc_and_auc_and_sklearns_balanced_accuracy(task, n_classes):
    from medmnist.evaluator import getACC, getAUC
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, n_classes, size=(200, 1))
    p = _probs(rng, y, 0.3, n_classes)
    got = stats.endpoints(y, p, task)
    pred = (p[:, -1] > 0.5).astype(int) if task == "binary-class" else p.argmax(1)
    assert got["acc"] == pytest.approx(getACC(y, p, task)) and got["auc"] == pytest.approx(getAUC(y, p, task))
    assert got["bal_acc"] == pytest.approx(balanced_accuracy_score(y[:, 0], pred))


def test_a_model_answering_one_class_scores_one_over_classes_in_balanced_accuracy_whatever_its_acc():
    y = np.array([[0]] * 90 + [[1]] * 10)
    always_0 = np.tile([0.9, 0.1], (100, 1))
    got = stats.endpoints(y, always_0, "binary-class")
    assert got["acc"] == pytest.approx(0.9) and got["bal_acc"] == pytest.approx(0.5)


def test_the_paired_difference_finds_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=(300, 1))
    strong = [_probs(rng, y, 1.0, 3) for _ in range(3)]
    weak = [_probs(rng, y, 0.1, 3) for _ in range(5)]
    win = stats.paired_difference(strong, weak, y, "multi-class", "auc", n_boot=500)
    same = stats.paired_difference(strong, strong, y, "multi-class", "auc", n_boot=500, paired_seeds=True)
    assert win["diff"] > 0.1 and win["interval"][0] > 0 and win["p"] < 0.01 and win["n_seeds"] == [3, 5]
    assert same["diff"] == pytest.approx(0.0) and same["p"] == 1.0
    ahead = stats.paired_difference(strong, weak, y, "multi-class", "auc", margin=0.5, n_boot=500)
    assert ahead["p"] == 1.0, "a margin the gain does not reach is not passed"
    with pytest.raises(ValueError, match="equal seed counts"):
        stats.paired_difference(strong, weak, y, "multi-class", paired_seeds=True)


def test_pairing_by_seed_counts_the_seeds_variation_once():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=(300, 1))
    skills = (0.0, 0.15, 0.3)  # the seed matters a lot: both sides share it
    a = [_probs(rng, y, k + 0.1, 3) for k in skills]
    groups = [[_probs(rng, y, k, 3) for _ in range(4)] for k in skills]
    by_seed = stats.paired_by_seed(a, groups, y, "multi-class", "auc", n_boot=600)
    flat = stats.paired_difference(a, [p for g in groups for p in g], y, "multi-class", "auc", n_boot=600)
    assert by_seed["diff"] == pytest.approx(flat["diff"]) and by_seed["n_seeds"] == [3, 12]
    width = lambda r: r["interval"][1] - r["interval"][0]  # noqa: E731
    assert width(by_seed) < width(flat) and by_seed["interval"][0] > 0
    with pytest.raises(ValueError, match="one group per seed"):
        stats.paired_by_seed(a, groups[:2], y, "multi-class")


def test_holm_steps_down_and_narrows_each_level_in_turn():
    boot = np.linspace(-1, 1, 101)
    family = [stats.summarise_bootstrap(0.0, boot + shift) for shift in (2.0, 0.97, 0.0)]
    ps = [r["p"] for r in family]
    stats.holm(family, alpha=0.05)
    assert [r["p_holm"] for r in family] == pytest.approx([3 * ps[0], max(3 * ps[0], 2 * ps[1]), 1.0])
    assert [r["above_margin"] for r in family] == [True, False, False]
    assert family[0]["level_holm"] == pytest.approx(1 - 0.05 / 3) and "boot" not in family[0]
    assert family[2]["level_holm"] == family[1]["level_holm"] == pytest.approx(1 - 0.05 / 2), "a failure keeps its level"
    assert all(r["interval_family"][0] <= r["interval_holm"][0] for r in family), "the family interval is the widest"


def test_after_a_failure_no_later_interval_clears_the_margin():
    def with_p(p, n=10000):  # bootstrap values whose doubled one-sided p against 0 is p
        below = int(round(p / 2 * n))
        return stats.summarise_bootstrap(1.0, np.r_[-np.ones(below), np.linspace(0.5, 1.5, n - below)])

    family = stats.holm([with_p(0.01), with_p(0.03), with_p(0.04)], alpha=0.05)
    assert [r["above_margin"] for r in family] == [True, False, False]
    assert family[2]["level_holm"] == pytest.approx(1 - 0.05 / 2), "it keeps the failing step's level"
    assert family[2]["interval_holm"][0] < 0, "at its own level 1 - 0.05 / 1 it would have cleared 0"


def test_the_verdict_rule_never_counts_missing_data_as_a_win():
    assert stats.verdict(True) == stats.SUPPORTED and stats.verdict(False, True) == stats.PARTLY
    assert stats.verdict(False, False) == stats.NOT and stats.verdict(None, True) == stats.MISSING
