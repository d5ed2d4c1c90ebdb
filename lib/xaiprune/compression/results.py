"""The analysis of ``09_compression`` after the measurements: layers, verdicts, the saved model, targets, metrics.

:class:`xaiprune.compression.experiments.Study` measures every compressed copy; this module turns its rows
(and :func:`xaiprune.compression.experiments.summary`'s curves) into what the notebook shows:

- :func:`layer_table`: each compressible layer's weights, input size and share of relevance, and the weights
  whose relevance is exactly zero;
- :func:`techniques` and :func:`verdict_lines`: per technique, the ratio at 1 and 3 points of ACC of the XAI
  variant and of each counterpart, and the comparison at equal size against the strongest counterpart;
  :func:`constant_line`: the models that answer one class for every image;
- :func:`choose_saved`, :func:`save_and_reload`, :func:`bits_per_weight`: the combined model written to a file
  and read back;
- :func:`targets` (the targets of this project's reconstruction, docs/DESIGN.md), :func:`target_lines`,
  :func:`check_saved`, :func:`check_sizes` and :func:`metrics`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xaiprune import data, paths
from xaiprune.compression import compress, storage, experiments

TECHNIQUES = ["filter pruning", "weight pruning", "sharing", "mixed precision", "combined"]
TARGET_POINTS = 1  # the ACC loss, in points, at which ratios are read and the combined target is judged
LOOSE_POINTS = 3  # the second, looser ACC loss at which ratios are read
TARGET_RATIO = 16  # the combined pipeline at least this much smaller at a loss of at most TARGET_POINTS of ACC
TARGET_FILE_EXCESS = 0.05  # the saved file within this fraction of the counted size


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


# ----- verdicts ---------------------------------------------------------------------------------------
def shown(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x"


def techniques(curves: pd.DataFrame, base_acc: float) -> tuple[dict, pd.DataFrame]:
    """Per technique: the XAI variant's and every counterpart's ratio at 1 and 3 points of ACC, the strongest
    counterpart (largest ratio at 1 point, then at 3) and the comparison with it at equal size (ACC and AUC).
    Returns the entries (as in ``metrics.json``) and the table of ratios."""
    out, table = {}, []
    at = lambda g, pts: experiments.ratio_at(g, base_acc, pts)  # noqa: E731
    for tech in TECHNIQUES:
        here = curves[curves["technique"] == tech]
        xai_curve, baselines = here[here["xai"]], {v: g for v, g in here[~here["xai"]].groupby("variant", sort=False)}
        entry = {"xai": {"variant": xai_curve["variant"].iloc[0], "ratio_at_1pt": at(xai_curve, TARGET_POINTS), "ratio_at_3pt": at(xai_curve, LOOSE_POINTS)},
                 "baselines": {v: {"ratio_at_1pt": at(g, TARGET_POINTS), "ratio_at_3pt": at(g, LOOSE_POINTS)} for v, g in baselines.items()}}
        strongest = max(baselines, key=lambda v: (entry["baselines"][v]["ratio_at_1pt"] or 0, entry["baselines"][v]["ratio_at_3pt"] or 0))
        entry["baseline"] = {"variant": strongest, **entry["baselines"][strongest]}
        entry["equal_size_acc"] = experiments.equal_size(xai_curve, baselines[strongest], "acc")
        entry["equal_size_auc"] = experiments.equal_size(xai_curve, baselines[strongest], "auc")
        out[tech] = entry
        for name, v in [(entry["xai"]["variant"] + " (XAI)", entry["xai"]), *entry["baselines"].items()]:
            table.append({"technique": tech, "variant": name, f"ratio at {TARGET_POINTS} point": v["ratio_at_1pt"], f"ratio at {LOOSE_POINTS} points": v["ratio_at_3pt"]})
    return out, pd.DataFrame(table).set_index(["technique", "variant"])


def verdict_lines(entries: dict) -> list[str]:
    """Per technique, in words: the ratios at 1 point, and the XAI points better, tied and worse at equal size."""
    lines = []
    for tech, entry in entries.items():
        e, strongest = entry["equal_size_acc"], entry["baseline"]["variant"]
        r_x, r_b = entry["xai"]["ratio_at_1pt"] or 0, entry["baseline"]["ratio_at_1pt"] or 0
        head = (f"{tech}: {entry['xai']['variant']} {shown(entry['xai']['ratio_at_1pt'])} against {strongest} "
                f"{shown(entry['baseline']['ratio_at_1pt'])} at {TARGET_POINTS} point ({'XAI at least as good' if r_x >= r_b else 'XAI WORSE'}); ")
        if e["matches_most"] is None:
            lines.append(head + "at equal size no XAI point falls inside the counterpart's size range")
            continue
        lines.append(head + f"at equal size (ACC) XAI better at {e['better']}, tied at {e['tie']}, worse at {e['worse']} of "
                     f"{e['compared']} points: " + ("matches or beats it on most of the curve" if e["matches_most"]
                                                    else "does NOT match it on most of the curve")
                     + "; (AUC) better at {better}, tied at {tie}, worse at {worse}".format(**entry["equal_size_auc"]))
    return lines


def constant_line(rows: pd.DataFrame, test: data.Split, n_classes: int) -> str:
    """How many measured models answer every test image with one class (ACC equal to a class's share of the test
    split) while their AUC stays above 0.9, per technique and variant."""
    labels = test.y.numpy().reshape(len(test), -1)
    shares = [float((labels[:, 0] == c).mean()) for c in range(n_classes)] if labels.shape[1] == 1 else []
    constant = rows[rows["acc"].apply(lambda a: any(abs(a - r) < 1e-9 for r in shares)) & (rows["auc"] > 0.9)]
    counts = ", ".join(f"{t} / {v}: {n}" for (t, v), n in constant.groupby(["technique", "variant"]).size().items())
    return (f"models answering every test image with one class (ACC equal to a class's share of the test split, "
            f"{', '.join(f'{r:.3f}' for r in shares)}) while their AUC stays above 0.9: {len(constant)} of {len(rows)} "
            f"(technique / variant: count): {counts or 'none'}")


# ----- the saved model --------------------------------------------------------------------------------
def choose_saved(curves: pd.DataFrame, base_acc: float) -> pd.Series:
    """The combined XAI setting with the largest ratio at 1 point of ACC, or the most accurate one if none qualifies."""
    combined = curves[(curves["technique"] == "combined") & curves["xai"]]
    within = combined[combined["acc"] >= base_acc - TARGET_POINTS / 100 - 1e-12]
    return within.loc[within["ratio"].idxmax()] if not within.empty else combined.loc[combined["acc"].idxmax()]


def save_and_reload(study: experiments.Study, sparsity: float, bits: int, stage: str, path: Path, arch: str) -> dict:
    """Rebuild the combined XAI model from draw 0, write it to ``path``, read it back and evaluate both.

    Returns its codes, the in-memory and the reloaded model, the largest logit difference on 256 test images, both
    evaluations (and the one without the BatchNorm correction), the counted size and the file report.
    """
    codes = study.combined_codes(sparsity, bits, stage, 0, True)
    compressed = compress.apply(study.model, codes, study.references[0] if study.correct else None)
    path = storage.save(path, compressed, codes, arch)
    reloaded = storage.load(path)
    with torch.no_grad():
        logit_gap = float((reloaded(study.test.x[:256]) - compressed(study.test.x[:256])).abs().max())
    in_memory, from_file = study.evaluator.evaluate(compressed), study.evaluator.evaluate(reloaded)
    size = storage.size_bits(compressed, codes)
    plain = study.evaluator.evaluate(compress.apply(study.model, codes)) if study.correct else in_memory
    return {"sparsity": sparsity, "bits": bits, "stage": stage, "path": path, "codes": codes, "compressed": compressed,
            "reloaded": reloaded, "logit_gap": logit_gap, "in_memory": in_memory, "from_file": from_file, "plain": plain,
            "size": size, "file": storage.file_report(path, size["total"])}


def saved_lines(saved: dict, full_bits: int) -> list[str]:
    """The saved model's setting, file size against the counted size, and its scores after reloading."""
    file, size, f, m = saved["file"], saved["size"], saved["from_file"], saved["in_memory"]
    return [f"saved: sparsity {saved['sparsity']}, {saved['bits']} bits ({saved['stage']}), draw 0: {paths.relative(saved['path'])}",
            f"  file {file['file_bytes']:,} bytes; counted {file['counted_bytes']:,.0f} bytes (ratio {full_bits / size['total']:.1f}x); "
            f"header {file['header_bytes']:,} bytes; the file is {file['excess']:+.2%} off the counted size (target: within {TARGET_FILE_EXCESS:.0%})",
            f"  reloaded: largest logit difference {saved['logit_gap']:.2e}; test ACC {f['acc']:.4f} / AUC {f['auc']:.4f} "
            f"(in memory {m['acc']:.4f} / {m['auc']:.4f}); without the BatchNorm correction: ACC {saved['plain']['acc']:.4f}"]


def bits_per_weight(model: torch.nn.Module, size: dict) -> pd.DataFrame:
    """Per layer, the codes, table and index bits of :func:`storage.size_bits` divided by the layer's original weights."""
    layers, short = compress.weight_layers(model), short_names(model)
    frame = pd.DataFrame({short[k]: {"codes": v["codes"], "table": v["table"], "index": v["index"]}
                          for k, v in size["layers"].items()}).T
    return frame.div([layers[k].weight.numel() for k in layers], axis=0)


# ----- targets, checks, metrics -----------------------------------------------------------------------
def targets(entries: dict, file: dict) -> dict:
    """The targets of this reconstruction: the combined pipeline :data:`TARGET_RATIO` times smaller at
    :data:`TARGET_POINTS` point of ACC, every XAI variant matching its counterpart at equal size on most of the curve
    (None: not comparable) and at least its ratio, the file within :data:`TARGET_FILE_EXCESS` of the counted size."""
    best = entries["combined"]["xai"]["ratio_at_1pt"]
    return {"combined_16x_at_1pt": bool(best is not None and best >= TARGET_RATIO),
            "xai_matches_most": {t: e["equal_size_acc"]["matches_most"] for t, e in entries.items()},
            "xai_ratio_at_least_baseline": {t: bool((e["xai"]["ratio_at_1pt"] or 0) >= (e["baseline"]["ratio_at_1pt"] or 0))
                                            for t, e in entries.items()},
            "file_within_5pct": bool(abs(file["excess"]) <= TARGET_FILE_EXCESS)}


def target_lines(entries: dict, met: dict, file: dict) -> list[str]:
    """Each target met or not, in words."""
    lines = [f"combined pipeline: {shown(entries['combined']['xai']['ratio_at_1pt'])} at <= {TARGET_POINTS} point of ACC: {TARGET_RATIO}x target "
             f"{'met' if met['combined_16x_at_1pt'] else 'NOT met'} (non-XAI pipeline: "
             f"{shown(entries['combined']['baseline']['ratio_at_1pt'])})"]
    for t in entries:
        m = met["xai_matches_most"][t]
        lines.append(f"{t}: XAI matches or beats {entries[t]['baseline']['variant']} on most of the curve: "
                     f"{'not comparable (no common size)' if m is None else 'yes' if m else 'NO'}; ratio at {TARGET_POINTS} point at "
                     f"least the baseline's: {'yes' if met['xai_ratio_at_least_baseline'][t] else 'NO'}")
    return lines + [f"file within {TARGET_FILE_EXCESS:.0%} of the counted size: {'met' if met['file_within_5pct'] else 'NOT met'} ({file['excess']:+.2%})"]


def check_saved(study: experiments.Study, saved: dict) -> None:
    """The reloaded model gives the same logits and scores, the file holds exactly the counted streams (plus padding
    and the header), and every weight pruned by the relevance ranking is zero in the reloaded model."""
    assert saved["logit_gap"] == 0.0, f"the reloaded model's logits differ by {saved['logit_gap']}"
    f, m = saved["from_file"], saved["in_memory"]
    assert (f["acc"], f["auc"]) == (m["acc"], m["auc"]), "the reloaded model scores differently"
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


def metrics(arch: str, full_bits: int, bn_correction: bool, base: dict, zero_all: float, entries: dict,
            saved: dict, met: dict) -> dict:
    """``metrics.json`` of ``09_compression``."""
    file, f = saved["file"], saved["from_file"]
    return {
        "arch": arch, "full_bits": int(full_bits), "bn_correction": bn_correction,
        "base": {"test_acc": round(base["acc"], 6), "test_auc": round(base["auc"], 6)},
        "zero_relevance_share": round(zero_all, 6),
        "techniques": entries,
        "combined": {"ratio_at_1pt": entries["combined"]["xai"]["ratio_at_1pt"],
                     "ratio_at_3pt": entries["combined"]["xai"]["ratio_at_3pt"],
                     "baseline_ratio_at_1pt": entries["combined"]["baseline"]["ratio_at_1pt"],
                     "saved": {"sparsity": float(saved["sparsity"]), "bits": int(saved["bits"]), "stage": saved["stage"],
                               "ratio": round(full_bits / saved["size"]["total"], 4), "test_acc": round(f["acc"], 6),
                               "test_auc": round(f["auc"], 6), "test_acc_without_correction": round(saved["plain"]["acc"], 6)},
                     "file_bytes": int(file["file_bytes"]), "counted_bytes": round(file["counted_bytes"], 1),
                     "header_bytes": int(file["header_bytes"]), "file_excess": round(file["excess"], 6)},
        "targets": met,
    }
