"""The experiments of ``09_compression``: each technique's DeepLIFT variant against its non-XAI counterparts.

A :class:`Study` holds one trained model, the split its curves are measured on (a validation subset: every
choice is made there) and K reference draws. It finds the **dead weights** once from the geometry
(:func:`xaiprune.compression.relevance.dead_weights`), computes every weight's DeepLIFT and Taylor relevance once
per draw (cached, :func:`xaiprune.compression.relevance.weight_relevance`) and the magnitude once, then builds and
evaluates compressed copies. Every variant removes the dead weights first and competes on the live ones:

=====================  ======================================  ==========================================
technique              XAI variant (``deeplift``)              non-XAI counterparts
=====================  ======================================  ==========================================
``weight_pruning``     global ranking by DeepLIFT relevance    by Taylor saliency (``taylor``), by ``magnitude``
``sharing``            k-means weighted by DeepLIFT relevance  weighted by Taylor saliency, plain ``kmeans``
``mixed_precision``    bits from the layers' DeepLIFT share    from their Taylor share, ``range`` bits, ``uniform``
``combined``           DeepLIFT pruning, then DeepLIFT         the Taylor pipeline; the ``magnitude`` pipeline
                       sharing (or DeepLIFT bits)              (magnitude pruning, plain k-means or range bits)
=====================  ======================================  ==========================================

Every row has the exact size in bits (:func:`xaiprune.compression.storage.size_bits`, the dead weights free: the
architecture and the input size give them), the **overall ratio** against the 32-bit model (``8 x
prune.weight_bytes``) and the **ratio on live weights** (``live_ratio``: the 32-bit model without its dead weights,
everything else raw, against the same compressed size), ACC, balanced accuracy and AUC (:func:`xaiprune.stats.endpoints`)
and whether the model answers one class for every image. With ``correct`` (the default), each compressed copy's
BatchNorm means are corrected on the draw's reference images (:func:`xaiprune.pruning.repairs.correct_means`); every
variant gets the same correction from the same draw. :meth:`Study.probabilities` rebuilds any measured setting and
returns its per-image probabilities on another split (the test split, once the operating points are chosen).
:func:`summary` and :func:`ratio_at` turn the rows into the notebook's curves. Filter pruning (technique 1) is
:func:`xaiprune.pruning.comparison.sweep`, turned into rows by :meth:`Study.filter_rows`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from tqdm import tqdm

from xaiprune import data, models, stats
from xaiprune.compression import compress, relevance, storage
from xaiprune.pruning import comparison, prune

FILTER = "filter_pruning"
TECHNIQUES = [FILTER, "weight_pruning", "sharing", "mixed_precision", "combined"]  # each has an XAI variant and counterparts
UNCORRECTED = "weight_pruning_uncorrected"  # technique 2 without the BatchNorm correction, shown beside
XAI = "deeplift"                  # the XAI variant of every technique
SCORES = ("deeplift", "taylor")   # the weight scores computed per reference draw
PRUNERS = ("deeplift", "taylor", "magnitude")


def digest(codes: dict) -> str:
    """A content hash of ``codes`` (kinds, bits, values, tables, masks): equal digests, the same compressed weights."""
    h = hashlib.blake2b(digest_size=16)
    for k, c in codes.items():
        h.update(f"{k}|{c.kind}|{c.bits}|{c.shape}|{c.mask is None}".encode())
        for a in (c.values, c.table) if c.mask is None else (c.values, c.table, c.mask):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


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
        self.progress = progress
        self.dead = relevance.dead_weights(model, split.x[:1])
        self.live = {k: ~d for k, d in self.dead.items()}
        self.full_bits = 8 * prune.weight_bytes(model)
        self.live_bits = self.full_bits - 32 * sum(int(d.sum()) for d in self.dead.values())
        self.relevance = {m: [relevance.weight_relevance(model, r, m) for r in tqdm(
            references, desc=f"{m} weight relevance", disable=not progress)] for m in SCORES}
        self.magnitude = relevance.magnitude(model)
        by_size = compress.WeightRanking(self.magnitude, dead=self.dead)
        self.rank = {m: [compress.WeightRanking(r, tiebreak=by_size, dead=self.dead) for r in self.relevance[m]]
                     for m in SCORES}  # ties (exact zeros): by |w|
        self.rank["magnitude"] = [by_size]
        self.rows: list[dict] = []
        self.builders: dict[tuple[str, str], object] = {}  # (technique, variant) -> codes(setting, draw)
        self.models: dict[tuple, int] = {}  # (evaluator, codes' digest, draw, correct) -> the evaluator's model id

    # ----- scores by name -------------------------------------------------------------------------
    def ranking(self, name: str, draw: int) -> compress.WeightRanking:
        """The ranking of pruner ``name`` (:data:`PRUNERS`) for reference draw ``draw``."""
        return self.rank[name][draw if name in SCORES else 0]

    def weights(self, name: str, draw: int) -> dict | None:
        """The k-means sample weights of variant ``name``: its relevance in draw ``draw``, or None (plain k-means)."""
        return self.relevance[name][draw] if name in SCORES else None

    def sensitivity(self, name: str, draw: int, masks: dict) -> dict:
        """Each layer's share of the variant's relevance over the kept weights, or (otherwise) their squared range."""
        return compress.layer_sums(self.relevance[name][draw], masks) if name in SCORES else \
            compress.range_sensitivity(self.model, masks)

    def allocation(self, average: float, sensitivity: dict, masks: dict) -> dict:
        counts = {k: int(masks[k].sum()) for k in compress.weight_layers(self.model)}
        return compress.allocate_bits(counts, sensitivity, average)

    # ----- one model ------------------------------------------------------------------------------
    def build(self, codes: dict, draw: int, correct: bool | None = None):
        """The compressed copy for ``codes``, its BatchNorm means corrected on draw ``draw``'s reference images."""
        correct = self.correct if correct is None else correct
        return compress.apply(self.model, codes, self.references[draw] if correct else None)

    def evaluate(self, evaluator: comparison.Evaluator, codes: dict, draw: int, correct: bool | None = None) -> int:
        """The id under which ``evaluator`` holds the compressed copy for ``codes`` (draw ``draw``'s correction): built
        and evaluated once, however many variants or settings give the same codes (mixed precision at its lowest
        budget gives every allocation the same bits)."""
        correct = self.correct if correct is None else correct
        key = (id(evaluator), digest(codes), draw if correct else None, correct)
        if key not in self.models:
            self.models[key] = evaluator.evaluate(self.build(codes, draw, correct))["model"]
        return self.models[key]

    def size(self, codes: dict) -> dict:
        """Bits of ``codes`` (dead weights free), the overall ratio and the ratio on live weights."""
        bits = storage.size_bits(self.model, codes, self.dead)["total"]
        return {"bits": bits, "ratio": self.full_bits / bits, "live_ratio": self.live_bits / bits}

    def measure(self, technique: str, variant: str, setting, draw: int, codes: dict, correct: bool | None = None) -> dict:
        """Build, size and evaluate one compressed copy on the study's split; the row is kept and returned."""
        correct = self.correct if correct is None else correct
        model_id = self.evaluate(self.evaluator, codes, draw, correct)
        row = {"technique": technique, "variant": variant, "xai": variant == XAI, "setting": setting, "draw": draw,
               **scores(self.evaluator, model_id), **self.size(codes), "corrected": correct, "model": model_id}
        self.rows.append(row)
        return row

    def draws(self, variant: str) -> list[int]:
        """The draws a variant is measured on: one without relevance depends on the draw only through the BatchNorm
        correction, so without it draw 0 alone."""
        return list(range(len(self.references))) if variant in SCORES or self.correct else [0]

    def _loop(self, technique: str, settings: list, variants: dict) -> None:
        """``variants``: ``{name: codes(setting, draw)}``; every variant at every setting and its draws. A variant
        without relevance gets the same codes in every draw: built once per setting."""
        self.builders.update({(technique, name): make for name, make in variants.items()})
        jobs = [(s, name, d) for s in settings for name in variants for d in self.draws(name)]
        last = None
        for s, name, d in tqdm(jobs, desc=technique, mininterval=2.0, disable=not self.progress):
            if last is None or last[0] != (s, name) or name in SCORES:
                last = ((s, name), variants[name](s, d))
            self.measure(technique, name, s, d, last[1])

    def probabilities(self, evaluator: comparison.Evaluator, technique: str, variant: str, setting) -> list[np.ndarray]:
        """Per-image probabilities on ``evaluator``'s split (the test split) of a measured setting, one array per
        draw (the draws it was measured on): the same codes rebuilt, the same correction. Filter pruning runs
        :func:`xaiprune.pruning.comparison.sweep` for the one criterion and ratio."""
        if technique == FILTER:
            rows = comparison.sweep(self.model, evaluator.split, [variant], [setting], self.references,
                                    progress=False, evaluator=evaluator)
            return [evaluator.scores[i] for i in rows["model"]]
        make = self.builders[(technique, variant)]
        same = [r["setting"] for r in self.rows if (r["technique"], r["variant"]) == (technique, variant)
                and np.atleast_1d(r["setting"]).tolist() == np.atleast_1d(setting).tolist()]
        if not same:
            raise ValueError(f"{technique} / {variant} was not measured at {setting!r}")
        setting, draws = same[0], self.draws(variant)  # as measured (tables and JSON turn 4 bits into 4.0)
        codes = None if variant in SCORES else make(setting, 0)
        return [evaluator.scores[self.evaluate(evaluator, codes or make(setting, d), d)] for d in draws]

    # ----- the techniques -------------------------------------------------------------------------
    def weight_pruning(self, sparsities: list[float]) -> None:
        """Technique 2: the dead weights and the lowest ``sparsity`` of the live ones removed, the kept weights stored
        raw (float32) with the cheapest sparse index."""
        for s in sparsities:
            compress.check_sparsity(s)
        self._loop("weight_pruning", sparsities, {
            n: lambda s, d, n=n: compress.compress(self.model, "raw", masks=self.ranking(n, d).masks(s)) for n in PRUNERS})

    def weight_pruning_uncorrected(self, sparsities: list[float]) -> None:
        """Technique 2 on draw 0 without the BatchNorm correction, every variant (:data:`UNCORRECTED`); shown beside
        technique 2, never an operating point."""
        for s in sparsities:
            for name in PRUNERS:
                self.measure(UNCORRECTED, name, s, 0, compress.compress(
                    self.model, "raw", masks=self.ranking(name, 0).masks(s)), correct=False)

    def sharing(self, bits: list[int]) -> None:
        """Technique 3: every layer's live weights shared with ``2^b`` centres (k-means weighted by DeepLIFT or Taylor
        relevance, or plain), the dead ones pruned."""
        for b in bits:
            compress.check_bits(b)
        self._loop("sharing", bits, {n: lambda b, d, n=n: compress.compress(
            self.model, "share", b, masks=self.live, sample_weights=self.weights(n, d)) for n in (*SCORES, "kmeans")})

    def mixed_precision(self, budgets: list[int]) -> None:
        """Technique 4: per-layer bits (2..8) of the live weights under an average budget, from the layers' DeepLIFT or
        Taylor relevance or the weights' range; uniform bits at the same total."""
        variants = {n: lambda b, d, n=n: compress.compress(self.model, "quant", self.allocation(
            b, self.sensitivity(n, d, self.live), self.live), masks=self.live) for n in (*SCORES, "range")}
        variants["uniform"] = lambda b, d: compress.compress(self.model, "quant", int(b), masks=self.live)
        self._loop("mixed_precision", budgets, variants)

    def combined_codes(self, sparsity: float, bits: int, stage: str, draw: int, name: str) -> dict:
        """Technique 5, pipeline ``name`` (:data:`PRUNERS`): prune by its score, then share (weighted by its relevance;
        magnitude: plain k-means) or mixed precision (bits from its relevance; magnitude: the range) on the kept weights."""
        masks = self.ranking(name, draw).masks(sparsity)
        if stage == "share":
            return compress.compress(self.model, "share", bits, masks=masks, sample_weights=self.weights(name, draw))
        return compress.compress(self.model, "quant", self.allocation(bits, self.sensitivity(name, draw, masks), masks),
                                 masks=masks)

    def combined(self, sparsities: list[float], bits: list[int], stage: str = "share") -> None:
        if stage not in ("share", "mixed"):
            raise ValueError(f"stage={stage!r}; expected 'share' or 'mixed'")
        grid = [(s, b) for s in sparsities for b in bits]
        self._loop("combined", grid, {n: lambda sb, d, n=n: self.combined_codes(*sb, stage, d, n) for n in PRUNERS})

    def filter_rows(self, sweep: pd.DataFrame) -> pd.DataFrame:
        """Technique 1 (:func:`xaiprune.pruning.comparison.sweep`'s rows on the study's evaluator, scope global) as
        study rows: the pruned float32 model without its dead weights (its size, ``8 x prune.weight_bytes``, less 32
        bits per dead weight of the pruned shapes); the endpoints from the stored probabilities."""
        out = sweep.assign(technique=FILTER, variant=sweep["criterion"], xai=sweep["criterion"] == XAI,
                           setting=sweep["ratio"], corrected=False)
        out["bits"] = [8 * b - 32 * self.dead_in_pruned(c, d, r)
                       for b, c, d, r in zip(sweep["weight_bytes"], sweep["criterion"], sweep["draw"], sweep["ratio"])]
        out["ratio"], out["live_ratio"] = self.full_bits / out["bits"], self.live_bits / out["bits"]
        measured = pd.DataFrame([scores(self.evaluator, int(i)) for i in out["model"]], index=out.index)
        out = pd.concat([out.drop(columns=[c for c in stats.ENDPOINTS if c in out]), measured], axis=1)
        return out[["technique", "variant", "xai", "setting", "draw", "acc", "bal_acc", "auc", "one_class", "bits",
                    "ratio", "live_ratio", "corrected", "model"]]

    def dead_in_pruned(self, criterion: str, draw: int, ratio: float) -> int:
        """Dead weights of the model the sweep pruned with ``criterion`` (draw ``draw``) at ``ratio``."""
        ranked = self.evaluator.ranking(criterion, self.references[draw], scope="global", seed=draw)
        pruned = self.evaluator.graph.apply(ranked.plan(ratio), ranked.segments, share=True)
        return sum(int(d.sum()) for d in relevance.dead_weights(pruned, self.split.x[:1]).values())

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


# ----- curves ---------------------------------------------------------------------------------------
def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (technique, variant, setting): mean size and ratios (overall and on live weights), ACC, balanced accuracy
    and AUC with 95% Student-t intervals over the draws."""
    by = ["technique", "variant", "setting"]
    rows = rows.assign(setting=rows["setting"].map(lambda s: s if np.isscalar(s) else tuple(s)))
    out = rows.groupby(by, sort=False).agg(xai=("xai", "first"), bits=("bits", "mean"), ratio=("ratio", "mean"),
                                           live_ratio=("live_ratio", "mean"), draws=("draw", "nunique")).reset_index()
    for value in stats.ENDPOINTS:
        ci = stats.mean_ci(rows, by, value).rename(columns={"mean": value, "lo": f"{value}_lo", "hi": f"{value}_hi"})
        out = out.merge(ci.drop(columns="n"), on=by)
    return out


def ratio_at(curve: pd.DataFrame, base: float, points: float, value: str = "auc") -> pd.Series | None:
    """The setting (a row of ``curve``) with the largest mean compression ratio whose mean ``value`` lost at most
    ``points`` points against ``base``; None if no setting does."""
    ok = curve[curve[value] >= base - points / 100 - 1e-12]
    return None if ok.empty else ok.loc[ok["ratio"].idxmax()]
