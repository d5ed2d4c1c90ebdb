"""The joint placement-and-pruning problem: an exact enumeration and a linearised MILP (PuLP + CBC).

Decision: segment s runs on device j at level l, one-hot ``z[s,j,l]``; ``x[s,j] = sum_l z[s,j,l]`` is the
placement and ``y[s,l] = sum_j z[s,j,l]`` the pruning level. The non-linear parts of the program of
:mod:`xaiprune.planning.system` are the placement-times-level products (F, W, P, O depend on l, and are paid on
j) and the consecutive-placement products ``x[s,j] * x[s+1,k]`` of the transfer terms. Using ``z`` as the
variable makes the first linear; the second is linearised exactly, without big-M, by a flow
``w[s,j,k,l] = z[s,j,l] * x[s+1,k]`` (transportation constraints: sum_k w[s,j,k,l] = z[s,j,l] and
sum_{j,l} w[s,j,k,l] = x[s+1,k], w >= 0), so the transfer time is sum w[s,j,k,l] (O[s,l] / B[j,k] + lat[j,k]). The accuracy
surrogate A_0 * prod rho[s,l] becomes linear in log form: sum z[s,j,l] log rho[s,l].

Objective, lexicographic: (1) maximise surrogate accuracy; (2) among equal accuracy, least pruning
(sum of levels: "prune only when needed", so that with ample resources nothing is pruned even where
the measured retention of a small level is 1); (3) least latency; (4) least total energy. The MILP
solves the four stages in turn, each fixing the proven optimum of the previous ones; the enumeration
is a depth-first branch and bound on the same key. Both return a :class:`Result`.

Statuses: "optimal" only when every stage was proven optimal (for CBC: PuLP's *solution* status
``LpSolutionOptimal``); "feasible (time limit)" for a plan found before the time limit stopped the search
(CBC's ``LpSolutionIntegerFeasible``, or a later lexicographic stage left unsolved); "time limit" when the
limit struck before any plan was found; "infeasible" when no plan exists. Callers that only need a
plan test ``result.plan is not None``. Used by ``05_nlp.ipynb`` and :mod:`xaiprune.planning.candidates`.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pulp

from xaiprune.planning.feasibility import Tables
from xaiprune.planning.solution import FEASIBLE, REL, Result, better, check_instance, hop, same  # noqa: F401 (re-exported)
from xaiprune.planning.system import Plan, Profiles, Scenario, evaluate

STAGE_TOL = 1e-6  # relative slack when a MILP stage's optimum is kept as a constraint for the next
FAMILIES = ("deadline", "memory", "energy")


def solve_enumeration(scenario: Scenario, profiles: Profiles, time_limit: float = 60.0,
                      fix_devices: list[int] | None = None, fix_levels: list[int] | None = None) -> Result:
    """Exact solution by depth-first enumeration with lexicographic bounding (small instances).

    A branch is cut when even the least latency of the rest (:class:`xaiprune.planning.feasibility.Tables`'s
    ``togo``, the floor the sequential agent's masks use too) misses the deadline, or when its bound on
    the key cannot beat the best plan found. Here, unlike in :func:`solve_milp`, an entry ``None`` of
    ``fix_devices`` or ``fix_levels`` leaves that segment free (a fixed prefix: the best completion).
    """
    start = time.perf_counter()
    avail = check_instance(scenario, profiles, fix_devices, fix_levels)
    S, src = profiles.S, scenario.source
    logr = np.log(profiles.retention)
    best_rest_acc = np.concatenate([np.cumsum(logr.max(1)[::-1])[::-1], [0.0]])
    speed = {j: scenario.devices[j].speed for j in avail}
    togo = Tables(scenario, profiles).togo  # least latency after (s, j, l): the rest, the label back
    choices = []
    for s in range(S):
        js = [fix_devices[s]] if fix_devices is not None and fix_devices[s] is not None else avail
        ls = [fix_levels[s]] if fix_levels is not None and fix_levels[s] is not None else \
            sorted(range(profiles.L), key=lambda l: (-logr[s, l], l))
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
            back = hop(scenario, prev, src, prev_out)
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
            t_hop = hop(scenario, prev, j, prev_out)
            dt = t_hop + profiles.flops[s, l] / speed[j]
            floor = lat + dt + togo[s, j, l]
            if floor > deadline:
                continue
            bound = (-(acc + logr[s, l] + best_rest_acc[s + 1]), prune + profiles.levels[l], floor, 0.0)
            if best["key"] is not None and better(best["key"], bound):
                continue
            dm = profiles.weight_bytes[s, l] + profiles.peak_bytes[s, l]
            de_tx = scenario.devices[prev].radio_power * t_hop
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
    return Result("enumeration", FEASIBLE if timed_out else "optimal", plan,
                  evaluate(plan, scenario, profiles), seconds)


def solution_status(status: int, sol_status: int) -> str:
    """This project's status of one CBC run from PuLP's problem ``status`` and *solution* ``sol_status``.

    CBC stopped by its time limit with an integer solution is reported by PuLP as ``status`` Optimal but
    ``sol_status`` LpSolutionIntegerFeasible: that is :data:`FEASIBLE`, never "optimal". Stopped with no
    solution: "time limit". CBC's "Integer infeasible" arrives as status Infeasible with no solution.
    """
    if sol_status == pulp.LpSolutionOptimal:
        return "optimal"
    if sol_status == pulp.LpSolutionIntegerFeasible:
        return FEASIBLE
    named = {pulp.LpSolutionInfeasible: "infeasible", pulp.LpSolutionUnbounded: "unbounded"}
    if sol_status in named:
        return named[sol_status]
    return {pulp.LpStatusInfeasible: "infeasible", pulp.LpStatusUnbounded: "unbounded"}.get(status, "time limit")


class MilpModel:
    """The linearised MILP of one instance (PuLP), with the four objective expressions.

    ``avail``: the devices that may run segments (default: the available ones); ``relax``: constraint
    families left out (used by :func:`explain`). ``history``: (stage, status, sol_status) of each CBC run.
    """

    def __init__(self, scenario: Scenario, profiles: Profiles, avail: list[int] | None = None,
                 relax: tuple[str, ...] = (), fix_devices=None, fix_levels=None):
        if avail is None:
            avail = [j for j, d in enumerate(scenario.devices) if d.available]
        S, L, src = profiles.S, profiles.L, scenario.source
        self.S, self.scenario, self.profiles = S, scenario, profiles
        self.history: list[tuple[str, int, int]] = []
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
        w = self.w = {(s, j, k, l): prob.add_variable(f"w_{s}_{j}_{k}_{l}", lowBound=0)
                      for (s, j, l) in z if s < S - 1 for k in avail}
        for (s, j, l), v in z.items():
            if s < S - 1:
                prob += pulp.lpSum(w[s, j, k, l] for k in avail) == v, f"flow_out_{s}_{j}_{l}"
        for s in range(S - 1):
            for k in avail:
                prob += pulp.lpSum(w[s, j, k2, l] for (s2, j, k2, l) in w if s2 == s and k2 == k) == x[s + 1, k], \
                    f"flow_in_{s}_{k}"
        tx = {(s, j): pulp.lpSum(hop(scenario, j, k, P.out_bytes[s, l]) * w[s, j2, k, l]
                                 for (s2, j2, k, l) in w if s2 == s and j2 == j and k != j)
              for s in range(S - 1) for j in avail}
        t_in = pulp.lpSum(hop(scenario, src, j, P.input_bytes) * x[0, j] for j in avail)
        back = {j: pulp.lpSum(hop(scenario, j, src, P.out_bytes[S - 1, l]) * v
                              for (s, j2, l), v in z.items() if s == S - 1 and j2 == j) for j in avail}
        compute = pulp.lpSum(P.flops[s, l] / scenario.devices[j].speed * v for (s, j, l), v in z.items())
        self.latency = t_in + compute + pulp.lpSum(tx.values()) + pulp.lpSum(back.values())
        energy = {}
        for j in avail:
            dev = scenario.devices[j]
            radio = pulp.lpSum(tx[s, j] for s in range(S - 1)) + back[j] + (t_in if j == src else 0)
            energy[j] = dev.energy_per_flop * pulp.lpSum(P.flops[s, l] * v for (s, j2, l), v in z.items() if j2 == j) \
                + dev.radio_power * radio
            if "memory" not in relax:  # in MB: in bytes, CBC's final LP of a VGG instance failed (fractional z)
                prob += pulp.lpSum((P.weight_bytes[s, l] + P.peak_bytes[s, l]) / 1e6 * v
                                   for (s, j2, l), v in z.items() if j2 == j) <= dev.memory / 1e6, f"memory_{j}"
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

    def solve(self, objective, time_limit: float, stage: str = "") -> str:
        """Minimise ``objective`` with CBC; the :func:`solution_status` of the run."""
        self.problem.setObjective(objective)
        # CBC 2.10.3's preprocessing (not its presolve) returned a wrong "optimal" latency on random
        # instances of this model (found by the enumeration cross-check of tests/test_nlp.py): off.
        self.problem.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, options=["preprocess off"]))
        self.history.append((stage, self.problem.status, self.problem.sol_status))
        return solution_status(self.problem.status, self.problem.sol_status)

    def exclude_levels(self, levels: list[int], name: str) -> None:
        """No-good cut on the level vector: sum_s y[s, levels[s]] <= S - 1 (excludes all its placements)."""
        self.problem += pulp.lpSum(v for (s, _, l), v in self.z.items() if l == levels[s]) <= self.S - 1, name

    def plan(self) -> Plan:
        """The solution's plan: each segment's largest z (they are 0 or 1 unless CBC misreports)."""
        best = {}
        for (s, j, l), v in self.z.items():
            if s not in best or (v.value() or 0.0) > best[s][0]:
                best[s] = ((v.value() or 0.0), j, l)
        return Plan([best[s][1] for s in range(self.S)], [best[s][2] for s in range(self.S)])

    def fractional(self) -> float:
        """Largest distance of a z of the solution from 0 or 1."""
        return max(min(abs(v.value() or 0.0), abs(1 - (v.value() or 0.0))) for v in self.z.values())

    def at(self, expression, plan: Plan) -> float:
        """Value of one of the model's expressions at the integer point of ``plan`` (z one-hot, w = z x[s+1])."""
        chosen = set(zip(range(self.S), plan.devices, plan.levels))
        for (s, j, l), v in self.z.items():
            v.varValue = float((s, j, l) in chosen)
        for (s, j, k, l), v in self.w.items():
            v.varValue = float((s, j, l) in chosen and plan.devices[s + 1] == k)
        return float(pulp.value(expression) or 0.0)  # 0: a constant expression (fixed levels)


def solve_stages(model: MilpModel, time_limit: float) -> tuple[Plan | None, str]:
    """Solve the four lexicographic stages of ``model`` in turn: the plan and its status.

    Each stage keeps the proven optima of the earlier ones as constraints (relative slack
    :data:`STAGE_TOL`), valued at the integer plan. A value CBC did not prove optimal is never carried
    on: a stage stopped by the time limit ends the solve with :data:`FEASIBLE` and the incumbent, that
    stage's own if CBC found one (it satisfies the earlier stages' optima), else the previous stage's
    plan. A first stage without a plan gives ``(None, "infeasible" or "time limit")``. A solution with
    fractional z is rounded and must then be feasible, else it is an error. The keep constraints stay in
    ``model``: build a new :class:`MilpModel` for another solve.
    """
    start = time.perf_counter()
    # Latency in ms and energy in mJ keep the stages' coefficients and tolerances well scaled for CBC.
    stages = [(-model.log_acc, "accuracy"), (model.pruning, "pruning"), (1e3 * model.latency, "latency"),
              (1e3 * model.energy, "energy")]
    plan = None
    for i, (objective, name) in enumerate(stages):
        status = model.solve(objective, max(0.1, time_limit - (time.perf_counter() - start)), name)
        if status in ("optimal", FEASIBLE) and model.fractional() > 1e-6:
            ev = evaluate(model.plan(), model.scenario, model.profiles)
            if not ev.feasible:
                raise RuntimeError(f"CBC: stage {name!r} returned fractional z whose rounding violates {ev.violations}")
        if status == FEASIBLE:
            return model.plan(), FEASIBLE
        if status != "optimal":
            if plan is None:
                return None, status
            if status == "time limit":
                return plan, FEASIBLE
            raise RuntimeError(f"CBC: lexicographic stage {name!r} is {status!r}, yet the previous stage's "
                               f"optimum satisfies it (history {model.history})")
        plan = model.plan()
        if i < len(stages) - 1:  # keep this stage's proven optimum while optimising the next
            value = model.at(objective, plan)
            model.problem += objective <= value + STAGE_TOL * max(1.0, abs(value)), f"keep_{name}"
    return plan, "optimal"


def solve_milp(scenario: Scenario, profiles: Profiles, time_limit: float = 30.0,
               fix_devices: list[int] | None = None, fix_levels: list[int] | None = None,
               explain_infeasible: bool = True) -> Result:
    """Solve the linearised MILP with PuLP's bundled CBC, lexicographically (:func:`solve_stages`).

    ``time_limit`` (s) bounds the four stages together; statuses as in the module docstring.
    """
    start = time.perf_counter()
    avail = check_instance(scenario, profiles, fix_devices, fix_levels)
    model = MilpModel(scenario, profiles, avail, fix_devices=fix_devices, fix_levels=fix_levels)
    plan, status = solve_stages(model, time_limit - (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    if plan is None:
        binding = explain(scenario, profiles, avail, fix_devices, fix_levels, time_limit) \
            if explain_infeasible and status == "infeasible" else []
        return Result("milp", status, seconds=seconds, binding=binding, stages=model.history)
    return Result("milp", status, plan, evaluate(plan, scenario, profiles), seconds, stages=model.history)


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
        found = []
        for relax in itertools.combinations(FAMILIES, k):
            model = MilpModel(scenario, profiles, avail, relax, fix_devices, fix_levels)
            if model.solve(-model.log_acc, time_limit, "accuracy") in ("optimal", FEASIBLE):
                ev = evaluate(model.plan(), scenario, profiles)
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
        if uniform.plan is not None:
            break
    out["uniform"] = uniform
    out["greedy"] = greedy(scenario, profiles)
    best = None
    for j, dev in enumerate(scenario.devices):
        if dev.available:
            r = solve_milp(scenario, profiles, time_limit, fix_devices=[j] * S, explain_infeasible=False)
            if r.plan is not None and (best is None or better(r.key(profiles), best.key(profiles))):
                best = r
    out["one device"] = best or Result("one device", "infeasible")
    return out
