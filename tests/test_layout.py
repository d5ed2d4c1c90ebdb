"""The library's layout: one package per system, a small top level, layers that import downwards only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "xaiprune"
TOP = "top"
# What each package may import besides itself: the top level and the packages below it.
ALLOWED = {
    TOP: {TOP},
    "pruning": {TOP},
    "planning": {TOP, "pruning"},
    "serving": {TOP, "pruning", "planning"},
    "dyfip": {TOP, "pruning"},
    "compression": {TOP, "pruning"},
    "agilenn": {TOP, "pruning", "planning", "serving"},
    "study": {TOP},
}


def modules() -> dict[str, Path]:
    """Dotted module name (``pruning.prune``, ``data``) -> file, for every module of the library."""
    out = {}
    for path in LIB.rglob("*.py"):
        rel = path.relative_to(LIB).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts) or "__init__"] = path
    return out


def package_of(module: str) -> str:
    return module.split(".")[0] if "." in module or module in ALLOWED else TOP


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The library modules ``module`` imports anywhere in its file (function-level imports included)."""
    package = module.rsplit(".", 1)[0] if "." in module else ""
    if path.name == "__init__.py":
        package = module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, [package, base]))
            elif base == "xaiprune" or base.startswith("xaiprune."):
                base = base.removeprefix("xaiprune").lstrip(".")
            else:
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}" if base else alias.name
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xaiprune."):
                    found.add(alias.name.removeprefix("xaiprune."))
    return {m for m in found if m in known and m != module}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_few_top_level_modules_beside_one_package_per_system():
    top = [p.stem for p in LIB.glob("*.py") if p.stem != "__init__"]
    packages = [p.name for p in LIB.iterdir() if (p / "__init__.py").is_file()]
    assert len(top) <= 8, f"top-level modules: {sorted(top)}"
    assert set(packages) == set(ALLOWED) - {TOP}, sorted(packages)


@pytest.mark.parametrize("module", sorted(modules()))
def test_module_under_400_lines(module):
    lines = len(modules()[module].read_text().splitlines())
    assert lines <= 400, f"{module}: {lines} lines"


def test_packages_import_downwards_only():
    wrong = [f"{m} imports {d}" for m, deps in graph().items() for d in deps
             if package_of(d) != package_of(m) and package_of(d) not in ALLOWED[package_of(m)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    g, state, cycle = graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(g[m]):
            if d.endswith("__init__") or d in ALLOWED:  # a package's __init__ re-exports its own modules
                continue
            if state.get(d) == "open":
                cycle.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycle, " -> ".join(cycle[0])


def test_the_layout_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from xaiprune.planning import nlp\nfrom xaiprune import data\n")
    assert imports("study.x", bad, {"planning.nlp", "data"}) == {"planning.nlp", "data"}
