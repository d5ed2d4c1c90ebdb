"""The analysis of ``09_compression`` after the measurements: layers, ratios, the saved model, checks, metrics.

:class:`xaiprune.compression.experiments.Study` measures every compressed copy on a validation subset; this module
turns its rows (and :func:`xaiprune.compression.experiments.summary`'s curves) into what the notebook shows:

- :func:`layer_table`: each compressible layer's weights, input size, dead weights, share of DeepLIFT relevance,
  live weights with zero DeepLIFT or Taylor relevance, and DeepLIFT's summation-to-delta gap;
- :func:`points_table`: per technique and variant, the operating point read on validation (ratio on live weights and
  overall, at 1 and 3 AUC points) and its test AUC and balanced accuracy; :func:`plan_lines`, :func:`claim_lines` and
  :func:`drift_line` put :mod:`xaiprune.compression.operating`'s comparisons, targets and threshold drift into words;
- :func:`choose_saved`, :func:`save_and_reload`, :func:`bits_per_weight`: the combined model chosen on
  validation, written to a file, read back and evaluated once on test;
- :func:`check_saved`, :func:`check_sizes` and :func:`metrics`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xaiprune import paths, stats
from xaiprune.compression import compress, experiments, operating, relevance, storage
from xaiprune.pruning import comparison, xai

TECHNIQUES = experiments.TECHNIQUES


def short_names(model: torch.nn.Module) -> dict[str, str]:
    """Each compressible weight's key without ``segments.`` and ``.weight``."""
    return {k: k.removeprefix("segments.").removesuffix(".weight") for k in compress.weight_layers(model)}


def layer_table(study: experiments.Study, draw: int = 0) -> pd.DataFrame:
    """Per compressible layer: weights, input size, share of dead weights, share of the DeepLIFT relevance (draw
    ``draw``), share of its live weights with zero DeepLIFT and zero Taylor relevance in every draw, and on the draw's
    reference images the gaps of :func:`xaiprune.compression.relevance.completeness`: the weights' contributions against
    the layer's DeepLIFT attribution, and against ``f(x) - f(x')`` (summation to delta)."""
    model, ref, short = study.model, study.references[draw], short_names(study.model)
    shapes = relevance.input_shapes(model, study.split.x[:1])
    gaps = relevance.completeness(model, ref.x, xai._targets(ref.y))
    rel = study.relevance[experiments.XAI][draw]
    total = sum(float(r.sum()) for r in rel.values())

    def zero_live(method, k):
        live = study.live[k]
        return float((torch.stack([r[k] == 0 for r in study.relevance[method]]).all(0) & live).sum() / live.sum())
    return pd.DataFrame({short[k]: {
        "weights": m.weight.numel(), "input HxW": "x".join(map(str, shapes[k][1:])) or "-",
        "dead": float(study.dead[k].float().mean()), "DeepLIFT share": float(rel[k].sum()) / total,
        "live, zero DeepLIFT": zero_live("deeplift", k), "live, zero Taylor": zero_live("taylor", k),
        "weights vs layer": gaps[k]["layer"], "sum-to-delta gap": gaps[k]["delta"]}
        for k, m in compress.weight_layers(model).items()}).T.infer_objects()


# ----- ratios, operating points, the claim ----------------------------------------------------------
def points_table(points: dict, curves: pd.DataFrame, base_auc: float) -> pd.DataFrame:
    """Per technique and variant (operating points after :func:`operating.at_test`): the setting, the ratio on live
    weights and overall at the claim's loss, the ratio on live weights at :data:`operating.LOOSE_POINTS` points (all
    read on validation), the validation AUC and the test AUC and balanced accuracy there."""
    out = []
    for tech, by in points.items():
        for v, p in by.items():
            loose = experiments.ratio_at(curves[(curves["technique"] == tech) & (curves["variant"] == v)], base_auc,
                                         operating.LOOSE_POINTS)
            out.append({"technique": tech, "variant": v + (" (XAI)" if v == experiments.XAI else ""),
                        "setting": p and str(p["setting"]), "ratio on live weights": p and p["live_ratio"],
                        "overall ratio": p and p["ratio"],
                        f"live ratio at {operating.LOOSE_POINTS} points": None if loose is None else loose["live_ratio"],
                        "validation AUC": p and p["val_auc"], "test AUC": p and p["test_auc"],
                        "test balanced accuracy": p and p["test_bal_acc"]})
    return pd.DataFrame(out).set_index(["technique", "variant"])


def plan_lines(entries: list[dict]) -> list[str]:
    """Each technique's operating point (chosen on validation) and each counterpart's matched setting, in words."""
    def point(p):
        return f"{p['variant']} at {p['setting']} ({p['ratio']:.1f}x, validation AUC {p['val_auc']:.4f})"
    return [f"{e['technique']}: " + (f"{point(e['xai'])} against {point(e['counterpart'])}" if e["status"] == "compared"
                                    else f"{e['counterpart']['variant']}: not compared, {e['status']}") for e in entries]


def claim_lines(found: dict, result: dict, factor: float, combined: float) -> list[str]:
    """The claim's targets (:func:`operating.targets`) and the equal-size comparisons per technique, in words."""
    lines = [f"{t}: DeepLIFT {operating._x(v['deeplift'])} on live weights, best counterpart {v['best']} "
             f"{operating._x(v['best_ratio'])}" + ("" if v["factor"] is None else f" ({v['factor']:.2f}x it)")
             + f"; target {factor:g}x: {'met' if v['met'] else 'NOT met'}" for t, v in found["ratio"].items()]
    c = found["combined"]
    lines.append(f"combined: DeepLIFT pipeline {operating._x(c['ratio'])} overall" + (
        "" if c["test_auc"] is None else f", test AUC {c['test_auc']:.4f} (loss {c['test_loss'] * 100:+.2f} points)")
        + f"; target {combined:g}x: {'met' if c['met'] else 'NOT met'}")
    lines += [f"equal size, {t}: {v['outcome']}" + ("" if v["diff"] is None else f", smallest difference "
              f"{v['diff']:+.4f} against {v['counterpart']} [{v['interval_holm'][0]:+.4f}, {v['interval_holm'][1]:+.4f}]")
              + (f" ({v['why']})" if v["why"] else "") for t, v in result["techniques"].items()]
    return lines + [f"below 0 at equal size: {', '.join(found['below']) or 'none'}",
                    f"not met: {'; '.join(found['not_met']) or 'nothing'}"]


def drift_line(found: dict, n_classes: int) -> str:
    """The models of :func:`operating.drift` in words."""
    counts = ", ".join(f"{k}: {n}" for k, n in found["by_variant"].items()) or "none"
    return (f"threshold drift: {found['one_class_high_auc']} of {found['models']} compressed models answer one class for "
            f"every validation image (balanced accuracy {1 / n_classes:.2f}, ACC that class's share) while their AUC "
            f"stays within {operating.DRIFT_POINTS} points of the uncompressed model's ({counts})")


# ----- the saved model --------------------------------------------------------------------------------
def choose_saved(curves: pd.DataFrame, base_auc: float, points: float) -> pd.Series:
    """The combined DeepLIFT setting with the largest ratio within ``points`` (the claim's) point of validation AUC (the
    combined operating point), or the one with the highest validation AUC if none qualifies."""
    combined = curves[(curves["technique"] == "combined") & curves["xai"]]
    chosen = experiments.ratio_at(combined, base_auc, points)
    return chosen if chosen is not None else combined.loc[combined["auc"].idxmax()]


def save_and_reload(study: experiments.Study, test: comparison.Evaluator, sparsity: float, bits: int, stage: str,
                    path: Path, arch: str) -> dict:
    """Rebuild the combined DeepLIFT model from draw 0, write it to ``path`` (its dead weights left to the geometry),
    read it back and evaluate both on ``test``.

    Returns its codes, the in-memory and the reloaded model, the largest logit difference over the test split,
    both models' test endpoints (and those without the BatchNorm correction), the counted size and the file report.
    """
    codes = study.combined_codes(sparsity, bits, stage, 0, experiments.XAI)
    compressed = study.build(codes, 0)
    path = storage.save(path, compressed, codes, arch, tuple(study.split.x.shape[1:]))
    reloaded = storage.load(path)
    ids = [test.evaluate(m)["model"] for m in (compressed, reloaded, study.build(codes, 0, correct=False))]
    in_memory, from_file, plain = (stats.endpoints(test.y, test.scores[i], test.task) for i in ids)
    size = storage.size_bits(compressed, codes, study.dead)
    return {"sparsity": sparsity, "bits": bits, "stage": stage, "path": path, "codes": codes, "compressed": compressed,
            "reloaded": reloaded, "logit_gap": float(np.abs(test.logits[ids[0]] - test.logits[ids[1]]).max()),
            "in_memory": in_memory, "from_file": from_file, "plain": plain, "size": size,
            "file": storage.file_report(path, size["total"])}


def saved_lines(saved: dict, full_bits: int) -> list[str]:
    """The saved model's setting, file size against the counted size, and its test scores after reloading."""
    file, size, f = saved["file"], saved["size"], saved["from_file"]
    return [f"saved: sparsity {saved['sparsity']}, {saved['bits']} bits ({saved['stage']}), draw 0: {paths.relative(saved['path'])}",
            f"  file {file['file_bytes']:,} bytes; counted {file['counted_bytes']:,.0f} bytes (ratio {full_bits / size['total']:.1f}x); "
            f"header {file['header_bytes']:,} bytes: the file is {file['excess']:+.2%} off the counted size",
            f"  reloaded: largest logit difference {saved['logit_gap']:.2e}; test ACC {f['acc']:.4f}, balanced accuracy "
            f"{f['bal_acc']:.4f}, AUC {f['auc']:.4f}; without the BatchNorm correction: ACC {saved['plain']['acc']:.4f}, "
            f"balanced accuracy {saved['plain']['bal_acc']:.4f}, AUC {saved['plain']['auc']:.4f}"]


def bits_per_weight(model: torch.nn.Module, size: dict) -> pd.DataFrame:
    """Per layer, the codes, table and index bits of :func:`storage.size_bits` divided by the layer's original weights."""
    layers, short = compress.weight_layers(model), short_names(model)
    frame = pd.DataFrame({short[k]: {"codes": v["codes"], "table": v["table"], "index": v["index"]}
                          for k, v in size["layers"].items()}).T
    return frame.div([layers[k].weight.numel() for k in layers], axis=0)


# ----- checks, metrics --------------------------------------------------------------------------------
def check_saved(study: experiments.Study, saved: dict) -> None:
    """The reloaded model gives the same logits and scores, the file holds exactly the counted streams (plus padding
    and the header), and every weight pruned by the DeepLIFT ranking (the dead ones too) is zero in the reloaded model."""
    assert saved["logit_gap"] == 0.0, f"the reloaded model's logits differ by {saved['logit_gap']}"
    assert saved["from_file"] == saved["in_memory"], "the reloaded model scores differently"
    codes, file = saved["codes"], saved["file"]
    padding = 3 * len(codes) + len(saved["compressed"].state_dict()) - len(codes)
    assert 0 <= file["file_bytes"] - file["header_bytes"] - saved["size"]["total"] / 8 <= padding, \
        "the file's streams are not the counted bits"
    masks = study.ranking(experiments.XAI, 0).masks(saved["sparsity"])
    assert all(torch.all(saved["reloaded"].get_submodule(k.removesuffix(".weight")).weight[~masks[k]] == 0) for k in masks), \
        "a pruned weight is not zero in the reloaded model"


def check_sizes(curves: pd.DataFrame) -> None:
    """The size falls with the sparsity of weight pruning and grows with the bits of sharing and mixed precision."""
    for tech, setting_order in (("weight_pruning", 1), ("sharing", -1), ("mixed_precision", -1)):
        for variant, g in curves[curves["technique"] == tech].groupby("variant"):
            sizes = g.sort_values("setting")["bits"].to_numpy()
            assert np.all(np.diff(sizes) * setting_order < 0), f"{tech}/{variant}: size does not move with the setting"


def _rounded(v):
    if isinstance(v, (float, np.floating)):
        return round(float(v), 6)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v


def metrics(study: experiments.Study, arch: str, bn_correction: bool, base: dict, points: dict, entries: list[dict],
            result: dict, found: dict, drifted: dict, saved: dict) -> dict:
    """``metrics.json`` of ``09_compression`` (the notebook adds ``choices`` and ``claims``). ``base``: the
    uncompressed model's endpoints per split (``{"val": ..., "test": ...}``); ``points``: the operating points after
    :func:`operating.at_test`, written as ``techniques.<technique>.<variant>`` with ``ratio_at_1pt`` (on live weights),
    ``overall_ratio_at_1pt`` and the test endpoints there."""
    file, f = saved["file"], saved["from_file"]
    techniques = {t: {v: {"ratio_at_1pt": p and p["live_ratio"], "overall_ratio_at_1pt": p and p["ratio"],
                          "setting": p and p["setting"], "val_auc": p and p["val_auc"], "test_auc": p and p["test_auc"],
                          "test_bal_acc": p and p["test_bal_acc"], "test_acc": p and p["test_acc"]}
                      for v, p in by.items()} for t, by in points.items()}
    return _rounded({
        "arch": arch, "full_bits": int(study.full_bits), "live_bits": int(study.live_bits), "bn_correction": bn_correction,
        "base": base, "dead_weight_share": relevance.dead_share(study.dead), "techniques": techniques,
        "targets": found, "operating_points": entries, "comparisons": result["comparisons"],
        "equal_size": result["techniques"], "threshold_drift": drifted,
        "saved": {"sparsity": float(saved["sparsity"]), "bits": int(saved["bits"]), "stage": saved["stage"],
                  "ratio": study.full_bits / saved["size"]["total"], "live_ratio": study.live_bits / saved["size"]["total"],
                  "test": f, "test_without_correction": saved["plain"], "file_bytes": int(file["file_bytes"]),
                  "counted_bytes": file["counted_bytes"], "header_bytes": int(file["header_bytes"]),
                  "file_excess": file["excess"]},
    })
