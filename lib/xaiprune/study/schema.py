"""How a notebook parameter is declared and checked: a type, a default, a doc and checks.

A parameter is a :class:`Param`: a type (``"int"``, ``"float"``, ``"str"``, ``"bool"`` or
``"list[...]"`` of those), a default, a one-line doc and checks, each a function that returns what it
expected when a value fails it (``within(0, 1, hi_open=True)`` returns "a value in [0, 1)").
:func:`check_values` conforms and checks a notebook's values and lists every problem, each naming
the notebook, the parameter, the value and what was expected. The declarations themselves are in
:mod:`xaiprune.study.parameters`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

Check = Callable[[object], "str | None"]  # returns what was expected when the value fails, else None

class ParameterError(ValueError):
    """One or more parameters are invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid parameters:\n  " + "\n  ".join(problems))


# ----- checks -------------------------------------------------------------------------------------
def within(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A number in the interval; ``lo_open``/``hi_open`` exclude the bound."""
    text = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"

    def check(v):
        low_ok = lo is None or (v > lo if lo_open else v >= lo)
        high_ok = hi is None or (v < hi if hi_open else v <= hi)
        return None if low_ok and high_ok else f"a value in {text}"
    return check


def one_of(choices: Callable[[], list] | tuple) -> Check:
    """One of ``choices`` (a tuple, or a function giving them, read when the check runs)."""
    def check(v):
        options = list(choices() if callable(choices) else choices)
        return None if v in options else f"one of {options}"
    return check


def each(inner: Check) -> Check:
    """Every element of a list passes ``inner``."""
    def check(values):
        for i, v in enumerate(values):
            problem = inner(v)
            if problem:
                return f"every element {problem} (element {i} is {v!r})"
        return None
    return check


def nonempty(values) -> str | None:
    return None if len(values) else "a non-empty list"


def unique(values) -> str | None:
    return None if len(set(map(json.dumps, values))) == len(values) else "no repeated element"


def length(n: int) -> Check:
    return lambda values: None if len(values) == n else f"exactly {n} elements"


def optional(inner: Check) -> Check:
    """The empty string, or a value that passes ``inner``."""
    return lambda v: None if v == "" else (None if inner(v) is None else f"'' or {inner(v)}")


# ----- types --------------------------------------------------------------------------------------
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def conform(type_: str, value, where: str):
    """``value`` as ``type_`` (an int is accepted for a float and becomes one); raises :class:`_Mismatch` naming ``where``."""
    inner = re.fullmatch(r"list\[(.+)\]", type_)
    if inner:
        if not isinstance(value, list):
            raise _Mismatch(f"{where}={value!r}: expected a list of {inner.group(1)}, got {type(value).__name__}")
        return [conform(inner.group(1), v, f"{where}[{i}]") for i, v in enumerate(value)]
    kind = _SCALARS[type_]
    if isinstance(value, bool) and kind is not bool:
        raise _Mismatch(f"{where}={value!r}: expected {type_}, got bool")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise _Mismatch(f"{where}={value!r}: expected {type_}, got {type(value).__name__}")
    return value


class _Mismatch(Exception):
    pass


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its type, default, one-line doc and checks."""

    type: str
    default: object
    doc: str
    checks: tuple[Check, ...] = ()

    def but(self, **changes) -> "Param":
        return replace(self, **changes)




def check_values(stem: str, spec: dict[str, Param], values: dict, rules=()) -> dict:
    """``values`` (one per name of ``spec``) conformed to their types and checked, then ``rules`` over them all.

    Raises :class:`ParameterError` listing every problem; ``rules`` run only when every value passed.
    """
    problems, out = [], {}
    for name in sorted(set(values) - set(spec)):
        problems.append(f"{stem}: parameter {name!r} is not declared (it declares {sorted(spec)})")
    for name, param in spec.items():
        if name not in values:
            problems.append(f"{stem}: parameter {name!r} has no value")
            continue
        try:
            value = conform(param.type, values[name], name)
        except _Mismatch as exc:
            problems.append(f"{stem}: {exc}")
            continue
        failed = next((f for f in (c(value) for c in param.checks) if f), None)
        if failed:
            problems.append(f"{stem}: {name}={value!r}: expected {failed}")
        out[name] = value
    if not problems:
        problems = [f"{stem}: {p}" for rule in rules for p in rule(out)]
    if problems:
        raise ParameterError(problems)
    return out


def fingerprint(values: dict) -> str:
    """SHA-256 (first 16 hex digits) of the parameters that make a notebook's outputs (all but ``profile``)."""
    payload = json.dumps({k: v for k, v in values.items() if k != "profile"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Run:
    """A notebook's checked parameters, as :func:`xaiprune.study.parameters.begin` returns them.

    :func:`xaiprune.study.report.write_metrics` records ``profile`` and ``sha256`` in ``metrics.json``.
    """

    stem: str
    values: dict
    profile: str
    sha256: str


@dataclass
class Step:
    """One notebook of the run: where it is, what it gets, and how it went."""

    notebook: Path
    declared: dict
    parameters: dict = field(default_factory=dict)
    sha256: str = ""
    output: Path | None = None
    seconds: float | None = None

    @property
    def stem(self) -> str:
        return self.notebook.stem
