"""Composite LRP through zennit: conservation, a real difference from gradient x input, clean imports, errors."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import small, split
from xaiprune import models
from xaiprune.pruning import lrp, xai


def zero_biases(model: nn.Module) -> nn.Module:
    """Fresh BatchNorm statistics and zero biases: merged convolutions have no bias, so nothing absorbs relevance."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.zeros_(m.bias)
            m.running_mean.zero_()
    return model.eval()


def target_logit(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target[:, None])[:, 0]


@pytest.mark.parametrize("conv", lrp.CONV_RULES)
def test_relevance_is_conserved_at_every_conv_layer_and_the_input(conv):
    torch.manual_seed(0)
    model = zero_biases(models.small_cnn(1, 2))
    x, target = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 1, 0])
    logit = target_logit(model, x, target)
    layers = list(models.conv_layers(model))
    for r in lrp.layer_relevance(model, layers, x, target, conv=conv):
        torch.testing.assert_close(r.sum(dim=(1, 2, 3)), logit, rtol=1e-3, atol=1e-6)
    for first in lrp.FIRST_RULES:
        pixels = lrp.input_relevance(model, x, target, conv=conv, first=first)
        torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), logit, rtol=1e-3, atol=1e-6)


def test_residual_sums_split_relevance_and_conserve_it():
    """ResNet blocks: the canonizer routes the sum through zennit's Norm rule, so the input still gets all of it."""
    torch.manual_seed(1)
    model = zero_biases(models.resnet18(1, 2))
    x, target = torch.rand(2, 1, 28, 28), torch.tensor([1, 0])
    torch.testing.assert_close(lrp.input_relevance(model, x, target).sum(dim=(1, 2, 3)),
                               target_logit(model, x, target), rtol=1e-3, atol=1e-6)


def test_composite_differs_from_gradient_times_activation_on_the_study_architecture():
    """On VGG-16-BN, epsilon-LRP equals Grad x Act to rounding; the composite ranks filters differently."""
    torch.manual_seed(2)
    model = models.vgg16_bn(1, 2).eval()
    for m in model.modules():  # BatchNorm statistics as after training, not the identity of a fresh layer
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ref = split(4)
    composite, eps, gxa = (xai.filter_scores(model, ref, m) for m in ("lrp", "lrp_epsilon", "gradxact"))
    differs = 0
    for layer in composite.layers:
        torch.testing.assert_close(eps.normalised(layer), gxa.normalised(layer), rtol=1e-3, atol=1e-6)
        a, b = composite.normalised(layer).argsort().argsort().float(), gxa.normalised(layer).argsort().argsort().float()
        differs += torch.corrcoef(torch.stack([a, b]))[0, 1].item() < 0.95  # Spearman's rho of the two rankings
    assert differs >= len(composite.layers) // 2


def test_model_is_left_as_it_was():
    model = small()
    state = copy.deepcopy(model.state_dict())
    lrp.layer_relevance(model, list(models.conv_layers(model)), split(3).x, split(3).y)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model._forward_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_zennit_is_imported_without_leaving_a_torchvision_module_behind():
    code = ("import sys; from xaiprune.pruning import lrp; lrp.composite(); "
            "assert 'zennit' in sys.modules and not any(m.startswith('torchvision') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kwargs,match", [({"conv": "epsilon"}, "conv='epsilon'"), ({"first": "zb"}, "first='zb'"),
                                          ({"epsilon": 0}, "epsilon=0")])
def test_bad_rules_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lrp.composite(**kwargs)


def test_unknown_layer_names_raise():
    model = small()
    with pytest.raises(ValueError, match="not modules"):
        lrp.layer_relevance(model, ["segments.nope"], split(2).x, split(2).y)
