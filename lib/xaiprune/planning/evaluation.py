"""Notebook ``06_rl``'s judgement of the agents: held-out wards, the bound check, decision times, the fade, targets.

:func:`held_out` judges every planner (:func:`planners`: the agent of every training seed, the baseline and three
rules) on held-out ward runs with a fade of a held-out shape (:func:`xaiprune.planning.judging.paired`);
:func:`pool_seeds` turns the summary's per-seed rows of the agent into one pooled row and a per-seed table;
:func:`near_optimum` gives the claim's numbers, pooled over seeds, wards and held-out runs, with a nested bootstrap
(:func:`seed_bootstrap`: training seeds, then held-out runs within each ward, then requests within each run);
:func:`optimum_bound` checks that no planner's feasible plan beats the optimum; :func:`cbc_times` and
:func:`decision_times` time the decisions; :func:`adaptation` summarises the replayed fade
(:func:`xaiprune.planning.env.fade_trace`); :func:`ward_metrics`, :func:`targets_of` and :func:`metrics` assemble
the notebook's ``metrics.json``, :func:`describe_ward` says a ward's results in words.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from xaiprune import stats
from xaiprune.planning import fades, judging, masked, nlp, rl
from xaiprune.planning.env import WardEnv
from xaiprune.planning.shield import Shield
from xaiprune.planning.system import Profiles, Scenario

AGENT = "sequential agent"
WINDOWS = ("nominal", "fade")
_SEEDED = re.compile(re.escape(AGENT) + r" \[seed (-?\d+)\]$")


def agent_label(seed: int) -> str:
    """The planner's name of the agent trained with ``seed`` (:func:`pool_seeds` reads it back)."""
    return f"{AGENT} [seed {seed}]"


def seed_of(policy: str) -> int | None:
    """The training seed in a planner's name from :func:`agent_label` (None: not a seeded agent)."""
    m = _SEEDED.match(policy)
    return int(m.group(1)) if m else None


def targets(margin: float, nominal_share: float, max_violations: float) -> dict[str, Callable[[dict], bool]]:
    """The study's targets for the agent on one ward, checked by :func:`targets_of`: ``margin`` (the share of the
    optimum during fades), ``nominal_share`` and ``max_violations`` are the claim's, as the protocol declares them
    (``protocol.CLAIMS["rl_near_optimum"]``: its margin and params); the decision-time lines are the study's own."""
    return {
        f"nominal: >= {nominal_share:.0%} of the optimum": lambda m: m["nominal"]["acc_vs_optimum"] >= nominal_share,
        "nominal: < 1% violations": lambda m: m["nominal"]["violation_rate"] < 0.01,
        f"fade: >= {margin:.0%} of the optimum": lambda m: m["fade"]["acc_vs_optimum"] >= margin,
        f"fade: < {max_violations:.0%} violations": lambda m: m["fade"]["violation_rate"] < max_violations,
        "fade: beats greedy": lambda m: m["fade"]["acc_vs_optimum"] > m["greedy"]["fade"]["acc_vs_optimum"],
        "fade: beats greedy inside the same masks": lambda m: m["fade"]["acc_vs_optimum"]
        > m["policies"]["masked greedy"]["fade"]["acc_vs_optimum"],
        "decision < 1 ms": lambda m: m["decision_ms"] < 1.0,
        "decision faster than the enumeration": lambda m: m["decision_ms"] < m["enumeration_ms"],
        "training < 8 min": lambda m: m["training_seconds"] < 480,
    }


def describe_limit(name: str, m_star: float, fade_low: float) -> str:
    """What the unpruned limit ``m_star`` (:func:`xaiprune.planning.judging.unpruned_limit`) means for a fade to
    ``fade_low`` x nominal bandwidth."""
    if m_star >= 1.0:
        return f"{name}: even the nominal ward needs pruning (no unpruned placement fits): the optimum prunes throughout"
    if m_star == 0.0:
        return (f"{name}: an unpruned placement meets every constraint at any bandwidth down to 1e-6 x nominal (the "
                f"model fits where the image is): no fade needs pruning on this ward")
    verdict = ("deep enough: the optimum must prune at its bottom" if fade_low < m_star else
               "NOT deep enough: the optimum can meet every constraint by moving segments alone")
    return (f"{name}: below m* = {m_star:.4f} x nominal bandwidth no unpruned placement meets every constraint; "
            f"fade_low = {fade_low} is {verdict}")


SHIELDED = f"{AGENT} + shield"


def planners(sequentials: dict, baseline, shielded=None, shield: Shield | None = None) -> dict[str, judging.Planner]:
    """The judged planners: the sequential agent of every training seed (``sequentials``: seed -> agent, named by
    :func:`agent_label`), ``shielded`` (an agent, 07's) behind ``shield`` (a :class:`xaiprune.planning.shield.Shield`,
    which counts its decisions; a fresh one if None) as ``SHIELDED``, the MultiDiscrete baseline (a PPO model; left
    out if None), greedy, no pruning, random, greedy and random inside the agent's masks
    (:mod:`xaiprune.planning.masked`), and the whole unpruned model on the source ("one device")."""
    guarded = {} if shielded is None else {SHIELDED: (shield or Shield()).guard(judging.sequential(shielded))}
    return {**{agent_label(s): judging.sequential(a) for s, a in sequentials.items()}, **guarded,
            **({} if baseline is None else {"MultiDiscrete PPO (baseline)": judging.from_policy(rl.agent_policy(baseline))}),
            "greedy": judging.from_policy(rl.greedy_policy), "no pruning": judging.from_policy(rl.no_pruning_policy),
            "random": judging.from_policy(rl.random_policy), **masked.planners(),
            "one device": judging.from_policy(rl.one_device_policy)}


def held_out(name: str, ward: Scenario, profiles: Profiles, judged: dict[str, judging.Planner], seeds: list[int],
             episode_length: int, fade_low: float, progress: bool = True) -> pd.DataFrame:
    """:func:`~xaiprune.planning.judging.paired` on one run per seed, each with one held-out fade of every link
    (:func:`xaiprune.planning.fades.held_out`, depth around ``fade_low``, drawn from the run's seed)."""
    frames = []
    for k, run_seed in enumerate(seeds):
        fade = fades.held_out(np.random.default_rng(run_seed), episode_length, fade_low)
        frames.append(judging.paired(ward, profiles, judged, run_seed, episode_length,
                                     overlay=fades.overlay(episode_length, ward.n, [fade]), progress=progress,
                                     desc=f"{name} run {k + 1}/{len(seeds)}")
                      .assign(ward=name, fade_shape=fade.shape, fade_depth=fade.depth))
    return pd.concat(frames, ignore_index=True)


def pool_seeds(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``results`` (:func:`xaiprune.planning.judging.summary` by ward, window, policy) with the agent's per-seed rows
    replaced by one row ``AGENT``, their mean over seeds (the seeds decide on the same requests, so the mean of
    their ratios is the pooled ratio), and the per-seed rows as a table indexed by ward, window and seed."""
    r = results.reset_index()
    r["seed"] = r["policy"].map(seed_of)
    mine = r[r["seed"].notna()].astype({"seed": int})
    if mine.empty:
        raise ValueError(f"no planner named by agent_label among {sorted(r['policy'].unique())}")
    parts = []
    for (ward, window), g in r.groupby(["ward", "window"], sort=False):
        agent_rows = g[g["seed"].notna()].drop(columns=["policy", "seed", "ward", "window"])
        pooled = agent_rows.mean(numeric_only=True).to_frame().T.assign(ward=ward, window=window, policy=AGENT)
        parts += [pooled, g[g["seed"].isna()].drop(columns="seed")]
    main = pd.concat(parts, ignore_index=True).set_index(["ward", "window", "policy"])
    return main, mine.drop(columns="policy").set_index(["ward", "window", "seed"])


def _agent_rows(evaluation: pd.DataFrame) -> pd.DataFrame:
    return evaluation[evaluation["policy"].map(seed_of).notna()].assign(
        agent_seed=lambda d: d["policy"].map(seed_of).astype(int))


def _request_weights(episodes: np.ndarray, wards: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """(n_boot, N) multiplicities of N requests: per ward, its runs drawn with replacement, then each drawn run's
    requests drawn with replacement (a run drawn k times contributes a multinomial of k x its size)."""
    w = np.zeros((n_boot, len(episodes)))
    for ward in np.unique(wards):
        runs = np.unique(episodes[wards == ward])
        counts = np.stack([np.bincount(row, minlength=len(runs)) for row in rng.integers(0, len(runs), (n_boot, len(runs)))])
        for j, run in enumerate(runs):
            idx = np.flatnonzero(episodes == run)
            w[:, idx] = rng.multinomial(counts[:, j] * len(idx), np.full(len(idx), 1 / len(idx)))
    return w


def seed_bootstrap(evaluation: pd.DataFrame, window: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """The agent's accuracy over the optimum's and violation rate on ``window``'s requests where a feasible plan
    exists, pooled over training seeds, wards and held-out runs, with their nested bootstrap values: per resample,
    the training seeds with replacement, then the runs of each ward, then the requests of each drawn run (the seeds
    decide on the same requests, so the comparison with the optimum stays paired). Also per seed."""
    rows = _agent_rows(evaluation)
    rows = rows[(rows["window"] == window) & rows["feasible_exists"]]
    if rows.empty:
        raise ValueError(f"no {window!r} request with a feasible plan: nothing to judge")
    keys = ["ward", "seed", "t"]
    wide = rows.pivot_table(index=keys, columns="agent_seed", values=["delivered", "feasible"], aggfunc="first")
    opt = rows.groupby(keys)["optimum_accuracy"].first().loc[wide.index].to_numpy(np.float64)
    D = wide["delivered"].to_numpy(np.float64).T                   # (seeds, requests)
    V = 1.0 - wide["feasible"].to_numpy(np.float64).T
    episodes = pd.factorize(wide.index.droplevel("t"))[0]
    wards = pd.factorize(wide.index.get_level_values("ward"))[0]
    rng = np.random.default_rng(seed)
    w = _request_weights(episodes, wards, n_boot, rng)
    c = np.stack([np.bincount(row, minlength=len(D)) for row in rng.integers(0, len(D), (n_boot, len(D)))])
    return {"acc": float(D.sum() / (len(D) * opt.sum())), "acc_boot": ((c @ D) * w).sum(1) / (c.sum(1) * (w @ opt)),
            "violations": float(V.mean()), "violations_boot": ((c @ V) * w).sum(1) / (c.sum(1) * w.sum(1)),
            "by_seed": {int(s): {"acc_vs_optimum": float(d.sum() / opt.sum()), "violation_rate": float(v.mean())}
                        for s, d, v in zip(wide["delivered"].columns, D, V)},
            "seeds": int(len(D)), "runs": int(episodes.max() + 1), "requests": int(len(opt))}


def interval(boot: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` interval of bootstrap values."""
    return [float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])]


def near_optimum(evaluation: pd.DataFrame, margin: float, nominal_share: float, max_violations: float,
                 n_boot: int = 2000, seed: int = 0) -> dict:
    """The claim's numbers: the agent's accuracy over the optimum's on faded requests pooled over training seeds,
    wards and held-out runs (``measured``) with its nested bootstrap interval (:func:`seed_bootstrap`) and the
    one-sided p of "at most ``margin``"; the fade's violation rate and the nominal share with their intervals;
    greedy's fade share (the comparator); ``target_met``: the interval's lower end at least ``margin``, fade
    violations under ``max_violations`` and the nominal share at least ``nominal_share`` (the claim's);
    ``wins_somewhere``: the pooled fade share at least ``margin``."""
    fade = seed_bootstrap(evaluation, "fade", n_boot=n_boot, seed=seed)
    nominal = seed_bootstrap(evaluation, "nominal", n_boot=n_boot, seed=seed + 1)
    s = stats.summarise_bootstrap(fade["acc"], fade["acc_boot"], margin, n_seeds=(fade["seeds"], 1))
    greedy = evaluation[(evaluation["policy"] == "greedy") & (evaluation["window"] == "fade") & evaluation["feasible_exists"]]
    return {"measured": fade["acc"], "interval": s["interval"], "p": s["p"], "margin": margin,
            "violation_rate": fade["violations"], "violation_interval": interval(fade["violations_boot"]),
            "nominal": nominal["acc"], "nominal_interval": interval(nominal["acc_boot"]),
            "nominal_violation_rate": nominal["violations"],
            "greedy_fade": float(greedy["delivered"].sum() / max(greedy["optimum_accuracy"].sum(), 1e-12)),
            "by_seed": {k: {"fade": v, "nominal": nominal["by_seed"][k]} for k, v in fade["by_seed"].items()},
            "seeds": fade["seeds"], "runs": fade["runs"], "fade_requests": fade["requests"],
            "nominal_requests": nominal["requests"],
            "nominal_share": nominal_share, "max_violations": max_violations,
            "target_met": bool(s["interval"][0] >= margin and fade["violations"] < max_violations
                               and nominal["acc"] >= nominal_share),
            "wins_somewhere": bool(fade["acc"] >= margin)}


def claim_evidence(c: dict) -> str:
    """:func:`near_optimum` in two sentences."""
    lo, hi = c["interval"]
    return (f"Over {c['seeds']} training seed(s) and {c['runs']} held-out ward runs ({c['fade_requests']} faded requests "
            f"with a feasible plan), the agent delivers {c['measured']:.2%} of the exact optimum's accuracy during "
            f"fades (nested bootstrap over seeds, runs and requests {lo:.2%}-{hi:.2%}; greedy {c['greedy_fade']:.2%}) "
            f"with {c['violation_rate']:.2%} violations. On nominal requests it delivers {c['nominal']:.2%} "
            f"({c['nominal_interval'][0]:.2%}-{c['nominal_interval'][1]:.2%}) against the {c['nominal_share']:.0%} asked.")


def optimum_bound(evaluation: pd.DataFrame) -> dict:
    """Over every held-out request: the largest accuracy of a planner's feasible plan above the optimum's (0 if none,
    where the optimum has a plan), and the requests where some planner is feasible but the optimum has no plan."""
    where = ["ward", "seed", "t"]
    opt = evaluation[evaluation["policy"] == judging.OPTIMUM].set_index(where)
    others = evaluation[evaluation["policy"] != judging.OPTIMUM].join(
        opt[["accuracy"]].rename(columns={"accuracy": "opt_acc"}), on=where)
    feasible = others[others["feasible"]]
    above = float((feasible["accuracy"] - feasible["opt_acc"]).where(feasible["feasible_exists"]).max())
    return {"requests": int(len(opt)), "largest_accuracy_above_optimum": max(above, 0.0),
            "feasible_where_optimum_has_no_plan": int((~feasible["feasible_exists"]).sum())}


def cbc_times(ward: Scenario, profiles: Profiles, sequential, seed: int, samples: int, episode_length: int) -> list[float]:
    """CBC's decision time (ms) on the first ``samples`` requests of the ward run ``seed``, stepped by the agent."""
    run = WardEnv(ward, profiles, episode_length=episode_length)
    run.reset(seed=seed)
    times = []
    for _ in range(samples):
        times.append(nlp.solve_milp(run.instance(), profiles, explain_infeasible=False).seconds * 1e3)
        run.step(run.action_of(sequential.decide(run.instance(), run.state.priority)))
    return times


def decision_times(evaluation: pd.DataFrame, cbc_ms: list[float], scenario: str) -> pd.DataFrame:
    """Median decision time per ward and planner (ms; the agent's over every seed's decisions), with CBC's on
    ``scenario``."""
    evaluation = evaluation.assign(policy=evaluation["policy"].where(evaluation["policy"].map(seed_of).isna(), AGENT))
    timing = evaluation.pivot_table(index="ward", columns="policy", values="decision_ms", aggfunc="median")
    timing["CBC MILP"] = np.nan
    timing.loc[scenario, "CBC MILP"] = float(np.median(cbc_ms))
    return timing


def adaptation(traced: pd.DataFrame, multiplier: np.ndarray, fade_low: float, last: int = 5) -> dict[str, dict]:
    """Per planner on the replayed fade (``multiplier``: one per request): distinct plans, mean pruning at nominal
    bandwidth, at the bottom of the fade (``fade_low``) and over the ``last`` requests, violations during the fade."""
    faded = multiplier < 1
    out = {}
    for name, g in traced.groupby("policy", sort=False):
        g = g.sort_values("t")
        bottom = multiplier[g["t"]] <= fade_low * (1 + 1e-9)
        out[name] = {"distinct_plans": int(g["plan"].nunique()),
                     "mean_pruning_nominal": float(g["pruning"][~faded].mean()),
                     "mean_pruning_fade_bottom": float(g["pruning"][bottom].mean()),
                     "violations_fade": int((~g["feasible"][faded]).sum()), "fade_requests": int(faded.sum()),
                     "pruning_after_recovery": float(g["pruning"].iloc[-last:].mean())}
    return out


def prunes_in_fade(a: dict) -> bool:
    """Whether a planner's :func:`adaptation` prunes more at the bottom of the fade than at nominal bandwidth, and no
    more after the recovery than at nominal bandwidth."""
    return bool(a["mean_pruning_fade_bottom"] > a["mean_pruning_nominal"]
                and a["pruning_after_recovery"] <= a["mean_pruning_nominal"] + 1e-9)


def describe_adaptation(name: str, a: dict, last: int = 5) -> str:
    """A planner's :func:`adaptation` in words."""
    return (f"{name}: {a['distinct_plans']} distinct plans; mean pruning {a['mean_pruning_nominal']:.3f} at nominal "
            f"bandwidth, {a['mean_pruning_fade_bottom']:.3f} at the bottom of the fade, "
            f"{a['pruning_after_recovery']:.3f} over the last {last} requests; {a['violations_fade']} of "
            f"{a['fade_requests']} faded requests violate a constraint")


def block(results: pd.DataFrame, ward: str, policy: str, window: str) -> dict:
    """One planner's numbers on one window of one ward (``results``: ``judging.summary`` by ward, window, policy)."""
    r = results.loc[(ward, window, policy)]
    return {"acc_vs_optimum": round(float(r["acc_vs_optimum"]), 4), "violation_rate": round(float(r["violation_rate"]), 4),
            "mean_pruning": round(float(r["mean_pruning"]), 4), "requests": int(r["requests"]),
            "no_feasible_plan": int(r["no_feasible_plan"])}


def ward_metrics(name: str, results: pd.DataFrame, evaluation: pd.DataFrame, timing: pd.DataFrame,
                 training_seconds: float) -> dict:
    """The agent's numbers on ward ``name`` per window (``results``: the pooled table of :func:`pool_seeds`), its
    decision time against the enumeration's, its distinct plans (mean over seeds) and training time (the longest
    seed's), and every planner's windows (``policies``; ``greedy`` repeated at the top)."""
    seq = _agent_rows(evaluation[evaluation["ward"] == name])
    out = {window: block(results, name, AGENT, window) for window in WINDOWS}
    shown = results.loc[name].index.get_level_values("policy").unique()
    out.update({"decision_ms": round(float(timing.loc[name, AGENT]), 4),
                "enumeration_ms": round(float(timing.loc[name, judging.OPTIMUM]), 4),
                "distinct_plans": round(float(seq.groupby("agent_seed")["plan"].nunique().mean()), 1),
                "training_seconds": round(float(training_seconds), 1),
                "policies": {p: {w: block(results, name, p, w) for w in WINDOWS} for p in shown}})
    out["greedy"] = out["policies"]["greedy"]
    return out


def targets_of(m: dict, margin: float, nominal_share: float, max_violations: float) -> dict[str, bool]:
    """Every target of :func:`targets` (the claim's numbers), met or not, for a ward's :func:`ward_metrics`."""
    return {target: bool(check(m)) for target, check in targets(margin, nominal_share, max_violations).items()}


def describe_ward(name: str, m: dict, margin: float, nominal_share: float, max_violations: float) -> str:
    """A ward's :func:`ward_metrics` in words, then one line per target (``met`` or ``NOT met``)."""
    lines = [f"{name} (pooled over seeds): nominal {m['nominal']['acc_vs_optimum']:.2%} of the optimum, "
             f"{m['nominal']['violation_rate']:.2%} violations; fade {m['fade']['acc_vs_optimum']:.2%} "
             f"({m['fade']['violation_rate']:.2%} violations; greedy {m['greedy']['fade']['acc_vs_optimum']:.2%}); "
             f"decision {m['decision_ms']:.3f} ms vs enumeration {m['enumeration_ms']:.3f} ms; "
             f"{m['distinct_plans']} distinct plans; trained in {m['training_seconds']:.0f} s"]
    lines += [f"    {'met    ' if ok else 'NOT met'}  {target}" for target, ok in
              targets_of(m, margin, nominal_share, max_violations).items()]
    return "\n".join(lines)


def metrics(scenario: str, per_ward: dict[str, dict], adapted: dict[str, dict], bound: dict, limits: dict[str, float],
            cbc_ms: list[float], margin: float, nominal_share: float, max_violations: float, **settings) -> dict:
    """06's ``metrics.json``: the first ward's numbers at the top (pooled over seeds), every ward's under ``wards``,
    the unpruned limits, the replayed fade, the bound check, the targets (``margin``: the claim's fade share);
    ``settings`` (criterion, timesteps, ...) copied as they are."""
    head = per_ward[scenario]
    return {
        "scenario": scenario, **settings,
        "nominal": head["nominal"], "fade": head["fade"], "greedy": head["greedy"],
        "decision_ms": head["decision_ms"], "enumeration_ms": head["enumeration_ms"],
        "cbc_ms": round(float(np.median(cbc_ms)), 2), "distinct_plans": head["distinct_plans"],
        "training_seconds": head["training_seconds"],
        "wards": per_ward, "unpruned_limit": {k: round(v, 5) for k, v in limits.items()},
        "trace": {p: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in a.items()} for p, a in adapted.items()},
        "optimum_prunes_in_fade": prunes_in_fade(adapted[judging.OPTIMUM]),
        "optimum_bound": {**bound, "largest_accuracy_above_optimum": round(bound["largest_accuracy_above_optimum"], 8)},
        "targets": {name: targets_of(m, margin, nominal_share, max_violations) for name, m in per_ward.items()},
    }


ESTIMATOR_VIOLATIONS = 0.02  # violations allowed on the replay of 07's estimator loop


def large_metrics(m: dict | None) -> dict | None:
    """The many-device ward's headline (:func:`ward_metrics`' faded share, nominal share, decision times)."""
    if m is None:
        return None
    return {"acc_vs_optimum": m["fade"]["acc_vs_optimum"], "violation_rate": m["fade"]["violation_rate"],
            "nominal_acc_vs_optimum": m["nominal"]["acc_vs_optimum"], "decision_ms": m["decision_ms"],
            "enumeration_ms": m["enumeration_ms"], "faster_than_enumeration": m["decision_ms"] < m["enumeration_ms"]}


def describe_estimator_view(v: dict, margin: float) -> str:
    """The agent on the replay of 07's estimator loop against ``margin`` of the optimum and
    :data:`ESTIMATOR_VIOLATIONS`."""
    met = v["acc_vs_optimum"] >= margin and v["violation_rate"] < ESTIMATOR_VIOLATIONS
    return (f"estimator view: {v['acc_vs_optimum']:.2%} of the optimum [{v['interval'][0]:.2%}, {v['interval'][1]:.2%}], "
            f"{v['violation_rate']:.2%} violations: target (>= {margin:.0%}, < {ESTIMATOR_VIOLATIONS:.0%}) "
            f"{'met' if met else 'NOT met'}")
