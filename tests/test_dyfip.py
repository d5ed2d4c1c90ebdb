"""DyFiP (notebook 08): sub-networks against the zeroed full tail, subset scores, the exit rule, FLOPs, bad settings,
the validation grid and the choice of the operating point, the test over branch seeds and random draws, the claim."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from xaiprune import data, models, stats
from xaiprune.dyfip import core as dyfip, analysis as dyfip_analysis, evaluation, serve, subnets
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


def test_a_subnetwork_gives_the_logits_of_the_full_tail_with_the_same_filters_zeroed():
    model = five_class_cnn()
    _, tail, shape = tail_of(model)
    relevance = random_relevance(model)
    builder = subnets.SubnetBuilder(tail, shape)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    for s in [(0, 3), (1, 2)]:
        sub = builder.build(builder.plan(subnets.subset_scores(relevance, s), 0.5))
        plan = builder.plan(subnets.subset_scores(relevance, s), 0.5)
        removed = builder.removed_filters(plan)
        assert {layer: len(idx) for layer, idx in removed.items()} == {"segments.block2.0": 16, "segments.block3.0": 32}
        assert [c.out_channels for c in models.conv_layers(sub).values()] == [16, 32]  # physically smaller
        masked = subnets.masked_model(tail, removed)
        with torch.no_grad():
            got, want, full = sub(x), masked(x), tail(x)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
        assert not torch.allclose(got, full, atol=1e-3)  # the zeroing matters: this is not the unpruned tail
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
    ({"ks": [0]}, r"ks=\[0\]"), ({"ks": [2, 5]}, r"ks=\[2, 5\]: expected each k with 1 <= k < 5"), ({"ks": []}, r"ks=\[\]"),
    ({"keeps": [0.5, 0.0]}, r"keeps=\[0.5, 0.0\]"),
    ({"keeps": [1.5]}, r"keeps=\[1.5\]"), ({"keeps": []}, r"keeps=\[\]"), ({"taus": [0.0, 1.0]}, r"taus=\[0.0, 1.0\]"),
    ({"branch_block": 0}, "branch_block=0"),
    ({"branch_block": 3}, "branch_block=3: expected 1 <= branch_block < 3"),
    ({"flag": "breastmnist"}, "dyfip_flag='breastmnist'.*top-k of 2 classes prunes nothing"),
    ({"flag": "chestmnist"}, "dyfip_flag='chestmnist'.*multi-label"),
])
def test_bad_settings_are_refused_by_the_library_naming_the_parameter(change, match):
    setting = {"flag": "retinamnist", "size": 28, "n_segments": 3, "ks": [2], "keeps": [0.5], "taus": [0.9, 1.0], "branch_block": 1}
    with pytest.raises(ValueError, match=match):
        dyfip.check_setting(**{**setting, **change})


@pytest.mark.parametrize("change,match", [
    ({"ks": [0]}, "08_dyfip: ks=[0]: expected every element a value in [1, inf)"),
    ({"ks": [2, 9]}, "08_dyfip: ks=[2, 9]: expected every k with 1 <= k < 9, the number of classes of dyfip_flag='hospital'"),
    ({"ks": [2, 5]}, "08_dyfip: ks=[2, 5]: expected every k with 1 <= k < 5, the number of classes of second_flag='retinamnist'"),
    ({"second_flag": "hospital"}, "08_dyfip: second_flag='hospital': expected another flag than dyfip_flag"),
    ({"second_flag": "breastmnist"}, "08_dyfip: second_flag='breastmnist': expected a single-label"),
    ({"keeps": [0.5, 0.0]}, "08_dyfip: keeps=[0.5, 0.0]: expected every element a value in (0, 1]"),
    ({"taus": [0.0]}, "08_dyfip: taus=[0.0]: expected every element a value in (0, 1]"),
    ({"branch_seeds": 0}, "08_dyfip: branch_seeds=0: expected a value in [1, inf)"),
    ({"random_draws": 0}, "08_dyfip: random_draws=0: expected a value in [1, inf)"),
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
    assert {s.stem: s.parameters for s in steps}["08_dyfip"]["dyfip_flag"] == "hospital"


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
    with pytest.warns(data.ScarceClassWarning, match="class 3 has 8 validation images"):
        ref = data.reference_set(val, 10, seed=4)
    caps = ref.counts
    assert torch.bincount(ref.y, minlength=5).tolist() == [10, 10, 10, 8, 3]
    assert caps[3] == {"asked": 10, "available": 8, "drawn": 8} and caps[0]["drawn"] == 10
    again = data.reference_set(val, 10, seed=4)
    assert torch.equal(again.x, ref.x)  # seeded
    assert len(set(ref.x[:, 0, 0, 0].tolist())) == len(ref)  # no image twice
    with pytest.raises(ValueError, match="validation split"):
        data.reference_set(data.Split(val.x, val.y, "retinamnist", "test", 28), 10)


def test_the_truncated_top_k_entropy_frees_the_k_minus_1_strongest_rivals():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -3.0]])
    y = torch.tensor([1, 0])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(dyfip.topk_entropy(logits, y, 1), ce)  # k = 1 is the cross-entropy
    # k = 2: the strongest rival is free; the loss is log(1 + sum of exp(z_j - z_y) over the others)
    # row 1: rivals 3, 0, -1 against 1 -> +2 free, -1 and -2 left; row 2: rivals 2, 1, -3 against 0 -> +2 free, +1 and -3 left
    by_hand = (torch.log1p(torch.exp(torch.tensor(-1.0)) + torch.exp(torch.tensor(-2.0)))
               + torch.log1p(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(-3.0)))) / 2
    assert torch.allclose(dyfip.topk_entropy(logits, y, 2), by_hand)
    assert dyfip.topk_entropy(logits, y, 2) < dyfip.topk_entropy(logits, y, 1)
    assert torch.allclose(dyfip.branch_loss(logits, y, 2), ce + by_hand) and torch.allclose(dyfip.branch_loss(logits, y, 1), ce)


def test_the_branch_learns_separable_features_deterministically():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % N_CLASSES
    x = torch.randn(200, 8, 3, 3, generator=gen) * 0.5
    x[torch.arange(200), y] += 3.0  # class c lights up channel c
    heads = [dyfip.train_branch(x[:150], y[:150], x[150:], y[150:], N_CLASSES, width=16, epochs=15, seed=1, lr=1e-2,
                                batch_size=64, k=k, weights=w) for k, w in ((1, None), (1, None), (2, torch.ones(150)))]
    (head, history), (other, _), (top2, _) = heads
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), other.state_dict().values()))
    with torch.no_grad():
        acc = (head(x[150:]).argmax(1) == y[150:]).float().mean()
        recall = dyfip.topk_recall(top2(x[150:]), y[150:], 2)
    assert acc > 0.9 and len(history) == 15 and not head.training and recall > 0.9


def tiny_engines(n_branches: int = 2, split: str = "test") -> tuple[models.SegmentedModel, list[dyfip.Engine]]:
    """Engines on the five-class small_cnn, one per untrained branch (seeded apart), random relevance and images."""
    model = five_class_cnn()
    gen = torch.Generator().manual_seed(2)
    ev = data.Split(x=torch.randn(40, 3, 28, 28, generator=gen), y=torch.arange(40) % N_CLASSES,
                    flag="retinamnist", split=split, size=28)
    ref = data.Split(x=torch.randn(15, 3, 28, 28, generator=gen), y=torch.arange(15) % N_CLASSES,
                     flag="retinamnist", split="val", size=28)
    _, _, shape = tail_of(model)
    branches = []
    for j in range(n_branches):
        torch.manual_seed(10 + j)
        branches.append(dyfip.BranchHead(shape[0], N_CLASSES, 8).eval())
    return model, evaluation.engines(model, 1, branches, random_relevance(model), ref, ev, seed=0)


def test_one_build_per_candidate_set_serves_every_engine_and_equals_running_each_alone():
    model, (a, b) = tiny_engines(2)
    assert a.features is b.features and not torch.equal(a.branch_probs, b.branch_probs)  # shared features, own branch
    with torch.no_grad():
        assert torch.allclose(a.full_logits, model(a.split.x), atol=1e-5)
    sets = [dyfip.candidate_sets(e.branch_probs, 2) for e in (a, b)]
    before = len(a.build_seconds)
    together = evaluation.tails([(a, sets[0]), (b, sets[1])], "xai", 0.5, ["none", "candidates"])
    assert len(a.build_seconds) - before == len(set(sets[0]) | set(sets[1]))  # one build per distinct set
    for e, s, got in zip((a, b), sets, together):
        alone = evaluation.tails([(e, s)], "xai", 0.5, ["none", "candidates"])[0]
        for mode in ("none", "candidates"):
            assert torch.allclose(got[mode][0], alone[mode][0], atol=1e-6) and np.array_equal(got[mode][1], alone[mode][1])
            soft = torch.softmax(got[mode][0], 1)
            assert all(soft[i, [c for c in range(N_CLASSES) if c not in t]].sum() == 0 for i, t in enumerate(s))
    assert not torch.allclose(together[0]["none"][0], together[0]["candidates"][0])  # the refresh changes the answers
    full = evaluation.tails([(a, sets[0])], "xai", 1.0, ["none"])[0]["none"][0]  # keep 1, no refresh: the full tail
    assert torch.allclose(full, dyfip.restrict(a.full_logits.clone(), sets[0]), atol=1e-5)


def test_the_validation_grid_averages_over_branch_seeds_and_the_engine_agrees_with_itself():
    """keep=1 and no refresh is the full tail restricted to the candidates; static keep=1 is the full model;
    a matched static model costs no more than the budget; serving one image at a time gives the batched answers."""
    _, engs = tiny_engines(2, split="val")
    frame = evaluation.grid({2: engs, 3: engs}, [0.5, 1.0], [0.2, 1.0], "none")
    assert len(frame) == 2 * (2 * 2 * 2) + 2 * 2 + 2 * (2 * 2)  # k x seeds x keeps x taus, static per keep, exit per k, seed, tau
    assert set(frame.query("policy == 'dyfip'")["k"]) == {2, 3} and set(frame.query("policy == 'static_l1'")["k"]) == {0}
    for j, e in enumerate(engs):
        at_one = frame.query(f"policy == 'dyfip' and k == 2 and branch_seed == {j} and keep == 1.0 and tau_exit == 1.0").iloc[0]
        assert at_one["bal_acc"] == e.metrics(e.full_restricted(2, 1.0))["bal_acc"] and at_one["exit_rate"] == 0
    static_one = frame.query("policy == 'static_l1' and keep == 1.0").iloc[0]
    assert static_one["acc"] == engs[0].metrics(engs[0].exit_only(1.0))["acc"]
    means = evaluation.seed_means(frame)
    row = means.query("policy == 'dyfip' and k == 3 and keep == 0.5 and tau_exit == 0.2").iloc[0]
    seeds = frame.query("policy == 'dyfip' and k == 3 and keep == 0.5 and tau_exit == 0.2")
    assert row["seeds"] == 2 and row["bal_acc"] == pytest.approx(seeds["bal_acc"].mean())
    assert row["bal_acc_sd"] == pytest.approx(seeds["bal_acc"].std(ddof=1))
    assert row["max_flops_ratio"] == seeds["max_flops_ratio"].max()
    budget = row["mean_flops_ratio"] * engs[0].full_macs
    kp = engs[0].matched_keep(budget)
    assert engs[0].static_macs("l1", kp) <= budget < engs[0].static_macs("l1", min(1.0, kp + 2 ** -9))
    assert engs[0].static_macs("xai_total", kp) == engs[0].static_macs("l1", kp)  # FLOPs: how many filters, not which
    outcomes = evaluation.at_point(engs, 2, 0.5, 0.2, "candidates", draws=1)
    nets = {name: serve.prebuild(engs[1], 2, 0.5, "candidates", sel) for name, sel in serve.SELECTION.items()}
    assert all(len(v["nets"]) == 10 for v in nets.values())  # C(5, 2) candidate sets, every one built ahead of time
    log = serve.serve(engs[1], 2, 0.2, nets, n_images=12)
    assert len(log) == 12 * len(serve.POLICIES) and log.groupby("image")["policy"].nunique().eq(len(serve.POLICIES)).all()
    order = log.drop_duplicates("image")["image"].tolist()  # served in a seeded shuffle, each image once per policy
    assert sorted(order) == list(range(12)) and order != list(range(12))
    assert order == serve.serve(engs[1], 2, 0.2, nets, n_images=12, recheck=1.0).drop_duplicates("image")["image"].tolist()
    with pytest.raises(ValueError, match="repeats=0"):
        serve.serve(engs[1], 2, 0.2, nets, n_images=3, repeats=0)
    batched = {name: outcomes[name][1].probs for name in serve.SELECTION} | {"full": engs[1].full().probs}
    assert serve.agreement(log, batched) == {p: 1.0 for p in batched}  # served one at a time = batched, every policy
    table = serve.latency_table(log)
    assert list(table.index) == list(serve.POLICIES) and table.loc["full", "worst_vs_full"] == 1.0
    assert (table["worst_ms"] >= table["p99_ms"]).all() and (table["p99_ms"] >= table["median_ms"]).all()


def test_the_operating_point_is_the_cheapest_within_the_margin_else_the_most_accurate():
    means = pd.DataFrame([
        {"policy": "dyfip", "keep": 0.3, "tau_exit": 0.9, "bal_acc": 0.50, "mean_flops_ratio": 0.2},
        {"policy": "dyfip", "keep": 0.5, "tau_exit": 1.0, "bal_acc": 0.58, "mean_flops_ratio": 0.4},
        {"policy": "dyfip", "keep": 0.5, "tau_exit": 0.9, "bal_acc": 0.59, "mean_flops_ratio": 0.4},
        {"policy": "dyfip", "keep": 0.8, "tau_exit": 1.0, "bal_acc": 0.62, "mean_flops_ratio": 0.7},
        {"policy": "static_l1", "keep": 0.1, "tau_exit": 1.0, "bal_acc": 0.90, "mean_flops_ratio": 0.05}])  # never chosen
    means["k"] = [2, 2, 3, 3, 0]
    point = evaluation.choose(means, 0.60, -0.02)
    assert point["k"] == 3
    assert (point["keep"], point["tau_exit"], point["points_within_margin"], point["points"]) == (0.5, 0.9, 3, 4)
    assert point["val_bal_acc"] == 0.59 and point["val_mean_flops_ratio"] == 0.4 and point["val_full_bal_acc"] == 0.60
    fallback = evaluation.choose(means, 0.70, -0.02)  # nothing within 2 points: the best balanced accuracy
    assert (fallback["keep"], fallback["tau_exit"], fallback["points_within_margin"]) == (0.8, 1.0, 0)


def fake_engine(y: np.ndarray, full_probs: np.ndarray):
    """What :func:`dyfip_analysis.claim` reads of an engine: labels, task, the full model's answers, its MACs."""
    from types import SimpleNamespace
    return SimpleNamespace(y=y[:, None], task="multi-class", full_macs=100,
                           full=lambda: dyfip.Outcome(full_probs, np.full(len(y), 100), np.zeros(len(y), bool)))


def answers(y: np.ndarray, right: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """One-hot probabilities: the true class where ``right``, else the next class."""
    return np.eye(n_classes)[np.where(right, y, (y + 1) % n_classes)]


DECLARED = {"max_flops": 0.5, "points_static_tail": 0.02, "max_worst_latency": 0.6}


def latency(dyfip_worst: float) -> pd.DataFrame:
    return pd.DataFrame({"worst_ms": [10.0, 10 * dyfip_worst], "worst_vs_full": [1.0, dyfip_worst]}, index=["full", "dyfip"])


def test_the_claim_is_decided_on_balanced_accuracy_with_holm_the_flops_bound_and_the_worst_case():
    y = np.repeat([0, 1, 2], [180, 60, 60])
    majority = np.eye(3)[np.zeros(len(y), int)]  # ACC 0.6, balanced accuracy 1/3
    balanced = answers(y, np.concatenate([np.arange(n) < 0.6 * n for n in (180, 60, 60)]))  # ACC 0.6, BA 0.6
    out = lambda probs, flops: [dyfip.Outcome(p, np.full(len(y), flops), np.zeros(len(y), bool)) for p in probs]  # noqa: E731
    engine = fake_engine(y, majority)
    assert stats.endpoints(y, balanced, "multi-class")["acc"] == stats.endpoints(y, majority, "multi-class")["acc"]

    def claim(dy, agnostic, rnd, flops=40, worst=0.5, eng=engine):
        outcomes = {"dyfip": out(dy, flops), "branch_static_tail": out(agnostic, flops), "random_specific": out(rnd, flops)}
        return dyfip_analysis.claim(eng, outcomes, latency(worst), DECLARED, -0.02, n_boot=300)

    c = claim([balanced] * 3, [majority] * 3, [majority] * 6)
    assert c["verdict"] == stats.SUPPORTED and c["vs_full"]["diff"] == pytest.approx(0.6 - 1 / 3, abs=5e-5)  # ACC equal, BA not
    assert c["vs_full"]["n_seeds"] == [3, 1] and c["vs_random_specific"]["n_seeds"] == [3, 6] and c["mean_flops_ratio"] == 0.4
    assert c["vs_branch_static_tail"]["n_seeds"] == [3, 3] and {"p_holm", "interval_holm"} <= set(c["vs_full"])
    lines = dyfip_analysis.target_lines(c)
    assert "at most 50%" in lines[0] and all(line.endswith("met") for line in lines[:-1]) and lines[-1] == "verdict: supported"
    slow = claim([balanced] * 3, [majority] * 3, [majority] * 6, worst=0.8)
    assert slow["verdict"] == stats.PARTLY and not slow["parts"]["worst_latency"] and "NOT met" in dyfip_analysis.target_lines(slow)[-2]
    costly = claim([balanced], [majority], [majority], flops=60)
    assert costly["verdict"] == stats.PARTLY and not costly["parts"]["flops"]
    agnostic = claim([balanced] * 3, [balanced] * 3, [majority] * 6)  # the class-agnostic tail does as well: no lead
    assert not agnostic["parts"]["vs_branch_static_tail"] and agnostic["verdict"] == stats.PARTLY
    worse = claim([majority], [balanced], [balanced], eng=fake_engine(y, balanced))
    assert worse["verdict"] == stats.NOT and not worse["wins_somewhere"]


def test_the_test_at_the_chosen_point_runs_every_policy_per_seed_and_fills_the_metrics():
    _, engs = tiny_engines(2)
    outcomes = evaluation.at_point(engs, 2, 0.5, 0.3, "candidates", draws=3)
    assert {p: len(o) for p, o in outcomes.items()} == {
        "dyfip": 2, "dyfip_no_refresh": 2, "oracle": 2, "branch_only": 2, "branch_static_tail": 2, "random_specific": 6,
        "random_agnostic": 6, "exit_only": 2, "branch_topk_full_tail": 2}
    rnd, dy, agn = outcomes["random_specific"], outcomes["dyfip"], outcomes["random_agnostic"]
    assert not np.array_equal(rnd[0].probs, rnd[2].probs)  # draws 0 and 1 of branch seed 0 keep other filters
    assert not np.array_equal(agn[0].probs, agn[2].probs)
    for kind, classes in (("random", (0, 1)), ("random_agnostic", None)):  # each branch seed draws its own filters
        own = [engs[j].scores(kind, classes, 0) for j in (0, 1)]
        assert not all(torch.equal(own[0][layer], own[1][layer]) for layer in own[0])
        assert all(torch.equal(engs[0].scores(kind, classes, 0)[layer], own[0][layer]) for layer in own[0])  # seeded
    for policy in ("random_specific", "random_agnostic", "branch_static_tail"):  # the same width costs the same
        assert all(np.array_equal(r.macs, dy[i % 2].macs) for i, r in enumerate(outcomes[policy]))
        assert all(np.array_equal(r.exited, dy[i % 2].exited) for i, r in enumerate(outcomes[policy]))  # the same exits
    alone = outcomes["branch_only"][0]
    assert alone.exited.all() and (alone.macs == engs[0].prefix_macs + engs[0].branch_macs).all()
    frame = evaluation.grid({2: engs}, [0.5], [0.3, 1.0], "candidates")
    means = evaluation.seed_means(frame)
    full = engs[0].metrics(engs[0].full())
    assert full["mean_flops_ratio"] == 1.0 and full["bal_acc"] == engs[0].metrics(engs[0].exit_only(1.0))["bal_acc"]
    point = evaluation.choose(means, full["bal_acc"], -0.02)
    kp, static = evaluation.static_at(engs[0], point["val_mean_flops_ratio"], ["none", "candidates"])
    s = dyfip_analysis.summaries(engs[0], outcomes, static, "candidates")
    assert s["random_specific"]["n"] == 6 and s["full"]["n"] == 1 and s["full"]["mean_flops_ratio"] == 1.0
    assert s["dyfip"]["bal_acc"] == pytest.approx(np.mean([engs[0].metrics(o)["bal_acc"] for o in dy]))
    assert s["random_specific"]["bal_acc_lo"] <= s["random_specific"]["bal_acc"] <= s["random_specific"]["bal_acc_hi"]
    shown = dyfip_analysis.table(s)
    assert len(shown) == len(dyfip_analysis.LABELS) and np.isnan(shown.loc["DyFiP", "auc"])  # restricted AUC apart
    assert shown.loc["full model", "restricted AUC"] != shown.loc["full model", "restricted AUC"]
    nets = {name: serve.prebuild(engs[0], 2, 0.5, "candidates", sel) for name, sel in serve.SELECTION.items()}
    log = serve.serve(engs[0], 2, 0.3, nets, n_images=6)
    table = serve.latency_table(log)
    c = dyfip_analysis.claim(engs[0], outcomes, table, DECLARED, -0.02, n_boot=200)
    assert c["n_seeds"] == 2 and c["vs_random_specific"]["n_seeds"] == [2, 6] and c["target_met"] == all(c["parts"].values())
    text = dyfip_analysis.evidence(s, {**point, "k": 2}, c, "retinamnist")
    assert f"{s['dyfip']['bal_acc']:.3f}" in text.split(". ")[0] and "chosen on validation" in text
    recall = evaluation.recall(engs, N_CLASSES)
    assert list(recall) == [1, 2, 3, 4]
    dyfip_analysis.check(engs[0], means, point, s, full["acc"], recall, 0.0, {"dyfip": 1.0})
    with pytest.raises(AssertionError, match="batched ones"):
        dyfip_analysis.check(engs[0], means, point, s, full["acc"], recall, 0.0, {"dyfip": 0.5})
    metrics = dyfip_analysis.metrics(s, c, {**point, "k": 2}, kp, full, 0.2, {}, recall, 0.1, table, {})
    assert set(metrics["ablation"]) == set(dyfip_analysis.ABLATION) and metrics["ablation"]["branch_only"]["worst_latency_ms"] > 0
    assert metrics["dyfip_vs_branch_static_tail"]["bal_acc_diff"] == c["vs_branch_static_tail"]["diff"]
    assert metrics["test"]["dyfip"]["bal_acc"] == round(s["dyfip"]["bal_acc"], 6) and not metrics["test"]["dyfip"]["auc_comparable"]
    assert metrics["operating_point"]["keep"] == 0.5 and metrics["targets"]["target_met"] == c["target_met"]


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
