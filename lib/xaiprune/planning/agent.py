"""The sequential agent: trained (clone the optimum, DAgger, fine-tune with MaskablePPO), cached, deployed.

:func:`train` builds an sb3-contrib ``MaskablePPO`` (maskable PPO, Huang & Ontanon 2022, on PPO,
Schulman et al. 2017) over :class:`xaiprune.planning.seqenv.SegmentEnv`, warm-starts its policy by behaviour
cloning of the exact optimum (:mod:`xaiprune.planning.imitation`), runs DAgger rounds, and fine-tunes it with
MaskablePPO (discount 1 within a request), judging the deterministic policy on fixed validation requests
along the way and keeping the best checkpoint there (the warm start if fine-tuning never beats it).
:class:`SequentialAgent` is what serves: it plans a request by
S forward passes of the policy network, in NumPy (the same weights, the same argmax as torch; tested),
each taking the most likely action the exact mask allows. :func:`policy` wraps it in the
``(WardEnv, observation) -> action`` interface of :mod:`xaiprune.planning.rl` that notebook 07's planner calls,
and :func:`load_policy` reads either kind of saved agent (this one, or the earlier MultiDiscrete PPO
kept as a baseline). Trained agents are cached under ``artifacts/models/`` by a hash of everything that
made them (:func:`cache_key`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from xaiprune import paths
from xaiprune.train import package_versions
from xaiprune.planning import imitation
from xaiprune.planning.rl import save  # noqa: F401 (both agents share one file layout: <path>.zip and <path>.json)
from xaiprune.planning.env import WardEnv
from xaiprune.planning.feasibility import Tables
from xaiprune.planning.seqenv import SegmentEnv, fallback_mask, features
from xaiprune.planning.system import Plan, Profiles, Scenario

KIND = "sequential-maskable-ppo"
PHASES = ("behaviour cloning", "+ DAgger")  # the policy's weights kept after each (the last, "+ PPO", is the model)
PHASES_KEY = "_phases"                      # where :func:`train` passes them to :func:`obtain`, which saves them apart
TRAINING_CODE = ("agent", "imitation", "seqenv", "feasibility", "fades", "env", "rl", "system", "nlp", "solution",
                 "training", "estimation")  # modules (files of this package) whose source is part of the cache key


@dataclass(frozen=True)
class Training:
    """Everything that makes an agent besides the ward and the profiles (part of the cache key)."""

    demo_requests: int = 700        # 06's defaults (per training seed)
    bc_epochs: int = 30
    dagger_rounds: int = 1
    dagger_requests: int = 200
    closed_loop_rounds: int = 0     # DAgger rounds more on the ward seen through the link estimate (train's make_view)
    timesteps: int = 1000           # MaskablePPO fine-tuning steps (segment decisions)
    seed: int = 0
    net_arch: tuple[int, ...] = (128, 128)
    learning_rate: float = 1e-4     # fine-tuning (behaviour cloning uses 1e-3)
    eval_every: int = 1000
    eval_requests: int = 100
    validation_seed: int | None = None  # seed of the validation requests (None: seed + 7); shared across training seeds

    @property
    def validation(self) -> int:
        """The seed of the validation requests on which the curve is judged and the checkpoint chosen."""
        return self.seed + 7 if self.validation_seed is None else self.validation_seed

    def validate(self) -> "Training":
        for name in ("demo_requests", "bc_epochs", "eval_every", "eval_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive integer")
        for name in ("dagger_rounds", "dagger_requests", "timesteps", "closed_loop_rounds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a non-negative integer")
        return self


def new_model(env: SegmentEnv, training: Training) -> MaskablePPO:
    """An untrained MaskablePPO over ``env``: discount 1 (one request per episode), small clip, no entropy bonus.

    Rollouts of 1000 decisions (fewer when fine-tuning is shorter), minibatches of a quarter of that.
    """
    n_steps = min(1000, max(training.timesteps, 64))
    return MaskablePPO("MlpPolicy", env, seed=training.seed, verbose=0, device="cpu", gamma=1.0, gae_lambda=1.0,
                       n_steps=n_steps, batch_size=n_steps // 4, n_epochs=5, learning_rate=training.learning_rate,
                       clip_range=0.1, ent_coef=0.0, policy_kwargs=dict(net_arch=list(training.net_arch)))


class Curve(BaseCallback):
    """A tqdm bar over fine-tuning steps, and every ``every`` steps the deterministic policy on the fixed validation
    requests; the policy's weights at the best point so far are kept (a later point must be strictly better)."""

    def __init__(self, total: int, judge: Callable[[], dict], every: int, policy: torch.nn.Module,
                 progress: bool = True):
        super().__init__()
        self.total, self.judge, self.every, self.net, self.progress = total, judge, every, policy, progress
        self.points: list[dict] = []
        self.best: tuple[int, dict] | None = None  # (index of the point, the policy's weights there)

    def point(self, timesteps: int) -> dict:
        """Judge the policy now; keep its weights if it is the best so far."""
        self.points.append({"timesteps": timesteps, **self.judge()})
        if self.best is None or self.points[-1]["acc_vs_optimum"] > self.points[self.best[0]]["acc_vs_optimum"]:
            self.best = (len(self.points) - 1, copy.deepcopy(self.net.state_dict()))
        return self.points[-1]

    def restore(self) -> dict:
        """Put the best point's weights back into the policy; the chosen checkpoint (its step and validation score)."""
        index, state = self.best
        self.net.load_state_dict(state)
        return {"timesteps": self.points[index]["timesteps"], "acc_vs_optimum": self.points[index]["acc_vs_optimum"],
                "of_points": len(self.points)}

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, desc="MaskablePPO", unit="step", mininterval=2.0, disable=not self.progress)
        self.point(0)

    def _on_step(self) -> bool:
        self.bar.update(1)
        if self.num_timesteps % self.every == 0:
            self.bar.set_postfix(acc=f"{self.point(self.num_timesteps)['acc_vs_optimum']:.3f}")
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def judge(model: MaskablePPO, make_env: Callable[[], SegmentEnv], requests: int, seed: int) -> dict:
    """The deterministic masked policy on ``requests`` fixed requests: accuracy over the optimum's (a violating plan
    counting 0), violations, mean reward."""
    env = make_env()
    env.reset(seed=seed)
    acc, best, violated, reward = 0.0, 0.0, 0, 0.0
    for _ in range(requests):
        done = False
        while not done:
            a = imitation.greedy_actions(model, env.observation()[None], env.action_masks()[None])[0]
            _, r, done, _, info = env.step(int(a))
        if info["feasible_exists"]:
            acc += info["accuracy"] * info["feasible"]
            best += info["optimum_accuracy"]
            violated += not info["feasible"]
        reward += r
        env.reset()
    return {"acc_vs_optimum": acc / max(best, 1e-12), "violations": violated, "reward": reward / requests}


@contextmanager
def one_thread():
    """Torch on one thread for the duration: a small MLP trains faster so than with two threads contending."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(make_env: Callable[[], SegmentEnv], training: Training, progress: bool = True,
          make_view: Callable[[], SegmentEnv] | None = None) -> tuple[MaskablePPO, dict]:
    """Clone, DAgger, fine-tune (on one torch thread); the model and a record of every phase (losses,
    agreement, the fine-tuning curve, seconds). ``make_view``: the training ward seen through the link estimate
    (:class:`~xaiprune.planning.seqenv.SegmentEnv` with ``estimate``), where ``closed_loop_rounds`` more DAgger
    rounds run after the ordinary ones."""
    if training.closed_loop_rounds and make_view is None:
        raise ValueError(f"closed_loop_rounds={training.closed_loop_rounds} needs make_view, the ward seen through the estimate")
    with one_thread():
        return _train(make_env, training.validate(), progress, make_view)


def _dagger_round(model, data: dict, make: Callable[[], SegmentEnv], t: Training, k: int, seed: int,
                  progress: bool) -> tuple[dict, dict]:
    """One DAgger round on the wards ``make`` builds: the data grown by the states the policy reached, and its record."""
    more = imitation.dagger(model, make, t.dagger_requests, seed=seed, progress=progress)
    data = imitation.merge(data, more)
    before = imitation.agreement(model, more)
    history = imitation.clone(model, data, max(1, t.bc_epochs // 2), seed=t.seed + k + 1, progress=progress)
    return data, {"round": k, "decisions": int(len(more["actions"])), "agreement_before": before,
                  "agreement_after": imitation.agreement(model, more), "loss": history[-1]}


def _train(make_env: Callable[[], SegmentEnv], t: Training, progress: bool,
           make_view: Callable[[], SegmentEnv] | None = None) -> tuple[MaskablePPO, dict]:
    started = time.perf_counter()
    model = new_model(make_env(), t)
    data = imitation.demonstrations(make_env, t.demo_requests, seed=t.seed + 1, progress=progress)
    record = {"decisions": int(len(data["actions"])), "clone": imitation.clone(model, data, t.bc_epochs, seed=t.seed,
                                                                               progress=progress)}
    phases = {PHASES[0]: copy.deepcopy(model.policy.state_dict())}
    record["dagger"] = []
    for k in range(t.dagger_rounds):
        data, round_record = _dagger_round(model, data, make_env, t, k, t.seed + 100 + k, progress)
        record["dagger"].append(round_record)
    for k in range(t.closed_loop_rounds):
        data, round_record = _dagger_round(model, data, make_view, t, t.dagger_rounds + k, t.seed + 200 + k, progress)
        record["dagger"].append({**round_record, "closed_loop": True})
    phases[PHASES[1]] = copy.deepcopy(model.policy.state_dict())
    record["seconds_warm_start"] = time.perf_counter() - started
    curve = Curve(t.timesteps, lambda: judge(model, make_env, t.eval_requests, seed=t.validation), t.eval_every,
                  model.policy, progress)
    if t.timesteps:  # on the env the model was built with (seeded by MaskablePPO's seed)
        model.learn(total_timesteps=t.timesteps, callback=curve)
    else:
        curve.point(0)
    record["curve"], record["checkpoint"] = curve.points, curve.restore()
    record["seconds"] = time.perf_counter() - started
    record[PHASES_KEY] = phases
    return model, record


# ----- serving ---------------------------------------------------------------------------------
def _numpy_layers(module: torch.nn.Module) -> list:
    layers = []
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            layers.append((m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()))
        elif isinstance(m, (torch.nn.Tanh, torch.nn.ReLU)):
            layers.append(np.tanh if isinstance(m, torch.nn.Tanh) else (lambda x: np.maximum(x, 0.0)))
    return layers


class SequentialAgent:
    """The trained actor in NumPy: a request's plan in S masked argmax decisions."""

    def __init__(self, model: MaskablePPO, scenario: Scenario, profiles: Profiles):
        policy = model.policy
        self.layers = _numpy_layers(policy.mlp_extractor.policy_net) + _numpy_layers(policy.action_net)
        self.scenario, self.profiles, self.L = scenario, profiles, profiles.L

    def logits(self, obs: np.ndarray) -> np.ndarray:
        x = obs.astype(np.float64)
        for layer in self.layers:
            x = x @ layer[0] + layer[1] if isinstance(layer, tuple) else layer(x)
        return x

    def decide(self, conditions: Scenario, priority: int) -> Plan:
        """The plan for a request on ``conditions`` (the ward as it is now) with priority index ``priority``."""
        tables = Tables(conditions, self.profiles)
        part = tables.start()
        for _ in range(self.profiles.S):
            mask = tables.mask(part)
            if not mask.any():
                mask = fallback_mask(tables)
            obs = features(self.scenario, conditions, priority, tables, part)
            scores = np.where(mask.ravel(), self.logits(obs), -np.inf)
            j, l = divmod(int(np.argmax(scores)), self.L)
            part = tables.advance(part, j, l)
        return part.plan


def policy(agent: SequentialAgent) -> Callable[[WardEnv, np.ndarray], np.ndarray]:
    """The agent as an ``(env, observation) -> action`` of :mod:`xaiprune.planning.rl` (the observation is not used)."""
    def act(env: WardEnv, obs: np.ndarray) -> np.ndarray:
        return WardEnv.action_of(agent.decide(env.instance(), env.state.priority))
    return act


# ----- saving, loading, caching -----------------------------------------------------------------
def cache_key(scenario_file: Path, profiles: Profiles, settings: dict, env_config: dict, kind: str = KIND) -> str:
    """SHA-256 (12 hex digits) of the scenario file, the profiles, the training settings, the env config, the
    agent's kind, the source of the modules that train it and the versions of the packages they use."""
    code = "".join((Path(__file__).parent / f"{m}.py").read_text() for m in TRAINING_CODE)
    payload = {"scenario": Path(scenario_file).read_text(), "settings": settings, "env": env_config, "kind": kind,
               "code": hashlib.sha256(code.encode()).hexdigest(),
               "profiles": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in profiles.__dict__.items()},
               "versions": {k: v for k, v in package_versions().items()
                            if k in ("python", "torch", "stable-baselines3", "sb3-contrib", "numpy", "gymnasium")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def obtain(name: str, key: str, build: Callable[[], tuple[object, dict]], load_fn: Callable, metadata: dict):
    """The agent cached as ``artifacts/models/agent-<name>-<key>`` if there, else ``build()`` it and cache it.

    Returns the model, its metadata (with ``record``: what :func:`train` recorded, training time included)
    and whether it came from the cache.
    """
    path = paths.models_dir() / f"agent-{name}-{key}"
    if path.with_suffix(".zip").is_file() and path.with_suffix(".json").is_file():
        model, meta = load_fn(path)
        return model, meta, True
    model, record = build()
    phases = record.pop(PHASES_KEY, None)
    meta = {**metadata, "cache_key": key, "record": record}
    save(model, path, meta)
    if phases is not None:
        torch.save(phases, path.with_suffix(".phases.pt"))
    return model, meta, False


def phases(name: str, key: str) -> dict[str, dict]:
    """The policy's weights after each training phase (:data:`PHASES`) of the cached agent ``name``/``key``."""
    path = (paths.models_dir() / f"agent-{name}-{key}").with_suffix(".phases.pt")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no phase weights for this agent (trained before they were kept: delete "
                                "its cached .zip to train it again)")
    return torch.load(path, map_location="cpu", weights_only=True)


def with_weights(model: MaskablePPO, state: dict, scenario: Scenario, profiles: Profiles) -> "SequentialAgent":
    """A :class:`SequentialAgent` of ``model``'s architecture with the policy weights ``state`` (a phase's)."""
    final = copy.deepcopy(model.policy.state_dict())
    model.policy.load_state_dict(state)
    try:
        return SequentialAgent(model, scenario, profiles)  # it copies the weights it reads
    finally:
        model.policy.load_state_dict(final)


def criterion_of_profiles() -> str:
    """The relevance criterion that pruned the models of the profiles (04's ``sensitivity_criterion``)."""
    meta = paths.stage_dir("04_pruning_comparison") / "meta.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing: run 04_pruning_comparison first "
                                "(its sensitivity table made the profiles)")
    return json.loads(meta.read_text())["parameters"]["sensitivity_criterion"]


def agent_file(scenario: str, criterion: str) -> Path:
    """``artifacts/<profile>/06_rl/agent_<scenario>_<criterion>`` (.zip, .json): the agent 07 serves."""
    return paths.stage_dir("06_rl") / f"agent_{scenario}_{criterion}"


def load(path: str | Path) -> tuple[MaskablePPO, dict]:
    path = Path(path)
    if not path.with_suffix(".zip").is_file():
        raise FileNotFoundError(f"{path.with_suffix('.zip')}: no saved agent there (run 06_rl.ipynb)")
    meta = path.with_suffix(".json")
    metadata = json.loads(meta.read_text()) if meta.is_file() else {}
    return MaskablePPO.load(path.with_suffix(".zip"), device="cpu"), metadata


def load_policy(path: str | Path, scenario: Scenario, profiles: Profiles):
    """The ``(env, observation) -> action`` of a saved agent of either kind (its metadata's ``kind`` says which)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
    if meta.get("kind") == KIND:
        model, _ = load(path)
        return policy(SequentialAgent(model, scenario, profiles))
    from xaiprune.planning import rl

    model, _ = rl.load(path)
    return rl.agent_policy(model)
