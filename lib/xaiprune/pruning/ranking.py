"""Score once, prune at any ratio: the fast path of :func:`xaiprune.pruning.prune.prune` for sweeps over ratios.

:func:`xaiprune.pruning.prune.prune` builds Torch-Pruning's dependency graph and scores every group again
for each model it prunes. Its ``MetaPruner`` prunes in one step, so the scores it ranks are always those of
the *unpruned* model, and the filters it removes at a ratio depend only on those scores. This module
splits that work:

- :class:`PruningGraph` traces a model once and keeps its pruning groups (the coupled layers and
  channel indices Torch-Pruning would touch), by module name;
- :class:`Ranking` scores every group once with a criterion, exactly as ``MetaPruner`` does (the
  same groups, in the same order, with the same :class:`~xaiprune.pruning.prune.KeepOne` guard and seed);
- :meth:`Ranking.plan` applies ``MetaPruner``'s thresholding (global or per-layer) at a ratio, and
  :meth:`PruningGraph.apply` removes the chosen channels from a fresh copy with Torch-Pruning's own
  pruning functions.

The pruned model is the one :func:`~xaiprune.pruning.prune.prune` returns (tests check identical weights for
every criterion, both scopes and single segments), and a plan (the removed channels per group) is an
exact identity of the pruned model, so identical models are recognised before they are built.
Supports the models of :mod:`xaiprune.models` (no grouped convolutions, attention or unwrapped
parameters). Used by :mod:`xaiprune.pruning.comparison` (notebook ``04_pruning_comparison``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from xaiprune import data, models
from xaiprune.pruning import prune

ROOT_TYPES = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]  # MetaPruner's default roots


@dataclass(frozen=True)
class Item:
    """One layer touched by a group: Torch-Pruning's handler, and each channel's index and root index."""

    module: str | None      # qualified name in the model; None for Torch-Pruning's pseudo-ops (no weights)
    handler: object         # a Torch-Pruning pruning function (bound method)
    pruning_dim: int
    idxs: torch.Tensor      # channel indices in this layer
    root_idxs: torch.Tensor  # the root channel each of them belongs to
    channels: int           # this layer's channels along the pruned dimension (before pruning); -1 unknown


@dataclass(frozen=True)
class Group:
    """A pruning group of the unpruned model: its root layer and the layers it couples."""

    root: str
    items: tuple[Item, ...]


Plan = tuple  # ((group index, (removed root channels, ...)), ...): an exact identity of a pruned model


class PruningGraph:
    """Torch-Pruning's dependency graph of a model, traced once; prunes fresh copies by name.

    Args:
        model: the trained model (left untouched; a private copy is traced and used for scoring).
        input_shape: (C, H, W) of one image.
    """

    def __init__(self, model: models.SegmentedModel, input_shape: tuple[int, int, int]):
        self.model = model
        self.input_shape = tuple(input_shape)
        self.template = copy.deepcopy(model).eval()
        self.graph = tp.DependencyGraph().build_dependency(self.template,
                                                           example_inputs=torch.zeros(1, *input_shape))
        for m in self.template.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                raise NotImplementedError("grouped convolutions are not supported by the fixed-score path")
        self.names = {m: n for n, m in self.template.named_modules()}
        self.segment_of = {n: n.split(".")[1] for n in self.names.values() if n.startswith("segments.")}
        self._groups: dict[tuple, tuple[list, list[Group]]] = {}

    def groups(self, segments: list[str] | None = None) -> tuple[list, list[Group]]:
        """The groups ``MetaPruner`` would rank (Torch-Pruning's groups, and their description by module name).

        The classifier (every ``nn.Linear``) is never a root; with ``segments``, only groups whose
        output channels all lie in those segments, as :func:`xaiprune.pruning.prune.prune` ignores the rest.
        """
        key = tuple(segments) if segments is not None else None
        if key not in self._groups:
            ignored = [m for m in self.template.modules() if isinstance(m, nn.Linear)]
            ignored += [m for name, seg in self.template.segments.items() if segments is not None
                        and name not in segments for m in seg.modules() if isinstance(m, nn.Conv2d)]
            raw, described = [], []
            for group in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
                items = tuple(self._item(item.dep, item.idxs, item.root_idxs) for item in group)
                if any(i.channels == 1 for i in items):  # MetaPruner's _check_pruning_ratio
                    continue
                raw.append(group)
                described.append(Group(root=items[0].module, items=items))
            self._groups[key] = (raw, described)
        return self._groups[key]

    def _item(self, dep, idxs, root_idxs) -> Item:
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            raise NotImplementedError("unwrapped parameters are not supported by the fixed-score path")
        module, out = dep.target.module, self.graph.is_out_channel_pruning_fn(dep.handler)
        channels = (self.graph.get_out_channels if out else self.graph.get_in_channels)(module)
        name = self.names.get(module)
        if name is None and not isinstance(dep.handler.__self__, tp.ops.DummyPruner):
            raise NotImplementedError(f"{module} is not a module of the model and its pruning is not a no-op")
        return Item(module=name, handler=dep.handler, pruning_dim=dep.target.pruning_dim,
                    idxs=torch.as_tensor(list(idxs), dtype=torch.long),
                    root_idxs=torch.as_tensor(list(root_idxs), dtype=torch.long), channels=-1 if channels is None else int(channels))

    def apply(self, plan: Plan, segments: list[str] | None = None, share: bool = False) -> models.SegmentedModel:
        """A pruned copy of the model: every group of ``plan`` loses its listed root channels.

        ``share=True`` copies only the modules and shares every tensor with the original model:
        Torch-Pruning's functions replace pruned tensors (never write into them), so this is the same
        model without copying the weights, for a caller that only runs it (never train it).
        """
        groups = self.groups(segments)[1]
        memo = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]} if share else None
        pruned = copy.deepcopy(self.model, memo).eval()
        by_name = dict(pruned.named_modules())
        for g, removed in plan:
            removed = torch.as_tensor(removed, dtype=torch.long)
            for item in groups[g].items:
                idxs = item.idxs[torch.isin(item.root_idxs, removed)].tolist()
                if idxs and item.module is not None:  # None: tracing pseudo-ops, whose pruning is a no-op
                    item.handler.__self__.pruning_dim = item.pruning_dim  # as tp's Dependency.__call__ does
                    item.handler(by_name[item.module], idxs)
        pruned.zero_grad(set_to_none=True)
        return pruned

    def touched_segments(self, plan: Plan, segments: list[str] | None = None) -> list[str]:
        """Segments whose weights ``plan`` changes (a pruned conv's segment, and its consumers')."""
        groups = self.groups(segments)[1]
        hit = {self.segment_of.get(item.module) for g, removed in plan for item in groups[g].items
               if torch.isin(item.root_idxs, torch.as_tensor(removed, dtype=torch.long)).any()}
        return [name for name in self.template.segments if name in hit]


class Ranking:
    """Every group of a model scored once by a criterion, as ``MetaPruner`` scores it; plans at any ratio.

    Args:
        graph: the model's :class:`PruningGraph`.
        criterion: a key of :data:`xaiprune.pruning.prune.CRITERIA`.
        reference: the reference set (XAI criteria and Taylor).
        scope: ``"global"`` or ``"per-layer"`` (see :func:`xaiprune.pruning.prune.prune`).
        segments: rank and prune only the conv layers of these segments (default: all).
        seed: seeds the random criterion (as ``prune(..., seed=)``).
        options: criterion options, e.g. ``steps`` for IG or ``scores=`` precomputed FilterScores.
    """

    def __init__(self, graph: PruningGraph, criterion: str, reference: data.Split | None = None,
                 scope: str = "global", segments: list[str] | None = None, seed: int = 0, **options):
        prune._check(criterion, 0.0, scope, reference)
        unknown = set(segments or []) - set(graph.template.segments)
        if unknown:
            raise ValueError(f"segments {sorted(unknown)} do not exist; the model has {list(graph.template.segments)}")
        self.graph, self.criterion, self.scope, self.segments = graph, criterion, scope, segments
        raw, self.groups = graph.groups(segments)
        with torch.random.fork_rng():  # the same seeding and call order as prune.prune
            torch.manual_seed(seed)
            importance = prune.KeepOne(prune.CRITERIA[criterion](graph.template, reference, **options))
            scores = [importance(group) for group in raw]
        graph.template.zero_grad(set_to_none=True)
        self.scores = [None if s is None else s.detach().cpu() for s in scores]

    def plan(self, ratio: float) -> Plan:
        """The root channels ``MetaPruner`` removes from each group at ``ratio`` (its thresholding, verbatim)."""
        prune._check("l1", ratio, self.scope, None)  # the ratio only: the criterion was checked when scoring
        ranked = [(g, s) for g, s in enumerate(self.scores) if s is not None]
        if not ranked or ratio == 0:
            return ()
        chosen = []
        if self.scope == "global":
            concat = torch.cat([s for _, s in ranked])
            n_pruned = len(concat) - int(len(concat) * (1 - ratio))
            if n_pruned <= 0:
                return ()
            thres = torch.topk(concat, k=n_pruned, largest=False)[0][-1]
            chosen = [(g, (s <= thres).nonzero().view(-1)) for g, s in ranked]
        else:
            for g, s in ranked:
                n_pruned = len(s) - int(len(s) * (1 - ratio))
                if n_pruned > 0:
                    chosen.append((g, torch.topk(s, k=n_pruned, largest=False)[1]))
        plan = []
        for g, idx in chosen:
            removed = torch.unique(idx)
            items = self.groups[g].items
            counts = [int(torch.isin(i.root_idxs, removed).sum()) for i in items]
            if len(removed) and all(i.channels < 0 or i.channels > n for i, n in zip(items, counts)):
                plan.append((g, tuple(removed.tolist())))  # else tp's check_pruning_group refuses it
        return tuple(plan)

    def prune(self, ratio: float) -> tuple[models.SegmentedModel, Plan]:
        """The model pruned at ``ratio`` (identical to ``prune.prune``'s), and its plan."""
        plan = self.plan(ratio)
        return self.graph.apply(plan, self.segments), plan
