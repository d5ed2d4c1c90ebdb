"""Repairs without fine-tuning: the refitted threshold, exact BatchNorm statistics, mean-activation compensation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import small, split
from xaiprune import data
from xaiprune.pruning import ranking, repairs

SHAPE = (1, 28, 28)


def output_means(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of a module's output over the images (and positions)."""
    seen = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    out = seen["out"]
    return out.mean(dim=(0, 2, 3)) if out.ndim == 4 else out.mean(dim=0)


def group_of(graph: ranking.PruningGraph, root: str) -> int:
    return next(g for g, group in enumerate(graph.groups()[1]) if group.root == root)


def test_recalibration_recovers_a_shifted_threshold():
    """Logits [0, x + 3] for labels drawn from sigmoid(x): the fitted shift of class 1 is about -3."""
    torch.manual_seed(0)
    x = 2 * torch.randn(4000, 1)
    y = (torch.rand(4000) < torch.sigmoid(x[:, 0])).long()
    model = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0], [1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 3.0]))
    reference = data.Split(x=x, y=y, flag="pneumoniamnist", split="val", size=28)
    fixed = repairs.recalibrate_decision(model, reference)
    assert fixed[0].bias[0].item() == 0.0
    assert fixed[0].bias[1].item() == pytest.approx(0.0, abs=0.25)
    assert torch.equal(fixed[0].weight, model[0].weight) and model[0].bias[1].item() == 3.0  # a copy, weights kept
    with torch.no_grad():
        before = (model(x).argmax(1) == y).float().mean()
        after = (fixed(x).argmax(1) == y).float().mean()
    assert after > before + 0.1


def test_recalibration_of_a_conv_model_only_moves_the_final_bias():
    model, ref = small(), split(8)
    fixed = repairs.recalibrate_decision(model, ref)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, fixed.state_dict()[k])]
    assert changed == ["segments.block3.3.fc.bias"]


def test_batchnorm_statistics_are_those_of_the_images():
    model = small()
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(3))
    fixed = repairs.reestimate_batchnorm(model, x)
    for name, bn in fixed.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            seen = {}
            h = bn.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
            with torch.no_grad():
                fixed(x)
            h.remove()
            torch.testing.assert_close(bn.running_mean, seen["x"].mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(bn.running_var, seen["x"].var(dim=(0, 2, 3)), rtol=1e-3, atol=1e-5)
    assert all(torch.equal(v, fixed.state_dict()[k]) for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k)


@pytest.mark.parametrize("root,consumer", [("segments.block1.0", "segments.block2.0"),
                                           ("segments.block3.0", "segments.block3.3.fc")])
def test_compensation_keeps_the_consumers_mean_pre_activation(root, consumer):
    model, ref = small(), split(12)
    graph = ranking.PruningGraph(model, SHAPE)
    plan = ((group_of(graph, root), (0, 3, 5, 6)),)
    pruned = graph.apply(plan)
    fixed = repairs.compensate(graph, plan, pruned, ref)
    want = output_means(model, consumer, ref.x)
    assert not torch.allclose(output_means(pruned, consumer, ref.x), want, atol=1e-3)  # pruning moved it
    torch.testing.assert_close(output_means(fixed, consumer, ref.x), want, rtol=1e-5, atol=1e-5)


def test_compensation_when_the_consumer_is_pruned_too():
    """Both block-2 inputs and outputs removed: the shift is kept only for the consumer's remaining filters."""
    model, ref = small(), split(12)
    graph = ranking.PruningGraph(model, SHAPE)
    removed_out = (1, 2)
    plan = ((group_of(graph, "segments.block1.0"), (0, 3)), (group_of(graph, "segments.block2.0"), removed_out))
    fixed = repairs.compensate(graph, plan, graph.apply(plan), ref)
    kept = [c for c in range(32) if c not in removed_out]
    torch.testing.assert_close(output_means(fixed, "segments.block2.0", ref.x),
                               output_means(model, "segments.block2.0", ref.x)[kept], rtol=1e-5, atol=1e-5)


def test_compensation_and_an_empty_plan_leave_the_model_as_it_was():
    model, ref = small(), split(6)
    graph = ranking.PruningGraph(model, SHAPE)
    fixed = repairs.compensate(graph, (), copy.deepcopy(model), ref)
    with torch.no_grad():
        torch.testing.assert_close(fixed(ref.x), model(ref.x))


def test_bad_inputs_are_refused():
    model = small()
    with pytest.raises(ValueError, match="empty"):
        repairs.fit_bias(torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="at least 2 images"):
        repairs.reestimate_batchnorm(model, torch.zeros(1, *SHAPE))
    with pytest.raises(ValueError, match="no BatchNorm"):
        repairs.reestimate_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), torch.zeros(4, *SHAPE))
    with pytest.raises(ValueError, match="final nn.Linear"):
        repairs.recalibrate_decision(nn.Sequential(nn.Flatten()), split(4))
