"""Run metadata, per-notebook metrics, the HTML index and the final report of a pipeline run.

Each notebook writes its headline numbers to ``artifacts/<profile>/<stem>/metrics.json`` (through
:func:`write_metrics`). After the run, :func:`build` renders every executed notebook to HTML with
nbconvert and writes, in ``reports/<profile>/``:

- ``report.html``: the one page to read. The run's metadata, one row per claim as the notebooks wrote it
  under :mod:`xaiprune.study.protocol` (collected by :func:`claims`: endpoint, comparator, target, measured
  value with its corrected interval, seeds, test, verdict, evidence), then per notebook its headline
  figures (code cells tagged ``headline``) and key numbers;
- ``index.html``: every metric of every notebook, parameters and wall time per notebook;
- ``summary.json``: the metadata, the claim rows (``claims``) and all metrics, for machines.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from pathlib import Path

from xaiprune import paths, train
from xaiprune.study.runinfo import git_commit, run_metadata
from xaiprune.study.schema import Run, Step
from xaiprune.study.claims import MISSING, NOT, PARTLY, SUPPORTED, claims, measured_text

MAX_ROWS = 40  # headline values shown per notebook on the index page



def _jsonable(obj):
    """Convert numpy scalars/arrays and tuples to plain JSON types; NaN must not sneak in silently."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"metric value {obj} is not finite")
    return obj


class ReportError(RuntimeError):
    """The metrics of a run do not belong together (another profile, other parameters, missing)."""


def write_metrics(run: Run, metrics: dict) -> Path:
    """Write a notebook's headline numbers to ``artifacts/<profile>/<stem>/metrics.json`` (sorted keys).

    The file holds ``provenance`` (stage, profile and the hash of the checked parameters ``run``
    that produced it) and ``metrics``. Only computed, deterministic numbers belong there (no
    timings), so that two runs of one profile give identical files. Beside it, ``meta.json``
    records the parameters, git commit, package versions and the SHA-256 of the metrics file.
    """
    folder = paths.artifact_dir(run.stem)
    payload = {"provenance": {"stage": run.stem, "profile": run.profile, "params_sha256": run.sha256},
               "metrics": _jsonable(metrics)}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    (folder / "metrics.json").write_text(text)
    meta = {"stage": run.stem, "profile": run.profile, "params_sha256": run.sha256, "parameters": _jsonable(run.values),
            "git_commit": git_commit(), "versions": train.package_versions(), "metrics_sha256": hashlib.sha256(text.encode()).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder / "metrics.json"


def _load(stage: str, profile: str, name: str) -> dict | None:
    path = paths.stage_dir(stage, profile) / name
    return json.loads(path.read_text()) if path.is_file() else None


def provenance(stage: str, profile: str) -> dict | None:
    """``{"stage", "profile", "params_sha256"}`` of the stage's ``metrics.json`` for ``profile``, or None."""
    found = _load(stage, profile, "metrics.json")
    return None if found is None else found.get("provenance")


def recorded_parameters(stage: str, profile: str) -> dict:
    """The parameters ``meta.json`` says produced the stage's outputs (empty if unknown)."""
    return (_load(stage, profile, "meta.json") or {}).get("parameters", {})


def read_metrics(stage: str, profile: str, params_sha256: str | None = None) -> dict | None:
    """The stage's metrics for ``profile`` (None if it wrote none), refusing another profile's or stale ones.

    With ``params_sha256``, metrics made with other parameters are a :class:`ReportError`: a report
    never mixes numbers of different runs.
    """
    found = _load(stage, profile, "metrics.json")
    if found is None:
        return None
    prov = found.get("provenance") or {}
    where = paths.relative(paths.stage_dir(stage, profile) / "metrics.json")
    if prov.get("profile") != profile or prov.get("stage") != stage:
        raise ReportError(f"{where} says it is {prov.get('stage')!r} of profile {prov.get('profile')!r}, "
                          f"not {stage!r} of {profile!r}: rerun {stage} with --profile {profile}")
    if params_sha256 is not None and prov.get("params_sha256") != params_sha256:
        raise ReportError(f"{where} was made with parameters {prov.get('params_sha256')}, this run's are {params_sha256}: "
                          f"it is stale; rerun from {stage}")
    return found["metrics"]


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}`` for the headline table."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and len(v) > 12:
        return html.escape(f"[{len(v)} values]")
    return html.escape(str(v))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f4f4f4;padding:0 .2em}
"""


def render_index(meta: dict, metrics: dict[str, dict | None]) -> str:
    rows = []
    for stem, info in meta["notebooks"].items():
        took = "reused" if info["seconds"] is None else f"{info['seconds']:.1f}"
        rows.append(f"<tr><td><a href='{stem}.html'>{stem}</a></td><td class='num'>{took}</td>"
                    f"<td><code>{html.escape(json.dumps(info['parameters']))}</code></td></tr>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>xaiprune: {meta['profile']} run</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>xaiprune &mdash; profile <code>{html.escape(meta['profile'])}</code></h1>",
             f"<p>Finished {meta['finished']} &middot; commit <code>{html.escape(meta['git_commit'])}</code>"
             f" &middot; total wall time {meta['wall_seconds']:.1f} s &middot; {html.escape(meta['machine'])}</p>",
             "<h2>Notebooks</h2><table><tr><th>notebook</th><th>seconds</th><th>parameters</th></tr>",
             *rows, "</table>", "<h2>Headline numbers</h2>"]
    for stem, m in metrics.items():
        parts.append(f"<h3>{stem}</h3>")
        if not m:
            parts.append("<p>(this notebook wrote no metrics.json)</p>")
            continue
        flat = list(flatten(m).items())
        parts.append("<table><tr><th>metric</th><th>value</th></tr>")
        parts += [f"<tr><td>{html.escape(k)}</td><td class='num'>{_fmt(v)}</td></tr>"
                  for k, v in flat[:MAX_ROWS]]
        parts.append("</table>")
        if len(flat) > MAX_ROWS:
            parts.append(f"<p>{len(flat) - MAX_ROWS} more values in <code>summary.json</code> and the notebook.</p>")
    parts.append("<h2>Package versions</h2><table>")
    parts += [f"<tr><td>{k}</td><td>{html.escape(v)}</td></tr>" for k, v in meta["versions"].items()]
    parts.append("</table></body></html>")
    return "\n".join(parts)


def notebook_to_html(notebook: Path, out: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_filename(str(notebook))
    out.write_text(body, encoding="utf-8")
    return out


def build(profile: str, steps: list["Step"], out_dir: Path, wall_seconds: float, start_state: dict | None = None) -> Path:
    """Write ``<stem>.html`` per notebook, ``summary.json``, ``index.html`` and ``report.html``; return the report.

    ``start_state`` is :func:`~xaiprune.study.runinfo.machine_state` read when the run started.

    Every notebook's metrics must be of ``profile`` and of the step's parameters (:func:`read_metrics`),
    so a report never mixes runs; a :class:`ReportError` says which notebook to rerun.
    """
    metrics = {s.stem: read_metrics(s.stem, profile, s.sha256) for s in steps}
    missing = [s.stem for s in steps if s.output is None or not Path(s.output).is_file()]
    if missing:
        raise ReportError(f"no executed notebook in {paths.relative(out_dir)} for {missing}: rerun from {missing[0]}")
    for step in steps:
        notebook_to_html(step.output, out_dir / f"{step.stem}.html")
    meta = run_metadata(profile, steps, wall_seconds, start_state)
    rows = claims(metrics)
    (out_dir / "summary.json").write_text(json.dumps({"metadata": meta, "claims": rows, "metrics": metrics}, indent=2))
    index = out_dir / "index.html"
    index.write_text(render_index(meta, metrics), encoding="utf-8")
    figures = {s.stem: headline_figures(s.output) for s in steps}
    (out_dir / "report.html").write_text(render_report(meta, metrics, figures), encoding="utf-8")
    return out_dir / "report.html"


def headline_figures(notebook: Path) -> list[str]:
    """PNG images (base64) of the executed notebook's code cells tagged ``headline``."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    out = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "headline" in cell.metadata.get("tags", []):
            out += [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    return out


_VERDICT_COLOUR = {SUPPORTED: "#1b7f3b", PARTLY: "#b26a00", NOT: "#b3261e", MISSING: "#666"}
_REPORT_CSS = _CSS + """
.verdict{font-weight:600;white-space:nowrap}.claims td{font-size:.95em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.meta td:first-child{color:#555;white-space:nowrap}
.banner{background:#fff3cd;border:1px solid #e0b84c;padding:.6em .9em}
"""
KEY_METRICS = {  # what the report shows per notebook (the index has everything)
    "02_train": lambda m: {f"{a} test {k}": v[f"test_{k}"] for a, v in m.items() if a != "hospital" for k in ("acc", "auc")}
    | {f"hospital {a} {w} test balanced acc": v["test"]["bal_acc"] for a, by in m.get("hospital", {}).items()
       for w, v in by.items()},
    "08_dyfip": lambda m: {f"{f['flag']} {p} test balanced acc (mean FLOPs {v['mean_flops_ratio']:.0%})": v["bal_acc"]
                           for f in (m, m.get("second")) if f and "ablation" in f for p, v in f["ablation"].items()}
    | {f"{f['flag']} DyFiP worst-case latency / full model's": f["worst_latency_ratio"]
       for f in (m, m.get("second")) if f and "worst_latency_ratio" in f},
    "09_compression": lambda m: {"dead weights (share of conv and linear weights)": m["dead_weight_share"]}
    | {f"{t} {v}: ratio at 1 AUC point, live weights": x["ratio_at_1pt"] for t, vs in m.get("techniques", {}).items()
       for v, x in vs.items() if x.get("ratio_at_1pt") is not None} if "dead_weight_share" in m else {},
    "10_agilenn": lambda m: {f"{r} {meth} median ms ({'measured' if v.get('latency_ms_p50_measured') else 'modelled'})":
                             v.get("latency_ms_p50_measured") or v["latency_ms_p50_model"]
                             for r, by in m.get("regimes", {}).items() for meth, v in by.items() if isinstance(v, dict)}
    | {"AgileNN skewness (mean over seeds)": m["agilenn"]["skewness"]} if "regimes" in m else {},
    "05_nlp": lambda m: {**{f"CBC solve time {k} (s)": v for k, v in m.get("solve_seconds", {}).items()},
                         **{f"surrogate error {k}": v for k, v in m.get("surrogate_error", {}).items()}},
    "06_rl": lambda m: {f"agent {w} {k}": m[w][k] for w in ("nominal", "fade") if w in m
                        for k in ("acc_vs_optimum", "violation_rate")}
    | {k: m[k] for k in ("decision_ms", "enumeration_ms", "cbc_ms") if k in m}
    | {f"shield on {w}: plans replaced": f"{c['fired']} of {c['decisions']}" for w, c in m.get("shield", {}).items()}
    | {f"estimator view {k}": m["estimator_view"][k] for k in ("acc_vs_optimum", "violation_rate") if m.get("estimator_view")}
    | ({"large ward acc_vs_optimum": m["large"]["acc_vs_optimum"]} if m.get("large") else {}),
    "07_distributed": lambda m: {
        **({"premise: one device's deadline hit rate": m["premise"]["one_device_deadline_hit_rate"]} if m.get("premise") else {}),
        **({"shield: XAI + RL plans replaced": f"{m['shield']['fired']} of {m['shield']['requests']}"} if m.get("shield") else {}),
        **{f"per-hop overhead {k} (ms)": v for k, v in ((m.get("serving") or {}).get("hop_overhead_ms") or {}).items()
           if k != "requests"}},
}


def _policy_table(m07: dict) -> str:
    cols = [("acc", "ACC", "{:.3f}"), ("bal_acc", "balanced ACC", "{:.3f}"), ("auc", "AUC", "{:.3f}"),
            ("p50_ms", "p50 ms", "{:.1f}"), ("p95_ms", "p95 ms", "{:.1f}"),
            ("deadline_hit_rate", "deadline met", "{:.1%}"), ("bytes_per_inference", "bytes / inference", "{:,.0f}"),
            ("energy_j", "J / request (modelled)", "{:.3f}"), ("predicted_ms", "predicted ms", "{:.1f}"),
            ("latency_error", "measured vs predicted", "{:+.1%}")]
    head = "".join(f"<th>{label}</th>" for _, label, _ in cols)
    order = [p for p in m07.get("policy_order", []) if p in m07["policies"]] or list(m07["policies"])
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
        f"<td class='num'>{fmt.format(m07['policies'][name][k]) if k in m07['policies'][name] else ''}</td>"
        for k, _, fmt in cols) + "</tr>" for name in order)
    return f"<table><tr><th>policy</th>{head}</tr>{rows}</table>"


def banner(profile: str) -> str:
    """A warning at the top of every report that is not the default profile's: its numbers are not the study's."""
    if profile == "default":
        return ""
    return (f"<p class='banner'><b>Profile <code>{html.escape(profile)}</code>: these numbers are not the study's "
            "results.</b> This profile runs the same chain with less (a smaller model, fewer images, requests or "
            "draws) to check that it works or to fit a time budget; its verdicts can differ from the default "
            "profile's, which gives the study's results.</p>")


def _machine_rows(meta: dict) -> list[str]:
    """CPU, load at the start and the end of the run, and each data file's MD5, as rows of the metadata table."""
    start, end = meta.get("machine_start") or {}, meta.get("machine_end") or {}
    rows = [f"<tr><td>CPU</td><td>{html.escape(str(end.get('cpu_model', '?')))}, {end.get('cpu_count', '?')} cores</td></tr>",
            f"<tr><td>load average (1, 5, 15 min)</td><td>start {start.get('load_average', 'not recorded')}, "
            f"end {end.get('load_average', '?')}</td></tr>"]
    rows += [f"<tr><td>data</td><td><code>{html.escape(name)}</code> MD5 <code>{html.escape(f.get('md5', f.get('error', '?')))}</code>"
             "</td></tr>" for name, f in (meta.get("data_files") or {}).items()]
    return rows


def _claim_row(c: dict) -> str:
    seeds = f"{c['n_seeds']}" + (f" (protocol: {c['min_seeds']})" if c.get("min_seeds", 1) > c["n_seeds"] else "")
    recon = "reconstructed: " + c.get("reconstruction", "") if c["reconstructed"] else "as published"
    cells = [html.escape(c["claim"]) + f"<br><small>{html.escape(c['paper'])}; {html.escape(recon)}</small>",
             html.escape(c["notebooks"]), html.escape(c["endpoint"]) + f"<br><small>choices on {c['selection_split']}</small>",
             html.escape(c["comparator"]), html.escape(c["target"]),
             html.escape(measured_text(c)) + f"<br><small>{html.escape(c.get('measured_as', ''))}</small>", seeds,
             html.escape(c["test"])]
    return ("<tr>" + "".join(f"<td>{x}</td>" for x in cells)
            + f"<td class='verdict' style='color:{_VERDICT_COLOUR[c['verdict']]}'>{c['verdict']}</td>"
            f"<td>{html.escape(c['evidence'])}</td></tr>")


_CLAIM_HEAD = ("claim (paper)", "notebooks", "primary endpoint", "comparator", "target", "measured [corrected interval]",
               "seeds", "test", "verdict", "evidence from this run")


def render_report(meta: dict, metrics: dict[str, dict | None], figures: dict[str, list[str]]) -> str:
    rows = "".join(_claim_row(c) for c in claims(metrics))
    took = sum(v["seconds"] or 0 for v in meta["notebooks"].values())
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v != "not installed")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>xaiprune report: {meta['profile']}</title>"
             f"<style>{_REPORT_CSS}</style></head><body>",
             "<h1>XAI-guided dynamic pruning for distributed inference: what this run shows</h1>",
             banner(meta["profile"]),
             "<table class='meta'>",
             f"<tr><td>profile</td><td><code>{html.escape(meta['profile'])}</code></td></tr>",
             f"<tr><td>finished</td><td>{meta['finished']}</td></tr>",
             f"<tr><td>commit</td><td><code>{html.escape(meta['git_commit'])}</code></td></tr>",
             f"<tr><td>machine</td><td>{html.escape(meta['machine'])}</td></tr>",
             *_machine_rows(meta),
             f"<tr><td>notebooks run</td><td>{len([v for v in meta['notebooks'].values() if v['seconds'] is not None])} "
             f"of {len(meta['notebooks'])} ({took / 60:.1f} min; the others reused)</td></tr>",
             f"<tr><td>versions</td><td>{html.escape(versions)}</td></tr></table>",
             "<p>Every number on this page was computed by the notebooks of this run. Every claim follows one "
             "protocol, declared before the run: choices on validation or the reference set only, a primary endpoint "
             "no threshold shift can fake (ACC is shown, never decides), paired differences against the comparator "
             "bootstrapped over test images with the seeds nested, Holm-corrected across each claim's family; "
             "<b>supported</b> when the target holds with the corrected interval, <b>partly supported</b> when the "
             "method wins somewhere but misses it, <b>not measured</b> when the evidence is missing. "
             "<a href='index.html'>All metrics</a> &middot; the notebooks are linked below.</p>",
             "<h2>Claims against evidence</h2>",
             "<table class='claims'><tr>" + "".join(f"<th>{h}</th>" for h in _CLAIM_HEAD) + "</tr>",
             rows, "</table>"]
    m07 = metrics.get("07_distributed")
    if m07:
        parts += [f"<h2>The real distributed system, per policy (07, {html.escape(str(m07.get('scenario', '')))})</h2>",
                  _policy_table(m07)]
        if m07.get("stress"):
            parts += [f"<h3>Second ward: {html.escape(m07['stress']['scenario'])}</h3>", _policy_table(m07["stress"])]
    for stem in meta["notebooks"]:
        m = metrics.get(stem) or {}
        key = KEY_METRICS.get(stem, lambda _: {})(m) if m else {}
        if not figures.get(stem) and not key:
            continue
        parts.append(f"<h2><a href='{stem}.html'>{stem}</a></h2>")
        if key:
            parts.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{_fmt(v)}</td></tr>"
                                             for k, v in key.items()) + "</table>")
        parts += [f"<img alt='{stem} figure' src='data:image/png;base64,{png}'>" for png in figures.get(stem, [])]
    parts.append("</body></html>")
    return "\n".join(parts)
