"""Every path of the project, from one place.

The project root is found from ``$XAIPRUNE_HOME`` if set, else by walking up from this file to the
folder that holds ``pyproject.toml`` (the checkout). Notebooks and the pipeline import these names
instead of building paths with f-strings.
"""

from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    env = os.environ.get("XAIPRUNE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "notebooks").is_dir():
            return parent
    # Installed outside a checkout: fall back to the working directory.
    return Path.cwd().resolve()


ROOT: Path = _find_root()
DATA: Path = ROOT / "data"
MEDMNIST_DIR: Path = DATA / "medmnist"  # downloads land here
ARTIFACTS: Path = ROOT / "artifacts"
REPORTS: Path = ROOT / "reports"
NOTEBOOKS: Path = ROOT / "notebooks"
PARAMS: Path = ROOT / "params"


def relative(path: Path) -> str:
    """``path`` relative to the project root when inside it (so that it means the same on every checkout)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def artifact_dir(stage: str) -> Path:
    """Folder ``artifacts/<stage>/`` for the outputs of one notebook (created on demand)."""
    path = ARTIFACTS / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def report_dir(profile: str) -> Path:
    """Folder ``reports/<profile>/`` for executed notebooks and the report (created on demand)."""
    path = REPORTS / profile
    path.mkdir(parents=True, exist_ok=True)
    return path
