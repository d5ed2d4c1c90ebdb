"""The pruning experiments of ``04_pruning_comparison``: criteria against ratios, one segment at a time,
reference sets of other sizes or with a class bias.

Every experiment prunes copies of one trained model and measures them on one split: the test split for
what the notebook reports, the validation split for what it chooses (the best repair, the per-segment
sensitivity table behind notebook 05's surrogate). An :class:`Evaluator` makes that cheap without
changing any number:

- a criterion scores the unpruned model once per reference draw (:class:`xaiprune.pruning.ranking.Ranking`),
  and each ratio is a fixed-score plan applied to a fresh copy: the same model
  :func:`xaiprune.pruning.prune.prune` builds, without re-tracing or re-scoring;
- a plan (the channels removed) identifies the pruned model exactly, so each distinct model is
  built, costed and evaluated once, however many criteria, draws or sections ask for it (e.g.
  ``lrp_epsilon`` and Gradient x Activation, which choose the same filters, or the reference draws
  shared by the sweep, the reference-size study and the BatchNorm variant);
- segments a plan leaves untouched are not recomputed: the unpruned model's activation entering the
  first changed segment is cached (one pass over the test split), and the pruned model runs from
  there;
- evaluation runs under ``torch.inference_mode`` in batches of 64 images (as ``train.predict``: the
  same numbers), and keeps each model's per-image logits and probabilities for the bootstrap of
  :mod:`xaiprune.stats` and the repairs of :mod:`xaiprune.pruning.repair_study`;
- a criterion scores a given reference set once (:meth:`Evaluator.ranking` remembers its rankings; an
  evaluator of the same model on another split, ``Evaluator(model, val, share=test_evaluator)``,
  shares them).

Metrics are :func:`xaiprune.stats.endpoints`: ACC and AUC (MedMNIST's ``getACC``/``getAUC``, as in
:func:`xaiprune.train.evaluate`) and balanced accuracy beside them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from xaiprune import data, models, stats, train
from xaiprune.pruning import prune, ranking, xai

EVAL_BATCH = 64  # images per forward pass, as train.predict (see Evaluator)
CACHE_BUDGET = 512 * 2**20       # bytes of cached segment inputs of the unpruned model


class Evaluator:
    """Metrics and costs of pruned copies of ``model`` on one split; each distinct pruned model is evaluated once.

    Args:
        model: the trained model (never modified).
        split: the evaluation split (in notebook 04 the test split, and the validation split for its choices).
        batch_size: images per forward pass. The default, 64, is :func:`xaiprune.train.predict`'s, so
            every number equals what ``train.evaluate`` gives. Larger batches were no faster on the
            2-core machine of the README (VGG-16-BN, 624 test images: 0.9-1.0 s in batches of 64-156,
            1.1 s at 208-312, 1.3 s in one batch), and for pruned models they change float rounding
            (up to 6e-8 in a probability), which moves the AUC of collapsed models whose outputs differ
            only at that level (see ``04_pruning_comparison``).
        share: an evaluator of the same model (on another split) whose pruning graph and rankings this one
            uses, so that a criterion scores each reference set once for both splits.
        ward: for a model of the ``hospital`` flag, the ward whose images ``split`` holds
            (:func:`xaiprune.data.ward_split`): every model answers among the ward's own classes
            (:func:`xaiprune.data.restrict`), and its metrics are the ward's. ``logits`` keep all outputs.
    """

    def __init__(self, model: models.SegmentedModel, split: data.Split, batch_size: int = EVAL_BATCH,
                 share: Evaluator | None = None, ward: str | None = None):
        self.model, self.split = model.eval(), split
        self.input_shape = tuple(split.x.shape[1:])
        if share is not None and (share.model is not model or share.input_shape != self.input_shape):
            raise ValueError("share: an evaluator of another model or image shape")
        self.graph = share.graph if share else ranking.PruningGraph(model, self.input_shape)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected a positive integer")
        self.batch_size = batch_size
        self.y = split.y.numpy() if split.y.ndim == 2 else split.y.numpy()[:, None]
        self.task = data.info(split.flag)["task"]
        self.ward = ward
        if ward is not None:
            if not np.isin(self.y, data.ward(ward).classes).all():
                raise ValueError(f"ward={ward!r}: the split holds images of other wards; pass data.ward_split(split, {ward!r})")
            self.y, self.task = self.y - data.ward(ward).offset, data.ward(ward).task
        self.multilabel = train.is_multilabel(split.flag)
        self.scores: list[np.ndarray] = []  # per-image probabilities of model id i, (N, n_classes)
        self.logits: list[np.ndarray] = []  # per-image logits of model id i (repairs shift them)
        self._seen: dict[tuple, dict] = {}  # plan key -> measurement
        self._inputs: dict[int, list[torch.Tensor]] | None = None  # segment index -> input chunks
        self._rankings: dict[tuple, ranking.Ranking] = share._rankings if share else {}

    def ranking(self, criterion: str, reference: data.Split | None = None, **kwargs) -> ranking.Ranking:
        """Score the unpruned model with ``criterion`` (kwargs: scope, segments, seed, criterion options).

        Scored once per criterion, reference images, scope, segments, seed and options: asking again (e.g. the
        repairs of ``04`` revisiting the sweep's draws) returns the same :class:`~xaiprune.pruning.ranking.Ranking`.
        Options that cannot be hashed (precomputed ``scores=``) are never cached.
        """
        try:
            key = (criterion, _content(reference), kwargs.get("scope", "global"), tuple(kwargs.get("segments") or ()),
                   kwargs.get("seed", 0), tuple(sorted((k, v) for k, v in kwargs.items()
                                                       if k not in ("scope", "segments", "seed"))))
            hash(key)
        except TypeError:
            return ranking.Ranking(self.graph, criterion, reference, **kwargs)
        if key not in self._rankings:
            self._rankings[key] = ranking.Ranking(self.graph, criterion, reference, **kwargs)
        return self._rankings[key]

    def _segment_inputs(self) -> dict[int, list[torch.Tensor]]:
        """Inputs of every segment of the unpruned model, per batch, as far as :data:`CACHE_BUDGET` allows."""
        if self._inputs is None:
            self._inputs, used = {}, 0
            chunks = list(torch.split(self.split.x, self.batch_size))
            with torch.inference_mode():
                for s, segment in enumerate(self.model.segments.values()):
                    size = sum(c.numel() * c.element_size() for c in chunks)
                    if s == 0 or used + size <= CACHE_BUDGET:
                        self._inputs[s], used = chunks, used + size * (s > 0)
                    chunks = [segment(c) for c in chunks]
        return self._inputs

    def _predict(self, model: models.SegmentedModel, start: int = 0) -> torch.Tensor:
        """Per-image logits of the test split, running segments ``start`` onwards."""
        inputs = self._segment_inputs()
        start = max(s for s in inputs if s <= start)
        model.eval()
        with torch.inference_mode():
            return torch.cat([model.run_segments(chunk, start) for chunk in inputs[start]])

    def record(self, logits: torch.Tensor) -> dict:
        """Store a model's logits and probabilities (softmax, or sigmoid for multi-label) under a new model id;
        returns the id with its ACC, balanced accuracy and AUC (:func:`xaiprune.stats.endpoints`)."""
        if self.ward is not None:
            probs = data.restrict(self.y, logits, self.ward)[1]
        else:
            probs = (torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)).numpy()
        self.logits.append(logits.numpy())
        self.scores.append(probs)
        return {"model": len(self.scores) - 1, **stats.endpoints(self.y, probs, self.task)}

    def resampled(self, weights: np.ndarray, models=None) -> dict[str, np.ndarray]:
        """Every endpoint of the stored models on each bootstrap resample (rows of ``weights``, from
        :func:`xaiprune.stats.resample_weights`): ``{"acc", "bal_acc", "auc"}``, each (models so far, B), indexed by
        model id as :func:`xaiprune.stats.intervals` reads it. ``models``: the ids to compute (the rest stay NaN);
        all by default."""
        out = {k: np.full((len(self.scores), len(weights)), np.nan) for k in stats.ENDPOINTS}
        for i in sorted(set(range(len(self.scores)) if models is None else (int(m) for m in models))):
            for k, v in stats.weighted_endpoints(self.y, self.scores[i], self.task, weights).items():
                out[k][i] = v
        return out

    def plan_key(self, ranked: ranking.Ranking, plan: ranking.Plan) -> tuple:
        """What identifies a pruned model: the channels removed from each group's root."""
        return tuple(sorted((ranked.groups[g].root, removed) for g, removed in plan))

    def first_touched(self, plan: ranking.Plan, segments: list[str] | None = None) -> int:
        """Index of the first segment whose weights ``plan`` changes (the last one for an empty plan)."""
        touched = self.graph.touched_segments(plan, segments)
        names = list(self.model.segments)
        return names.index(touched[0]) if touched else len(names) - 1

    def spread(self, model_id: int) -> float:
        """Largest gap between two test images' probabilities of one class under model ``model_id``.

        Near 0 (float32 resolves about 6e-8 around 0.5-1) the model answers every image alike: it has
        collapsed, and its AUC ranks rounding errors rather than images.
        """
        return float(np.ptp(self.scores[model_id], axis=0).max())

    def evaluate(self, model: models.SegmentedModel, start: int = 0) -> dict:
        """ACC, balanced accuracy and AUC of any model (e.g. a repaired one) under a new id; never cached.

        ``start``: the first segment whose weights differ from the unpruned model's (earlier ones are read
        from the cache); 0 runs the model in full.
        """
        return self.record(self._predict(model, start))

    def measure(self, ranked: ranking.Ranking, ratio: float) -> dict:
        """``ranked``'s model at ``ratio``: model id, acc, bal_acc and auc, and its :class:`~xaiprune.pruning.prune.PruneReport`."""
        if ranked.graph is not self.graph:
            raise ValueError("ranked was scored on another PruningGraph; use Evaluator.ranking")
        plan = ranked.plan(ratio)
        key = self.plan_key(ranked, plan)
        if key not in self._seen:
            pruned = self.graph.apply(plan, ranked.segments, share=True)  # run once, then dropped
            result = self.evaluate(pruned, self.first_touched(plan, ranked.segments))
            result["report"] = prune.report_for(pruned, self.input_shape, ranked.criterion, ratio)
            self._seen[key] = result
        return self._seen[key]


def _content(reference: data.Split | None) -> str | None:
    """A digest of a reference set's images and labels (what a criterion's scores depend on)."""
    if reference is None:
        return None
    digest = hashlib.sha1(reference.x.numpy().tobytes())
    digest.update(reference.y.numpy().tobytes())
    return digest.hexdigest()


def _draws(criterion: str, references: list[data.Split]) -> list[data.Split]:
    """Every draw for data-dependent criteria and ``random`` (seeded by the draw); one for the rest."""
    varies = getattr(prune.CRITERIA[criterion], "needs_reference", False) or criterion == "random"
    return references if varies else references[:1]


def sweep(model: models.SegmentedModel, test: data.Split, criteria: list[str], ratios: list[float],
          references: list[data.Split], scope: str = "global", progress: bool = True,
          evaluator: Evaluator | None = None, **options) -> pd.DataFrame:
    """ACC, balanced accuracy, AUC and costs of ``model`` pruned by each criterion at each ratio, for each
    reference draw, on the split ``test``.

    Data-dependent criteria (XAI, Taylor) are scored once per draw and pruned at every ratio; ``random``
    uses the draw index as its seed; data-free criteria (``l1``, ``bn_scale``, ``lamp``) are scored once
    and give one row per ratio. Pass one ``evaluator`` to every call on the same model and test split
    to share its cache. Returns a DataFrame with columns criterion, draw, ratio, acc, bal_acc, auc, macs, params,
    weight_bytes, out_bytes (bytes leaving every segment but the last, summed) and model (the
    evaluator's id of the pruned model, whose probabilities are ``evaluator.scores[model]``).
    """
    for c in criteria:
        prune._check(c, 0.0, scope, references[0] if references else None)
    for r in ratios:
        prune._check(criteria[0], r, scope, references[0] if references else None)
    evaluator = evaluator or Evaluator(model, test)
    if evaluator.model is not model or evaluator.split is not test:
        raise ValueError("evaluator was built for another model or split")
    jobs = [(c, draw, ref) for c in criteria for draw, ref in enumerate(_draws(c, references))]
    rows = []
    with tqdm(total=len(jobs) * len(ratios), desc="prune+evaluate", mininterval=2.0, disable=not progress) as bar:
        for criterion, draw, ref in jobs:
            ranked = evaluator.ranking(criterion, ref, scope=scope, seed=draw, **options)
            for ratio in ratios:
                m = evaluator.measure(ranked, ratio)
                rep = m["report"]
                rows.append({"criterion": criterion, "draw": draw, "ratio": ratio,
                             **{k: m[k] for k in stats.ENDPOINTS},
                             "macs": rep.macs, "params": rep.params, "weight_bytes": rep.weight_bytes,
                             "out_bytes": sum(list(rep.segment_out_bytes.values())[:-1]), "model": m["model"]})
                bar.update()
    return pd.DataFrame(rows)


def segment_sensitivity(model: models.SegmentedModel, split: data.Split, levels: list[float],
                        references: list[data.Split], criterion: str = "lrp", progress: bool = True,
                        evaluator: Evaluator | None = None) -> pd.DataFrame:
    """Prune one segment at a time at each level; measure ACC, balanced accuracy and AUC on ``split`` and the
    segment's costs.

    A segment's filters are ranked within the segment, as :func:`xaiprune.pruning.prune.prune_segment` does.
    Returns one row per (segment, level, draw) with acc, bal_acc, auc and the segment's measured profile:
    macs, weight_bytes, peak_bytes (largest activation inside it) and out_bytes (activation it sends
    on), all per image. The system model of ``05_nlp.ipynb`` builds its accuracy surrogate and its
    F, W, P, O tables from this, so notebook 04 measures it on the validation split (a choice behind a
    surrogate is never made on test).
    """
    evaluator = evaluator or Evaluator(model, split)
    if evaluator.model is not model or evaluator.split is not split:
        raise ValueError("evaluator was built for another model or split")
    draws = _draws(criterion, references)
    rows = []
    with tqdm(total=len(draws) * len(model.segments) * len(levels), desc="segment sensitivity",
              mininterval=2.0, disable=not progress) as bar:
        for draw, ref in enumerate(draws):
            method = getattr(prune.CRITERIA[criterion], "xai_method", None)  # XAI: score once for every segment
            options = {"scores": xai.filter_scores(model, ref, method[0], **method[1])} if method else {}
            for segment in model.segments:
                ranked = evaluator.ranking(criterion, ref, segments=[segment], seed=draw, **options)
                for level in levels:
                    m = evaluator.measure(ranked, level)
                    rep = m["report"]
                    rows.append({"segment": segment, "level": level, "draw": draw,
                                 **{k: m[k] for k in stats.ENDPOINTS},
                                 "macs": rep.segment_macs[segment], "weight_bytes": rep.segment_weight_bytes[segment],
                                 "peak_bytes": rep.segment_peak_bytes[segment],
                                 "out_bytes": rep.segment_out_bytes[segment], "model": m["model"]})
                    bar.update()
    return pd.DataFrame(rows)


def reference_study(evaluator: Evaluator, val: data.Split, criteria: list[str], ratios: list[float],
                    sizes: list[int], draws: int, n_per_class: int, bias: float, seed: int = 0,
                    scope: str = "global", **options) -> pd.DataFrame:
    """The :func:`sweep` of ``criteria`` at ``ratios`` on reference sets of each size, and on biased ones.

    For each ``n`` of ``sizes``: ``draws`` reference sets of ``n`` images per class (seeds ``seed + k``), rows
    labelled ``reference="<n>/class"``; then ``draws`` sets of ``n_per_class`` per class with the class fractions
    of :func:`xaiprune.data.skewed_fractions` (``bias`` for class 0), ``reference="biased <bias>"``. Every row
    also has ``n_per_class``; pruned models already measured by ``evaluator`` are not evaluated again.
    """
    fractions = data.skewed_fractions(len(data.class_names(val.flag)), bias)
    settings = [(f"{n}/class", n, None) for n in sizes] + [(f"biased {bias}", n_per_class, fractions)]
    frames = []
    for label, n, fractions in settings:
        refs = [data.reference_set(val, n_per_class=n, seed=seed + k, bias=fractions) for k in range(draws)]
        frames.append(sweep(evaluator.model, evaluator.split, criteria, ratios, refs, scope=scope,
                            evaluator=evaluator, **options).assign(reference=label, n_per_class=n))
    return pd.concat(frames, ignore_index=True)
