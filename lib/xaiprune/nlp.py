"""The joint placement-and-pruning problem: an exact enumeration and a linearised MILP (PuLP + CBC).

Decision: segment s runs on device j at level l, one-hot ``z[s,j,l]``; ``x[s,j] = sum_l z[s,j,l]`` is the
placement and ``y[s,l] = sum_j z[s,j,l]`` the pruning level. The non-linear parts of the program of
:mod:`xaiprune.system` are the placement-times-level products (F, W, P, O depend on l, and are paid on
j) and the consecutive-placement products ``x[s,j] * x[s+1,k]`` of the transfer terms. Using ``z`` as the
variable makes the first linear; the second is linearised exactly, without big-M, by a flow
``w[s,j,k,l] = z[s,j,l] * x[s+1,k]`` (transportation constraints: sum_k w[s,j,k,l] = z[s,j,l] and
sum_{j,l} w[s,j,k,l] = x[s+1,k], w >= 0), so the transfer time is sum w[s,j,k,l] (O[s,l] / B[j,k] + lat[j,k]). The accuracy
surrogate A_0 * prod rho[s,l] becomes linear in log form: sum z[s,j,l] log rho[s,l].

Objective, lexicographic: (1) maximise surrogate accuracy; (2) among equal accuracy, least pruning
(sum of levels: "prune only when needed", so that with ample resources nothing is pruned even where
the measured retention of a small level is 1); (3) least latency; (4) least total energy. The MILP
solves the four stages in turn, each fixing the optimum of the previous ones; the enumeration is a
depth-first branch and bound on the same key. Both return a :class:`Result`. Used by ``05_nlp.ipynb``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pulp

from xaiprune.system import Evaluation, Plan, Profiles, Scenario, evaluate

REL = 1e-7  # relative tolerance of lexicographic comparisons
STAGE_TOL = 1e-6  # relative slack when a MILP stage's optimum is kept as a constraint for the next
FAMILIES = ("deadline", "memory", "energy")


@dataclass
class Result:
    """A solver's answer: the plan (None if infeasible), its status and key, and the solve time (s)."""

    solver: str
    status: str                        # "optimal", "infeasible", "time limit"
    plan: Plan | None = None
    evaluation: Evaluation | None = None
    seconds: float = 0.0
    binding: list[str] = field(default_factory=list)  # for infeasible instances: what makes them so

    @property
    def accuracy(self) -> float:
        return self.evaluation.accuracy if self.evaluation else float("nan")

    def key(self, profiles: Profiles) -> tuple[float, float, float, float]:
        """(-log accuracy, total pruning, latency, energy): smaller is better, compared lexicographically."""
        return _key(self.plan, self.evaluation, profiles)


def _key(plan: Plan, ev: Evaluation, profiles: Profiles) -> tuple[float, float, float, float]:
    log_acc = sum(math.log(profiles.retention[s, l]) for s, l in enumerate(plan.levels))
    pruning = sum(profiles.levels[l] for l in plan.levels)
    return (-log_acc, pruning, ev.latency, ev.total_energy)


def better(a: tuple, b: tuple | None, rel: float = REL) -> bool:
    """Lexicographic ``a < b`` with a relative tolerance on each component."""
    if b is None:
        return True
    for u, v in zip(a, b):
        tol = rel * max(1.0, abs(u), abs(v))
        if u < v - tol:
            return True
        if u > v + tol:
            return False
    return False


def same(a: tuple, b: tuple, rel: float = 1e-6) -> bool:
    return not better(a, b, rel) and not better(b, a, rel)


def _hop(scenario: Scenario, a: int, b: int, nbytes: float) -> float:
    if a == b:
        return 0.0
    lat = 0.0 if scenario.link_latency is None else scenario.link_latency[a, b]
    return nbytes / scenario.bandwidth[a, b] + lat


def _check(scenario: Scenario, profiles: Profiles, fix_devices, fix_levels) -> list[int]:
    if profiles.retention.shape != (profiles.S, profiles.L):
        raise ValueError("profiles: retention must be (segments, levels)")
    avail = [j for j, d in enumerate(scenario.devices) if d.available]
    if fix_devices is not None and len(fix_devices) != profiles.S:
        raise ValueError(f"fix_devices needs one device per segment ({profiles.S})")
    if fix_levels is not None and len(fix_levels) != profiles.S:
        raise ValueError(f"fix_levels needs one level index per segment ({profiles.S})")
    return avail


def solve_enumeration(scenario: Scenario, profiles: Profiles, time_limit: float = 60.0,
                      fix_devices: list[int] | None = None, fix_levels: list[int] | None = None) -> Result:
    """Exact solution by depth-first enumeration with lexicographic bounding (small instances)."""
    start = time.perf_counter()
    avail = _check(scenario, profiles, fix_devices, fix_levels)
    S, src = profiles.S, scenario.source
    logr = np.log(profiles.retention)
    best_rest_acc = np.concatenate([np.cumsum(logr.max(1)[::-1])[::-1], [0.0]])
    speed = {j: scenario.devices[j].speed for j in avail}
    min_compute = np.array([min(profiles.flops[s, l] / speed[j] for j in avail for l in range(profiles.L))
                            if avail else np.inf for s in range(S)])
    rest_compute = np.concatenate([np.cumsum(min_compute[::-1])[::-1], [0.0]])
    choices = []
    for s in range(S):
        js = [fix_devices[s]] if fix_devices is not None else avail
        ls = [fix_levels[s]] if fix_levels is not None else sorted(range(profiles.L), key=lambda l: (-logr[s, l], l))
        choices.append([(j, l) for l in ls for j in js])

    best = {"key": None, "plan": None}
    mem = np.zeros(scenario.n)
    energy = np.zeros(scenario.n)
    cap_mem = np.array([d.memory for d in scenario.devices]) * (1 + 1e-9)
    cap_e = np.array([d.energy_budget for d in scenario.devices]) * (1 + 1e-9)
    deadline = scenario.deadline * (1 + 1e-9)
    timed_out = False

    def dfs(s: int, prev: int, prev_out: float, acc: float, prune: float, lat: float, devs: list, levs: list):
        nonlocal timed_out
        if timed_out or time.perf_counter() - start > time_limit:
            timed_out = True
            return
        if s == S:
            back = _hop(scenario, prev, src, prev_out)
            total = lat + back
            if total > deadline:
                return
            energy[prev] += scenario.devices[prev].radio_power * back
            if energy[prev] <= cap_e[prev]:
                key = (-acc, prune, total, float(energy.sum()))
                if better(key, best["key"]):
                    best["key"], best["plan"] = key, Plan(list(devs), list(levs))
            energy[prev] -= scenario.devices[prev].radio_power * back
            return
        for j, l in choices[s]:
            bound = (-(acc + logr[s, l] + best_rest_acc[s + 1]), prune + profiles.levels[l],
                     lat + profiles.flops[s, l] / speed[j] + rest_compute[s + 1], 0.0)
            if best["key"] is not None and better(best["key"], bound):
                continue
            hop = _hop(scenario, prev, j, prev_out)
            dt = hop + profiles.flops[s, l] / speed[j]
            if lat + dt + rest_compute[s + 1] > deadline:
                continue
            dm = profiles.weight_bytes[s, l] + profiles.peak_bytes[s, l]
            de_tx = scenario.devices[prev].radio_power * hop
            de_c = scenario.devices[j].energy_per_flop * profiles.flops[s, l]
            mem[j] += dm
            energy[prev] += de_tx
            energy[j] += de_c
            if mem[j] <= cap_mem[j] and energy[prev] <= cap_e[prev] and energy[j] <= cap_e[j]:
                devs.append(j)
                levs.append(l)
                dfs(s + 1, j, profiles.out_bytes[s, l], acc + logr[s, l], prune + profiles.levels[l], lat + dt,
                    devs, levs)
                devs.pop()
                levs.pop()
            mem[j] -= dm
            energy[prev] -= de_tx
            energy[j] -= de_c

    if avail:
        dfs(0, src, profiles.input_bytes, 0.0, 0.0, 0.0, [], [])
    seconds = time.perf_counter() - start
    if best["plan"] is None:
        status = "time limit" if timed_out else "infeasible"
        return Result("enumeration", status, seconds=seconds)
    plan = best["plan"]
    return Result("enumeration", "time limit" if timed_out else "optimal", plan,
                  evaluate(plan, scenario, profiles), seconds)


class _Model:
    """The linearised MILP of one instance (PuLP), with the four objective expressions."""

    def __init__(self, scenario: Scenario, profiles: Profiles, avail: list[int], relax: tuple[str, ...] = (),
                 fix_devices=None, fix_levels=None):
        S, L, src = profiles.S, profiles.L, scenario.source
        P = profiles
        self.problem = pulp.LpProblem("placement_and_pruning", pulp.LpMinimize)
        self.z = {(s, j, l): self.problem.add_variable(f"z_{s}_{j}_{l}", cat="Binary")
                  for s in range(S) for j in avail for l in range(L)
                  if (fix_devices is None or fix_devices[s] == j) and (fix_levels is None or fix_levels[s] == l)}
        z = self.z
        x = {(s, j): pulp.lpSum(z[s, j, l] for l in range(L) if (s, j, l) in z) for s in range(S) for j in avail}
        prob = self.problem
        for s in range(S):
            prob += pulp.lpSum(v for (s2, _, _), v in z.items() if s2 == s) == 1, f"one_choice_{s}"
        # Transfer s -> s+1 as a flow w[s,j,k,l] = z[s,j,l] * x[s+1,k]: each chosen (j,l) sends to exactly
        # one k, each k receives exactly when it runs s+1. Exact for binary z and x (w is then binary
        # too) and far tighter in the LP relaxation than big-M or (z + x - 1) products.
        w = {(s, j, k, l): prob.add_variable(f"w_{s}_{j}_{k}_{l}", lowBound=0)
             for (s, j, l) in z if s < S - 1 for k in avail}
        for (s, j, l), v in z.items():
            if s < S - 1:
                prob += pulp.lpSum(w[s, j, k, l] for k in avail) == v, f"flow_out_{s}_{j}_{l}"
        for s in range(S - 1):
            for k in avail:
                prob += pulp.lpSum(w[s, j, k2, l] for (s2, j, k2, l) in w if s2 == s and k2 == k) == x[s + 1, k], \
                    f"flow_in_{s}_{k}"
        tx = {(s, j): pulp.lpSum(_hop(scenario, j, k, P.out_bytes[s, l]) * w[s, j2, k, l]
                                 for (s2, j2, k, l) in w if s2 == s and j2 == j and k != j)
              for s in range(S - 1) for j in avail}
        t_in = pulp.lpSum(_hop(scenario, src, j, P.input_bytes) * x[0, j] for j in avail)
        back = {j: pulp.lpSum(_hop(scenario, j, src, P.out_bytes[S - 1, l]) * v
                              for (s, j2, l), v in z.items() if s == S - 1 and j2 == j) for j in avail}
        compute = pulp.lpSum(P.flops[s, l] / scenario.devices[j].speed * v for (s, j, l), v in z.items())
        self.latency = t_in + compute + pulp.lpSum(tx.values()) + pulp.lpSum(back.values())
        energy = {}
        for j in avail:
            dev = scenario.devices[j]
            radio = pulp.lpSum(tx[s, j] for s in range(S - 1)) + back[j] + (t_in if j == src else 0)
            energy[j] = dev.energy_per_flop * pulp.lpSum(P.flops[s, l] * v for (s, j2, l), v in z.items() if j2 == j) \
                + dev.radio_power * radio
            if "memory" not in relax:
                prob += pulp.lpSum((P.weight_bytes[s, l] + P.peak_bytes[s, l]) * v
                                   for (s, j2, l), v in z.items() if j2 == j) <= dev.memory, f"memory_{j}"
            if "energy" not in relax:
                prob += energy[j] <= dev.energy_budget, f"energy_{j}"
        if src not in avail:  # the source still sends the image and receives the label
            energy[src] = scenario.devices[src].radio_power * t_in
            if "energy" not in relax:
                prob += energy[src] <= scenario.devices[src].energy_budget, "energy_source"
        if "deadline" not in relax:
            prob += self.latency <= scenario.deadline, "deadline"
        self.energy = pulp.lpSum(energy.values())
        self.log_acc = pulp.lpSum(math.log(P.retention[s, l]) * v for (s, j, l), v in z.items())
        self.pruning = pulp.lpSum(P.levels[l] * v for (s, j, l), v in z.items())

    def solve(self, objective, time_limit: float) -> str:
        self.problem.setObjective(objective)
        # CBC 2.10.3's preprocessing (not its presolve) returned a wrong "optimal" latency on random
        # instances of this model (found by the enumeration cross-check of tests/test_nlp.py): off.
        self.problem.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, options=["preprocess off"]))
        return pulp.LpStatus[self.problem.status]

    def plan(self, S: int) -> Plan:
        devices, levels = [0] * S, [0] * S
        for (s, j, l), v in self.z.items():
            if v.value() is not None and v.value() > 0.5:
                devices[s], levels[s] = j, l
        return Plan(devices, levels)


def solve_milp(scenario: Scenario, profiles: Profiles, time_limit: float = 30.0,
               fix_devices: list[int] | None = None, fix_levels: list[int] | None = None,
               explain_infeasible: bool = True) -> Result:
    """Solve the linearised MILP with PuLP's bundled CBC, lexicographically in four stages."""
    start = time.perf_counter()
    avail = _check(scenario, profiles, fix_devices, fix_levels)
    model = _Model(scenario, profiles, avail, fix_devices=fix_devices, fix_levels=fix_levels)
    # Latency in ms and energy in mJ keep the stages' coefficients and tolerances well scaled for CBC.
    stages = [(-model.log_acc, "accuracy"), (model.pruning, "pruning"), (1e3 * model.latency, "latency"),
              (1e3 * model.energy, "energy")]
    plan, status = None, "Not Solved"
    for i, (objective, name) in enumerate(stages):
        remaining = max(0.1, time_limit - (time.perf_counter() - start))
        status = model.solve(objective, remaining)
        if status != "Optimal":
            break
        plan = model.plan(profiles.S)
        if i < len(stages) - 1:  # keep this stage's optimum while optimising the next
            value = pulp.value(objective)
            value = 0.0 if value is None else value  # a stage whose expression is constant (fixed levels)
            model.problem += objective <= value + STAGE_TOL * max(1.0, abs(value)), f"keep_{name}"
    seconds = time.perf_counter() - start
    if plan is None:
        binding = explain(scenario, profiles, avail, fix_devices, fix_levels, time_limit) \
            if explain_infeasible and status == "Infeasible" else []
        return Result("milp", "infeasible" if status == "Infeasible" else "time limit", seconds=seconds,
                      binding=binding)
    # A later stage can only fail on the time limit: the plan of the last solved stage is kept.
    return Result("milp", "optimal" if status == "Optimal" else "time limit", plan,
                  evaluate(plan, scenario, profiles), seconds)


def explain(scenario: Scenario, profiles: Profiles, avail: list[int], fix_devices=None, fix_levels=None,
            time_limit: float = 30.0) -> list[str]:
    """Name what makes an instance infeasible even at maximum pruning.

    Each constraint family (deadline, memory, energy) is relaxed in turn; when relaxing one alone makes
    the instance feasible, the violated constraints of that relaxed optimum are named (e.g. "memory of
    sensor (31.2 MB > 20.0 MB)"). Otherwise the smallest set of families whose joint relaxation helps.
    """
    if not avail:
        return ["no device is available"]
    for k in (1, 2, 3):
        import itertools

        found = []
        for relax in itertools.combinations(FAMILIES, k):
            model = _Model(scenario, profiles, avail, relax, fix_devices, fix_levels)
            if model.solve(-model.log_acc, time_limit) == "Optimal":
                ev = evaluate(model.plan(profiles.S), scenario, profiles)
                found += [f"{'+'.join(relax)}: {v}" for v in ev.violations] or ["+".join(relax)]
        if found:
            return found
    return ["no plan exists even with deadline, memory and energy relaxed"]


SOLVERS = {"milp": solve_milp, "enumeration": solve_enumeration}


def solve(scenario: Scenario, profiles: Profiles, method: str = "milp", **kwargs) -> Result:
    """Solve with a solver of :data:`SOLVERS` by name."""
    if method not in SOLVERS:
        raise ValueError(f"method={method!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[method](scenario, profiles, **kwargs)


def greedy(scenario: Scenario, profiles: Profiles) -> Result:
    """Heuristic baseline: place, then prune step by step until the plan is feasible.

    Placement: segments in order, each on the fastest available device that still has memory for it
    unpruned (else the one with most memory left). Pruning: while the plan violates a constraint,
    raise by one step the level of the segment whose step saves the most latency per unit of lost
    log-accuracy. Fast, but neither optimal nor guaranteed to find a feasible plan.
    """
    start = time.perf_counter()
    avail = [j for j, d in enumerate(scenario.devices) if d.available]
    if not avail:
        return Result("greedy", "infeasible", seconds=time.perf_counter() - start, binding=["no device is available"])
    left = {j: scenario.devices[j].memory for j in avail}
    devices = []
    for s in range(profiles.S):
        need = profiles.weight_bytes[s, 0] + profiles.peak_bytes[s, 0]
        fits = [j for j in avail if left[j] >= need]
        j = max(fits, key=lambda j: scenario.devices[j].speed) if fits else max(avail, key=lambda j: left[j])
        left[j] -= need
        devices.append(j)
    levels = [0] * profiles.S
    logr = np.log(profiles.retention)
    while True:
        ev = evaluate(Plan(devices, levels), scenario, profiles)
        if ev.feasible:
            return Result("greedy", "feasible", Plan(devices, list(levels)), ev, time.perf_counter() - start)
        steps = []
        for s, l in enumerate(levels):
            if l + 1 < profiles.L:
                saved = (profiles.flops[s, l] - profiles.flops[s, l + 1]) / scenario.devices[devices[s]].speed \
                    + (profiles.out_bytes[s, l] - profiles.out_bytes[s, l + 1]) / 1e6
                lost = logr[s, l] - logr[s, l + 1]
                steps.append((saved / (lost + 1e-9), s))
        if not steps:
            return Result("greedy", "infeasible", Plan(devices, list(levels)), ev, time.perf_counter() - start,
                          binding=ev.violations)
        levels[max(steps)[1]] += 1


def heuristics(scenario: Scenario, profiles: Profiles, time_limit: float = 30.0) -> dict[str, Result]:
    """The baselines of ``05_nlp``: no pruning, uniform pruning, greedy, whole model on one device.

    - ``no pruning``: the best placement with every level 0 (MILP with the levels fixed);
    - ``uniform``: the smallest common level that admits a feasible placement;
    - ``greedy``: :func:`greedy`;
    - ``one device``: all segments on one device, the best such device and levels (MILP with the
      placement fixed).
    """
    S = profiles.S
    out = {"no pruning": solve_milp(scenario, profiles, time_limit, fix_levels=[0] * S, explain_infeasible=False)}
    uniform = None
    for l in range(profiles.L):
        uniform = solve_milp(scenario, profiles, time_limit, fix_levels=[l] * S, explain_infeasible=False)
        if uniform.status == "optimal":
            break
    out["uniform"] = uniform
    out["greedy"] = greedy(scenario, profiles)
    best = None
    for j, dev in enumerate(scenario.devices):
        if dev.available:
            r = solve_milp(scenario, profiles, time_limit, fix_devices=[j] * S, explain_infeasible=False)
            if r.status == "optimal" and (best is None or better(r.key(profiles), best.key(profiles))):
                best = r
    out["one device"] = best or Result("one device", "infeasible")
    return out
