"""Model shapes, segment composition, and LRP compatibility of every module."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LRP
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.custom_modules import Addition_Module
from torch import nn

from xaiprune import models

ARCHS = sorted(models.ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 28), (1, 64), (3, 64)])
def test_output_shape(arch, channels, size):
    torch.manual_seed(0)
    model = models.build(arch, channels, 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 5)


@pytest.mark.parametrize("arch", ARCHS)
def test_segments_compose_to_the_whole_model(arch):
    torch.manual_seed(0)
    model = models.build(arch, 1, 2).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        whole = model(x)
        h = x
        for segment in model.segments.values():
            h = segment(h)
        split = model.run_segments(model.run_segments(x, 0, 2), 2)
    assert len(model.segments) >= 3
    torch.testing.assert_close(h, whole, rtol=0, atol=0)
    torch.testing.assert_close(split, whole, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_leaf_module_has_an_lrp_rule(arch):
    model = models.build(arch, 1, 2)
    ruled = set(SUPPORTED_LAYERS_WITH_RULES) | set(SUPPORTED_NON_LINEAR_LAYERS) | {Addition_Module}
    leaves = [m for m in model.modules() if not list(m.children())]
    assert leaves and all(type(m) in ruled for m in leaves), {type(m).__name__ for m in leaves} - {
        t.__name__ for t in ruled}
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in leaves)
    relus = [m for m in leaves if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus)


@pytest.mark.parametrize("arch", ARCHS)
def test_lrp_explains_every_architecture(arch):
    torch.manual_seed(0)
    model = models.build(arch, 1, 2).eval()
    x = torch.randn(2, 1, 28, 28)
    attr = LRP(model).attribute(x, target=1)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0


def test_unknown_architecture():
    with pytest.raises(ValueError, match="resnet50"):
        models.build("resnet50", 1, 2)


def test_conv_layers_in_forward_order():
    names = list(models.conv_layers(models.build("vgg16_bn", 1, 2)))
    assert len(names) == 13 and names[0].startswith("segments.block1") and names[-1].startswith("segments.block5")
