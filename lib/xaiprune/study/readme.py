"""The generated parts of README.md and docs/: ``python -m xaiprune.study.readme [--profile P] [--summary PATH]``.

Reads ``reports/<profile>/summary.json`` (a pipeline run's), judges the papers' claims on its metrics
(:func:`xaiprune.study.claims.claims`), writes ``docs/results.json`` (one row per claim, the seconds per notebook,
the run's date, profile, commit and wall time) and rewrites, between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``, the blocks ``results`` and ``timing`` of README.md, ``timing-table`` of docs/time-budget.md
and ``parameters`` of docs/parameters.md (the schema's tables). ``make docs`` runs it; tests/test_docs.py checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xaiprune import paths
from xaiprune.study import parameters
from xaiprune.study.claims import MISSING, claims

DYNAMIC = ("XAI + NLP", "XAI + RL")

class ReadmeError(RuntimeError):
    """No summary to read, or a document without its generated block."""

# ----- one headline per claim, from the metrics (the report's evidence holds the rest) ---------------
def _criterion(m: dict) -> str:
    arch = next(k for k in m["04_pruning_comparison"] if k not in ("repairs", "unpruned", "repair_study"))
    won = m["04_pruning_comparison"][arch]["winners"]
    count = {metric: [sum(w["metric"] == metric and w["outcome"] == o for w in won)
                      for o in ("XAI better", "tie", "baseline better")] for metric in ("auc", "acc")}
    return "best XAI criterion against the best baseline, pruning ratios better/tied/worse without repair: " + ", ".join(
        f"{k.upper()} {'/'.join(map(str, v))}" for k, v in count.items())

def _accuracy(m: dict) -> str:
    p = m["07_distributed"]["policies"]
    return "; ".join(f"{k}: ACC {p[k]['acc']:.3f}, deadline met {p[k]['deadline_hit_rate']:.1%}"
                     for k in (*DYNAMIC, "no pruning") if k in p)

def _shared_bytes(m: dict) -> str:
    m07 = m["07_distributed"]
    runs = [(m07.get("scenario", "main"), m07["policies"])]
    runs += [(m07["stress"]["scenario"], m07["stress"]["policies"])] if m07.get("stress") else []
    return "bytes saved by pruning: " + "; ".join(f"{s} {k} {p[k]['bytes_saved_by_pruning']:.1%}"
                                                  for s, p in runs for k in DYNAMIC if k in p)

def _rl(m: dict) -> str:
    nom, fade = m["06_rl"]["nominal"], m["06_rl"]["fade"]
    return (f"{nom['acc_vs_optimum']:.1%} / {fade['acc_vs_optimum']:.1%} of the optimum's accuracy (nominal / fade), "
            f"{nom['violation_rate']:.1%} / {fade['violation_rate']:.1%} violations, decision {m['06_rl']['decision_ms']:.2f} ms")

def _latency(m: dict) -> str:
    m07 = m["07_distributed"]
    err, faults = [v["latency_error"] for v in m07["policies"].values()], list((m07.get("faults") or {}).values())
    return f"measured against predicted latency {min(err):+.0%} to {max(err):+.0%}" + (
        f"; {len(faults)} fault kinds: {sum(f['lost'] for f in faults)} requests lost, {sum(f['duplicated'] for f in faults)} "
        f"answered twice, recovery at most {max(f['recovery_s'] for f in faults):.2f} s" if faults else "")

def _dyfip(m: dict) -> str:
    d = m["08_dyfip"]
    rnd = f", random filters {d['random']['test_acc']:.3f}" if "test_acc" in d.get("random", {}) else ""
    return (f"ACC {d['dyfip']['test_acc']:.3f} at {d['dyfip']['mean_flops_ratio']:.1%} of the FLOPs "
            f"(full model {d['full']['test_acc']:.3f}{rnd})")

def _compression(m: dict) -> str:
    c = m["09_compression"]["combined"]["ratio_at_1pt"]
    return f"combined XAI pipeline: {'no setting' if c is None else f'{c:.1f}x'} within 1 ACC point (target 16x)"

def _agilenn(m: dict) -> str:
    m10 = m["10_agilenn"]
    names = {"agilenn": "AgileNN", "local_only": "local only", "full_offload": "full offload", "split": "split"}
    return "median latency: " + ", ".join(f"{v} {m10[k]['latency_ms_p50']:.1f} ms" for k, v in names.items() if k in m10)

BACCOUR = "Baccour et al. 2023/2024"
KNOWN = [  # (id, words that identify the claim's text, paper, headline), in the report's order
    ("criterion", "removes filters better", BACCOUR, _criterion), ("accuracy", "keeps the accuracy high", BACCOUR, _accuracy),
    ("shared-bytes", "data shared", BACCOUR, _shared_bytes), ("rl", "RL agent", BACCOUR, _rl),
    ("latency-faults", "predicts the latency", "this study", _latency), ("dyfip", "DyFiP", "DyFiP, Sabih et al. 2022", _dyfip),
    ("compression", "compression", "Sabih et al. 2020", _compression), ("agilenn", "AgileNN", "AgileNN, Huang & Gao 2022", _agilenn)]

def results(summary: dict) -> dict:
    """docs/results.json: the run, the seconds per notebook and one row per claim (id, claim, paper, notebooks,
    verdict, headline, the report's evidence). A claim whose notebook did not run is "not evaluated"; a claim this
    module does not know, or whose headline cannot be read, gets the first sentence of its evidence."""
    meta, metrics = summary["metadata"], summary["metrics"]
    rows = []
    for n, row in enumerate(claims(metrics), 1):
        ident, _, paper, headline = next((k for k in KNOWN if k[1] in row["claim"]), (f"claim-{n}", "", "?", None))
        try:
            headline = row["evidence"] if row["verdict"] == MISSING or headline is None else headline(metrics)
        except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError):
            headline = None
        rows.append({"id": ident, "claim": row["claim"], "paper": paper, "notebooks": row["notebooks"], "verdict": row["verdict"],
                     "headline": headline or row["evidence"].split(". ")[0], "evidence": row["evidence"]})
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
    lines = [_source(res), "", "| claim | paper | notebooks | verdict | headline of this run |", "|---|---|---|---|---|"]
    lines += [f"| {_cell(c.get('claim', '?'))} | {_cell(c.get('paper', '?'))} | {_cell(c.get('notebooks', '?'))} | "
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
              docs / "parameters.md": {"parameters": parameters.markdown()}}
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
