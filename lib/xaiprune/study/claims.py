"""The papers' claims against this run's evidence: the rows the notebooks wrote, in the protocol's order.

Every claim is declared once in :mod:`xaiprune.study.protocol`; the notebook that tests it writes its
row (``metrics["claims"]``, built by :func:`xaiprune.study.protocol.row`) with the measured value, its
corrected interval, the seeds and the verdict. :func:`claims` collects those rows from the notebooks'
metrics (as :func:`xaiprune.study.report.read_metrics` returns them), checks that each carries every key
the protocol requires and that no choice behind it was made on test, and fills a "not measured" row
for a claim whose notebook did not run. Under a profile with several architectures a claim may have one
row per architecture (``id[arch]``). The report page and the README's results table render these rows;
``reports/<profile>/summary.json`` carries them under ``claims``.
"""

from __future__ import annotations

from xaiprune.study import protocol
from xaiprune.study.protocol import MISSING, NOT, PARTLY, SUPPORTED  # noqa: F401  (the report's colours)


class ClaimError(ValueError):
    """A notebook wrote a claim row the protocol does not accept."""


def _rows_of(metrics: dict[str, dict | None]) -> list[tuple[str, dict]]:
    return [(stem, r) for stem, m in metrics.items() if m for r in (m.get("claims") or [])]


def _check(stem: str, r: dict) -> dict:
    lacking = [k for k in protocol.ROW_KEYS if k not in r]
    if lacking:
        raise ClaimError(f"{stem}: claim row {r.get('id', '?')!r} lacks {lacking}: rerun {stem}")
    if r["selection_split"] not in protocol.SELECTION_SPLITS:
        raise ClaimError(f"{stem}: claim {r['id']!r} made its choices on {r['selection_split']!r}; expected one of "
                         f"{protocol.SELECTION_SPLITS}")
    if r["verdict"] not in protocol.VERDICTS:
        raise ClaimError(f"{stem}: claim {r['id']!r} has verdict {r['verdict']!r}; expected one of {protocol.VERDICTS}")
    return r


def claims(metrics: dict[str, dict | None]) -> list[dict]:
    """One row per declared claim (per architecture where a notebook wrote several), in the protocol's order.

    A claim no notebook wrote a row for is "not measured", with the notebooks that should have.
    """
    written = _rows_of(metrics)
    out = []
    for cid, c in protocol.CLAIMS.items():
        mine = [_check(stem, r) for stem, r in written if r.get("id") == cid or str(r.get("id", "")).startswith(cid + "[")]
        out += mine or [protocol.missing(cid, f"Notebook {c.notebooks} did not run, or wrote no row for this claim.")]
    return out


def measured_text(r: dict) -> str:
    """``0.0123 [-0.0040, 0.0301]``: the measured value and its interval, or "not measured"."""
    m, i = r.get("measured"), r.get("interval")
    if m is None:
        return "not measured"
    shown = f"{m:.4g}" if isinstance(m, (int, float)) else str(m)
    if isinstance(i, (list, tuple)) and len(i) == 2 and all(isinstance(x, (int, float)) for x in i):
        shown += f" [{i[0]:.4g}, {i[1]:.4g}]"
    return shown
