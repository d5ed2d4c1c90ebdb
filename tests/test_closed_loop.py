"""The training ward seen through 07's link estimate, and DAgger in that closed loop."""

import numpy as np
import pytest

from xaiprune.planning import agent, fades, seqenv, system
from xaiprune.planning.estimation import LinkEstimator


def _faded_env(estimate):
    scenario, profiles = system.random_instance(3, 3, 4, seed=1, tightness=1.0)
    overlay = np.full((8, 3, 3), 0.01)  # every link at 1% of nominal from the first request on
    return scenario, seqenv.SegmentEnv(scenario, profiles, episode_length=8, overlay=overlay, estimate=estimate)


def _serve_one(env):
    done = False
    while not done:
        _, _, done, _, info = env.step(int(np.flatnonzero(env.action_masks())[0]))
    return info


def test_through_the_estimate_the_agent_first_sees_stale_links_then_learns_the_fade():
    scenario, env = _faded_env(0.5)
    env.reset(seed=0)
    off = ~np.eye(scenario.n, dtype=bool)
    assert np.allclose(env.conditions.bandwidth[off], scenario.bandwidth[off]), "the prior: nominal links"
    assert np.allclose(env.truth.bandwidth[off], 0.01 * scenario.bandwidth[off]), "the links really faded"
    plan = _serve_one(env)["plan"]
    env.reset()
    crossed = [(a, b) for a, b in zip([scenario.source, *plan.devices], [*plan.devices, scenario.source]) if a != b]
    for a, b in crossed:
        assert env.conditions.bandwidth[a, b] < 0.6 * scenario.bandwidth[a, b], "a link the plan crossed is learnt"
    assert env.config()["estimate"] == 0.5
    _, plain = _faded_env(None)
    plain.reset(seed=0)
    assert plain.conditions is plain.truth and "estimate" not in plain.config()


def test_the_estimator_views_a_ward_and_learns_from_a_plan_carried_out_on_the_truth():
    scenario, profiles = system.random_instance(3, 3, 4, seed=1)
    est = LinkEstimator(scenario, alpha=1.0)
    truth = scenario.with_changes(bandwidth_scale=0.1)
    plan = system.Plan([1, 2, 2], [0, 0, 0])
    est.observe_plan(plan, truth, profiles)
    view = est.view(truth)
    assert view.bandwidth[0, 1] == pytest.approx(truth.bandwidth[0, 1]) and view.bandwidth[1, 2] == pytest.approx(truth.bandwidth[1, 2])
    assert view.bandwidth[0, 2] == pytest.approx(scenario.bandwidth[0, 2]), "a link not crossed keeps its estimate"
    assert view.devices == truth.devices and view.deadline == truth.deadline
    with pytest.raises(ValueError, match="estimate"):
        seqenv.SegmentEnv(scenario, profiles, estimate=1.5)


def test_closed_loop_dagger_runs_after_the_ordinary_rounds_and_needs_its_ward():
    scenario, profiles = system.random_instance(3, 3, 4, seed=1, tightness=1.3)
    make = lambda: seqenv.SegmentEnv(scenario, profiles, episode_length=10, randomise=fades.Randomisation())  # noqa: E731
    view = lambda: seqenv.SegmentEnv(scenario, profiles, episode_length=10, randomise=fades.Randomisation(),  # noqa: E731
                                     estimate=0.5)
    settings = agent.Training(demo_requests=10, bc_epochs=2, dagger_rounds=1, dagger_requests=4, closed_loop_rounds=1,
                              timesteps=0, eval_requests=2)
    _, record = agent.train(make, settings, progress=False, make_view=view)
    assert [d.get("closed_loop", False) for d in record["dagger"]] == [False, True]
    assert set(record[agent.PHASES_KEY]) == set(agent.PHASES)
    with pytest.raises(ValueError, match="make_view"):
        agent.train(make, settings, progress=False)
