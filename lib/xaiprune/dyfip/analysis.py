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
from collections import Counter

import numpy as np
import pandas as pd
import torch

from xaiprune import stats
from xaiprune.dyfip import core, evaluation, subnets

LABELS = {"full": "full model", "dyfip": "DyFiP", "dyfip_no_refresh": "DyFiP, no BN refresh",
          "branch_only": "the branch alone (every image exits)",
          "branch_static_tail": "branch + one class-agnostic XAI tail",
          "random_specific": "random filters per candidate set", "random_agnostic": "one random tail per draw",
          "oracle": "oracle candidates", "exit_only": "early exit, then the full tail",
          "branch_topk_full_tail": "branch top-k, then the full tail (no pruning)",
          "static_l1": "static L1 at the point's validation FLOPs",
          "static_l1_no_refresh": "static L1 at the point's validation FLOPs, no BN refresh",
          "static_xai": "static XAI at the point's validation FLOPs",
          "static_xai_no_refresh": "static XAI at the point's validation FLOPs, no BN refresh"}
RESTRICTED = {"dyfip", "dyfip_no_refresh", "oracle", "branch_static_tail", "random_specific", "random_agnostic",
              "branch_topk_full_tail"}  # probabilities zero outside the candidates: their AUC is not the full model's kind
ABLATION = ("full", "branch_only", "branch_static_tail", "random_agnostic", "random_specific", "dyfip")


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
    standard deviation of the balanced accuracy over them, its 95% Student-t interval (zero width for one outcome)
    and their number."""
    per = pd.DataFrame([engine.metrics(o) for o in outcomes])
    ci = stats.mean_ci(per.assign(all=0), ["all"], "bal_acc").iloc[0]
    return {**per.mean().to_dict(), "max_flops_ratio": float(per["max_flops_ratio"].max()),
            "bal_acc_sd": float(per["bal_acc"].std(ddof=1)) if len(per) > 1 else 0.0,
            "bal_acc_lo": float(ci["lo"]), "bal_acc_hi": float(ci["hi"]), "n": len(per)}


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
    """:func:`summaries` as one row per policy: outcomes averaged (n), endpoints, FLOPs ratios, exit rate. The AUC of a
    policy that restricts its answer to the candidates (:data:`RESTRICTED`) is in its own column: its probabilities
    are zero outside the candidates, so it does not compare with the full model's AUC."""
    cols = ["n", *evaluation.METRICS, "bal_acc_sd"]
    rows = [{"policy": LABELS[p], **{c: v[c] for c in cols}} for p, v in s.items()]
    for row, p in zip(rows, s):
        row["restricted AUC"] = row.pop("auc") if p in RESTRICTED else np.nan
        row.setdefault("auc", np.nan)
    return pd.DataFrame(rows).set_index("policy")[["n", "acc", "bal_acc", "auc", "restricted AUC", *cols[4:]]]


def _compact(r: dict) -> dict:
    keys = ("diff", "interval", "interval_holm", "p", "p_holm", "margin", "above_margin", "n_seeds")
    return {k: (round(r[k], 4) if isinstance(r[k], float) else [round(v, 4) for v in r[k]] if k.startswith("interval")
                else r[k]) for k in keys}


COMPARATORS = (("full", "the full model"), ("branch_static_tail", "the branch with one class-agnostic XAI tail"),
               ("random_specific", "random filters per candidate set"))


def claim(engine: core.Engine, outcomes: dict[str, list[core.Outcome]], latency: pd.DataFrame, p: dict, margin_full: float,
          n_boot: int = 2000, seed: int = 0) -> dict:
    """The claim's family on test balanced accuracy, Holm-corrected across its three comparisons: DyFiP (one
    probability array per branch seed) minus the full model (non-inferiority, ``margin_full``), minus the branch with
    one class-agnostic tail (paired by branch seed; it must be ``p["points_static_tail"]`` or more ahead with the
    corrected interval above 0) and minus random filters per candidate set (draws per branch seed, above 0).

    ``p``: the claim's declared numbers (``max_flops``, ``points_static_tail``, ``max_worst_latency``). ``latency``:
    :func:`xaiprune.dyfip.serve.latency_table`. ``target_met``: every part met; ``wins_somewhere``: a comparison
    above its margin. Returns the comparisons (compact), the FLOPs and latency ratios and the verdict.
    """
    dy, seeds = [o.probs for o in outcomes["dyfip"]], len(outcomes["dyfip"])
    grouped = lambda name: [[o.probs for o in outcomes[name][j::seeds]] for j in range(seeds)]  # noqa: E731
    found = stats.holm([
        stats.paired_difference(dy, [engine.full().probs], engine.y, engine.task, "bal_acc", margin_full, n_boot, seed),
        stats.paired_by_seed(dy, grouped("branch_static_tail"), engine.y, engine.task, "bal_acc", 0.0, n_boot, seed),
        stats.paired_by_seed(dy, grouped("random_specific"), engine.y, engine.task, "bal_acc", 0.0, n_boot, seed)])
    c = {f"vs_{name}": _compact(r) for (name, _), r in zip(COMPARATORS, found)}
    lead = found[1]["diff"]  # unrounded: the compact form is rounded to 4 decimals
    flops = float(np.mean([o.macs.mean() for o in outcomes["dyfip"]]) / engine.full_macs)
    worst = float(latency.loc["dyfip", "worst_vs_full"])
    parts = {"flops": flops <= p["max_flops"], "vs_full": c["vs_full"]["above_margin"],
             "vs_branch_static_tail": bool(c["vs_branch_static_tail"]["above_margin"] and lead >= p["points_static_tail"]),
             "vs_random_specific": c["vs_random_specific"]["above_margin"], "worst_latency": worst <= p["max_worst_latency"]}
    target, wins = all(parts.values()), any(parts[k] for k in c)
    return {**c, "parts": {k: bool(v) for k, v in parts.items()}, "mean_flops_ratio": flops, "worst_latency_ratio": worst,
            "declared": dict(p), "target_met": bool(target), "wins_somewhere": bool(wins),
            "verdict": stats.verdict(target, wins), "n_seeds": seeds, "n_random": len(outcomes["random_specific"])}


def evidence(s: dict[str, dict], point: dict, c: dict, flag: str) -> str:
    """The claim row's evidence: this run's numbers in two sentences (the first is the report's headline)."""
    d, f, b, t, r = (s[p] for p in ("dyfip", "full", "branch_only", "branch_static_tail", "random_specific"))
    return (f"On {flag}, DyFiP balanced accuracy {d['bal_acc']:.3f} at {c['mean_flops_ratio']:.1%} of the full model's mean "
            f"FLOPs (full model {f['bal_acc']:.3f}; the branch alone {b['bal_acc']:.3f} at {b['mean_flops_ratio']:.1%}; "
            f"the branch with one class-agnostic tail {t['bal_acc']:.3f}; random filters per candidate set "
            f"{r['bal_acc']:.3f}), worst-case latency {c['worst_latency_ratio']:.0%} of the full model's. "
            f"At k {point['k']}, keep {point['keep']:g} and tau {point['tau_exit']:g}, chosen on validation, over "
            f"{c['n_seeds']} branch seeds ({c['n_random'] // c['n_seeds']} random draws each); ACC {d['acc']:.3f} beside the "
            f"full model's {f['acc']:.3f}.")


def target_lines(c: dict) -> list[str]:
    """Each part of the claim's target (the declared numbers ``claim`` was given), met or not, with its numbers."""
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    p, parts = c["declared"], c["parts"]
    lines = [f"  mean FLOPs at most {p['max_flops']:.0%} of the full model's: {c['mean_flops_ratio']:.1%}, {met(parts['flops'])}"]
    for name, label in COMPARATORS:
        r = c[f"vs_{name}"]
        extra = f", and at least {p['points_static_tail']:+.2f}" if name == "branch_static_tail" else ""
        lines.append(f"  DyFiP minus {label}: {r['diff']:+.3f}, Holm-corrected interval [{r['interval_holm'][0]:+.3f}, "
                     f"{r['interval_holm'][1]:+.3f}] above {r['margin']:+.2f}{extra}: {met(parts['vs_' + name])}")
    lines.append(f"  worst-case latency at most {p['max_worst_latency']:.0%} of the full model's: "
                 f"{c['worst_latency_ratio']:.0%}, {met(parts['worst_latency'])}")
    return lines + [f"verdict: {c['verdict']}"]


def diagnosis_lines(s: dict[str, dict], recall: dict, k: int) -> list[str]:
    """Where the balanced accuracy is lost: at the branch (exits, candidates) or at the filter selection."""
    f, d, r = s["full"]["bal_acc"], s["dyfip"]["bal_acc"], s["branch_topk_full_tail"]["bal_acc"]
    branch_loss, selection_loss = f - r, r - d
    lines = [f"branch: top-{k} recall {recall[k]:.3f} (top-1 {recall[1]:.3f}); early exit plus the restriction to the "
             f"top-{k}, with the full tail: {r:.3f}, {lost(branch_loss)} against the full model",
             f"filter selection: the pruned tails on the same candidates: {d:.3f}, {lost(selection_loss)} against the "
             f"full tail; with oracle candidates: {s['oracle']['bal_acc']:.3f}",
             f"class-specific XAI filters against one class-agnostic XAI tail: "
             f"{(d - s['branch_static_tail']['bal_acc']) * 100:+.1f} points; against random filters per set: "
             f"{(d - s['random_specific']['bal_acc']) * 100:+.1f}; against one random tail: "
             f"{(d - s['random_agnostic']['bal_acc']) * 100:+.1f}; BN refresh against none: "
             f"{(d - s['dyfip_no_refresh']['bal_acc']) * 100:+.1f} points"]
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
          equivalence: float, agree: dict[str, float]) -> None:
    """The checks that can fail: composition, pruned = zeroed, FLOPs grow with keep and tau 1 never exits (on the
    validation grid), the ablations cost what DyFiP costs, the static models no more than the point's validation
    FLOPs, top-k recall grows with k, served answers = batched ones."""
    composed = engine.metrics(engine.exit_only(1.0))["acc"]
    assert engine.metrics(engine.full())["acc"] == composed, "exit at tau 1 must be the full model"
    assert abs(composed - trained_acc) < 1e-9, f"prefix + tail give ACC {composed}, the trained model {trained_acc}"
    assert equivalence < 1e-5, f"a pruned sub-network differs from the zeroed full tail by {equivalence:.2e}"
    no_exit = means[(means["policy"] == "dyfip") & (means["tau_exit"] == 1.0)].sort_values(["k", "keep"])
    assert (no_exit.groupby("k")["mean_flops_ratio"].diff().dropna() > 0).all(), "FLOPs must grow with keep"
    assert (no_exit["exit_rate"] == 0).all(), "tau_exit = 1 must never exit"
    d = s["dyfip"]
    assert d["mean_flops_ratio"] <= d["max_flops_ratio"] <= 1.0 + 1e-9
    for p in ("branch_static_tail", "random_specific", "random_agnostic"):
        assert abs(s[p]["mean_flops_ratio"] - d["mean_flops_ratio"]) < 1e-9, f"{p} must cost what DyFiP costs"
    assert all(s[p]["mean_flops_ratio"] <= point["val_mean_flops_ratio"] + 1e-12 for p in ("static_l1", "static_xai"))
    assert all(recall[j] <= recall[j + 1] + 1e-12 for j in list(recall)[:-1]), "top-k recall must grow with k"
    low = {p: a for p, a in agree.items() if a < 0.99}
    assert not low, f"answers served one at a time differ from the batched ones: {low}"


def _rounded(d: dict) -> dict:
    return {key: round(float(v), 6) if isinstance(v, (float, np.floating)) else v for key, v in d.items()}


def most_common_set(engine: core.Engine, k: int) -> tuple[int, ...]:
    """The candidate set of size ``k`` that the engine's branch gives most often."""
    return Counter(core.candidate_sets(engine.branch_probs, k)).most_common(1)[0][0]


def ablation_frame(by_flag: dict[str, dict]) -> pd.DataFrame:
    """:func:`ablation` of several flags as one table, a row per flag and policy."""
    return pd.DataFrame([{"flag": f, "policy": p, **v} for f, a in by_flag.items() for p, v in a.items()]
                        ).set_index(["flag", "policy"])


def ablation(s: dict[str, dict], latency: pd.DataFrame) -> dict:
    """Per policy of :data:`ABLATION`: test balanced accuracy (the random ones: mean over draws and seeds with its
    interval), mean FLOPs ratio and the measured worst-case milliseconds (None where not served)."""
    out = {}
    for p in ABLATION:
        v = s[p]
        worst = float(latency.loc[p, "worst_ms"]) if p in latency.index else None
        out[p] = _rounded({"bal_acc": v["bal_acc"], "bal_acc_lo": v["bal_acc_lo"], "bal_acc_hi": v["bal_acc_hi"],
                           "n": v["n"], "mean_flops_ratio": v["mean_flops_ratio"], "worst_latency_ms": worst})
    return out


def metrics(s: dict[str, dict], c: dict, point: dict, static_keep: float, val_full: dict, majority: float,
            benchmark: dict, recall: dict, branch_ratio: float, latency: pd.DataFrame, reference: dict) -> dict:
    """``metrics.json`` of ``08_dyfip`` for one flag (the notebook adds ``claims``, ``choices`` and the second flag).
    ``reference``: the reference set's cap per class name. Worst-case milliseconds are in ``ablation`` (the claim
    needs them; the machine's load is recorded beside them in ``timings.json``)."""
    bst = c["vs_branch_static_tail"]
    return {
        "full": {"val": _rounded(val_full), "test": _rounded({m: s["full"][m] for m in ("acc", "bal_acc", "auc")}),
                 "test_majority_acc": round(majority, 6), "benchmark": benchmark},
        "operating_point": _rounded(point),
        "ablation": ablation(s, latency),
        "dyfip_vs_branch_static_tail": {"bal_acc_diff": bst["diff"], "lo": bst["interval_holm"][0],
                                        "hi": bst["interval_holm"][1]},
        "test": {p: _rounded({**v, "auc_comparable": p not in RESTRICTED}) for p, v in s.items()},
        "static_keep": round(static_keep, 6),
        "comparisons": {name: c[f"vs_{name}"] for name, _ in COMPARATORS},
        "targets": {**c["parts"], "target_met": c["target_met"]},
        "worst_latency_ratio": round(c["worst_latency_ratio"], 4),
        "branch": {"k": point["k"], "topk_recall": round(recall[point["k"]], 6), "top1_acc": round(recall[1], 6),
                   "flops_ratio": round(branch_ratio, 6), "seeds": c["n_seeds"]},
        "reference": reference,
    }
