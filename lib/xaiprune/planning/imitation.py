"""Warm start of the sequential agent: behaviour cloning from the exact optimum, then DAgger rounds.

:func:`demonstrations` serves requests of randomised wards (:class:`xaiprune.planning.seqenv.SegmentEnv` with a
:class:`~xaiprune.planning.fades.Randomisation`) with the exact optimum's plan and records, per segment, the
observation, the action mask and the optimum's action, with the request's return (the terminal reward,
discount 1). :func:`clone` fits the policy of a ``MaskablePPO`` model to them: cross-entropy of the
optimum's action under the masked action distribution, plus the value head regressed on the return (so
that fine-tuning starts from a critic that agrees with the cloned actor). :func:`dagger` (Ross et al.
2011) lets the cloned policy act and labels every state it reaches with the optimum's best completion
of the partial plan it actually built (exact enumeration with the prefix fixed), so that the data
cover the policy's own mistakes. Used by :mod:`xaiprune.planning.agent`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from xaiprune.planning import nlp
from xaiprune.planning.seqenv import SegmentEnv

Data = dict[str, np.ndarray]  # obs (M, D) float32, masks (M, A) bool, actions (M,) int, returns (M,) float32


def _empty() -> dict[str, list]:
    return {"obs": [], "masks": [], "actions": [], "returns": []}


def _stack(rows: dict[str, list]) -> Data:
    return {"obs": np.asarray(rows["obs"], dtype=np.float32), "masks": np.asarray(rows["masks"], dtype=bool),
            "actions": np.asarray(rows["actions"], dtype=np.int64),
            "returns": np.asarray(rows["returns"], dtype=np.float32)}


def merge(*parts: Data) -> Data:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def demonstrations(make_env: Callable[[], SegmentEnv], requests: int, seed: int, progress: bool = True) -> Data:
    """The optimum's decisions on ``requests`` requests of randomised wards (those without a feasible plan are skipped)."""
    if requests < 1:
        raise ValueError(f"requests={requests}: expected a positive number of demonstration requests")
    env, rows = make_env(), _empty()
    env.reset(seed=seed)
    for _ in tqdm(range(requests), desc="demonstrations", unit="request", mininterval=2.0, disable=not progress):
        plan = env.optimum().plan
        if plan is None:  # nothing to imitate: serve the fallback and move on
            while True:
                _, _, done, _, _ = env.step(int(np.flatnonzero(env.action_masks())[0]))
                if done:
                    break
        else:
            start = len(rows["actions"])
            for j, l in zip(plan.devices, plan.levels):
                rows["obs"].append(env.observation())
                rows["masks"].append(env.action_masks().copy())
                rows["actions"].append(j * env.L + l)
                _, reward, done, _, _ = env.step(j * env.L + l)
            rows["returns"] += [reward] * (len(rows["actions"]) - start)
        env.reset()
    return _stack(rows)


def _check_finite(data: Data) -> None:
    """A ValueError naming the first row whose observation or return is not finite."""
    for key in ("obs", "returns"):
        rows = np.flatnonzero(~np.isfinite(data[key].reshape(len(data[key]), -1)).all(axis=1))
        if len(rows):
            raise ValueError(f"data[{key!r}] is not finite in {len(rows)} rows (the first: row {rows[0]})")


def clone(model, data: Data, epochs: int, batch_size: int = 256, lr: float = 1e-3, vf_coef: float = 0.5,
          seed: int = 0, progress: bool = True) -> list[dict]:
    """Fit ``model.policy`` (sb3-contrib's maskable actor-critic) to ``data``; the loss per epoch.

    Observations or returns that are not finite are refused up front, and a step whose loss is not finite
    stops the fit (a ValueError naming the epoch and the batch) before the clipped gradient spreads the NaN.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: expected at least one epoch of behaviour cloning")
    if not len(data["actions"]):
        raise ValueError("data holds no decision: no demonstration request had a feasible plan")
    _check_finite(data)
    policy = model.policy.train()
    optimiser = torch.optim.Adam(policy.parameters(), lr=lr)
    obs, masks = torch.as_tensor(data["obs"]), torch.as_tensor(data["masks"])
    actions, returns = torch.as_tensor(data["actions"]), torch.as_tensor(data["returns"])
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in tqdm(range(epochs), desc="behaviour cloning", unit="epoch", disable=not progress):
        order = torch.randperm(len(actions), generator=gen)
        total_pi, total_v = 0.0, 0.0
        for batch, idx in enumerate(order.split(batch_size)):
            values, log_prob, _ = policy.evaluate_actions(obs[idx], actions[idx], action_masks=masks[idx])
            loss_pi = -log_prob.mean()
            loss_v = torch.nn.functional.mse_loss(values.flatten(), returns[idx])
            loss = loss_pi + vf_coef * loss_v
            if not torch.isfinite(loss):
                raise ValueError(f"behaviour cloning, epoch {epoch}, batch {batch}: the loss is {loss.item()} "
                                 f"(cross-entropy {loss_pi.item()}, value MSE {loss_v.item()})")
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimiser.step()
            total_pi += loss_pi.item() * len(idx)
            total_v += loss_v.item() * len(idx)
        history.append({"epoch": epoch, "cross_entropy": total_pi / len(actions), "value_mse": total_v / len(actions),
                        "agreement": agreement(model, data)})
    policy.eval()
    return history


def greedy_actions(model, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The policy's most likely allowed action for each row."""
    with torch.inference_mode():
        dist = model.policy.get_distribution(torch.as_tensor(obs), action_masks=masks)
        return dist.get_actions(deterministic=True).numpy()


def agreement(model, data: Data) -> float:
    """Share of decisions where the policy's most likely allowed action is the optimum's."""
    return float((greedy_actions(model, data["obs"], data["masks"]) == data["actions"]).mean())


def dagger(model, make_env: Callable[[], SegmentEnv], requests: int, seed: int, progress: bool = True) -> Data:
    """States the policy reaches on ``requests`` requests, each labelled by the optimum's best completion of its prefix.

    The value target of those states is the return the policy's own plan got (what the critic should predict
    for the policy that reached them).
    """
    env, rows = make_env(), _empty()
    env.reset(seed=seed)
    for _ in tqdm(range(requests), desc="DAgger", unit="request", mininterval=2.0, disable=not progress):
        labelled, done, reward = [], False, 0.0
        feasible_request = env.optimum().plan is not None
        while not done:
            obs, mask = env.observation(), env.action_masks().copy()
            part = env.part
            if feasible_request:
                fixed = part.devices + [None] * (env.S - part.s)
                best = nlp.solve_enumeration(env.conditions, env.profiles, fix_devices=fixed,
                                             fix_levels=part.levels + [None] * (env.S - part.s)).plan
                if best is not None:
                    labelled.append((obs, mask, best.devices[part.s] * env.L + best.levels[part.s]))
            action = int(greedy_actions(model, obs[None], mask[None])[0])
            _, reward, done, _, _ = env.step(action)
        for obs, mask, label in labelled:
            rows["obs"].append(obs)
            rows["masks"].append(mask)
            rows["actions"].append(label)
            rows["returns"].append(reward)
        env.reset()
    return _stack(rows)
