"""Notebooks tell the story and call the library: short, and no long function defined in a cell."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_LINES = 350      # source lines of a notebook, markdown and code
MAX_FUNCTION = 10    # lines of a function defined in a notebook, its def line included


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source_lines(path: Path) -> int:
    return sum(len("".join(c["source"]).splitlines()) for c in cells(path))


def long_functions(code: str) -> list[tuple[str, int]]:
    """(name, lines) of every function in ``code`` longer than MAX_FUNCTION lines; IPython magics are skipped."""
    clean = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())
    out = []
    for node in ast.walk(ast.parse(clean)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and hasattr(node, "end_lineno"):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION:
                out.append((getattr(node, "name", "lambda"), n))
    return out


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_short(notebook):
    assert source_lines(notebook) < MAX_LINES, f"{notebook.name}: {source_lines(notebook)} source lines"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defines_no_long_function(notebook):
    found = [f for c in cells(notebook) if c["cell_type"] == "code" for f in long_functions("".join(c["source"]))]
    assert not found, f"{notebook.name}: move these into the library: {found}"


def test_the_function_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    assert long_functions(f"%matplotlib inline\ndef f():\n{body}\n") == [("f", MAX_FUNCTION + 1)]
    assert long_functions("def g():\n    return 1\n") == []
