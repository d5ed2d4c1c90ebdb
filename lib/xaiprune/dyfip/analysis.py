"""The analysis of ``08_dyfip``: the tables, the claim's comparisons, sentences, checks and metrics.

The notebook runs :mod:`xaiprune.dyfip.evaluation` (the validation grid, the choice, the test at the chosen
point); this module turns those into what the notebook shows:

- :func:`exit_sweep`, :func:`class_overlap`, :func:`pruned_vs_zeroed` and :func:`cost_table`: the branch's
  exits, how class-specific the relevance is, and one sub-network checked against the zeroed full tail;
- :func:`summaries` and :func:`table`: every policy's ACC, balanced accuracy, AUC and FLOPs on the test split,
  averaged over branch seeds (and random draws);
- :func:`claim`: the claim's family of paired comparisons on balanced accuracy (DyFiP against the full model
  and against random filters of the same width, Holm-corrected) and its verdict, with the bound on FLOPs and
  the margins passed in (they are declared in :mod:`xaiprune.study.protocol`); :func:`evidence`,
  :func:`target_lines` and :func:`diagnosis_lines` say it in words;
- :func:`per_class`: accuracy per true class; :func:`check` (the checks that can fail) and :func:`metrics`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch

from xaiprune import stats
from xaiprune.dyfip import core, evaluation, subnets

LABELS = {"full": "full model", "dyfip": "DyFiP", "dyfip_no_refresh": "DyFiP, no BN refresh",
          "random": "random filters of the same width", "oracle": "oracle candidates",
          "branch_alone": "the branch alone (every image exits)", "exit_only": "early exit, then the full tail",
          "branch_topk_full_tail": "branch top-k, then the full tail (no pruning)",
          "static_l1": "static L1 at equal FLOPs", "static_l1_no_refresh": "static L1 at equal FLOPs, no BN refresh",
          "static_xai": "static XAI at equal FLOPs", "static_xai_no_refresh": "static XAI at equal FLOPs, no BN refresh"}


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


def summary(engine: core.Engine, outcomes: list[core.Outcome]) -> dict:
    """Mean over the outcomes (seeds, draws) of every endpoint and FLOPs ratio (worst case: the maximum), the
    standard deviation of the balanced accuracy over them and their number."""
    per = pd.DataFrame([engine.metrics(o) for o in outcomes])
    return {**per.mean().to_dict(), "max_flops_ratio": float(per["max_flops_ratio"].max()),
            "bal_acc_sd": float(per["bal_acc"].std(ddof=1)) if len(per) > 1 else 0.0, "n": len(per)}


def summaries(engine: core.Engine, outcomes: dict[str, list[core.Outcome]], static: dict, mode: str) -> dict[str, dict]:
    """:func:`summary` of the full model, every policy of :func:`evaluation.at_point` and the static models
    (:func:`evaluation.static_at`, with ``mode``'s refresh and without), keyed as :data:`LABELS`."""
    out = {"full": summary(engine, [engine.full()])}
    out.update({p: summary(engine, o) for p, o in outcomes.items()})
    for name, by_mode in static.items():
        out[name] = summary(engine, [by_mode[mode]])
        out[name + "_no_refresh"] = summary(engine, [by_mode["none"]])
    return out


def table(s: dict[str, dict]) -> pd.DataFrame:
    """:func:`summaries` as one row per policy: outcomes averaged (n), endpoints, FLOPs ratios, exit rate."""
    cols = ["n", *evaluation.METRICS, "bal_acc_sd"]
    return pd.DataFrame([{"policy": LABELS[p], **{c: v[c] for c in cols}} for p, v in s.items()]).set_index("policy")


def _compact(r: dict) -> dict:
    keys = ("diff", "interval", "interval_holm", "p", "p_holm", "margin", "above_margin", "n_seeds")
    return {k: (round(r[k], 4) if isinstance(r[k], float) else [round(v, 4) for v in r[k]] if k.startswith("interval")
                else r[k]) for k in keys}


def claim(engine: core.Engine, outcomes: dict[str, list[core.Outcome]], max_flops: float, margin_full: float,
          margin_random: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """The claim's family on test balanced accuracy: DyFiP (one probability array per branch seed) minus the full
    model (one), with ``margin_full``, and minus random filters of the same width (draws x branch seeds), with
    ``margin_random`` (paired by branch seed: :func:`xaiprune.stats.paired_by_seed`); paired over the test
    images, seeds nested, Holm-corrected across the two.

    ``target_met``: DyFiP's mean FLOPs ratio at most ``max_flops`` and both corrected intervals above their
    margins; ``wins_somewhere``: either is. Returns both comparisons (compact), the FLOPs ratio and the verdict.
    """
    dy = [o.probs for o in outcomes["dyfip"]]
    rand = [o.probs for o in outcomes["random"]]  # draw d of branch seed j at d * seeds + j
    per_seed = [rand[j::len(dy)] for j in range(len(dy))]
    vs_full, vs_random = stats.holm([
        stats.paired_difference(dy, [engine.full().probs], engine.y, engine.task, "bal_acc", margin_full, n_boot, seed),
        stats.paired_by_seed(dy, per_seed, engine.y, engine.task, "bal_acc", margin_random, n_boot, seed)])
    flops = float(np.mean([o.macs.mean() for o in outcomes["dyfip"]]) / engine.full_macs)
    target = bool(flops <= max_flops and vs_full["above_margin"] and vs_random["above_margin"])
    wins = bool(vs_full["above_margin"] or vs_random["above_margin"])
    return {"vs_full": _compact(vs_full), "vs_random": _compact(vs_random), "mean_flops_ratio": flops,
            "max_flops": max_flops, "flops_met": bool(flops <= max_flops), "target_met": target, "wins_somewhere": wins,
            "verdict": stats.verdict(target, wins), "n_seeds": len(dy), "n_random": len(outcomes["random"])}


def evidence(s: dict[str, dict], point: dict, c: dict) -> str:
    """The claim row's evidence: this run's numbers in two sentences (the first is the report's headline)."""
    d, f, r, b, l1 = (s[p] for p in ("dyfip", "full", "random", "branch_alone", "static_l1"))
    return (f"DyFiP balanced accuracy {d['bal_acc']:.3f} at {c['mean_flops_ratio']:.1%} of the full model's mean FLOPs "
            f"(full model {f['bal_acc']:.3f}, random filters of the same width {r['bal_acc']:.3f}). "
            f"At keep {point['keep']:g} and tau {point['tau_exit']:g}, chosen on validation, over {c['n_seeds']} branch "
            f"seeds ({c['n_random'] // c['n_seeds']} random draws each); ACC {d['acc']:.3f} and AUC {d['auc']:.3f} beside the full "
            f"model's {f['acc']:.3f} and {f['auc']:.3f}; the branch alone {b['bal_acc']:.3f} at "
            f"{b['mean_flops_ratio']:.1%} of the FLOPs, static L1 at equal FLOPs {l1['bal_acc']:.3f}.")


def target_lines(c: dict) -> list[str]:
    """Each part of the claim's target (the bound and margins ``claim`` was given), met or not, with its numbers."""
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = [f"  mean FLOPs at most {c['max_flops']:.0%} of the full model's: {c['mean_flops_ratio']:.1%}, {met(c['flops_met'])}"]
    for key, name in (("vs_full", "the full model"), ("vs_random", "random filters of the same width")):
        r = c[key]
        lines.append(f"  DyFiP minus {name}: {r['diff']:+.3f}, Holm-corrected interval [{r['interval_holm'][0]:+.3f}, "
                     f"{r['interval_holm'][1]:+.3f}] above {r['margin']:+.2f}: {met(r['above_margin'])}")
    return lines + [f"verdict: {c['verdict']}"]


def diagnosis_lines(s: dict[str, dict], recall: dict, k: int) -> list[str]:
    """Where the balanced accuracy is lost: at the branch (exits, candidates) or at the filter selection."""
    f, d, r = s["full"]["bal_acc"], s["dyfip"]["bal_acc"], s["branch_topk_full_tail"]["bal_acc"]
    branch_loss, selection_loss = f - r, r - d
    lines = [f"branch: top-{k} recall {recall[k]:.3f} (top-1 {recall[1]:.3f}); early exit plus the restriction to the "
             f"top-{k}, with the full tail: {r:.3f}, {lost(branch_loss)} against the full model",
             f"filter selection: the pruned tails on the same candidates: {d:.3f}, {lost(selection_loss)} against the "
             f"full tail; with oracle candidates: {s['oracle']['bal_acc']:.3f}",
             f"XAI filters against random filters of the same width: {(d - s['random']['bal_acc']) * 100:+.1f} points; "
             f"BN refresh against none: {(d - s['dyfip_no_refresh']['bal_acc']) * 100:+.1f} points"]
    worse = "the branch" if branch_loss > selection_loss else "the filter selection"
    return lines + [f"in all, DyFiP against the full model: {lost(f - d)}"
                    + (f", most of it at {worse} ({lost(max(branch_loss, selection_loss))})" if f - d > 5e-4 else "")]


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


def check(engine: core.Engine, means: pd.DataFrame, point: dict, s: dict, trained_acc: float, recall: dict,
          equivalence: float, agree: float) -> None:
    """The checks that can fail: composition, pruned = zeroed, FLOPs grow with keep and tau 1 never exits (on the
    validation grid), random filters cost what DyFiP costs, the static models no more than the point's validation
    FLOPs, top-k recall grows with k, served answers = batched ones."""
    composed = engine.metrics(engine.exit_only(1.0))["acc"]
    assert engine.metrics(engine.full())["acc"] == composed, "exit at tau 1 must be the full model"
    assert abs(composed - trained_acc) < 1e-9, f"prefix + tail give ACC {composed}, the trained model {trained_acc}"
    assert equivalence < 1e-5, f"a pruned sub-network differs from the zeroed full tail by {equivalence:.2e}"
    no_exit = means[(means["policy"] == "dyfip") & (means["tau_exit"] == 1.0)].sort_values("keep")
    assert (no_exit["mean_flops_ratio"].diff().dropna() > 0).all(), "FLOPs must grow with keep"
    assert (no_exit["exit_rate"] == 0).all(), "tau_exit = 1 must never exit"
    d = s["dyfip"]
    assert d["mean_flops_ratio"] <= d["max_flops_ratio"] <= 1.0 + 1e-9
    assert abs(s["random"]["mean_flops_ratio"] - d["mean_flops_ratio"]) < 1e-9, "random filters must cost what DyFiP does"
    assert all(s[p]["mean_flops_ratio"] <= point["val_mean_flops_ratio"] + 1e-12 for p in ("static_l1", "static_xai"))
    assert all(recall[j] <= recall[j + 1] + 1e-12 for j in list(recall)[:-1]), "top-k recall must grow with k"
    assert agree >= 0.99, f"only {agree:.1%} of the answers served one at a time equal the batched ones"


def _rounded(d: dict) -> dict:
    return {key: round(float(v), 6) if isinstance(v, (float, np.floating)) else v for key, v in d.items()}


def metrics(s: dict[str, dict], c: dict, point: dict, static_keep: float, val_full: dict, majority: float,
            benchmark: dict, recall: dict, k: int, branch_ratio: float, served: dict, capacity: int, reference: dict) -> dict:
    """``metrics.json`` of ``08_dyfip`` (no timings; the notebook adds ``claims`` and ``choices``).
    ``reference``: the reference set's cap per class name."""
    return {
        "full": {"val": _rounded(val_full), "test": _rounded({m: s["full"][m] for m in ("acc", "bal_acc", "auc")}),
                 "test_majority_acc": round(majority, 6), "benchmark": benchmark},
        "operating_point": _rounded(point),
        "test": {p: _rounded(v) for p, v in s.items()},
        "static_keep": round(static_keep, 6),
        "comparisons": {"full_model": c["vs_full"], "random_filters": c["vs_random"]},
        "targets": {"mean_flops_at_most": c["flops_met"], "vs_full_above_margin": c["vs_full"]["above_margin"],
                    "vs_random_above_margin": c["vs_random"]["above_margin"], "target_met": c["target_met"]},
        "branch": {"k": k, "topk_recall": round(recall[k], 6), "top1_acc": round(recall[1], 6),
                   "flops_ratio": round(branch_ratio, 6), "seeds": c["n_seeds"]},
        "cache": {"capacity": capacity, "hit_rate": round(served["hit_rate"], 6), "images": len(served["ms"])},
        "reference": reference,
    }
