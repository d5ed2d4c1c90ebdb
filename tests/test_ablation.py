"""Each training phase's share of the optimum, pooled over seeds; and 07's estimator loop replayed offline."""

import numpy as np
import pandas as pd
import pytest

from xaiprune.planning import ablation, judging, rl, system
from xaiprune.serving import offline


def _judged(shares: dict[str, float]) -> pd.DataFrame:
    """Two seeds, one run, ten faded and ten nominal requests; each variant delivers ``share`` of the optimum's 0.9."""
    rows = []
    for variant, share in shares.items():
        for seed in (0, 1000):
            for t in range(20):
                rows.append({"policy": ablation.label(variant, seed), "ward": "w", "seed": 5, "t": t,
                             "window": "fade" if t >= 10 else "nominal", "feasible_exists": True,
                             "optimum_accuracy": 0.9, "delivered": 0.9 * share, "feasible": True})
    return pd.DataFrame(rows)


def test_each_variant_is_pooled_over_its_own_seeds():
    shares = dict(zip(ablation.VARIANTS, (0.8, 0.9, 1.0)))
    s = ablation.summary(_judged(shares), n_boot=200)
    for variant, share in shares.items():
        assert s[variant]["fade"]["acc_vs_optimum"] == pytest.approx(share)
        assert s[variant]["fade"]["seeds"] == 2 and s[variant]["nominal"]["violation_rate"] == 0.0
    assert list(ablation.table(s).index) == list(ablation.VARIANTS)


def _trace(T: int, n: int, low: float) -> np.ndarray:
    m = np.ones(T)
    m[T // 2:] = low
    return np.stack([np.full((n, n), f) for f in m])


def test_on_steady_links_the_estimate_is_the_truth_and_a_fade_is_learnt_late():
    scenario, profiles = system.random_instance(3, 3, 4, seed=1, tightness=1.0)
    nlp_on_view = {"optimum on the estimate": judging.from_policy(rl.nlp_policy("enumeration"))}
    steady = offline.replay(scenario, profiles, nlp_on_view, _trace(12, 3, 1.0), progress=False)
    ok = steady[steady["feasible_exists"]]
    assert len(steady) == 12 and ok["feasible"].all()
    assert np.allclose(ok["delivered"], ok["optimum_accuracy"]), "with nothing to estimate it plans as the oracle"
    faded = offline.replay(scenario, profiles, nlp_on_view, _trace(12, 3, 0.02), progress=False)
    late = faded[faded["window"] == "fade"]
    assert (late["latency_ms"].iloc[0] > late["latency_ms"].iloc[-1]) or not late["feasible"].iloc[0], \
        "the first faded request is planned on the stale estimate"
    assert set(judging.summary(faded, by=("policy", "window")).index.get_level_values("window")) == {"nominal", "fade"}


def test_the_plans_chosen_are_measured_once_each_and_averaged_per_planner():
    from xaiprune.planning import verify

    _, profiles = system.random_instance(2, 2, 3, seed=0)
    frame = pd.DataFrame({"policy": ["a", "a", "b"], "levels": [(0, 1), (0, 1), (2, 2)], "accuracy": [0.9, 0.9, 0.5]})
    calls = []

    def measure(fractions):
        calls.append(tuple(fractions))
        return 1.0 - sum(fractions)
    table = verify.measured_by_policy(frame, measure, profiles, "acc")
    assert len(calls) == 2, "each distinct level vector is measured once"
    assert table.loc["a", "measured acc"] == pytest.approx(1.0 - profiles.levels[1])
    assert table.loc["b", "measured acc"] == pytest.approx(1.0 - 2 * profiles.levels[2])
    assert list(table["level vectors"]) == [1, 1] and table.loc["b", "surrogate"] == 0.5


def test_the_variants_judged_beside_the_planners_are_taken_apart():
    frame = pd.concat([_judged({"behaviour cloning": 0.8, "+ PPO": 1.0}),
                       pd.DataFrame({"policy": ["greedy", "NLP optimum", "sequential agent [seed 0]"]})], ignore_index=True)
    rest, variants = ablation.apart(frame)
    assert set(rest["policy"]) == {"greedy", "NLP optimum", "sequential agent [seed 0]"}
    assert len(variants) == 80 and variants["policy"].str.contains(r"\[seed").all()
