"""The repairs of notebook 04 applied across a sweep: the cheap paths give the numbers of the slow ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small, split
from xaiprune import data, train
from xaiprune.pruning import comparison, repair_study, repairs

CRITERIA = ["lrp", "taylor", "l1"]
RATIOS = [0.0, 0.5]


@pytest.fixture(scope="module")
def study():
    model, test = small(), split(40, seed=5)
    refs = [split(6, seed=s) for s in (1, 2, 3)]
    unlabelled = split(24, seed=9).x
    ev = comparison.Evaluator(model, test)
    frame = repair_study.repair_sweep(ev, CRITERIA, RATIOS, refs, unlabelled, repair_draws=2, progress=False)
    return model, test, refs, unlabelled, ev, frame


def test_every_repair_criterion_draw_and_ratio_has_a_row(study):
    _, _, refs, _, _, frame = study
    counts = frame.groupby("repair").size()
    for repair in ("none", "recalibrate"):  # every draw, data-free L1 included
        assert counts[repair] == len(CRITERIA) * len(refs) * len(RATIOS)
    for repair in ("batchnorm", "compensate", "batchnorm+recalibrate", "compensate+recalibrate"):
        assert counts[repair] == len(CRITERIA) * 2 * len(RATIOS)
    assert set(frame.query("repair == 'recalibrate'")["labels"]) == {len(refs[0])}
    assert set(frame.query("repair == 'compensate'")["labels"]) == {0}
    assert set(frame.query("repair == 'batchnorm'")["unlabelled"]) == {24}
    assert frame["bal_acc"].between(0, 1).all()


def test_cheap_recalibration_equals_evaluating_the_recalibrated_copy(study):
    """The shift applied to stored test logits gives the probabilities of the refitted model run on the test split."""
    model, test, refs, _, ev, frame = study
    for row in frame.query("repair == 'recalibrate' and criterion == 'taylor'").itertuples():
        ranked = ev.ranking("taylor", refs[row.draw], seed=row.draw)
        pruned, _ = ranked.prune(row.ratio)
        fixed = repairs.recalibrate_decision(pruned, refs[row.draw])
        np.testing.assert_allclose(ev.scores[row.model], train.predict(fixed, test.x, test.flag), atol=1e-5)


def test_batchnorm_and_compensation_rows_are_the_repaired_models(study):
    model, test, refs, unlabelled, ev, frame = study
    for row in frame.query("repair in ('batchnorm', 'compensate') and criterion == 'lrp'").itertuples():
        ranked = ev.ranking("lrp", refs[row.draw], seed=row.draw)
        pruned, plan = ranked.prune(row.ratio)
        fixed = (repairs.reestimate_batchnorm(pruned, unlabelled) if row.repair == "batchnorm"
                 else repairs.compensate(ev.graph, plan, pruned, refs[row.draw]))
        np.testing.assert_allclose(ev.scores[row.model], train.predict(fixed, test.x, test.flag), atol=1e-5)


def test_compensation_leaves_the_unpruned_model_alone_and_batchnorm_says_how_far_it_moves_it(study):
    _, _, _, _, ev, frame = study
    moved = repair_study.unpruned_outputs(ev, frame).set_index("repair")["max_prob_change"]
    assert moved["none"] == 0 and moved["compensate"] < 1e-6
    assert moved["batchnorm"] > 1e-3  # other images' statistics: the unpruned model changes, and the table shows it


def test_choose_takes_the_highest_mean_balanced_accuracy_over_the_ratios_of_at_least_half(study):
    frame = study[-1]
    best, scores = repair_study.choose(frame)
    rows = frame[(frame["ratio"] >= 0.5) & (frame["repair"] != "none")]
    expected = rows.groupby(["repair", "criterion", "ratio"])["bal_acc"].mean().groupby("repair").mean()
    assert best == expected.idxmax() and scores.index[0] == best and "none" not in scores
    assert scores.to_dict() == pytest.approx(expected.to_dict())
    toy = pd.DataFrame({"repair": ["none", "batchnorm", "recalibrate", "batchnorm", "recalibrate"],
                        "criterion": "lrp", "ratio": [0.5, 0.5, 0.5, 0.3, 0.3], "bal_acc": [0.9, 0.6, 0.7, 0.99, 0.5]})
    assert repair_study.choose(toy)[0] == "recalibrate"  # none is no repair; the ratio 0.3 does not count
    with pytest.raises(ValueError, match="at least 0.5"):
        repair_study.choose(toy[toy["ratio"] < 0.5])


def test_which_measures_only_the_chosen_repair_with_the_same_numbers(study):
    model, test, refs, unlabelled, ev, frame = study
    only = repair_study.repair_sweep(ev, CRITERIA, RATIOS, refs, unlabelled, repair_draws=2, progress=False,
                                     which=("none", "batchnorm+recalibrate"))
    assert set(only["repair"]) == {"none", "batchnorm+recalibrate"}
    cols = ["repair", "criterion", "draw", "ratio", "acc", "bal_acc", "auc"]
    full = frame[frame["repair"].isin(["none", "batchnorm+recalibrate"])][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(only[cols].reset_index(drop=True), full)
    with pytest.raises(ValueError, match="which="):
        repair_study.repair_sweep(ev, CRITERIA, RATIOS, refs, unlabelled, 2, progress=False, which=("best",))


def test_unlabelled_images_are_checked_against_the_split():
    val = data.Split(x=torch.zeros(10, 1, 28, 28), y=torch.zeros(10, dtype=torch.long), flag="pneumoniamnist",
                     split="val", size=28)
    assert len(repair_study.unlabelled_images(val, 4)) == 4
    with pytest.raises(ValueError, match="unlabelled=11"):
        repair_study.unlabelled_images(val, 11)
    with pytest.raises(ValueError, match="repair_draws=4"):
        repair_study.repair_sweep(comparison.Evaluator(small(), split(8)), ["l1"], [0.0], [split(4)] * 3,
                                  val.x, repair_draws=4, progress=False)
