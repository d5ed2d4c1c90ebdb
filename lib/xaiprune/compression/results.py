"""The analysis of ``09_compression`` after the measurements: layers, ratios, the saved model, checks, metrics.

:class:`xaiprune.compression.experiments.Study` measures every compressed copy on a validation subset; this module
turns its rows (and :func:`xaiprune.compression.experiments.summary`'s curves) into what the notebook shows:

- :func:`layer_table`: each compressible layer's weights, input size and share of relevance, and the weights
  whose relevance is exactly zero;
- :func:`ratio_table`: per technique and variant, the ratio at 1 and 3 points of validation AUC;
  :func:`plan_lines`, :func:`claim_lines` and :func:`drift_line` put :mod:`xaiprune.compression.operating`'s
  operating points, paired comparisons and threshold drift into words;
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
from xaiprune.compression import compress, experiments, operating, storage
from xaiprune.pruning import comparison

TECHNIQUES = experiments.TECHNIQUES


def short_names(model: torch.nn.Module) -> dict[str, str]:
    """Each compressible weight's key without ``segments.`` and ``.weight``."""
    return {k: k.removeprefix("segments.").removesuffix(".weight") for k in compress.weight_layers(model)}


def input_sizes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, str]:
    """Each compressible layer's input height x width (``-`` for a linear layer) on a forward pass of ``x``."""
    sizes, layers = {}, compress.weight_layers(model)
    hooks = [m.register_forward_pre_hook(lambda m, i, k=k: sizes.__setitem__(k, "x".join(map(str, i[0].shape[2:])) or "-"))
             for k, m in layers.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def layer_table(model: torch.nn.Module, x: torch.Tensor, relevance: list[dict]) -> tuple[pd.DataFrame, float]:
    """Per compressible layer: weights, input size, share of relevance (draw 0), share of weights with zero relevance
    in draw 0 and in every draw; and the share of all weights whose relevance is zero in every draw."""
    layers, short, spatial = compress.weight_layers(model), short_names(model), input_sizes(model, x[:1])
    zero_all = {k: torch.stack([r[k] == 0 for r in relevance]).all(0) for k in layers}
    total = sum(float(r.sum()) for r in relevance[0].values())
    table = pd.DataFrame({
        "weights": {short[k]: m.weight.numel() for k, m in layers.items()},
        "input HxW": {short[k]: spatial[k] for k in layers},
        "share of relevance": {short[k]: float(relevance[0][k].sum()) / total for k in layers},
        "zero relevance (draw 0)": {short[k]: float((relevance[0][k] == 0).float().mean()) for k in layers},
        "zero in every draw": {short[k]: float(zero_all[k].float().mean()) for k in layers},
    })
    return table, sum(float(zero_all[k].sum()) for k in layers) / table["weights"].sum()


# ----- ratios, operating points, the claim ----------------------------------------------------------
def shown(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x"


def ratio_table(curves: pd.DataFrame, base_auc: float, points: float) -> pd.DataFrame:
    """Per technique and variant: the largest mean compression ratio whose mean validation AUC lost at most
    ``points`` (the claim's) and :data:`operating.LOOSE_POINTS` AUC points; None where no setting qualifies."""
    out = []
    for (tech, variant), g in curves[curves["technique"].isin(TECHNIQUES)].groupby(["technique", "variant"], sort=False):
        at = [experiments.ratio_at(g, base_auc, p) for p in (points, operating.LOOSE_POINTS)]
        out.append({"technique": tech, "variant": variant + (" (XAI)" if g["xai"].iloc[0] else ""),
                    **{f"ratio at {p} AUC point{'s' * (p > 1)}": None if r is None else float(r["ratio"])
                       for p, r in zip((points, operating.LOOSE_POINTS), at)}})
    return pd.DataFrame(out).set_index(["technique", "variant"])


def plan_lines(entries: list[dict]) -> list[str]:
    """Each technique's operating point (chosen on validation) and each counterpart's matched setting, in words."""
    def point(p):
        return f"{p['variant']} at {p['setting']} ({p['ratio']:.1f}x, validation AUC {p['val_auc']:.4f})"
    return [f"{e['technique']}: " + (f"{point(e['xai'])} against {point(e['counterpart'])}" if e["status"] == "compared"
                                    else f"{e['counterpart']['variant']}: not compared, {e['status']}") for e in entries]


def claim_lines(result: dict, target: str) -> list[str]:
    """The claim's outcome per technique and the protocol's ``target`` met or not."""
    lines = [f"{t}: {v['outcome']}" + ("" if v["diff"] is None else f", smallest difference {v['diff']:+.4f} against "
             f"{v['counterpart']} [{v['interval_holm'][0]:+.4f}, {v['interval_holm'][1]:+.4f}]")
             + (f" ({v['why']})" if v["why"] else "") for t, v in result["techniques"].items()]
    met = {None: "NOT measured", True: "met", False: "NOT met"}[result["target_met"]]
    return lines + [f"target ({target}): {met}; XAI above the margin in at least one comparison: "
                    f"{'yes' if result['wins_somewhere'] else 'no'}"]


def drift_line(found: dict, n_classes: int) -> str:
    """The models of :func:`operating.drift` in words."""
    counts = ", ".join(f"{k}: {n}" for k, n in found["by_variant"].items()) or "none"
    return (f"threshold drift: {found['one_class_high_auc']} of {found['models']} compressed models answer one class for "
            f"every validation image (balanced accuracy {1 / n_classes:.2f}, ACC that class's share) while their AUC "
            f"stays within {operating.DRIFT_POINTS} points of the uncompressed model's ({counts})")


# ----- the saved model --------------------------------------------------------------------------------
def choose_saved(curves: pd.DataFrame, base_auc: float, points: float) -> pd.Series:
    """The combined XAI setting with the largest ratio within ``points`` (the claim's) point of validation AUC (the
    combined operating point), or the one with the highest validation AUC if none qualifies."""
    combined = curves[(curves["technique"] == "combined") & curves["xai"]]
    chosen = experiments.ratio_at(combined, base_auc, points)
    return chosen if chosen is not None else combined.loc[combined["auc"].idxmax()]


def save_and_reload(study: experiments.Study, test: comparison.Evaluator, sparsity: float, bits: int, stage: str,
                    path: Path, arch: str) -> dict:
    """Rebuild the combined XAI model from draw 0, write it to ``path``, read it back and evaluate both on ``test``.

    Returns its codes, the in-memory and the reloaded model, the largest logit difference over the test split,
    both models' test endpoints (and those without the BatchNorm correction), the counted size and the file report.
    """
    codes = study.combined_codes(sparsity, bits, stage, 0, True)
    compressed = study.build(codes, 0)
    path = storage.save(path, compressed, codes, arch)
    reloaded = storage.load(path)
    ids = [test.evaluate(m)["model"] for m in (compressed, reloaded, study.build(codes, 0, correct=False))]
    in_memory, from_file, plain = (stats.endpoints(test.y, test.scores[i], test.task) for i in ids)
    size = storage.size_bits(compressed, codes)
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
    and the header), and every weight pruned by the relevance ranking is zero in the reloaded model."""
    assert saved["logit_gap"] == 0.0, f"the reloaded model's logits differ by {saved['logit_gap']}"
    assert saved["from_file"] == saved["in_memory"], "the reloaded model scores differently"
    codes, file = saved["codes"], saved["file"]
    padding = 3 * len(codes) + len(saved["compressed"].state_dict()) - len(codes)
    assert 0 <= file["file_bytes"] - file["header_bytes"] - saved["size"]["total"] / 8 <= padding, \
        "the file's streams are not the counted bits"
    masks = study.rank_xai[0].masks(saved["sparsity"])
    assert all(torch.all(saved["reloaded"].get_submodule(k.removesuffix(".weight")).weight[~masks[k]] == 0) for k in masks), \
        "a pruned weight is not zero in the reloaded model"


def check_sizes(curves: pd.DataFrame) -> None:
    """The size falls with the sparsity of weight pruning and grows with the bits of sharing and mixed precision."""
    for tech, setting_order in (("weight pruning", 1), ("sharing", -1), ("mixed precision", -1)):
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


def metrics(arch: str, full_bits: int, bn_correction: bool, base: dict, zero_all: float, ratios: pd.DataFrame,
            entries: list[dict], result: dict, found: dict, saved: dict) -> dict:
    """``metrics.json`` of ``09_compression`` (the notebook adds ``choices`` and ``claims``). ``base``: the
    uncompressed model's endpoints per split (``{"val": ..., "test": ...}``)."""
    file, f = saved["file"], saved["from_file"]
    table = ratios.reset_index()
    return _rounded({
        "arch": arch, "full_bits": int(full_bits), "bn_correction": bn_correction, "base": base,
        "zero_relevance_share": zero_all,
        "ratios_on_validation": [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in table.to_dict("records")],
        "operating_points": entries,
        "comparisons": [{k: v for k, v in r.items()} for r in result["comparisons"]],
        "techniques": result["techniques"], "threshold_drift": found,
        "saved": {"sparsity": float(saved["sparsity"]), "bits": int(saved["bits"]), "stage": saved["stage"],
                  "ratio": full_bits / saved["size"]["total"], "test": f, "test_without_correction": saved["plain"],
                  "file_bytes": int(file["file_bytes"]), "counted_bytes": file["counted_bytes"],
                  "header_bytes": int(file["header_bytes"]), "file_excess": file["excess"]},
    })
