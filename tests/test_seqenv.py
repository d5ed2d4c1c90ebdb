"""The sequential environment: Gymnasium conformance, seeding, masks, reward, fades and paired judging."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from xaiprune.planning import fades, judging, nlp, rl, seqenv, system
from xaiprune.planning.env import WardEnv


def make(seed: int = 0, episode_length: int = 10, **kwargs) -> seqenv.SegmentEnv:
    scenario, profiles = system.random_instance(3, 3, 4, seed=seed, tightness=1.5)
    return seqenv.SegmentEnv(scenario, profiles, episode_length=episode_length, **kwargs)


def test_check_env_passes_with_and_without_randomisation_and_the_id_is_registered():
    check_env(make(), skip_render_check=True)
    check_env(make(randomise=fades.Randomisation()), skip_render_check=True)
    scenario, profiles = system.random_instance(3, 3, 4, seed=0)
    made = gym.make(seqenv.SEQ_ENV_ID, scenario=scenario, profiles=profiles)
    assert made.action_space.n == 3 * 4


def requests(env, seed, n, choose):
    """n requests; each as (observations, masks, actions, reward, info)."""
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        seen, masks, actions, done = [obs.copy()], [], [], False
        while not done:
            masks.append(env.action_masks().copy())
            actions.append(choose(env, masks[-1]))
            obs, reward, done, truncated, info = env.step(actions[-1])
            assert not truncated
            seen.append(obs.copy())
        out.append((seen, masks, actions, reward, info))
        obs, _ = env.reset()
    return out


def first_allowed(env, mask):
    return int(np.flatnonzero(mask)[0])


def test_the_same_seed_replays_the_same_requests_and_another_does_not():
    a = requests(make(randomise=fades.Randomisation()), 7, 25, first_allowed)
    b = requests(make(randomise=fades.Randomisation()), 7, 25, first_allowed)
    c = requests(make(randomise=fades.Randomisation()), 8, 25, first_allowed)
    for x, y in zip(a, b):
        assert all(np.array_equal(u, v) for u, v in zip(x[0], y[0])) and x[2] == y[2] and x[3] == y[3]
    assert any(not np.array_equal(x[0][0], y[0][0]) for x, y in zip(a, c))


def test_an_episode_is_one_request_of_S_steps_and_the_ward_moves_on():
    env = make(episode_length=4)
    env.reset(seed=1)
    for request in range(6):
        assert env.ward.t == request % 4
        for s in range(env.S):
            _, reward, done, _, info = env.step(first_allowed(env, env.action_masks()))
            assert done == (s == env.S - 1) and (done or reward == 0.0)
        with pytest.raises(RuntimeError, match="request is complete"):
            env.step(0)
        env.reset()
    assert env.observation_space.contains(env.observation())


def test_masked_plans_never_violate_when_a_feasible_plan_exists():
    env = make(seed=2, episode_length=50, randomise=fades.Randomisation(depth=(1e-3, 0.2)))
    rng = np.random.default_rng(0)
    out = requests(env, 3, 150, lambda env, mask: int(rng.choice(np.flatnonzero(mask))))
    exists = [r[4]["feasible_exists"] for r in out]
    assert sum(exists) > 100
    assert all(r[4]["feasible"] for r in out if r[4]["feasible_exists"])


def test_reward_is_the_ratio_to_the_optimum_minus_tie_breaks_and_the_overshoot_penalty():
    env = make(seed=1, reward=seqenv.Reward(prune=0.0, latency=0.0, penalty=2.0))
    env.reset(seed=4)
    best = env.optimum().plan
    for j, l in zip(best.devices, best.levels):
        _, reward, done, _, info = env.step(j * env.L + l)
    assert done and info["feasible"] and reward == pytest.approx(1.0)
    env.reset()
    conditions = env.conditions
    heavy = system.Plan([1] * env.S, [0] * env.S)  # everything unpruned on one device: over its memory
    for j, l in zip(heavy.devices, heavy.levels):
        _, reward, _, _, info = env.step(j * env.L + l)
    ev = system.evaluate(heavy, conditions, env.profiles)
    assert not ev.feasible
    expected = ev.accuracy / env.optimum().accuracy - 2.0 * seqenv.overshoot(ev, conditions)
    assert reward == pytest.approx(expected) and seqenv.overshoot(ev, conditions) > 0


def test_overshoot_grows_with_the_excess():
    scenario, profiles = system.random_instance(3, 3, 4, seed=0)
    plan = system.Plan([0, 0, 0], [0, 0, 0])
    loose = seqenv.overshoot(system.evaluate(plan, scenario, profiles), scenario)
    tight = scenario.with_changes(deadline=scenario.deadline / 3)
    tighter = scenario.with_changes(deadline=scenario.deadline / 6)
    a = seqenv.overshoot(system.evaluate(plan, tight, profiles), tight)
    b = seqenv.overshoot(system.evaluate(plan, tighter, profiles), tighter)
    assert b > a >= 0 and a >= loose


def test_fade_shapes_go_down_to_their_depth_and_the_overlay_multiplies():
    for name in fades.SHAPES:
        m = fades.shape(name, 40, 0.01)
        assert m.max() <= 1 and m.min() >= 0.01 - 1e-12 and m.min() < 0.05
    assert fades.shape("step", 5, 0.1).tolist() == [0.1] * 5
    with pytest.raises(ValueError, match="shape='square'"):
        fades.shape("square", 5, 0.1)
    over = fades.overlay(20, 3, [fades.Fade(5, 10, 0.1, "step"), fades.Fade(0, 20, 0.5, "step", (0, 2))])
    assert over[0, 0, 1] == 1 and over[6, 0, 1] == pytest.approx(0.1) and over[6, 2, 0] == pytest.approx(0.05)
    assert set(fades.TRAINING_SHAPES).isdisjoint(fades.HELD_OUT_SHAPES)


def test_the_ward_applies_an_overlay_on_top_of_its_walk():
    scenario, profiles = system.random_instance(3, 3, 4, seed=0)
    over = fades.overlay(10, 3, [fades.Fade(2, 5, 0.01, "step")])
    ward = WardEnv(scenario, profiles, episode_length=10, overlay=over)
    ward.reset(seed=0)
    for t in range(4):
        walk = ward.state.bandwidth_mult.copy()
        inst = ward.instance()
        assert inst.bandwidth[0, 1] == pytest.approx(scenario.bandwidth[0, 1] * walk[0, 1] * over[t, 0, 1])
        ward.step(ward.action_space.sample())
    with pytest.raises(ValueError, match="overlay"):
        WardEnv(scenario, profiles, overlay=np.ones((3, 2, 2)))


def test_paired_judging_steps_every_planner_on_the_same_states():
    scenario, profiles = system.random_instance(3, 3, 4, seed=1, tightness=1.3)
    over = fades.overlay(12, 3, [fades.Fade(4, 4, 0.05, "step")])
    frame = judging.paired(scenario, profiles, {"greedy": judging.from_policy(rl.greedy_policy)}, seed=5, T=12, overlay=over)
    assert len(frame) == 24 and set(frame["window"]) == {"nominal", "fade"}
    assert (frame[frame["window"] == "fade"]["t"].tolist() == [4, 4, 5, 5, 6, 6, 7, 7])
    table = judging.summary(frame)
    assert table.loc[(judging.OPTIMUM, "nominal"), "acc_vs_optimum"] == pytest.approx(1.0)
    assert (table["acc_vs_optimum"] <= 1 + 1e-9).all()


def test_the_unpruned_limit_separates_fades_that_need_pruning():
    scenario, profiles = system.random_instance(3, 3, 4, seed=1, tightness=0.8)
    m = judging.unpruned_limit(scenario, profiles)
    assert 0 < m < 1
    unpruned = [0] * profiles.S
    assert nlp.solve_enumeration(scenario.with_changes(bandwidth_scale=m * 0.9), profiles, fix_levels=unpruned).plan is None
    assert nlp.solve_enumeration(scenario.with_changes(bandwidth_scale=m * 1.1), profiles, fix_levels=unpruned).plan is not None


def test_randomised_and_held_out_fades_stay_in_their_ranges_and_bad_settings_are_refused():
    rng = np.random.default_rng(0)
    r = fades.Randomisation()
    drawn = [r.draw(rng, 100, 4) for _ in range(200)]
    depths = [f.depth for fs, _ in drawn for f in fs]
    assert all(r.depth[0] <= d <= r.depth[1] for d in depths) and len(depths) > 150
    assert {f.shape for fs, _ in drawn for f in fs} == set(fades.TRAINING_SHAPES)
    assert all(r.p_drop[0] <= p <= r.p_drop[1] for _, p in drawn)
    held = [fades.held_out(np.random.default_rng(k), 200, 0.003) for k in range(100)]
    assert all(0.001 - 1e-12 <= f.depth <= 0.009 + 1e-12 and f.start + f.length <= 200 for f in held)
    assert {f.shape for f in held} == set(fades.HELD_OUT_SHAPES)
    with pytest.raises(ValueError, match="depth=\\(0.0, 0.5\\)"):
        fades.Randomisation(depth=(0.0, 0.5)).validate()
    with pytest.raises(ValueError, match="shapes=\\('square',\\)"):
        fades.Randomisation(shapes=("square",)).validate()
    with pytest.raises(ValueError, match="overlay and randomise"):
        make(overlay=np.ones((5, 3, 3)), randomise=fades.Randomisation())
