"""The run configuration every rank shares (JSON through rank 0's TCP store) and its validation."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xaiprune import paths, system

PLANNERS = ("nlp", "rl", "no_pruning", "static", "local", "fixed")
FAULTS = ("kill", "duplicate", "bad_header", "bad_shape")  # what fault injection does (see RunConfig)
POLICY_KEYS = {"name", "planner", "criterion", "agent", "level", "plan"}
FAULT_KEYS = {"policy", "device", "request", "kind"}


def resolve(path: str | os.PathLike) -> Path:
    """A path of the config: absolute, or relative to the project root (the same on every host)."""
    p = Path(path)
    return p if p.is_absolute() else paths.ROOT / p


def rank_order(scenario: system.Scenario) -> list[int]:
    """Rank r runs device ``rank_order(scenario)[r]``: the source is rank 0, the others follow in order."""
    return [scenario.source] + [j for j in range(scenario.n) if j != scenario.source]


@dataclass
class RunConfig:
    """Everything every rank needs, as JSON; rank 0 shares it with the others through the TCP store.

    Paths are relative to the project root (or absolute). ``policies`` is a list of
    ``{"name", "planner", "criterion", "agent", "level", "plan"}``: planner one of :data:`PLANNERS`
    (``nlp`` the exact optimum per request, ``rl`` a saved agent, ``no_pruning`` the best placement
    unpruned, ``static`` every segment at ``level`` with the best placement, ``local`` the whole
    unpruned model on the source, ``fixed`` the ``plan`` ``{"devices": [names], "levels": [fractions]}``
    for every request). Whatever the planner, a plan that names a device the ward does not have, a dead
    or an unavailable one, is replaced by the exact optimum on the live ones. ``trace`` is a (T, N, N)
    list of bandwidth multipliers, request t seeing ``trace[t % T]``. ``fault`` is
    ``{"policy", "device", "request", "kind"}``; the device acts at the first activation of that policy
    it receives at or after that request. With kind ``kill`` (the default) its process kills itself
    (SIGKILL); with ``duplicate`` it sends the first result it returns to the source twice (duplicates
    must be counted); with ``bad_header`` it sends its next message once with a header field out of
    range, and with ``bad_shape`` once with a tensor of the wrong shape (bad input must be refused and
    the request served again).
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
    fault: dict | None = None
    threads: int = 1                  # torch threads per process (one request runs at a time)

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
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            errors.append(f"config field max_attempts={self.max_attempts!r}: expected a positive integer")
        if self.fault is not None:
            errors += self._fault(scenario)
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
            if p.get("planner") == "rl" and not resolve(str(p.get("agent", ""))).with_suffix(".zip").is_file():
                errors.append(f"{here}.agent: no agent file {p.get('agent')!r}")
        return errors

    def _fault(self, scenario: system.Scenario) -> list[str]:
        errors, devices = [], [d.name for d in scenario.devices]
        names = [p.get("name") for p in self.policies]
        if self.fault.get("policy") not in names:
            errors.append(f"config field fault.policy={self.fault.get('policy')!r}: expected one of {names}")
        if self.fault.get("device") not in devices or self.fault.get("device") == devices[scenario.source]:
            errors.append(f"config field fault.device={self.fault.get('device')!r}: expected a device other "
                          f"than the source {devices[scenario.source]!r}, one of {devices}")
        if not isinstance(self.fault.get("request"), int) or self.fault["request"] < 0:
            errors.append(f"config field fault.request={self.fault.get('request')!r}: expected a request index")
        if self.fault.get("kind", "kill") not in FAULTS:
            errors.append(f"config field fault.kind={self.fault.get('kind')!r}: expected one of {FAULTS}")
        if set(self.fault) - FAULT_KEYS:
            errors.append(f"config field fault: unknown keys {sorted(set(self.fault) - FAULT_KEYS)}")
        return errors

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls(**json.loads(text))
