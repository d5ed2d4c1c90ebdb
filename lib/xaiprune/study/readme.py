"""The generated parts of README.md and docs/: ``python -m xaiprune.study.readme [--profile P] [--summary PATH]``.

Reads ``reports/<profile>/summary.json`` (a pipeline run's), judges the papers' claims on its metrics
(:func:`xaiprune.study.claims.claims`), writes ``docs/results.json`` (one row per claim, the seconds per notebook,
the run's date, profile, commit and wall time) and rewrites, between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``, the blocks ``results`` and ``timing`` of README.md, ``timing-table`` of docs/time-budget.md,
``parameters`` of docs/parameters.md (the schema's tables) and ``protocol`` of docs/protocol.md (the declared
claims). ``make docs`` runs it; tests/test_docs.py checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xaiprune import paths
from xaiprune.study import parameters, protocol
from xaiprune.study.claims import claims, measured_text

class ReadmeError(RuntimeError):
    """No summary to read, or a document without its generated block."""


def _short(text: str, limit: int = 200) -> str:
    """``text`` cut at a word before ``limit`` characters, marked when cut (the report has the whole evidence)."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ... (the report has the rest)"


def results(summary: dict) -> dict:
    """docs/results.json: the run, the seconds per notebook and one row per claim, as the report has them
    (:func:`xaiprune.study.claims.claims`), each with a headline: the measured value, its interval and the
    verdict's first sentence of evidence."""
    meta, metrics = summary["metadata"], summary["metrics"]
    rows = [{**r, "headline": (f"{r['measured_as']}: " if r.get("measured_as") and r["measured"] is not None else "")
             + f"{measured_text(r)}; " + _short(r["evidence"].split(". ")[0])} for r in claims(metrics)]
    return {"run": {"profile": meta["profile"], "date": meta["finished"][:10], "finished": meta["finished"],
                    "commit": meta["git_commit"], "wall_seconds": meta["wall_seconds"], "machine": meta.get("machine", "")},
            "seconds": {stem: info.get("seconds") for stem, info in meta["notebooks"].items()}, "claims": rows}

# ----- rendering ---------------------------------------------------------------------------------------
def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")

def _source(res: dict) -> str:
    run = res["run"]
    text = (f"From the `{run['profile']}` profile's run finished {run['date']} (commit `{run['commit'][:12]}`), "
            "copied to docs/results.json by `make docs`.")
    return text + (" **These are the smoke profile's numbers (the small CNN, a few images): they check that the chain "
                   "works and are not the study's results.**" if run["profile"] == "smoke" else "")

def render_results(res: dict) -> str:
    """The README's results table: one row per claim; a row without a verdict or a headline says so."""
    lines = [_source(res), "", "| claim | primary endpoint | notebooks | verdict | measured [corrected interval]; evidence |",
             "|---|---|---|---|---|"]
    lines += [f"| {_cell(c.get('claim', '?'))} | {_cell(c.get('endpoint', '?'))} | {_cell(c.get('notebooks', '?'))} | "
              f"**{_cell(c.get('verdict') or 'no verdict')}** | {_cell(c.get('headline') or '(none)')} |" for c in res["claims"]]
    return "\n".join(lines)

def _minutes(seconds: dict, upto: str = "99") -> float | None:
    got = [v for s, v in seconds.items() if s[:2] <= upto]
    return None if not got or None in got else sum(got) / 60

def render_timing(res: dict) -> str:
    """The README's sentence on how long `make report` takes, from the numbers of the timing table."""
    run, secs = res["run"], res["seconds"]
    reused, first = [s for s, v in secs.items() if v is None], _minutes(secs, "07")
    command = "make report" + ("" if run["profile"] == "default" else f" PROFILE={run['profile']}")
    text = (f"In the `{run['profile']}` profile's run of {run['date']}, the notebooks of `{command}` took "
            f"{run['wall_seconds'] / 60:.1f} min (wall clock)" + ("." if first is None else f", 01-07 {first:.1f} min."))
    if reused:
        text += f" {len(reused)} notebooks were reused, not run ({', '.join(reused)}): not a from-scratch time."
    return text + " Per notebook: [docs/time-budget.md](docs/time-budget.md)."

def render_timing_table(res: dict) -> str:
    """docs/time-budget.md's table: seconds per notebook, 01-07, every notebook and the run's wall clock."""
    secs, wall = res["seconds"], res["run"]["wall_seconds"]
    mins = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [_source(res), "", "| notebook | seconds | minutes |", "|---|---:|---:|"]
    lines += [f"| {s} | {'reused' if v is None else f'{v:.0f}'} | {mins(None if v is None else v / 60)} |" for s, v in secs.items()]
    lines += [f"| 01-07 | | {mins(_minutes(secs, '07'))} |", f"| all notebooks | | {mins(_minutes(secs))} |",
              f"| the run (wall clock) | {wall:.0f} | {wall / 60:.1f} |"]
    return "\n".join(lines)

def render_protocol() -> str:
    """docs/protocol.md's table: every claim as :mod:`xaiprune.study.protocol` declares it, before any run."""
    head = ("claim", "paper; reconstructed?", "hypothesis", "primary endpoint", "choices on", "comparator", "margin",
            "target", "a row's measured value", "test", "seeds at least")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in protocol.CLAIMS.values():
        recon = f"yes: {c.reconstruction}" if c.reconstructed else "no"
        cells = (f"`{c.id}`: {c.claim}", f"{c.paper}; {recon}", c.hypothesis, c.endpoint, c.selection_split,
                 c.comparator, f"{c.margin:g}", c.target, c.measured_as, c.test, str(c.min_seeds))
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return "\n".join(lines)

# ----- the files ---------------------------------------------------------------------------------------
def _marks(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"

def block(text: str, name: str, where: str = "the text") -> str:
    """The text between the markers of ``name`` (stripped); a :class:`ReadmeError` unless each is there once, in order."""
    begin, end = _marks(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReadmeError(f"{where}: expected one '{begin}' followed by one '{end}'")
    return text.split(begin)[1].split(end)[0].strip()

def replace_block(text: str, name: str, body: str, where: str = "the text") -> str:
    block(text, name, where)
    begin, end = _marks(name)
    head, rest = text.split(begin)
    return f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end)[1]}"

def load_summary(path: Path, profile: str) -> dict:
    if not path.is_file():
        raise ReadmeError(f"{path} does not exist: run `make report PROFILE={profile}` (python -m xaiprune.study.pipeline "
                          f"--profile {profile}) first, or point --summary at a run's summary.json")
    if not isinstance(summary := json.loads(path.read_text()), dict) or not {"metadata", "metrics"} <= set(summary):
        raise ReadmeError(f"{path}: expected the keys 'metadata' and 'metrics' of a pipeline run's summary.json")
    return summary

def write(res: dict, root: Path | None = None) -> None:
    """docs/results.json, then every generated block from it and the parameter tables from the schema."""
    root = root or paths.ROOT
    docs = root / "docs"
    blocks = {root / "README.md": {"results": render_results(res), "timing": render_timing(res)},
              docs / "time-budget.md": {"timing-table": render_timing_table(res)},
              docs / "parameters.md": {"parameters": parameters.markdown()},
              docs / "protocol.md": {"protocol": render_protocol()}}
    texts = {path: path.read_text() for path in blocks}
    for path, named in blocks.items():  # every marker is found before anything is written
        for name, body in named.items():
            texts[path] = replace_block(texts[path], name, body, paths.relative(path))
    (docs / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    for path, text in texts.items():
        path.write_text(text)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xaiprune.study.readme", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help="read reports/<profile>/summary.json (default: default)")
    parser.add_argument("--summary", type=Path, help="read this summary.json instead (the table names its own profile)")
    args = parser.parse_args(argv)
    path = args.summary or paths.REPORTS / args.profile / "summary.json"
    try:
        res = results(load_summary(path, args.profile))
        write(res)
    except ReadmeError as exc:
        print(f"readme: {exc}", file=sys.stderr)
        return 2
    print(f"README.md, docs/*: from {path} ({res['run']['profile']} profile, {res['run']['date']})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
