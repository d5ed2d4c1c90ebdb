"""The experiments of notebook 04 against the slow path they replace: every number the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small, split
from xaiprune import stats, train
from xaiprune.pruning import comparison, prune, repairs

CRITERIA = ["lrp", "gradxact", "taylor", "l1", "random"]
RATIOS = [0.0, 0.3, 0.6]


@pytest.fixture(scope="module")
def setup():
    model, test = small(), split(48, seed=5)
    refs = [split(6, seed=s) for s in (1, 2)]
    return model, test, refs


def slow_row(model, test, criterion, ratio, ref, draw, **kwargs):
    """What the old per-ratio path computed: prune (rescoring) and train.evaluate at batch 64."""
    pruned, rep = prune.prune(model, criterion, ratio, reference=ref, seed=draw, input_shape=(1, 28, 28), **kwargs)
    return pruned, rep, train.evaluate(pruned, test)


def test_sweep_gives_the_numbers_of_pruning_and_evaluating_each_model(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    frame = comparison.sweep(model, test, CRITERIA, RATIOS, refs, progress=False, evaluator=ev, steps=2)
    assert len(frame) == (4 * len(refs) + 1) * len(RATIOS)  # l1 is deterministic: one draw
    for row in frame.itertuples():
        pruned, rep, ev_slow = slow_row(model, test, row.criterion, row.ratio, refs[row.draw], row.draw, steps=2)
        # the same numbers as train.evaluate (stats.endpoints: MedMNIST's ACC and AUC to float rounding)
        assert (row.acc, row.auc) == pytest.approx((ev_slow["acc"], ev_slow["auc"]), abs=1e-12)
        assert row.bal_acc == stats.endpoints(ev.y, ev.scores[row.model], ev.task)["bal_acc"]
        assert (row.macs, row.params, row.weight_bytes) == (rep.macs, rep.params, rep.weight_bytes)
        assert row.out_bytes == sum(list(rep.segment_out_bytes.values())[:-1])
        np.testing.assert_array_equal(ev.scores[row.model], train.predict(pruned, test.x, test.flag))


def test_each_distinct_model_is_evaluated_once(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    first = comparison.sweep(model, test, ["lrp", "l1"], RATIOS, refs, progress=False, evaluator=ev)
    n = len(ev.scores)
    again = comparison.sweep(model, test, ["lrp"], RATIOS, refs[:1], progress=False, evaluator=ev)
    assert len(ev.scores) == n  # the same draw again: nothing new to evaluate
    assert again["model"].tolist() == first.query("criterion == 'lrp' and draw == 0")["model"].tolist()
    assert first.query("ratio == 0")["model"].nunique() == 1  # the unpruned model, once for every criterion
    with pytest.raises(ValueError, match="another model"):
        comparison.sweep(small(), test, ["l1"], RATIOS, refs, progress=False, evaluator=ev)


def test_small_batches_and_cached_prefixes_give_the_same_probabilities(setup):
    """Batches of 7 (the last one short); segment inputs of the unpruned model reused: the same
    probabilities as running the whole pruned model on the same batches."""
    model, test, refs = setup
    ev = comparison.Evaluator(model, test, batch_size=7)
    frame = comparison.segment_sensitivity(model, test, [0.0, 0.5], refs[:1], "lrp", progress=False, evaluator=ev)
    assert sorted(ev._segment_inputs()) == [0, 1, 2]
    for row in frame.itertuples():
        pruned, _ = prune.prune_segment(model, row.segment, row.level, "lrp", reference=refs[0], seed=0)
        np.testing.assert_array_equal(ev.scores[row.model], train.predict(pruned, test.x, test.flag, batch_size=7))


def test_sensitivity_gives_the_numbers_of_prune_segment(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    levels = [0.0, 0.4, 0.8]
    frame = comparison.segment_sensitivity(model, test, levels, refs, "taylor", progress=False, evaluator=ev)
    assert len(frame) == len(refs) * len(model.segments) * len(levels)
    for row in frame.itertuples():
        pruned, rep = prune.prune_segment(model, row.segment, row.level, "taylor", reference=refs[row.draw], seed=row.draw)
        want = train.evaluate(pruned, test)
        assert (row.acc, row.bal_acc, row.auc) == pytest.approx((want["acc"], want["bal_acc"], want["auc"]), abs=1e-12)
        assert (row.macs, row.weight_bytes, row.peak_bytes, row.out_bytes) == (
            rep.segment_macs[row.segment], rep.segment_weight_bytes[row.segment],
            rep.segment_peak_bytes[row.segment], rep.segment_out_bytes[row.segment])
    l1 = comparison.segment_sensitivity(model, test, levels, refs, "l1", progress=False, evaluator=ev)
    assert set(l1["draw"]) == {0}  # data-free: one draw


def test_evaluate_runs_any_model_in_full(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    recal = repairs.reestimate_batchnorm(model, refs[0].x)
    got = ev.evaluate(recal)
    want = train.evaluate(recal, test)
    assert (got["acc"], got["bal_acc"], got["auc"]) == pytest.approx((want["acc"], want["bal_acc"], want["auc"]), abs=1e-12)
    assert ev.evaluate(recal)["model"] == got["model"] + 1  # never cached: a new id each time


def test_spread_is_zero_for_a_model_that_answers_every_image_alike(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    constant = ev.record(torch.tensor([[0.3, 1.7]]).repeat(len(test), 1))["model"]
    assert ev.spread(constant) == 0.0
    unpruned = ev.evaluate(model)["model"]
    probs = ev.scores[unpruned]
    assert ev.spread(unpruned) == pytest.approx(max(probs[:, 0].max() - probs[:, 0].min(), probs[:, 1].max() - probs[:, 1].min()))


def test_rankings_are_scored_once_per_criterion_and_reference_images(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    first = ev.ranking("taylor", refs[0], seed=0)
    same_images = split(6, seed=1)  # another Split object holding the same images and labels
    assert ev.ranking("taylor", same_images, seed=0) is first
    assert ev.ranking("taylor", refs[1], seed=0) is not first
    assert ev.ranking("taylor", refs[0], seed=0, scope="per-layer") is not first


def test_an_evaluator_on_another_split_shares_the_rankings_and_measures_its_own_images(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    val = split(30, seed=11)
    on_val = comparison.Evaluator(model, val, share=ev)
    assert on_val.graph is ev.graph and on_val.ranking("taylor", refs[0], seed=0) is ev.ranking("taylor", refs[0], seed=0)
    frame = comparison.sweep(model, val, ["taylor"], [0.5], refs[:1], progress=False, evaluator=on_val)
    pruned, _ = ev.ranking("taylor", refs[0], seed=0).prune(0.5)
    assert frame.loc[0, "auc"] == pytest.approx(train.evaluate(pruned, val)["auc"], abs=1e-12)
    with pytest.raises(ValueError, match="another model"):
        comparison.Evaluator(small(), val, share=ev)


def test_resampled_gives_every_endpoint_per_model_and_resample(setup):
    model, test, refs = setup
    ev = comparison.Evaluator(model, test)
    comparison.sweep(model, test, ["l1"], RATIOS, refs, progress=False, evaluator=ev)
    w = stats.resample_weights(len(test), 7, seed=1)
    res = ev.resampled(w)
    assert set(res) == {"acc", "bal_acc", "auc"} and res["auc"].shape == (len(ev.scores), 7)
    np.testing.assert_array_equal(res["bal_acc"][1], stats.weighted_endpoints(ev.y, ev.scores[1], ev.task, w)["bal_acc"])
    some = ev.resampled(w, [1])
    assert np.isnan(some["acc"][0]).all() and np.array_equal(some["acc"][1], res["acc"][1])
