"""Structural filter pruning without fine-tuning, through Torch-Pruning, with interchangeable criteria.

``prune(model, criterion, ratio)`` returns a new, physically smaller model (the original is untouched)
and a :class:`PruneReport` (parameters, MACs/FLOPs, weight bytes, the activation bytes leaving every
segment, measured CPU latency). Criteria, in :data:`CRITERIA` keyed by the notebook parameter, are all
``torch_pruning`` Importance objects:

- the XAI methods of :mod:`xaiprune.pruning.xai` (``lrp``, ``lrp_epsilon``, ``deeplift``, ``ig``, ``gradxact``):
  per-layer-normalised relevance on the reference set (Yeom et al. 2021; Baccour et al. 2023);
- ``l1``: L1 norm of each filter's weights (Li et al., "Pruning filters for efficient ConvNets",
  ICLR 2017, https://arxiv.org/abs/1608.08710);
- ``taylor``: first-order Taylor |w * dL/dw| summed over the filter (Molchanov et al., CVPR 2019,
  https://arxiv.org/abs/1906.10771), its gradients from the same scarce reference set;
- ``random``; and, as extra baselines, ``bn_scale`` (|gamma| of the BatchNorm) and ``lamp``
  (Lee et al., ICLR 2021).

The XAI, L1, Taylor and BN-scale criteria score a group by its root conv layer and are normalised per
layer by the layer's sum, so that global ranking treats them alike; ``random`` draws uniform scores (so a
global random ratio removes about that fraction of every layer) and ``lamp`` uses its own normaliser. The classifier is never pruned, every layer keeps at least one
filter, and nothing is fine-tuned (the repairs that train nothing, such as BatchNorm re-estimation, are
:mod:`xaiprune.pruning.repairs`, applied separately in notebook 04).
Sweeps over many ratios use :mod:`xaiprune.pruning.ranking` (score once, prune with fixed scores; the same
models) through :mod:`xaiprune.pruning.comparison`. Used by ``04_pruning_comparison.ipynb`` and the system
model of the later notebooks.
"""

from __future__ import annotations

import copy
import numbers
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from xaiprune import data, models, names
from xaiprune.pruning import xai

SCOPES = names.SCOPES


class KeepOne(tp.importance.Importance):
    """Wrap an importance so that the best filter of every group is never pruned (score +inf)."""

    def __init__(self, inner: tp.importance.Importance):
        self.inner = inner

    def __call__(self, group) -> torch.Tensor | None:
        imp = self.inner(group)
        if imp is None:
            return None
        imp = imp.clone().float()
        imp[torch.argmax(imp)] = float("inf")
        return imp


class ScoreImportance(tp.importance.Importance):
    """Precomputed per-filter scores (e.g. XAI relevance) as a Torch-Pruning importance.

    Args:
        scores: ``{conv module: 1-D tensor of per-filter scores}``, already normalised per layer.
    A group's importance is the score of its conv layers whose output channels it removes, summed
    over coupled layers (residual groups of ResNet couple several convs).
    """

    def __init__(self, scores: dict[nn.Module, torch.Tensor]):
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        imp = None
        for item in group:
            dep, idxs = item.dep, item.idxs
            layer = dep.target.module
            if dep.handler != tp.prune_conv_out_channels or layer not in self.scores:
                continue
            local = self.scores[layer][torch.as_tensor(idxs)].float()
            acc = torch.zeros(len(idxs)) if imp is None else imp
            imp = acc.scatter_add_(0, torch.as_tensor(item.root_idxs), local)
        return imp


def _xai(method: str, **defaults) -> Callable:
    def make(model: nn.Module, reference: data.Split, scores: xai.FilterScores | None = None,
             **options) -> tp.importance.Importance:
        if scores is None:  # pass precomputed scores to prune one model at many ratios
            scores = xai.filter_scores(model, reference, method, **{**defaults, **options})
        convs = models.conv_layers(model)
        return ScoreImportance({convs[name]: scores.normalised(name) for name in scores.layers})
    make.needs_reference = True
    make.xai_method = (method, defaults)
    return make


def _taylor(model: nn.Module, reference: data.Split, **_) -> tp.importance.Importance:
    """Gradients of the cross-entropy on the reference set, then Torch-Pruning's group Taylor score."""
    model.zero_grad(set_to_none=True)
    target = reference.y if reference.y.ndim == 1 else reference.y.float()
    loss_fn = nn.CrossEntropyLoss() if reference.y.ndim == 1 else nn.BCEWithLogitsLoss()
    loss_fn(model(reference.x), target).backward()
    return tp.importance.GroupTaylorImportance(group_reduction="first", normalizer="sum")


_taylor.needs_reference = True


def _static(factory: Callable[[], tp.importance.Importance]) -> Callable:
    def make(model: nn.Module, reference: data.Split | None = None, **_) -> tp.importance.Importance:
        return factory()
    make.needs_reference = False
    return make


CRITERIA: dict[str, Callable[..., tp.importance.Importance]] = {
    "lrp": _xai("lrp"),
    "lrp_epsilon": _xai("lrp_epsilon"),
    "deeplift": _xai("deeplift"),
    "ig": _xai("ig"),
    "gradxact": _xai("gradxact"),
    "taylor": _taylor,
    "l1": _static(lambda: tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer="sum")),
    "random": _static(tp.importance.RandomImportance),
    "bn_scale": _static(lambda: tp.importance.BNScaleImportance(group_reduction="first", normalizer="sum")),
    "lamp": _static(lambda: tp.importance.LAMPImportance(p=2, group_reduction="first")),
}
XAI_CRITERIA = names.XAI_CRITERIA  # the criteria that are explanations


@dataclass
class PruneReport:
    """What a pruned model costs. MACs are Torch-Pruning's count; FLOPs = 2 x MACs."""

    criterion: str
    ratio: float
    params: int
    macs: int
    weight_bytes: int
    segment_macs: dict[str, int]
    segment_weight_bytes: dict[str, int]
    segment_out_bytes: dict[str, int]       # activation bytes leaving each segment, per image
    segment_peak_bytes: dict[str, int]      # largest activation inside each segment, per image
    filters: dict[str, int]                 # remaining filters per conv layer
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms
    seconds: float = 0.0                    # time to score and prune

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _check(criterion: str, ratio: float, scope: str, reference: data.Split | None) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not a pruning criterion; expected one of {sorted(CRITERIA)}")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio={ratio!r}; expected a fraction of filters in [0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; expected one of {SCOPES}")
    if getattr(CRITERIA[criterion], "needs_reference", False) and reference is None:
        raise ValueError(f"criterion {criterion!r} needs the reference set (reference=...)")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers (BatchNorm statistics included)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


_SEGMENT_PROFILES: dict[tuple, tuple] = {}  # (segment's repr and dtype, input shape) -> (profile, output shape)


def _segment_profile(segment: nn.Module, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    """MACs, weight, output and peak activation bytes of one segment for an input of ``shape``.

    Memoised by the segment's ``repr`` (every layer's type, channels, kernel, stride, padding, bias),
    its dtype and the input shape, which fix all four numbers: a sweep prices each segment structure once.
    """
    dtype = next(segment.parameters()).dtype if any(True for _ in segment.parameters()) else torch.float32
    key = (repr(segment), str(dtype), tuple(shape))
    if key not in _SEGMENT_PROFILES:
        x = torch.zeros(*shape, dtype=dtype)
        with torch.no_grad():
            macs, _ = tp.utils.count_ops_and_params(segment, x)
            peak = [x.numel() * x.element_size()]
            hooks = [m.register_forward_hook(lambda m, i, o: peak.append(o.numel() * o.element_size()))
                     for m in segment.modules() if not list(m.children())]
            y = segment(x)
            for h in hooks:
                h.remove()
        _SEGMENT_PROFILES[key] = ({"segment_macs": int(macs), "segment_weight_bytes": weight_bytes(segment),
                                   "segment_out_bytes": y.numel() * y.element_size(), "segment_peak_bytes": max(peak)},
                                  tuple(y.shape))
    return _SEGMENT_PROFILES[key]


def profile(model: models.SegmentedModel, input_shape: tuple[int, int, int]) -> dict:
    """Per-segment MACs, weight bytes, output bytes and peak activation bytes for one image."""
    out = {"segment_macs": {}, "segment_weight_bytes": {}, "segment_out_bytes": {}, "segment_peak_bytes": {}}
    shape = (1, *input_shape)
    for name, segment in model.segments.items():
        numbers, shape = _segment_profile(segment, shape)
        for k, v in numbers.items():
            out[k][name] = v
    return out


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], batch: int = 1,
                    repeat: int = 20, warmup: int = 3) -> float:
    """Median wall time of one forward pass on the CPU, in milliseconds."""
    x = torch.randn(batch, *input_shape)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def report_for(model: models.SegmentedModel, input_shape: tuple[int, int, int], criterion: str = "none",
               ratio: float = 0.0, latency_batches: tuple[int, ...] = (), seconds: float = 0.0) -> PruneReport:
    """Cost report of any segmented model (pruned or not)."""
    prof = profile(model, input_shape)
    return PruneReport(
        criterion=criterion, ratio=ratio, params=sum(p.numel() for p in model.parameters()),
        macs=sum(prof["segment_macs"].values()), weight_bytes=weight_bytes(model), **prof,
        filters={n: m.out_channels for n, m in models.conv_layers(model).items()},
        latency_ms={b: measure_latency(model, input_shape, b) for b in latency_batches}, seconds=seconds)


def prune(model: models.SegmentedModel, criterion: str, ratio: float, scope: str = "global",
          reference: data.Split | None = None, segments: list[str] | None = None, seed: int = 0,
          latency_batches: tuple[int, ...] = (), input_shape: tuple[int, int, int] | None = None,
          **options) -> tuple[models.SegmentedModel, PruneReport]:
    """Remove ``ratio`` of the conv filters, lowest scores first, with no fine-tuning.

    Args:
        model: the trained model (left untouched; a copy is pruned).
        criterion: a key of :data:`CRITERIA`.
        ratio: fraction of filters removed, in [0, 1).
        scope: ``"global"`` ranks all (per-layer-normalised) filters together; ``"per-layer"``
            removes ``ratio`` of every layer.
        reference: the scarce reference set, needed by the XAI criteria and Taylor.
        segments: prune only the conv layers of these segments (default: all).
        seed: seeds the random criterion.
        latency_batches: batch sizes at which to measure CPU latency in the report.
        input_shape: (C, H, W); defaults to the reference images' shape, else (1, 28, 28).
        options: criterion options (``steps`` for ig, ``conv`` for lrp, ``rule`` for lrp_epsilon), or ``scores=`` precomputed
            :class:`xaiprune.pruning.xai.FilterScores` for an XAI criterion (scoring once, pruning at many ratios).
    """
    _check(criterion, ratio, scope, reference)
    unknown = set(segments or []) - set(model.segments)
    if unknown:
        raise ValueError(f"segments {sorted(unknown)} do not exist; the model has {list(model.segments)}")
    input_shape = input_shape or (tuple(reference.x.shape[1:]) if reference is not None else (1, 28, 28))
    start = time.perf_counter()
    pruned = copy.deepcopy(model).eval()
    if ratio > 0:
        with torch.random.fork_rng():  # seeds the random criterion without touching the caller's RNG
            torch.manual_seed(seed)
            importance = KeepOne(CRITERIA[criterion](pruned, reference, **options))
            keep = {name for name in pruned.segments if segments is None or name in segments}
            ignored = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
            ignored += [m for seg_name, seg in pruned.segments.items() if seg_name not in keep
                        for m in seg.modules() if isinstance(m, nn.Conv2d)]
            pruner = tp.pruner.MetaPruner(pruned, torch.zeros(1, *input_shape), importance=importance,
                                          global_pruning=(scope == "global"), pruning_ratio=ratio,
                                          ignored_layers=ignored)
            pruner.step()
        pruned.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return pruned, report_for(pruned, input_shape, criterion, ratio, latency_batches, seconds)


def prune_segment(model: models.SegmentedModel, segment: str, level: float, criterion: str = "lrp",
                  reference: data.Split | None = None, **kwargs) -> tuple[models.SegmentedModel, PruneReport]:
    """Prune a fraction ``level`` of one segment's filters (ranked within the segment), nothing else.

    Pruning a segment's last conv also shrinks the activation it sends to the next device.
    """
    return prune(model, criterion, level, scope="global", reference=reference, segments=[segment], **kwargs)


def criterion_scores(model: models.SegmentedModel, criterion: str, reference: data.Split | None = None,
                     input_shape: tuple[int, int, int] = (1, 28, 28), **options) -> "dict[str, torch.Tensor]":
    """Per-filter scores of every conv layer under ``criterion``, exactly as :func:`prune` ranks them.

    Each conv layer's pruning group is scored by the criterion's Torch-Pruning importance (the same
    object :func:`prune` uses, without the keep-one guard), so rank correlations between criteria
    compare what the pruner really sees. Used by ``03_xai_scores.ipynb``.
    """
    _check(criterion, 0.0, "global", reference)
    model = copy.deepcopy(model).eval()
    importance = CRITERIA[criterion](model, reference, **options)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    out = {}
    for name, conv in models.conv_layers(model).items():
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        out[name] = importance(group).detach().float()
    return out


def prune_plan(model: models.SegmentedModel, levels: "dict[str, float]", criterion: str = "lrp",
               reference: data.Split | None = None, seed: int = 0) -> models.SegmentedModel:
    """Really prune a model as a plan says: each segment at its own level, one segment after another.

    Each segment's filters are ranked within the segment (as in :func:`prune_segment`, the semantics
    of the sensitivity table); scores are recomputed on the partly pruned model at every step. Used
    by ``05_nlp.ipynb`` to measure the accuracy of the solver's plans against the surrogate.
    """
    unknown = set(levels) - set(model.segments)
    if unknown:
        raise ValueError(f"segments {sorted(unknown)} do not exist; the model has {list(model.segments)}")
    pruned = model
    for segment in model.segments:
        if levels.get(segment, 0.0) > 0:
            pruned, _ = prune_segment(pruned, segment, levels[segment], criterion, reference=reference, seed=seed)
    return pruned if pruned is not model else copy.deepcopy(model)


def prune_with_scores(model: models.SegmentedModel, levels: "dict[str, float]", scores: "dict[str, torch.Tensor]",
                      input_shape: tuple[int, int, int] = (1, 28, 28)) -> models.SegmentedModel:
    """Prune each segment at its own level, ranking its filters by fixed per-filter scores.

    ``scores`` maps every conv layer's name to its filters' scores as :func:`criterion_scores` gives
    them on the unpruned model (per-layer normalised). The scores are fixed, so the filters a segment
    keeps do not depend on the other segments' levels: a device can build its segments for any plan
    from the checkpoint and one small scores file, and every device builds the same ones. A segment
    pruned alone gives exactly :func:`prune_segment`'s model for the XAI criteria (whose scores are
    also taken on the unpruned model). Used by :mod:`xaiprune.serving`.
    """
    unknown = set(levels) - set(model.segments)
    if unknown:
        raise ValueError(f"segments {sorted(unknown)} do not exist; the model has {list(model.segments)}")
    missing = set(models.conv_layers(model)) - set(scores)
    if missing:
        raise ValueError(f"scores: no scores for conv layers {sorted(missing)}")
    pruned = copy.deepcopy(model).eval()
    for segment in model.segments:
        level = levels.get(segment, 0.0)
        _check("l1", level, "global", None)
        if level == 0:
            continue
        convs = models.conv_layers(pruned)
        importance = KeepOne(ScoreImportance({conv: scores[name] for name, conv in convs.items()}))
        ignored = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
        ignored += [m for name, seg in pruned.segments.items() if name != segment
                    for m in seg.modules() if isinstance(m, nn.Conv2d)]
        tp.pruner.MetaPruner(pruned, torch.zeros(1, *input_shape), importance=importance, global_pruning=True,
                             pruning_ratio=level, ignored_layers=ignored).step()
    return pruned
