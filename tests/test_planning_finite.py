"""Every observation and reward of the sequential agent is finite on degenerate wards; bad inputs are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from xaiprune.planning import env as ward_env
from xaiprune.planning import feasibility, seqenv, system


def toy() -> tuple[system.Scenario, system.Profiles]:
    return system.random_instance(3, 3, 3, seed=0)


def with_devices(scenario: system.Scenario, **fields_per_device) -> system.Scenario:
    """``scenario`` with device j's fields changed: ``name={j: value}`` per field."""
    devices = list(scenario.devices)
    for name, values in fields_per_device.items():
        for j, value in values.items():
            devices[j] = replace(devices[j], **{name: value})
    return replace(scenario, devices=devices)


def cut(scenario: system.Scenario, *pairs: tuple[int, int]) -> system.Scenario:
    """``scenario`` with no bandwidth on the links ``pairs`` (both directions)."""
    bw = scenario.bandwidth.copy()
    for a, b in pairs:
        bw[a, b] = bw[b, a] = 0.0
    return replace(scenario, bandwidth=bw)


def flat(profiles: system.Profiles) -> system.Profiles:
    """Pruning never costs accuracy: every retention 1, the floor at the base accuracy."""
    return replace(profiles, retention=np.ones_like(profiles.retention), floor=profiles.base_accuracy)


def no_bytes(profiles: system.Profiles) -> system.Profiles:
    return replace(profiles, out_bytes=np.zeros_like(profiles.out_bytes), input_bytes=0.0)


def no_flops(profiles: system.Profiles, s: int = 1) -> system.Profiles:
    flops = profiles.flops.copy()
    flops[s] = 0.0
    return replace(profiles, flops=flops)


def degenerate(case: str) -> tuple[system.Scenario, system.Profiles, ward_env.Dynamics | None]:
    scenario, profiles = toy()
    if case == "flat retention, floor == base":
        return scenario, flat(profiles), None
    if case == "zero-FLOP segment on a device of speed 0":
        return with_devices(scenario, speed={2: 0.0}), no_flops(profiles), None
    if case == "cut links carrying 0 bytes from 0 W radios":
        radio = {0: 0.0, 1: 0.0, 2: 0.0}
        return with_devices(cut(scenario, (0, 1), (1, 2)), radio_power=radio), no_bytes(profiles), None
    if case == "nothing feasible: every choice over a cut link, 0 W, 0 bytes":  # the fallback mask crosses cut links
        radio = {0: 0.0, 1: 0.0, 2: 0.0}
        tight = replace(cut(scenario, (0, 1), (0, 2), (1, 2)), deadline=1e-9)
        return with_devices(tight, radio_power=radio), no_bytes(profiles), None
    if case == "a device of speed near 0 under load":
        return scenario, profiles, ward_env.Dynamics(load_max=1 - 1e-12, load_step=5.0)
    if case == "caps of 0 and unlimited caps":
        return (with_devices(scenario, memory={1: 0.0, 2: np.inf}, energy_budget={1: 0.0, 2: np.inf}),
                profiles, None)
    raise KeyError(case)


CASES = ["flat retention, floor == base", "zero-FLOP segment on a device of speed 0",
         "cut links carrying 0 bytes from 0 W radios", "nothing feasible: every choice over a cut link, 0 W, 0 bytes",
         "a device of speed near 0 under load", "caps of 0 and unlimited caps"]


def served(env: seqenv.SegmentEnv, requests: int, seed: int) -> tuple[list[np.ndarray], list[float], list[dict]]:
    """Every observation, terminal reward and info of ``requests`` requests served by random masked actions."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    seen, rewards, infos = [obs], [], []
    for _ in range(requests):
        done = False
        while not done:
            obs, reward, done, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
            seen.append(obs)
        rewards.append(reward)
        infos.append(info)
        obs, _ = env.reset()
        seen.append(obs)
    return seen, rewards, infos


@pytest.mark.parametrize("case", CASES)
def test_every_observation_and_reward_is_finite_on_a_degenerate_ward(case):
    scenario, profiles, dynamics = degenerate(case)
    env = seqenv.SegmentEnv(scenario, profiles, dynamics=dynamics, episode_length=6)
    seen, rewards, infos = served(env, 15, seed=3)
    for obs in seen:
        assert obs.shape == env.observation_space.shape and np.isfinite(obs).all()
        assert env.observation_space.contains(obs)
    assert np.isfinite(rewards).all()
    assert all(not np.isnan(info["energy"]) and not np.isnan(info["latency"]) for info in infos)
    if case.startswith("nothing feasible"):  # the plans did cross cut links, on 0 W radios
        assert not any(info["feasible_exists"] for info in infos)
        assert any(info["latency"] == np.inf for info in infos) and np.isfinite([i["energy"] for i in infos]).all()


def test_flat_retention_reads_as_no_accuracy_lost():
    scenario, profiles = toy()
    env = seqenv.SegmentEnv(scenario, flat(profiles), episode_length=4)
    seen, rewards, _ = served(env, 4, seed=1)
    assert all(obs[-1] == 0.0 for obs in seen)  # the accuracy feature: nothing lost so far, at any level


def test_a_device_slowed_to_near_0_reads_as_stopped_and_is_never_allowed():
    scenario, profiles, dynamics = degenerate("a device of speed near 0 under load")
    env = seqenv.SegmentEnv(scenario, profiles, dynamics=dynamics, episode_length=6)
    env.reset(seed=0)
    env.ward.state.load[:] = [0.0, dynamics.load_max, 0.0]
    conditions = env.ward.instance()
    assert 0 < conditions.devices[1].speed < 1e-11 * scenario.devices[1].speed
    tables = feasibility.Tables(conditions, profiles)
    obs = seqenv.features(scenario, conditions, 0, tables, tables.start())
    n, S = scenario.n, profiles.S
    speed = S + n + 1 + 1 + 3 + n  # after segment, device, elapsed, deadline, priority, availability
    assert obs[speed + 1] == -1.0 and obs[speed] == 1.0 and np.isfinite(obs).all()
    assert not tables.mask(tables.start())[1].any()


def test_a_zero_flop_segment_on_a_device_of_speed_0_takes_forever_not_nan():
    scenario, profiles, _ = degenerate("zero-FLOP segment on a device of speed 0")
    tables = feasibility.Tables(scenario, profiles)
    assert np.isinf(tables.compute[:, 2, :]).all() and np.isfinite(tables.compute[:, :2, :]).all()
    assert not tables.mask(tables.start())[2].any()
    ev = system.evaluate(system.Plan([2] * profiles.S, [0] * profiles.S), scenario, profiles)
    assert ev.latency == np.inf and ev.compute_time == np.inf and any(v.startswith("deadline") for v in ev.violations)


def test_a_cut_link_carrying_0_bytes_is_infinite_and_its_0_w_radio_spends_0_j():
    scenario, profiles, _ = degenerate("cut links carrying 0 bytes from 0 W radios")
    tables = feasibility.Tables(scenario, profiles)
    for name in ("togo", "rest_mem", "rest_energy"):
        assert not np.isnan(getattr(tables, name)).any(), name
    assert tables.togo[-1, 1, :].tolist() == [np.inf] * profiles.L  # the label can't get back from device 1
    part = tables.advance(tables.start(), 1, 0)  # the image over the cut link 0 -> 1
    assert part.elapsed == np.inf and part.energy[0] == 0.0 and np.isfinite(part.energy).all()
    assert not np.isnan(tables.slack(part)).any()
    ev = system.evaluate(system.Plan([1] * profiles.S, [0] * profiles.S), scenario, profiles)
    compute = scenario.devices[1].energy_per_flop * profiles.flops[:, 0].sum()
    assert ev.latency == np.inf and ev.energy[[0, 2]].tolist() == [0.0, 0.0] and ev.energy[1] == pytest.approx(compute)


def test_a_radio_over_a_cut_link_spends_more_than_any_budget_but_a_finite_amount():
    scenario, profiles = toy()
    scenario = cut(scenario, (0, 1))
    ev = system.evaluate(system.Plan([1] * profiles.S, [0] * profiles.S), scenario, profiles)
    assert np.isfinite(ev.energy).all() and ev.energy[0] > 1e29
    assert any(v.startswith(f"energy of {scenario.devices[0].name}") for v in ev.violations)
    tables = feasibility.Tables(scenario, profiles)
    assert tables.advance(tables.start(), 1, 0).energy[0] == ev.energy[0]  # the masks charge the radio as evaluate does


def test_a_nan_in_an_observation_raises_and_names_its_block():
    scenario, profiles = toy()
    env = seqenv.SegmentEnv(scenario, profiles, episode_length=4)
    env.reset(seed=0)
    request, cap_m, cap_e, log_acc = env.tables.cache["features"]
    env.tables.cache["features"] = (request, cap_m, cap_e, np.full_like(log_acc, np.nan))
    with pytest.raises(ValueError, match=r"segment 1: feature block\(s\) \['accuracy'\] not finite"):
        env.step(int(np.flatnonzero(env.action_masks())[0]))  # segment 0 placed: the accuracy so far reads log_acc


@pytest.mark.parametrize("load_max", [1.0, 1.5, -0.1, np.nan])
def test_dynamics_refuse_a_load_that_can_stop_a_device(load_max):
    with pytest.raises(ValueError, match="load_max"):
        ward_env.Dynamics(load_max=load_max).validate()
    scenario, profiles = toy()
    with pytest.raises(ValueError, match="load_max"):
        seqenv.SegmentEnv(scenario, profiles, dynamics=ward_env.Dynamics(load_max=load_max))


@pytest.mark.parametrize("field, value", [("penalty", np.inf), ("priority_deadline", (0.6, 0.0, 2.0)),
                                          ("battery_requests", 0.0), ("sigma", np.nan)])
def test_dynamics_refuse_values_that_make_a_reward_or_a_deadline_degenerate(field, value):
    with pytest.raises(ValueError, match=field):
        ward_env.Dynamics(**{field: value}).validate()


def test_reward_weights_must_be_finite():
    with pytest.raises(ValueError, match="Reward.prune=inf"):
        seqenv.Reward(prune=np.inf).validate()


def test_the_load_feature_of_a_ward_without_load_is_finite():
    scenario, profiles = toy()
    ward = ward_env.WardEnv(scenario, profiles, ward_env.Dynamics(load_max=0.0), episode_length=5)
    obs, _ = ward.reset(seed=0)
    ward.action_space.seed(0)
    for _ in range(4):
        assert np.isfinite(obs).all()
        obs, reward, *_ = ward.step(ward.action_space.sample())
        assert np.isfinite(reward)


@pytest.mark.parametrize("mutate, match", [
    (lambda s, p: (s, replace(p, base_accuracy=0.0)), "profiles.base_accuracy"),
    (lambda s, p: (s, replace(p, retention=np.where(np.eye(*p.retention.shape) > 0, 0.0, p.retention))),
     r"profiles.retention\[0, 0\]=0.0"),
    (lambda s, p: (s, replace(p, out_bytes=np.full_like(p.out_bytes, np.nan))), "profiles.out_bytes"),
    (lambda s, p: (replace(s, deadline=0.0), p), "scenario.deadline"),
    (lambda s, p: (replace(s, deadline=np.inf), p), "scenario.deadline"),
    (lambda s, p: (with_devices(s, speed={1: np.nan}), p), r"devices\[1\] \(d1\).speed"),
    (lambda s, p: (with_devices(s, radio_power={0: np.inf}), p), r"devices\[0\] \(d0\).radio_power"),
    (lambda s, p: (with_devices(s, energy_budget={2: -1.0}), p), r"devices\[2\] \(d2\).energy_budget"),
])
def test_the_environments_refuse_degenerate_inputs_naming_the_field(mutate, match):
    scenario, profiles = mutate(*toy())
    with pytest.raises(ValueError, match=match):
        seqenv.SegmentEnv(scenario, profiles)
    with pytest.raises(ValueError, match=match):
        ward_env.WardEnv(scenario, profiles)


def sensitivity(acc: dict[tuple[str, float], float]) -> pd.DataFrame:
    """A sensitivity table of two segments at levels 0 and 0.5 (two draws), accuracies overridden by ``acc``."""
    rows = []
    for segment in ("conv1", "conv2"):
        for level in (0.0, 0.5):
            for draw in (0, 1):
                a = acc.get((segment, level), 0.9 - 0.2 * level)
                rows.append({"segment": segment, "level": level, "draw": draw, "acc": a, "auc": a, "macs": 1e6,
                             "weight_bytes": 1e4, "peak_bytes": 1e3, "out_bytes": 1e3})
    return pd.DataFrame(rows)


def test_profiles_from_sensitivity_accepts_a_sound_table():
    profiles = system.profiles_from_sensitivity(sensitivity({}), input_bytes=3136)
    assert profiles.base_accuracy == pytest.approx(0.9) and profiles.retention[:, 1] == pytest.approx(0.8 / 0.9)


@pytest.mark.parametrize("acc, match", [
    ({("conv2", 0.0): 0.0}, "acc of segment 'conv2'"),
    ({("conv1", 0.5): np.nan}, "acc of segment 'conv1'"),
    ({("conv2", 0.5): np.inf}, "acc of segment 'conv2'"),
])
def test_profiles_from_sensitivity_refuses_an_accuracy_of_0_unpruned_or_not_finite(acc, match):
    with pytest.raises(ValueError, match=match):
        system.profiles_from_sensitivity(sensitivity(acc), input_bytes=3136)


def test_profiles_from_sensitivity_refuses_a_floor_whose_log_is_not_finite():
    with pytest.raises(ValueError, match="floor=0"):
        system.profiles_from_sensitivity(sensitivity({}), input_bytes=3136, floor=0.0)


def test_cloning_refuses_data_that_is_not_finite_and_stops_at_a_step_whose_loss_is_not():
    from xaiprune.planning import agent, imitation

    def make_env():
        return seqenv.SegmentEnv(*toy(), episode_length=4)

    model = agent.new_model(make_env(), agent.Training(timesteps=0))
    data = imitation.demonstrations(make_env, 3, seed=0, progress=False)
    assert len(data["actions"]) > 0
    with pytest.raises(ValueError, match=r"data\['returns'\] is not finite in 1 rows \(the first: row 2\)"):
        imitation.clone(model, {**data, "returns": np.where(np.arange(len(data["returns"])) == 2, np.nan,
                                                             data["returns"]).astype(np.float32)}, epochs=1, progress=False)
    with torch.no_grad():
        next(model.policy.value_net.parameters()).fill_(float("nan"))  # a bug upstream: the critic answers NaN
    with pytest.raises(ValueError, match="epoch 0, batch 0: the loss is nan"):
        imitation.clone(model, data, epochs=1, progress=False)
