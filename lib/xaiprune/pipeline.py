"""Run the numbered notebooks in order with papermill and build the report.

    python -m xaiprune.pipeline --profile smoke|default|full [-p name=value ...] [-p 02_train.epochs=3]

Parameters come from ``params/<profile>.yaml``: ``shared`` keys go to every notebook that declares
them, ``notebooks.<stem>`` keys to that notebook only, and ``-p`` overrides on top (``name=value``
for every notebook that declares ``name``, ``stem.name=value`` for one notebook; values are parsed as
YAML, so ``-p epochs=2`` is an int and ``-p archs=[small_cnn]`` a list). Before anything runs, every
notebook's parameters cell is inspected and any name no notebook declares is rejected (papermill
itself only warns). Executed notebooks go to ``reports/<profile>/``; the first failure stops the run
and names the notebook and the cell. The last step writes ``index.html`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import papermill as pm
import yaml

from xaiprune import paths

KERNEL = "xaiprune"  # registered by `make install`; falls back to the running interpreter's kernel
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}


class PipelineError(RuntimeError):
    """Bad profile, parameters or notebooks; raised before any notebook runs."""


@dataclass
class Step:
    """One notebook of the run: where it is, what it gets, and how it went."""

    notebook: Path
    declared: dict
    parameters: dict = field(default_factory=dict)
    output: Path | None = None
    seconds: float | None = None

    @property
    def stem(self) -> str:
        return self.notebook.stem


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
    return {"shared": spec.get("shared") or {}, "notebooks": spec.get("notebooks") or {}}


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """Split ``-p`` items into global ``{name: value}`` and per-notebook ``{stem: {name: value}}``."""
    shared, per_nb = {}, {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"-p {item!r}: expected name=value or notebook_stem.name=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        if "." in key:
            stem, name = key.split(".", 1)
            per_nb.setdefault(stem, {})[name] = value
        else:
            shared[key] = value
    return shared, per_nb


def _check_type(step: Step, name: str, value) -> None:
    """Refuse a value whose type differs from the literal in the notebook's parameters cell."""
    declared = step.declared[name].get("inferred_type_name", "None")
    expected = _TYPES.get(declared.split("[")[0])
    if expected is None:
        return
    if (isinstance(value, bool) and declared != "bool") or not isinstance(value, expected):
        raise PipelineError(f"{step.stem}: parameter {name} expects {declared}, got {value!r}")


def plan(steps: list[Step], spec: dict, overrides: list[str]) -> list[Step]:
    """Assign each step its parameters; reject any name that its target notebooks do not declare."""
    by_stem = {s.stem: s for s in steps}
    declared_anywhere = set().union(*(s.declared for s in steps))
    o_shared, o_per_nb = parse_overrides(overrides)
    # Precedence, lowest first: profile shared, profile per-notebook, -p name=, -p stem.name=.
    layers = [("shared", spec["shared"]), ("notebooks", spec["notebooks"]),
              ("shared", o_shared), ("notebooks", o_per_nb)]

    errors = [f"parameter {n!r} is declared by no notebook"
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
    if errors:
        raise PipelineError("rejected before running anything:\n  " + "\n  ".join(errors))

    for step in steps:
        step.parameters = {}
        for kind, values in layers:
            values = values if kind == "shared" else (values.get(step.stem) or {})
            step.parameters.update({k: v for k, v in values.items() if k in step.declared})
        for name, value in step.parameters.items():
            _check_type(step, name, value)
    return steps


def kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def execute(steps: list[Step], out_dir: Path, progress: bool = True) -> list[Step]:
    """Run the steps in order; stop at the first failure, naming the notebook and the cell."""
    kernel = kernel_name()
    for i, step in enumerate(steps, 1):
        step.output = out_dir / step.notebook.name
        print(f"[{i}/{len(steps)}] {step.notebook.name} {step.parameters}", flush=True)
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
    parser = argparse.ArgumentParser(prog="python -m xaiprune.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help="params/<profile>.yaml (smoke, default, full)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter (repeatable); STEM.NAME=VALUE for one notebook")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's cell progress bars")
    parser.add_argument("--from", dest="start", metavar="STEM",
                        help="start at this notebook (e.g. 04_pruning_comparison); earlier ones must have run "
                             "with the same parameters, since their artifacts are reused")
    args = parser.parse_args(argv)

    from xaiprune import report  # heavy imports (nbconvert) only once arguments are valid

    try:
        steps = plan(discover(), load_profile(args.profile), args.param)
        first = 0
        if args.start:
            stems = [st.stem for st in steps]
            if args.start not in stems:
                raise PipelineError(f"--from {args.start}: no such notebook (known: {stems})")
            first = stems.index(args.start)
        out_dir = paths.report_dir(args.profile)
        reused = [st for st in steps[:first] if (out_dir / st.notebook.name).is_file()]
        for st in reused:  # earlier notebooks of this profile stay in the report, marked as reused
            st.output = out_dir / st.notebook.name
        start = time.perf_counter()
        execute(steps[first:], out_dir, progress=not args.no_progress)
    except PipelineError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    index = report.build(args.profile, reused + steps[first:], out_dir, wall_seconds=time.perf_counter() - start)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
