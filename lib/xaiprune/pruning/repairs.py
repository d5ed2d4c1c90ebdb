"""Repairs of a pruned network that need no fine-tuning: nothing of the network is trained by gradient steps.

Pruning without fine-tuning keeps the ranking of the images long after it loses the decision: the
logits drift, so ACC falls to the majority-class rate while AUC stays high (notebook 04). Three repairs,
each applied identically to every criterion, each stating what it uses:

- :func:`recalibrate_decision` refits only the **final bias** (for a binary task: the decision threshold)
  on the labelled reference set already used for scoring: ``C - 1`` numbers fitted by maximum likelihood
  on the frozen logits (uses **labels**: the reference set's ``n_per_class`` per class);
- :func:`reestimate_batchnorm` replaces every BatchNorm's running mean and variance by the statistics of
  unlabelled local images (a ward has many unlabelled scans): one forward pass, **no labels**;
- :func:`compensate` folds each removed channel's mean contribution into the bias of the layer that consumed
  it, so that layer's mean pre-activation on the reference images is unchanged: **no labels**;
- :func:`correct_means` (for compressed weights, notebook 09) shifts each BatchNorm's running mean by the change
  compression made to its input's mean on the reference images: **no labels**.

"No fine-tuning" here means no gradient step on any weight; the decision recalibration solves a small
convex problem over the final bias only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from xaiprune import data
from xaiprune.pruning import ranking

REPAIRS = ("recalibrate", "batchnorm", "compensate")
LABELS_USED = {"recalibrate": "the reference set's labels", "batchnorm": "none", "compensate": "none"}


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].bias is None:
        raise ValueError("the model has no final nn.Linear layer with a bias to recalibrate")
    return linears[-1]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x).double()


def fit_bias(logits: torch.Tensor, y: torch.Tensor, multilabel: bool = False, steps: int = 100) -> torch.Tensor:
    """The bias shift ``delta`` (one per output) that maximises the likelihood of ``y`` given ``logits + delta``.

    Single-label tasks: softmax cross-entropy, with ``delta[0] = 0`` (only differences between classes
    matter); multi-label: each label's logistic loss. Convex in ``delta``; solved with L-BFGS from zero.
    """
    if len(logits) == 0:
        raise ValueError("the reference set is empty: nothing to recalibrate on")
    logits = logits.detach().double()
    n_out = logits.shape[1]
    free = torch.zeros(n_out if multilabel else n_out - 1, dtype=torch.float64, requires_grad=True)

    def shifted() -> torch.Tensor:
        delta = free if multilabel else torch.cat([free.new_zeros(1), free])
        return logits + delta

    def loss() -> torch.Tensor:
        if multilabel:
            return F.binary_cross_entropy_with_logits(shifted(), y.double())
        return F.cross_entropy(shifted(), y.long())

    opt = torch.optim.LBFGS([free], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    return (shifted() - logits)[0].detach()


def recalibrate_decision(model: nn.Module, reference: data.Split) -> nn.Module:
    """A copy of ``model`` whose final bias is refitted on the labelled ``reference`` set (nothing else changes)."""
    multilabel = reference.y.ndim == 2
    delta = fit_bias(_logits(model, reference.x), reference.y, multilabel=multilabel)
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        _last_linear(model).bias.add_(delta.to(_last_linear(model).bias.dtype))
    return model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are those of ``images`` (no labels, no weight changes).

    Up to ``batch_size`` images go through in one batch, so each layer's running mean and (unbiased)
    variance are exactly the statistics of its input over those images; larger sets are averaged over
    batches (PyTorch's cumulative average, ``momentum=None``).
    """
    if len(images) < 2:
        raise ValueError(f"{len(images)} image(s): BatchNorm statistics need at least 2 images")
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the model has no BatchNorm layer to re-estimate")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for chunk in torch.split(images, batch_size):
        model(chunk)
    return model.eval()


def _consumer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of each named module on ``x``, from one forward pass of ``model``."""
    by_name, seen = dict(model.named_modules()), {}
    handles = [by_name[n].register_forward_pre_hook(lambda _m, args, n=n: seen.__setitem__(n, args[0].detach()))
               for n in names]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _mean_contribution(module: nn.Module, inputs: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """Mean over images (and positions) of what ``channels`` of the input add to each output of ``module``."""
    part = inputs[:, channels]
    if isinstance(module, nn.Conv2d):
        out = F.conv2d(part, module.weight[:, channels], None, module.stride, module.padding, module.dilation)
        return out.mean(dim=(0, 2, 3))
    if isinstance(module, nn.Linear):
        return (part @ module.weight[:, channels].T).mean(dim=0)
    raise NotImplementedError(f"compensation into {type(module).__name__} is not supported")


def _removed(graph: ranking.PruningGraph, plan: ranking.Plan, segments=None) -> tuple[dict, dict]:
    """Per module: the input channels the plan removes (consumers) and the output channels it removes."""
    groups = graph.groups(segments)[1]
    inputs: dict[str, list[int]] = {}
    outputs: dict[str, list[int]] = {}
    for g, removed in plan:
        removed = torch.as_tensor(removed, dtype=torch.long)
        for item in groups[g].items:
            if item.module is None:
                continue
            idxs = item.idxs[torch.isin(item.root_idxs, removed)].tolist()
            if not idxs:
                continue
            side = outputs if graph.graph.is_out_channel_pruning_fn(item.handler) else inputs
            side.setdefault(item.module, []).extend(idxs)
    return inputs, outputs


def compensate(graph: ranking.PruningGraph, plan: ranking.Plan, pruned: nn.Module, reference: data.Split,
               segments=None) -> nn.Module:
    """A copy of ``pruned`` (``graph.apply(plan)``) with each consumer's bias shifted by what the plan removed.

    For every layer that consumed a removed channel (the next convolution, or the classifier), the mean
    over the reference images and positions of the removed channels' contribution, taken in the unpruned
    model, is added to its bias (a bias is created for a convolution without one): that layer's mean
    pre-activation on the reference set is then the unpruned model's (exactly, when no earlier layer was
    pruned; earlier pruning changes the inputs it compensates for).
    """
    consumed, produced = _removed(graph, plan, segments)
    repaired = copy.deepcopy(pruned).eval()
    if not consumed:
        return repaired
    original = dict(graph.model.named_modules())
    inputs = _consumer_inputs(graph.model, list(consumed), reference.x)
    by_name = dict(repaired.named_modules())
    with torch.no_grad():
        for name, channels in consumed.items():
            delta = _mean_contribution(original[name], inputs[name], sorted(set(channels)))
            gone = set(produced.get(name, ()))
            kept = [o for o in range(len(delta)) if o not in gone]
            target = by_name[name]
            shift = delta[kept].to(target.weight.dtype)
            if target.bias is None:
                target.bias = nn.Parameter(shift.clone(), requires_grad=False)
            else:
                target.bias.add_(shift)
    return repaired


@torch.no_grad()
def correct_means(original: nn.Module, compressed: nn.Module, reference: data.Split) -> nn.Module:
    """Empirical bias correction: shift each BatchNorm's running mean by the change of its input's mean.

    Compression shifts the mean of every conv output (Nagel et al., "Data-free quantization through weight
    equalization and bias correction", ICCV 2019), and without fine-tuning the BatchNorm after it keeps
    normalising with the old mean. Here, in one pass over the reference images (no labels), each
    BatchNorm's running mean becomes ``mu + (m_compressed - m_original)``, with ``m`` the per-channel mean
    of its input over the images and positions, layer after layer (each correction sees the corrected layers
    before it). Variances, weights and the classifier are unchanged. No labels. Modifies and returns ``compressed``;
    used by :mod:`xaiprune.compression.compress` after compressing the weights.
    """
    if len(reference) == 0:
        raise ValueError("the reference set is empty: BatchNorm means need at least one image")
    bns = [n for n, m in original.named_modules() if isinstance(m, nn.BatchNorm2d)]
    seen: dict[str, torch.Tensor] = {}
    hooks = [original.get_submodule(n).register_forward_pre_hook(
        lambda m, i, n=n: seen.__setitem__(n, i[0].mean(dim=(0, 2, 3)))) for n in bns]
    original.eval()(reference.x)
    for h in hooks:
        h.remove()

    def shift(m, i, n):
        m.running_mean += i[0].mean(dim=(0, 2, 3)) - seen[n]
    hooks = [compressed.get_submodule(n).register_forward_pre_hook(lambda m, i, n=n: shift(m, i, n)) for n in bns]
    compressed.eval()(reference.x)
    for h in hooks:
        h.remove()
    return compressed
