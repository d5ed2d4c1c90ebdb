"""Notebook ``06_rl``'s training: per ward, the sequential agent and the earlier MultiDiscrete baseline, cached.

:func:`env_factory` makes the training ward (:class:`xaiprune.planning.seqenv.SegmentEnv` with a randomised ward,
:class:`xaiprune.planning.fades.Randomisation`, per run). :func:`train_ward` obtains both agents of one ward from
the cache of :func:`xaiprune.planning.agent.obtain` (or trains them: :func:`xaiprune.planning.agent.train`, and
PPO over :class:`xaiprune.planning.env.WardEnv` with :func:`xaiprune.planning.rl.train_ppo`), and saves them where
notebook 07 reads them. :func:`describe` and :func:`fine_tuning` say what training did. This module is part of
the agent's cache key (:data:`xaiprune.planning.agent.TRAINING_CODE`): it builds the environment the agent learns on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from xaiprune import paths
from xaiprune.planning import agent, fades, rl
from xaiprune.planning.env import WardEnv
from xaiprune.planning.seqenv import Reward, SegmentEnv
from xaiprune.planning.system import Profiles, Scenario
from xaiprune.train import package_versions

BASELINE_KIND = "multidiscrete-ppo"


def env_factory(ward: Scenario, profiles: Profiles, episode_length: int, penalty: float = 1.0) -> Callable[[], SegmentEnv]:
    """The training ward: sequential decisions, exact masks, a new randomised ward (fades, dropouts) per run."""
    reward = Reward(penalty=penalty)
    return lambda: SegmentEnv(ward, profiles, episode_length=episode_length, randomise=fades.Randomisation(),
                              reward=reward)


def scenario_file(name: str) -> Path:
    """``params/scenarios/<name>.yaml``: the ward's file (part of both agents' cache keys)."""
    return paths.PARAMS / "scenarios" / f"{name}.yaml"


@dataclass
class Trained:
    """Both agents of one ward, their metadata (with the training ``record``) and whether each came from the cache."""

    model: object
    meta: dict
    cached: bool
    baseline: object
    baseline_meta: dict
    baseline_cached: bool
    agent: agent.SequentialAgent

    @property
    def record(self) -> dict:
        return self.meta["record"]


def obtain_agent(name: str, make_env: Callable[[], SegmentEnv], profiles: Profiles, training: agent.Training,
                 criterion: str, metadata: dict):
    """The sequential agent of ward ``name`` (cached by :func:`xaiprune.planning.agent.cache_key`): model, meta, hit."""
    env_cfg = make_env().config()
    key = agent.cache_key(scenario_file(name), profiles, {**asdict(training), "criterion": criterion}, env_cfg)
    meta = {"kind": agent.KIND, **metadata, "criterion": criterion, "training": asdict(training), "env": env_cfg,
            "versions": package_versions()}
    return agent.obtain(f"{name}-{criterion}", key, lambda: agent.train(make_env, training), agent.load, meta)


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
               out_dir: Path) -> Trained:
    """Both agents of ward ``name``, saved as ``agent_<name>_<criterion>`` and ``baseline_<name>`` in ``out_dir``."""
    make_env = env_factory(ward, profiles, episode_length, penalty)
    model, meta, hit = obtain_agent(name, make_env, profiles, training, criterion,
                                    {"scenario": name, "arch": arch,
                                     "profiles": str(Path(profiles_file).relative_to(paths.ROOT))})
    agent.save(model, out_dir / f"agent_{name}_{criterion}", meta)
    old, old_meta, old_hit = obtain_baseline(name, ward, profiles, episode_length, baseline_timesteps, training.seed,
                                             {"scenario": name, "arch": arch})
    agent.save(old, out_dir / f"baseline_{name}", old_meta)
    return Trained(model, meta, hit, old, old_meta, old_hit, agent.SequentialAgent(model, ward, profiles))


def describe(name: str, t: Trained, baseline_timesteps: int) -> str:
    """What training did: cloned decisions, agreement with the optimum after cloning and each DAgger round, time."""
    record = t.record
    dagger = "".join(f"; DAgger round {d['round']}: {d['decisions']} new states, agreement "
                     f"{d['agreement_before']:.1%} -> {d['agreement_after']:.1%}" for d in record["dagger"])
    return (f"{name}: {record['decisions']} cloned decisions; agreement with the optimum after cloning "
            f"{record['clone'][-1]['agreement']:.1%}{dagger}; trained in {record['seconds']:.0f} s"
            f"{' (cached)' if t.cached else ''}; MultiDiscrete baseline: {baseline_timesteps} PPO steps in "
            f"{t.baseline_meta['record']['seconds']:.0f} s{' (cached)' if t.baseline_cached else ''}")


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
