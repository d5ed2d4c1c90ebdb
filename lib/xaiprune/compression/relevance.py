"""Every weight's relevance (DeepLIFT, and the first-order Taylor counterpart) and the weights no input can reach.

The project's reconstruction of the weight relevance of Sabih, Hannig and Teich, "Utilizing Explainable AI for
Quantization and Pruning of Deep Neural Networks" (2020, https://arxiv.org/abs/2008.09072; full text not available
here, see ``docs/DESIGN.md``). For a conv or linear layer with input ``x`` and output ``z``, ``x'`` its input on the
reference image (the zero image, mid-grey after normalisation, as :mod:`xaiprune.pruning.xai`'s DeepLIFT) and
``m_{n,o,p}`` DeepLIFT's multiplier (rescale rule) of output ``o`` at position ``p`` for image n's explained output
(the logit of its true class; Captum ``LayerDeepLift(model, layer, multiply_by_inputs=False)``):

- **deeplift** (:data:`METHODS`): ``R(w_{o,i,k}) = sum_n | sum_p m_{n,o,p} w_{o,i,k} (x_{n,i,p+k} - x'_{i,p+k}) |``,
  the weight's share of the layer's DeepLIFT contribution. Without the absolute value, a layer's weights sum to its
  attribution ``sum m (z - z')`` exactly (the bias cancels in ``z - z'``), hence to ``f(x_n) - f(x')`` as far as
  DeepLIFT's summation to delta holds (:func:`completeness` measures both);
- **taylor**: ``sum_n |w dR_n/dw|``, the weight-level first-order Taylor saliency (Molchanov et al., ICLR 2017,
  here on the explained logit): a non-XAI counterpart, like **magnitude** ``|w|``.

**Dead weights** (:func:`dead_weights`): a kernel tap of a zero-padded conv that, given the layer's input size, stride,
padding and dilation, only ever reads padding never touches the output, whatever the image (a padded 3x3 conv on a
1x1 input uses its centre tap only). They are found from the geometry alone, never from relevance, and every
variant of :mod:`xaiprune.compression.experiments` removes them first. Used by ``09_compression.ipynb``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict

import torch
from captum.attr import LayerDeepLift
from torch import nn

from xaiprune import data, paths
from xaiprune.compression.compress import check_reference, weight_layers
from xaiprune.pruning import xai

VERSIONS = {"deeplift": 1, "taylor": 2}  # bump one when its method changes what it computes (the cache's key)


# ----- the weights no input reaches -------------------------------------------------------------------
def live_taps(n: int, kernel: int, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """Along one axis of length ``n``: True for each kernel tap that reads an input position (not padding) at some
    output position."""
    out = (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"an input of {n} gives no output with kernel {kernel}, stride {stride}, padding {padding}")
    reads = torch.arange(out)[:, None] * stride - padding + torch.arange(kernel)[None, :] * dilation
    return ((reads >= 0) & (reads < n)).any(0)


def input_shapes(model: nn.Module, x: torch.Tensor) -> "dict[str, tuple[int, ...]]":
    """Each conv and linear layer's input shape (without the batch) on a forward pass of ``x[:1]``."""
    return {k: tuple(i.shape[1:]) for k, (i, _) in layer_io(model, x[:1]).items()}


def dead_weights(model: nn.Module, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """``{key: bool tensor of the weight's shape}``, True for a weight that only ever reads zero padding.

    The input sizes come from a forward pass of ``x`` (any image of the right shape); a tap is dead when no output
    position puts it on the input (:func:`live_taps` per axis). Only zero padding counts: with reflect or circular
    padding every tap reads pixels. Linear layers have no dead weights.
    """
    shapes, out = input_shapes(model, x), OrderedDict()
    for k, m in weight_layers(model).items():
        dead = torch.zeros(m.weight.shape, dtype=torch.bool)
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
            if isinstance(m.padding, str):
                raise ValueError(f"{k}: padding={m.padding!r}; dead taps need numeric padding")
            axes = [live_taps(n, *a) for n, a in zip(shapes[k][-2:], zip(m.kernel_size, m.stride, m.padding, m.dilation))]
            dead[:] = ~(axes[0][:, None] & axes[1][None, :])
        out[k] = dead
    return out


def dead_share(dead: "dict[str, torch.Tensor]") -> float:
    """The share of all conv and linear weights that are dead."""
    return sum(int(d.sum()) for d in dead.values()) / sum(d.numel() for d in dead.values())


# ----- relevance of every weight ----------------------------------------------------------------------
def _state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for k, v in model.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def relevance_file(model: nn.Module, reference: data.Split, method: str):
    """Cache file of :func:`weight_relevance`: a hash of the weights, the images, the labels, the method and its version."""
    payload = {"model": _state_hash(model), "images": hashlib.sha256(reference.x.numpy().tobytes()).hexdigest(),
               "labels": reference.y.tolist(), "method": method, "version": VERSIONS[method]}
    name = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
    return paths.ARTIFACTS / "relevance" / f"weights-{method}-{name}.pt"


def layer_io(model: nn.Module, x: torch.Tensor) -> "dict[str, tuple[torch.Tensor, torch.Tensor]]":
    """Each conv and linear layer's input and output on a forward pass of ``x`` (detached)."""
    seen, layers = {}, weight_layers(model)
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0].detach(), o.detach())))
             for k, m in layers.items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def contributions(layer: nn.Module, delta: torch.Tensor, multipliers: torch.Tensor):
    """Per image n, the signed DeepLIFT contribution of every weight, ``w * sum_p m_{n,o,p} dx_{n,i,p+k}`` (a tensor of
    the weight's shape), from the layer's input differences ``delta`` and its output multipliers; a generator."""
    w = layer.weight.detach()
    for d, m in zip(delta, multipliers):
        if isinstance(layer, nn.Linear):
            yield w * torch.outer(m, d)
        else:
            yield w * torch.nn.grad.conv2d_weight(d[None], w.shape, m[None], layer.stride, layer.padding,
                                                  layer.dilation, layer.groups)


def deeplift_parts(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """``{key: (input differences x - x', output multipliers, output differences z - z')}`` of every conv and linear
    layer, for images ``x`` explained at ``target``, on a copy of ``model`` (Captum's hooks stay on the modules)."""
    net = copy.deepcopy(model).eval()
    base = torch.zeros_like(x)
    seen, reference = layer_io(net, x), layer_io(net, base[:1])
    return {k: (seen[k][0] - reference[k][0], LayerDeepLift(net, m, multiply_by_inputs=False).attribute(
                x, baselines=base, target=target).detach(), seen[k][1] - reference[k][1])
            for k, m in weight_layers(net).items()}


def _deeplift(model: nn.Module, reference: data.Split) -> "OrderedDict[str, torch.Tensor]":
    parts = deeplift_parts(model, reference.x, xai._targets(reference.y))
    out = OrderedDict()
    for k, m in weight_layers(model).items():
        out[k] = torch.zeros_like(m.weight, dtype=torch.float64)
        for c in contributions(m, *parts[k][:2]):
            out[k] += c.abs().double()
    return out


def _taylor(model: nn.Module, reference: data.Split) -> "OrderedDict[str, torch.Tensor]":
    net = copy.deepcopy(model).eval()
    layers = weight_layers(net)
    params = [m.weight for m in layers.values()]
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for x, target in zip(reference.x, xai._targets(reference.y)):
        grads = torch.autograd.grad(net(x[None])[0, int(target)], params)
        for s, p, g in zip(sums, params, grads):
            s += (p.detach() * g).abs().double()
    return OrderedDict(zip(layers, sums))


METHODS = {"deeplift": _deeplift, "taylor": _taylor}


def weight_relevance(model: nn.Module, reference: data.Split, method: str = "deeplift",
                     cache: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """Relevance of every conv and linear weight by ``method`` (a key of :data:`METHODS`) on the reference images.

    The explained output of image n is the logit of its true class (multi-label: its first positive label, as
    :mod:`xaiprune.pruning.xai`); the absolute value is taken per image, then summed (as the filter relevance sums
    |R| per image). With ``cache``, the result is kept in ``artifacts/relevance/`` under :func:`relevance_file`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {sorted(METHODS)}")
    check_reference(reference)
    path = relevance_file(model, reference, method) if cache else None
    if path is not None and path.is_file():
        return OrderedDict(torch.load(path, map_location="cpu", weights_only=True))
    out = OrderedDict((k, s.float()) for k, s in METHODS[method](model.eval(), reference).items())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(out), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return out


def completeness(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> "OrderedDict[str, dict[str, float]]":
    """Per layer, the signed contributions of its weights summed per image against (``"layer"``) DeepLIFT's attribution
    to the layer's output, ``sum m (z - z')``, relative to the summed absolute contributions (rounding only: the weights
    split it exactly), and against (``"delta"``) ``f(x_n) - f(x')`` of the explained output, relative to the largest
    ``|f(x_n) - f(x')|`` (summation to delta, which Captum's max-pool rule keeps only approximately); each the largest
    over the images."""
    parts = deeplift_parts(model, x, target)
    with torch.no_grad():
        model.eval()
        delta = (model(x) - model(torch.zeros_like(x[:1]))).gather(1, target[:, None])[:, 0]
    out = OrderedDict()
    for k, m in weight_layers(model).items():
        dx, mult, dz = parts[k]
        each = [(c.sum(), c.abs().sum()) for c in contributions(m, dx, mult)]
        sums, size = torch.stack([e[0] for e in each]), torch.stack([e[1] for e in each]).max().clamp_min(1e-12)
        layer = (mult * dz).flatten(1).sum(1)
        out[k] = {"layer": float((sums - layer).abs().max() / size),
                  "delta": float((sums - delta).abs().max() / delta.abs().max().clamp_min(1e-12))}
    return out


def magnitude(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The non-XAI score of every conv and linear weight: ``|w|``."""
    return OrderedDict((k, m.weight.detach().abs().clone()) for k, m in weight_layers(model).items())
