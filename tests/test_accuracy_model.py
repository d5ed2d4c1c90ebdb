"""The accuracy model refitted on measured plans: it learns what pruning several segments costs, and stays a product."""

from dataclasses import replace

import numpy as np
import pytest

from xaiprune.planning import accuracy, candidates, system


def _world():
    """Profiles whose table says one thing, and a 'true' network whose segments' losses differ from it."""
    _, profiles = system.random_instance(4, 3, 5, seed=2)
    profiles = replace(profiles, floor=0.05)
    truth = replace(profiles, retention=np.clip(profiles.retention ** 1.8, 1e-3, 1.0))  # losses larger than the table's
    return profiles, truth


def test_the_refit_learns_the_true_losses_on_plans_it_never_saw():
    profiles, truth = _world()
    fit = accuracy.refit_measured(profiles, lambda fr: truth.accuracy([profiles.levels.index(f) for f in fr]), 40)
    held_out = [p for p in candidates.design(profiles, 80, seed=9) if p not in fit.design]
    measured = np.array([truth.accuracy(list(p)) for p in held_out])
    before = np.abs(accuracy.predict(profiles, profiles.retention, held_out) - measured).mean()
    after = np.abs(accuracy.predict(profiles, fit.profiles.retention, held_out) - measured).mean()
    assert held_out and after < 0.5 * before
    rho = fit.profiles.retention
    assert np.all(rho[:, 0] == 1.0) and np.all(np.diff(rho, axis=1) <= 0) and np.all((rho > 0) & (rho <= 1))
    assert fit.lam in accuracy.LAMBDAS and set(fit.cv_error_points) == set(accuracy.LAMBDAS)
    assert fit.profiles.base_accuracy == profiles.base_accuracy and fit.profiles.floor == profiles.floor


def test_collapsed_plans_are_left_out_of_the_regression_and_a_flat_world_changes_nothing():
    profiles, _ = _world()
    plans = candidates.design(profiles, 20, seed=1)
    at_floor = accuracy.refit(profiles, plans, [profiles.floor] * len(plans))
    assert at_floor.collapsed == len(plans) and np.array_equal(at_floor.profiles.retention, profiles.retention)
    same = accuracy.refit(profiles, plans, [profiles.accuracy(list(p)) for p in plans])
    assert np.allclose(same.profiles.retention, profiles.retention, atol=1e-6), "the table's own model is a fixed point"


def test_the_refit_refuses_mismatched_or_too_few_plans():
    profiles, _ = _world()
    with pytest.raises(ValueError, match="plans"):
        accuracy.refit(profiles, [(0, 0, 0, 0)] * 3, [0.9] * 3)
    with pytest.raises(ValueError, match="plans"):
        accuracy.refit(profiles, [(0, 0, 0, 0)] * 6, [0.9] * 5)
