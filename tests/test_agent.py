"""The sequential agent: behaviour cloning reproduces the optimum, the NumPy actor is the torch one, caching, loading."""

from __future__ import annotations

import json

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
    assert record["decisions"] == len(data["actions"]) and [p["timesteps"] for p in record["curve"]] == [0]
    assert record["checkpoint"] == {"timesteps": 0, "acc_vs_optimum": record["curve"][0]["acc_vs_optimum"], "of_points": 1}
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


def test_the_checkpoint_is_the_best_point_of_the_validation_curve_and_its_weights_are_restored():
    import torch

    net = torch.nn.Linear(2, 1)
    scores = iter([0.5, 0.7, 0.6, 0.7])  # the judge's accuracy at each point; a tie keeps the earlier point
    curve = agent.Curve(30, lambda: {"acc_vs_optimum": next(scores)}, 10, net, progress=False)
    states = []
    for step in (0, 10, 20, 30):
        with torch.no_grad():
            net.weight.fill_(float(step))
        states.append(net.weight.clone())
        curve.point(step)
    assert curve.restore() == {"timesteps": 10, "acc_vs_optimum": 0.7, "of_points": 4}
    assert torch.equal(net.weight, states[1]), "the best point's weights are back in the policy"


def test_the_validation_requests_are_shared_by_every_training_seed():
    assert agent.Training(seed=5).validation == 12 and agent.Training(seed=5, validation_seed=3).validation == 3
    from xaiprune.planning import training

    assert training.training_seeds(2, 3) == [2, 1002, 2002]
    for bad in (0, 10, True):
        with pytest.raises(ValueError, match="training seeds"):
            training.training_seeds(0, bad)


def _run(seed, curve):
    from xaiprune.planning import training

    best = max(range(len(curve)), key=lambda i: (curve[i], -i))
    record = {"curve": [{"timesteps": 10 * i, "acc_vs_optimum": v} for i, v in enumerate(curve)],
              "checkpoint": {"timesteps": 10 * best, "acc_vs_optimum": curve[best]}}
    return training.Run(seed, None, {"record": record}, False, None)


def test_the_served_seed_is_the_best_on_validation_and_fine_tuning_is_judged_paired_over_seeds():
    from xaiprune.planning import training

    runs = [_run(0, [0.90, 0.93]), _run(1000, [0.95, 0.94]), _run(2000, [0.91, 0.95])]
    assert training.served_run(runs) == 1 and training.served_run(runs[::2]) == 1
    assert training.served_run([_run(0, [0.95]), _run(1, [0.9, 0.95])]) == 0, "a tie goes to the first seed"
    f = training.fine_tuning_over_seeds(runs, n_boot=500)
    assert f["gain_by_seed"] == pytest.approx([0.03, -0.01, 0.04]) and f["mean_gain"] == pytest.approx(0.02)
    assert f["interval"][0] <= f["mean_gain"] <= f["interval"][1] and f["seeds"] == 3
    assert f["verdict"] == "no clear change", "one seed got worse: the interval over seeds reaches below 0"
    up = training.fine_tuning_over_seeds([_run(0, [0.9, 0.92]), _run(1, [0.9, 0.93])], n_boot=500)
    assert up["verdict"] == "helped" and "helped" in training.describe_fine_tuning("w", up)
    assert training.fine_tuning_over_seeds([_run(0, [0.9])]) is None
    assert "no fine-tuning" in training.describe_fine_tuning("w", None)
    with pytest.raises(ValueError, match="no run"):
        training.served_run([])


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
    first = training.train_ward("toy", scenario, profiles, settings, **kwargs, seeds=[0, 1000])
    assert not first.cached and not first.baseline_cached and [r.seed for r in first.runs] == [0, 1000]
    assert (tmp_path / "out" / "agent_toy_lrp.zip").is_file() and (tmp_path / "out" / "baseline_toy.zip").is_file()
    assert first.meta["kind"] == agent.KIND and first.meta["profiles"] == "p.json" and first.meta["criterion"] == "lrp"
    assert first.baseline_meta["kind"] == training.BASELINE_KIND and first.baseline_meta["timesteps"] == 64
    assert first.baseline_meta["seed"] == 0, "the baseline is trained once, with the first seed"
    assert [p["timesteps"] for p in first.record["curve"]] == [0, 32, 64] and len(first.record["dagger"]) == 1
    assert [r.meta["training"]["seed"] for r in first.runs] == [0, 1000], "the seed is part of the cache key"
    assert {r.meta["training"]["validation_seed"] for r in first.runs} == {7}, "one validation set for every seed"
    assert first.served == training.served_run(first.runs) and first.seed == first.runs[first.served].seed
    served = json.loads((tmp_path / "out" / "agent_toy_lrp.json").read_text())
    assert served["served_seed"] == first.seed and set(served["validation_by_seed"]) == {"0", "1000"}
    again = training.train_ward("toy", scenario, profiles, settings, **kwargs, seeds=[0, 1000])
    assert again.cached and again.baseline_cached and again.record == first.record
    assert again.agent.decide(scenario, 1) == first.agent.decide(scenario, 1)
    from xaiprune.planning import ablation

    assert all(set(r.phases) == set(agent.PHASES) for r in again.runs), "each phase's weights are kept with the cache"
    variants = ablation.planners(again.runs, scenario, profiles)
    assert len(variants) == 2 * len(ablation.VARIANTS)
    ward = WardEnv(scenario, profiles, episode_length=5)
    ward.reset(seed=0)
    final = variants[ablation.label(ablation.VARIANTS[-1], 0)](ward)
    assert final == again.runs[0].agent.decide(ward.instance(), ward.state.priority)
    text = training.describe("toy", again, 64)
    assert "DAgger round 0" in text and text.count("(cached)") == 3 and "64 PPO steps" in text
    assert "seed 1000:" in text and f"served (best on validation): seed {first.seed}" in text
    assert "warm start) to" in training.fine_tuning("toy", first.record)
    assert "no fine-tuning" in training.fine_tuning("toy", {"curve": []})
