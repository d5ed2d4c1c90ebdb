"""The replay of served plans with other criteria: exact for the served criterion, each plan built once, bad input refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small, split
from xaiprune.pruning import prune
from xaiprune.serving import replay

SHAPE = (1, 28, 28)
PLANS = [(0.0, 0.0, 0.0), (0.0, 0.5, 0.25), (0.0, 0.0, 0.0), (0.25, 0.5, 0.75), (0.0, 0.5, 0.25), (0.0, 0.0, 0.0)]


@pytest.fixture(scope="module")
def setup():
    """A small model, two criteria's fixed scores, a test split, and one policy's rows as a device serves them."""
    model, test = small(), split(10, seed=3)
    scores = {c: prune.criterion_scores(model, c, None, SHAPE) for c in ("l1", "bn_scale")}
    rows = []
    for t, levels in enumerate(PLANS):
        i = (3 * t + 1) % len(test)
        pruned = prune.prune_with_scores(model, dict(zip(model.segments, levels)), scores["l1"], SHAPE)
        x = test.x[i:i + 1]
        with torch.inference_mode():  # one image, segment after segment, as the devices run it
            for s in range(len(model.segments)):
                x = pruned.run_segments(x, s, s + 1)
        rows.append({"policy": "XAI + RL", "criterion": "l1", "request": t, "test_index": i, "label": int(test.y[i]),
                     "logits": [float(v) for v in x.reshape(-1)], "levels": list(levels)})
    return model, scores, test, pd.DataFrame(rows)


def run(setup, requests=None, **kw):
    model, scores, test, served = setup
    return replay.replay(model, kw.pop("scores", scores), kw.pop("segments", list(model.segments)), SHAPE, test,
                         served if requests is None else requests, **kw)


def test_replaying_the_served_criterion_reproduces_the_served_logits(setup):
    rep = run(setup)
    assert replay.max_difference(rep, setup[3], "l1") == 0.0
    batched = run(setup, batch_size=4)  # batches only change float rounding
    assert replay.max_difference(batched, setup[3], "l1") < 1e-5


def test_at_level_0_every_criterion_is_the_unpruned_model(setup):
    model, _, test, served = setup
    rep = run(setup)
    unpruned = ~rep.pruned
    assert unpruned.sum() == 3
    with torch.inference_mode():
        want = torch.cat([model(test.x[i:i + 1]) for i in served["test_index"][unpruned]]).numpy()
    np.testing.assert_array_equal(rep.logits["bn_scale"][unpruned], want)
    np.testing.assert_array_equal(rep.logits["l1"][unpruned], want)


def test_another_criterion_on_a_pruned_plan_gives_other_logits(setup):
    rep = run(setup)
    assert np.abs(rep.logits["bn_scale"][rep.pruned] - rep.logits["l1"][rep.pruned]).max(axis=1).min() > 1e-4
    table = replay.table(rep, "pneumoniamnist")
    assert list(table.index) == ["l1", "bn_scale"]
    assert table.loc["l1", "pruned_requests"] == 3 and table.loc["l1", "distinct_plans"] == 3
    served = setup[3]
    want = replay.metrics(np.array(served["logits"].tolist()), served["label"].to_numpy(), "pneumoniamnist")
    assert table.loc["l1", "acc"] == want["acc"] and table.loc["l1", "auc"] == pytest.approx(want["auc"])


def test_each_distinct_plan_is_built_once_per_criterion(setup, monkeypatch):
    calls = []
    original = prune.prune_with_scores

    def counting(model, levels, scores, input_shape):
        calls.append(tuple(levels.values()))
        return original(model, levels, scores, input_shape)

    monkeypatch.setattr(prune, "prune_with_scores", counting)
    rep = run(setup)
    assert rep.built == len(calls) == 2 * len(set(PLANS))
    assert sorted(set(calls)) == sorted(set(PLANS)) and all(calls.count(p) == 2 for p in set(PLANS))
    assert run(setup, criteria=["bn_scale"]).built == len(set(PLANS))


def edit(frame: pd.DataFrame, column: str, row: int, value) -> pd.DataFrame:
    out = frame.copy()
    out[column] = out[column].astype(object)
    out.at[row, column] = value
    return out


@pytest.mark.parametrize("change,match", [
    (dict(criteria=["lrp"]), "criteria="),
    (dict(scores={"l1": {}}), r"scores\['l1'\]"),
    (dict(segments=["block1", "block2"]), "segments="),
    (dict(batch_size=0), "batch_size="),
])
def test_bad_arguments_are_refused_by_name(setup, change, match):
    with pytest.raises(ValueError, match=match):
        run(setup, **change)


@pytest.mark.parametrize("column,value,match", [
    ("levels", [0.0, 0.5], "levels of request 1"), ("levels", [0.0, 1.0, 0.0], "levels of request 1"),
    ("test_index", 10, "test_index of request 1"), ("test_index", -1, "test_index of request 1"),
    ("label", 5, "label"),
])
def test_bad_rows_are_refused_by_name(setup, column, value, match):
    with pytest.raises(ValueError, match=match):
        run(setup, edit(setup[3], column, 1, value))


def test_rows_of_several_policies_or_without_plans_are_refused(setup):
    served = setup[3]
    with pytest.raises(ValueError, match="requests holds policies"):
        run(setup, edit(served, "policy", 0, "L1 + RL"))
    with pytest.raises(ValueError, match="requests: no column"):
        run(setup, served.drop(columns="levels"))
    rep = run(setup, criteria=["bn_scale"])
    with pytest.raises(ValueError, match="criterion='l1': not replayed"):
        replay.max_difference(rep, served, "l1")
    with pytest.raises(ValueError, match="served with"):
        replay.max_difference(rep, served, "bn_scale")
    with pytest.raises(ValueError, match="not the rows that were replayed"):
        replay.max_difference(run(setup), served.iloc[::-1], "l1")


def test_every_answer_is_checked_against_the_single_process_reference(setup):
    model, scores, test, served = setup
    other = served.assign(policy="kill")
    tampered = served.copy()
    tampered.at[3, "logits"] = [v + 0.01 for v in tampered.at[3, "logits"]]
    checked = replay.wrong_answers(model, scores, list(model.segments), SHAPE, test,
                                   pd.concat([tampered, other], ignore_index=True))
    assert checked["kill"] == {"answers": len(served), "wrong_answers": 0, "max_logit_difference": 0.0}
    assert checked["XAI + RL"]["wrong_answers"] == 1 and checked["XAI + RL"]["max_logit_difference"] == pytest.approx(0.01, rel=1e-3)
