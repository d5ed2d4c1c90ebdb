"""The fixed-score fast path (score once, prune at any ratio) against prune.prune, which rescores every time."""

from __future__ import annotations

import pytest
import torch

from conftest import small, split
from test_prune import same_state
from xaiprune import models
from xaiprune.pruning import prune, ranking, xai

SHAPE = (1, 28, 28)
RATIOS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(3)))


def kept(model: torch.nn.Module) -> dict[str, int]:
    return {name: conv.out_channels for name, conv in models.conv_layers(model).items()}


@pytest.mark.parametrize("scope", ["global", "per-layer"])
@pytest.mark.parametrize("criterion", sorted(prune.CRITERIA))
def test_scored_once_gives_the_model_prune_gives_at_every_ratio(criterion, scope):
    """Same kept channels, bit-identical weights and outputs, for every criterion, both scopes, six ratios."""
    model, ref = small(), split(6)
    graph = ranking.PruningGraph(model, SHAPE)
    ranked = ranking.Ranking(graph, criterion, reference=ref, scope=scope, seed=2, steps=2)
    for ratio in RATIOS:
        fast, plan = ranked.prune(ratio)
        slow, _ = prune.prune(model, criterion, ratio, scope=scope, reference=ref, seed=2, steps=2)
        assert kept(fast) == kept(slow), (ratio, kept(fast), kept(slow))
        assert same_state(fast.state_dict(), slow.state_dict()), ratio
        assert torch.equal(outputs(fast), outputs(slow))
        assert (plan == ()) == (ratio == 0)


@pytest.mark.parametrize("criterion", ["lrp", "taylor", "random", "l1"])
@pytest.mark.parametrize("segment", ["block1", "block2", "block3"])
def test_one_segment_ranked_within_it_as_prune_segment_does(criterion, segment):
    model, ref = small(), split(6)
    graph = ranking.PruningGraph(model, SHAPE)
    ranked = ranking.Ranking(graph, criterion, reference=ref, segments=[segment], seed=1)
    for level in (0.3, 0.6):
        fast, plan = ranked.prune(level)
        slow, _ = prune.prune_segment(model, segment, level, criterion, reference=ref, seed=1)
        assert same_state(fast.state_dict(), slow.state_dict()), level
        touched = graph.touched_segments(plan, [segment])
        following = list(model.segments)[list(model.segments).index(segment) + 1:][:1]
        assert touched == [segment, *following]  # its convs, and the next segment's input channels


def test_precomputed_xai_scores_and_the_graph_are_shared():
    """One graph serves several criteria and draws; precomputed scores give the same plans as scoring inside."""
    model = small()
    graph = ranking.PruningGraph(model, SHAPE)
    refs = [split(6, seed=s) for s in (1, 2)]
    plans = {}
    for draw, ref in enumerate(refs):
        # epsilon-LRP: its scores follow the images closely (the composite's z+ ranking barely moves between draws here)
        inside = ranking.Ranking(graph, "lrp_epsilon", reference=ref)
        outside = ranking.Ranking(graph, "lrp_epsilon", reference=ref, scores=xai.filter_scores(model, ref, "lrp_epsilon"))
        plans[draw] = inside.plan(0.5)
        assert plans[draw] == outside.plan(0.5)
    assert plans[0] != plans[1]  # different reference images choose different filters
    assert all(p.grad is None for p in graph.template.parameters())  # Taylor-style gradients never leak


def test_the_plan_identifies_the_pruned_model():
    """Equal plans give equal models; l1 and bn_scale differ; a plan grows monotonically with the ratio (global)."""
    model = small()
    graph = ranking.PruningGraph(model, SHAPE)
    l1 = ranking.Ranking(graph, "l1")
    assert l1.plan(0.5) == ranking.Ranking(graph, "l1").plan(0.5)
    assert l1.plan(0.5) != ranking.Ranking(graph, "bn_scale").plan(0.5)
    removed = [sum(len(r) for _, r in l1.plan(r)) for r in RATIOS]
    assert removed == sorted(removed) and removed[0] == 0 and removed[-1] > 0
    total = sum(c.out_channels for c in models.conv_layers(model).values())
    assert removed[3] == total - int(total * 0.5)  # no ties among L1 norms: exactly the ratio's share


def test_resnet18_coupled_groups_match_prune():
    torch.manual_seed(0)
    model = models.resnet18(1, 2).eval()
    ref = split(4)
    graph = ranking.PruningGraph(model, SHAPE)
    ranked = ranking.Ranking(graph, "lrp", reference=ref)
    fast, _ = ranked.prune(0.3)
    slow, _ = prune.prune(model, "lrp", 0.3, reference=ref)
    assert same_state(fast.state_dict(), slow.state_dict())


def test_bad_ratio_and_segment_are_refused():
    graph = ranking.PruningGraph(small(), SHAPE)
    with pytest.raises(ValueError, match="ratio=1.0"):
        ranking.Ranking(graph, "l1").plan(1.0)
    with pytest.raises(ValueError, match="do not exist"):
        ranking.Ranking(graph, "l1", segments=["nope"])
    with pytest.raises(ValueError, match="needs the reference set"):
        ranking.Ranking(graph, "lrp")


def test_shared_weights_copy_is_the_same_model_and_leaves_the_original_intact():
    model, ref = small(), split(6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = ranking.PruningGraph(model, SHAPE)
    plan = ranking.Ranking(graph, "lrp", reference=ref).plan(0.5)
    shared, copied = graph.apply(plan, share=True), graph.apply(plan)
    assert same_state(shared.state_dict(), copied.state_dict())
    assert same_state(model.state_dict(), before)
    bias = "segments.block3.3.fc.bias"  # the classifier's bias: never pruned
    ptr = {name: dict(m.named_parameters())[bias].data_ptr() for name, m in
           (("original", model), ("shared", shared), ("copied", copied))}
    assert ptr["shared"] == ptr["original"] != ptr["copied"]
