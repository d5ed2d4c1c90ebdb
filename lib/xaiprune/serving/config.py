"""The run configuration every rank shares (JSON through rank 0's TCP store) and its validation."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xaiprune import paths
from xaiprune.planning import system

PLANNERS = ("nlp", "rl", "no_pruning", "static", "local", "fixed")
FAULTS = ("kill", "hang", "straggler", "partition", "rejoin", "duplicate", "bad_header", "bad_shape")
VIEWS = ("estimate", "oracle")  # what a planner sees of the links (see xaiprune.serving.planning)
POLICY_KEYS = {"name", "planner", "criterion", "agent", "level", "plan", "view", "window", "shield"}
SHIELD_KEYS = {"margin", "accuracy_share"}
FAULT_KEYS = {"policy", "device", "request", "at_s", "kind", "peer", "delay_s", "down_s"}


def resolve(path: str | os.PathLike) -> Path:
    """A path of the config: absolute, or relative to the project root (the same on every host)."""
    p = Path(path)
    return p if p.is_absolute() else paths.ROOT / p


def rank_order(scenario: system.Scenario) -> list[int]:
    """Rank r runs device ``rank_order(scenario)[r]``: the source is rank 0, the others follow in order."""
    return [scenario.source] + [j for j in range(scenario.n) if j != scenario.source]


def _shield_ok(shield) -> bool:
    """A policy's ``shield``: a dict with a ``margin`` in [0, 1) and an ``accuracy_share`` in [0, 1], both optional."""
    if not isinstance(shield, dict) or set(shield) - SHIELD_KEYS:
        return False
    number = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in shield.values())
    return number and 0 <= shield.get("margin", 0) < 1 and 0 <= shield.get("accuracy_share", 0) <= 1


@dataclass
class RunConfig:
    """Everything every rank needs, as JSON; rank 0 shares it with the others through the TCP store.

    Paths are relative to the project root (or absolute). ``policies`` is a list of
    ``{"name", "planner", "criterion", "agent", "level", "plan"}``: planner one of :data:`PLANNERS`
    (``nlp`` the exact optimum per request, ``rl`` a saved agent, ``no_pruning`` the best placement
    unpruned, ``static`` every segment at ``level`` with the best placement, ``local`` the whole
    unpruned model on the source, ``fixed`` the ``plan`` ``{"devices": [names], "levels": [fractions]}``
    for every request). ``view`` (default ``estimate``) is what the planner knows of the links: an
    estimate from past measured transfers, or ``oracle``, the exact trace (a baseline no real coordinator
    has). ``shield`` (optional, ``{"margin", "accuracy_share"}``) checks every plan of the policy at decision
    time (:class:`xaiprune.planning.shield.Shield`). ``window`` (default: the config's) overrides the config's ``window`` for this policy. Whatever
    the planner, a plan that names a device the ward does not have, a dead, excluded or unavailable one,
    or a cut link, is replaced by the exact optimum on the live ones. ``trace`` is a
    (T, N, N) list of bandwidth multipliers, request t seeing ``trace[t % T]``. ``window``: requests in
    flight at once (1: one after the other).

    ``fault`` is one dict or a list of them, ``{"policy", "device", "request" or "at_s", "kind", ...}``;
    the device acts at the first activation of that policy it receives at or after that request (or at
    least ``at_s`` seconds after the policy began, by the wall clocks of rank 0 and the device), and
    (except ``kill``, ``hang`` and ``partition``, which are for good) only on that policy's messages. Kinds:
    ``kill`` (the default): its process kills itself (SIGKILL); ``hang``: it stops serving while its
    heartbeat thread still beats (only a per-hop deadline can tell); ``straggler``: it waits ``delay_s``
    (default 1) before every activation; ``partition``: the TCP connection between it and the worker
    ``peer`` is closed both ways, so sends over it fail in gloo for the rest of the run (on one host;
    where the peer's process cannot be seen, a flag cuts the link for that policy, recorded as
    simulated); ``rejoin``: it goes dark for ``down_s`` (default 2: no heartbeat, every
    message dropped), then reboots (its built segments are gone) and beats again; ``duplicate``: it
    sends the first result it returns to the source twice; ``bad_header`` / ``bad_shape``: it sends its
    next message once with a header field out of range / a tensor of the wrong shape.
    """

    arch: str
    flag: str
    size: int
    checkpoint: str
    scores: dict[str, str]
    scenario: dict
    profiles: str
    policies: list[dict]
    n_requests: int = 0               # 0: the whole test split
    data_root: str = ""
    seed: int = 0
    trace: list | None = None
    emulate: bool = True
    heartbeat_s: float = 0.1
    dead_after_s: float = 1.0
    request_timeout_s: float = 5.0    # an attempt unanswered this long is sent again; also every send's limit
    max_attempts: int = 4
    fault: dict | list | None = None
    threads: int = 1                  # torch threads per process (one request runs at a time)
    window: int = 1                   # requests in flight at once
    hop_slack: float = 3.0            # a hop's deadline: hop_slack x its expected time + hop_margin_s
    hop_margin_s: float = 0.5
    strikes: int = 2                  # missed hop deadlines in a row after which a device is excluded
    ewma: float = 0.5                 # weight of the newest measured transfer in the bandwidth estimate

    def faults(self) -> list[dict]:
        """The faults to inject, as a list (``fault`` may be one dict)."""
        return [] if self.fault is None else [self.fault] if isinstance(self.fault, dict) else list(self.fault)

    def validate(self) -> "RunConfig":
        """Check the config before any process starts; errors name the field."""
        scenario = system.parse_scenario(self.scenario, where="config field scenario")
        errors = self._files()
        profile = system.load_profiles(resolve(self.profiles)) if resolve(self.profiles).is_file() else None
        errors += self._policies(scenario, profile)
        if not isinstance(self.n_requests, int) or self.n_requests < 0:
            errors.append(f"config field n_requests={self.n_requests!r}: expected 0 (all) or a positive integer")
        if self.trace is not None:
            t = np.asarray(self.trace, dtype=float)
            if t.ndim != 3 or t.shape[1:] != (scenario.n, scenario.n) or (t <= 0).any():
                errors.append(f"config field trace: expected positive multipliers of shape (T, {scenario.n}, "
                              f"{scenario.n}), got {t.shape}")
        for name in ("heartbeat_s", "dead_after_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                errors.append(f"config field {name}={getattr(self, name)}: expected a positive number of seconds")
        if self.dead_after_s < 3 * self.heartbeat_s:
            errors.append(f"config field dead_after_s={self.dead_after_s}: expected at least 3 heartbeats "
                          f"({3 * self.heartbeat_s} s)")
        for name in ("max_attempts", "window", "strikes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                errors.append(f"config field {name}={getattr(self, name)!r}: expected a positive integer")
        if not self.hop_slack >= 1 or not self.hop_margin_s > 0:
            errors.append(f"config fields hop_slack={self.hop_slack}, hop_margin_s={self.hop_margin_s}: expected "
                          "a slack of at least 1 and a positive margin (s)")
        if not 0 < self.ewma <= 1:
            errors.append(f"config field ewma={self.ewma}: expected a weight in (0, 1]")
        if self.fault is not None and not isinstance(self.fault, (dict, list)):
            errors.append(f"config field fault={self.fault!r}: expected a dict or a list of dicts")
        else:
            for i, f in enumerate(self.faults()):
                errors += self._fault(scenario, f, "fault" if isinstance(self.fault, dict) else f"fault[{i}]")
        if errors:
            raise ValueError("distributed run config rejected:\n  " + "\n  ".join(errors))
        return self

    def _files(self) -> list[str]:
        return [f"config field {name}: no file {resolve(value)}"
                for name, value in (("checkpoint", self.checkpoint), ("profiles", self.profiles),
                                    *((f"scores[{c}]", p) for c, p in self.scores.items()))
                if not resolve(value).is_file()]

    def _policies(self, scenario: system.Scenario, profile: system.Profiles | None) -> list[str]:
        errors = []
        if not self.policies:
            errors.append("config field policies: expected at least one policy")
        names = [p.get("name") for p in self.policies]
        if len(set(names)) != len(names) or not all(names):
            errors.append(f"config field policies: every policy needs a distinct name, got {names}")
        devices = [d.name for d in scenario.devices]
        for i, p in enumerate(self.policies):
            here = f"config field policies[{i}]"
            if set(p) - POLICY_KEYS:
                errors.append(f"{here}: unknown keys {sorted(set(p) - POLICY_KEYS)}")
            if not isinstance(p.get("window", 1), int) or p.get("window", 1) < 1:
                errors.append(f"{here}.window={p.get('window')!r}: expected a positive integer")
            if p.get("view", "estimate") not in VIEWS:
                errors.append(f"{here}.view={p.get('view')!r}: expected one of {VIEWS}")
            if p.get("planner") not in PLANNERS:
                errors.append(f"{here}.planner={p.get('planner')!r}: expected one of {PLANNERS}")
            if p.get("criterion", "lrp") not in self.scores:
                errors.append(f"{here}.criterion={p.get('criterion')!r}: no scores file for it "
                              f"(scores has {sorted(self.scores)})")
            if p.get("planner") == "fixed" and profile is not None:
                plan = p.get("plan") or {}
                devs, levs = plan.get("devices", []), plan.get("levels", [])
                missing = [d for d in devs if d not in devices]
                if missing:
                    errors.append(f"{here}.plan names devices {missing} the scenario does not have ({devices})")
                if len(devs) != len(profile.segments) or len(levs) != len(profile.segments) \
                        or any(lv not in profile.levels for lv in levs):
                    errors.append(f"{here}.plan={plan}: expected {len(profile.segments)} device "
                                  f"names of the scenario and {len(profile.segments)} levels of {profile.levels}")
            shield = p.get("shield")
            if shield is not None and not _shield_ok(shield):
                errors.append(f"{here}.shield={shield!r}: expected a dict with a margin in [0, 1) and an "
                              f"accuracy_share in [0, 1] (keys {sorted(SHIELD_KEYS)})")
            if p.get("planner") == "rl" and not resolve(str(p.get("agent", ""))).with_suffix(".zip").is_file():
                errors.append(f"{here}.agent: no agent file {p.get('agent')!r}")
        return errors

    def _fault(self, scenario: system.Scenario, f, here: str) -> list[str]:
        if not isinstance(f, dict):
            return [f"config field {here}={f!r}: expected a dict"]
        errors, devices = [], [d.name for d in scenario.devices]
        names = [p.get("name") for p in self.policies]
        workers = [d for d in devices if d != devices[scenario.source]]
        if f.get("policy") not in names:
            errors.append(f"config field {here}.policy={f.get('policy')!r}: expected one of {names}")
        if f.get("device") not in workers:
            errors.append(f"config field {here}.device={f.get('device')!r}: expected a device other "
                          f"than the source {devices[scenario.source]!r}, one of {devices}")
        if ("request" in f) == ("at_s" in f):
            errors.append(f"config field {here}: expected a request index 'request' or a time 'at_s', one of them")
        elif "request" in f and (not isinstance(f["request"], int) or f["request"] < 0):
            errors.append(f"config field {here}.request={f.get('request')!r}: expected a request index")
        elif "at_s" in f and (not isinstance(f["at_s"], (int, float)) or f["at_s"] < 0):
            errors.append(f"config field {here}.at_s={f['at_s']!r}: expected seconds after the policy began")
        kind = f.get("kind", "kill")
        if kind not in FAULTS:
            errors.append(f"config field {here}.kind={kind!r}: expected one of {FAULTS}")
        if kind == "partition" and (f.get("peer") not in workers or f.get("peer") == f.get("device")):
            errors.append(f"config field {here}.peer={f.get('peer')!r}: a partition cuts the link to another "
                          f"worker, one of {[w for w in workers if w != f.get('device')]}")
        for key in ("delay_s", "down_s"):
            if key in f and not (isinstance(f[key], (int, float)) and f[key] > 0):
                errors.append(f"config field {here}.{key}={f[key]!r}: expected a positive number of seconds")
        if set(f) - FAULT_KEYS:
            errors.append(f"config field {here}: unknown keys {sorted(set(f) - FAULT_KEYS)}")
        return errors

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls(**json.loads(text))
