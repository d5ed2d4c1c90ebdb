"""Filter relevance from explanation methods (Captum), the XAI pruning criterion of the study.

For every conv layer with output ``a`` (N x C x H x W) and its relevance ``R`` from a method, with the
target set to each image's true label, the score of filter ``c`` is

    score_c = sum_{n, h, w} |R[n, c, h, w]|            (summed over the reference images and space),

kept per class (the sum over the images of that class) and in total; normalised per layer by the
layer's sum so that layers of different widths compare; ranked globally. This is the convention of
Yeom et al., "Pruning by explaining: a novel criterion for deep neural network pruning", Pattern
Recognition 115 (2021), https://doi.org/10.1016/j.patcog.2021.107899, used by Baccour et al. (ICC 2023).

Methods, in :data:`METHODS` keyed by the notebook parameter:
``lrp`` (composite LRP through zennit, :mod:`xaiprune.pruning.lrp`: BatchNorm merged into each convolution, z+ on
convolutions, epsilon on the dense layer), ``lrp_epsilon`` (Captum's LayerLRP with the epsilon rule everywhere,
which on a ReLU network equals gradient x activation: a labelled variant, kept to show it;
``rule="zplus"`` uses alpha1-beta0 on conv layers), ``deeplift`` (LayerDeepLift, zero baseline), ``ig``
(LayerIntegratedGradients, ``steps``), ``gradxact`` (LayerGradientXActivation). Used by
``03_xai_scores.ipynb`` and the XAI criteria of :mod:`xaiprune.pruning.prune`.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
from captum.attr import LayerDeepLift, LayerGradientXActivation, LayerIntegratedGradients, LayerLRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
from torch import nn

from xaiprune import data, models
from xaiprune.pruning import lrp


def _targets(y: torch.Tensor) -> torch.Tensor:
    """True label per image; for multi-label tasks the first positive label (0 if none)."""
    return y if y.ndim == 1 else y.float().argmax(dim=1)


def _modules(model: nn.Module, names: list[str]) -> list[nn.Module]:
    by_name = dict(model.named_modules())
    return [by_name[n] for n in names]


def with_lrp_rules(model: nn.Module, rule: str = "epsilon", epsilon: float = 1e-9) -> nn.Module:
    """A copy of ``model`` with Captum LRP rules attached (Captum mutates the modules it explains).

    ``"epsilon"``: the epsilon rule everywhere; ``"zplus"``: alpha1-beta0 (z+) on conv layers and
    epsilon elsewhere (the composite Montavon et al. 2019 recommend for convolutional features).
    """
    if rule not in ("epsilon", "zplus"):
        raise ValueError(f"rule={rule!r}; expected 'epsilon' or 'zplus' (alpha1-beta0)")
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and rule == "zplus":
            m.rule = Alpha1_Beta0_Rule()
        elif isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.rule = EpsilonRule(epsilon=epsilon)
    return model


def _lrp_captum(model: nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor,
                rule: str = "epsilon", epsilon: float = 1e-9, **_) -> list[torch.Tensor]:
    """Layer-wise relevance propagation (Bach et al. 2015) at the output of each layer, Captum's rules
    (:func:`with_lrp_rules`): with ``rule="epsilon"`` it equals gradient x activation on a ReLU network."""
    model = with_lrp_rules(model, rule, epsilon)
    return list(LayerLRP(model, _modules(model, layers)).attribute(x, target=target))


def _lrp_composite(model: nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor,
                   conv: str = "zplus", epsilon: float = 1e-6, **_) -> list[torch.Tensor]:
    """Composite LRP (Yeom et al. 2021) at the output of each layer: :func:`xaiprune.pruning.lrp.layer_relevance`."""
    return lrp.layer_relevance(model, layers, x, target, conv=conv, epsilon=epsilon)


def _deeplift(model: nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor,
              **_) -> list[torch.Tensor]:
    """DeepLIFT rescale rule (Shrikumar et al. 2017), zero (mid-grey) baseline, one layer at a time.

    Runs on a copy: Captum's DeepLIFT hooks leave ``input``/``output`` tensors on the non-linear
    modules below the explained layer.
    """
    model = copy.deepcopy(model)
    return [LayerDeepLift(model, layer).attribute(x, baselines=torch.zeros_like(x), target=target)
            for layer in _modules(model, layers)]


def _ig(model: nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor,
        steps: int = 8, **_) -> list[torch.Tensor]:
    """Integrated gradients (Sundararajan et al. 2017) with each layer's output as the input.

    The layer's activation is interpolated from its value on the zero (mid-grey) image to its value on
    ``x`` in ``steps`` Riemann steps; one Captum ``LayerIntegratedGradients`` per layer (a list of
    chained layers cannot be interpolated together), so the cost is ``steps`` x layers passes.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}; expected a positive integer")
    return [LayerIntegratedGradients(model, layer).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
                internal_batch_size=len(x) * steps)
            for layer in _modules(model, layers)]


def _gradxact(model: nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor,
              **_) -> list[torch.Tensor]:
    """Gradient times activation of each layer's output (Shrikumar et al. 2016)."""
    return list(LayerGradientXActivation(model, _modules(model, layers)).attribute(x, target=target))


METHODS: dict[str, Callable[..., list[torch.Tensor]]] = {
    "lrp": _lrp_composite,
    "lrp_epsilon": _lrp_captum,
    "deeplift": _deeplift,
    "ig": _ig,
    "gradxact": _gradxact,
}


@dataclass
class FilterScores:
    """Relevance of every filter of every conv layer, per class and in total.

    ``per_class[layer]`` is a (n_classes, C) tensor of summed |R| over the reference images of each
    class; ``total(layer)`` sums the classes; ``normalised(layer)`` divides by the layer's sum.
    """

    method: str
    per_class: "OrderedDict[str, torch.Tensor]"
    n_images: int
    seconds: float = 0.0
    options: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.per_class)

    def total(self, layer: str) -> torch.Tensor:
        return self.per_class[layer].sum(0)

    def normalised(self, layer: str, cls: int | None = None) -> torch.Tensor:
        s = self.total(layer) if cls is None else self.per_class[layer][cls]
        return s / s.sum().clamp_min(torch.finfo(s.dtype).tiny)

    def to_frame(self) -> pd.DataFrame:
        """One row per filter: layer, filter index, raw and normalised score, and global rank (0 = least relevant)."""
        rows = []
        for layer in self.layers:
            raw, norm = self.total(layer), self.normalised(layer)
            rows += [{"layer": layer, "filter": c, "score": float(raw[c]), "normalised": float(norm[c])}
                     for c in range(len(raw))]
        frame = pd.DataFrame(rows)
        frame["rank"] = frame["normalised"].rank(method="first").astype(int) - 1
        return frame


def filter_scores(model: nn.Module, reference: data.Split, method: str = "lrp", batch_size: int = 64,
                  **options) -> FilterScores:
    """Score every conv filter of ``model`` with ``method`` on the reference images (one call, all layers).

    Args:
        model: a trained model in eval mode (not modified).
        reference: the scarce reference set (see :func:`xaiprune.data.reference_set`).
        method: a key of :data:`METHODS`.
        batch_size: images per attribution call; the scores do not depend on it (eval-mode BN,
            per-image attributions summed).
        options: method options, e.g. ``rule="zplus"`` for LRP or ``steps=32`` for IG.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not an XAI method; expected one of {sorted(METHODS)}")
    if len(reference) == 0:
        raise ValueError("the reference set is empty")
    model = model.eval()
    convs = models.conv_layers(model)
    n_classes = int(reference.y.max()) + 1 if reference.y.ndim == 1 else reference.y.shape[1]
    n_classes = max(n_classes, len(data.class_names(reference.flag)))
    sums = OrderedDict((name, torch.zeros(n_classes, conv.out_channels, dtype=torch.float64))
                       for name, conv in convs.items())
    start = time.perf_counter()
    for i in range(0, len(reference), batch_size):
        x = reference.x[i:i + batch_size].clone().requires_grad_(True)
        target = _targets(reference.y[i:i + batch_size])
        attributions = METHODS[method](model, list(convs), x, target, **options)
        for (name, _), relevance in zip(convs.items(), attributions):
            per_image = relevance.detach().abs().sum(dim=(2, 3)).double()  # (N, C)
            sums[name].index_add_(0, target, per_image)
    model.zero_grad(set_to_none=True)
    return FilterScores(method=method, per_class=OrderedDict((n, s.float()) for n, s in sums.items()),
                        n_images=len(reference), seconds=time.perf_counter() - start, options=options)


def input_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rule: str = "composite") -> torch.Tensor:
    """Pixel-level LRP heatmaps (N x C x H x W) for the given targets, for display in ``03_xai_scores``.

    ``rule="composite"``: the ``lrp`` criterion's rules (:func:`xaiprune.pruning.lrp.input_relevance`, flat rule on the
    first layer); ``"epsilon"`` or ``"zplus"``: Captum's rules of :func:`with_lrp_rules`.
    """
    from captum.attr import LRP

    if rule == "composite":
        return lrp.input_relevance(model, x, target)
    model = with_lrp_rules(model.eval(), rule)
    return LRP(model).attribute(x.clone().requires_grad_(True), target=target).detach()
