"""The no-fine-tuning repairs of :mod:`xaiprune.pruning.repairs` applied to the pruned models of notebook 04's sweep.

Every criterion's pruned model at every ratio, for each reference draw, is measured under each *repair*, a
fixed combination of the repairs applied in order:

============================  ==========================================================================
``none``                      the pruned model as it is (the sweep of section 1)
``recalibrate``               final bias refitted on the draw's labelled reference images
``batchnorm``                 BatchNorm statistics re-estimated on ``n`` unlabelled validation images
``compensate``                removed channels' mean contribution (on the draw's reference images) folded
                              into the consuming layer's bias
``batchnorm+recalibrate``     the first, then the final bias refitted on the re-estimated model's logits
``compensate+recalibrate``    likewise after compensation
============================  ==========================================================================

The protocol: the best repair is a choice, so it is made on the **validation** split (:func:`choose`: the
highest mean validation balanced accuracy over the criteria and the ratios of at least 50%; AUC cannot
choose here, since recalibration shifts every logit of a class alike and leaves a binary AUC unchanged),
and only the chosen one is then measured on the test split (``repair_sweep(..., which=("none", best))``).
The reference images and the BatchNorm repair's unlabelled images are drawn from the validation split too.

What it costs: recalibration changes only the final bias, so the recalibrated probabilities are the
stored logits plus the fitted shift (no pass over the split); it needs the pruned model's logits on the
20-odd reference images only. Re-estimation and compensation need one pass per distinct pruned model
(and re-estimation a pass over the unlabelled images), so they run on the first ``repair_draws`` draws;
the BatchNorm repair depends on the plan only (its images are fixed), compensation on the plan and the
draw, and each distinct model is evaluated once. Recalibration runs on every draw given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from xaiprune import data, stats
from xaiprune.pruning import comparison, ranking, repairs

REPAIRS = ("none", "recalibrate", "batchnorm", "compensate", "batchnorm+recalibrate", "compensate+recalibrate")
REFITTED = {r for r in REPAIRS if r.endswith("recalibrate")}
MIN_RATIO = 0.5  # the best repair is chosen over the pruned ratios of at least this


def labels_used(repair: str, reference_size: int) -> int:
    """Labelled images a repair uses: the reference set's when it refits the decision, else none."""
    return reference_size if repair in REFITTED else 0


def unlabelled_images(val: data.Split, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` validation images drawn without their labels (seeded): the ward's unlabelled local scans."""
    if not 2 <= n <= len(val):
        raise ValueError(f"unlabelled={n}: expected between 2 and the {len(val)} images of the validation split")
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))
    return val.x[order[:n]]


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def _shifted(evaluator: comparison.Evaluator, model_id: int, shift: torch.Tensor) -> dict:
    """The model's stored logits plus ``shift`` on the final bias, recorded as a new model."""
    return evaluator.record(torch.from_numpy(evaluator.logits[model_id]) + shift.to(torch.float32))


def _refit(evaluator: comparison.Evaluator, model_id: int, ref_logits: torch.Tensor, reference: data.Split) -> dict:
    """Decision recalibration of a measured model: the bias shift fitted on its reference logits, applied to its
    stored test logits (equal to evaluating :func:`xaiprune.pruning.repairs.recalibrate_decision`'s copy). An
    evaluator of a ward refits only the ward's own classes, on their logits (the others' biases stay: a ward's
    reference set says nothing about them, and a fit over all outputs would push them down without end)."""
    if evaluator.ward is None:
        return _shifted(evaluator, model_id, repairs.fit_bias(ref_logits, reference.y, multilabel=evaluator.multilabel))
    ward = data.ward(evaluator.ward)
    shift = torch.zeros(ref_logits.shape[1], dtype=torch.float64)
    shift[ward.classes] = repairs.fit_bias(ref_logits[:, ward.classes], reference.y - ward.offset)
    return _shifted(evaluator, model_id, shift)


def _row(m: dict) -> dict:
    return {**{k: m[k] for k in stats.ENDPOINTS}, "model": m["model"]}


def repair_sweep(evaluator: comparison.Evaluator, criteria: list[str], ratios: list[float],
                 references: list[data.Split], unlabelled: torch.Tensor, repair_draws: int, scope: str = "global",
                 progress: bool = True, which: tuple[str, ...] = REPAIRS, **options) -> pd.DataFrame:
    """ACC, balanced accuracy and AUC on ``evaluator``'s split of every criterion's pruned model at every ratio,
    under each repair of ``which`` (default :data:`REPAIRS`; a combination computes its first step without
    a row for it unless asked).

    ``references`` are the sweep's reference draws (``none`` and recalibration run on all of them; re-estimation
    and compensation on the first ``repair_draws``); ``unlabelled`` the images of the BatchNorm repair.
    Returns one row per repair, criterion, draw and ratio with acc, bal_acc, auc, model (the evaluator's id, for
    the bootstrap of :mod:`xaiprune.stats`), labels (labelled images used) and unlabelled (images used).
    Data-free criteria (L1) get a row per draw too, since the repairs use the draw's reference set.
    """
    if not 1 <= repair_draws <= len(references):
        raise ValueError(f"repair_draws={repair_draws}: expected between 1 and the {len(references)} reference draws")
    if set(which) - set(REPAIRS):
        raise ValueError(f"which={which}: expected some of {REPAIRS}")
    bn, comp = (any(r.startswith(k) for r in which) for k in ("batchnorm", "compensate"))
    bn_done: dict[tuple, tuple[dict, list[torch.Tensor]]] = {}  # plan -> BN model's record, its reference logits
    comp_done: dict[tuple, tuple[dict, torch.Tensor]] = {}  # (plan, draw) -> compensated record, reference logits
    rows = []
    jobs = [(c, d) for c in criteria for d in range(len(references))]
    with tqdm(total=len(jobs) * len(ratios), desc="repairs", mininterval=2.0, disable=not progress) as bar:
        for criterion, d in jobs:
            ref = references[d]
            ranked = evaluator.ranking(criterion, ref, scope=scope, seed=d, **options)
            for ratio in ratios:
                plan = ranked.plan(ratio)
                key = evaluator.plan_key(ranked, plan)
                pruned = evaluator.graph.apply(plan, ranked.segments, share=True)
                got = {"none": evaluator.measure(ranked, ratio)}
                if "recalibrate" in which:
                    got["recalibrate"] = _refit(evaluator, got["none"]["model"], _logits(pruned, ref.x), ref)
                if bn and d < repair_draws:
                    if key not in bn_done:
                        fixed = repairs.reestimate_batchnorm(pruned, unlabelled)
                        bn_done[key] = (evaluator.evaluate(fixed),
                                        [_logits(fixed, r.x) for r in references[:repair_draws]])
                    got["batchnorm"], bn_logits = bn_done[key]
                    if "batchnorm+recalibrate" in which:
                        got["batchnorm+recalibrate"] = _refit(evaluator, got["batchnorm"]["model"], bn_logits[d], ref)
                if comp and d < repair_draws:
                    if (key, d) not in comp_done:
                        fixed = repairs.compensate(evaluator.graph, plan, pruned, ref, ranked.segments)
                        start = evaluator.first_touched(plan, ranked.segments)
                        comp_done[key, d] = (evaluator.evaluate(fixed, start), _logits(fixed, ref.x))
                    got["compensate"], comp_logits = comp_done[key, d]
                    if "compensate+recalibrate" in which:
                        got["compensate+recalibrate"] = _refit(evaluator, got["compensate"]["model"], comp_logits, ref)
                rows += [{"repair": repair, "criterion": criterion, "draw": d, "ratio": ratio, **_row(m),
                          "labels": labels_used(repair, len(ref)),
                          "unlabelled": len(unlabelled) if repair.startswith("batchnorm") else 0}
                         for repair, m in got.items() if repair in which]
                bar.update()
    return pd.DataFrame(rows)


def choose(frame: pd.DataFrame, metric: str = "bal_acc", min_ratio: float = MIN_RATIO) -> tuple[str, pd.Series]:
    """The best repair (not ``none``) of a :func:`repair_sweep` on the **validation** split, and every repair's score.

    The score of a repair is its mean ``metric`` over the criteria and the ratios of at least ``min_ratio``
    (each (criterion, ratio) the mean over its draws, so a repair run on more draws weighs the same). The
    frame must come from a validation evaluator: the notebook records the choice with ``protocol.Choices``.
    """
    rows = frame[(frame["ratio"] >= min_ratio - 1e-9) & (frame["ratio"] > 0) & (frame["repair"] != "none")]
    if rows.empty:
        raise ValueError(f"no repaired row at a ratio of at least {min_ratio}: the sweep needs such a ratio")
    score = rows.groupby(["repair", "criterion", "ratio"])[metric].mean().groupby("repair").mean()
    return str(score.idxmax()), score.sort_values(ascending=False)


def batchnorm_scaling(evaluator: comparison.Evaluator, rankings: dict[str, ranking.Ranking], ratio: float,
                      reference: data.Split, pools: dict[int, torch.Tensor], progress: bool = True) -> pd.DataFrame:
    """BatchNorm re-estimation on ``n`` unlabelled images for each ``n`` of ``pools``, at one ratio.

    ``rankings``: criterion -> its ranking on ``reference``. Rows: criterion, unlabelled, repair
    (``batchnorm`` or ``batchnorm+recalibrate``, refitted on ``reference``), acc, bal_acc, auc, model.
    """
    rows = []
    with tqdm(total=len(rankings) * len(pools), desc="BatchNorm images", mininterval=2.0,
              disable=not progress) as bar:
        for criterion, ranked in rankings.items():
            pruned = evaluator.graph.apply(ranked.plan(ratio), ranked.segments, share=True)
            for n, images in pools.items():
                fixed = repairs.reestimate_batchnorm(pruned, images)
                got = evaluator.evaluate(fixed)
                refit = _refit(evaluator, got["model"], _logits(fixed, reference.x), reference)
                for repair, m in (("batchnorm", got), ("batchnorm+recalibrate", refit)):
                    rows.append({"criterion": criterion, "unlabelled": n, "repair": repair, **_row(m)})
                bar.update()
    return pd.DataFrame(rows)


def unpruned_outputs(evaluator: comparison.Evaluator, frame: pd.DataFrame) -> pd.DataFrame:
    """How far each repair moves the *unpruned* model: its mean ACC and balanced accuracy and the largest change
    of a probability, per repair (re-estimation and recalibration change it by design; compensation must not)."""
    base = frame[(frame["ratio"] == 0) & (frame["repair"] == "none")]["model"].iloc[0]
    rows = []
    for repair, g in frame[frame["ratio"] == 0].groupby("repair", sort=False):
        change = max(float(np.abs(evaluator.scores[m] - evaluator.scores[base]).max()) for m in g["model"])
        rows.append({"repair": repair, "acc": float(g["acc"].mean()), "bal_acc": float(g["bal_acc"].mean()),
                     "max_prob_change": change,
                     "labels": int(g["labels"].max()), "unlabelled": int(g["unlabelled"].max())})
    return pd.DataFrame(rows)
