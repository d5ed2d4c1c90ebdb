"""The accuracy model the planners optimise, refitted on measured plans that prune several segments at once.

04's sensitivity table prunes one segment at a time: rho[s, l] = a[s, l] / A_0, and the product surrogate
A_0 * prod_s rho[s, l_s] (:class:`xaiprune.planning.system.Profiles`) assumes the segments' losses multiply. They
do not quite: pruning two segments together can cost more (or less) than the product says. Here the log
retentions c[s, l] = log rho[s, l] are refitted on ``fit`` plans that prune several segments, each measured on
validation with the model really pruned as it says (:class:`xaiprune.planning.candidates.Measurements`): a ridge
regression of log(a / A_0) on the level chosen for each segment (one indicator per segment and level above 0),

    min_c  sum_plans (sum_s c[s, l_s] - log(a / A_0))^2 + lam * ||c - c_04||^2,

shrunk towards 04's single-segment values, which stay the answer where the fit plans say little. ``lam`` is
chosen by K-fold cross-validation over the fit plans (validation only). The fit is then made monotone (pruning
more never helps: a running minimum over the levels) and at most 0, so the model stays a product of
per-segment factors and every planner (the MILP's linear objective, the enumeration, the masks, the agent's
features) optimises it unchanged. Plans measured at the collapsed model's accuracy (within ``collapse`` of
the floor) are left out of the regression (their log says only "collapsed", which the floor already models)
but kept in the cross-validation's error. Used by ``05_nlp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from xaiprune.planning.candidates import design
from xaiprune.planning.system import Profiles

LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)  # the last ~ 04's product itself
COLLAPSE = 0.005  # a measured accuracy within this of the floor is a collapsed model


@dataclass
class Fit:
    """The refitted profiles and how they were chosen: the shrinkage, its cross-validated error (points) per
    candidate, the plans fitted (and left out as collapsed)."""

    profiles: Profiles
    lam: float
    cv_error_points: dict[float, float]
    plans: int
    collapsed: int
    product_points: float             # 04's product surrogate's mean |error| on the same plans (points)
    design: list = field(default_factory=list)   # the fit plans (level-index vectors)


def indicators(profiles: Profiles, plans) -> np.ndarray:
    """(plans, S * (L - 1)) one-hot of the level index chosen for each segment (level 0 has no column)."""
    L = profiles.L
    X = np.zeros((len(plans), profiles.S * (L - 1)))
    for i, levels in enumerate(plans):
        for s, l in enumerate(levels):
            if l > 0:
                X[i, s * (L - 1) + l - 1] = 1.0
    return X


def solve(X: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """The ridge solution shrunk towards ``prior``: (X'X + lam I)^-1 (X'y + lam prior)."""
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ y + lam * prior)


def monotone(profiles: Profiles, c: np.ndarray) -> np.ndarray:
    """(S, L) retentions from fitted log retentions ``c`` (S * (L - 1)): level 0 is 1, non-increasing, in [1e-3, 1]."""
    logs = np.hstack([np.zeros((profiles.S, 1)), c.reshape(profiles.S, profiles.L - 1)])
    return np.clip(np.exp(np.minimum.accumulate(np.minimum(logs, 0.0), axis=1)), 1e-3, 1.0)


def predict(profiles: Profiles, retention: np.ndarray, plans) -> np.ndarray:
    """The floored product model with ``retention`` on ``plans`` (level-index vectors)."""
    model = replace(profiles, retention=retention)
    return np.array([model.accuracy(list(p)) for p in plans])


def _fit(profiles: Profiles, plans, measured: np.ndarray, lam: float, collapse: float) -> np.ndarray:
    keep = measured > profiles.floor + collapse
    X, prior = indicators(profiles, plans), np.log(profiles.retention[:, 1:]).ravel()
    if not keep.any():
        return profiles.retention
    y = np.log(measured[keep] / profiles.base_accuracy)
    return monotone(profiles, solve(X[keep], y, prior, lam))


def refit(profiles: Profiles, plans, measured, lambdas=LAMBDAS, folds: int = 5, seed: int = 0,
          collapse: float = COLLAPSE) -> Fit:
    """Profiles whose retentions are refitted on ``plans`` (level-index vectors) measured at ``measured``
    (accuracy on validation, the metric of ``profiles``), the shrinkage chosen by ``folds``-fold
    cross-validation (mean absolute error of the floored model over held-out plans)."""
    plans, measured = [tuple(p) for p in plans], np.asarray(measured, dtype=np.float64)
    if len(plans) != len(measured) or len(plans) < folds:
        raise ValueError(f"{len(plans)} plans and {len(measured)} measurements: expected as many, at least {folds}")
    fold = np.random.default_rng(seed).permutation(len(plans)) % folds
    cv = {}
    for lam in lambdas:
        errors = []
        for k in range(folds):
            train, test = fold != k, fold == k
            rho = _fit(profiles, [p for p, t in zip(plans, train) if t], measured[train], lam, collapse)
            errors.append(np.abs(predict(profiles, rho, [p for p, t in zip(plans, test) if t]) - measured[test]))
        cv[float(lam)] = float(100 * np.concatenate(errors).mean())
    best = min(cv, key=lambda lam: (cv[lam], -lam))
    rho = _fit(profiles, plans, measured, best, collapse)
    product = float(100 * np.abs(predict(profiles, profiles.retention, plans) - measured).mean())
    return Fit(replace(profiles, retention=rho), best, cv, len(plans), int((measured <= profiles.floor + collapse).sum()),
               product, plans)


def refit_measured(profiles: Profiles, measure: Callable, n_plans: int, seed: int = 0) -> Fit:
    """:func:`refit` on ``n_plans`` plans of :func:`xaiprune.planning.candidates.design` (seeded ``seed + 1``, so not
    the surrogate check's design), each measured by ``measure`` (level fractions -> accuracy on validation, e.g.
    :meth:`~xaiprune.planning.candidates.Measurements.metric`)."""
    plans = design(profiles, n_plans, seed=seed + 1)
    return refit(profiles, plans, [measure([profiles.levels[l] for l in p]) for p in plans], seed=seed)


def describe(f: Fit) -> str:
    """:class:`Fit` in words, with the product surrogate's cross-validated error for comparison."""
    curve = ", ".join(f"{lam:g}: {e:.2f}" for lam, e in f.cv_error_points.items())
    return (f"refitted on {f.plans} measured plans ({f.collapsed} collapsed, left out of the regression); shrinkage "
            f"{f.lam:g} chosen by cross-validation (mean |error| in points per candidate: {curve}); 04's product "
            f"surrogate on the same plans (in sample): {f.product_points:.2f}")
