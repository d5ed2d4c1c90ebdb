"""Filter relevance from Captum and zennit: LRP conservation, hand-computed scores, batch and seed invariance, errors."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from captum.attr import LayerLRP
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from conftest import small, split
from xaiprune import data, models
from xaiprune.pruning import xai

METHODS = sorted(xai.METHODS)
OPTIONS = {"ig": {"steps": 4}}


def tiny() -> models.SegmentedModel:
    """Two conv segments (4 and 6 filters) and a head, no biases and no BN: LRP conserves relevance exactly."""
    torch.manual_seed(0)
    head = models.Head(6, 2)
    head.fc = nn.Linear(6, 2, bias=False)
    return models.SegmentedModel(OrderedDict(
        a=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)),
        b=nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(), head),
    )).eval()


def captum_lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """Relevance at every conv output, straight from Captum's LayerLRP with the epsilon rule."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.rule = EpsilonRule(epsilon=1e-9)
    layers = list(models.conv_layers(model).values())
    return [r.detach() for r in LayerLRP(model, layers).attribute(x.clone().requires_grad_(True), target=target)]


def test_lrp_conserves_relevance_layer_to_layer():
    model, ref = tiny(), split()
    logit = model(ref.x).gather(1, ref.y[:, None])[:, 0].detach()
    relevances = captum_lrp(model, ref.x, ref.y)
    assert len(relevances) == 2 and logit.abs().min() > 1e-3
    for r in relevances:
        torch.testing.assert_close(r.sum(dim=(1, 2, 3)), logit, rtol=1e-4, atol=1e-7)


def test_lrp_per_class_sums_equal_captum():
    model, ref = tiny(), split()
    scores = xai.filter_scores(model, ref, "lrp_epsilon")
    for name, r in zip(scores.layers, captum_lrp(model, ref.x, ref.y)):
        per_image = r.abs().sum(dim=(2, 3))
        expected = torch.stack([per_image[ref.y == c].sum(0) for c in (0, 1)])
        torch.testing.assert_close(scores.per_class[name], expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["lrp", "lrp_epsilon"])
def test_lrp_last_conv_score_by_hand(method):
    """Below a linear head, R[c, h, w] = relu(z[c, h, w]) * w[target, c] / (H W): score = |w| x pooled ReLU.

    The composite's rules (Norm on the pooling, epsilon on the dense layer) agree with epsilon there."""
    model, ref = tiny(), split()
    scores = xai.filter_scores(model, ref, method, epsilon=1e-12)
    with torch.no_grad():
        pooled = torch.relu(model.segments.b[0](model.segments.a(ref.x))).mean(dim=(2, 3))  # (N, 6)
    w = model.segments.b[2].fc.weight.abs()  # (2, 6)
    expected = torch.stack([(pooled[ref.y == c] * w[c]).sum(0) for c in (0, 1)])
    torch.testing.assert_close(scores.per_class["segments.b.0"], expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("build", [tiny, small], ids=["tiny", "small_cnn"])
def test_scores_do_not_depend_on_batch_size(method, build):
    model, ref = build(), split(5)
    runs = [xai.filter_scores(model, ref, method, batch_size=k, **OPTIONS.get(method, {})) for k in (1, 3, 5)]
    for name in runs[0].layers:
        assert runs[0].per_class[name].abs().sum() > 0
        for other in runs[1:]:
            torch.testing.assert_close(other.per_class[name], runs[0].per_class[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_same_call_gives_identical_scores(method):
    model, ref = small(), split(4)
    a = xai.filter_scores(model, ref, method, **OPTIONS.get(method, {}))
    b = xai.filter_scores(model, ref, method, **OPTIONS.get(method, {}))
    assert all(torch.equal(a.per_class[n], b.per_class[n]) for n in a.layers)


def test_same_reference_seed_gives_identical_scores():
    model, val = small(), split(40, seed=5)
    a, b, c = (xai.filter_scores(model, data.reference_set(val, n_per_class=5, seed=s), "lrp") for s in (3, 3, 4))
    assert a.n_images == 10
    assert all(torch.equal(a.per_class[n], b.per_class[n]) for n in a.layers)
    assert not all(torch.allclose(a.per_class[n], c.per_class[n]) for n in a.layers)


def test_totals_normalisation_and_frame():
    model, ref = small(), split(5)
    scores = xai.filter_scores(model, ref, "lrp")
    widths = {n: c.out_channels for n, c in models.conv_layers(model).items()}
    assert scores.layers == list(widths) and scores.n_images == 5
    for name, width in widths.items():
        assert scores.per_class[name].shape == (2, width)
        torch.testing.assert_close(scores.per_class[name].sum(0), scores.total(name))
        norm = scores.normalised(name)
        assert (norm >= 0).all() and norm.sum().item() == pytest.approx(1.0, abs=1e-5)
    frame = scores.to_frame()
    assert len(frame) == sum(widths.values()) == 112
    assert sorted(frame["rank"]) == list(range(112))
    assert frame.sort_values("rank")["normalised"].is_monotonic_increasing
    assert frame.groupby("layer", sort=False)["filter"].max().to_dict() == {n: w - 1 for n, w in widths.items()}


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "shap"}, r"'shap'.*\['deeplift', 'gradxact', 'ig', 'lrp', 'lrp_epsilon'\]"),
    ({"method": "lrp_epsilon", "rule": "alpha2beta1"}, "'alpha2beta1'"),
    ({"method": "lrp", "conv": "epsilon"}, "conv='epsilon'"),
    ({"method": "ig", "steps": 0}, "steps=0"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xai.filter_scores(tiny(), split(2), **kwargs)


def test_empty_reference_raises():
    empty = data.Split(x=torch.zeros(0, 1, 28, 28), y=torch.zeros(0, dtype=torch.int64),
                       flag="pneumoniamnist", split="val", size=28)
    with pytest.raises(ValueError, match="empty"):
        xai.filter_scores(tiny(), empty, "lrp")


def test_epsilon_lrp_equals_gradient_times_activation_and_zplus_differs():
    """Ancona et al. (ICLR 2018): for ReLU networks, epsilon-LRP with epsilon -> 0 is gradient x input."""
    model, ref = small(), split(5)
    eps = xai.filter_scores(model, ref, "lrp_epsilon", epsilon=1e-12)
    gxa = xai.filter_scores(model, ref, "gradxact")
    zplus = xai.filter_scores(model, ref, "lrp_epsilon", rule="zplus")
    for name in eps.layers:
        torch.testing.assert_close(eps.per_class[name], gxa.per_class[name], rtol=1e-4, atol=1e-7)
    first, last = eps.layers[0], eps.layers[-1]
    assert not torch.allclose(zplus.per_class[first], eps.per_class[first], rtol=1e-2)
    # z+ applies to conv layers only; nothing but the head and BN lies above the last conv's output
    torch.testing.assert_close(zplus.per_class[last], eps.per_class[last], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method,options", [("lrp_epsilon", {"rule": "epsilon"}), ("lrp_epsilon", {"rule": "zplus"}),
                                            ("lrp", {}), ("lrp", {"conv": "alpha2beta1"})])
def test_lrp_leaves_model_untouched(method, options):
    model, ref = small(), split(3)
    before = copy.deepcopy(model.state_dict())
    xai.filter_scores(model, ref, method, **options)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(hasattr(m, "rule") for m in model.modules())


@pytest.mark.parametrize("method", ["lrp", "lrp_epsilon", "gradxact", "ig", "deeplift"])
def test_no_attribute_is_left_on_the_model(method):
    model, ref = small(), split(3)
    before = {name: set(vars(m)) for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    xai.filter_scores(model, ref, method, **OPTIONS.get(method, {}))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    added = {name: sorted(set(vars(m)) - before[name]) for name, m in model.named_modules()
             if set(vars(m)) != before[name]}
    assert added == {}
