"""The analysis of ``08_dyfip``: the tables, comparisons, sentences, checks and metrics built from an :class:`Engine`.

The notebook trains the branch, computes the class relevance and runs :meth:`Engine.curve`; this module
turns those into what the notebook shows:

- :func:`exit_sweep`, :func:`class_overlap`, :func:`pruned_vs_zeroed` and :func:`cost_table`: the branch's
  exits, how class-specific the relevance is, and one sub-network checked against the zeroed full tail;
- :func:`compare` (a :class:`Comparison`): the default setting against its baselines at the same mean
  FLOPs, with the targets of this project's reconstruction (:data:`TARGETS`, docs/DESIGN.md) and the
  sentences that report them (:meth:`Comparison.target_lines`, :meth:`Comparison.diagnosis_lines`);
- :func:`per_class`, :func:`requests_frame`, :func:`latency_summary`: accuracy per true class and the
  batch-1 serving log;
- :func:`check` (the checks that can fail) and :func:`metrics` (``metrics.json``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from xaiprune.dyfip import core, subnets

# The targets of this project's reconstruction (docs/DESIGN.md): mean FLOPs at most half of the full model's,
# test ACC within 2 points of the full model and at least 5 points above static L1 pruning at the same FLOPs.
TARGETS = {"mean_flops_ratio": 0.5, "points_of_full": 0.02, "points_above_l1": 0.05}
COLUMNS = ["acc", "auc", "mean_flops_ratio", "max_flops_ratio", "exit_rate"]


def exit_sweep(probs: torch.Tensor, y: torch.Tensor, taus) -> pd.DataFrame:
    """Per exit threshold: the share of images that exit at the branch and the branch's ACC on them (NaN if none)."""
    rows = []
    for tau in taus:
        out = core.exits(probs, tau)
        acc = float((probs[out].argmax(1) == y[out]).float().mean()) if out.any() else np.nan
        rows.append({"tau": tau, "exit rate": float(out.float().mean()), "ACC of exited": acc})
    return pd.DataFrame(rows)


def class_overlap(relevance: "dict[str, torch.Tensor]", layers, keep: float) -> pd.DataFrame:
    """Per layer, the mean Jaccard overlap of the top-``keep`` filters of two classes, and that of two random subsets.

    Two random subsets of ``m`` of ``n`` filters overlap by ``E|A & B| / E|A | B| = m / (2n - m)``.
    """
    rows = []
    for layer in layers:
        r = relevance[layer]
        n_classes, n = r.shape
        n_keep = max(1, round(keep * n))
        kept = [set(torch.topk(r[c], n_keep).indices.tolist()) for c in range(n_classes)]
        jac = [len(kept[a] & kept[b]) / len(kept[a] | kept[b]) for a, b in itertools.combinations(range(n_classes), 2)]
        rows.append({"layer": layer.replace("segments.", ""), "class pairs": float(np.mean(jac)),
                     "random": n_keep / (2 * n - n_keep)})
    return pd.DataFrame(rows)


def pruned_vs_zeroed(engine: core.Engine, classes: tuple[int, ...], keep: float) -> float:
    """Largest |logit difference| between the pruned sub-network of ``classes`` and the full tail with its filters zeroed."""
    plan = engine.builder.plan(subnets.subset_scores(engine.relevance, classes, engine.aggregate), keep)
    sub = engine.builder.build(plan)
    masked = subnets.masked_model(engine.tail, engine.builder.removed_filters(plan))
    with torch.inference_mode():
        return float((sub(engine.features) - masked(engine.features)).abs().max())


def cost_table(engine: core.Engine, classes: tuple[int, ...], keeps: list[float]) -> pd.DataFrame:
    """Per ``keep``: the sub-network's tail FLOPs, an image's FLOPs (no exit), its parameters and its build time."""
    rows = []
    for kp in keeps:
        net, macs = engine.build("xai", classes, kp)
        rows.append({"keep": kp, "tail FLOPs / full tail": macs / engine.builder.full_macs,
                     "image FLOPs / full model (no exit)": (engine.prefix_macs + engine.branch_macs + macs) / engine.full_macs,
                     "parameters (M)": sum(p.numel() for p in net.parameters()) / 1e6,
                     "build (ms)": 1e3 * engine.build_seconds[-1]})
    return pd.DataFrame(rows).set_index("keep")


def lost(drop: float) -> str:
    """An ACC difference (before minus after) in words."""
    return "no change" if abs(drop) < 5e-4 else f"{abs(drop) * 100:.1f} points {'lost' if drop > 0 else 'gained'}"


def point(curve: pd.DataFrame, policy: str, mode: str, keep: float, tau: float) -> pd.Series:
    """The row of ``curve`` (:meth:`Engine.curve`) of one policy, refresh mode, keep and exit threshold."""
    return curve[(curve["policy"] == policy) & (curve["refresh"] == mode) & (curve["keep"] == keep)
                 & (curve["tau_exit"] == tau)].iloc[0]


@dataclass
class Comparison:
    """DyFiP's default setting (``chosen``) against its baselines; ``matched``: static models at the same mean FLOPs."""

    curve: pd.DataFrame
    k: int
    keep: float
    tau: float
    mode: str
    modes: list
    full_acc: float
    full_auc: float
    chosen: pd.Series
    matched: dict
    restricted: dict
    exit_only: pd.Series

    def at(self, policy: str, mode: str | None = None) -> pd.Series:
        """A policy at the default keep and exit threshold (refresh ``mode``, by default the chosen one)."""
        return point(self.curve, policy, self.mode if mode is None else mode, self.keep, self.tau)

    def table(self) -> pd.DataFrame:
        """Every policy's ACC, AUC, mean and worst-case FLOPs ratio and exit rate, one row each."""
        rows = [{"policy": "full model", "acc": self.full_acc, "auc": self.full_auc, "mean_flops_ratio": 1.0,
                 "max_flops_ratio": 1.0, "exit_rate": 0.0},
                {"policy": f"early exit only (tau {self.tau})", **self.exit_only[COLUMNS]},
                {"policy": f"branch top-{self.k} + full tail (no pruning)", **self.restricted}]
        for m in self.modes:
            tag = "" if m == self.mode else " [no BN refresh]" if m == "none" else f" [{m}]"
            rows += [{"policy": f"{label}{tag}", **self.at(policy, m)[COLUMNS]}
                     for policy, label in (("dyfip", "DyFiP"), ("random", "random filters"), ("oracle", "oracle candidates"))]
            rows += [{"policy": f"{name.replace('_', ' ')} at keep {v['keep']:.3f}{tag}", **v[m]} for name, v in self.matched.items()]
        return pd.DataFrame(rows).set_index("policy")

    @property
    def targets(self) -> dict:
        """Each target of :data:`TARGETS`, met or not."""
        c, l1 = self.chosen, self.matched["static_l1"][self.mode]["acc"]
        return {"mean_flops_at_most_half": bool(c["mean_flops_ratio"] <= TARGETS["mean_flops_ratio"]),
                "acc_within_2_points_of_full": bool(c["acc"] >= self.full_acc - TARGETS["points_of_full"]),
                "acc_5_points_above_static_l1": bool(c["acc"] >= l1 + TARGETS["points_above_l1"])}

    def target_lines(self) -> list[str]:
        """The default setting's accuracy and costs, and each target met or not, in words."""
        c, t, l1 = self.chosen, self.targets, self.matched["static_l1"]
        met = lambda key: "met" if t[key] else "NOT met"  # noqa: E731
        return [f"DyFiP: test ACC {c['acc']:.3f} at a mean {c['mean_flops_ratio']:.1%} of the full model's FLOPs "
                f"(worst case {c['max_flops_ratio']:.1%}, exit rate {c['exit_rate']:.1%}).",
                f"  worst case: DyFiP {c['max_flops_ratio']:.1%} of the full model's FLOPs, early exit alone "
                f"{self.exit_only['max_flops_ratio']:.1%} (the longest path the abstract says DyFiP shortens)",
                f"  mean FLOPs at most {TARGETS['mean_flops_ratio']:.0%}: {met('mean_flops_at_most_half')}",
                f"  within {TARGETS['points_of_full'] * 100:g} points of the full model ({self.full_acc:.3f}): {met('acc_within_2_points_of_full')} "
                f"({c['acc'] - self.full_acc:+.3f})",
                f"  at least {TARGETS['points_above_l1'] * 100:g} points above static L1 at the same FLOPs ({l1[self.mode]['acc']:.3f} with the same BN "
                f"refresh, {l1['none']['acc']:.3f} without): {met('acc_5_points_above_static_l1')} "
                f"({c['acc'] - l1[self.mode]['acc']:+.3f})"]

    def diagnosis_lines(self, recall: dict) -> list[str]:
        """Where the accuracy is lost: at the branch (exits, candidates) or at the filter selection."""
        c, r, k = self.chosen, self.restricted, self.k
        branch_loss, selection_loss = self.full_acc - r["acc"], r["acc"] - c["acc"]
        xai_vs_random = c["acc"] - self.at("random")["acc"]
        lines = [f"branch: top-{k} recall {recall[k]:.3f} (top-1 {recall[1]:.3f}); early exit plus the restriction to the "
                 f"top-{k}, with the full tail: ACC {r['acc']:.3f}, {lost(branch_loss)} against the full model",
                 f"filter selection: the pruned tails on the same candidates: ACC {c['acc']:.3f}, {lost(selection_loss)} "
                 f"against the full tail; with oracle candidates: {self.at('oracle')['acc']:.3f}",
                 f"XAI filters against random filters of the same width: {xai_vs_random * 100:+.1f} points "
                 f"({'XAI better' if xai_vs_random > 0 else 'XAI NOT better'}); BN refresh against none: "
                 f"{(c['acc'] - self.at('dyfip', 'none')['acc']) * 100:+.1f} points"]
        if self.full_acc - c["acc"] <= TARGETS["points_of_full"]:
            return lines + [f"in all, DyFiP against the full model: {lost(self.full_acc - c['acc'])}, within the {TARGETS['points_of_full'] * 100:g}-point target"]
        worse = "the branch" if branch_loss > selection_loss else "the filter selection"
        return lines + [f"in all, DyFiP against the full model: {lost(self.full_acc - c['acc'])}, most of it at {worse} "
                        f"({lost(max(branch_loss, selection_loss))})"]


def compare(engine: core.Engine, curve: pd.DataFrame, k: int, keep: float, tau: float, mode: str, modes: list,
            full_acc: float, full_auc: float) -> Comparison:
    """The default setting, static L1 and static XAI pruning at the largest keep whose FLOPs do not exceed its mean
    (one bisection: FLOPs depend on how many filters a layer keeps, not which), the full tail restricted to the
    branch's top-k, and early exit alone."""
    chosen = point(curve, "dyfip", mode, keep, tau)
    matched_keep = engine.matched_keep(chosen["mean_flops_ratio"] * engine.full_macs)
    matched = {name: {"keep": matched_keep, **{m: engine.metrics(o) for m, o in engine.static(criterion, matched_keep, modes).items()}}
               for criterion, name in (("l1", "static_l1"), ("xai_total", "static_xai"))}
    return Comparison(curve, k, keep, tau, mode, modes, full_acc, full_auc, chosen, matched,
                      engine.metrics(engine.full_restricted(k, tau)), point(curve, "exit_only", "none", 1.0, tau))


def per_class(engine: core.Engine, outcome: core.Outcome, names: list[str], k: int) -> pd.DataFrame:
    """Per true class: its test images and the share answered correctly by the full model, the branch and DyFiP."""
    probs, y, rows = engine.branch_probs, engine.split.y, []
    for c, name in enumerate(names):
        on = (y == c).numpy()
        rows.append({"class": name, "images": int(on.sum()),
                     "full model": float((engine.full_logits.argmax(1).numpy()[on] == c).mean()),
                     "branch top-1": float((probs.argmax(1).numpy()[on] == c).mean()),
                     f"branch top-{k} recall": float((probs.topk(k, 1).indices.numpy()[on] == c).any(1).mean()),
                     "DyFiP": float((outcome.probs.argmax(1)[on] == c).mean())})
    return pd.DataFrame(rows).set_index("class")


def requests_frame(served: dict, y: torch.Tensor) -> pd.DataFrame:
    """:func:`stream`'s log, one row per image served: milliseconds (DyFiP, with build, full model), answer, label."""
    n = len(served["ms"])
    return pd.DataFrame({"dyfip_ms": served["ms"], "dyfip_ms_with_build": served["ms_with_build"],
                         "full_ms": served["full_ms"], "prediction": served["preds"], "label": y[:n].numpy()})


def latency_summary(requests: pd.DataFrame) -> dict:
    """Median and p95 milliseconds of DyFiP (building excluded and included) and of the full model."""
    return {name: {"median_ms": float(np.median(requests[col])), "p95_ms": float(np.percentile(requests[col], 95))}
            for name, col in (("dyfip", "dyfip_ms"), ("dyfip_with_build", "dyfip_ms_with_build"), ("full", "full_ms"))}


def serving_lines(latency: dict, served: dict, capacity: int, tail_bytes: int, agree: float) -> list[str]:
    """The latency summary, the cache's hit rate, build times and memory, and the agreement with the batched answers."""
    lines = [f"{name:17s} median {v['median_ms']:7.2f} ms   p95 {v['p95_ms']:7.2f} ms" for name, v in latency.items()]
    return lines + [f"cache of {capacity}: hit rate {served['hit_rate']:.1%} ({served['hits']} hits, {served['misses']} misses, "
                    f"{len(served['sets'])} distinct candidate sets); building a sub-network took "
                    f"{np.median(served['build_s']) * 1e3:.0f} ms median, {served['build_s'].max() * 1e3:.0f} ms at most; "
                    f"the cache held at most {served['peak_cache_bytes'] / 2**20:.1f} MB (full tail: {tail_bytes / 2**20:.1f} MB); "
                    f"answers equal to the batched ones: {agree:.1%}"]


def check(engine: core.Engine, cmp: Comparison, recall: dict, equivalence: float, agree: float) -> None:
    """The checks that can fail: composition, pruned = zeroed, FLOPs grow with keep, tau 1 never exits, the static
    baselines cost no more than DyFiP, top-k recall at least top-1, served answers = batched ones."""
    composed = engine.metrics(engine.exit_only(1.0))["acc"]
    assert abs(composed - cmp.full_acc) < 1e-9, f"prefix + tail give ACC {composed}, the trained model {cmp.full_acc}"
    assert equivalence < 1e-5, f"a pruned sub-network differs from the zeroed full tail by {equivalence:.2e}"
    curve = cmp.curve
    no_exit = curve[(curve["policy"] == "dyfip") & (curve["tau_exit"] == 1.0) & (curve["refresh"] == cmp.mode)].sort_values("keep")
    assert (no_exit["mean_flops_ratio"].diff().dropna() > 0).all(), "FLOPs must grow with keep"
    assert (no_exit["exit_rate"] == 0).all(), "tau_exit = 1 must never exit"
    assert cmp.chosen["mean_flops_ratio"] <= cmp.chosen["max_flops_ratio"] <= 1.0 + 1e-9
    assert all(v[m]["mean_flops_ratio"] <= cmp.chosen["mean_flops_ratio"] + 1e-12 for v in cmp.matched.values() for m in cmp.modes)
    assert recall[cmp.k] >= recall[1], "top-k recall below top-1"
    assert agree >= 0.99, f"only {agree:.1%} of the answers served one at a time equal the batched ones"


def _rounded(d: dict) -> dict:
    return {key: round(float(v), 6) for key, v in d.items()}


def metrics(cmp: Comparison, majority: float, benchmark: dict, recall: dict, branch_ratio: float, served: dict,
            capacity: int, reference: dict) -> dict:
    """``metrics.json`` of ``08_dyfip`` (no timings). ``reference``: the reference set's cap per class name."""
    c, m = cmp.chosen, cmp.mode
    return {
        "full": {"test_acc": round(cmp.full_acc, 6), "test_auc": round(cmp.full_auc, 6), "test_majority_acc": round(majority, 6),
                 "benchmark": benchmark},
        "dyfip": {**_rounded(c[["mean_flops_ratio", "max_flops_ratio", "exit_rate"]].to_dict()),
                  "test_acc": round(float(c["acc"]), 6), "test_auc": round(float(c["auc"]), 6),
                  "k": cmp.k, "keep": cmp.keep, "tau_exit": cmp.tau, "bn_refresh": m},
        "dyfip_no_refresh": {"test_acc": round(float(cmp.at("dyfip", "none")["acc"]), 6),
                             "test_auc": round(float(cmp.at("dyfip", "none")["auc"]), 6)},
        "random": {"test_acc": round(float(cmp.at("random")["acc"]), 6)},
        "oracle": {"test_acc": round(float(cmp.at("oracle")["acc"]), 6)},
        "exit_only": {"test_acc": round(float(cmp.exit_only["acc"]), 6),
                      "mean_flops_ratio": round(float(cmp.exit_only["mean_flops_ratio"]), 6)},
        "branch_topk_full_tail": {"test_acc": round(cmp.restricted["acc"], 6)},
        **{name: {"test_acc": round(v[m]["acc"], 6), "test_auc": round(v[m]["auc"], 6),
                  "flops_ratio": round(v[m]["mean_flops_ratio"], 6), "keep": v["keep"],
                  "test_acc_no_refresh": round(v["none"]["acc"], 6)} for name, v in cmp.matched.items()},
        "branch": {"topk_recall": round(recall[cmp.k], 6), "top1_acc": round(recall[1], 6), "flops_ratio": round(branch_ratio, 6)},
        "exit_rate": round(float(c["exit_rate"]), 6),
        "cache": {"capacity": capacity, "hit_rate": round(served["hit_rate"], 6), "images": len(served["ms"])},
        "reference": reference,
        "targets": cmp.targets,
    }
