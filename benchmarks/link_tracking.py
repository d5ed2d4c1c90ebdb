"""Does the serving system's link estimate track a real link? A throttled loopback link, emulation off.

Runs in a network namespace of its own, so that nothing else on the machine is slowed (root, Linux):

    unshare -n .venv/bin/python benchmarks/link_tracking.py --config run.json --out result.json

It brings up the namespace's loopback with an Ethernet MTU and a token-bucket filter (``tc qdisc ... tbf``, a
bucket of one packet) at the first of ``--rates`` Mbit/s, and serves the run config's first policy (two devices,
emulation off, a fixed plan whose hops cross the link) once per rate with :func:`xaiprune.serving.launch`, moving
the filter to the next rate when a phase's answers are written. For each phase it compares the planner's estimate
of the busiest link (:func:`xaiprune.serving.analysis.estimate_trajectory`: the EWMA of the measured transfers,
from the scenario's nominal bandwidth, as each policy's planner starts), its median over the second half of the
phase, with the link's capacity: the goodput of a plain bulk TCP transfer through the same filter (the filter's
rate counts the TCP/IP headers and the acknowledgements that share the loopback's queue; no application gets
it, and it is reported beside). ``tracking_error`` is the largest |estimate / goodput - 1| over the phases. The
result is a JSON file; the test ``tests/test_serving_link_timing.py`` runs it and holds it to 20%.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

from xaiprune import serving
from xaiprune.planning import system
from xaiprune.serving import analysis

SKIP = 2  # requests of a phase that may have crossed the link before the filter moved to its rate


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def throttle(mbit: float, first: bool) -> None:
    """The loopback's egress at ``mbit`` Mbit/s (a bucket of one packet: a burst would make short sends look fast)."""
    if first:
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "set", "lo", "mtu", "1500")  # a bucket smaller than a 64 KB loopback packet never passes it
    sh("tc", "qdisc", "add" if first else "change", "dev", "lo", "root", "tbf", "rate", f"{mbit}mbit",
       "burst", "1600", "latency", "500ms")


def goodput(nbytes: int = 1 << 18) -> float:
    """Bytes/s of one plain TCP transfer of ``nbytes`` on loopback (what the filter lets an application send)."""
    server = socket.create_server(("127.0.0.1", 0))

    def sink():
        conn, _ = server.accept()
        got = 0
        while got < nbytes:
            got += len(conn.recv(1 << 16))
        conn.sendall(b"x")
        conn.close()

    threading.Thread(target=sink, daemon=True).start()
    with socket.create_connection(server.getsockname()) as c:
        start = time.perf_counter()
        c.sendall(b"\0" * nbytes)
        c.recv(1)
        seconds = time.perf_counter() - start
    server.close()
    return nbytes / seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a run config (RunConfig JSON), emulation off")
    parser.add_argument("--rates", default="16,4", help="Mbit/s of the link, phase by phase (comma separated)")
    parser.add_argument("--out", required=True, help="where the result JSON goes")
    args = parser.parse_args(argv)
    cfg = serving.RunConfig.from_json(Path(args.config).read_text()).validate()
    if cfg.emulate:
        parser.error(f"--config {args.config}: emulate must be false (the link here is real)")
    rates = [float(r) for r in args.rates.split(",")]
    cfg.policies = [{**cfg.policies[0], "name": f"phase {k + 1}"} for k in range(len(rates))]
    folder = Path(args.out).with_suffix("")
    phases = []
    for k, rate in enumerate(rates):  # each rate's capacity first, while nothing else crosses the link
        throttle(rate, first=k == 0)
        phases.append({"rate_mbit": rate, "goodput_bytes_s": goodput()})
    throttle(rates[0], first=False)

    def change():  # the coordinator writes requests.jsonl at the end of each policy: then the next rate
        for k, rate in enumerate(rates[1:], 1):
            while not (folder / "requests.jsonl").is_file() or \
                    sum(1 for _ in open(folder / "requests.jsonl")) < k * cfg.n_requests:
                time.sleep(0.005)
            throttle(rate, first=False)

    threading.Thread(target=change, daemon=True).start()
    out = serving.launch(cfg, folder, progress=False, overwrite=True)
    ward = system.parse_scenario(cfg.scenario)
    for p, (_, g) in zip(phases, out.requests.groupby("policy", sort=True)):
        g = g.set_index("request")
        a, b = analysis.busiest_hop(g, ward)
        trajectory = analysis.estimate_trajectory(g[g.index >= SKIP], ward, a, b, cfg.ewma)
        p.update(link=f"{a} -> {b}", requests=len(trajectory),
                 estimate_bytes_s=float(trajectory.iloc[len(trajectory) // 2:].median()),
                 last_bytes_s=float(trajectory.iloc[-1]))
        p["error_vs_rate"] = p["estimate_bytes_s"] / (p["rate_mbit"] * 1e6 / 8) - 1
        p["error_vs_goodput"] = p["estimate_bytes_s"] / p["goodput_bytes_s"] - 1
    result = {"nominal_bytes_s": float(ward.bandwidth[0, 1]), "ewma": cfg.ewma, "phases": phases,
              "tracking_error": max(abs(p["error_vs_goodput"]) for p in phases)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
