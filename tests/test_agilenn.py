"""AgileNN (notebook 10): the quantiser, the two losses, the trapezoid IG, the wire payload, training, serving, bad input."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from xaiprune import data, paths, train
from xaiprune.agilenn import model as agilenn, regimes, training
from xaiprune.study import parameters
from xaiprune.study.schema import ParameterError
from xaiprune.agilenn import offload
from xaiprune.serving import payload
from conftest import small


def test_the_quantiser_outputs_only_centroids_and_passes_the_soft_gradient():
    q = agilenn.SoftToHardQuantizer(4)
    x = torch.rand(3, 5, 2, 2, generator=torch.Generator().manual_seed(0)) * 6
    x.requires_grad_(True)
    y, idx = q(x)
    c = q.centroids().detach()
    assert torch.isin(y.detach(), c).all() and torch.equal(y.detach(), c[idx])
    assert torch.equal(idx, (x.detach().unsqueeze(-1) - c).abs().argmin(-1))  # the nearest centroid
    w = torch.randn_like(x)
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    xs = x.detach().clone().requires_grad_(True)
    d = (xs.unsqueeze(-1) - c).square()
    soft = (torch.softmax(-d, -1) * c).sum(-1)
    (want,) = torch.autograd.grad((soft * w).sum(), xs)
    assert torch.allclose(gx, want, atol=1e-6) and gx.abs().sum() > 0
    assert torch.allclose(q.dequantize(idx), y.detach())


def test_the_losses_vanish_on_ordered_skewed_importance_and_are_positive_otherwise():
    k = 2
    good = torch.tensor([[5.0, 4.0, 0.5, 0.3, 0.2], [9.0, 3.0, 1.0, 0.0, 0.0]])
    assert agilenn.skewness_loss(good, k, 0.8) == 0 and agilenn.disorder_loss(good, k) == 0
    skewed_but_disordered = torch.tensor([[9.0, 0.1, 0.5, 0.2, 0.2]])  # a remote channel outranks a local one
    assert agilenn.skewness_loss(skewed_but_disordered, k, 0.8) == 0
    assert agilenn.disorder_loss(skewed_but_disordered, k) == pytest.approx((0.5 - 0.1) / 10.0)
    ordered_not_skewed = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    assert agilenn.skewness_loss(ordered_not_skewed, k, 0.8) == pytest.approx(0.8 - 0.4)
    assert agilenn.disorder_loss(ordered_not_skewed, k) == 0
    assert agilenn.skewness(good, k).tolist() == pytest.approx([9 / 10, 12 / 13])


def test_the_trapezoid_ig_equals_captums_ig_with_two_steps():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()
    body[1].running_mean.normal_(0, 0.3)
    f, y = torch.rand(5, 6, 4, 4) * 6, torch.tensor([0, 2, 1, 2, 0])
    base = agilenn.BaselineGradient(body, (6, 4, 4), 3)
    mine = agilenn.channel_importance(body, f, y, base)
    ig = IntegratedGradients(lambda z, labels: agilenn.per_sample_loss(body(z), labels))  # the loss as the output
    theirs = ig.attribute(f, baselines=torch.zeros_like(f), additional_forward_args=(y,), n_steps=2,
                          method="riemann_trapezoid")
    # Captum's trapezoid weights are 1/n with halved ends (they sum to (n-1)/n): with 2 steps, 1/4 and 1/4, half of the
    # two-point trapezoid's 1/2 and 1/2. The factor cancels in every share (skewness, losses, ranking).
    assert torch.allclose(mine, 2 * theirs.abs().sum((2, 3)), rtol=1e-5, atol=1e-7)
    # with create_graph the importance is differentiable with respect to the features (double backpropagation)
    fg = f.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(agilenn.channel_importance(body, fg, y, base, create_graph=True)[:, :2].sum(), fg)
    assert g.abs().sum() > 0


def test_the_payload_round_trips_in_fewer_bytes_than_one_per_value():
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 8, (19, 14, 14), generator=gen)
    for codec in payload.CODECS:
        buf = payload.encode_indices(idx, 3, codec)
        assert torch.equal(payload.decode_indices(buf, 3, (19, 14, 14), codec), idx)
        assert len(buf) < idx.numel()  # 3 bits (random, so barely compressible) against 8 per value
    assert len(payload.pack_indices(idx, 3)) == -(-idx.numel() * 3 // 8)
    odd = torch.tensor([5, 0, 7, 1, 2])  # a count that does not fill the last byte
    assert payload.unpack_indices(payload.pack_indices(odd, 3), 3, 5).tolist() == [5, 0, 7, 1, 2]
    with pytest.raises(ValueError, match="do not fit in 3 bits"):
        payload.pack_indices(torch.tensor([8]), 3)
    raw = bytes(np.random.default_rng(0).integers(0, 256, 1001, dtype=np.uint8))  # NaN bit patterns included
    t = payload.to_tensor(raw)
    assert t.dtype == torch.float32 and t.numel() == 251 and payload.from_tensor(t.clone(), len(raw)) == raw
    x = torch.rand(1, 28, 28) * 2 - 1
    x = torch.round((x * 0.5 + 0.5) * 255) / 255 / 0.5 - 1  # on MedMNIST's uint8 grid
    assert torch.allclose(payload.decode_image(payload.encode_image(x, "png")), x, atol=1e-6)


@pytest.mark.parametrize("change,match", [
    ({"split_ratio": 0.0}, "10_agilenn: split_ratio=0.0: expected a value in (0, 1)"),
    ({"split_ratio": 1.0}, "10_agilenn: split_ratio=1.0: expected a value in (0, 1)"),
    ({"split_ratio": 0.01}, "10_agilenn: split_ratio: 0.01 x channels=24 rounds to 0 device channels; expected 1..23"),
    ({"centroids": 1}, "10_agilenn: centroids=1: expected a value in [2, inf)"),
    ({"ablation_centroids": [4, 1]}, "10_agilenn: ablation_centroids=[4, 1]: expected every element a value in [2, inf)"),
    ({"remote": "icu-server"}, "10_agilenn: remote='icu-server': expected a device of scenario 'ward-4' other than its source"),
])
def test_bad_settings_are_refused_by_the_schema(change, match):
    with pytest.raises(ParameterError) as info:
        parameters.validate("10_agilenn", {**parameters.defaults("10_agilenn"), **change})
    assert match in str(info.value)


def test_bad_settings_are_refused_by_the_library():
    with pytest.raises(ValueError, match=r"split_ratio=1.2: expected a fraction in \(0, 1\)"):
        agilenn.AgileNN(1, 2, split_ratio=1.2)
    with pytest.raises(ValueError, match="centroids=1: expected an integer >= 2"):
        agilenn.AgileNN(1, 2, centroids=1)


def test_a_device_whose_remote_worker_never_joins_fails_with_a_clear_error(tmp_path):
    study = train.save(train.Trained(small(1, 2), train.TrainConfig(arch="small_cnn")), tmp_path / "s.pt")
    for name, net in (("a.pt", agilenn.AgileNN(1, 2)), ("n.pt", agilenn.small_network(1, 2))):
        torch.save({"config": asdict(training.AgileConfig()), "state_dict": net.state_dict(), "history": []}, tmp_path / name)
    cfg = offload.OffloadConfig("pneumoniamnist", 28, str(study), str(tmp_path / "a.pt"), str(tmp_path / "n.pt"),
                                str(tmp_path / "n.pt"), regimes.load("paper").as_dict(), jobs=[["agilenn", 0]],
                                connect_timeout_s=1.0)
    with pytest.raises(offload.OffloadError, match=r"rank 0: no remote worker \(rank 1\) joined .* within 1 s"):
        offload.run(cfg, tmp_path / "run", progress=False, ranks=(0,))


def test_training_is_cached_and_reused(synthetic, isolated, monkeypatch):
    path = synthetic("pneumoniamnist", n={"train": 96, "val": 32, "test": 32})
    monkeypatch.setenv(data.ENV_ROOT, str(path.parent))
    cfg = training.AgileConfig(epochs=2, ref_epochs=1, batch_size=32, lr=0.01)
    first = training.train_or_load(cfg, progress=False)
    assert not first.cached and first.path.is_file() and first.path.is_relative_to(paths.models_dir())
    assert len(first.history) == 2 and all(0 <= h["train_skewness"] <= 1 for h in first.history)
    best = max(range(2), key=lambda i: first.history[i]["val_auc"])  # the checkpoint: best validation AUC
    val = data.load_split("pneumoniamnist", "val")
    assert training.endpoints(first.model, val)["auc"] == pytest.approx(first.history[best]["val_auc"])
    again = training.train_or_load(cfg, progress=False)
    assert again.cached and all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                                   again.model.state_dict().values()))
    other = training.checkpoint_path(training.AgileConfig(epochs=2, ref_epochs=1, batch_size=32, lr=0.01, rho=0.9))
    assert other != first.path  # another setting is another checkpoint
    test = data.load_split("pneumoniamnist", "test")
    m = training.evaluate(first, test)
    assert 0 <= m["skewness"] <= 1 and 0 <= m["local_acc"] <= 1 and 0 <= m["ordered"] <= 1
    assert set(m) >= {"acc", "bal_acc", "auc", "local_acc", "local_bal_acc", "local_auc"}
    runs = training.train_seeds(cfg, [0, 1], progress=False)  # seed 0 is the model above, read back
    assert runs[0].cached and not runs[1].cached and [r.config.seed for r in runs] == [0, 1]
    assert training.reference_path(runs[1].config) != training.reference_path(cfg)  # a seed retrains the reference too
    p0, p1 = (training.probabilities(r.model, test) for r in runs)
    assert p0.shape == (len(test), 2) and np.allclose(p0.sum(1), 1, atol=1e-5) and not np.allclose(p0, p1)
    with pytest.raises(ValueError, match="distinct training seeds"):
        training.train_seeds(cfg, [0, 0])


def test_the_skewness_loss_trains_the_extractor_through_the_gradients():
    """Steps on the skewness loss alone (double backpropagation into the extractor) raise the local channels' share."""
    torch.manual_seed(0)
    ref, model = agilenn.Reference(1, 2).eval(), agilenn.AgileNN(1, 2)
    for p in ref.parameters():
        p.requires_grad_(False)
    model.extractor.load_state_dict(ref.stem.state_dict())
    base = agilenn.BaselineGradient(ref.body, (24, 14, 14), 2)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 2
    opt = torch.optim.Adam(model.extractor.parameters(), lr=0.01)
    model.extractor.eval()  # fixed BatchNorm statistics: the same function before and after, but for the weights
    shares = []
    for _ in range(6):
        imp = agilenn.channel_importance(ref.body, model.extractor(x), y, base, create_graph=True)
        shares.append(float(agilenn.skewness(imp.detach(), model.k).mean()))
        opt.zero_grad()
        agilenn.skewness_loss(imp, model.k, 0.99).backward()
        opt.step()
    assert shares[-1] > shares[0] + 0.02, shares


def test_remapping_renumbers_the_channels_of_the_same_function():
    torch.manual_seed(0)
    ref = agilenn.Reference(1, 2).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.weight.data.normal_(1.0, 0.2)
    order = torch.randperm(24)
    new = agilenn.permute_channels(ref, order)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(new(x), ref(x), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(new.stem(x), ref.stem(x)[:, order])
    base, base_new = (agilenn.BaselineGradient(r.body, (24, 14, 14), 2) for r in (ref, new))
    with torch.no_grad():
        f, f_new = ref.stem(x), new.stem(x)
    imp, imp_new = agilenn.channel_importance(ref.body, f, y, base), agilenn.channel_importance(new.body, f_new, y, base_new)
    assert torch.allclose(imp_new, imp[:, order], rtol=1e-4, atol=1e-7)


def test_the_endpoint_table_and_the_load_of_a_serving_run(monkeypatch, tmp_path):
    from xaiprune.agilenn import analysis

    evs = [{"acc": 0.8, "bal_acc": 0.7, "auc": 0.9}, {"acc": 0.6, "bal_acc": 0.5, "auc": 0.7}]
    table = analysis.endpoint_table({"AgileNN": evs, "small_cnn": evs[:1]})
    assert table.loc["AgileNN", "auc"] == pytest.approx(0.8) and table.loc["AgileNN", "bal_acc min"] == 0.5
    assert table.loc["small_cnn", "seeds"] == 1 and table.loc["small_cnn", "acc max"] == 0.8
    ends = analysis.method_endpoints({"vgg": evs[:1], "small": evs, "tiny": evs[1:], "split": evs[1:], "agilenn": evs})
    assert ends["offload_vgg"] == ends["local_vgg"] and ends["split_small"]["bal_acc"] == 0.5
    assert ends["local_small"]["bal_acc_min"] == 0.5 and ends["local_small"]["bal_acc_max"] == 0.7
    loads = iter([(0.5, 0.4, 0.3), (1.5, 0.6, 0.35)])
    monkeypatch.setattr(analysis.os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(analysis.offload, "run", lambda cfg, folder, progress=True: "served")
    served, load = analysis.serve(None, tmp_path)
    assert served == "served" and load["start"] == [0.5, 0.4, 0.3] and load["end"] == [1.5, 0.6, 0.35] and load["cpus"] >= 1


def test_payloads_round_trip_and_served_answers_are_compared_with_the_batched_ones():
    from xaiprune.agilenn import analysis as agilenn_analysis

    torch.manual_seed(0)
    x = torch.round((torch.rand(4, 1, 28, 28) * 0.5 + 0.25) * 255) / 255 / 0.5 - 1  # on MedMNIST's uint8 grid
    test = data.Split(x=x, y=torch.tensor([0, 1, 0, 1]), flag="pneumoniamnist", split="test", size=28)
    model = agilenn.AgileNN(1, 2).eval()
    pay = agilenn_analysis.payloads(model, test, 3, "zlib")
    assert pay.roundtrip and pay.png_exact and len(pay.agile) == len(pay.png) == 4
    assert (pay.sent("local_vgg") == 0).all() and (pay.sent("offload_small") == pay.png).all()
    assert (pay.sent("split_small", np.array([5, 6, 7, 8])) == [5, 6, 7, 8]).all()
    batched = {m: np.array([0, 1, 0, 1]) for m in agilenn_analysis.NETWORK_OF}
    local = np.array([1, 1, 0, 0])
    served = pd.DataFrame([{"method": m, "image": i, "pred": int(batched[m][i]), "pred_local": int(local[i]) if m == "agilenn" else -1}
                           for m in ("local_small", "agilenn") for i in range(4)])
    agree, agree_local = agilenn_analysis.agreement(served, batched, local)
    assert agree.to_dict() == {"agilenn": 1.0, "local_small": 1.0} and agree_local == 1.0
    served.loc[0, "pred"] = 1 - served.loc[0, "pred"]
    assert agilenn_analysis.agreement(served, batched, local)[0]["local_small"] == 0.75
