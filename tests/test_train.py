"""Deterministic training, the cache keyed by parameters, and self-describing checkpoints."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from xaiprune import data, paths, train


@pytest.fixture
def tiny(synthetic, isolated):
    path = synthetic(n={"train": 48, "val": 16, "test": 16})
    cfg = train.TrainConfig(arch="small_cnn", epochs=2, batch_size=16, seed=7)
    return cfg, str(path.parent)


def test_same_seed_gives_identical_weights(tiny):
    cfg, root = tiny
    a = train.fit(cfg, root, progress=False).model.state_dict()
    b = train.fit(cfg, root, progress=False).model.state_dict()
    c = train.fit(dataclasses.replace(cfg, seed=8), root, progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cache_reuses_same_parameters_and_never_changed_ones(tiny):
    cfg, root = tiny
    first = train.train_or_load(cfg, root, progress=False)
    again = train.train_or_load(cfg, root, progress=False)
    assert not first.cached and again.cached and again.path == first.path
    assert set(first.metrics) == {"val_acc", "val_auc", "test_acc", "test_auc"}
    assert again.metrics == first.metrics == again.stored_metrics and again.config == cfg
    changed = dataclasses.replace(cfg, lr=cfg.lr / 2)
    assert train.cache_key(changed) != train.cache_key(cfg)
    other = train.train_or_load(changed, root, progress=False)
    assert not other.cached and other.path != first.path and first.path.is_file()


def test_a_reused_checkpoint_is_evaluated_again_and_tampered_stored_metrics_warn(tiny):
    cfg, root = tiny
    first = train.train_or_load(cfg, root, progress=False)
    payload = torch.load(first.path, weights_only=True)
    payload["metrics"] = {**payload["metrics"], "test_acc": first.metrics["test_acc"] + 0.25, "val_auc": 0.0}
    torch.save(payload, first.path)
    stale = r"val_auc stored 0\.000000, now .*test_acc stored .*the data or the evaluation code changed"
    with pytest.warns(train.StaleMetricsWarning, match=stale):
        again = train.train_or_load(cfg, root, progress=False)
    assert again.cached and again.metrics == first.metrics  # what the model scores now, not what was stored
    assert again.stored_metrics == payload["metrics"]
    assert train.changed_metrics(again.stored_metrics, again.metrics) == {
        "test_acc": (first.metrics["test_acc"] + 0.25, first.metrics["test_acc"]),
        "val_auc": (0.0, first.metrics["val_auc"])}
    assert torch.load(first.path, weights_only=True)["metrics"] == payload["metrics"]  # the checkpoint is kept as is
    torch.save({**payload, "metrics": {k: v + 5e-7 for k, v in first.metrics.items()}}, first.path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stored metrics within the 1e-6 tolerance: no warning
        assert train.train_or_load(cfg, root, progress=False).metrics == first.metrics
    assert train.load(first.path).metrics == {}  # a bare load evaluates nothing


def test_majority_rate_is_the_accuracy_of_the_most_frequent_class():
    x = torch.zeros(4, 1, 28, 28)
    binary = data.Split(x=x, y=torch.tensor([1, 0, 1, 1]), flag="pneumoniamnist", split="test", size=28)
    assert train.majority_rate(binary) == 0.75
    zeros = data.Split(x=x, y=torch.tensor([0, 0, 0, 1]), flag="pneumoniamnist", split="test", size=28)
    assert train.majority_rate(zeros) == 0.75
    five = data.Split(x=x, y=torch.tensor([3, 3, 1, 0]), flag="retinamnist", split="test", size=28)
    assert train.majority_rate(five) == 0.5
    multi = data.Split(x=x[:3], y=torch.tensor([[1, 0], [1, 1], [0, 0]]), flag="chestmnist", split="test", size=28)
    assert train.majority_rate(multi) == pytest.approx(2 / 3)  # label 0 answered 1, label 1 answered 0


def test_checkpoint_loads_with_weights_only_and_predicts_the_same(tiny):
    cfg, root = tiny
    trained = train.train_or_load(cfg, root, progress=False)
    payload = torch.load(trained.path, weights_only=True)
    assert payload["config"] == dataclasses.asdict(cfg)
    loaded = train.load(trained.path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), trained.model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("change,match", [({"arch": "vgg19"}, "arch"), ({"epochs": 0}, "epochs"),
                                          ({"lr": -1.0}, "lr"), ({"flag": "nope"}, "flag")])
def test_bad_config_is_refused_before_training(change, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**change).validate()


def test_published_benchmark_has_the_papers_pneumonia_row():
    row = train.published_benchmark("pneumoniamnist")["ResNet-18 (28)"]
    assert row == {"auc": 0.944, "acc": 0.854}


def test_trained_models_are_found_and_checked(tiny):
    cfg, root = tiny
    with pytest.raises(FileNotFoundError, match="run 02_train"):
        train.trained_models(["small_cnn"], cfg.flag, cfg.size)
    trained = train.train_or_load(cfg, root, progress=False)
    train.record_checkpoints({"small_cnn": trained})
    assert set(train.trained_models(["small_cnn"], cfg.flag, cfg.size)) == {"small_cnn"}
    path = train.trained_checkpoints(["small_cnn"], cfg.flag, cfg.size)["small_cnn"]
    assert (paths.ROOT / path).resolve() == trained.path.resolve()
    with pytest.raises(ValueError, match="not trained by the last 02_train run"):
        train.trained_models(["vgg16_bn"], cfg.flag, cfg.size)
    with pytest.raises(ValueError, match="trained on pneumoniamnist at 28, not breastmnist"):
        train.trained_models(["small_cnn"], "breastmnist", 28)
