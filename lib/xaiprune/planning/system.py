"""The system model: devices, links, segment profiles, the accuracy surrogate, and plan evaluation.

A request starts on the source device, which holds the image (I bytes). Segments s = 1..S run in
order; segment s runs on device j_s at pruning level l_s. With F[s,l] FLOPs, O[s,l] bytes leaving
segment s, W[s,l] weight bytes and P[s,l] peak activation bytes (all measured from really pruned
models, notebook 04), device speed c_j, link bandwidth B[j,k] (B[j,j] infinite), compute energy e_j
and radio power p_j:

    latency   T = I / B[src, j_1] + sum_s F[s,l_s] / c_{j_s} + sum_{s<S} O[s,l_s] / B[j_s, j_{s+1}]
                  + O[S] / B[j_S, src]                                   (the label goes back)
                  + h * (hops between two devices)                       (the serving system's own cost)
    memory    for each j: sum_{s on j} W[s,l_s] + P[s,l_s] <= m_j
    energy    for each j: e_j * FLOPs on j + p_j * seconds j transmits <= E_j
    accuracy  A(l_1..l_S) ~= max(A_floor, A_0 * prod_s rho[s, l_s])     (the surrogate)

where rho[s,l] = a[s,l] / A_0 is the measured retention when only segment s is pruned at level l
(monotone non-increasing in l, at most 1) and A_floor the lowest accuracy measured (a collapsed
model's). The log of the product is linear in the level choice, which is what makes the integer
program of :mod:`xaiprune.planning.nlp` linearisable. This is the project's reconstruction
of Baccour et al. (ICC 2023; FGCS 2024): see docs/DESIGN.md. Used by ``05_nlp.ipynb``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from xaiprune import paths

MB = 1e6  # memory and file sizes use decimal megabytes, as datasheets do
DEVICE_FIELDS = {"speed_gflops": 1e9, "memory_mb": MB, "energy_budget_j": 1.0,
                 "energy_nj_per_flop": 1e-9, "radio_w": 1.0}


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Device:
    name: str
    speed: float          # FLOP/s
    memory: float         # bytes
    energy_budget: float  # J per request
    energy_per_flop: float  # J/FLOP
    radio_power: float    # W while transmitting
    available: bool = True


@dataclass
class Scenario:
    """Devices, links (bytes/s, ``inf`` on the diagonal), the source device and the deadline (s)."""

    name: str
    devices: list[Device]
    bandwidth: np.ndarray
    source: int
    deadline: float
    link_latency: np.ndarray | None = None  # s per transfer, optional
    hop_overhead: float = 0.0  # s the serving system adds to every message between two devices (measured, not emulated)

    @property
    def n(self) -> int:
        return len(self.devices)

    def index(self, name: str) -> int:
        return [d.name for d in self.devices].index(name)

    def with_changes(self, deadline: float | None = None, bandwidth_scale: float = 1.0,
                     unavailable: tuple[str, ...] = ()) -> "Scenario":
        """A copy with another deadline (s), the link bandwidths scaled (by one factor, or an (N, N) array of them),
        or some devices unavailable."""
        bw = self.bandwidth * bandwidth_scale
        np.fill_diagonal(bw, np.inf)
        devices = [Device(**{**d.__dict__, "available": d.available and d.name not in unavailable})
                   for d in self.devices]
        return replace(self, devices=devices, bandwidth=bw, deadline=self.deadline if deadline is None else deadline)


def _positive(where: str, key: str, value, allow_zero: bool = False) -> float:
    if value is None:
        raise ScenarioError(f"{where}: missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ScenarioError(f"{where}: field {key!r} must be a {'non-negative' if allow_zero else 'positive'} "
                            f"number, got {value!r}")
    return float(value)


def parse_scenario(spec: dict, where: str = "scenario") -> Scenario:
    """Validate a scenario dict (the YAML's content) and convert it to SI units."""
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: expected a mapping with name, source, deadline_ms, devices, links")
    raw_devices = spec.get("devices")
    if not raw_devices or not isinstance(raw_devices, list):
        raise ScenarioError(f"{where}: field 'devices' must be a non-empty list")
    devices, names = [], []
    for i, d in enumerate(raw_devices):
        here = f"{where}: devices[{i}]"
        if not isinstance(d, dict) or not d.get("name"):
            raise ScenarioError(f"{here}: missing field 'name'")
        unknown = set(d) - set(DEVICE_FIELDS) - {"name", "available"}
        if unknown:
            raise ScenarioError(f"{here} ({d['name']}): unknown fields {sorted(unknown)}; expected {sorted(DEVICE_FIELDS)}")
        if d["name"] in names:
            raise ScenarioError(f"{here}: duplicate device name {d['name']!r}")
        v = {k: _positive(f"{here} ({d['name']})", k, d.get(k), allow_zero=k in ("energy_nj_per_flop", "radio_w"))
             * scale for k, scale in DEVICE_FIELDS.items()}
        names.append(d["name"])
        devices.append(Device(d["name"], v["speed_gflops"], v["memory_mb"], v["energy_budget_j"],
                              v["energy_nj_per_flop"], v["radio_w"], bool(d.get("available", True))))
    source = spec.get("source")
    if source not in names:
        raise ScenarioError(f"{where}: field 'source' must name a device ({names}), got {source!r}")
    deadline = spec.get("deadline_ms")
    if not isinstance(deadline, (int, float)) or isinstance(deadline, bool) or deadline <= 0:
        raise ScenarioError(f"{where}: field 'deadline_ms' must be > 0, got {deadline!r}")
    links = spec.get("links") or {}
    n = len(devices)
    default = _positive(f"{where}: links", "default_mbps", links.get("default_mbps"))
    bw = np.full((n, n), default * 1e6 / 8)
    lat = np.zeros((n, n))
    for i, pair in enumerate(links.get("pairs") or []):
        here = f"{where}: links.pairs[{i}]"
        for end in ("from", "to"):
            if pair.get(end) not in names:
                raise ScenarioError(f"{here}: field {end!r} names unknown device {pair.get(end)!r}; devices are {names}")
        a, b = names.index(pair["from"]), names.index(pair["to"])
        bw[a, b] = _positive(here, "mbps", pair.get("mbps")) * 1e6 / 8
        lat[a, b] = _positive(here, "latency_ms", pair.get("latency_ms", 0), allow_zero=True) / 1e3
    np.fill_diagonal(bw, np.inf)
    np.fill_diagonal(lat, 0.0)
    hop = _positive(f"{where}: links", "hop_overhead_ms", links.get("hop_overhead_ms", 0), allow_zero=True) / 1e3
    return Scenario(str(spec.get("name", where)), devices, bw, names.index(source), deadline / 1e3, lat, hop)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load ``params/scenarios/<name>.yaml`` (or a path) and validate it."""
    path = Path(name_or_path)
    if not path.suffix:
        path = paths.PARAMS / "scenarios" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (paths.PARAMS / "scenarios").glob("*.yaml"))
        raise ScenarioError(f"scenario {str(name_or_path)!r}: no file {path}; known scenarios: {known}")
    return parse_scenario(yaml.safe_load(path.read_text()), where=str(path))


@dataclass
class Profiles:
    """Measured per-segment costs and accuracy retention, indexed [segment, level].

    ``flops``, ``weight_bytes``, ``peak_bytes``, ``out_bytes``: arrays (S, L); ``retention``: (S, L)
    surrogate factors rho[s, l] in (0, 1]; ``base_accuracy``: A_0 of the unpruned model;
    ``input_bytes``: I, the image sent by the source.
    """

    segments: list[str]
    levels: list[float]
    flops: np.ndarray
    weight_bytes: np.ndarray
    peak_bytes: np.ndarray
    out_bytes: np.ndarray
    retention: np.ndarray
    base_accuracy: float
    input_bytes: float
    metric: str = "acc"
    floor: float = 0.0  # the surrogate never predicts less (the collapsed model's accuracy)

    @property
    def S(self) -> int:
        return len(self.segments)

    @property
    def L(self) -> int:
        return len(self.levels)

    def accuracy(self, levels: list[int], floored: bool = True) -> float:
        """Surrogate accuracy max(floor, A_0 * prod rho[s, l_s]) of a choice of level indices.

        The floor is constant, so maximising the product (what the solvers do, in log form) maximises
        the floored surrogate too.
        """
        product = self.base_accuracy * float(np.prod([self.retention[s, l] for s, l in enumerate(levels)]))
        return max(self.floor, product) if floored else product


def profiles_from_sensitivity(table: pd.DataFrame, input_bytes: float, metric: str = "acc",
                              floor: float = 1e-3) -> Profiles:
    """Build :class:`Profiles` from the per-segment sensitivity table of ``04_pruning_comparison``.

    Costs are the measured values of draw 0 (they barely vary across draws); accuracy is the mean over
    draws. Retention rho[s,l] = a[s,l]/a[s,0], made monotone non-increasing in l (running minimum:
    pruning more never helps in the surrogate), capped at 1 and floored at ``floor`` (for the log).
    The surrogate's own floor is the lowest accuracy measured in the table: without fine-tuning a
    heavily pruned network collapses to one answer (the majority-class rate for ACC), and the
    product of retentions would fall below what any measured model reaches. A segment whose accuracy is
    not finite at some level, or not > 0 unpruned, is refused (a ValueError naming the metric and segment).
    """
    if metric not in ("acc", "auc"):
        raise ValueError(f"metric={metric!r}; expected 'acc' or 'auc'")
    if not 0 < floor <= 1:
        raise ValueError(f"floor={floor}: expected a retention floor in (0, 1] (the surrogate takes its log)")
    segments = list(dict.fromkeys(table["segment"]))
    levels = sorted(table["level"].unique())
    cost = table[table["draw"] == table["draw"].min()].set_index(["segment", "level"])
    acc = table.groupby(["segment", "level"])[metric].mean()

    def grid(frame, col):
        return np.array([[float(frame.loc[(s, l), col]) for l in levels] for s in segments])

    a = np.array([[acc.loc[(s, l)] for l in levels] for s in segments], dtype=float)
    for i, row in enumerate(a):
        if not np.isfinite(row).all() or not row[0] > 0:
            raise ValueError(f"{metric} of segment {segments[i]!r}: {dict(zip(levels, row.tolist()))}; expected finite "
                             f"values, > 0 unpruned (retention is relative to it)")
    base = float(a[:, 0].mean())
    rho = np.clip(np.minimum.accumulate(a / a[:, :1], axis=1), floor, 1.0)
    return Profiles(segments, [float(l) for l in levels], grid(cost, "macs") * 2, grid(cost, "weight_bytes"),
                    grid(cost, "peak_bytes"), grid(cost, "out_bytes"), rho, base, float(input_bytes), metric,
                    floor=float(a.min()))


@dataclass
class Plan:
    """Device index and level index per segment."""

    devices: list[int]
    levels: list[int]

    def describe(self, scenario: Scenario, profiles: Profiles) -> str:
        return " -> ".join(f"{profiles.segments[s]}@{scenario.devices[j].name}"
                           + (f"[{profiles.levels[l]:.0%}]" if profiles.levels[l] > 0 else "")
                           for s, (j, l) in enumerate(zip(self.devices, self.levels)))


@dataclass
class Evaluation:
    """Everything a plan costs; ``violations`` names each violated constraint."""

    latency: float
    compute_time: float
    transfer_time: float
    memory: np.ndarray
    energy: np.ndarray
    accuracy: float
    violations: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return not self.violations

    @property
    def total_energy(self) -> float:
        return float(self.energy.sum())


def transfer_seconds(scenario: Scenario, a: int, b: int, nbytes: float, multiplier: float = 1.0,
                     overhead: bool = True) -> float:
    """Seconds to send ``nbytes`` from device ``a`` to device ``b``: the project's one transfer model.

    ``nbytes / (B[a, b] * multiplier) + latency[a, b] + h``; 0 on the same device; ``inf`` when the link
    carries nothing (bandwidth x multiplier <= 0), so no deadline can be met over it. ``multiplier`` is
    the bandwidth trace's factor for this link at this request (1: the scenario's nominal bandwidth).
    ``h`` is the scenario's ``hop_overhead``: what the serving system itself adds to every message (framing,
    the receiver's wake-up, the coordinator's bookkeeping), measured on the running system by
    :func:`xaiprune.serving.analysis.hop_overhead`; ``overhead=False`` leaves it out, which is what the link
    emulation waits (the system adds it by itself). Used by :func:`evaluate` (and so by
    :mod:`xaiprune.planning.env`), the masks of :mod:`xaiprune.planning.feasibility`, :mod:`xaiprune.planning.nlp`
    and the link emulation of :mod:`xaiprune.serving`.
    """
    if a == b:
        return 0.0
    rate = scenario.bandwidth[a, b] * multiplier
    if not rate > 0:
        return math.inf
    lat = 0.0 if scenario.link_latency is None else scenario.link_latency[a, b]
    return float(nbytes / rate + lat + (scenario.hop_overhead if overhead else 0.0))


def evaluate(plan: Plan, scenario: Scenario, profiles: Profiles, tol: float = 1e-9) -> Evaluation:
    """Latency, per-device memory and energy, surrogate accuracy and violated constraints of a plan."""
    S = profiles.S
    if len(plan.devices) != S or len(plan.levels) != S:
        raise ValueError(f"plan has {len(plan.devices)} devices and {len(plan.levels)} levels for {S} segments")
    src = scenario.source
    memory, energy = np.zeros(scenario.n), np.zeros(scenario.n)
    hops = [(src, plan.devices[0], profiles.input_bytes)]
    hops += [(plan.devices[s], plan.devices[s + 1], profiles.out_bytes[s, plan.levels[s]]) for s in range(S - 1)]
    hops.append((plan.devices[-1], src, profiles.out_bytes[-1, plan.levels[-1]]))
    transfer = 0.0
    for a, b, nbytes in hops:
        t = transfer_seconds(scenario, a, b, nbytes)
        transfer += t
        energy[a] += scenario.devices[a].radio_power * min(t, 1e30)  # a cut link: huge, and 0 J at 0 W (not NaN)
    compute = 0.0
    for s, (j, l) in enumerate(zip(plan.devices, plan.levels)):
        dev = scenario.devices[j]
        compute += profiles.flops[s, l] / dev.speed if dev.speed > 0 else math.inf  # speed 0 runs nothing
        memory[j] += profiles.weight_bytes[s, l] + profiles.peak_bytes[s, l]
        energy[j] += dev.energy_per_flop * profiles.flops[s, l]
    latency = compute + transfer
    violations = []
    if latency > scenario.deadline * (1 + tol):
        violations.append(f"deadline ({latency * 1e3:.1f} ms > {scenario.deadline * 1e3:.1f} ms)")
    for j, dev in enumerate(scenario.devices):
        if memory[j] > dev.memory * (1 + tol):
            violations.append(f"memory of {dev.name} ({memory[j] / MB:.1f} MB > {dev.memory / MB:.1f} MB)")
        if energy[j] > dev.energy_budget * (1 + tol):
            violations.append(f"energy of {dev.name} ({energy[j]:.3f} J > {dev.energy_budget:.3f} J)")
        if not dev.available and j in plan.devices:
            violations.append(f"availability of {dev.name}")
    return Evaluation(latency, compute, transfer, memory, energy, profiles.accuracy(plan.levels), violations)


def random_instance(n_segments: int, n_devices: int, n_levels: int, seed: int = 0,
                    tightness: float = 1.0) -> tuple[Scenario, Profiles]:
    """A random, plausible instance for solver tests and scaling studies (not a measured model).

    Costs fall with the level roughly as real pruned segments do; ``tightness`` > 1 shrinks the
    deadline, memories and energy budgets (more pruning needed), < 1 loosens them.
    """
    rng = np.random.default_rng(seed)
    levels = list(np.round(np.linspace(0, 0.9, n_levels), 3)) if n_levels > 1 else [0.0]
    keep = 1 - np.array(levels)
    flops = np.outer(rng.uniform(2e7, 1.5e8, n_segments), keep ** rng.uniform(1.2, 2.0))
    weights = np.outer(rng.uniform(1e5, 2e7, n_segments), keep ** 1.8)
    peak = np.outer(rng.uniform(1e4, 2e5, n_segments), keep)
    out = np.outer(rng.uniform(2e3, 6e4, n_segments), keep)
    drop = np.sort(rng.uniform(0, 0.6, (n_segments, n_levels)), axis=1) * keep[None, :] ** 0 * np.array(levels)[None, :]
    retention = np.clip(1 - drop, 1e-3, 1.0)
    retention[:, 0] = 1.0
    profiles = Profiles([f"seg{s}" for s in range(n_segments)], [float(l) for l in levels], flops, weights, peak,
                        out, np.minimum.accumulate(retention, axis=1), 0.9, 3136.0)
    total_w = weights[:, 0].sum() + peak[:, 0].sum()
    devices = [Device(f"d{j}", rng.uniform(4e9, 2e10), rng.uniform(0.3, 0.8) * total_w / tightness,
                      rng.uniform(0.05, 0.3) / tightness, rng.uniform(0.3e-9, 1e-9), rng.uniform(0.5, 1.2))
               for j in range(n_devices)]
    bw = rng.uniform(1e6, 1e7, (n_devices, n_devices))
    np.fill_diagonal(bw, np.inf)
    deadline = (flops[:, 0].sum() / 1e10 + out[:, 0].sum() / 5e6) / tightness
    return Scenario(f"random-{seed}", devices, bw, 0, deadline, np.zeros((n_devices, n_devices))), profiles


_PROFILE_ARRAYS = ("flops", "weight_bytes", "peak_bytes", "out_bytes", "retention")


def save_profiles(profiles: Profiles, path: Path) -> Path:
    """Write :class:`Profiles` as JSON (``05_nlp`` writes them, ``06_rl`` reads them)."""
    payload = {k: (v.tolist() if k in _PROFILE_ARRAYS else v) for k, v in profiles.__dict__.items()}
    Path(path).write_text(json.dumps(payload, indent=1))
    return Path(path)


def load_profiles(path: Path) -> Profiles:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run 05_nlp.ipynb first")
    raw = json.loads(path.read_text())
    return Profiles(**{k: (np.array(v) if k in _PROFILE_ARRAYS else v) for k, v in raw.items()})
