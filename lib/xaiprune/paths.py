"""Every path of the project, from one place.

The project root is found from ``$XAIPRUNE_HOME`` if set, else by walking up from this file to the
folder that holds ``pyproject.toml`` (the checkout). Notebooks and the pipeline import these names
instead of building paths with f-strings. A notebook's outputs go to ``artifacts/<profile>/<stage>/``
(the profile given by the pipeline's ``--profile``), caches keyed by a hash of what made them
(trained models) to ``artifacts/models/``, shared by every profile.
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


PROFILE: str = "default"  # set by xaiprune.study.parameters.begin in each notebook (the pipeline names profiles explicitly)


def use_profile(profile: str) -> None:
    """Send :func:`artifact_dir` to ``artifacts/<profile>/``, so that profiles never overwrite each other."""
    global PROFILE
    PROFILE = profile


def stage_dir(stage: str, profile: str | None = None) -> Path:
    """Folder ``artifacts/<profile>/<stage>/`` of one notebook's outputs (not created)."""
    return ARTIFACTS / (profile or PROFILE) / stage


def artifact_dir(stage: str) -> Path:
    """:func:`stage_dir` of the current profile, created on demand (the notebook's own outputs)."""
    path = stage_dir(stage)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """``artifacts/models/``: trained checkpoints, shared by all profiles (each under the hash of its config)."""
    return ARTIFACTS / "models"


def report_dir(profile: str) -> Path:
    """Folder ``reports/<profile>/`` for executed notebooks and the report (created on demand)."""
    path = REPORTS / profile
    path.mkdir(parents=True, exist_ok=True)
    return path
