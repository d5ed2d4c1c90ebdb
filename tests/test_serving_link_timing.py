"""The link estimate measures the real send: with emulation off it tracks a throttled loopback link.

``benchmarks/link_tracking.py`` runs in a network namespace of its own (``unshare -n``: root on Linux, with ``tc``),
throttles its loopback to 8 then 2 Mbit/s while two devices serve a plan whose activation crosses the link, and
compares the planner's estimate of that link over each phase with the link's capacity and the filter's rate.
With the sender's emulated wait as the measurement (0 without emulation) the estimate would sit at its clip, 10x
the nominal bandwidth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import needs_real_data
from serving_setup import config, setup  # noqa: F401 (setup: fixture)
from xaiprune import paths

CAN_THROTTLE = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("tc") and sys.platform == "linux"


@needs_real_data
@pytest.mark.skipif(not CAN_THROTTLE, reason="needs root, unshare and tc to throttle a loopback of its own")
def test_with_emulation_off_the_estimate_tracks_a_throttled_loopback_link_within_20_percent(setup, tmp_path):
    plan = {"devices": ["d0", "d1", "d1"], "levels": [0.0, 0.0, 0.0]}  # segment 0's output crosses d0 -> d1
    cfg = config(setup, 2, [{"name": "fixed", "planner": "fixed", "criterion": "l1", "plan": plan}], n_requests=20)
    (tmp_path / "run.json").write_text(cfg.to_json())
    out = tmp_path / "tracking.json"
    done = subprocess.run(["unshare", "-n", sys.executable, str(paths.ROOT / "benchmarks" / "link_tracking.py"),
                           "--config", str(tmp_path / "run.json"), "--rates", "8,2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["nominal_bytes_s"] == 50e6 / 8
    assert [p["rate_mbit"] for p in result["phases"]] == [8, 2]
    assert all(p["link"] == "d0 -> d1" and p["requests"] == 18 for p in result["phases"])
    assert result["tracking_error"] <= 0.2, result  # against the link's capacity (bulk TCP goodput through it)
    assert all(abs(p["error_vs_rate"]) <= 0.2 for p in result["phases"]), result  # and against the filter's rate
