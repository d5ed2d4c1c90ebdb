"""Deterministic training, the cache keyed by parameters, and self-describing checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xaiprune import paths, train


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
    assert again.metrics == first.metrics and again.config == cfg
    changed = dataclasses.replace(cfg, lr=cfg.lr / 2)
    assert train.cache_key(changed) != train.cache_key(cfg)
    other = train.train_or_load(changed, root, progress=False)
    assert not other.cached and other.path != first.path and first.path.is_file()


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
