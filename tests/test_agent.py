"""The sequential agent: behaviour cloning reproduces the optimum, the NumPy actor is the torch one, caching, loading."""

from __future__ import annotations

import numpy as np
import pytest

from xaiprune.planning import agent, fades, imitation, judging, nlp, rl, seqenv, system
from xaiprune.planning.env import WardEnv


def toy():
    scenario, profiles = system.random_instance(3, 3, 4, seed=1, tightness=1.3)
    return scenario, profiles


def make_env():
    scenario, profiles = toy()
    return seqenv.SegmentEnv(scenario, profiles, episode_length=40, randomise=fades.Randomisation(depth=(0.02, 1.0)))


SMALL = agent.Training(demo_requests=300, bc_epochs=100, dagger_rounds=0, timesteps=0, seed=0)


@pytest.fixture(scope="module")
def cloned():
    model, record = agent.train(make_env, SMALL, progress=False)
    return model, record


def test_behaviour_cloning_alone_reproduces_the_optimums_plan_on_most_training_states(cloned):
    model, record = cloned
    data = imitation.demonstrations(make_env, SMALL.demo_requests, seed=SMALL.seed + 1, progress=False)  # the training states
    assert record["decisions"] == len(data["actions"]) and record["curve"] == []
    assert imitation.agreement(model, data) >= 0.9
    scenario, profiles = toy()
    actor = agent.SequentialAgent(model, scenario, profiles)
    env = make_env()
    env.reset(seed=SMALL.seed + 1)
    same, n = 0, 0
    for _ in range(SMALL.demo_requests):  # whole plans on the training requests
        best = env.optimum().plan
        if best is not None:
            plan = actor.decide(env.conditions, env.ward.state.priority)
            same += plan.devices == best.devices and plan.levels == best.levels
            n += 1
        while True:
            if env.step(int(np.flatnonzero(env.action_masks())[0]))[2]:
                break
        env.reset()
    assert n > 200 and same / n >= 0.75


def test_the_numpy_actor_takes_the_torch_policys_masked_argmax(cloned):
    model, _ = cloned
    scenario, profiles = toy()
    actor = agent.SequentialAgent(model, scenario, profiles)
    env = make_env()
    env.reset(seed=99)
    for _ in range(60):
        obs, mask = env.observation(), env.action_masks()
        want = imitation.greedy_actions(model, obs[None], mask[None])[0]
        got = np.argmax(np.where(mask, actor.logits(obs), -np.inf))
        assert got == want
        env.step(int(want)) if env.part.s < env.S - 1 else (env.step(int(want)), env.reset())


def test_decide_follows_masks_so_its_plans_are_feasible_when_one_exists(cloned):
    model, _ = cloned
    scenario, profiles = toy()
    actor = agent.SequentialAgent(model, scenario, profiles)
    for m in (1.0, 0.2, 0.05, 0.01):
        conditions = scenario.with_changes(bandwidth_scale=m)
        plan = actor.decide(conditions, 1)
        exists = nlp.solve_enumeration(conditions, profiles).plan is not None
        assert system.evaluate(plan, conditions, profiles).feasible or not exists


def test_saved_agents_of_both_kinds_load_as_policies_and_the_cache_is_used(cloned, tmp_path, monkeypatch):
    from xaiprune import paths

    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    model, _ = cloned
    scenario, profiles = toy()
    path = agent.save(model, tmp_path / "agent_toy_lrp", {"kind": agent.KIND})
    act = agent.load_policy(path, scenario, profiles)
    ward = WardEnv(scenario, profiles, episode_length=5)
    obs, _ = ward.reset(seed=0)
    expected = agent.SequentialAgent(model, scenario, profiles).decide(ward.instance(), ward.state.priority)
    assert ward.plan_of(act(ward, obs)) == expected

    old, _, _ = rl.train_ppo(lambda: WardEnv(scenario, profiles, episode_length=20), 128, seed=0, eval_every=10**9,
                             progress=False, n_steps=64, batch_size=32)
    old_path = agent.save(old, tmp_path / "baseline_toy", {"kind": "multidiscrete-ppo"})
    assert np.array_equal(agent.load_policy(old_path, scenario, profiles)(ward, obs), rl.agent_policy(old)(ward, obs))

    calls = []

    def build():
        calls.append(1)
        return model, {"seconds": 1.0}
    first = agent.obtain("toy", "abc", build, agent.load, {"kind": agent.KIND})
    second = agent.obtain("toy", "abc", build, agent.load, {"kind": agent.KIND})
    assert calls == [1] and not first[2] and second[2] and second[1]["record"] == {"seconds": 1.0}
    with pytest.raises(FileNotFoundError, match="no saved agent"):
        agent.load(tmp_path / "missing")


def test_the_cache_key_changes_with_what_makes_the_agent(tmp_path):
    scenario, profiles = toy()
    f = tmp_path / "s.yaml"
    f.write_text("name: x\n")
    base = agent.cache_key(f, profiles, {"a": 1}, {"env": 1})
    assert base == agent.cache_key(f, profiles, {"a": 1}, {"env": 1})
    assert base != agent.cache_key(f, profiles, {"a": 2}, {"env": 1})
    profiles.retention[0, 1] *= 0.99
    assert base != agent.cache_key(f, profiles, {"a": 1}, {"env": 1})


def test_training_settings_are_checked_before_any_work():
    with pytest.raises(ValueError, match="demo_requests=0"):
        agent.train(make_env, agent.Training(demo_requests=0), progress=False)
    with pytest.raises(ValueError, match="timesteps=-1"):
        agent.Training(timesteps=-1).validate()


def test_the_agent_beats_greedy_in_paired_judging_on_a_faded_toy_ward(cloned):
    model, _ = cloned
    scenario, profiles = toy()
    actor = agent.SequentialAgent(model, scenario, profiles)
    over = fades.overlay(30, 3, [fades.Fade(5, 20, 0.05, "cosine")])
    frame = judging.paired(scenario, profiles, {"agent": judging.sequential(actor),
                                                "greedy": judging.from_policy(rl.greedy_policy)}, seed=123, T=30, overlay=over)
    table = judging.summary(frame, by=("policy",))
    assert table.loc["agent", "violation_rate"] == 0.0
    assert table.loc["agent", "acc_vs_optimum"] >= table.loc["greedy", "acc_vs_optimum"] - 1e-9


def test_the_cache_key_covers_every_training_module_including_the_notebooks_orchestration(tmp_path, monkeypatch):
    from pathlib import Path

    assert "training" in agent.TRAINING_CODE
    assert all((Path(agent.__file__).parent / f"{m}.py").is_file() for m in agent.TRAINING_CODE)
    _, profiles = toy()
    f = tmp_path / "s.yaml"
    f.write_text("name: x\n")
    base = agent.cache_key(f, profiles, {"a": 1}, {"env": 1})
    read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read(self, *a, **k) + "#" * (self.name == "training.py"))
    assert agent.cache_key(f, profiles, {"a": 1}, {"env": 1}) != base


def test_train_ward_trains_both_agents_once_saves_them_and_says_what_it_did(tmp_path, monkeypatch):
    from xaiprune import paths
    from xaiprune.planning import training

    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(training, "scenario_file", lambda name: tmp_path / f"{name}.yaml")
    (tmp_path / "toy.yaml").write_text("name: toy\n")
    scenario, profiles = toy()
    env = training.env_factory(scenario, profiles, 10, penalty=2.0)()
    assert env.randomise is not None and env.reward_weights.penalty == 2.0 and env.episode_length == 10
    settings = agent.Training(demo_requests=10, bc_epochs=2, dagger_rounds=1, dagger_requests=4, timesteps=64,
                              eval_every=32, eval_requests=4)
    kwargs = dict(criterion="lrp", arch="toy_cnn", profiles_file=paths.ROOT / "p.json", episode_length=10, penalty=1.0,
                  baseline_timesteps=64, out_dir=tmp_path / "out")
    first = training.train_ward("toy", scenario, profiles, settings, **kwargs)
    assert not first.cached and not first.baseline_cached
    assert (tmp_path / "out" / "agent_toy_lrp.zip").is_file() and (tmp_path / "out" / "baseline_toy.zip").is_file()
    assert first.meta["kind"] == agent.KIND and first.meta["profiles"] == "p.json" and first.meta["criterion"] == "lrp"
    assert first.baseline_meta["kind"] == training.BASELINE_KIND and first.baseline_meta["timesteps"] == 64
    assert [p["timesteps"] for p in first.record["curve"]] == [0, 32, 64] and len(first.record["dagger"]) == 1
    again = training.train_ward("toy", scenario, profiles, settings, **kwargs)
    assert again.cached and again.baseline_cached and again.record == first.record
    assert again.agent.decide(scenario, 1) == first.agent.decide(scenario, 1)
    text = training.describe("toy", again, 64)
    assert "DAgger round 0" in text and text.count("(cached)") == 2 and "64 PPO steps" in text
    assert "warm start) to" in training.fine_tuning("toy", first.record)
    assert "no fine-tuning" in training.fine_tuning("toy", {"curve": []})
