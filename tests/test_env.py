"""The Gymnasium environment and the RL harness."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from xaiprune.planning import env as ward_env
from xaiprune.planning import nlp, rl, system


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


def test_one_transfer_model_serves_the_system_the_environment_and_the_emulated_links():
    from xaiprune.serving.emulation import Emulator

    spec = {"name": "two", "source": "a", "deadline_ms": 1000,
            "devices": [{"name": n, "speed_gflops": 1, "memory_mb": 100, "energy_budget_j": 10,
                         "energy_nj_per_flop": 1, "radio_w": 1} for n in ("a", "b")],
            "links": {"default_mbps": 8, "pairs": [{"from": "a", "to": "b", "mbps": 8, "latency_ms": 2}]}}
    scenario = system.parse_scenario(spec)  # 1e6 bytes/s both ways; a -> b also 2 ms
    # by hand: 5e4 bytes at 1e6 B/s x 0.5 = 0.1 s, plus 2 ms; nothing on one device; no bandwidth, no transfer
    assert system.transfer_seconds(scenario, 0, 1, 5e4, multiplier=0.5) == pytest.approx(0.102)
    assert system.transfer_seconds(scenario, 1, 0, 5e4) == pytest.approx(0.05)
    assert system.transfer_seconds(scenario, 1, 1, 5e4) == 0.0
    assert system.transfer_seconds(scenario, 0, 1, 5e4, multiplier=0.0) == np.inf

    profiles = system.Profiles(["s1", "s2"], [0.0], flops=np.array([[1e8], [2e8]]), weight_bytes=np.zeros((2, 1)),
                               peak_bytes=np.zeros((2, 1)), out_bytes=np.array([[5e4], [8.0]]),
                               retention=np.ones((2, 1)), base_accuracy=0.9, input_bytes=1e4)
    trace = np.stack([np.ones((2, 2)), np.full((2, 2), 0.5)])
    env = ward_env.WardEnv(scenario, profiles, ward_env.Dynamics(p_drop=0.0, load_step=0.0, priority_probs=(0, 1, 0)),
                           trace=trace)
    env.reset(seed=0)
    plan = system.Plan([0, 1], [0, 0])  # s1 on the source, s2 on b, the label back to a
    env.step(env.action_of(plan))
    _, _, _, _, info = env.step(env.action_of(plan))  # request 1 sees the trace's 0.5
    # by hand: s1 1e8 FLOP / 1e9 = 0.1 s, s2 2e8 / 1e9 = 0.2 s, 5e4 B to b at half rate 0.102 s, 8 B back 1.6e-5 s
    assert info["latency"] == pytest.approx(0.1 + 0.2 + 0.102 + 8 / 5e5)

    # serving's emulated links (rank r = device r here) wait exactly what the model predicts
    emulated = Emulator(scenario, [0, 1], 0, trace, enabled=True)
    assert emulated.transfer_seconds(1, 5e4, step=1) == system.transfer_seconds(scenario, 0, 1, 5e4, 0.5)
    assert emulated.transfer_seconds(1, 5e4, step=2) == pytest.approx(0.052)  # the trace repeats: step 2 is nominal
    assert Emulator(scenario, [0, 1], 1, trace, enabled=False).transfer_seconds(0, 5e4, step=1) == 0.0
