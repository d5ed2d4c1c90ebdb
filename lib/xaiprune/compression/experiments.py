"""The experiments of ``09_compression``: each technique's XAI variant against its non-XAI counterpart.

A :class:`Study` holds one trained model, the test split and K reference draws. It computes every
weight's relevance once per draw (cached, :func:`xaiprune.compression.compress.weight_relevance`) and the magnitude
once, then builds and evaluates compressed copies:

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
against the 32-bit model (``8 x prune.weight_bytes``) and test ACC/AUC (the shared evaluator of
:mod:`xaiprune.pruning.comparison`, MedMNIST's metrics). With ``correct`` (the default), each compressed copy's
BatchNorm means are corrected on the draw's reference images (:func:`xaiprune.pruning.repairs.correct_means`);
the counterparts get the same correction from the same draw, so they too vary with the draw.
:func:`summary`, :func:`ratio_at` and :func:`equal_size` turn the rows into the notebook's curves and
verdicts. Filter pruning (technique 1) is :func:`xaiprune.pruning.comparison.sweep`, turned into rows by
:func:`filter_rows`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from xaiprune import data, models, stats
from xaiprune.compression import compress, storage
from xaiprune.pruning import comparison, prune

TIE = 0.005  # ACC difference below which two variants count as equal (half a point)


class Study:
    """Compressed copies of ``model`` measured on ``test``; one row per (technique, variant, setting, draw)."""

    def __init__(self, model: models.SegmentedModel, test: data.Split, references: list[data.Split],
                 correct: bool = True, evaluator: comparison.Evaluator | None = None, progress: bool = True):
        if not references:
            raise ValueError("references: expected at least one reference draw")
        for r in references:
            compress.check_reference(r)
        self.model, self.test, self.references, self.correct = model.eval(), test, references, correct
        self.evaluator = evaluator or comparison.Evaluator(model, test)
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

    # ----- one model ------------------------------------------------------------------------------
    def measure(self, technique: str, variant: str, xai: bool, setting: float, draw: int, codes: dict,
                correct: bool | None = None) -> dict:
        """Build, size and evaluate one compressed copy; the row is kept and returned."""
        correct = self.correct if correct is None else correct
        net = compress.apply(self.model, codes, self.references[draw] if correct else None)
        metrics = self.evaluator.evaluate(net)
        bits = storage.size_bits(self.model, codes)["total"]
        row = {"technique": technique, "variant": variant, "xai": xai, "setting": setting, "draw": draw,
               "acc": metrics["acc"], "auc": metrics["auc"], "bits": bits, "ratio": self.full_bits / bits,
               "corrected": correct}
        self.rows.append(row)
        return row

    def _loop(self, technique: str, settings: list, variants: list[tuple[str, bool, object]]) -> None:
        """``variants``: (name, is XAI, ``codes(setting, draw)``); every variant at every setting and draw.

        A non-XAI variant depends on the draw only through the BatchNorm correction: without it, draw 0 alone.
        """
        jobs = [(s, d, v) for s in settings for d in range(len(self.references)) for v in variants
                if v[1] or self.correct or d == 0]
        for s, d, (name, xai, make) in tqdm(jobs, desc=technique, mininterval=2.0, disable=not self.progress):
            self.measure(technique, name, xai, s, d, make(s, d))

    # ----- the techniques -------------------------------------------------------------------------
    def weight_pruning(self, sparsities: list[float]) -> None:
        """Technique 2: the kept weights stored raw (float32) with the cheapest sparse index."""
        for s in sparsities:
            compress.check_sparsity(s)
        self._loop("weight pruning", sparsities, [
            ("relevance", True, lambda s, d: compress.compress(self.model, "raw", masks=self.rank_xai[d].masks(s))),
            ("magnitude", False, lambda s, d: compress.compress(self.model, "raw", masks=self.rank_mag.masks(s)))])

    def weight_pruning_uncorrected(self, sparsities: list[float]) -> None:
        """Technique 2 on draw 0 without the BatchNorm correction, both variants ("weight pruning, no correction")."""
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


def filter_rows(sweep: pd.DataFrame, full_bits: int, xai_criterion: str = "deeplift") -> pd.DataFrame:
    """Technique 1 (:func:`xaiprune.pruning.comparison.sweep`'s rows) as study rows: size = 8 x weight bytes, all float32."""
    out = sweep.assign(technique="filter pruning", variant=sweep["criterion"], xai=sweep["criterion"] == xai_criterion,
                       setting=sweep["ratio"], bits=8 * sweep["weight_bytes"], corrected=False)
    out["ratio"] = full_bits / out["bits"]
    return out[["technique", "variant", "xai", "setting", "draw", "acc", "auc", "bits", "ratio", "corrected"]]


# ----- curves and verdicts --------------------------------------------------------------------------
def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (technique, variant, setting): mean size, ratio, ACC and AUC with 95% Student-t intervals over draws."""
    by = ["technique", "variant", "setting"]
    rows = rows.assign(setting=rows["setting"].map(lambda s: s if np.isscalar(s) else tuple(s)))
    out = rows.groupby(by, sort=False).agg(xai=("xai", "first"), bits=("bits", "mean"), ratio=("ratio", "mean"),
                                           draws=("draw", "nunique")).reset_index()
    for value in ("acc", "auc"):
        ci = stats.mean_ci(rows, by, value).rename(columns={"mean": value, "lo": f"{value}_lo", "hi": f"{value}_hi"})
        out = out.merge(ci.drop(columns="n"), on=by)
    return out


def ratio_at(curve: pd.DataFrame, base_acc: float, points: float) -> float | None:
    """Largest mean compression ratio whose mean test ACC lost at most ``points`` ACC points; None if no setting."""
    ok = curve[curve["acc"] >= base_acc - points / 100 - 1e-12]
    return None if ok.empty else float(ok["ratio"].max())


def equal_size(xai: pd.DataFrame, baseline: pd.DataFrame, value: str = "acc", tie: float = TIE) -> dict:
    """The XAI curve against a baseline at equal size: the baseline's ``value`` interpolated (log bits) at each
    XAI point inside the baseline's size range. Counts the XAI points better, tied (within ``tie``) and worse;
    ``matches_most`` is True when better and tied points are more than half, None when no point is comparable."""
    base = baseline.sort_values("bits")
    lo, hi = base["bits"].min(), base["bits"].max()
    out = {"better": 0, "tie": 0, "worse": 0}
    for _, p in xai.iterrows():
        if not lo * (1 - 1e-9) <= p["bits"] <= hi * (1 + 1e-9):
            continue
        ref = float(np.interp(np.log(p["bits"]), np.log(base["bits"]), base[value]))
        out["better" if p[value] > ref + tie else "worse" if p[value] < ref - tie else "tie"] += 1
    out["compared"] = sum(out.values())
    out["matches_most"] = None if not out["compared"] else out["better"] + out["tie"] > out["compared"] / 2
    return out
