"""Composite layer-wise relevance propagation through zennit: the study's ``lrp`` criterion.

Epsilon-LRP alone is not a criterion of its own on a ReLU network: with the epsilon rule everywhere,
relevance equals gradient x input, so ``lrp_epsilon`` and ``gradxact`` score every filter alike. The
composite of Yeom et al. (2021, Pattern Recognition 115, "Pruning by explaining") and Montavon et al.
(2019, "Layer-wise relevance propagation: an overview") uses a rule per layer type:

- BatchNorm is merged into the convolution before it (zennit's ``SequentialMergeBatchNorm``
  canonizer), so the explained network is a plain conv/ReLU network and a filter's relevance is
  measured at its normalised pre-activation, the tensor that pruning removes;
- convolutions after the first: the z+ rule, :math:`R_i = \\sum_j \\frac{a_i w_{ij}^+}{\\sum_{i'} a_{i'} w_{i'j}^+} R_j`
  (``conv="zplus"``), or alpha2-beta1 (``conv="alpha2beta1"``);
- the first layer: the flat rule (``first="flat"``: relevance spread evenly over the receptive field) or
  the w-square rule (``first="wsquare"``); it shapes pixel heatmaps only, not any filter's score;
- dense layers: epsilon; average pooling and residual sums: the relevance split in proportion to each
  input's contribution (zennit's ``Norm``); ReLU passes relevance unchanged.

The relevance entering the network is the target class's logit (one-hot times the output), as in
Captum's LRP, so an image weighs by its evidence. With zero biases the total relevance is conserved
layer by layer (a test checks it); with biases (BatchNorm's shift merged into each convolution) some
is absorbed by them, as the rules intend.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types

import torch
from torch import nn

from xaiprune import models

CONV_RULES = ("zplus", "alpha2beta1")
FIRST_RULES = ("flat", "wsquare")


def _zennit():
    """The zennit package, imported without torchvision.

    zennit's ``__init__`` imports ``zennit.torchvision`` (canonizers for torchvision's own ResNets), which
    imports torchvision; torchvision's wheels are CUDA builds that do not load against the CPU torch. This
    project's models are its own, so while zennit is imported, a placeholder ``torchvision.models.resnet``
    with the two class names zennit refers to stands in, and is removed afterwards: nothing of torchvision
    is used, and a later ``import torchvision`` behaves as without zennit.
    """
    if "zennit" in sys.modules:
        return sys.modules["zennit"]
    names = ("torchvision", "torchvision.models", "torchvision.models.resnet")
    if "torchvision" in sys.modules:
        return importlib.import_module("zennit")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})  # never matched by this project's models
    resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
    placeholders = dict(zip(names, (types.ModuleType("torchvision"), types.ModuleType("torchvision.models"), resnet)))
    sys.modules.update(placeholders)
    try:
        return importlib.import_module("zennit")
    finally:
        for name in names:
            sys.modules.pop(name, None)


def _block_canonizer():
    """Makes the residual sum of :class:`xaiprune.models.BasicBlock` a module zennit can attach a rule to."""
    _zennit()
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(block, x):
        out = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x)))))
        identity = x if block.shortcut is None else block.shortcut(x)
        return block.relu2(block.canonizer_sum(torch.stack([identity, out], dim=-1)))

    def attributes(name, module):
        if isinstance(module, models.BasicBlock):
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


def composite(conv: str = "zplus", first: str = "flat", epsilon: float = 1e-6):
    """The zennit composite of the rules above, with the BatchNorm-merging and residual-sum canonizers."""
    if conv not in CONV_RULES:
        raise ValueError(f"conv={conv!r}; expected one of {CONV_RULES}")
    if first not in FIRST_RULES:
        raise ValueError(f"first={first!r}; expected one of {FIRST_RULES}")
    if not epsilon > 0:
        raise ValueError(f"epsilon={epsilon!r}; expected a positive number")
    _zennit()
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta, Epsilon, Flat, WSquare, ZPlus
    from zennit.types import Convolution, Linear

    conv_rule = ZPlus(stabilizer=epsilon) if conv == "zplus" else AlphaBeta(alpha=2.0, beta=1.0, stabilizer=epsilon)
    first_rule = Flat(stabilizer=epsilon) if first == "flat" else WSquare(stabilizer=epsilon)
    layer_map = layer_map_base(epsilon) + [(Convolution, conv_rule), (nn.Linear, Epsilon(epsilon=epsilon))]
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=[(Linear, first_rule)],
                                         canonizers=[SequentialMergeBatchNorm(), _block_canonizer()])


def _initial(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The relevance entering the network: each image's target logit, zero elsewhere."""
    return torch.zeros_like(output).scatter_(1, target[:, None], output.gather(1, target[:, None]))


def layer_relevance(model: nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor,
                    conv: str = "zplus", first: str = "flat", epsilon: float = 1e-6) -> list[torch.Tensor]:
    """Composite-LRP relevance at the output of each named layer (N x C x H x W each), for ``target``.

    Runs on a copy of ``model`` in eval mode: zennit's canonizers rewrite parameters (and restore them),
    and its rules hook every layer. For a convolution followed by BatchNorm, the output is the merged
    (normalised) pre-activation.
    """
    model = copy.deepcopy(model).eval()
    by_name = dict(model.named_modules())
    missing = [n for n in layers if n not in by_name]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model")
    outputs: dict[int, torch.Tensor] = {}
    with composite(conv, first, epsilon).context(model) as explained:
        # registered after zennit's hooks, so each sees the output zennit's rule will receive relevance at
        handles = [by_name[n].register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out))
                   for k, n in enumerate(layers)]
        try:
            out = explained(x.detach().clone().requires_grad_(True))
            relevance = torch.autograd.grad(out, [outputs[k] for k in range(len(layers))],
                                            grad_outputs=_initial(out, target))
        finally:
            for h in handles:
                h.remove()
    return [r.detach() for r in relevance]


def input_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, conv: str = "zplus",
                    first: str = "flat", epsilon: float = 1e-6) -> torch.Tensor:
    """Composite-LRP pixel relevance (N x C x H x W) for ``target``: the heatmaps of 03."""
    model = copy.deepcopy(model).eval()
    with composite(conv, first, epsilon).context(model) as explained:
        x = x.detach().clone().requires_grad_(True)
        out = explained(x)
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=_initial(out, target))
    return relevance.detach()
