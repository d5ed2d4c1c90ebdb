"""The earlier MultiDiscrete agent (06's labelled baseline) and the per-request policies both agents are judged against.

The earlier agent is Stable-Baselines3's PPO (Schulman et al. 2017) with an MLP policy over the
:class:`xaiprune.planning.env.WardEnv` observation and its MultiDiscrete action (a device and a level per
segment, all at once), trained with discount 0 and no masks; the sequential agent that replaced it is
:mod:`xaiprune.planning.agent`. The policies here map ``(env, observation)`` to a WardEnv action: the NLP optimum
solved per request, a greedy heuristic, random, no pruning, the earlier agent; :mod:`xaiprune.planning.judging`
turns them into planners judged on identical requests, and 07's planner calls them. :func:`rollout`
runs one policy on seeded episodes (the baseline's training curve).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from tqdm import tqdm

from xaiprune.planning import nlp
from xaiprune.planning.env import WardEnv
from xaiprune.planning.system import Plan


class Progress(BaseCallback):
    """A tqdm bar over the training timesteps, and a periodic deterministic evaluation for the curve."""

    def __init__(self, total: int, eval_env: WardEnv | None = None, eval_every: int = 5000,
                 eval_seeds: tuple[int, ...] = (10_000,), progress: bool = True):
        super().__init__()
        self.total, self.eval_env, self.eval_every, self.eval_seeds = total, eval_env, eval_every, eval_seeds
        self.progress = progress
        self.curve: list[dict] = []

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, desc="PPO", unit="step", mininterval=2.0, disable=not self.progress)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        if self.eval_env is not None and self.num_timesteps % self.eval_every < self.training_env.num_envs:
            stats = rollout(self.eval_env, agent_policy(self.model), self.eval_seeds)
            self.curve.append({"timesteps": self.num_timesteps, "accuracy": stats["accuracy"].mean(),
                               "violation_rate": 1 - stats["feasible"].mean(), "reward": stats["reward"].mean()})
            self.bar.set_postfix(acc=f"{self.curve[-1]['accuracy']:.3f}",
                                 viol=f"{self.curve[-1]['violation_rate']:.2%}")
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def train_ppo(make_env: Callable[[], WardEnv], timesteps: int, seed: int = 0, eval_every: int = 5000,
              progress: bool = True, **ppo_kwargs) -> tuple[PPO, pd.DataFrame, pd.DataFrame]:
    """Train PPO on ``make_env()``; return the model, the episode log and the evaluation curve."""
    if timesteps < 1:
        raise ValueError(f"timesteps={timesteps}; expected a positive integer")
    env = Monitor(make_env())
    env.reset(seed=seed)
    defaults = dict(n_steps=1024, batch_size=256, learning_rate=3e-4, gamma=0.0, ent_coef=0.01,
                    policy_kwargs=dict(net_arch=[128, 128]))
    model = PPO("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **{**defaults, **ppo_kwargs})
    callback = Progress(timesteps, make_env(), eval_every, progress=progress)
    model.learn(total_timesteps=timesteps, callback=callback)
    episodes = pd.DataFrame({"episode": np.arange(len(env.get_episode_rewards())),
                             "reward": env.get_episode_rewards(), "length": env.get_episode_lengths()})
    return model, episodes, pd.DataFrame(callback.curve)


def save(model: BaseAlgorithm, path: str | Path, metadata: dict) -> Path:
    """Save a policy (``<path>.zip``) with its metadata (``<path>.json``: env config, training, versions); the .zip
    path. Used for this baseline and for the sequential agent of :mod:`xaiprune.planning.agent`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path.with_suffix(".zip"))
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2, default=str))
    return path.with_suffix(".zip")


def load(path: str | Path) -> tuple[PPO, dict]:
    path = Path(path)
    meta_path = path.with_suffix(".json")
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return PPO.load(path.with_suffix(".zip"), device="cpu"), metadata


# ----- policies: (env, observation) -> action ---------------------------------------------------
Policy = Callable[[WardEnv, np.ndarray], np.ndarray]


def agent_policy(model: PPO) -> Policy:
    """The trained agent's deterministic action: the mode of its policy distribution.

    Calls the policy network directly under ``torch.inference_mode`` (``model.predict`` gives the
    same action but spends more time in input checks and conversions).
    """
    policy = model.policy.eval()

    def act(env: WardEnv, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            dist = policy.get_distribution(torch.as_tensor(obs, dtype=torch.float32)[None])
            return dist.get_actions(deterministic=True)[0].numpy()
    return act


def _fallback(env: WardEnv) -> Plan:
    r = nlp.greedy(env.instance(), env.profiles)
    return r.plan


def nlp_policy(solver: str = "enumeration", time_limit: float = 30.0) -> Policy:
    """The optimum of the current instance; when none exists, greedy's best effort (it will violate)."""
    def act(env: WardEnv, obs: np.ndarray) -> np.ndarray:
        r = nlp.solve(env.instance(), env.profiles, solver, time_limit=time_limit) if solver == "enumeration" else \
            nlp.solve_milp(env.instance(), env.profiles, time_limit, explain_infeasible=False)
        return WardEnv.action_of(r.plan if r.plan is not None else _fallback(env))
    return act


def greedy_policy(env: WardEnv, obs: np.ndarray) -> np.ndarray:
    return WardEnv.action_of(_fallback(env))


def no_pruning_policy(env: WardEnv, obs: np.ndarray) -> np.ndarray:
    """The best placement with nothing pruned (violating if none is feasible)."""
    S = env.profiles.S
    r = nlp.solve_enumeration(env.instance(), env.profiles, fix_levels=[0] * S)
    plan = r.plan if r.plan is not None else Plan(_fallback(env).devices, [0] * S)
    return WardEnv.action_of(plan)


def one_device_policy(env: WardEnv, obs: np.ndarray) -> np.ndarray:
    """The whole unpruned model on the source device (07's "one device": what the source would do alone)."""
    return WardEnv.action_of(Plan([env.scenario.source] * env.profiles.S, [0] * env.profiles.S))


def random_policy(env: WardEnv, obs: np.ndarray) -> np.ndarray:
    return env.action_space.sample()


def rollout(env: WardEnv, policy: Policy, seeds: tuple[int, ...] | list[int], name: str = "") -> pd.DataFrame:
    """Run ``policy`` on one episode per seed; one row per request."""
    rows = []
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        done = False
        while not done:
            start = time.perf_counter()
            action = policy(env, obs)
            decision = time.perf_counter() - start
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            rows.append({"policy": name, "seed": seed, "t": env.t - 1, "reward": reward,
                         "accuracy": info["accuracy"], "feasible": info["feasible"],
                         "violations": "; ".join(info["violations"]), "latency_ms": info["latency"] * 1e3,
                         "energy_j": info["energy"], "decision_ms": decision * 1e3,
                         "pruning": float(np.mean([env.profiles.levels[l] for l in info["plan"].levels])),
                         "priority": info["priority"]})
    return pd.DataFrame(rows)
