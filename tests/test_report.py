"""The report page: every declared claim gets a row with the protocol's keys, and tagged figures reach the page."""

from __future__ import annotations

import base64

import nbformat
import pytest

from xaiprune.study import claims, protocol, report


def row(cid: str, verdict: str = claims.SUPPORTED, **extra) -> dict:
    return protocol.row(cid, 0.031, [0.012, 0.05], 3, verdict, "The evidence, computed.", **extra)


def test_every_declared_claim_gets_a_row_and_a_missing_one_is_not_measured():
    rows = claims.claims({})
    assert [r["id"] for r in rows] == list(protocol.CLAIMS)
    assert {r["verdict"] for r in rows} == {claims.MISSING}
    assert all(set(protocol.ROW_KEYS) <= set(r) for r in rows)
    assert all(r["selection_split"] in ("val", "reference") for r in rows)


def test_rows_are_collected_from_the_notebooks_in_the_protocol_order_with_one_per_architecture():
    metrics = {"08_dyfip": {"claims": [row("dyfip")]},
               "04_pruning_comparison": {"claims": [row("xai_criterion", claims.NOT),
                                                    row("xai_criterion", claims.PARTLY, suffix="[resnet18]")]}}
    rows = claims.claims(metrics)
    assert [r["id"] for r in rows[:2]] == ["xai_criterion", "xai_criterion[resnet18]"]
    got = {r["id"]: r["verdict"] for r in rows}
    assert got["dyfip"] == claims.SUPPORTED and got["xai_criterion[resnet18]"] == claims.PARTLY
    assert got["agilenn"] == claims.MISSING
    assert claims.measured_text(rows[0]) == "0.031 [0.012, 0.05]"


def test_a_row_without_a_protocol_key_or_with_a_test_choice_is_refused():
    bad = row("dyfip")
    bad.pop("n_seeds")
    with pytest.raises(claims.ClaimError, match="lacks"):
        claims.claims({"08_dyfip": {"claims": [bad]}})
    bad = {**row("dyfip"), "selection_split": "test"}
    with pytest.raises(claims.ClaimError, match="made its choices on 'test'"):
        claims.claims({"08_dyfip": {"claims": [bad]}})
    with pytest.raises(ValueError, match="never test|expected one of"):
        row("dyfip", selection_split="test")


def test_a_row_with_fewer_seeds_than_declared_says_its_verdict_is_indicative():
    r = protocol.row("dyfip", 0.0, [0.0, 0.0], 1, claims.NOT, "E.")
    assert "indicative" in r["evidence"] and r["min_seeds"] == 3
    assert "indicative" not in row("dyfip")["evidence"]


def test_choices_on_test_fail_and_the_record_names_the_split():
    from types import SimpleNamespace

    choices = protocol.Choices()
    choices.made("best repair", SimpleNamespace(split="val"))
    choices.made("ranking", "reference")
    assert choices.as_dict() == {"best repair": "val", "ranking": "reference"} and choices.split() == "val"
    with pytest.raises(ValueError, match="'test'"):
        choices.made("operating point", SimpleNamespace(split="test"))
    with pytest.raises(ValueError, match="no choice recorded"):
        protocol.Choices().split()


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
    page = report.render_report(meta, {"x": {"claims": [row("dyfip")]}}, {"x": [png]})
    assert page.count("data:image/png;base64,") == 1 and "Claims against evidence" in page
    assert "0.031 [0.012, 0.05]" in page and page.count("'>not measured</td>") == len(protocol.CLAIMS) - 1


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
    from xaiprune.synthetic import write_synthetic
    from xaiprune.study import runinfo
    from xaiprune.study.schema import Step

    write_synthetic(tmp_path, "pneumoniamnist", 28)
    monkeypatch.setattr(data, "verify", lambda path, flag, size: path)  # the synthetic file's MD5 is its own
    step = Step(Path("01_data.ipynb"), {}, parameters={"flag": "pneumoniamnist", "size": 28, "data_root": str(tmp_path)})
    meta = runinfo.run_metadata("default", [step], 1.0, runinfo.machine_state())
    md5 = data.md5sum(tmp_path / "pneumoniamnist.npz")
    assert meta["data_files"] == {"pneumoniamnist.npz": {"path": str(tmp_path / "pneumoniamnist.npz"), "md5": md5}}
    assert meta["notebooks"]["01_data"]["parameters"]["flag"] == "pneumoniamnist"
    assert len(meta["machine_start"]["load_average"]) == 3 and meta["machine_end"]["cpu_count"] >= 1
    broken = Step(Path("01_data.ipynb"), {}, parameters={"flag": "pneumoniamnist", "size": 28, "data_root": str(tmp_path / "no")})
    assert "error" in runinfo.data_files([broken])["pneumoniamnist.npz"]


def test_the_report_shows_the_dyfip_ablations_of_both_flags_and_the_compression_ratios():
    one = {"flag": "hospital", "worst_latency_ratio": 0.52,
           "ablation": {"dyfip": {"bal_acc": 0.52, "mean_flops_ratio": 0.43}, "full": {"bal_acc": 0.55, "mean_flops_ratio": 1.0}}}
    key = report.KEY_METRICS["08_dyfip"]({**one, "second": {**one, "flag": "retinamnist"}})
    assert key["hospital dyfip test balanced acc (mean FLOPs 43%)"] == 0.52 and len(key) == 6
    assert key["retinamnist DyFiP worst-case latency / full model's"] == 0.52
    assert report.KEY_METRICS["08_dyfip"]({**one, "second": None}).keys() == {k for k in key if k.startswith("hospital")}
    m09 = {"dead_weight_share": 0.43, "techniques": {"sharing": {"deeplift": {"ratio_at_1pt": 15.5}, "kmeans": {"ratio_at_1pt": None}}}}
    assert report.KEY_METRICS["09_compression"](m09) == {"dead weights (share of conv and linear weights)": 0.43,
                                                         "sharing deeplift: ratio at 1 AUC point, live weights": 15.5}
