"""The papers' claims against this run's evidence: one verdict per claim, each by a rule stated in its row.

:func:`claims` reads the notebooks' metrics (as :func:`xaiprune.study.report.read_metrics` returns them) and
applies, per claim, the rule written at the end of its evidence text; a claim whose notebook did not
run is "not evaluated". The report page (:mod:`xaiprune.study.report`) renders the rows.
"""

from __future__ import annotations

SUPPORTED, PARTLY, NOT, MISSING = "supported", "partly supported", "not supported", "not evaluated"


def _count(winners: list[dict], metric: str) -> dict[str, int]:
    got = [w["outcome"] for w in winners if w["metric"] == metric]
    return {k: got.count(k) for k in ("XAI better", "tie", "baseline better")}


_REPAIR_KEYS = ("repairs", "unpruned", "repair_study")  # 04's top-level keys that are not architectures


def _repair_text(study: dict) -> tuple[str, str | None]:
    """What 04's repairs show for the accuracy target, and the best repair by the labels it needs (None: no repair
    meets it): a repair needing no labels is preferred, then the fewest labels."""
    verdicts = study.get("verdicts", {})
    met = {r: v for r, v in verdicts.items() if v.get("target") and r != "best"}
    if not met:
        return (f"With none of the repairs measured ({', '.join(r for r in verdicts if r != 'best')}) does an XAI "
                "criterion keep test ACC >= 0.85 at >= 50% pruned, 5 points above the better of L1 and Taylor with "
                "separate 95% intervals.", None)
    name = min(met, key=lambda r: (met[r]["labels"], r != "none"))
    t = met[name]["target"]
    labels = met[name]["labels"]
    text = (f"Under '{name}' ({'no labelled images' if not labels else f'{labels} labelled reference images'}), at "
            f"{t['ratio']:.0%} pruned, {t['best_xai']} keeps test ACC {t['xai_mean']:.3f} "
            f"[{t['xai_ci'][0]:.3f}, {t['xai_ci'][1]:.3f}] against {t['best_baseline']} {t['baseline_mean']:.3f} "
            f"[{t['baseline_ci'][0]:.3f}, {t['baseline_ci'][1]:.3f}]; the target holds under {len(met)} of "
            f"{len(verdicts) - ('best' in verdicts)} repairs ({', '.join(met)}).")
    return text, name


def _claim_criterion(m04: dict | None) -> tuple[str, str]:
    if not m04:
        return MISSING, "04_pruning_comparison did not run."
    arch, body = next((k, v) for k, v in m04.items() if k not in _REPAIR_KEYS)
    winners = body.get("winners", [])
    if not winners:
        return MISSING, f"04 ({arch}) compared no XAI criterion with a baseline."
    per = {metric: _count(winners, metric) for metric in ("auc", "acc")}
    text = "; ".join(f"test {metric.upper()}: the best XAI criterion is better at {c['XAI better']}, tied at {c['tie']}, "
                     f"worse at {c['baseline better']} of {sum(c.values())} pruning ratios"
                     for metric, c in per.items()) + f" ({arch}, 95% intervals over reference draws and test images, no repair)."
    repair_text, repair = _repair_text(m04["repair_study"]) if "repair_study" in m04 else ("", None)
    text += " " + repair_text if repair_text else ""
    wins = [c["XAI better"] > c["baseline better"] for c in per.values()]
    losses = sum(c["baseline better"] for c in per.values())
    # Supported: the ACC target holds with no labels at all (no repair, or a repair that needs none) and XAI wins
    # more ratios than it loses on both metrics; partly: the target needs labels, or only some wins; else not.
    label_free = repair is not None and m04["repair_study"]["verdicts"][repair]["labels"] == 0
    if (label_free or "repair_study" not in m04) and all(wins) and losses == 0:
        verdict = SUPPORTED
    elif repair is not None or any(wins):
        verdict = PARTLY
    else:
        verdict = NOT
    return verdict, text + (" Rule: supported when the ACC target holds under a repair that uses no labels and XAI is "
                            "never worse without repair; partly when it needs labels or XAI wins only some ratios.")


def _settings(m07: dict) -> list[tuple[str, dict, int]]:
    """(scenario, policies, requests) of 07's main run and, if it ran, its stress run."""
    out = [(m07.get("scenario", "main"), m07["policies"], m07["requests_per_policy"])]
    if m07.get("stress"):
        out.append((m07["stress"]["scenario"], m07["stress"]["policies"], m07["stress"]["requests_per_policy"]))
    return out


def _claim_accuracy(m07: dict | None) -> tuple[str, str]:
    if not m07:
        return MISSING, "07_distributed did not run."
    parts, ok = [], []
    for scenario, p, n in _settings(m07):
        base = p.get("no pruning")
        dynamic = {k: p[k] for k in ("XAI + NLP", "XAI + RL") if k in p}
        if not base or not dynamic:
            continue
        parts.append(f"{scenario} ({n} test images, bandwidth fade): "
                     + ", ".join(f"{k} ACC {v['acc']:.3f} / AUC {v['auc']:.3f}, deadline met for "
                                 f"{v['deadline_hit_rate']:.1%}" for k, v in dynamic.items())
                     + f"; unpruned ACC {base['acc']:.3f}, deadline met for {base['deadline_hit_rate']:.1%}")
        ok += [v["acc"] >= base["acc"] - 0.02 and v["deadline_hit_rate"] >= 0.95 for v in dynamic.values()]
    if not ok:
        return MISSING, "07 served no dynamic policy beside an unpruned reference."
    text = ("Measured on the multi-process system. " + ". ".join(parts) + ". Rule: every dynamic XAI policy within "
            "2 ACC points of the unpruned model and the deadline met for at least 95% of requests.")
    return (SUPPORTED if all(ok) else PARTLY if any(ok) else NOT), text


def _claim_bytes(m07: dict | None) -> tuple[str, str]:
    if not m07:
        return MISSING, "07_distributed did not run."
    parts, dynamic, best = [], [], 0.0
    for scenario, p, _ in _settings(m07):
        rows = {k: v for k, v in p.items() if "bytes_saved_by_pruning" in v and v.get("mean_pruning", 0) > 0}
        if rows:
            parts.append(f"{scenario}: " + ", ".join(f"{k} {v['bytes_saved_by_pruning']:.1%} (mean level "
                                                      f"{v['mean_pruning']:.2f})" for k, v in rows.items()))
            best = max(best, *(v["bytes_saved_by_pruning"] for v in rows.values()))
        dynamic += [p[k]["bytes_saved_by_pruning"] for k in ("XAI + NLP", "XAI + RL") if k in rows]
    if not parts:
        return MISSING, "no policy of 07 pruned anything."
    text = ("Share of the bytes sent between devices that pruning removed, against the same routes unpruned: "
            + "; ".join(parts) + ". Rule: a dynamic XAI policy saves at least 10% of its bytes by pruning.")
    return (SUPPORTED if dynamic and max(dynamic) >= 0.10 else PARTLY if best > 0 else NOT), text


def _claim_rl(m06: dict | None, m07: dict | None) -> tuple[str, str]:
    if not m06:
        return MISSING, "06_rl did not run."
    if "nominal" not in m06:
        return MISSING, "06_rl's metrics predate the sequential agent (no nominal and fade windows): run 06 again."
    nom, fade, greedy = m06["nominal"], m06["fade"], m06["greedy"]["fade"]
    near = nom["acc_vs_optimum"] >= 0.98 and nom["violation_rate"] < 0.01
    adapts = fade["acc_vs_optimum"] >= 0.95 and fade["violation_rate"] < 0.02 \
        and fade["acc_vs_optimum"] > greedy["acc_vs_optimum"]
    text = (f"Held-out simulated wards (06, {m06.get('scenario', '?')}): on nominal requests the agent delivers "
            f"{nom['acc_vs_optimum']:.1%} of the optimum's accuracy with {nom['violation_rate']:.1%} violations; during "
            f"link fades of held-out shapes {fade['acc_vs_optimum']:.1%} with {fade['violation_rate']:.1%} violations "
            f"(greedy {greedy['acc_vs_optimum']:.1%}); {m06.get('distinct_plans', '?')} distinct plans; decision "
            f"{m06['decision_ms']:.2f} ms against {m06['enumeration_ms']:.2f} ms for the exact enumeration.")
    if m07 and "XAI + RL" in m07["policies"] and "XAI + NLP" in m07["policies"]:
        rl_, opt = m07["policies"]["XAI + RL"], m07["policies"]["XAI + NLP"]
        text += (f" On the real system (07): deadline met for {rl_['deadline_hit_rate']:.1%} of requests (optimum "
                 f"{opt['deadline_hit_rate']:.1%}), ACC {rl_['acc']:.3f} (optimum {opt['acc']:.3f}).")
        adapts = adapts and rl_["deadline_hit_rate"] >= opt["deadline_hit_rate"] - 0.02 and rl_["acc"] >= opt["acc"] - 0.02
    text += (" Rule: near = at least 98% of the optimum with under 1% violations on nominal requests; online = at least "
             "95% with under 2% violations during fades, better than greedy, and, on the real system, within 2 points "
             "of the optimum's deadline hits and ACC.")
    verdict = SUPPORTED if near and adapts else PARTLY if near or adapts else NOT
    return verdict, text


def _claim_latency(m07: dict | None) -> tuple[str, str]:
    """Two parts, each tested: the latency model (every policy within 20%) and the faults (one policy per fault
    kind: none may lose a request or answer one twice; each must act, be seen, and be recovered from within 2 s).
    A lost or duplicated request under any fault kind fails the claim whatever the latency."""
    if not m07:
        return MISSING, "07_distributed did not run."
    p = m07["policies"]
    text = "Mean measured against predicted latency: " + ", ".join(
        f"{k} {v['mean_ms']:.1f} / {v['predicted_ms']:.1f} ms ({v['latency_error']:+.0%})" for k, v in p.items()) + "."
    within = [abs(v["latency_error"]) <= 0.2 for v in p.values()]
    faults = m07.get("faults") or {}
    if faults:
        bad = [k for k, f in faults.items() if f["lost"] > 0 or f["duplicated"] > 0]
        shown = all(f["triggered"] and f["recovery_s"] <= 2.0 for f in faults.values())
        fault_ok = False if bad else True if shown else None
        text += (" Faults, one policy each: " + "; ".join(
            f"{k} ({f['device']}, " + (f"request {f['at_request']}" if f.get("at_request") is not None
                                       else f"{f.get('at_s')} s in")
            + f"): {f['answered_once']} of {f['requests']} answered once, "
            f"{f['failed']} failed with a reason, {f['lost']} lost, {f['duplicated']} answered twice, recovery "
            f"{f['recovery_s']:.2f} s" + ("" if f["triggered"] else ", the fault never acted")
            for k, f in faults.items()) + ".")
    else:
        fault_ok = None
        text += " No fault run: the cost of a fault is not evaluated."
    text += (" Rule: supported when every policy is within 20% (emulated devices and links) and every fault kind "
             "acted, was recovered from within 2 s and lost or duplicated no request; not supported when any request "
             "is lost or answered twice under any fault, whatever the latency, or when no policy is within 20% and "
             "the fault part is not shown; partly supported otherwise.")
    if fault_ok is False:
        return NOT, text
    if all(within) and fault_ok:
        return SUPPORTED, text
    return (PARTLY if any(within) or fault_ok else NOT), text


def _claim_compression(m09: dict | None) -> tuple[str, str]:
    """Per technique of 09, the XAI variant against its strongest counterpart: ratio at 1 ACC point and ACC at equal size."""
    if not m09:
        return MISSING, "09_compression did not run."
    shown = lambda r: "none" if r is None else f"{r:.1f}x"  # noqa: E731
    parts, good = [], []
    for tech, e in m09["techniques"].items():
        x, b, eq = e["xai"]["ratio_at_1pt"], e["baseline"]["ratio_at_1pt"], e["equal_size_acc"]
        good.append((x or 0) >= (b or 0) and eq["matches_most"] is not False)
        parts.append(f"{tech}: {e['xai']['variant']} {shown(x)} against {e['baseline']['variant']} {shown(b)}"
                     + ("" if eq["matches_most"] is None else
                        f", at equal size better / tied / worse at {eq['better']} / {eq['tie']} / {eq['worse']} sizes"))
    c = m09["combined"]
    text = ("Compression ratio against the 32-bit model at most 1 point of test ACC lost, without fine-tuning"
            + (" (BatchNorm means corrected on the reference images)" if m09.get("bn_correction") else "") + ": "
            + "; ".join(parts) + f". The combined XAI pipeline reaches {shown(c['ratio_at_1pt'])} (target 16x); its file has "
            f"{c['file_bytes']:,} bytes. Rule: per technique, the XAI variant is at least as good when its ratio at 1 point "
            "is at least its strongest counterpart's and its ACC at equal size is better or within half a point at most "
            "of the sizes both reach (the ratio alone when they share none); supported when that holds for every "
            "technique, partly supported when for some, not supported when for none.")
    return (SUPPORTED if all(good) else PARTLY if any(good) else NOT), text


def _claim_agilenn(m10: dict | None) -> tuple[str, str]:
    """AgileNN (Huang & Gao 2022): over 6x lower latency than existing schemes, accuracy near the full model."""
    if not m10:
        return MISSING, "10_agilenn did not run."
    a = m10["agilenn"]
    others = {k: m10[k] for k in ("local_only", "full_offload", "split") if k in m10}
    speed = {k: v["latency_ms_p50"] / a["latency_ms_p50"] for k, v in others.items()}
    gap = m10["local_only"]["test_acc"] - a["test_acc"]
    text = (f"Measured on two processes over the emulated link ({m10['link']['mbps']:g} Mbit/s, the scenario's): AgileNN "
            f"median {a['latency_ms_p50']:.1f} ms, " + ", ".join(f"{k.replace('_', ' ')} {v['latency_ms_p50']:.1f} ms "
                                                              f"({speed[k]:.1f}x)" for k, v in others.items())
            + f"; test ACC {a['test_acc']:.3f} against the full model's {m10['local_only']['test_acc']:.3f}, skewness "
            f"{a['skewness']:.2f}, device FLOPs {a['device_flops_ratio']:.2%} of the full model's. Rule: supported when "
            "AgileNN's median latency is at least 6x lower than every other scheme's and its ACC within 2 points of the "
            "full model; partly supported when it is lower than every other scheme's with ACC within 2 points, or 6x "
            "lower with a larger ACC loss; not supported otherwise.")
    fastest, near = min(speed.values()) if speed else 0.0, gap <= 0.02
    if fastest >= 6 and near:
        return SUPPORTED, text
    return (PARTLY if (fastest > 1 and near) or fastest >= 6 else NOT), text


def _claim_dyfip(m08: dict | None) -> tuple[str, str]:
    """Two parts: the efficiency the paper claims (ACC near the full model at half its FLOPs) and that the XAI
    selection of filters is what gives it (random filters of the same width do worse)."""
    if not m08:
        return MISSING, "08_dyfip did not run."
    full, dy, rnd = m08["full"], m08["dyfip"], m08.get("random", {})
    efficient = dy["mean_flops_ratio"] <= 0.5 and dy["test_acc"] >= full["test_acc"] - 0.02
    text = (f"Test ACC {dy['test_acc']:.3f} at a mean {dy['mean_flops_ratio']:.1%} of the full model's FLOPs (worst case "
            f"{dy['max_flops_ratio']:.1%}), against {full['test_acc']:.3f} for the full model and "
            f"{full['test_majority_acc']:.3f} for the majority class")
    if "static_l1" in m08:
        text += f"; static L1 pruning at the same FLOPs {m08['static_l1']['test_acc']:.3f}"
    xai_matters = None
    if "test_acc" in rnd:
        xai_matters = dy["test_acc"] > rnd["test_acc"] + 0.01
        text += f"; random filters of the same width {rnd['test_acc']:.3f}"
    text += (f"; without the BatchNorm refresh (the plain reconstruction) {m08['dyfip_no_refresh']['test_acc']:.3f}. "
             "Rule: supported when DyFiP keeps ACC within 2 points of the full model at no more than 50% of its mean "
             "FLOPs and beats random filters of the same width by more than 1 point; partly supported when only the "
             "efficiency holds; not supported otherwise.")
    if efficient and xai_matters:
        return SUPPORTED, text
    return (PARTLY if efficient else NOT), text


def claims(metrics: dict[str, dict | None]) -> list[dict]:
    """The papers' claims, this run's evidence and a verdict for each, from the notebooks' metrics.

    Every verdict follows the rule stated in its evidence text, applied to the numbers of this run;
    a claim whose notebook did not run is "not evaluated".
    """
    m = lambda stem: metrics.get(stem)  # noqa: E731
    rows = [
        ("The XAI criterion removes filters better than the baselines (L1, Taylor, random), without fine-tuning.",
         "04", _claim_criterion(m("04_pruning_comparison"))),
        ("Distributed inference with dynamic pruning keeps the accuracy high while meeting the deadline.",
         "07", _claim_accuracy(m("07_distributed"))),
        ("Pruning reduces the data shared between devices.", "07", _claim_bytes(m("07_distributed"))),
        ("The RL agent adapts online, near the optimum of the integer program.", "06, 07",
         _claim_rl(m("06_rl"), m("07_distributed"))),
        ("(This study) The system model predicts the latency of the real multi-process system, and no fault "
         "(a dead, hung or slow device, a cut link, bad input) costs a request.", "07", _claim_latency(m("07_distributed"))),
        ("(DyFiP) XAI-selected class-specific filters let a dynamic network keep the full model's accuracy at a "
         "fraction of its FLOPs (reconstructed).", "08", _claim_dyfip(m("08_dyfip"))),
        ("XAI guides compression better than its non-XAI counterparts (Sabih et al. 2020, reconstructed).", "09",
         _claim_compression(m("09_compression"))),
        ("(AgileNN) Offloading the less important features, chosen by XAI at training time, gives over 6x lower "
         "latency than existing schemes with accuracy near the full model.", "10", _claim_agilenn(m("10_agilenn"))),
    ]
    return [{"claim": c, "notebooks": nb, "verdict": v, "evidence": e} for c, nb, (v, e) in rows]
