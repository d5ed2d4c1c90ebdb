"""The experiments of ``09_compression``: each technique's XAI variant against its non-XAI counterpart.

A :class:`Study` holds one trained model, the split its curves are measured on (a validation subset: every
choice is made there) and K reference draws. It computes every weight's relevance once per draw (cached,
:func:`xaiprune.compression.compress.weight_relevance`) and the magnitude once, then builds and evaluates
compressed copies:

=====================  ======================================  ==========================================
technique              XAI variant                             non-XAI counterpart(s)
=====================  ======================================  ==========================================
``weight pruning``     global ranking by relevance             global ranking by magnitude
``sharing``            k-means weighted by relevance           plain k-means
``mixed precision``    bits from the layers' relevance         uniform bits; bits from the weights' range
``combined``           relevance pruning, then XAI sharing     magnitude pruning, then plain sharing
                       (or XAI mixed precision)                (or the range allocation)
=====================  ======================================  ==========================================

Every row has the exact size in bits (:func:`xaiprune.compression.storage.size_bits`), the compression ratio
against the 32-bit model (``8 x prune.weight_bytes``), ACC, balanced accuracy and AUC
(:func:`xaiprune.stats.endpoints` of the model's probabilities) and whether the model answers one class for
every image. With ``correct`` (the default), each compressed copy's BatchNorm means are corrected on the
draw's reference images (:func:`xaiprune.pruning.repairs.correct_means`); the counterparts get the same
correction from the same draw, so they too vary with the draw. :meth:`Study.probabilities` rebuilds any
measured setting and returns its per-image probabilities on another split (the test split, once the
operating points are chosen). :func:`summary` and :func:`ratio_at` turn the rows into the notebook's curves.
Filter pruning (technique 1) is :func:`xaiprune.pruning.comparison.sweep`, turned into rows by
:func:`filter_rows`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from xaiprune import data, models, stats
from xaiprune.compression import compress, storage
from xaiprune.pruning import comparison, prune

FILTER = "filter pruning"
TECHNIQUES = [FILTER, "weight pruning", "sharing", "mixed precision", "combined"]  # each has an XAI variant and counterparts


def one_class(probs: np.ndarray, task: str) -> bool:
    """Whether the decision rule of :mod:`xaiprune.stats` (argmax; 0.5 on the positive class or on each label)
    gives every image the same answer: ACC is then a class's share and balanced accuracy ``1 / classes``."""
    pred = probs > 0.5 if task == stats.MULTILABEL else probs[:, -1] > 0.5 if task == stats.BINARY else probs.argmax(1)
    return bool((pred == pred[:1]).all())


def scores(evaluator: comparison.Evaluator, model_id: int) -> dict:
    """ACC, balanced accuracy and AUC of a model the evaluator stored, and whether it answers one class."""
    probs = evaluator.scores[model_id]
    return {**stats.endpoints(evaluator.y, probs, evaluator.task), "one_class": one_class(probs, evaluator.task)}


class Study:
    """Compressed copies of ``model`` measured on ``split``; one row per (technique, variant, setting, draw)."""

    def __init__(self, model: models.SegmentedModel, split: data.Split, references: list[data.Split],
                 correct: bool = True, evaluator: comparison.Evaluator | None = None, progress: bool = True):
        if not references:
            raise ValueError("references: expected at least one reference draw")
        for r in references:
            compress.check_reference(r)
        self.model, self.split, self.references, self.correct = model.eval(), split, references, correct
        self.evaluator = evaluator or comparison.Evaluator(model, split)
        if self.evaluator.split is not split:
            raise ValueError("evaluator was built for another split")
        self.full_bits = 8 * prune.weight_bytes(model)
        self.progress = progress
        self.relevance = [compress.weight_relevance(model, r) for r in tqdm(references, desc="weight relevance",
                                                                            disable=not progress)]
        self.magnitude = compress.magnitude(model)
        self.rank_xai = [compress.WeightRanking(r, tiebreak=self.magnitude) for r in self.relevance]  # zeros: by |w|
        self.rank_mag = compress.WeightRanking(self.magnitude)
        self.range = compress.range_sensitivity(model)
        self.memo: dict = {}
        self.rows: list[dict] = []
        self.builders: dict[tuple[str, str], object] = {}  # (technique, variant) -> codes(setting, draw)

    # ----- one model ------------------------------------------------------------------------------
    def build(self, codes: dict, draw: int, correct: bool | None = None):
        """The compressed copy for ``codes``, its BatchNorm means corrected on draw ``draw``'s reference images."""
        correct = self.correct if correct is None else correct
        return compress.apply(self.model, codes, self.references[draw] if correct else None)

    def measure(self, technique: str, variant: str, xai: bool, setting: float, draw: int, codes: dict,
                correct: bool | None = None) -> dict:
        """Build, size and evaluate one compressed copy on the study's split; the row is kept and returned."""
        correct = self.correct if correct is None else correct
        model_id = self.evaluator.evaluate(self.build(codes, draw, correct))["model"]
        bits = storage.size_bits(self.model, codes)["total"]
        row = {"technique": technique, "variant": variant, "xai": xai, "setting": setting, "draw": draw,
               **scores(self.evaluator, model_id), "bits": bits, "ratio": self.full_bits / bits,
               "corrected": correct, "model": model_id}
        self.rows.append(row)
        return row

    def draws(self, xai: bool) -> list[int]:
        """The draws a variant is measured on: a non-XAI variant depends on the draw only through the BatchNorm
        correction, so without it draw 0 alone."""
        return list(range(len(self.references))) if xai or self.correct else [0]

    def _loop(self, technique: str, settings: list, variants: list[tuple[str, bool, object]]) -> None:
        """``variants``: (name, is XAI, ``codes(setting, draw)``); every variant at every setting and its draws."""
        for name, xai, make in variants:
            self.builders[(technique, name)] = (xai, make)
        jobs = [(s, d, v) for s in settings for v in variants for d in self.draws(v[1])]
        for s, d, (name, xai, make) in tqdm(jobs, desc=technique, mininterval=2.0, disable=not self.progress):
            self.measure(technique, name, xai, s, d, make(s, d))

    def probabilities(self, evaluator: comparison.Evaluator, technique: str, variant: str, setting) -> list[np.ndarray]:
        """Per-image probabilities on ``evaluator``'s split (the test split) of a measured setting, one array per
        draw (the draws it was measured on): the same codes rebuilt, the same correction. Filter pruning runs
        :func:`xaiprune.pruning.comparison.sweep` for the one criterion and ratio."""
        if technique == FILTER:
            rows = comparison.sweep(self.model, evaluator.split, [variant], [setting], self.references,
                                    progress=False, evaluator=evaluator)
            return [evaluator.scores[i] for i in rows["model"]]
        xai, make = self.builders[(technique, variant)]
        same = [r["setting"] for r in self.rows if (r["technique"], r["variant"]) == (technique, variant)
                and np.atleast_1d(r["setting"]).tolist() == np.atleast_1d(setting).tolist()]
        if not same:
            raise ValueError(f"{technique} / {variant} was not measured at {setting!r}")
        setting = same[0]  # as measured (tables and JSON turn 4 bits into 4.0 and tuples into lists)
        return [evaluator.scores[evaluator.evaluate(self.build(make(setting, d), d))["model"]] for d in self.draws(xai)]

    # ----- the techniques -------------------------------------------------------------------------
    def weight_pruning(self, sparsities: list[float]) -> None:
        """Technique 2: the kept weights stored raw (float32) with the cheapest sparse index."""
        for s in sparsities:
            compress.check_sparsity(s)
        self._loop("weight pruning", sparsities, [
            ("relevance", True, lambda s, d: compress.compress(self.model, "raw", masks=self.rank_xai[d].masks(s))),
            ("magnitude", False, lambda s, d: compress.compress(self.model, "raw", masks=self.rank_mag.masks(s)))])

    def weight_pruning_uncorrected(self, sparsities: list[float]) -> None:
        """Technique 2 on draw 0 without the BatchNorm correction, both variants ("weight pruning, no correction");
        shown beside technique 2, never an operating point."""
        for s in sparsities:
            for name, ranking in (("relevance", self.rank_xai[0]), ("magnitude", self.rank_mag)):
                self.measure("weight pruning, no correction", name, name == "relevance", s, 0,
                             compress.compress(self.model, "raw", masks=ranking.masks(s)), correct=False)

    def sharing(self, bits: list[int]) -> None:
        """Technique 3: every layer shared with ``2^b`` centres, nothing pruned."""
        for b in bits:
            compress.check_bits(b)
        self._loop("sharing", bits, [
            ("weighted k-means", True, lambda b, d: compress.compress(self.model, "share", b, sample_weights=self.relevance[d],
                                                                      memo=self.memo)),
            ("k-means", False, lambda b, d: compress.compress(self.model, "share", b, memo=self.memo))])

    def allocation(self, average: float, sensitivity: dict, masks: dict | None = None) -> dict:
        counts = {k: int(m.weight.numel() if masks is None else masks[k].sum())
                  for k, m in compress.weight_layers(self.model).items()}
        return compress.allocate_bits(counts, sensitivity, average)

    def mixed_precision(self, budgets: list[int]) -> None:
        """Technique 4: per-layer bits (2..8) under an average budget; uniform bits at the same total."""
        self._loop("mixed precision", budgets, [
            ("relevance bits", True, lambda b, d: compress.compress(
                self.model, "quant", self.allocation(b, compress.layer_sums(self.relevance[d])), memo=self.memo)),
            ("range bits", False, lambda b, d: compress.compress(
                self.model, "quant", self.allocation(b, self.range), memo=self.memo)),
            ("uniform bits", False, lambda b, d: compress.compress(self.model, "quant", int(b), memo=self.memo))])

    def combined_codes(self, sparsity: float, bits: int, stage: str, draw: int, xai: bool) -> dict:
        """Technique 5: prune (relevance or magnitude), then share or mixed precision on the kept weights."""
        masks = (self.rank_xai[draw] if xai else self.rank_mag).masks(sparsity)
        if stage == "share":
            return compress.compress(self.model, "share", bits, masks=masks,
                                     sample_weights=self.relevance[draw] if xai else None)
        sensitivity = compress.layer_sums(self.relevance[draw], masks) if xai else self.range
        return compress.compress(self.model, "quant", self.allocation(bits, sensitivity, masks), masks=masks)

    def combined(self, sparsities: list[float], bits: list[int], stage: str = "share") -> None:
        if stage not in ("share", "mixed"):
            raise ValueError(f"stage={stage!r}; expected 'share' or 'mixed'")
        grid = [(s, b) for s in sparsities for b in bits]
        self._loop("combined", grid, [
            ("XAI pipeline", True, lambda sb, d: self.combined_codes(*sb, stage, d, True)),
            ("non-XAI pipeline", False, lambda sb, d: self.combined_codes(*sb, stage, d, False))])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def filter_rows(sweep: pd.DataFrame, evaluator: comparison.Evaluator, full_bits: int,
                xai_criterion: str = "deeplift") -> pd.DataFrame:
    """Technique 1 (:func:`xaiprune.pruning.comparison.sweep`'s rows on ``evaluator``'s split) as study rows:
    size = 8 x weight bytes, all float32; the endpoints from the stored probabilities."""
    out = sweep.assign(technique=FILTER, variant=sweep["criterion"], xai=sweep["criterion"] == xai_criterion,
                       setting=sweep["ratio"], bits=8 * sweep["weight_bytes"], corrected=False)
    out["ratio"] = full_bits / out["bits"]
    measured = pd.DataFrame([scores(evaluator, int(i)) for i in out["model"]], index=out.index)
    out = pd.concat([out.drop(columns=[c for c in stats.ENDPOINTS if c in out]), measured], axis=1)
    return out[["technique", "variant", "xai", "setting", "draw", "acc", "bal_acc", "auc", "one_class", "bits", "ratio",
                "corrected", "model"]]


# ----- curves ---------------------------------------------------------------------------------------
def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (technique, variant, setting): mean size and ratio, ACC, balanced accuracy and AUC with 95% Student-t
    intervals over the draws."""
    by = ["technique", "variant", "setting"]
    rows = rows.assign(setting=rows["setting"].map(lambda s: s if np.isscalar(s) else tuple(s)))
    out = rows.groupby(by, sort=False).agg(xai=("xai", "first"), bits=("bits", "mean"), ratio=("ratio", "mean"),
                                           draws=("draw", "nunique")).reset_index()
    for value in stats.ENDPOINTS:
        ci = stats.mean_ci(rows, by, value).rename(columns={"mean": value, "lo": f"{value}_lo", "hi": f"{value}_hi"})
        out = out.merge(ci.drop(columns="n"), on=by)
    return out


def ratio_at(curve: pd.DataFrame, base: float, points: float, value: str = "auc") -> pd.Series | None:
    """The setting (a row of ``curve``) with the largest mean compression ratio whose mean ``value`` lost at most
    ``points`` points against ``base``; None if no setting does."""
    ok = curve[curve[value] >= base - points / 100 - 1e-12]
    return None if ok.empty else ok.loc[ok["ratio"].idxmax()]
