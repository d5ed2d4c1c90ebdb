"""The report page: the claims' verdicts follow their stated rules, and tagged figures reach the page."""

from __future__ import annotations

import base64

import nbformat
import pytest

from xaiprune.study import claims, report


def winners(xai: int, tie: int, base: int, metric: str) -> list[dict]:
    return [{"metric": metric, "outcome": o} for o, k in (("XAI better", xai), ("tie", tie), ("baseline better", base))
            for _ in range(k)]


def policy(acc=0.85, auc=0.95, hit=1.0, saved=0.0, pruning=0.0, err=0.05, bytes_=5000.0) -> dict:
    return {"acc": acc, "auc": auc, "deadline_hit_rate": hit, "bytes_saved_by_pruning": saved, "mean_pruning": pruning,
            "latency_error": err, "mean_ms": 50.0, "predicted_ms": 50.0 / (1 + err), "bytes_per_inference": bytes_}


def m07(**policies) -> dict:
    return {"requests_per_policy": 100, "policies": policies,
            "faults": {kind: {"kind": kind, "device": "d1", "at_request": 4, "answered_once": 10, "failed": 0,
                              "requests": 10, "lost": 0, "duplicated": 0, "replanned": 1, "triggered": True,
                              "recovery_s": 0.8} for kind in ("kill", "hang")}}


def verdicts(metrics: dict) -> dict[str, str]:
    return {c["claim"][:30]: c["verdict"] for c in claims.claims(metrics)}


def test_missing_notebooks_are_not_evaluated():
    assert set(verdicts({}).values()) == {claims.MISSING}


@pytest.mark.parametrize("auc, acc, expected", [
    ((5, 4, 0), (3, 6, 0), claims.SUPPORTED),
    ((5, 4, 0), (0, 7, 2), claims.PARTLY),   # this repository's default run: AUC yes, ACC no
    ((0, 9, 0), (0, 7, 2), claims.NOT),
])
def test_criterion_claim_follows_the_interval_counts(auc, acc, expected):
    m = {"04_pruning_comparison": {"vgg16_bn": {"winners": winners(*auc, "auc") + winners(*acc, "acc")}}}
    claim = claims.claims(m)[0]
    assert claim["verdict"] == expected
    assert f"better at {auc[0]}, tied at {auc[1]}, worse at {auc[2]} of {sum(auc)}" in claim["evidence"]


def _target(ratio=0.7, xai=0.9, base=0.6):
    return {"ratio": ratio, "metric": "acc", "outcome": "XAI better", "best_xai": "ig", "xai_mean": xai,
            "xai_ci": [xai - 0.02, xai + 0.02], "best_baseline": "taylor", "baseline_mean": base,
            "baseline_ci": [base - 0.05, base + 0.05]}


@pytest.mark.parametrize("met, expected", [
    ({"batchnorm": 0}, claims.SUPPORTED),               # the target holds with no label at all
    ({"recalibrate": 20}, claims.PARTLY),               # only with the reference labels
    ({"recalibrate": 20, "compensate": 0}, claims.SUPPORTED),
    ({}, claims.PARTLY),                                # XAI wins on intervals, but no repair meets the ACC target
])
def test_criterion_claim_names_the_repair_and_its_labels(met, expected):
    repairs = ("none", "recalibrate", "batchnorm", "compensate")
    labels = {"none": 0, "recalibrate": 20, "batchnorm": 0, "compensate": 0}
    study = {"verdicts": {r: {"labels": labels[r], "target": _target() if r in met else None} for r in repairs}}
    body = {"vgg16_bn": {"winners": winners(5, 4, 0, "auc") + winners(3, 6, 0, "acc")}, "repair_study": study}
    claim = claims.claims({"04_pruning_comparison": body})[0]
    assert claim["verdict"] == expected
    if met:
        name = min(met, key=lambda r: (met[r], r != "none"))
        assert f"Under '{name}'" in claim["evidence"] and "0.900" in claim["evidence"]
    else:
        assert "With none of the repairs measured" in claim["evidence"]


def test_accuracy_bytes_and_latency_claims_follow_their_rules():
    good = m07(**{"no pruning": policy(), "XAI + NLP": policy(acc=0.84, saved=0.3, pruning=0.2),
                  "XAI + RL": policy(acc=0.845, saved=0.05, pruning=0.1)})
    c = claims.claims({"07_distributed": good})
    assert [x["verdict"] for x in c[1:3]] == [claims.SUPPORTED, claims.SUPPORTED]
    assert c[4]["verdict"] == claims.SUPPORTED and "0 lost" in c[4]["evidence"]
    bad = m07(**{"no pruning": policy(), "XAI + NLP": policy(acc=0.70, hit=0.99, saved=0.02, pruning=0.1),
                 "XAI + RL": policy(hit=0.7, err=0.4)})
    c = claims.claims({"07_distributed": bad})
    assert [x["verdict"] for x in c[1:3]] == [claims.NOT, claims.PARTLY]
    assert c[4]["verdict"] == claims.PARTLY


@pytest.mark.parametrize("err, lost, duplicated, triggered, recovery_s, expected", [
    (0.05, 0, 0, True, 0.8, claims.SUPPORTED),
    (0.05, 1, 0, True, 0.8, claims.NOT),        # a lost request fails the claim, whatever the latency
    (0.05, 0, 1, True, 0.8, claims.NOT),        # so does a request answered twice
    (0.05, 2, 3, True, 0.8, claims.NOT),
    (0.40, 0, 1, True, 0.8, claims.NOT),
    (0.40, 0, 0, True, 0.8, claims.PARTLY),     # the fault part holds, the latency part does not
    (0.05, 0, 0, False, 0.8, claims.PARTLY),    # a fault that never acted: that part is not shown
    (0.05, 0, 0, True, 2.5, claims.PARTLY),     # recovered, but not within 2 s
    (0.40, 0, 0, False, 0.8, claims.NOT),
])
def test_latency_and_fault_claim_tests_each_part(err, lost, duplicated, triggered, recovery_s, expected):
    m = m07(**{"XAI + NLP": policy(err=err), "XAI + RL": policy(err=-err)})
    m["faults"]["hang"].update(lost=lost, duplicated=duplicated, triggered=triggered, recovery_s=recovery_s,
                               answered_once=10 - lost - duplicated)
    claim = claims.claims({"07_distributed": m})[4]
    assert claim["verdict"] == expected
    assert f"{lost} lost, {duplicated} answered twice" in claim["evidence"]
    assert "kill (d1, request 4): 10 of 10 answered once, 0 failed with a reason, 0 lost" in claim["evidence"]
    rule = "not supported when any request is lost or answered twice under any fault, whatever the latency"
    assert rule in claim["evidence"]


def test_latency_claim_without_a_fault_run_is_at_most_partly_supported():
    m = m07(**{"XAI + NLP": policy()})
    del m["faults"]
    claim = claims.claims({"07_distributed": m})[4]
    assert claim["verdict"] == claims.PARTLY and "No fault run" in claim["evidence"]


def test_rl_claim_needs_both_near_optimum_and_adaptation():
    m06 = {"scenario": "ward-4", "nominal": {"acc_vs_optimum": 0.99, "violation_rate": 0.0},
           "fade": {"acc_vs_optimum": 0.90, "violation_rate": 0.0}, "greedy": {"fade": {"acc_vs_optimum": 0.80}},
           "decision_ms": 0.6, "enumeration_ms": 2.0, "distinct_plans": 40}
    claim = claims.claims({"06_rl": m06})[3]
    assert claim["verdict"] == claims.PARTLY and "during link fades of held-out shapes 90.0%" in claim["evidence"]
    m06["fade"]["acc_vs_optimum"] = 0.97
    assert claims.claims({"06_rl": m06})[3]["verdict"] == claims.SUPPORTED
    m06["greedy"]["fade"]["acc_vs_optimum"] = 0.98  # greedy better during the fade: not adapting well enough
    assert claims.claims({"06_rl": m06})[3]["verdict"] == claims.PARTLY
    m06["greedy"]["fade"]["acc_vs_optimum"] = 0.80
    worse = m07(**{"XAI + NLP": policy(hit=1.0), "XAI + RL": policy(hit=0.7)})
    assert claims.claims({"06_rl": m06, "07_distributed": worse})[3]["verdict"] == claims.PARTLY
    assert claims.claims({"06_rl": {"agent_accuracy_fraction_of_optimum": 0.9}})[3]["verdict"] == claims.MISSING


def test_only_tagged_figures_reach_the_report(tmp_path):
    png = base64.b64encode(b"\x89PNG fake").decode()
    nb = nbformat.v4.new_notebook()
    for tags in (["headline"], []):
        cell = nbformat.v4.new_code_cell("plot()", metadata={"tags": tags})
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]
        nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert report.headline_figures(tmp_path / "x.ipynb") == [png]
    meta = {"profile": "t", "finished": "now", "git_commit": "abc", "machine": "m", "versions": {"torch": "2.13.0"},
            "notebooks": {"x": {"parameters": {}, "seconds": 1.0}}}
    page = report.render_report(meta, {"x": None}, {"x": [png]})
    assert page.count("data:image/png;base64,") == 1 and "Claims against evidence" in page


def test_stress_run_counts_in_the_accuracy_and_bytes_claims():
    m = m07(**{"no pruning": policy(), "XAI + NLP": policy(acc=0.85)})
    m["stress"] = {"scenario": "constrained", "requests_per_policy": 50,
                   "policies": {"no pruning": policy(hit=0.0), "XAI + NLP": policy(acc=0.70, saved=0.4, pruning=0.3)}}
    c = claims.claims({"07_distributed": m})
    assert c[1]["verdict"] == claims.PARTLY and "constrained (50 test images" in c[1]["evidence"]
    assert c[2]["verdict"] == claims.SUPPORTED and "constrained: XAI + NLP 40.0%" in c[2]["evidence"]


@pytest.mark.parametrize("flops, acc, random_acc, expected", [
    (0.456, 0.5175, 0.45, claims.SUPPORTED),
    (0.456, 0.5175, 0.5175, claims.PARTLY),   # this repository's run: random filters do as well
    (0.600, 0.5175, 0.45, claims.NOT),        # over half the FLOPs
    (0.456, 0.4800, 0.45, claims.NOT),        # more than 2 points below the full model
])
def test_dyfip_claim_needs_efficiency_and_the_xai_selection(flops, acc, random_acc, expected):
    m = {"full": {"test_acc": 0.5225, "test_majority_acc": 0.435},
         "dyfip": {"test_acc": acc, "mean_flops_ratio": flops, "max_flops_ratio": flops + 0.03},
         "dyfip_no_refresh": {"test_acc": 0.4075}, "random": {"test_acc": random_acc},
         "static_l1": {"test_acc": 0.435}}
    claim = next(c for c in claims.claims({"08_dyfip": m}) if c["notebooks"] == "08")
    assert claim["verdict"] == expected and "random filters" in claim["evidence"]


def page_of(profile: str, **extra) -> str:
    meta = {"profile": profile, "finished": "now", "git_commit": "abc", "machine": "m", "versions": {"torch": "2.13.0"},
            "notebooks": {"x": {"parameters": {}, "seconds": 1.0}}, **extra}
    return report.render_report(meta, {"x": None}, {"x": []})


def test_a_profile_other_than_default_carries_the_banner():
    assert "not the study's" in page_of("smoke") and "not the study's" in page_of("budget")
    assert "class='banner'" not in page_of("default")


def test_the_page_shows_cpu_load_and_each_data_files_md5():
    state = {"cpu_model": "Test CPU", "cpu_count": 2, "load_average": [0.5, 0.4, 0.3]}
    page = page_of("default", machine_start=state, machine_end={**state, "load_average": [1.9, 1.0, 0.5]},
                   data_files={"pneumoniamnist.npz": {"md5": "f00d"}})
    assert "Test CPU, 2 cores" in page and "start [0.5, 0.4, 0.3], end [1.9, 1.0, 0.5]" in page
    assert "<code>pneumoniamnist.npz</code> MD5 <code>f00d</code>" in page


def test_run_metadata_records_parameters_data_md5_and_load(tmp_path, monkeypatch):
    from pathlib import Path

    from xaiprune import data
    from xaiprune.study import runinfo
    from xaiprune.study.schema import Step

    data.write_synthetic(tmp_path, "pneumoniamnist", 28)
    monkeypatch.setattr(data, "verify", lambda path, flag, size: path)  # the synthetic file's MD5 is its own
    step = Step(Path("01_data.ipynb"), {}, parameters={"flag": "pneumoniamnist", "size": 28, "data_root": str(tmp_path)})
    meta = runinfo.run_metadata("default", [step], 1.0, runinfo.machine_state())
    md5 = data.md5sum(tmp_path / "pneumoniamnist.npz")
    assert meta["data_files"] == {"pneumoniamnist.npz": {"path": str(tmp_path / "pneumoniamnist.npz"), "md5": md5}}
    assert meta["notebooks"]["01_data"]["parameters"]["flag"] == "pneumoniamnist"
    assert len(meta["machine_start"]["load_average"]) == 3 and meta["machine_end"]["cpu_count"] >= 1
    broken = Step(Path("01_data.ipynb"), {}, parameters={"flag": "pneumoniamnist", "size": 28, "data_root": str(tmp_path / "no")})
    assert "error" in runinfo.data_files([broken])["pneumoniamnist.npz"]
