"""What a run records about itself: commit, machine, load, data files, package versions and parameters.

Written into ``summary.json`` under ``metadata`` and shown at the top of the report, so that a page read
later says what made it: the load average at the start and the end of the run tells whether its measured
times were taken on a quiet machine, and each data file's MD5 which data the numbers come from.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

from xaiprune import data, names, paths, train
from xaiprune.study.schema import Step


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_state() -> dict:
    """CPU model and count, and the 1-, 5- and 15-minute load averages now."""
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def read_flags(p: dict) -> list[str]:
    """The MedMNIST flags a notebook with parameters ``p`` reads: ``flag``, ``dyfip_flag``, ``second_flag``, and the
    hospital-wide model's three sources when it has ``hospital_archs`` or a flag is ``hospital``."""
    flags = {p.get("flag"), p.get("dyfip_flag"), p.get("second_flag")} - {None, ""}
    hospital = bool(p.get("hospital_archs")) or names.HOSPITAL in flags
    return sorted((flags - {names.HOSPITAL}) | (set(names.WARDS.values()) if hospital else set()))


def data_files(steps: list[Step]) -> dict[str, dict]:
    """Every MedMNIST file the run's notebooks read (:func:`read_flags` at their ``size``), with its MD5."""
    out = {}
    for step in steps:
        p = step.parameters
        for flag in read_flags(p):
            size, name = p.get("size", 28), data.file_name(flag, p.get("size", 28))
            if name in out:
                continue
            try:
                path = data.resolve(flag, size, p.get("data_root") or None)
                out[name] = {"path": paths.relative(path), "md5": data.md5sum(path)}
            except (data.DataError, ValueError) as exc:
                out[name] = {"error": str(exc).splitlines()[0]}
    return out


def run_metadata(profile: str, steps: list[Step], wall_seconds: float, start_state: dict | None = None) -> dict:
    return {
        "profile": profile,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "machine_start": start_state,
        "machine_end": machine_state(),
        "data_files": data_files(steps),
        "versions": train.package_versions(),
        "wall_seconds": round(wall_seconds, 1),
        "notebooks": {s.stem: {"parameters": s.parameters, "params_sha256": s.sha256,
                               "seconds": None if s.seconds is None else round(s.seconds, 1)}
                      for s in steps},
    }
