"""AgileNN (notebook 10): the quantiser, the two losses, the trapezoid IG, the wire payload, training, serving, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from xaiprune import data, paths, train
from xaiprune.agilenn import model as agilenn, training
from xaiprune.study import parameters
from xaiprune.study.schema import ParameterError
from xaiprune.agilenn import offload
from xaiprune.serving import payload
from conftest import needs_real_data, small


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
    ({"link_factors": [0.1]}, "10_agilenn: link_factors=[0.1]: expected 1.0 among them"),
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
    with pytest.raises(offload.OffloadError, match="remote='icu-server': no such device in scenario 'ward-4'"):
        offload.OffloadConfig("pneumoniamnist", 28, "a", "b", remote="icu-server").validate()
    with pytest.raises(offload.OffloadError, match="remote='gateway' is the source device"):
        offload.OffloadConfig("pneumoniamnist", 28, "a", "b", remote="gateway").validate()


def checkpoints(folder):
    """A small_cnn 'study model' checkpoint and an untrained AgileNN checkpoint, as 02 and training write them."""
    study = train.save(train.Trained(small(1, 2), train.TrainConfig(arch="small_cnn")), folder / "study.pt")
    torch.manual_seed(0)
    model = agilenn.AgileNN(1, 2).eval()
    torch.save({"config": asdict(training.AgileConfig()), "state_dict": model.state_dict(), "history": []},
               folder / "agile.pt")
    return str(study), str(folder / "agile.pt"), model


def test_a_device_whose_remote_worker_never_joins_fails_with_a_clear_error(tmp_path):
    study, agile, _ = checkpoints(tmp_path)
    cfg = offload.OffloadConfig("pneumoniamnist", 28, study, agile, jobs=[["agilenn", 0, 1.0, 0]], connect_timeout_s=1.0)
    with pytest.raises(offload.OffloadError, match=r"rank 0: no remote worker \(rank 1\) joined .* within 1 s"):
        offload.run(cfg, tmp_path / "run", progress=False, ranks=(0,))


@needs_real_data
def test_every_method_is_served_over_two_processes_with_the_batched_answers(tmp_path):
    study, agile, model = checkpoints(tmp_path)
    jobs = [[m, i, f, 2 if m == "split" else 0] for i in (0, 1) for f in (0.001, 1.0) for m in offload.METHODS]
    cfg = offload.OffloadConfig("pneumoniamnist", 28, study, agile, jobs=jobs)
    got = offload.run(cfg, tmp_path / "run", progress=False)
    assert len(got) == len(jobs) and got["method"].tolist() == [j[0] for j in jobs]
    x = data.load_split("pneumoniamnist", "test", 28).x[:2]
    with torch.no_grad():
        want_study, want_agile = small(1, 2)(x).argmax(1), model(x).argmax(1)
    for r in got.itertuples():
        want = want_agile if r.method == "agilenn" else want_study
        if r.method != "offload_jpeg":  # lossy
            assert r.pred == int(want[r.image]), r
    ag = got[got["method"] == "agilenn"]
    with torch.no_grad():
        idx = model.outputs(x)["indices"]
    assert ag["bytes"].tolist() == [len(payload.encode_indices(idx[i], 3)) for i in ag["image"]]
    assert (got.loc[got["method"] == "local", "bytes"] == 0).all()
    slow = got[(got["method"] == "offload_png") & (got["multiplier"] == 0.001)]["latency_ms"].min()
    fast = got[(got["method"] == "offload_png") & (got["multiplier"] == 1.0)]["latency_ms"].min()
    assert slow > fast + 40  # 1000x less bandwidth: about 80 ms more for a PNG of about 600 bytes


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


def _claim_inputs(auc_diff_lo: float, model_min: float, measured_lo: float) -> tuple[dict, dict, dict]:
    """The three inputs of claim.claim with the corrected AUC interval's lower end, the least modelled ratio and the
    lower end of the least measured ratio chosen."""
    acc = {"auc": {"diff": auc_diff_lo + 0.01, "interval_holm": [auc_diff_lo, auc_diff_lo + 0.02], "margin": -0.02,
                   "above_margin": auc_diff_lo > -0.02, "p_holm": 0.01, "n_seeds": [3, 1]},
           "agilenn": {"acc": 0.8, "bal_acc": 0.8, "auc": 0.9}, "full": {"acc": 0.85, "bal_acc": 0.82, "auc": 0.91},
           "difference": {"acc": -0.05, "bal_acc": -0.02, "auc": -0.01}}
    modelled = {"local": 90.0, "offload_png": model_min, "offload_jpeg": model_min + 1, "split": 70.0}
    ratio = {"ratio": measured_lo + 1, "interval": [measured_lo, measured_lo + 2], "p": 0.01, "target": 6.0}
    measured = {"ratios": {m: ratio for m in modelled}, "min": {**ratio, "against": "offload_png"}, "images": 40}
    return acc, modelled, measured


@pytest.mark.parametrize("auc_lo,model_min,measured_lo,verdict", [
    (-0.01, 60.0, 6.5, "supported"),          # every part holds
    (-0.01, 60.0, 4.0, "partly supported"),   # the measured ratio's interval reaches below 6
    (-0.05, 5.0, 4.0, "not supported"),       # AUC below the margin and both latency ratios below 6
    (-0.05, 6.0, 4.0, "partly supported"),    # the modelled ratio exactly at the target is met
])
def test_the_agilenn_claim_needs_auc_and_both_latency_figures(auc_lo, model_min, measured_lo, verdict):
    from xaiprune.agilenn import claim
    from xaiprune.study import protocol

    acc, modelled, measured = _claim_inputs(auc_lo, model_min, measured_lo)
    load = {"start": [0.5, 0.4, 0.3], "end": [0.9, 0.5, 0.3], "cpus": 2}
    c = claim.claim(acc, modelled, measured, protocol.AGILENN_SPEEDUP, load, 60.0)
    assert c["verdict"] == verdict and c["n_seeds"] == 3 and c["interval"] == acc["auc"]["interval_holm"]
    assert c["target_met"] == (verdict == "supported") and c["extra"]["load_average"] == load
    assert c["extra"]["modelled_min_ratio"] == model_min and c["extra"]["measured_min_ratio"]["against"] == "offload_png"
    row = protocol.row("agilenn", c["measured"], c["interval"], c["n_seeds"], c["verdict"], c["evidence"], "val", **c["extra"])
    assert set(protocol.ROW_KEYS) <= set(row) and row["verdict"] == verdict and "load average 0.50 then 0.90" in row["evidence"]
    word = "met" if c["parts"]["measured_ratio_at_least_target"] else "NOT met"
    assert any(line.startswith("measured latency ratio") and line.endswith(word)
               for line in claim.claim_lines(c, acc, modelled, measured, _latency(), _link(), _COSTS, _pay()))


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


_COSTS = {"device_flops": 1e5, "remote_flops": 1e6, "offloaded_values": 800}
_MS = {"local": 70.0, "offload_png": 40.0, "offload_jpeg": 35.0, "split": 55.0, "agilenn": 5.0}


def _link():
    from xaiprune.agilenn import analysis

    scn, dev, rem = offload.OffloadConfig("pneumoniamnist", 28, "a", "b").ends()
    return analysis.Link.of(small(1, 2).eval(), (1, 28, 28), scn, dev, rem, 2)


def _pay():
    from xaiprune.agilenn import analysis

    return analysis.Payloads(np.array([100, 120]), np.array([600, 640]), np.array([300, 340]), True, True, None,
                             {"acc": 0.8, "bal_acc": 0.75, "auc": 0.9})


def _served(ms: dict = _MS, images: int = 2, spread: float = 1.0):
    """Every method at factor 1.0 on ``images`` images, image i at ms + spread x (i - mean)."""
    off = np.arange(images) - (images - 1) / 2
    return pd.DataFrame([{"method": m, "image": i, "multiplier": 1.0, "latency_ms": v + spread * off[i], "bytes": 10}
                         for m, v in ms.items() for i in range(images)])


def _latency():
    from xaiprune.agilenn import analysis

    link = _link()
    return analysis.latency_frame(_served(), link, analysis.sent(_pay(), link, _COSTS))


def test_the_link_predicts_as_offload_does_and_the_latency_tables_follow():
    from xaiprune.agilenn import analysis, claim

    model, shape = small(1, 2).eval(), (1, 28, 28)
    link, pay = _link(), _pay()
    scn, dev, rem = link.scn, link.dev, link.rem
    last = len(link.seg_flops)
    for m in (0.001, 1.0, 100.0):
        assert link.best_cut(m) == offload.best_cut(model, shape, scn, dev, rem, 2, m)
    assert link.cut_seconds(last) == pytest.approx(link.full_flops / scn.devices[dev].speed)  # nothing sent
    assert link.table()["cut after it: predicted ms"].iloc[-1] == pytest.approx(1e3 * link.cut_seconds(last))
    sent = analysis.sent(pay, link, _COSTS)
    assert sent["offload_png"] == (0, 620.0, link.full_flops) and sent["agilenn"] == (1e5, 110.0, 1e6)
    assert link.predicted_ms("local", 0.01, sent) == pytest.approx(1e3 * link.cut_seconds(last))
    want = 1e3 * offload.predicted_seconds(scn, dev, rem, 1e5, 110.0, 1e6, 8, 0.5)
    assert link.predicted_ms("agilenn", 0.5, sent) == pytest.approx(want)
    for method in analysis.METHODS:  # the parts add up to the prediction; local sends nothing
        for m in (0.01, 1.0):
            assert sum(link.parts_ms(method, m, sent).values()) == pytest.approx(link.predicted_ms(method, m, sent))
    assert link.parts_ms("local", 1.0, sent)["link"] == 0 and link.parts_ms("offload_png", 1.0, sent)["device"] == 0
    jobs = analysis.jobs([0, 1], [0.1, 1.0], {0.1: 1, 1.0: 2})
    assert len(jobs) == 2 + 2 * 2 * 4 and jobs[:2] == [["local", 0, 1.0, 0], ["local", 1, 1.0, 0]] and ["split", 1, 1.0, 2] in jobs
    latency = _latency()
    assert analysis.at(latency, "split")["p50"] == 55.0 and (latency["requests"] == 2).all()
    speed = analysis.speedups(latency)
    assert speed == {"local": 14.0, "offload_png": 8.0, "offload_jpeg": 7.0, "split": 11.0}
    modelled = claim.modelled_ratios(link, sent)
    assert modelled["local"] == pytest.approx(link.predicted_ms("local", 1.0, sent) / link.predicted_ms("agilenn", 1.0, sent))
    measured = claim.measured_ratios(_served(), 6.0, n_boot=200)
    parts = claim.latency_parts(link, sent, measured)
    assert parts.loc["split", "measured median ms"] == 55.0
    assert parts["overhead ms"].to_numpy() == pytest.approx((parts["measured median ms"] - parts["modelled ms"]).to_numpy())
    evs = [{"acc": 0.85, "bal_acc": 0.8, "auc": 0.9, "local_acc": 0.7, "local_auc": 0.8, "skewness": 0.82, "ordered": 0.5}]
    acc = {"agilenn": {"acc": 0.85, "bal_acc": 0.8, "auc": 0.9}, "full": {"acc": 0.86, "bal_acc": 0.81, "auc": 0.91},
           "auc": {"diff": -0.01, "interval_holm": [-0.03, 0.01]}}
    c = {"parts": {"auc_above_margin": False}, "extra": {"modelled_ratios": modelled, "load_average": {"start": [0.1]}}}
    ablations = pd.DataFrame([{"variant": "default", "test AUC": 0.9, "test ACC": 0.8, "local AUC": 0.85, "local ACC": 0.7,
                               "skewness": 0.8, "ordered": 0.5, "bytes": 110.0}]).set_index("variant")
    m = analysis.metrics(latency, link, 1, acc, evs, _COSTS, pay, ablations, c, measured, arch="small_cnn", k=4, centroids=8,
                         quality=90, emulate=True, seeds=[0])
    assert m["agilenn"]["bits_per_value"] == round(8 * 110 / 800, 4) and m["full_offload"]["bytes_per_image"] == 620.0
    assert m["agilenn"]["test_auc"] == 0.9 and m["local_only"]["test_bal_acc"] == 0.81 and m["agilenn"]["seeds"] == [0]
    assert m["speedup_vs"]["local"] == 14.0 and m["ablations"]["default"]["test_auc"] == 0.9
    assert m["split"]["cut_after"] == link.seg_names[0] and m["latency_by_bandwidth"]["agilenn"]["1"]["p50"] == 5.0
    assert m["latency_ratios"]["measured_min"]["against"] == "offload_jpeg" and m["link"]["images"] == 2
    json.dumps(m)  # plain data


def test_measured_ratios_bootstrap_the_served_images_paired():
    from xaiprune.agilenn import claim

    exact = claim.measured_ratios(_served(spread=0.0, images=5), 6.0, n_boot=300)  # no spread: no uncertainty
    assert exact["ratios"]["local"]["ratio"] == pytest.approx(14.0) and exact["ratios"]["local"]["interval"] == pytest.approx([14.0, 14.0])
    assert exact["min"]["against"] == "offload_jpeg" and exact["min"]["ratio"] == pytest.approx(7.0)
    assert exact["min"]["p"] == 0.0 and exact["median_ms"]["split"]["median"] == 55.0
    noisy = claim.measured_ratios(_served(spread=2.0, images=9), 6.0, n_boot=500)
    lo, hi = noisy["min"]["interval"]
    assert lo < noisy["min"]["ratio"] < hi and lo <= min(r["interval"][0] for r in noisy["ratios"].values()) + 1e-9
    assert noisy["images"] == 9 and noisy["n_boot"] == 500
    # the same per-image load on every scheme moves every median together: paired resamples keep the ratio exact
    served = _served(spread=0.0, images=6)
    served["latency_ms"] *= 1 + served["image"] % 2
    paired = claim.measured_ratios(served, 6.0, n_boot=300)["ratios"]["local"]
    assert paired["ratio"] == pytest.approx(14.0)
    with pytest.raises(ValueError, match=r"no request of \['split'\]"):
        claim.measured_ratios(served[served["method"] != "split"], 6.0)
    with pytest.raises(ValueError, match="1 image"):
        claim.measured_ratios(_served(images=1), 6.0)


def test_accuracy_compares_every_seed_with_the_full_model_on_the_same_images():
    from xaiprune.agilenn import claim
    from xaiprune import stats

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    def probs(noise):  # noqa: E306
        s = np.clip(y + rng.normal(0, noise, len(y)), 0, 1)
        return np.stack([1 - s, s], 1)
    full = probs(0.6)
    same = claim.accuracy([full, full.copy()], full, y, stats.BINARY, -0.02, n_boot=300)
    assert same["auc"]["diff"] == 0 and same["auc"]["above_margin"] and same["difference"]["bal_acc"] == 0
    assert "boot" not in same["auc"] and same["auc"]["n_seeds"] == [2, 1] and len(same["seeds"]) == 2
    worse = claim.accuracy([probs(3.0), probs(3.0), probs(3.0)], full, y, stats.BINARY, -0.02, n_boot=300)
    assert worse["auc"]["diff"] < -0.02 and not worse["auc"]["above_margin"]
    assert worse["agilenn"]["auc"] == pytest.approx(np.mean([s["auc"] for s in worse["seeds"]]))
    assert worse["full"] == stats.endpoints(y, full, stats.BINARY)


def test_the_endpoint_table_and_the_load_of_a_serving_run(monkeypatch, tmp_path):
    from xaiprune.agilenn import analysis

    x = torch.zeros(6, 1, 28, 28)
    test = data.Split(x=x, y=torch.tensor([0, 1, 1, 1, 0, 1]), flag="pneumoniamnist", split="test", size=28)
    ev = {"acc": 0.8, "bal_acc": 0.7, "auc": 0.9, "local_acc": 0.6, "local_bal_acc": 0.5, "local_auc": 0.7}
    table = analysis.endpoint_table("small_cnn", {"acc": 0.9, "bal_acc": 0.85, "auc": 0.95}, [ev, ev], [3, 4], test)
    assert table.loc["AgileNN, seed 4", "auc"] == 0.9 and table.loc["AgileNN local predictor alone (link down), seed 3", "auc"] == 0.7
    assert table.loc["always the most frequent class"].to_dict() == pytest.approx({"acc": 4 / 6, "bal_acc": 0.5, "auc": 0.5})
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
    model, study_model = agilenn.AgileNN(1, 2).eval(), small(1, 2).eval()
    pay = agilenn_analysis.payloads(model, study_model, test, 3, "zlib", 90)
    assert pay.roundtrip and pay.png_exact and len(pay.agile) == len(pay.png) == len(pay.jpeg) == 4
    assert pay.jpeg_x.shape == x.shape and set(pay.jpeg_metrics) >= {"acc", "auc"}
    with torch.no_grad():
        study_pred, agile_pred, local_pred = study_model(x).argmax(1), model(x).argmax(1), model.local_logits(x).argmax(1)
    served = pd.DataFrame([{"method": "local", "image": i, "pred": int(study_pred[i]), "pred_local": -1} for i in range(4)]
                          + [{"method": "agilenn", "image": i, "pred": int(agile_pred[i]), "pred_local": int(local_pred[i])}
                             for i in range(4)])
    agree, agree_local = agilenn_analysis.agreement(served, study_model, model, test, pay.jpeg_x)
    assert agree.to_dict() == {"agilenn": 1.0, "local": 1.0} and agree_local == 1.0
    served.loc[0, "pred"] = 1 - served.loc[0, "pred"]
    assert agilenn_analysis.agreement(served, study_model, model, test, pay.jpeg_x)[0]["local"] == 0.75
