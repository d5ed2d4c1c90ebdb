"""The README and docs/: short, generated where they quote a run or the schema, no issue numbers, no broken links."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from xaiprune import paths
from xaiprune.study import claims, parameters, protocol, readme

ROOT = paths.ROOT
DOCS = sorted((ROOT / "docs").glob("*.md"))
ISSUE = re.compile(r"issue[s]? #?[0-9]+", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEXT = {".md", ".py", ".ipynb", ".json", ".yaml", ".yml", ".txt", ".cfg", ".toml"}


def results_json() -> dict:
    return json.loads((ROOT / "docs" / "results.json").read_text())


def issue_citations(path: Path) -> list[str]:
    """``file:line: text`` of every issue-number citation in a text file."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [f"{paths.relative(path)}:{i}: {ISSUE.search(line).group(0)}" for i, line in enumerate(lines, 1)
            if ISSUE.search(line)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    """Relative links of a markdown file whose target file (or heading anchor in a .md target) does not exist."""
    bad = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{paths.relative(path)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in {
                _slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)}:
            bad.append(f"{paths.relative(path)}: {target} (no such heading)")
    return bad


# ----- the committed documents --------------------------------------------------------------------------
def test_readme_is_at_most_250_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines: move detail to docs/"


def test_readme_results_and_timing_are_the_rendering_of_results_json():
    text, res = (ROOT / "README.md").read_text(), results_json()
    assert readme.block(text, "results", "README.md") == readme.render_results(res).strip(), "run `make docs`"
    assert readme.block(text, "timing", "README.md") == readme.render_timing(res).strip(), "run `make docs`"


def test_time_budget_table_is_the_rendering_of_results_json():
    text = (ROOT / "docs" / "time-budget.md").read_text()
    assert readme.block(text, "timing-table", "docs/time-budget.md") == readme.render_timing_table(results_json()).strip()


def test_docs_parameter_tables_are_the_schema():
    text = (ROOT / "docs" / "parameters.md").read_text()
    assert readme.block(text, "parameters", "docs/parameters.md") == parameters.markdown().strip(), \
        "docs/parameters.md is stale: run `make docs` (python -m xaiprune.study.readme)"


def test_docs_protocol_table_is_the_declaration():
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert readme.block(text, "protocol", "docs/protocol.md") == readme.render_protocol().strip(), \
        "docs/protocol.md is stale: run `make docs` (python -m xaiprune.study.readme)"


def test_results_json_has_a_row_per_claim_and_names_its_run():
    res = results_json()
    assert {"profile", "date", "commit", "wall_seconds"} <= set(res["run"])
    assert res["seconds"] and all(v is None or v >= 0 for v in res["seconds"].values())
    assert {c["id"].split("[")[0] for c in res["claims"]} == set(protocol.CLAIMS)
    assert all(c["verdict"] in protocol.VERDICTS for c in res["claims"])
    assert all(set(protocol.ROW_KEYS) <= set(c) for c in res["claims"]), "run `make docs` after a run"


@pytest.mark.parametrize("folder", ["README.md", "docs", "notebooks", "lib"])
def test_no_issue_numbers_are_cited(folder):
    where = ROOT / folder
    files = [where] if where.is_file() else [p for p in where.rglob("*") if p.is_file() and p.suffix in TEXT
                                               and not any(part.endswith(".egg-info") for part in p.parts)]
    found = [hit for f in files for hit in issue_citations(f)]
    assert not found, "say 'this project's reconstruction' and point at docs/DESIGN.md instead:\n" + "\n".join(found)


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: paths.relative(p))
def test_every_relative_link_points_to_an_existing_file(page):
    assert not broken_links(page)


# ----- the checks above can fail ------------------------------------------------------------------------
def test_the_checks_find_an_issue_citation_and_broken_links(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, here\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\nAs in Issue #13 and issues 4. Not: tissue, issue-free.\n[ok](there.md#a-heading-here) "
                    "[web](https://example.org/x) [gone](nowhere.md) [anchor](there.md#nope) [self](#page)\n")
    assert [h.split(": ", 1)[1] for h in issue_citations(page)] == ["Issue #13"]
    assert len(ISSUE.findall(page.read_text())) == 2
    assert [b.split(": ", 1)[1] for b in broken_links(page)] == ["nowhere.md (no such file)",
                                                                  "there.md#nope (no such heading)"]


# ----- the rendering, on a tiny synthetic summary -------------------------------------------------------
STEMS = ["01_data", "02_train", "03_xai_scores", "04_pruning_comparison", "05_nlp", "06_rl", "07_distributed",
         "08_dyfip", "09_compression", "10_agilenn"]
DYFIP = {"claims": [protocol.row("dyfip", -0.004, [-0.018, 0.011], 3, claims.SUPPORTED,
                                 "Balanced accuracy 0.510 at 45.6% of the FLOPs. More.")]}


def summary(profile: str = "smoke", reused: tuple[str, ...] = ()) -> dict:
    """Only 08 wrote metrics; every notebook ran for 10 s except ``reused`` ones."""
    notebooks = {s: {"parameters": {}, "params_sha256": "0", "seconds": None if s in reused else 10.0} for s in STEMS}
    meta = {"profile": profile, "finished": "2026-12-05T10:00:00+00:00", "git_commit": "0123456789abcdef-dirty",
            "machine": "x", "versions": {}, "wall_seconds": 130.0, "notebooks": notebooks}
    return {"metadata": meta, "metrics": {s: (DYFIP if s == "08_dyfip" else None) for s in STEMS}}


def test_claims_of_notebooks_that_did_not_run_are_not_measured_and_the_rest_get_headlines():
    res = readme.results(summary())
    rows = {c["id"]: c for c in res["claims"]}
    assert list(rows) == list(protocol.CLAIMS)
    assert rows["dyfip"]["verdict"] == claims.SUPPORTED and rows["dyfip"]["paper"] == protocol.DYFIP
    assert rows["dyfip"]["headline"] == (f"{protocol.CLAIMS['dyfip'].measured_as}: -0.004 [-0.018, 0.011]; "
                                         "Balanced accuracy 0.510 at 45.6% of the FLOPs")
    assert rows["agilenn"]["verdict"] == claims.MISSING and rows["agilenn"]["headline"].startswith("not measured; ")
    assert res["run"] == {"profile": "smoke", "date": "2026-12-05", "finished": "2026-12-05T10:00:00+00:00",
                          "commit": "0123456789abcdef-dirty", "wall_seconds": 130.0, "machine": "x"}
    assert res["seconds"]["05_nlp"] == 10.0


def test_the_results_table_says_what_it_comes_from_and_marks_missing_verdicts():
    res = readme.results(summary())
    res["claims"][0].pop("verdict")
    res["claims"][1]["headline"] = ""
    res["claims"][2]["claim"] = "a | b"
    table = readme.render_results(res)
    assert "`smoke` profile's run finished 2026-12-05 (commit `0123456789ab`)" in table
    assert "not the study's results" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(protocol.CLAIMS) and "**no verdict**" in rows[0] and "(none)" in rows[1] and "a \\| b" in rows[2]
    assert sum("not measured" in r for r in rows) == len(protocol.CLAIMS) - 1
    assert "not the study's results" not in readme.render_results(readme.results(summary("default")))


def test_timing_sentence_and_table_from_the_same_seconds():
    res = readme.results(summary("default"))
    assert readme.render_timing(res).startswith("In the `default` profile's run of 2026-12-05, the notebooks of "
                                                "`make report` took 2.2 min (wall clock), 01-07 1.2 min.")
    table = readme.render_timing_table(res)
    assert "| 05_nlp | 10 | 0.2 |" in table and "| 01-07 | | 1.2 |" in table and "| all notebooks | | 1.7 |" in table
    reused = readme.results(summary("default", reused=("01_data", "02_train")))
    assert "2 notebooks were reused, not run (01_data, 02_train): not a from-scratch time" in readme.render_timing(reused)
    assert "01-07" not in readme.render_timing(reused)
    assert "| 01_data | reused |  |" in readme.render_timing_table(reused)


def _project(tmp_path: Path, readme_text: str) -> Path:
    (tmp_path / "docs").mkdir(parents=True)
    (tmp_path / "README.md").write_text(readme_text)
    (tmp_path / "docs" / "time-budget.md").write_text("t\n<!-- timing-table:begin -->\nold\n<!-- timing-table:end -->\n")
    (tmp_path / "docs" / "parameters.md").write_text("p\n<!-- parameters:begin -->\n<!-- parameters:end -->\nend\n")
    (tmp_path / "docs" / "protocol.md").write_text("c\n<!-- protocol:begin -->\n<!-- protocol:end -->\n")
    return tmp_path


def test_write_fills_every_block_and_a_missing_marker_writes_nothing(tmp_path):
    blocks = "a\n<!-- timing:begin -->\n<!-- timing:end -->\nb\n<!-- results:begin -->\nold\n<!-- results:end -->\nc\n"
    root, res = _project(tmp_path / "good", blocks), readme.results(summary())
    readme.write(res, root)
    assert json.loads((root / "docs" / "results.json").read_text()) == res
    text = (root / "README.md").read_text()
    assert readme.block(text, "results") == readme.render_results(res) and text.startswith("a\n") and text.endswith("c\n")
    assert readme.block((root / "docs" / "parameters.md").read_text(), "parameters") == parameters.markdown().strip()
    assert "old" not in (root / "docs" / "time-budget.md").read_text()
    assert readme.block((root / "docs" / "protocol.md").read_text(), "protocol") == readme.render_protocol()
    bad = _project(tmp_path / "bad", "no markers here\n")
    with pytest.raises(readme.ReadmeError, match="README.md: expected one '<!-- results:begin -->'"):
        readme.write(res, bad)
    assert not (bad / "docs" / "results.json").exists() and "old" in (bad / "docs" / "time-budget.md").read_text()


@pytest.mark.parametrize("text", ["<!-- x:end --> <!-- x:begin -->", "<!-- x:begin --><!-- x:begin --><!-- x:end -->", ""])
def test_a_block_needs_one_begin_before_one_end(text):
    with pytest.raises(readme.ReadmeError, match="x:begin"):
        readme.block(text, "x")


def test_the_command_names_the_missing_summary_and_the_command_that_makes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    assert readme.main(["--profile", "budget"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "reports" / "budget" / "summary.json") in err and "make report PROFILE=budget" in err
    (tmp_path / "other.json").write_text("{}")
    assert readme.main(["--summary", str(tmp_path / "other.json")]) == 2
    assert "'metadata' and 'metrics'" in capsys.readouterr().err


def test_the_command_reads_summary_from_anywhere(tmp_path, monkeypatch, capsys):
    root = _project(tmp_path, "<!-- results:begin --><!-- results:end -->\n<!-- timing:begin --><!-- timing:end -->\n")
    monkeypatch.setattr(paths, "ROOT", root)
    (tmp_path / "s.json").write_text(json.dumps(summary()))
    assert readme.main(["--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((root / "docs" / "results.json").read_text())["run"]["profile"] == "smoke"
    assert "smoke profile, 2026-12-05" in capsys.readouterr().out
