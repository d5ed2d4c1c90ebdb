"""DyFiP's filter selection: class-specific relevance, subset scores, and the cached physical sub-networks.

The reconstruction of Sabih, Hannig and Teich, "DyFiP: Explainable AI-based Dynamic Filter Pruning of
Convolutional Neural Networks", EuroMLSys 2022 (https://doi.org/10.1145/3517207.3526982; full text not
available here, see ``08_dyfip.ipynb``). After an intermediate block ``b`` the network's *tail* (the
segments after ``b``) is pruned per request for a set ``S`` of candidate classes:

- class-specific relevance ``I[l, c, f]`` of filter ``f`` of tail layer ``l`` for class ``c``: the summed
  |relevance| of an explanation method (:func:`xaiprune.pruning.xai.filter_scores`, target = c, on reference
  images of class c), normalised per layer and class as in notebook 03 (:func:`class_relevance`, cached
  on disk by a hash of what made it);
- the score of a filter for ``S`` is ``max_{c in S} I[l, c, f]`` (or the sum; :func:`subset_scores`),
  monotone in ``S``;
- every tail layer keeps its top fraction ``keep`` of filters (:meth:`SubnetBuilder.plan`), removed
  physically with Torch-Pruning's own functions through :class:`xaiprune.pruning.ranking.PruningGraph`;
- a sub-network per candidate set (``08_dyfip`` builds every one ahead of time, :mod:`xaiprune.dyfip.serve`).

FLOPs are counted with :func:`xaiprune.pruning.prune.profile` (Torch-Pruning's counter, FLOPs = 2 x MACs), the
project's only counter. :func:`masked_model` is the reference a sub-network must equal: the full tail
with the removed filters' outputs forced to zero (conv weights and BatchNorm affine set to 0).
Used by :mod:`xaiprune.dyfip.core` and ``08_dyfip.ipynb``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from xaiprune import data, models, paths
from xaiprune.pruning import prune, ranking, xai

RELEVANCE_VERSION = 2  # bump when the relevance computation changes what a key produces
AGGREGATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max": lambda rows: rows.max(dim=0).values,
    "sum": lambda rows: rows.sum(dim=0),
}


def relevance_dir() -> Path:
    """``artifacts/relevance/``: class-specific relevance, shared by all profiles, one file per hash."""
    return paths.ARTIFACTS / "relevance"


def relevance_file(key: str, reference: data.Split, method: str, **options) -> Path:
    """Where :func:`class_relevance` caches its result: a hash of the model's key, the method, its options and the images."""
    payload = {"model": key, "method": method, "options": options, "version": RELEVANCE_VERSION,
               "images": hashlib.sha256(reference.x.numpy().tobytes()).hexdigest(), "labels": reference.y.tolist()}
    return relevance_dir() / f"{method}-{hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]}.pt"


def class_relevance(model: nn.Module, reference: data.Split, method: str = "deeplift", key: str | None = None,
                    **options) -> "OrderedDict[str, torch.Tensor]":
    """Per-class, per-layer-normalised relevance ``I[layer]`` of shape (n_classes, filters), for every conv layer.

    Row ``c`` is the summed |R| of the images of class ``c`` with target ``c``, divided by its own sum
    (:meth:`xaiprune.pruning.xai.FilterScores.normalised`); a class without reference images gets a zero row.
    With ``key`` (a hash of the model, e.g. :func:`xaiprune.train.cache_key`), the result is cached in
    :func:`relevance_dir` under a hash of the key, the method, its options and the reference images.
    """
    path = None if key is None else relevance_file(key, reference, method, **options)
    if path is not None and path.is_file():
        return OrderedDict(torch.load(path, map_location="cpu", weights_only=True))
    scores = xai.filter_scores(model, reference, method, **options)
    out = OrderedDict()
    for layer in scores.layers:
        per_class = scores.per_class[layer]
        out[layer] = per_class / per_class.sum(dim=1, keepdim=True).clamp_min(torch.finfo(per_class.dtype).tiny)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(dict(out), tmp)
        tmp.replace(path)
    return out


def subset_scores(relevance: "dict[str, torch.Tensor]", classes: tuple[int, ...],
                  aggregate: str = "max") -> "dict[str, torch.Tensor]":
    """Each filter's score for the candidate set ``classes``: the max (or sum) of its class relevances over them.

    Both aggregates are monotone in the set: adding a class never lowers a filter's score.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}; expected one of {sorted(AGGREGATES)}")
    if not classes:
        raise ValueError("classes: expected a non-empty candidate set")
    index = torch.as_tensor(sorted(set(classes)), dtype=torch.long)
    return {layer: AGGREGATES[aggregate](rows[index]) for layer, rows in relevance.items()}


def split_model(model: models.SegmentedModel, block: int) -> tuple[models.SegmentedModel, models.SegmentedModel]:
    """The segments up to ``block`` (1-based, inclusive) and the segments after it, sharing ``model``'s modules."""
    items = list(model.segments.items())
    if not 1 <= block < len(items):
        raise ValueError(f"branch block {block}: expected 1 <= block < {len(items)} (the model has segments "
                         f"{[n for n, _ in items]}; at least one must follow the branch)")
    return models.SegmentedModel(OrderedDict(items[:block])), models.SegmentedModel(OrderedDict(items[block:]))


def macs(model: models.SegmentedModel, input_shape: tuple[int, ...]) -> int:
    """MACs of one image through ``model`` by :func:`xaiprune.pruning.prune.profile` (FLOPs = 2 x MACs)."""
    return int(sum(prune.profile(model, tuple(input_shape))["segment_macs"].values()))


Plan = ranking.Plan


class SubnetBuilder:
    """Physically smaller copies of a model's tail that keep, in every layer, the top ``keep`` of its filters.

    Args:
        tail: the segments after the branch (:func:`split_model`); never modified.
        input_shape: (C, H, W) of the tail's input, the branch point's activation.
    Every conv layer of the tail is a group root (its output filters); the first conv's input
    channels (the unpruned features at the branch point) and the classifier's outputs are never pruned.
    """

    def __init__(self, tail: models.SegmentedModel, input_shape: tuple[int, int, int]):
        self.tail, self.input_shape = tail, tuple(input_shape)
        self.graph = ranking.PruningGraph(tail, self.input_shape)
        self.groups = self.graph.groups()[1]
        self.full_macs = macs(tail, self.input_shape)

    @property
    def layers(self) -> list[str]:
        return [g.root for g in self.groups]

    def group_scores(self, scores: "dict[str, torch.Tensor]") -> list[torch.Tensor]:
        """Per group, the root channels' scores: the sum of the scores of the conv layers whose filters it removes."""
        out = []
        for group in self.groups:
            acc, found = torch.zeros(len(group.items[0].idxs)), False
            for item in group.items:
                if item.module in scores and item.handler == tp.prune_conv_out_channels:
                    acc.scatter_add_(0, item.root_idxs, scores[item.module][item.idxs].float())
                    found = True
            if not found:
                raise ValueError(f"scores: nothing for the filters of {group.root} (scores has {sorted(scores)[:4]}...)")
            out.append(acc)
        return out

    def plan(self, scores: "dict[str, torch.Tensor]", keep: float) -> Plan:
        """The filters removed: in every group all but the ``max(1, round(keep * n))`` best (ties: lower index kept)."""
        if isinstance(keep, bool) or not 0 < float(keep) <= 1:
            raise ValueError(f"keep={keep!r}; expected a fraction of filters in (0, 1]")
        plan = []
        for g, s in enumerate(self.group_scores(scores)):
            n_keep = max(1, round(keep * len(s)))
            order = torch.sort(-s, stable=True).indices  # best first, ties by index
            removed = torch.sort(order[n_keep:]).values
            if len(removed):
                plan.append((g, tuple(removed.tolist())))
        return tuple(plan)

    def build(self, plan: Plan) -> models.SegmentedModel:
        """The pruned tail (a new model) for ``plan``."""
        return self.graph.apply(plan).eval()

    def removed_filters(self, plan: Plan) -> dict[str, list[int]]:
        """``{conv layer: removed filter indices}`` of ``plan`` (every conv whose output channels it removes)."""
        out: dict[str, list[int]] = {}
        for g, removed in plan:
            removed = torch.as_tensor(removed, dtype=torch.long)
            for item in self.groups[g].items:
                if item.handler == tp.prune_conv_out_channels and item.module is not None:
                    out.setdefault(item.module, []).extend(item.idxs[torch.isin(item.root_idxs, removed)].tolist())
        return out

    def macs(self, subnet: models.SegmentedModel) -> int:
        return macs(subnet, self.input_shape)


def masked_model(tail: models.SegmentedModel, removed: "dict[str, list[int]]") -> models.SegmentedModel:
    """A copy of ``tail`` whose ``removed`` filters output exactly zero: their conv weights and the affine
    parameters of the BatchNorm that follows each conv set to 0 (so BN gives 0 and ReLU keeps it 0).

    The reference that a physically pruned sub-network must equal (tests/test_dyfip.py, ``08_dyfip``).
    Assumes every conv is followed by its own BatchNorm (true of :mod:`xaiprune.models`).
    """
    masked = copy.deepcopy(tail).eval()
    modules = dict(masked.named_modules())
    names = list(modules)
    with torch.no_grad():
        for layer, idx in removed.items():
            conv = modules[layer]
            bn = next(modules[n] for n in names[names.index(layer) + 1:] if isinstance(modules[n], nn.BatchNorm2d))
            conv.weight[idx] = 0
            if conv.bias is not None:
                conv.bias[idx] = 0
            bn.weight[idx] = 0
            bn.bias[idx] = 0
    return masked


def module_bytes(model: nn.Module) -> int:
    return prune.weight_bytes(model)
