"""The verified answer: top-K level vectors by no-good cuts, the choice by measurement, the measurement cache."""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pytest
import torch

from conftest import small, split
from xaiprune import models, train
from xaiprune.planning import candidates, nlp, system
from xaiprune.pruning import prune


def same(measured: dict, evaluated: dict, **tol) -> bool:
    """The measurement agrees with :func:`xaiprune.train.evaluate` on every endpoint both report (balanced accuracy
    comes from :func:`xaiprune.stats.endpoints`, the one place probabilities become metrics)."""
    return {k: measured[k] for k in evaluated} == pytest.approx(evaluated, **tol)


def ranked_level_vectors(scenario, profiles) -> list[nlp.Result]:
    """Ground truth by enumeration: every feasible level vector with its best placement, best first."""
    found = [r for lv in itertools.product(range(profiles.L), repeat=profiles.S)
             if (r := nlp.solve_enumeration(scenario, profiles, fix_levels=list(lv))).plan is not None]

    def order(a, b):
        return -1 if nlp.better(a.key(profiles), b.key(profiles)) else int(nlp.better(b.key(profiles), a.key(profiles)))

    return sorted(found, key=functools.cmp_to_key(order))


@pytest.mark.parametrize("seed", range(8))
def test_no_good_cuts_give_the_k_best_distinct_level_vectors(seed):
    scenario, profiles = system.random_instance(3, 3, 3, seed=seed, tightness=[1.0, 3.0][seed % 2])
    k = 5
    found = candidates.top_candidates(scenario, profiles, k)
    truth = ranked_level_vectors(scenario, profiles)
    assert len(found) == min(k, len(truth))
    assert len({tuple(r.plan.levels) for r in found}) == len(found), "level vectors must be distinct"
    assert all(r.status == "optimal" for r in found)
    assert all(system.evaluate(r.plan, scenario, profiles).feasible for r in found)
    first = nlp.solve_milp(scenario, profiles)
    assert found[0].plan.levels == first.plan.levels and nlp.same(found[0].key(profiles), first.key(profiles))
    accuracy = [r.accuracy for r in found]
    assert all(b <= a + 1e-12 for a, b in zip(accuracy, accuracy[1:])), accuracy
    assert all(not nlp.better(b.key(profiles), a.key(profiles)) for a, b in zip(found, found[1:]))
    for r, t in zip(found, truth):  # the same keys as the enumeration's ranking, each with its best placement
        assert nlp.same(r.key(profiles), t.key(profiles)), (r.plan, t.plan)
        best = nlp.solve_enumeration(scenario, profiles, fix_levels=r.plan.levels)
        assert nlp.same(r.key(profiles), best.key(profiles))


def test_fewer_candidates_when_few_level_vectors_are_feasible():
    scenario, profiles = system.random_instance(2, 2, 3, seed=0, tightness=0.5)
    found = candidates.top_candidates(scenario, profiles, 20)
    assert len(found) == 9 == len(ranked_level_vectors(scenario, profiles))  # all 3^2 vectors, then no more
    assert found[0].plan.levels == [0, 0]
    scenario, profiles = system.random_instance(3, 3, 3, seed=1, tightness=40.0)  # one feasible vector only
    found = candidates.top_candidates(scenario, profiles, 4)
    assert [r.plan.levels for r in found] == [[2, 2, 2]] and len(ranked_level_vectors(scenario, profiles)) == 1


def test_an_infeasible_instance_gives_one_result_without_a_plan():
    scenario, profiles = system.random_instance(3, 3, 3, seed=0, tightness=40.0)
    found = candidates.top_candidates(scenario, profiles, 4)
    assert len(found) == 1 and found[0].plan is None and found[0].status == "infeasible"
    verified = candidates.choose(found, profiles, lambda levels: pytest.fail("nothing to measure"))
    assert verified.chosen is None and verified.result is found[0] and verified.measured == []


def test_the_verified_choice_is_the_best_measured_candidate():
    scenario, profiles = system.random_instance(3, 3, 3, seed=3, tightness=3.0)
    found = candidates.top_candidates(scenario, profiles, 4)
    assert len(found) == 4
    truth = {tuple(profiles.levels[l] for l in r.plan.levels): a for r, a in zip(found, [0.70, 0.74, 0.79, 0.72])}
    asked = []

    def fake(levels):
        asked.append(tuple(levels))
        return truth[tuple(levels)]

    verified = candidates.choose(found, profiles, fake)
    assert sorted(asked) == sorted(truth), "every candidate is measured once"
    assert verified.chosen == 2 and verified.result is found[2] and verified.optimum is found[0]
    assert verified.measured == [0.70, 0.74, 0.79, 0.72]
    tie = candidates.choose(found, profiles, lambda levels: 0.5)
    assert tie.chosen == 0, "a tie goes to the surrogate's better candidate"
    with pytest.raises(ValueError, match="finite"):
        candidates.choose(found, profiles, lambda levels: float("nan"))


def test_verify_is_top_candidates_then_choose():
    scenario, profiles = system.random_instance(3, 3, 3, seed=3, tightness=3.0)
    verified = candidates.verify(scenario, profiles, lambda levels: -sum(levels), k=3)
    pruning = [sum(profiles.levels[l] for l in r.plan.levels) for r in verified.candidates]
    assert len(verified.candidates) == 3 and verified.chosen == pruning.index(min(pruning))


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_a_bad_number_of_candidates_is_refused(k):
    scenario, profiles = system.random_instance(2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="k="):
        candidates.top_candidates(scenario, profiles, k)


def test_measurements_prune_once_per_plan_and_cache_by_plan(tmp_path):
    model, ref = small(), split(6, seed=1)
    splits = {"val": split(12, seed=2), "test": split(10, seed=3)}
    meas = candidates.Measurements(model, splits, ref, criterion="l1", seed=0, path=tmp_path / "m.json")
    levels = [0.5, 0.0, 0.25]
    got = meas.measure(levels, "val")
    scores = prune.criterion_scores(model, "l1", ref)
    direct = train.evaluate(prune.prune_with_scores(model, dict(zip(model.segments, levels)), scores), splits["val"])
    assert set(got) == {"acc", "bal_acc", "auc"} and same(got, direct)
    assert meas.measure(levels, "val") is got and meas.pruned == 1, "a cached plan is not pruned again"
    meas.measure(levels, "test")
    assert meas.pruned == 1, "a kept pruned model serves another split"
    meas.measure([0.0, 0.5, 0.0], "val")
    assert meas.pruned == 2 and len(meas.cache) == 3
    assert meas.metric("val", "acc")(levels) == got["acc"]
    keys = [json.loads(k) for k in meas.cache]
    assert {k["split"] for k in keys} == {"val", "test"} and {k["model"] for k in keys} == {meas.model_id}
    again = candidates.Measurements(model, splits, ref, criterion="l1", seed=0, path=tmp_path / "m.json")
    assert again.cache == meas.cache and again.measure(levels, "test") == meas.cache[meas.key(levels, "test")]
    assert again.pruned == 0, "measurements read from the JSON file are not redone"
    old = {k: {"acc": v["acc"], "auc": v["auc"]} for k, v in meas.cache.items()}  # a cache from before balanced accuracy
    (tmp_path / "old.json").write_text(json.dumps([{"key": k, "metrics": v} for k, v in old.items()]))
    older = candidates.Measurements(model, splits, ref, criterion="l1", seed=0, path=tmp_path / "old.json")
    assert older.measure(levels, "val") == got and older.pruned == 1, "an entry lacking an endpoint is measured again"
    few = candidates.Measurements(model, splits, ref, criterion="l1", keep=1)
    few.measure(levels, "val"), few.measure([0.0, 0.5, 0.0], "val"), few.measure(levels, "test")
    assert few.pruned == 3, "beyond `keep` models, a plan is pruned again"
    for other in (candidates.Measurements(model, splits, ref, criterion="lrp", seed=0),
                  candidates.Measurements(model, splits, ref, criterion="l1", seed=1),
                  candidates.Measurements(model, splits, ref, criterion="l1", scoring="rescored")):
        assert other.key(levels, "val") != meas.key(levels, "val")


@pytest.mark.parametrize("levels", [[0.0, 0.5, 0.25], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.25, 0.0, 0.0]])
@pytest.mark.parametrize("cache_bytes", [512 * 2**20, 1])
def test_evaluation_from_the_first_pruned_segment_is_the_full_evaluation(levels, cache_bytes, monkeypatch):
    model, ref, val = small(), split(6, seed=1), split(40, seed=2)
    monkeypatch.setattr(candidates.Measurements, "CACHE_BYTES", cache_bytes)  # 1: only the image is cached
    meas = candidates.Measurements(model, {"val": val}, ref, criterion="lrp", batch_size=16)
    got = meas.measure(levels, "val")
    assert same(got, train.evaluate(meas.pruned_model(levels), val), abs=1e-9)
    assert sorted(meas._inputs["val"]) == ([0, 1, 2] if cache_bytes > 1 else [0])


def test_rescored_measurements_are_prune_plans_models():
    model, ref, val = small(), split(6, seed=1), split(12, seed=2)
    meas = candidates.Measurements(model, {"val": val}, ref, criterion="lrp", scoring="rescored")
    levels = [0.5, 0.25, 0.5]
    direct = prune.prune_plan(model, dict(zip(model.segments, levels)), "lrp", reference=ref)
    assert same(meas.measure(levels, "val"), train.evaluate(direct, val))
    assert [c.out_channels for c in models.conv_layers(meas.pruned_model(levels)).values()] == \
        [c.out_channels for c in models.conv_layers(direct).values()]


def test_a_plan_pruning_one_segment_is_the_sensitivity_tables_model():
    model, ref, val = small(), split(6, seed=1), split(12, seed=2)
    meas = candidates.Measurements(model, {"val": val}, ref, criterion="lrp")  # fixed scores
    alone, _ = prune.prune_segment(model, "block2", 0.5, "lrp", reference=ref)
    mine = meas.pruned_model([0.0, 0.5, 0.0])
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(), mine.state_dict().values()))
    assert same(meas.measure([0.0, 0.5, 0.0], "val"), train.evaluate(alone, val))


def test_checkpoint_identity_follows_the_weights():
    a, b = small(), small()
    assert candidates.weights_id(a) == candidates.weights_id(b)
    next(b.parameters()).data[0] += 1e-3
    assert candidates.weights_id(a) != candidates.weights_id(b)


def test_measurements_refuse_bad_plans_and_splits():
    model = small()
    meas = candidates.Measurements(model, {"val": split(4)}, split(4), criterion="l1")
    with pytest.raises(ValueError, match="one level per segment"):
        meas.key([0.1, 0.2], "val")
    with pytest.raises(ValueError, match="split='test'"):
        meas.key([0.1, 0.2, 0.0], "test")
    assert meas.metric("val", "bal_acc") is not None
    with pytest.raises(ValueError, match="metric='f1'"):
        meas.metric("val", "f1")
    with pytest.raises(ValueError, match="scoring='exact'"):
        candidates.Measurements(model, {"val": split(4)}, split(4), scoring="exact")


def test_the_design_spreads_plans_over_pruning_and_over_the_surrogates_range():
    _, profiles = system.random_instance(5, 3, 10, seed=0)
    plans = candidates.design(profiles, n_plans=30, seed=0)
    assert len(plans) == 30 and len(set(plans)) == 30
    assert plans[:10] == [tuple([l] * 5) for l in range(10)]  # uniform: the whole pruning range
    low, high = profiles.accuracy([9] * 5), profiles.base_accuracy
    predicted = [profiles.accuracy(list(p)) for p in plans[10:]]
    step = (high - low) / 19
    for target, a in zip(np.linspace(low, high, 20), predicted):  # each target met within a step
        assert abs(a - target) <= step, (target, a)
    assert candidates.design(profiles, 30, seed=0) == plans and candidates.design(profiles, 30, seed=1) != plans
    with pytest.raises(ValueError, match="n_plans=0"):
        candidates.design(profiles, 0)


def test_a_small_grid_is_designed_whole():
    _, profiles = system.random_instance(3, 3, 3, seed=0)
    plans = candidates.design(profiles, n_plans=30, seed=0)
    assert sorted(plans) == sorted(itertools.product(range(3), repeat=3))
    assert [sum(p) for p in plans] == sorted(sum(p) for p in plans)
    _, profiles = system.random_instance(2, 3, 6, seed=0)  # 36 vectors: 30 of them, all distinct
    plans = candidates.design(profiles, n_plans=30, seed=0)
    assert len(plans) == len(set(plans)) == 30


def test_a_given_first_result_is_not_solved_again(monkeypatch):
    scenario, profiles = system.random_instance(3, 3, 3, seed=3, tightness=3.0)
    first = nlp.solve_milp(scenario, profiles)
    expected = [r.plan.levels for r in candidates.top_candidates(scenario, profiles, 3)]
    monkeypatch.setattr(nlp, "solve_milp", lambda *a, **k: pytest.fail("the first result was solved again"))
    found = candidates.top_candidates(scenario, profiles, 3, first=first)
    assert found[0] is first and [r.plan.levels for r in found] == expected
