"""Notebook ``06_rl``'s training: per ward, the sequential agent over several training seeds and the earlier
MultiDiscrete baseline, cached.

:func:`env_factory` makes the training ward (:class:`xaiprune.planning.seqenv.SegmentEnv` with a randomised ward,
:class:`xaiprune.planning.fades.Randomisation`, per run). :func:`train_ward` obtains, for every training seed of
:func:`training_seeds`, the sequential agent from the cache of :func:`xaiprune.planning.agent.obtain` (or trains
it: :func:`xaiprune.planning.agent.train`; the seed is part of the cache key), and the baseline once (PPO over
:class:`xaiprune.planning.env.WardEnv` with :func:`xaiprune.planning.rl.train_ppo`, the first seed). Every seed's
agent is judged on the same validation requests; :func:`served_run` picks the one notebook 07 serves (the best
there) and :func:`train_ward` saves it where 07 reads it. :func:`describe`, :func:`fine_tuning` and
:func:`fine_tuning_over_seeds` say what training did. This module is part of the agent's cache key
(:data:`xaiprune.planning.agent.TRAINING_CODE`): it builds the environment the agent learns on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from xaiprune import paths, stats
from xaiprune.planning import agent, fades, rl
from xaiprune.planning.env import WardEnv
from xaiprune.planning.seqenv import Reward, SegmentEnv
from xaiprune.planning.system import Profiles, Scenario
from xaiprune.train import package_versions

BASELINE_KIND = "multidiscrete-ppo"
SEED_STRIDE = 1000    # training seeds are seed, seed + 1000, ...: each one's demonstrations, DAgger and fine-tuning
MAX_SEEDS = 9         # use seeds up to 100 + DAgger rounds above it, and held-out ward runs start at 10_000


def training_seeds(seed: int, n: int) -> list[int]:
    """The ``n`` training seeds of the agent: ``seed + SEED_STRIDE * k``, so no two share a demonstration, DAgger
    or fine-tuning ward run, and none reaches the held-out runs (10_000 and above)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise ValueError(f"n={n!r}: expected between 1 and {MAX_SEEDS} training seeds")
    return [seed + SEED_STRIDE * k for k in range(n)]


def env_factory(ward: Scenario, profiles: Profiles, episode_length: int, penalty: float = 1.0,
                estimate: float | None = None) -> Callable[[], SegmentEnv]:
    """The training ward: sequential decisions, exact masks, a new randomised ward (fades, dropouts) per run;
    with ``estimate``, seen through the link estimate (07's closed loop, :class:`~xaiprune.planning.seqenv.SegmentEnv`)."""
    reward = Reward(penalty=penalty)
    return lambda: SegmentEnv(ward, profiles, episode_length=episode_length, randomise=fades.Randomisation(),
                              reward=reward, estimate=estimate)


def scenario_file(name: str) -> Path:
    """``params/scenarios/<name>.yaml``: the ward's file (part of both agents' cache keys)."""
    return paths.PARAMS / "scenarios" / f"{name}.yaml"


@dataclass
class Run:
    """The sequential agent of one training seed: model, metadata (with the training ``record``), cache hit, actor."""

    seed: int
    model: object
    meta: dict
    cached: bool
    agent: agent.SequentialAgent
    phases: dict = field(default_factory=dict)   # the policy's weights after each of agent.PHASES

    @property
    def record(self) -> dict:
        return self.meta["record"]

    @property
    def validation(self) -> float:
        """Accuracy over the optimum's of the chosen checkpoint on the validation requests (shared by every seed)."""
        return float(self.record["checkpoint"]["acc_vs_optimum"])


@dataclass
class Trained:
    """One ward's agents: one :class:`Run` per training seed, the index of the served one, and the baseline.

    ``model``, ``meta``, ``cached``, ``agent`` and ``record`` are the served run's."""

    runs: list[Run]
    served: int
    baseline: object
    baseline_meta: dict
    baseline_cached: bool

    @property
    def run(self) -> Run:
        """The served run."""
        return self.runs[self.served]

    model = property(lambda self: self.run.model)
    meta = property(lambda self: self.run.meta)
    cached = property(lambda self: self.run.cached)
    agent = property(lambda self: self.run.agent)
    record = property(lambda self: self.run.record)
    seed = property(lambda self: self.run.seed)


def served_run(runs: list[Run]) -> int:
    """The index of the run with the best validation score (:attr:`Run.validation`); a tie goes to the first seed."""
    if not runs:
        raise ValueError("no run: train at least one seed")
    return max(range(len(runs)), key=lambda i: (runs[i].validation, -i))


def obtain_agent(name: str, make_env: Callable[[], SegmentEnv], profiles: Profiles, training: agent.Training,
                 criterion: str, metadata: dict, make_view: Callable[[], SegmentEnv] | None = None):
    """The sequential agent of ward ``name`` (cached by :func:`xaiprune.planning.agent.cache_key`): model, meta, hit.
    ``make_view``: the ward seen through the link estimate, for ``training.closed_loop_rounds``."""
    env_cfg = {**make_env().config(), **({"closed_loop": make_view().config()} if make_view else {})}
    key = agent.cache_key(scenario_file(name), profiles, {**asdict(training), "criterion": criterion}, env_cfg)
    meta = {"kind": agent.KIND, **metadata, "criterion": criterion, "training": asdict(training), "env": env_cfg,
            "versions": package_versions()}
    return agent.obtain(f"{name}-{criterion}-seed{training.seed}", key,
                        lambda: agent.train(make_env, training, make_view=make_view), agent.load, meta)


def obtain_baseline(name: str, ward: Scenario, profiles: Profiles, episode_length: int, timesteps: int, seed: int,
                    metadata: dict):
    """The earlier MultiDiscrete PPO agent (discount 0, the un-randomised ward), cached: model, meta, hit."""
    make = lambda: WardEnv(ward, profiles, episode_length=episode_length)  # noqa: E731
    cfg = {"timesteps": timesteps, "seed": seed}
    key = agent.cache_key(scenario_file(name), profiles, cfg, make().config(), kind=BASELINE_KIND)

    def build():
        started = time.perf_counter()
        with agent.one_thread():
            model, _, _ = rl.train_ppo(make, timesteps, seed=seed, eval_every=10**9)
        return model, {"seconds": time.perf_counter() - started}
    return agent.obtain(f"{name}-multidiscrete", key, build, rl.load, {"kind": BASELINE_KIND, **metadata, **cfg})


def train_ward(name: str, ward: Scenario, profiles: Profiles, training: agent.Training, *, criterion: str, arch: str,
               profiles_file: Path, episode_length: int, penalty: float, baseline_timesteps: int,
               out_dir: Path, seeds: list[int] | None = None, estimate: float | None = None) -> Trained:
    """Ward ``name``'s sequential agent for every training seed in ``seeds`` (default: ``training.seed`` alone), all
    judged on the validation requests of ``training`` (``training.validation``), and the baseline (first seed; none
    when ``baseline_timesteps`` is 0). ``estimate``: the EWMA weight of the ward seen through the link estimate, where
    ``training.closed_loop_rounds`` DAgger rounds run (none when None: the rounds are then dropped).

    The served run (:func:`served_run`) is saved as ``agent_<name>_<criterion>`` in ``out_dir`` (its metadata
    says which seed and every seed's validation score), the baseline as ``baseline_<name>``.
    """
    make_env = env_factory(ward, profiles, episode_length, penalty)
    make_view = env_factory(ward, profiles, episode_length, penalty, estimate) if estimate is not None else None
    training = training if make_view else replace(training, closed_loop_rounds=0)
    where = {"scenario": name, "arch": arch, "profiles": str(Path(profiles_file).relative_to(paths.ROOT))}
    runs = []
    for s in seeds or [training.seed]:
        settings = replace(training, seed=s, validation_seed=training.validation)
        model, meta, hit = obtain_agent(name, make_env, profiles, settings, criterion, where, make_view)
        phases = agent.phases(f"{name}-{criterion}-seed{s}", meta["cache_key"])
        runs.append(Run(s, model, meta, hit, agent.SequentialAgent(model, ward, profiles), phases))
    served = served_run(runs)
    agent.save(runs[served].model, out_dir / f"agent_{name}_{criterion}",
               {**runs[served].meta, "served_seed": runs[served].seed,
                "validation_by_seed": {str(r.seed): r.validation for r in runs}})
    if not baseline_timesteps:
        return Trained(runs, served, None, {}, False)
    old, old_meta, old_hit = obtain_baseline(name, ward, profiles, episode_length, baseline_timesteps, runs[0].seed,
                                             {"scenario": name, "arch": arch})
    agent.save(old, out_dir / f"baseline_{name}", old_meta)
    return Trained(runs, served, old, old_meta, old_hit)


def _describe_run(r: Run) -> str:
    record = r.record
    dagger = "".join(f"; DAgger round {d['round']}{' (closed loop)' if d.get('closed_loop') else ''}: "
                     f"{d['decisions']} new states, agreement "
                     f"{d['agreement_before']:.1%} -> {d['agreement_after']:.1%}" for d in record["dagger"])
    cp = record["checkpoint"]
    return (f"  seed {r.seed}: {record['decisions']} cloned decisions; agreement with the optimum after cloning "
            f"{record['clone'][-1]['agreement']:.1%}{dagger}; checkpoint at step {cp['timesteps']} "
            f"({cp['acc_vs_optimum']:.4f} of the optimum on validation); trained in {record['seconds']:.0f} s"
            f"{' (cached)' if r.cached else ''}")


def describe(name: str, t: Trained, baseline_timesteps: int) -> str:
    """What training did, seed by seed (cloned decisions, agreement with the optimum after cloning and each DAgger
    round, the checkpoint chosen on validation, time), the served seed, and the baseline."""
    baseline = ("no MultiDiscrete baseline on this ward" if t.baseline is None else
                f"MultiDiscrete baseline (seed {t.runs[0].seed}): {baseline_timesteps} PPO steps in "
                f"{t.baseline_meta['record']['seconds']:.0f} s{' (cached)' if t.baseline_cached else ''}")
    return "\n".join([f"{name}:", *map(_describe_run, t.runs),
                      f"  served (best on validation): seed {t.runs[t.served].seed}; {baseline}"])


def fine_tuning(name: str, record: dict, tol: float = 1e-4) -> str:
    """Whether MaskablePPO fine-tuning moved the validation accuracy over the optimum's (by more than ``tol``)."""
    points = record["curve"]
    if len(points) <= 1:
        return f"{name}: no fine-tuning (timesteps=0): the agent is the warm start alone"
    first, last = points[0]["acc_vs_optimum"], points[-1]["acc_vs_optimum"]
    change = last - first
    verdict = ("it helped" if change > tol else "it did not help; the warm start does the work" if change > -tol
               else "it made the policy worse")
    return (f"{name}: MaskablePPO fine-tuning moved the validation accuracy over the optimum's from {first:.4f} "
            f"(warm start) to {last:.4f} after {points[-1]['timesteps']} steps ({change:+.4f}: {verdict})")


def fine_tuning_over_seeds(runs: list[Run], n_boot: int = 2000, seed: int = 0) -> dict | None:
    """Fine-tuning's gain paired within each training seed (last point of the validation curve minus the warm start,
    on the same validation requests), its mean over seeds and a bootstrap interval over seeds; ``None`` without
    fine-tuning. ``verdict``: "helped" / "hurt" when the interval lies above / below 0, else "no clear change"."""
    gains = np.array([r.record["curve"][-1]["acc_vs_optimum"] - r.record["curve"][0]["acc_vs_optimum"]
                      for r in runs if len(r.record["curve"]) > 1])
    if gains.size == 0:
        return None
    boot = gains[np.random.default_rng(seed).integers(0, gains.size, (n_boot, gains.size))].mean(1)
    s = stats.summarise_bootstrap(float(gains.mean()), boot, 0.0, n_seeds=(gains.size, gains.size))
    lo, hi = s["interval"]
    return {"gain_by_seed": [float(g) for g in gains], "mean_gain": float(gains.mean()), "interval": [lo, hi],
            "seeds": int(gains.size), "verdict": "helped" if lo > 0 else "hurt" if hi < 0 else "no clear change"}


def describe_fine_tuning(name: str, f: dict | None) -> str:
    """:func:`fine_tuning_over_seeds` in words."""
    if f is None:
        return f"{name}: no fine-tuning (timesteps=0): the agents are the warm start alone"
    return (f"{name}: fine-tuning's gain on validation, paired within each of {f['seeds']} seed(s): mean "
            f"{f['mean_gain']:+.4f} (95% bootstrap over seeds {f['interval'][0]:+.4f} to {f['interval'][1]:+.4f}): "
            f"{f['verdict']}")
