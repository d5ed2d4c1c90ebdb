"""Structural pruning through Torch-Pruning: criteria rankings, costs, guards, segments and BN re-estimation."""

from __future__ import annotations

import copy
import re
from collections import OrderedDict

import pytest
import torch
import torch_pruning as tp
from torch import nn

from conftest import small, split
from xaiprune import models
from xaiprune.pruning import prune, xai

X = torch.zeros(1, 1, 28, 28)


def tiny() -> models.SegmentedModel:
    """Two conv blocks of 6 and 8 filters and a head, seeded."""
    torch.manual_seed(0)
    return models.SegmentedModel(OrderedDict(
        block1=nn.Sequential(*models.conv_bn_relu(1, 6), nn.MaxPool2d(2)),
        block2=nn.Sequential(*models.conv_bn_relu(6, 8), models.Head(8, 2)),
    )).eval()


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(iter(models.conv_layers(model).values()))


def same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_l1_importance_is_the_filter_l1_norm():
    model = tiny()
    conv = first_conv(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    imp = prune.CRITERIA["l1"](model)(group)
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    torch.testing.assert_close(imp, norms / norms.sum())
    assert torch.equal(torch.argsort(imp), torch.argsort(norms))


def test_l1_per_layer_keeps_the_largest_filters():
    model = tiny()
    weight = first_conv(model).weight.detach().clone()
    pruned, _ = prune.prune(model, "l1", 0.5, scope="per-layer")
    keep = torch.topk(weight.abs().sum(dim=(1, 2, 3)), 3).indices.sort().values
    assert torch.equal(first_conv(pruned).weight, weight[keep])


def test_pruned_model_runs_is_smaller_and_original_untouched():
    model = small()
    before = copy.deepcopy(model.state_dict())
    pruned, report = prune.prune(model, "l1", 0.5)
    with torch.no_grad():
        assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 2)
    n_params = sum(p.numel() for p in model.parameters())
    assert report.params == sum(p.numel() for p in pruned.parameters()) < n_params
    assert same_state(model.state_dict(), before)
    assert [c.out_channels for c in models.conv_layers(model).values()] == [16, 32, 64]


@pytest.mark.parametrize("criterion", ["l1", "random", "lrp"])
def test_macs_are_torch_prunings_count_and_fall_with_the_ratio(criterion):
    model, ref = small(), split(6)
    macs = []
    for ratio in (0.0, 0.3, 0.6, 0.9):
        pruned, report = prune.prune(model, criterion, ratio, reference=ref)
        assert report.macs == tp.utils.count_ops_and_params(pruned, X)[0]
        assert report.flops == 2 * report.macs
        macs.append(report.macs)
    assert all(a >= b for a, b in zip(macs, macs[1:]))
    assert macs[2] < macs[0] and macs[-1] < macs[0]


@pytest.mark.parametrize("criterion", ["l1", "random", "lrp"])
def test_every_layer_keeps_a_filter_at_high_ratio(criterion):
    model = small()
    pruned, report = prune.prune(model, criterion, 0.9, scope="global", reference=split(4))
    assert set(report.filters) == set(models.conv_layers(model))
    assert min(report.filters.values()) >= 1
    # the guard keeps one filter without stopping the pruning: about 10% of the 112 filters remain
    assert sum(report.filters.values()) <= 0.1 * 112 + len(report.filters)
    assert pruned.segments.block3[3].fc.out_features == 2
    with torch.no_grad():
        assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_raises(ratio):
    with pytest.raises(ValueError, match=re.escape(f"ratio={ratio!r}")):
        prune.prune(tiny(), "l1", ratio)


@pytest.mark.parametrize("kwargs,match", [
    ({"criterion": "l3"}, "criterion='l3'"),
    ({"criterion": "l1", "scope": "per-segment"}, "scope='per-segment'"),
    ({"criterion": "lrp"}, "'lrp' needs the reference"),
    ({"criterion": "gradxact"}, "'gradxact' needs the reference"),
    ({"criterion": "taylor"}, "'taylor' needs the reference"),
    ({"criterion": "l1", "segments": ["block1", "block9"]}, r"\['block9'\] do not exist"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune.prune(tiny(), ratio=0.5, **kwargs)


def test_random_criterion_follows_the_seed():
    model = small()
    a, _ = prune.prune(model, "random", 0.5, seed=1)
    b, _ = prune.prune(model, "random", 0.5, seed=1)
    c, _ = prune.prune(model, "random", 0.5, seed=2)
    assert same_state(a.state_dict(), b.state_dict())
    assert not same_state(a.state_dict(), c.state_dict())


def test_prune_segment_changes_only_that_segment():
    model = small()
    pruned, report = prune.prune_segment(model, "block1", 0.5, "l1")
    convs = list(models.conv_layers(pruned).values())
    assert [c.out_channels for c in convs] == [8, 32, 64]
    assert [c.in_channels for c in convs] == [1, 8, 32]
    base = prune.report_for(model, (1, 28, 28))
    assert base.segment_out_bytes["block1"] == 16 * 14 * 14 * 4
    assert report.segment_out_bytes["block1"] == 8 * 14 * 14 * 4
    with torch.no_grad():
        out = pruned.segments.block1(X)
    assert report.segment_out_bytes["block1"] == out.numel() * 4
    assert {k: v for k, v in report.segment_out_bytes.items() if k != "block1"} == \
           {k: v for k, v in base.segment_out_bytes.items() if k != "block1"}


def test_precomputed_scores_give_the_same_pruned_model():
    model, ref = small(), split(6)
    scores = xai.filter_scores(model, ref, "lrp")
    a, report = prune.prune(model, "lrp", 0.5, reference=ref, scores=scores)
    b, _ = prune.prune(model, "lrp", 0.5, reference=ref)
    assert report.params < sum(p.numel() for p in model.parameters())
    assert same_state(a.state_dict(), b.state_dict())


def test_score_importance_prunes_the_lowest_given_scores():
    """Filter c of every layer scores c + 1: per-layer pruning at 0.5 keeps the upper half of each layer."""
    model = small()
    convs = models.conv_layers(model)
    scores = xai.FilterScores("lrp", OrderedDict(
        (n, torch.arange(1.0, c.out_channels + 1).expand(2, -1).clone()) for n, c in convs.items()), n_images=2)
    pruned, _ = prune.prune(model, "lrp", 0.5, scope="per-layer", reference=split(2), scores=scores)
    for (name, conv), new in zip(convs.items(), models.conv_layers(pruned).values()):
        half = conv.out_channels // 2
        expected = conv.weight[half:]
        if name != "segments.block1.0":
            expected = expected[:, conv.in_channels // 2:]
        assert torch.equal(new.weight, expected), name


@pytest.mark.parametrize("criterion", ["l1", "lrp"])
def test_resnet18_residual_groups_prune_and_run(criterion):
    torch.manual_seed(0)
    model = models.resnet18(1, 2).eval()
    pruned, report = prune.prune(model, criterion, 0.3, reference=split(4))
    with torch.no_grad():
        assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    assert report.params < sum(p.numel() for p in model.parameters())
    stage2 = pruned.segments.stage2[0]
    assert stage2.conv2.out_channels == stage2.shortcut[0].out_channels  # coupled through the residual sum


@pytest.mark.parametrize("criterion", ["lrp", "l1", "taylor"])
@pytest.mark.parametrize("segment", ["block1", "block2"])
def test_fixed_scores_prune_one_segment_as_prune_segment_does(criterion, segment):
    model, ref = small(), split(6)
    scores = prune.criterion_scores(model, criterion, ref)
    a = prune.prune_with_scores(model, {segment: 0.5}, scores)
    b, _ = prune.prune_segment(model, segment, 0.5, criterion, reference=ref)
    assert same_state(a.state_dict(), b.state_dict())


def test_fixed_scores_choose_each_segment_independently_of_the_others():
    """block2 keeps the same filters whether block1 is pruned or not (only its input channels shrink)."""
    model, ref = small(), split(6)
    scores = prune.criterion_scores(model, "lrp", ref)
    alone = prune.prune_with_scores(model, {"block2": 0.5}, scores)
    both = prune.prune_with_scores(model, {"block1": 0.25, "block2": 0.5}, scores)
    conv_alone = models.conv_layers(alone)["segments.block2.0"]
    conv_both = models.conv_layers(both)["segments.block2.0"]
    kept_in = models.conv_layers(both)["segments.block1.0"].out_channels
    assert conv_both.out_channels == conv_alone.out_channels == 16
    assert conv_both.in_channels == kept_in == 12
    bn = {name: dict(m.named_modules())["segments.block2.1"] for name, m in (("alone", alone), ("both", both))}
    assert torch.equal(bn["alone"].running_mean, bn["both"].running_mean)  # the same 16 filters kept
    assert torch.equal(bn["alone"].weight, bn["both"].weight)


def test_fixed_scores_refuse_missing_layers_and_bad_levels():
    model = small()
    scores = {n: torch.ones(c.out_channels) for n, c in models.conv_layers(model).items()}
    with pytest.raises(ValueError, match="no scores for conv layers"):
        prune.prune_with_scores(model, {"block1": 0.5}, {k: v for k, v in list(scores.items())[1:]})
    with pytest.raises(ValueError, match="ratio=1.0"):
        prune.prune_with_scores(model, {"block1": 1.0}, scores)
    with pytest.raises(ValueError, match="do not exist"):
        prune.prune_with_scores(model, {"nope": 0.5}, scores)
