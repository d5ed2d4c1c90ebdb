"""The ward regime: a hospital-wide model pruned for one ward, answered among the ward's classes, and its claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small
from xaiprune import data, train
from xaiprune.pruning import comparison, wards


def hospital_split(split: str, n_per_class: int = 6, seed: int = 0) -> data.Split:
    """Random images with every hospital label ``n_per_class`` times (a stand-in for the real union)."""
    y = torch.arange(9).repeat(n_per_class)
    x = torch.randn(len(y), 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return data.Split(x=x, y=y, flag="hospital", split=split, size=28)


def test_balanced_draws_give_each_ward_a_third_and_each_class_its_share():
    y = torch.tensor([0] * 90 + [1] * 10 + [2] * 5 + [3] * 20 + [4, 5, 6, 7, 8] * 4)
    w = train.sampling_weights(data.Split(torch.zeros(len(y), 1, 2, 2), y, "hospital", "train", 28))
    share = [float(w[y == c].sum() / w.sum()) for c in range(9)]
    assert np.allclose(share, [1 / 6] * 4 + [1 / 15] * 5)
    plain = train.sampling_weights(data.Split(torch.zeros(100, 1, 2, 2), y[:100], "pneumoniamnist", "train", 28))
    assert np.allclose([float(plain[y[:100] == c].sum() / plain.sum()) for c in (0, 1)], [0.5, 0.5])
    with pytest.raises(ValueError, match="multi-label"):
        train.TrainConfig(flag="chestmnist", balance=True).validate()


def test_the_evaluator_of_a_ward_answers_among_its_classes_and_refuses_other_wards_images():
    model = small(1, 9)
    test = data.ward_split(hospital_split("test"), "retina")
    ev = comparison.Evaluator(model, test, ward="retina")
    m = ev.evaluate(model)
    assert ev.task == "multi-class" and set(ev.y.ravel()) == set(range(5))
    assert ev.scores[m["model"]].shape == (len(test), 5) and ev.logits[m["model"]].shape == (len(test), 9)
    with pytest.raises(ValueError, match="other wards"):
        comparison.Evaluator(model, hospital_split("test"), ward="retina")


def test_run_ward_measures_every_state_and_the_unpruned_model_once():
    model = small(1, 9)
    ward = wards.ward_data(hospital_split("val", 8), hospital_split("test", 4, seed=2), "breast", 3, 2, 8)
    ev, frame = wards.run_ward(model, ward, ["lrp", "l1", "taylor"], [0.0, 0.3], progress=False)
    assert set(frame["repair"]) == set(wards.STATES) and set(frame["ward"]) == {"breast"}
    base = frame[(frame["ratio"] == 0) & (frame["repair"] == "none")]
    assert base["bal_acc"].nunique() == 1 and {"unrestricted_acc", "unrestricted_bal_acc"} <= set(frame.columns)
    out = wards.metrics("small_cnn", {"breast": (ev, frame)})["regime"]["small_cnn"]["breast"]
    assert set(out["lrp"]) == {"0.3"} and set(out["lrp"]["0.3"]) == {"acc", "bal_acc", "auc"}
    assert set(out["unpruned"]) >= {"acc", "bal_acc", "auc", "unrestricted_acc"}


def _result(ward, ratio, baseline, diff, above):
    lo = diff - 0.03
    return {"ward": ward, "ratio": ratio, "baseline": baseline, "diff": diff, "above_margin": above,
            "interval_holm": [lo, diff + 0.03], "interval_family": [lo - 0.01, diff + 0.04]}


def test_the_claim_needs_two_wards_above_both_baselines_by_the_margin():
    names = ["pneumonia", "breast", "retina"]
    results = [_result(w, r, b, d, d > 0.03) for w, d in zip(names, (0.08, 0.06, 0.01))
               for r in (0.3, 0.5) for b in ("l1", "taylor")]
    row = wards.claim(results, "vgg16_bn", names, 5, 0.05, 2, [0.3, 0.5])
    assert row["verdict_"] == "supported" and row["measured"] == pytest.approx(0.06)
    weaker = [{**r, "diff": 0.04} if r["ward"] == "breast" else r for r in results]
    assert wards.claim(weaker, "vgg16_bn", names, 5, 0.05, 2, [0.3, 0.5])["verdict_"] == "partly supported"
    none = [{**r, "diff": -0.01, "above_margin": False} for r in results]
    assert wards.claim(none, "vgg16_bn", names, 5, 0.05, 2, [0.3, 0.5])["verdict_"] == "not supported"
    collapsed = [{**r, "diff": 0.001, "above_margin": True} for r in results]  # 0.501 against 0.500: no win
    assert wards.claim(collapsed, "vgg16_bn", names, 5, 0.05, 2, [0.3, 0.5])["verdict_"] == "not supported"
    gone = [r for r in results if not (r["ward"] == "retina" and r["baseline"] == "taylor")]
    assert wards.claim(gone, "vgg16_bn", names, 5, 0.05, 2, [0.3, 0.5])["verdict_"] == "not measured"


def test_a_ward_recalibrates_only_its_own_classes():
    from xaiprune.pruning import repair_study
    model = small(1, 9)
    test = data.ward_split(hospital_split("test"), "breast")
    ev = comparison.Evaluator(model, test, ward="breast")
    m = ev.evaluate(model)["model"]
    ref = data.ward_split(hospital_split("val", seed=3), "breast")
    ref_logits = torch.randn(len(ref), 9, generator=torch.Generator().manual_seed(0)).double()
    refit = repair_study._refit(ev, m, ref_logits, ref)["model"]
    shift = ev.logits[refit] - ev.logits[m]
    others = [c for c in range(9) if c not in (2, 3)]
    assert np.allclose(shift[:, others], 0) and not np.allclose(shift[:, [2, 3]], 0)


def test_the_two_regimes_are_read_from_the_advantages():
    ep = lambda b: {"0.3": {"acc": b, "bal_acc": b, "auc": b}}  # noqa: E731
    regime = {"vgg16_bn": {"pneumonia": {"lrp": ep(0.8), "l1": ep(0.6), "taylor": ep(0.7)},
                           "breast": {"lrp": ep(0.7), "l1": ep(0.5), "taylor": ep(0.6)}}}
    own = {"vgg16_bn": {"lrp": ep(0.6), "l1": ep(0.6), "taylor": ep(0.65)}}
    text = wards.two_regimes(regime, own, [0.3])[0]
    assert "+10.0 points (pneumonia)" in text and "-5.0 on 04's model" in text and "breadth helps LRP" in text
    assert "04 measured no own-task vgg16_bn" in wards.two_regimes(regime, None, [0.3])[0]
    behind = {"vgg16_bn": {w: {**m, "lrp": ep(0.55)} for w, m in regime["vgg16_bn"].items()}}
    assert "does not reverse it" in wards.two_regimes(behind, {"vgg16_bn": {**own["vgg16_bn"], "lrp": ep(0.4)}}, [0.3])[0]
