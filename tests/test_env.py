"""The Gymnasium environment and the RL harness."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from xaiprune import env as ward_env
from xaiprune import nlp, rl, system


def make(seed: int = 0, **kwargs) -> ward_env.WardEnv:
    scenario, profiles = system.random_instance(3, 3, 4, seed=seed, tightness=1.5)
    return ward_env.WardEnv(scenario, profiles, episode_length=kwargs.pop("episode_length", 20), **kwargs)


def test_check_env_passes_and_the_id_is_registered():
    env = make()
    check_env(env, skip_render_check=True)
    scenario, profiles = system.random_instance(3, 3, 4, seed=0)
    made = gym.make(ward_env.ENV_ID, scenario=scenario, profiles=profiles)
    assert made.observation_space.shape == env.observation_space.shape


def episode(env, seed, policy):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = []
    done = False
    while not done:
        obs, reward, term, trunc, info = env.step(policy(env, obs))
        out.append((obs.copy(), reward, info["latency"], tuple(info["violations"])))
        done = term or trunc
    return out


def test_the_same_seed_replays_the_same_episode():
    a = episode(make(), 7, rl.random_policy)
    b = episode(make(), 7, rl.random_policy)
    c = episode(make(), 8, rl.random_policy)
    assert len(a) == 20
    assert all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_reward_is_the_plan_accuracy_when_nothing_is_violated():
    env = make()
    env.reset(seed=1)
    plan = nlp.solve_enumeration(env.instance(), env.profiles).plan
    _, reward, _, _, info = env.step(ward_env.WardEnv.action_of(plan))
    assert info["feasible"] and reward == pytest.approx(info["accuracy"])
    assert info["accuracy"] == pytest.approx(env.profiles.accuracy(plan.levels))


def test_violations_cost_a_penalty_each():
    env = make(dynamics=ward_env.Dynamics(penalty=0.5))
    env.reset(seed=1)
    everything_on_one = ward_env.WardEnv.action_of(system.Plan([1, 1, 1], [0, 0, 0]))
    _, reward, _, _, info = env.step(everything_on_one)
    assert info["violations"]
    assert reward == pytest.approx(info["accuracy"] - 0.5 * len(info["violations"]))


def test_dynamics_move_and_stay_in_range():
    env = make(episode_length=200, dynamics=ward_env.Dynamics(p_drop=0.2))
    env.reset(seed=3)
    seen_down, mults = False, []
    for _ in range(200):
        env.step(env.action_space.sample())
        st = env.state
        assert st.available[env.scenario.source]
        seen_down |= not st.available.all()
        mults.append(st.bandwidth_mult.copy())
        assert (st.load >= 0).all() and (st.load <= env.dynamics.load_max).all()
    m = np.array(mults)
    assert seen_down and m.min() >= env.dynamics.m_min and m.max() <= env.dynamics.m_max and m.std() > 0.05


def test_a_trace_is_replayed():
    trace = np.stack([np.full((3, 3), f) for f in (1.0, 0.5, 0.1)])
    env = make(trace=trace)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert np.allclose(env.state.bandwidth_mult, 0.5)
    with pytest.raises(ValueError, match="trace"):
        make(trace=np.ones((4, 2, 2)))


def test_saved_policy_loads_and_acts_identically(tmp_path):
    model, _, _ = rl.train_ppo(make, timesteps=256, seed=0, eval_every=10**9, progress=False, n_steps=128, batch_size=64)
    path = rl.save(model, tmp_path / "agent", {"scenario": "random-0"})
    loaded, meta = rl.load(path)
    assert meta == {"scenario": "random-0"}
    env = make()
    obs, _ = env.reset(seed=5)
    fast = rl.agent_policy(loaded)
    for _ in range(10):
        a = model.predict(obs, deterministic=True)[0]
        assert np.array_equal(a, loaded.predict(obs, deterministic=True)[0])
        assert np.array_equal(a, fast(env, obs))
        obs, *_ = env.step(a)


def test_short_training_beats_random_on_a_toy_scenario():
    def toy():
        scenario, profiles = system.random_instance(2, 2, 3, seed=4, tightness=1.0)
        return ward_env.WardEnv(scenario, profiles, episode_length=50,
                                dynamics=ward_env.Dynamics(p_drop=0.0, sigma=0.1))
    model, _, _ = rl.train_ppo(toy, timesteps=6000, seed=0, eval_every=10**9, progress=False,
                               n_steps=256, batch_size=64, learning_rate=1e-3)
    seeds = [101, 102]
    agent = rl.rollout(toy(), rl.agent_policy(model), seeds)
    rand = rl.rollout(toy(), rl.random_policy, seeds)
    assert agent["reward"].mean() > rand["reward"].mean() + 0.2


def test_fade_trace_fades_holds_and_recovers():
    trace = ward_env.fade_trace(100, 3, low=0.1)
    assert trace.shape == (100, 3, 3)
    m = trace[:, 0, 1]
    assert (m[:25] == 1).all() and np.isclose(m[60], 0.1) and np.isclose(m[-1], 1) and m.min() >= 0.1 - 1e-12
    with pytest.raises(ValueError, match="T=2"):
        ward_env.fade_trace(2, 3)
