"""The helpers notebooks 01-04 call instead of defining them: figures, 04's summaries, sentences and metrics."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import small, split  # noqa: E402
from xaiprune import data, figures, stats  # noqa: E402
from xaiprune.pruning import comparison, plots, repair_study, summaries  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def shown(ax) -> int:
    return len(ax.get_images())


def test_montage_shows_up_to_per_row_images_of_each_class_seeded():
    images = split(7)  # labels 0, 1, 0, 1, 0, 1, 0: four of class 0, three of class 1
    fig = figures.montage(images, ["a", "b"], per_row=4, seed=3, show=False)
    rows = np.array(fig.axes).reshape(2, 4)
    assert [sum(shown(ax) for ax in row) for row in rows] == [4, 3]
    again = figures.montage(images, ["a", "b"], per_row=4, seed=3, show=False)
    first = [ax.get_images()[0].get_array() for ax in fig.axes if shown(ax)]
    second = [ax.get_images()[0].get_array() for ax in again.axes if shown(ax)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    np.testing.assert_allclose(figures.to_image(torch.full((1, 2, 2), -1.0)), np.zeros((2, 2)))


def test_relevance_grid_puts_each_image_beside_its_maps():
    x = torch.zeros(4, 1, 5, 5)
    heat = {"epsilon": torch.randn(4, 5, 5), "composite": torch.randn(4, 5, 5)}
    fig = figures.relevance_grid(x, heat, [f"image {i}" for i in range(4)], per_row=2, show=False)
    assert len(fig.axes) == 2 * 3 * 2 and sum(shown(ax) for ax in fig.axes) == 4 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image 0", "epsilon", "composite"]


def test_bands_draw_one_line_per_group_and_clip_to_the_metric_range():
    summary = pd.DataFrame({"ratio": [0.0, 0.5] * 2, "criterion": ["a", "a", "b", "b"],
                            "mean": [0.9, 0.8, 0.9, 0.5], "lo": [0.8, -0.2, 0.85, 0.4], "hi": [1.1, 0.9, 0.95, 0.6]})
    fig, ax = plt.subplots()
    figures.bands(summary, "ratio", "criterion", ax, baseline=0.9, value="acc")
    lines = [line for line in ax.get_lines() if line.get_label() in ("a", "b")]
    assert [line.get_label() for line in lines] == ["a", "b"]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() >= 0 and band.max() <= 1 and ax.get_ylabel() == "test ACC"


@pytest.mark.parametrize("ratios, expected", [
    ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], [0.3, 0.5, 0.7]),  # the default profile: as before
    ([0.0, 0.3, 0.6], [0.3, 0.6]),  # the smoke profile: every pruned ratio
    ([0.5, 0.0], [0.5]),
    ([0.0, 0.2, 0.4, 0.6, 0.8], [0.4, 0.6, 0.8]),
    ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.3, 0.4]),
])
def test_summaries_show_the_profiles_own_ratios(ratios, expected):
    assert summaries.summary_ratios(ratios) == expected


def two_ratio_sweep() -> tuple[pd.DataFrame, dict]:
    """lrp (two draws) and l1 (one) at ratios 0 and 0.5, with a bootstrap that gives every model its own value."""
    rows = [("lrp", 0, 0.0, 0.9), ("lrp", 1, 0.0, 0.9), ("lrp", 0, 0.5, 0.8), ("lrp", 1, 0.5, 0.7),
            ("l1", 0, 0.0, 0.9), ("l1", 0, 0.5, 0.6)]
    frame = pd.DataFrame([{"criterion": c, "draw": d, "ratio": r, "acc": v, "bal_acc": v - 0.1, "auc": v, "model": i}
                          for i, (c, d, r, v) in enumerate(rows)])
    res = {k: np.repeat(frame[[k]].to_numpy(), 3, axis=1) for k in ("acc", "bal_acc", "auc")}
    return frame, res


def test_summary_table_has_every_criterion_at_the_chosen_ratios():
    frame, res = two_ratio_sweep()
    table = summaries.summary_table(frame, res, "draws", [0.5])
    assert list(table.columns) == [("AUC", 0.5), ("balanced acc", 0.5), ("ACC", 0.5)] and set(table.index) == {"lrp", "l1"}
    ci = stats.intervals(frame[frame["ratio"] == 0.5], res, "acc").set_index("criterion").loc["lrp"]
    assert table.loc["lrp", ("ACC", 0.5)] == f"0.750 [{ci['lo_draws']:.3f}, {ci['hi_draws']:.3f}]"
    assert table.loc["l1", ("AUC", 0.5)] == "0.600 [0.600, 0.600]"
    assert table.loc["l1", ("balanced acc", 0.5)] == "0.500 [0.500, 0.500]"
    with pytest.raises(ValueError, match="source"):
        summaries.summary_table(frame, res, "test", [0.5])


def test_verdict_sentences_come_from_the_verdicts():
    frame, res = two_ratio_sweep()
    winners = stats.xai_against_baselines(frame, "auc", res) + stats.xai_against_baselines(frame, "acc", res)
    assert "best XAI lrp 0.750" in summaries.verdict_lines(winners, "m", [0.5])
    assert summaries.verdict_lines(winners, "m", [0.3]) == ""
    auc = [v for v in winners if v["metric"] == "auc"]
    n = {o: sum(v["outcome"] == o for v in auc) for o in ("XAI better", "baseline better", "tie")}
    assert (f"m, test AUC over 1 pruning ratios: the best XAI criterion is better than the best baseline at "
            f"{n['XAI better']}, worse at {n['baseline better']}, and indistinguishable") in summaries.verdict_counts(winners, "m")
    assert "Exploratory (decides nothing): the best of 1 XAI criteria (lrp) against the best of 2 baselines (l1, random)" in \
        summaries.verdict_field(["lrp", "l1", "random"])


def test_decision_collapse_finds_where_acc_reaches_the_majority_rate():
    frame, _ = two_ratio_sweep()
    table = summaries.decision_collapse(frame, majority=0.62).set_index("criterion")
    assert table.loc["l1", "first_ratio"] == 0.5 and table.loc["l1", "auc"] == 0.6
    assert np.isnan(table.loc["lrp", "first_ratio"]) and table.loc["lrp", "unpruned_auc"] == 0.9
    text = summaries.collapse_sentences(table.reset_index(), 0.62)
    assert "l1: mean test ACC first at or below the majority-class rate (0.620, +0.01) at 50% pruned" in text
    assert "lrp: mean test ACC stays above" in text


def test_collapsed_models_are_counted_by_their_spread():
    frame, _ = two_ratio_sweep()
    text = summaries.collapsed_models(frame, lambda m: 0.0 if m == 5 else 0.3, "m")
    assert text.startswith("m: 1 of 3 pruned") and "l1 0.5" in text
    assert summaries.collapsed_models(frame, lambda m: 0.3, "m").startswith("m: 0 of 3 pruned")


def test_metrics_keep_their_keys():
    frame, _ = two_ratio_sweep()
    m = summaries.sweep_metrics(frame, ["lrp", "l1"], [0.0, 0.5])
    assert m["lrp"]["0.5"] == {"acc": 0.75, "bal_acc": 0.65, "auc": 0.75} and set(m["l1"]) == {"0.0", "0.5"}
    repaired = pd.concat([frame.assign(repair=r) for r in ("none", "batchnorm")], ignore_index=True)
    out = summaries.repair_metrics(repaired)
    assert set(out) == {"none", "batchnorm"} and set(out["batchnorm"]["lrp"]) == {"0.0", "0.5"}
    assert out["none"]["l1"]["0.5"] == {"acc": 0.6, "bal_acc": 0.5, "auc": 0.6}


def test_repair_tables_and_lines_come_from_the_frames():
    frame, _ = two_ratio_sweep()
    repaired = pd.concat([frame.assign(repair=r) for r in ("none", "batchnorm")], ignore_index=True)
    table = summaries.endpoint_table(repaired, ("repair", "criterion"))
    assert table.loc[("none", "lrp"), ("AUC", 0.5)] == 0.75 and table.loc[("none", "l1"), ("balanced acc", 0.5)] == 0.5
    ranks = summaries.rank_table(repaired, "bal_acc")
    assert ranks.loc["lrp", "batchnorm"] == "0.65 (1)" and ranks.loc["l1", "none"] == "0.5 (2)"
    result = {"primary": "lrp", "baseline": "l1", "ratio": 0.5, "metric": "bal_acc", "diff": 0.15,
              "interval_holm": [0.05, 0.25], "above_margin": True}
    lines = summaries.repair_lines([result], frame, "batchnorm", 0)
    assert lines.splitlines() == ["batchnorm (chosen on validation; 0 labelled images), on test:",
                                  "  50% pruned, lrp minus l1: balanced acc +0.150 [+0.050, +0.250] Holm, above 0 "
                                  "(AUC 0.750 vs 0.600, ACC 0.750 vs 0.600)"]


def test_check_sweep_names_what_fails():
    frame, res = two_ratio_sweep()
    frame = frame.assign(macs=np.where(frame["ratio"] > 0, 5, 10))
    sens = pd.DataFrame({"segment": ["s1", "s2"]})
    summaries.check_sweep(frame, res, sens, ["s1", "s2"])
    with pytest.raises(AssertionError, match="FLOPs must not grow"):
        summaries.check_sweep(frame.assign(macs=np.where(frame["ratio"] > 0, 20, 10)), res, sens, ["s1", "s2"])
    with pytest.raises(AssertionError, match="every segment"):
        summaries.check_sweep(frame, res, sens, ["s1", "s2", "s3"])


def test_reference_study_is_the_sweep_of_each_setting():
    model, test = small(), split(24, seed=5)
    val = split(40, seed=7)
    ev = comparison.Evaluator(model, test)
    study = comparison.reference_study(ev, val, ["taylor", "l1"], [0.3], sizes=[1, 2], draws=2, n_per_class=2,
                                       bias=0.9, seed=4)
    assert list(dict.fromkeys(study["reference"])) == ["1/class", "2/class", "biased 0.9"]
    biased = [data.reference_set(val, n_per_class=2, seed=4 + k, bias=data.skewed_fractions(2, 0.9)) for k in range(2)]
    alone = comparison.sweep(model, test, ["taylor", "l1"], [0.3], biased, progress=False, evaluator=ev)
    rows = study[study["reference"] == "biased 0.9"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[alone.columns], alone)
    assert (rows["n_per_class"] == 2).all() and (study.query("reference == '1/class'")["n_per_class"] == 1).all()


def test_the_figures_of_04_draw_from_the_frames():
    frame, res = two_ratio_sweep()
    frame = frame.assign(macs=10, params=10, out_bytes=10)
    assert len(plots.cost_figure(frame, "m", show=False).axes) == 3
    study = frame.assign(arch="m", reference="1/class", n_per_class=1)
    assert len(plots.reference_size_figure(study, "m", [0.5], show=False).axes) == 1
    repaired = pd.concat([frame.assign(repair=r, labels=0) for r in repair_study.REPAIRS], ignore_index=True)
    fig = plots.repair_figure(repaired, res, "batchnorm", "m", show=False)
    assert fig.axes[2].get_title().startswith("batchnorm (chosen)") and fig.axes[0].get_ylabel() == "validation balanced accuracy"
    assert len(plots.sweep_figure(frame, res, "m", 40, show=False).axes) == 3


def test_ratio_keys_keep_one_decimal_ratios_as_before_and_two_decimal_ratios_whole():
    assert [summaries.ratio_key(r) for r in (0.0, 0.1, 0.30000000000000004, 0.25, 0.125)] == ["0.0", "0.1", "0.3", "0.25", "0.125"]
    frame = pd.DataFrame({"criterion": ["l1"] * 4, "ratio": [0.0, 0.0, 0.25, 0.25], "acc": [0.9, 0.8, 0.7, 0.6],
                          "bal_acc": [0.9, 0.8, 0.5, 0.5], "auc": [0.95, 0.85, 0.75, 0.65]})
    m = summaries.sweep_metrics(frame, ["l1"], [0.0, 0.25])
    assert list(m["l1"]) == ["0.0", "0.25"] and m["l1"]["0.25"] == {"acc": 0.65, "bal_acc": 0.5, "auc": 0.7}
