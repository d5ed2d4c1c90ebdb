"""Finding, verifying and loading MedMNIST files; the reference set."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from medmnist import INFO

from xaiprune import data, paths
from xaiprune.synthetic import write_synthetic


def test_resolution_order(synthetic, isolated, monkeypatch):
    explicit = synthetic(folder=isolated / "explicit")
    env_file = synthetic(folder=isolated / "env")
    project = synthetic(folder=paths.MEDMNIST_DIR)
    monkeypatch.setenv(data.ENV_ROOT, str(env_file.parent))
    assert data.resolve("pneumoniamnist", 28, explicit.parent, allow_download=False) == explicit
    assert data.resolve("pneumoniamnist", 28, None, allow_download=False) == env_file
    monkeypatch.delenv(data.ENV_ROOT)
    assert data.resolve("pneumoniamnist", 28, None, allow_download=False) == project


def test_missing_file_offline_names_what_was_searched(isolated, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DataError) as err:
        data.resolve("breastmnist", 28)
    msg = str(err.value)
    assert str(paths.MEDMNIST_DIR / "breastmnist.npz") in msg
    assert INFO["breastmnist"]["url"] in msg and INFO["breastmnist"]["MD5"] in msg
    assert "no network" in msg
    assert not paths.MEDMNIST_DIR.exists() or not any(paths.MEDMNIST_DIR.iterdir()), "no partial file left"


def test_an_explicit_data_root_is_the_only_folder_searched(isolated, synthetic, monkeypatch):
    """A typo in data_root is an error, never a silent fall-through to $MEDMNIST_ROOT or data/medmnist/."""
    monkeypatch.setenv(data.ENV_ROOT, str(synthetic(folder=isolated / "env").parent))
    with pytest.raises(data.DataError, match="nowhere'.*does not exist"):
        data.resolve("pneumoniamnist", 28, isolated / "nowhere")
    (isolated / "empty").mkdir()
    with pytest.raises(data.DataError) as err:
        data.resolve("pneumoniamnist", 28, isolated / "empty")
    assert str(isolated / "empty" / "pneumoniamnist.npz") in str(err.value) and "nothing is downloaded" in str(err.value)


def test_md5_mismatch_refused(isolated):
    path = write_synthetic(isolated / "bad", "pneumoniamnist", 28)  # INFO's MD5 is not patched
    with pytest.raises(data.DataError, match="MD5") as err:
        data.resolve("pneumoniamnist", 28, path.parent, allow_download=False)
    assert INFO["pneumoniamnist"]["url"] in str(err.value)


def test_download_verifies_and_moves_into_place(synthetic, isolated, monkeypatch):
    source = synthetic(folder=isolated / "server")
    monkeypatch.setitem(INFO["pneumoniamnist"], "url", source.as_uri())  # urllib reads file:// URLs
    got = data.resolve("pneumoniamnist", 28, None)
    assert got == paths.MEDMNIST_DIR / "pneumoniamnist.npz"
    assert data.md5sum(got) == data.md5sum(source)


def test_download_with_wrong_md5_leaves_nothing(isolated, monkeypatch):
    source = write_synthetic(isolated / "server", "pneumoniamnist", 28)
    monkeypatch.setitem(INFO["pneumoniamnist"], "url", source.as_uri())
    with pytest.raises(data.DataError, match="MD5"):
        data.resolve("pneumoniamnist", 28, None)
    assert list(paths.MEDMNIST_DIR.iterdir()) == []


@pytest.mark.parametrize("flag,size,match", [("mnist", 28, "not a MedMNIST"),
                                             ("organmnist3d", 28, "3D"),
                                             ("pneumoniamnist", 32, "size=32")])
def test_bad_flag_or_size(flag, size, match):
    with pytest.raises(ValueError, match=match):
        data.load_split(flag, "train", size)


@pytest.mark.parametrize("flag,size", [("pneumoniamnist", 28), ("bloodmnist", 64), ("chestmnist", 28)])
def test_synthetic_round_trip(synthetic, isolated, flag, size):
    path = synthetic(flag=flag, size=size)
    split = data.load_split(flag, "val", size, path.parent)
    raw = np.load(path)
    c = INFO[flag]["n_channels"]
    assert split.x.shape == (len(raw["val_images"]), c, size, size)
    assert torch.allclose(split.x, data.to_tensor(raw["val_images"]))
    labels = raw["val_labels"].astype(np.int64)
    expected = labels if INFO[flag]["task"].startswith("multi-label") else labels[:, 0]
    assert torch.equal(split.y, torch.from_numpy(expected))
    assert float(split.x.min()) >= -1 and float(split.x.max()) <= 1


def test_reference_set_is_seeded_balanced_and_biased(synthetic, isolated):
    path = synthetic(n={"train": 4, "val": 200, "test": 4})
    val = data.load_split("pneumoniamnist", "val", 28, path.parent)
    a = data.reference_set(val, n_per_class=10, seed=3)
    b = data.reference_set(val, n_per_class=10, seed=3)
    c = data.reference_set(val, n_per_class=10, seed=4)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert torch.bincount(a.y).tolist() == [10, 10]
    biased = data.reference_set(val, n_per_class=10, bias={0: 0.9, 1: 0.1}, seed=3)
    assert torch.bincount(biased.y).tolist() == [18, 2]


def test_reference_set_refuses_test_split_and_bad_sizes(synthetic, isolated):
    path = synthetic()
    test = data.load_split("pneumoniamnist", "test", 28, path.parent)
    with pytest.raises(ValueError, match="validation split"):
        data.reference_set(test)
    val = data.load_split("pneumoniamnist", "val", 28, path.parent)
    with pytest.raises(ValueError, match="classes="):
        data.reference_set(val, n_per_class=2, classes=[2])


def test_a_scarce_class_gives_all_it_has_says_so_and_records_it(synthetic, isolated):
    path = synthetic(n={"train": 4, "val": 8, "test": 4})  # 4 validation images per class
    val = data.load_split("pneumoniamnist", "val", 28, path.parent)
    with pytest.warns(data.ScarceClassWarning, match="class 0 has 4 validation images: drew all of them, not 10"):
        ref = data.reference_set(val, n_per_class=10, seed=0)
    assert len(ref) == 8 and ref.counts[0] == {"asked": 10, "available": 4, "drawn": 4}
    only = data.reference_set(val, n_per_class=2, seed=0, classes=[1])
    assert only.y.tolist() == [1, 1] and list(only.counts) == [1]
    empty = data.Split(val.x[val.y == 1], val.y[val.y == 1], val.flag, "val", 28)
    with pytest.raises(ValueError, match="class 0 of pneumoniamnist has no validation image"):
        data.reference_set(empty, n_per_class=2)


def test_the_hospital_flag_unites_three_sources_with_offset_labels_and_grayscale_retina(synthetic, isolated):
    n = {"train": 10, "val": 10, "test": 10}
    folder = isolated / "three"
    for flag in ("pneumoniamnist", "breastmnist", "retinamnist"):
        synthetic(flag, folder=folder, n=n)
    val = data.load_split("hospital", "val", 28, folder)
    assert val.x.shape == (30, 1, 28, 28) and val.flag == "hospital"
    assert sorted(set(val.y.tolist())) == list(range(9))
    retina = data.load_split("retinamnist", "val", 28, folder)
    lum = (retina.x * torch.tensor(data.LUMA)[:, None, None]).sum(1, keepdim=True)
    assert torch.allclose(data.ward_split(val, "retina").x, lum, atol=1e-6)
    assert torch.equal(data.ward_split(val, "retina").y, retina.y + 4)
    assert [w.classes for w in data.wards()] == [[0, 1], [2, 3], [4, 5, 6, 7, 8]]
    assert data.info("hospital")["label"]["2"].startswith("breast") and len(data.info("hospital")["label"]) == 9
    assert data.expected_md5("hospital", 28).count("+") == 2
    ref = data.reference_set(val, n_per_class=1, classes=data.ward("breast").classes)
    assert sorted(ref.y.tolist()) == [2, 3]
    with pytest.raises(ValueError, match="ward='icu'"):
        data.ward("icu")


def test_a_ward_answers_among_its_own_classes():
    logits = torch.tensor([[5.0, 0.0, 1.0, 2.0, 0, 0, 0, 0, 0], [0.0, 0.0, 1.0, 3.0, 0, 0, 0, 0, 0]])
    y, probs, task = data.restrict(np.array([2, 3]), logits, "breast")
    assert y.ravel().tolist() == [0, 1] and task == "binary-class"
    assert np.allclose(probs.sum(1), 1) and probs[0, 1] > probs[0, 0] and probs[1, 1] > probs[1, 0]
    from xaiprune import stats
    wide = stats.unrestricted(np.array([2, 3]), logits.numpy(), [2, 3])
    assert wide == {"acc": 0.5, "bal_acc": 0.5}  # image 0's argmax is pneumonia's class 0: wrong for the ward


def test_excluding_leaves_out_the_images_that_tuned_something(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "verify", lambda path, flag, size: path)  # the synthetic file's MD5 is its own
    write_synthetic(tmp_path, "pneumoniamnist", 28, n={"train": 4, "val": 40, "test": 4})
    val = data.load_split("pneumoniamnist", "val", 28, tmp_path)
    ref = data.reference_set(val, n_per_class=3, seed=0)
    rest = data.excluding(val, [ref.x, val.x[:5]])
    used = {x.numpy().tobytes() for x in torch.cat([ref.x, val.x[:5]])}
    assert len(rest) >= len(val) - len(ref) - 5 and rest.split == "val"
    assert not any(x.numpy().tobytes() in used for x in rest.x)
    assert len(data.excluding(val, [ref.x], n=7, seed=1)) == 7
    with pytest.raises(ValueError, match="nothing left"):
        data.excluding(val, [val.x])
