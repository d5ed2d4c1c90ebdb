"""Run the numbered notebooks in order with papermill and build the report.

    python -m xaiprune.study.pipeline --profile smoke|default|budget|full [-p name=value ...] [-p 02_train.epochs=3]

    python -m xaiprune.study.pipeline --check --profile default -p ratios=[0.0,0.1,0.5]   # check, run nothing
    python -m xaiprune.study.pipeline --profile default --from 05_nlp                 # reuse 01-04's outputs
    python -m xaiprune.study.pipeline --profile smoke --from 04_pruning_comparison --to 04_pruning_comparison  # 04 alone

Parameters come from the defaults of :mod:`xaiprune.study.parameters` (which every notebook's parameters
cell repeats), then ``params/<profile>.yaml``: ``shared`` keys go to every notebook that declares
them, ``notebooks.<stem>`` keys to that notebook only, and ``-p`` overrides on top (``name=value``
for every notebook that declares ``name``, ``stem.name=value`` for one notebook; values are parsed as
YAML, so ``-p epochs=2`` is an int and ``-p archs=[small_cnn]`` a list). Before any kernel starts,
every value is checked against the schema and the rules across notebooks, the kernel must exist and
an explicit ``data_root`` must hold the data file; every problem is listed at once. Each notebook
gets ``profile`` and writes to ``artifacts/<profile>/<stem>/``, with the hash of its parameters in
``metrics.json``; ``--from`` reuses earlier outputs only when their hash is this run's. Executed
notebooks go to ``reports/<profile>/``; the first failure stops the run and names the notebook and
the cell. The last step writes ``report.html``, ``index.html`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import papermill as pm
import yaml

from xaiprune import paths
from xaiprune.study import parameters, report, runinfo
from xaiprune.study.schema import ParameterError, Step, fingerprint

KERNEL = "xaiprune"  # registered by `make install`


class PipelineError(RuntimeError):
    """Bad profile, parameters, notebooks or reused artifacts; raised before any notebook runs."""


def discover(notebooks_dir: Path = paths.NOTEBOOKS) -> list[Step]:
    """The ``NN_*.ipynb`` notebooks in execution order, with their declared parameters."""
    found = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise PipelineError(f"no notebooks named NN_*.ipynb in {notebooks_dir}")
    return [Step(nb, pm.inspect_notebook(str(nb))) for nb in found]


def load_profile(profile: str, params_dir: Path = paths.PARAMS) -> dict:
    path = params_dir / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in params_dir.glob("*.yaml"))
        raise PipelineError(f"profile {profile!r}: no file {path}; known profiles: {known}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"shared", "notebooks"}
    if unknown:
        raise PipelineError(f"{path}: unknown top-level keys {sorted(unknown)}; expected 'shared' and 'notebooks'")
    return {"name": profile, "shared": spec.get("shared") or {}, "notebooks": spec.get("notebooks") or {}}


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """Split ``-p`` items into global ``{name: value}`` and per-notebook ``{stem: {name: value}}``."""
    shared, per_nb = {}, {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"-p {item!r}: expected name=value or notebook_stem.name=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise PipelineError(f"-p {item!r}: the value is not valid YAML ({exc.problem})") from None
        if "." in key:
            stem, name = key.split(".", 1)
            per_nb.setdefault(stem, {})[name] = value
        else:
            shared[key] = value
    return shared, per_nb


def plan(steps: list[Step], spec: dict, overrides: list[str]) -> list[Step]:
    """Give each step all its parameters (schema defaults, profile, overrides) and check them all.

    Refused before anything runs, every problem listed at once: a name that its target notebooks do not
    declare, a notebook whose parameters cell disagrees with :mod:`xaiprune.study.parameters`, and any value
    that fails the schema or the rules across notebooks.
    """
    by_stem = {s.stem: s for s in steps}
    declared_anywhere = set().union(*(s.declared for s in steps))
    o_shared, o_per_nb = parse_overrides(overrides)
    # Precedence, lowest first: profile shared, profile per-notebook, -p name=, -p stem.name=.
    layers = [("shared", spec["shared"]), ("notebooks", spec["notebooks"]),
              ("shared", o_shared), ("notebooks", o_per_nb)]

    errors = [f"{where}: 'profile' is chosen with --profile, not as a parameter"
              for where, layer in (("params/<profile>.yaml shared", spec["shared"]), ("-p", o_shared)) if "profile" in layer]
    errors += [f"{where} {stem}: 'profile' is chosen with --profile, not as a parameter"
               for where, layer in (("params/<profile>.yaml notebooks", spec["notebooks"]), ("-p", o_per_nb))
               for stem, values in layer.items() if "profile" in (values or {})]
    errors += [f"parameter {n!r} is declared by no notebook"
              for kind, values in layers if kind == "shared" for n in values if n not in declared_anywhere]
    for kind, source in layers:
        if kind != "notebooks":
            continue
        for stem, values in source.items():
            if stem not in by_stem:
                errors.append(f"notebook {stem!r} does not exist (known: {sorted(by_stem)})")
                continue
            errors += [f"parameter {n!r} is not declared by {stem} (it declares {sorted(by_stem[stem].declared)})"
                       for n in (values or {}) if n not in by_stem[stem].declared]
    for step in steps:
        if step.stem not in parameters.NOTEBOOKS:
            errors.append(f"{step.notebook.name} has no entry in xaiprune.study.parameters.NOTEBOOKS")
        elif set(step.declared) != set(parameters.NOTEBOOKS[step.stem]):
            errors.append(f"{step.notebook.name}: its parameters cell declares {sorted(step.declared)}, but "
                          f"xaiprune.study.parameters declares {sorted(parameters.NOTEBOOKS[step.stem])}")
    if errors:
        raise PipelineError("rejected before running anything:\n  " + "\n  ".join(errors))

    values = {}
    for step in steps:
        values[step.stem] = {**parameters.defaults(step.stem), "profile": spec.get("name", "default")}
        for kind, layer in layers:
            layer = layer if kind == "shared" else (layer.get(step.stem) or {})
            values[step.stem].update({k: v for k, v in layer.items() if k in step.declared})
    try:
        checked = parameters.validate_run(values)
    except ParameterError as exc:
        raise PipelineError("rejected before running anything:\n  " + "\n  ".join(exc.problems)) from None
    for step in steps:
        step.parameters, step.sha256 = checked[step.stem], fingerprint(checked[step.stem])
    return steps


def data_note(steps: list[Step]) -> str:
    """Where each data file of this run is (an explicit ``data_root`` was checked by the schema)."""
    from xaiprune import data

    wanted = {(flag, p["size"], p["data_root"]) for p in (s.parameters for s in steps) if "size" in p and "data_root" in p
              for flag in runinfo.read_flags(p)}
    lines = []
    for flag, size, root in sorted(wanted):
        name, dirs = data.file_name(flag, size), data.candidate_dirs(root or None)
        found = next((d / name for d in dirs if (d / name).is_file()), None)
        lines.append(f"data: {found}" if found else
                     f"data: {name} is in none of {[str(d) for d in dirs]}; the first notebook that needs it will try to download it")
    return "\n".join(lines)


def check_reused(steps: list[Step], first: int, profile: str) -> None:
    """``--from``: every earlier notebook's outputs must come from exactly this run's parameters."""
    for step in steps[:first]:
        prov = report.provenance(step.stem, profile)
        executed = paths.REPORTS / profile / step.notebook.name
        if prov is None or not executed.is_file():
            missing = paths.stage_dir(step.stem, profile) / "metrics.json" if prov is None else executed
            raise PipelineError(f"--from {steps[first].stem}: {step.stem} has no {paths.relative(missing)} for profile "
                                f"{profile!r}; rerun from {step.stem}")
        if prov["params_sha256"] != step.sha256:
            was = report.recorded_parameters(step.stem, profile)
            changed = sorted(k for k in step.parameters if k != "profile" and was.get(k) != step.parameters[k])
            raise PipelineError(
                f"--from {steps[first].stem}: the outputs of {step.stem} were made with other parameters (hash "
                f"{prov['params_sha256']}, this run {step.sha256}; changed: "
                + (", ".join(f"{k}={was.get(k)!r} -> {step.parameters[k]!r}" for k in changed) or "unknown")
                + f"); rerun from {step.stem}")


def kernel_name(requested: str = KERNEL) -> str:
    """``requested`` if Jupyter knows it; otherwise an error that says how to register it (no silent fallback)."""
    from jupyter_client.kernelspec import KernelSpecManager

    known = KernelSpecManager().find_kernel_specs()
    if requested not in known:
        raise PipelineError(f"--kernel {requested}: no such Jupyter kernel (known: {sorted(known)}); `make install` "
                            f"registers {KERNEL!r} for .venv, or pass --kernel with one of the known kernels")
    return requested


def execute(steps: list[Step], out_dir: Path, kernel: str = KERNEL, progress: bool = True) -> list[Step]:
    """Run the steps in order; stop at the first failure, naming the notebook and the cell."""
    for i, step in enumerate(steps, 1):
        step.output = out_dir / step.notebook.name
        print(f"[{i}/{len(steps)}] {step.notebook.name} (parameters {step.sha256})", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(step.notebook), str(step.output), parameters=step.parameters,
                                kernel_name=kernel, cwd=str(step.notebook.parent),
                                progress_bar=progress, report_mode=False)
        except pm.PapermillExecutionError as exc:
            raise PipelineError(
                f"{step.notebook.name} failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
                f"{exc.ename}: {exc.evalue}\nThe partly executed notebook is {step.output}") from None
        step.seconds = time.perf_counter() - start
        print(f"      done in {step.seconds:.1f} s", flush=True)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xaiprune.study.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help="params/<profile>.yaml (smoke, default, budget, full)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter (repeatable); STEM.NAME=VALUE for one notebook")
    parser.add_argument("--check", action="store_true",
                        help="check the profile, the overrides, the kernel and the data file; run nothing")
    parser.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel to run the notebooks in (default {KERNEL})")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's cell progress bars")
    parser.add_argument("--from", dest="start", metavar="STEM",
                        help="start at this notebook (e.g. 04_pruning_comparison); the earlier ones' outputs are "
                             "reused only if they were made with this run's parameters")
    parser.add_argument("--to", dest="stop", metavar="STEM",
                        help="stop after this notebook (e.g. --from 04_pruning_comparison --to 04_pruning_comparison "
                             "runs 04 alone); the report is then not built")
    args = parser.parse_args(argv)

    try:
        steps = plan(discover(), load_profile(args.profile), args.param)
        first = 0
        if args.start:
            stems = [st.stem for st in steps]
            if args.start not in stems:
                raise PipelineError(f"--from {args.start}: no such notebook (known: {stems})")
            first = stems.index(args.start)
            check_reused(steps, first, args.profile)
        last = len(steps)
        if args.stop:
            stems = [st.stem for st in steps]
            if args.stop not in stems or stems.index(args.stop) < first:
                raise PipelineError(f"--to {args.stop}: expected a notebook at or after the first one run (known: {stems})")
            last = stems.index(args.stop) + 1
        kernel = kernel_name(args.kernel)
        print(data_note(steps), flush=True)
        if args.check:
            for st in steps:
                print(f"  {st.stem:24s} {st.sha256}  {'reused' if steps.index(st) < first else 'runs'}")
            print(f"profile {args.profile!r}: parameters valid; kernel {kernel!r}; nothing was run (--check)")
            return 0
        out_dir = paths.report_dir(args.profile)
        reused = steps[:first]
        for st in reused:  # earlier notebooks of this profile stay in the report, marked as reused
            st.output = out_dir / st.notebook.name
        start, start_state = time.perf_counter(), runinfo.machine_state()
        execute(steps[first:last], out_dir, kernel, progress=not args.no_progress)
        if last < len(steps):
            print(f"stopped after {steps[last - 1].stem} (--to): no report built")
            return 0
        index = report.build(args.profile, steps, out_dir, wall_seconds=time.perf_counter() - start,
                             start_state=start_state)
    except (PipelineError, report.ReportError) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
