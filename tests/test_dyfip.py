"""DyFiP (notebook 08): sub-networks against the zeroed full tail, subset scores, the exit rule, FLOPs, bad settings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from xaiprune import data, models
from xaiprune.dyfip import core as dyfip, analysis as dyfip_analysis, subnets
from xaiprune.pruning import xai
from xaiprune.study import parameters, pipeline
from xaiprune.study.schema import ParameterError
from conftest import small

N_CLASSES = 5


def five_class_cnn() -> models.SegmentedModel:
    """small_cnn for 5 RGB classes with non-trivial BatchNorm statistics and affine parameters, as after training."""
    return small(3, N_CLASSES)


def random_relevance(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = {name: torch.rand(N_CLASSES, conv.out_channels, generator=gen) for name, conv in models.conv_layers(model).items()}
    return {name: r / r.sum(1, keepdim=True) for name, r in rows.items()}


def tail_of(model, block=1):
    prefix, tail = subnets.split_model(model, block)
    with torch.no_grad():
        shape = tuple(prefix(torch.zeros(1, 3, 28, 28)).shape[1:])
    return prefix, tail, shape


def test_a_cached_subnetwork_gives_the_logits_of_the_full_tail_with_the_same_filters_zeroed():
    model = five_class_cnn()
    _, tail, shape = tail_of(model)
    relevance = random_relevance(model)
    builder = subnets.SubnetBuilder(tail, shape)
    cache = subnets.SubnetCache(lambda s: builder.build(builder.plan(subnets.subset_scores(relevance, s), 0.5)), 2)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    for s in [(0, 3), (1, 2), (0, 3)]:
        sub = cache.get(s)
        plan = builder.plan(subnets.subset_scores(relevance, s), 0.5)
        removed = builder.removed_filters(plan)
        assert {layer: len(idx) for layer, idx in removed.items()} == {"segments.block2.0": 16, "segments.block3.0": 32}
        assert [c.out_channels for c in models.conv_layers(sub).values()] == [16, 32]  # physically smaller
        masked = subnets.masked_model(tail, removed)
        with torch.no_grad():
            got, want, full = sub(x), masked(x), tail(x)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
        assert not torch.allclose(got, full, atol=1e-3)  # the zeroing matters: this is not the unpruned tail
    assert (cache.hits, cache.misses) == (1, 2)
    assert [c.out_channels for c in models.conv_layers(tail).values()] == [32, 64]  # the original tail is untouched


def test_the_filters_kept_are_the_best_by_the_subset_score():
    model = five_class_cnn()
    _, tail, shape = tail_of(model)
    relevance = random_relevance(model, seed=3)
    builder = subnets.SubnetBuilder(tail, shape)
    scores = subnets.subset_scores(relevance, (2, 4))
    removed = builder.removed_filters(builder.plan(scores, 0.25))
    for layer in models.conv_layers(tail):
        s = scores[layer]
        kept = sorted(set(range(len(s))) - set(removed[layer]))
        assert kept == sorted(torch.topk(s, round(0.25 * len(s))).indices.tolist())


@pytest.mark.parametrize("aggregate", ["max", "sum"])
def test_subset_scores_are_monotone_in_the_candidate_set(aggregate):
    relevance = random_relevance(five_class_cnn(), seed=5)
    for c in range(N_CLASSES):
        single = subnets.subset_scores(relevance, (c,), aggregate)
        assert all(torch.equal(single[layer], relevance[layer][c]) for layer in relevance)
    subsets = [s for r in range(1, N_CLASSES + 1) for s in itertools.combinations(range(N_CLASSES), r)]
    scores = {s: subnets.subset_scores(relevance, s, aggregate) for s in subsets}
    for small_set in subsets:  # adding one class never lowers a score (so, by induction, no superset does)
        for c in set(range(N_CLASSES)) - set(small_set):
            big_set = tuple(sorted((*small_set, c)))
            assert all((scores[small_set][layer] <= scores[big_set][layer]).all() for layer in relevance), (small_set, c)
            assert any((scores[small_set][layer] < scores[big_set][layer]).any() for layer in relevance)
    with pytest.raises(ValueError, match="aggregate='mean'"):
        subnets.subset_scores(relevance, (0,), "mean")


def test_exit_rule_candidates_and_logit_restriction_on_hand_made_inputs():
    probs = torch.tensor([[0.95, 0.03, 0.02, 0.0], [0.5, 0.3, 0.2, 0.0], [0.9, 0.05, 0.05, 0.0],
                          [1.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    probs[3, 1:] = torch.tensor([1e-8, 0.0, 0.0])  # still exactly 1.0 at the top in float32: a saturated softmax
    assert dyfip.exits(probs, 0.9).tolist() == [True, False, True, True, False]
    assert dyfip.exits(probs, np.float64(0.5)).tolist() == [True, True, True, True, False]
    assert not dyfip.exits(probs, 1.0).any()  # 1.0 never exits, even for a saturated probability
    assert dyfip.candidate_sets(probs, 2) == [(0, 1), (0, 1), (0, 1), (0, 1), (2, 3)]
    y = torch.tensor([0, 2, 3, 0, 3])
    assert dyfip.oracle_sets(probs, y, 2) == [(0, 1), (0, 2), (0, 3), (0, 1), (2, 3)]
    assert dyfip.topk_recall(probs, y, 2) == pytest.approx(3 / 5)
    logits = torch.tensor([[1.0, 5.0, 3.0, 0.0], [2.0, 1.0, 0.0, 9.0]])
    restricted = dyfip.restrict(logits, [(0, 2), (0, 1)])
    assert restricted.argmax(1).tolist() == [2, 0]
    soft = torch.softmax(restricted, 1)
    assert soft[0, 1] == 0 and soft[1, 3] == 0 and torch.allclose(soft.sum(1), torch.ones(2))
    assert torch.equal(restricted[0, [0, 2]], logits[0, [0, 2]])


def test_flops_of_a_subnetwork_fall_with_keep():
    model = five_class_cnn()
    _, tail, shape = tail_of(model)
    builder = subnets.SubnetBuilder(tail, shape)
    scores = subnets.subset_scores(random_relevance(model), (0, 1))
    macs = [builder.macs(builder.build(builder.plan(scores, keep))) for keep in (1.0, 0.8, 0.5, 0.25, 0.05)]
    assert macs[0] == builder.full_macs == subnets.macs(tail, shape)
    assert all(a > b for a, b in zip(macs, macs[1:])), macs
    assert builder.plan(scores, 1.0) == ()  # keep 1 removes nothing


@pytest.mark.parametrize("change,match", [
    ({"k": 0}, "k=0"), ({"k": 5}, "k=5: expected 1 <= k < 5"), ({"keep": 0.0}, "keep=0.0"), ({"keep": 1.5}, "keep=1.5"),
    ({"tau_exit": 0.0}, "tau_exit=0.0"), ({"branch_block": 0}, "branch_block=0"),
    ({"branch_block": 3}, "branch_block=3: expected 1 <= branch_block < 3"),
    ({"flag": "breastmnist"}, "dyfip_flag='breastmnist'.*top-k of 2 classes prunes nothing"),
    ({"flag": "chestmnist"}, "dyfip_flag='chestmnist'.*multi-label"),
])
def test_bad_settings_are_refused_by_the_library_naming_the_parameter(change, match):
    setting = {"flag": "retinamnist", "size": 28, "n_segments": 3, "k": 2, "keep": 0.5, "tau_exit": 0.9, "branch_block": 1}
    with pytest.raises(ValueError, match=match):
        dyfip.check_setting(**{**setting, **change})


@pytest.mark.parametrize("change,match", [
    ({"k": 0}, "08_dyfip: k=0: expected a value in [1, inf)"),
    ({"k": 5}, "08_dyfip: k=5: expected 1 <= k < 5, the number of classes of dyfip_flag='retinamnist'"),
    ({"keep": 0.0}, "08_dyfip: keep=0.0: expected a value in (0, 1]"),
    ({"keep": 1.01}, "08_dyfip: keep=1.01: expected a value in (0, 1]"),
    ({"keeps": [0.5, 0.0]}, "08_dyfip: keeps=[0.5, 0.0]: expected every element a value in (0, 1]"),
    ({"branch_block": 5}, "08_dyfip: branch_block=5: expected 1 <= branch_block < 5, the segments of archs[0]='vgg16_bn'"),
    ({"archs": ["small_cnn"], "branch_block": 3}, "branch_block=3: expected 1 <= branch_block < 3"),
    ({"dyfip_flag": "breastmnist"}, "08_dyfip: dyfip_flag='breastmnist': expected a single-label 2D MedMNIST flag with more than 2"),
    ({"dyfip_flag": "pneumoniamnist"}, "dyfip_flag='pneumoniamnist'"),
    ({"dyfip_flag": "chestmnist"}, "chestmnist is multi-label"),
    ({"bn_refresh": "some"}, "bn_refresh='some'"),
])
def test_bad_settings_are_refused_by_the_schema(change, match):
    with pytest.raises(ParameterError) as err:
        parameters.validate("08_dyfip", {**parameters.defaults("08_dyfip"), **change})
    assert match in str(err.value)


def test_a_binary_flag_fails_the_pipeline_check_before_any_notebook_runs(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was executed although the parameters were invalid")

    monkeypatch.setattr(pipeline.pm, "execute_notebook", refuse)
    assert pipeline.main(["--check", "--profile", "default", "-p", "08_dyfip.dyfip_flag=breastmnist"]) == 2
    assert "08_dyfip: dyfip_flag='breastmnist': expected a single-label" in capsys.readouterr().err
    # the study's binary flag does not reach notebook 08: its own flag keeps its value
    steps = pipeline.plan(pipeline.discover(), pipeline.load_profile("default"), ["flag=breastmnist"])
    assert {s.stem: s.parameters for s in steps}["08_dyfip"]["dyfip_flag"] == "retinamnist"


def test_names_repeated_in_the_schema_agree_with_the_library():
    assert set(parameters.XAI_METHODS) == set(xai.METHODS)
    assert parameters.SEGMENTS == {a: len(models.build(a, 1, 2).segments) for a in models.ARCHS}
    assert parameters.multiclass_flags_2d() == [f for f in data.flags_2d() if dyfip.multiclass(f)]
    assert "retinamnist" in parameters.multiclass_flags_2d() and "breastmnist" not in parameters.multiclass_flags_2d()


def val_split(counts: list[int]) -> data.Split:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2).clone()
    return data.Split(x=x, y=y, flag="retinamnist", split="val", size=28)


def test_reference_sets_are_capped_at_a_class_share_and_the_cap_is_reported():
    val = val_split([30, 12, 20, 8, 3])
    ref, caps = dyfip.capped_reference_set(val, 10, seed=4)
    assert torch.bincount(ref.y, minlength=5).tolist() == [10, 10, 10, 8, 3]
    assert caps[3] == {"asked": 10, "available": 8, "drawn": 8} and caps[0]["drawn"] == 10
    again, _ = dyfip.capped_reference_set(val, 10, seed=4)
    assert torch.equal(again.x, ref.x)  # seeded
    assert len(set(ref.x[:, 0, 0, 0].tolist())) == len(ref)  # no image twice
    with pytest.raises(ValueError, match="validation split"):
        dyfip.capped_reference_set(data.Split(val.x, val.y, "retinamnist", "test", 28), 10)


def test_the_lru_cache_drops_the_least_recently_used_subnetwork():
    built = []
    cache = subnets.SubnetCache(lambda key: built.append(key) or nn.Linear(2, 2), capacity=2)
    for key in ["a", "b", "a", "c", "b", "a"]:
        cache.get(key)
    assert built == ["a", "b", "c", "b", "a"]  # b dropped by c (a was used more recently), then a dropped by b
    assert (cache.hits, cache.misses) == (1, 5) and cache.hit_rate == pytest.approx(1 / 6)
    assert list(cache.entries) == ["b", "a"] and len(cache.build_seconds) == 5
    with pytest.raises(ValueError, match="capacity=0"):
        subnets.SubnetCache(lambda k: None, 0)


def test_the_branch_learns_separable_features_deterministically():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % N_CLASSES
    x = torch.randn(200, 8, 3, 3, generator=gen) * 0.5
    x[torch.arange(200), y] += 3.0  # class c lights up channel c
    heads = [dyfip.train_branch(x[:150], y[:150], x[150:], y[150:], N_CLASSES, width=16, epochs=15, seed=1, lr=1e-2)
             for _ in range(2)]
    (head, history), (other, _) = heads
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), other.state_dict().values()))
    with torch.no_grad():
        acc = (head(x[150:]).argmax(1) == y[150:]).float().mean()
    assert acc > 0.9 and len(history) == 15 and not head.training


def tiny_engine() -> tuple[models.SegmentedModel, data.Split, dyfip.Engine]:
    """An engine on the five-class small_cnn, an untrained branch, random relevance and random images."""
    model = five_class_cnn()
    gen = torch.Generator().manual_seed(2)
    test = data.Split(x=torch.randn(40, 3, 28, 28, generator=gen), y=torch.arange(40) % N_CLASSES,
                      flag="retinamnist", split="test", size=28)
    ref = data.Split(x=torch.randn(15, 3, 28, 28, generator=gen), y=torch.arange(15) % N_CLASSES,
                     flag="retinamnist", split="val", size=28)
    _, _, shape = tail_of(model)
    branch = dyfip.BranchHead(shape[0], N_CLASSES, 8).eval()
    return model, test, dyfip.Engine(model, 1, branch, random_relevance(model), ref, test, seed=0)


def test_the_engine_on_a_tiny_model_agrees_with_itself():
    """keep=1 and no refresh is the full tail restricted to the candidates; static keep=1 is the full model;
    serving one image at a time gives the batched answers; a matched static model costs no more than DyFiP."""
    model, test, engine = tiny_engine()
    with torch.no_grad():
        assert torch.allclose(engine.full_logits, model(test.x), atol=1e-5)
    curve = engine.curve(2, [0.5, 1.0], [0.2, 1.0], ["none", "candidates"])
    full = engine.metrics(engine.full_restricted(2, 1.0))
    at_one = curve.query("policy == 'dyfip' and refresh == 'none' and keep == 1.0 and tau_exit == 1.0").iloc[0]
    assert at_one["acc"] == full["acc"] and at_one["mean_flops_ratio"] == pytest.approx(full["mean_flops_ratio"])
    static_one = curve.query("policy == 'static_l1' and refresh == 'none' and keep == 1.0").iloc[0]
    assert static_one["acc"] == engine.metrics(engine.exit_only(1.0))["acc"]
    half = curve.query("policy == 'dyfip' and refresh == 'candidates' and keep == 0.5 and tau_exit == 1.0").iloc[0]
    assert half["mean_flops_ratio"] < at_one["mean_flops_ratio"] and half["exit_rate"] == 0
    budget = half["mean_flops_ratio"] * engine.full_macs
    kp = engine.matched_keep(budget)
    assert engine.static_macs("l1", kp) <= budget < engine.static_macs("l1", min(1.0, kp + 2 ** -9))
    assert engine.static_macs("xai_total", kp) == engine.static_macs("l1", kp)  # FLOPs: how many filters, not which
    served = dyfip.stream(engine, 2, 0.5, 1.0, "candidates", capacity=3, n_images=12)
    batched = engine.dynamic_outcome(2, 0.5, 1.0, "candidates").probs[:12].argmax(1)
    assert np.array_equal(served["preds"], batched)
    assert served["hits"] + served["misses"] == 12 and len(served["ms"]) == 12


def test_exit_sweep_and_class_overlap_on_hand_made_inputs():
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8]])
    sweep = dyfip_analysis.exit_sweep(probs, torch.tensor([0, 1, 1]), [0.5, 0.9, 1.0])
    assert sweep["exit rate"].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert sweep["ACC of exited"].iloc[0] == pytest.approx(2 / 3) and sweep["ACC of exited"].iloc[1] == 1.0
    assert np.isnan(sweep["ACC of exited"].iloc[2])  # nothing exits at 1.0
    same = {"segments.a": torch.arange(10.0).repeat(3, 1)}  # every class ranks the filters alike
    apart = {"segments.a": torch.eye(4).repeat_interleave(2, dim=1)[:, :8] + torch.zeros(4, 8)}  # class c: filters 2c, 2c+1
    overlap = dyfip_analysis.class_overlap(same, ["segments.a"], 0.4)
    assert overlap.to_dict("records") == [{"layer": "a", "class pairs": 1.0, "random": 4 / 16}]
    assert dyfip_analysis.class_overlap(apart, ["segments.a"], 0.25)["class pairs"].item() == 0.0  # disjoint top-2 per class
    assert dyfip_analysis.lost(0.0301) == "3.0 points lost" and dyfip_analysis.lost(-0.01) == "1.0 points gained"
    assert dyfip_analysis.lost(1e-4) == "no change"


def test_the_comparison_reads_the_curve_judges_the_targets_and_fills_the_metrics():
    model, test, engine = tiny_engine()
    modes = ["none", "candidates"]
    curve = engine.curve(2, [0.5], [0.3, 1.0], modes)
    full = engine.metrics(engine.exit_only(1.0))
    cmp = dyfip_analysis.compare(engine, curve, 2, 0.5, 1.0, "candidates", modes, full["acc"], full["auc"])
    assert cmp.chosen.equals(curve.query("policy == 'dyfip' and refresh == 'candidates' and keep == 0.5 and tau_exit == 1.0").iloc[0])
    assert cmp.matched["static_l1"]["keep"] == cmp.matched["static_xai"]["keep"]  # one bisection serves both criteria
    assert cmp.matched["static_l1"]["none"]["mean_flops_ratio"] <= cmp.chosen["mean_flops_ratio"]
    table = cmp.table()
    assert len(table) == 3 + 5 * len(modes) and table.loc["full model", "mean_flops_ratio"] == 1.0
    assert cmp.targets["mean_flops_at_most_half"] == (cmp.chosen["mean_flops_ratio"] <= 0.5)
    assert cmp.targets["acc_within_2_points_of_full"] == (cmp.chosen["acc"] >= full["acc"] - 0.02)
    assert len(cmp.target_lines()) == 5 and len(cmp.diagnosis_lines({1: 0.3, 2: 0.5})) == 4
    per_class = dyfip_analysis.per_class(engine, engine.dynamic_outcome(2, 0.5, 1.0, "candidates"), list("abcde"), 2)
    assert per_class["images"].tolist() == [8] * N_CLASSES
    served = dyfip.stream(engine, 2, 0.5, 1.0, "candidates", capacity=2, n_images=5)
    requests = dyfip_analysis.requests_frame(served, test.y)
    assert requests["label"].tolist() == test.y[:5].tolist()
    assert set(dyfip_analysis.latency_summary(requests)) == {"dyfip", "dyfip_with_build", "full"}
    dyfip_analysis.check(engine, cmp, {1: 0.3, 2: 0.5}, 0.0, 1.0)
    with pytest.raises(AssertionError, match="batched ones"):
        dyfip_analysis.check(engine, cmp, {1: 0.3, 2: 0.5}, 0.0, 0.5)
    metrics = dyfip_analysis.metrics(cmp, 0.2, {}, {1: 0.3, 2: 0.5}, 0.1, served, 2, {})
    assert metrics["dyfip"]["test_acc"] == round(float(cmp.chosen["acc"]), 6) and metrics["cache"]["images"] == 5
    assert set(metrics) >= {"static_l1", "static_xai", "exit_only", "branch_topk_full_tail", "targets"}
