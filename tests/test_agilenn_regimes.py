"""AgileNN against baselines of its own size (notebook 10): regimes, the cost model, the small network, the split's
quantised activation, serving with receiver timestamps, the paired latency ratio and the claim."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from xaiprune import data, paths, stats, train
from xaiprune.agilenn import analysis, claim, model as agilenn, offload, regimes, small, training
from xaiprune.planning import system
from xaiprune.serving import payload
from xaiprune.study import parameters, protocol
from xaiprune.study.schema import ParameterError
from conftest import needs_real_data, small as small_cnn

SLOW = regimes.Regime("slow", "mcu", 1e8, 2e5, 1, "server", 1e11, 1e4, 2e4, 100.0, "test")


def nets(vgg_flops=4e8) -> regimes.Networks:
    return regimes.Networks(784, 8, vgg_flops, 15_000_000, (1e5, 2e5, 3e5), (4704, 1000, 500), (200, 3000, 5000),
                            1.5e5, 2500, 2e5, 6e6, 1397, 700)


def test_the_paper_regime_is_read_with_its_source_and_the_ward_from_its_scenario():
    paper, ward = regimes.load("paper"), regimes.load("ward", "ward-4")
    assert paper.source == "params/regimes/paper.yaml" and paper.device_speed == 128e6 and paper.up == 11520  # 8N1 UART
    assert paper.weight_bytes == 1 and not paper.fits(14_000_000) and paper.fits(133_000)
    scn = system.load_scenario("ward-4")
    assert ward.device == scn.devices[scn.source].name and ward.remote == "nurse-station"  # the fastest other device
    assert ward.up == scn.bandwidth[scn.source, scn.index("nurse-station")] and ward.coder_ops == paper.coder_ops
    two = paper.scenario()
    assert two.source == 0 and system.transfer_seconds(two, 0, 1, 1440) == pytest.approx(1440 / paper.up)


def test_bad_regimes_are_refused_with_the_file_or_parameter_named(tmp_path):
    with pytest.raises(regimes.RegimeError, match="regime file .*nowhere.yaml: not found; known regimes: .*'paper'"):
        regimes.from_file(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text((paths.PARAMS / "regimes" / "paper.yaml").read_text().replace("mflops: 128", "mflops: -1"))
    with pytest.raises(regimes.RegimeError, match=r"bad.yaml: device.mflops = -1; expected a positive number"):
        regimes.from_file(bad)
    bad.write_text((paths.PARAMS / "regimes" / "paper.yaml").read_text().replace("{name: server, ", "{"))
    with pytest.raises(regimes.RegimeError, match=r"bad.yaml: remote.name = None; expected a name"):
        regimes.from_file(bad)
    with pytest.raises(regimes.RegimeError, match="remote='gateway': expected a device of scenario 'ward-4' other than"):
        regimes.ward("ward-4", "gateway")
    with pytest.raises(offload.OffloadError, match="regime=.*expected the fields of a Regime"):
        offload.OffloadConfig("pneumoniamnist", 28, "a", "b", "c", "d", {"name": "x"}).validate()
    with pytest.raises(offload.OffloadError, match=r"jobs \[\['split', 0\]\]: expected \[method in"):
        offload.OffloadConfig("pneumoniamnist", 28, "a", "b", "c", "d", asdict(SLOW), jobs=[["split", 0]]).validate()


@pytest.mark.parametrize("change,match", [
    ({"claim_regime": "ward", "regimes": ["paper"]}, "claim_regime='ward': expected one of regimes=['paper']"),
    ({"regimes": ["moon"]}, "10_agilenn: regimes=['moon']: expected every element one of"),
    ({"latency_requests": 1}, "10_agilenn: latency_requests=1: expected a value in [2, inf)"),
])
def test_bad_regime_settings_are_refused_by_the_schema(change, match):
    with pytest.raises(ParameterError) as info:
        parameters.validate("10_agilenn", {**parameters.defaults("10_agilenn"), **change})
    assert match in str(info.value)


def test_the_cost_model_charges_compute_coder_and_link_once_each():
    n = nets()
    off = regimes.method_cost("offload_small", n, 600)
    parts = regimes.modelled_parts(SLOW, off)
    assert parts["device"] == pytest.approx(1e3 * 100 * 784 / 1e8)  # the PNG coder reads the raw image
    assert parts["link"] == pytest.approx(1e3 * (600 / 1e4 + 8 / 2e4))
    assert parts["remote"] == pytest.approx(1e3 * (6e5 + 100 * 784) / 1e11)
    assert regimes.modelled_ms(SLOW, off) == pytest.approx(sum(parts.values()))
    local = regimes.modelled_parts(SLOW, regimes.method_cost("local_small", n))
    assert local == {"device": pytest.approx(1e3 * 6e5 / 1e8), "link": 0.0, "remote": 0.0}
    split = regimes.method_cost("split_small", n, 300, cut=2)
    assert (split.device_flops, split.remote_flops, split.device_coded) == (3e5, 3e5, 1000)
    agile = regimes.method_cost("agilenn", n, 306)
    assert regimes.device_ops(SLOW, agile) == 2e5 + 100 * 1397 and agile.remote_flops == 6e6
    assert regimes.device_weights("local_vgg", n) == 15_000_000 and regimes.device_weights("split_small", n, 2) == 3200
    assert regimes.device_weights("offload_vgg", n) == 0 and regimes.device_weights("local_tiny", n) == 2500
    assert regimes.method_cost("local_tiny", n) == regimes.Cost(1.5e5)
    late = replace(SLOW, latency=0.004)  # a fixed cost per message, each way
    assert regimes.modelled_parts(late, off)["link"] == pytest.approx(parts["link"] + 8.0)
    assert regimes.modelled_parts(late, regimes.method_cost("local_small", n))["link"] == 0.0
    with pytest.raises(ValueError, match="cut=3: expected 1..2 segments"):
        regimes.method_cost("split_small", n, 300, cut=3)


def test_the_split_cut_is_chosen_by_median_modelled_latency():
    n = nets()
    val_bytes = {1: np.array([3000, 3100, 2900]), 2: np.array([300, 350, 250])}
    assert analysis.choose_cut(SLOW, n, val_bytes) == 2  # 2 kB less on a 10 kB/s link outweighs 0.2 MFLOPs at 0.1 GFLOP/s
    fast_link = replace(SLOW, up=1e9, down=1e9, coder_ops=0.0)  # then the fewer device FLOPs win
    assert analysis.choose_cut(fast_link, n, val_bytes) == 1
    table = analysis.cut_table(SLOW, n, val_bytes, ["extractor", "stem", "head"])
    assert list(table.index) == ["after extractor", "after stem"] and table.idxmin() == "after stem"


def test_the_small_network_is_agilenns_layers_without_the_split_and_its_split_quantises_per_image():
    torch.manual_seed(0)
    net = agilenn.small_network(1, 2).eval()
    assert list(net.segments)[0] == "extractor" and list(net.segments)[-1] == "head" and len(net.segments) == 7
    agile = agilenn.AgileNN(1, 2)
    assert sum(p.numel() for p in net.segments["extractor"].parameters()) == sum(p.numel() for p in agile.extractor.parameters())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        full, cut, a = net(x), small.split_logits(net, x, 2), net.run_segments(x, 0, 2)
    assert torch.allclose(full, cut, atol=0.05 * float(full.abs().max())) and not torch.equal(full, cut)
    for i in range(3):  # the wire's bytes decode to what the batched split uses
        buf = payload.encode_activation(a[i:i + 1])
        q, lo, step = payload.quantise(a[i:i + 1])
        assert torch.equal(payload.decode_activation(buf, tuple(a[i:i + 1].shape)), payload.dequantise(q, lo, step))
        assert len(buf) < a[i].numel()  # fewer than one byte per value after zlib
    q, lo, step = payload.quantise(a)
    assert (payload.dequantise(q, lo, step) - a).abs().max() <= step.max() / 2 + 1e-6
    with torch.no_grad():
        assert torch.equal(small.Split(net, 2)(x), cut)


def test_the_small_network_is_trained_once_per_seed_and_read_back(synthetic, isolated, monkeypatch):
    path = synthetic("pneumoniamnist", n={"train": 64, "val": 32, "test": 32})
    monkeypatch.setenv(data.ENV_ROOT, str(path.parent))
    cfg = training.AgileConfig(epochs=2, ref_epochs=1, batch_size=32, lr=0.01)
    first = small.train_or_load(cfg, progress=False)
    assert not first.cached and first.path.is_file() and "agilenn-small-" in str(first.path) and len(first.history) == 2
    val = data.load_split("pneumoniamnist", "val")
    best = max(h["val_auc"] for h in first.history)
    assert training.endpoints(first.model, val)["auc"] == pytest.approx(best)  # the kept epoch: best validation AUC
    both = small.train_seeds(cfg, [0, 1], progress=False)
    assert both[0].cached and not both[1].cached and both[1].path != first.path
    assert small.checkpoint_path(replace(cfg, rho=0.5)) == first.path  # AgileNN's own losses do not change it
    assert small.checkpoint_path(replace(cfg, epochs=3)) != first.path


def _served(ms: dict, images: int = 6, spread: float = 1.0) -> pd.DataFrame:
    off = np.arange(images) - (images - 1) / 2
    return pd.DataFrame([{"method": m, "image": i, "latency_ms": v + spread * off[i], "bytes": 10}
                         for m, v in ms.items() for i in range(images)])


def test_the_measured_ratio_is_paired_over_the_served_images_and_takes_the_nearest_baseline():
    ms = {"agilenn": 10.0, "local_small": 50.0, "offload_small": 30.0, "split_small": 40.0}
    methods = list(ms)
    boot, obs = analysis.medians(_served(ms, spread=0.0), methods, n_boot=200)
    table = _table().loc[[m for m in methods]]
    r = claim.measured_ratio(boot, obs, methods, table)
    assert r["against"] == "offload_small" and r["ratio"] == pytest.approx(3.0) and r["interval"] == pytest.approx([3, 3])
    served = _served(ms, spread=0.0)
    served["latency_ms"] *= 1 + served["image"] % 2  # the same per-image load on every method
    r = claim.measured_ratio(*analysis.medians(served, methods, n_boot=300), methods, table)
    assert r["ratio"] == pytest.approx(3.0) and r["interval"][0] == pytest.approx(3.0)  # pairing keeps it exact
    noisy = analysis.medians(_served(ms, images=9, spread=3.0), methods, n_boot=400)
    lo, hi = claim.measured_ratio(*noisy, methods, table)["interval"]
    assert lo < 3.0 < hi
    unfit = table.copy()
    unfit.loc["offload_small", "fits"] = False  # a baseline that does not fit is never the comparator
    assert claim.measured_ratio(boot, obs, methods, unfit)["against"] == "split_small"
    with pytest.raises(ValueError, match="1 image"):
        analysis.medians(_served(ms, images=1), methods)
    order = analysis.jobs([0, 1, 2], methods, seed=3)
    assert sorted(map(tuple, order)) == sorted((m, i) for i in range(3) for m in methods)
    assert order == analysis.jobs([0, 1, 2], methods, seed=3) and order != analysis.jobs([0, 1, 2], methods, seed=4)


def _table(agile=10.0, best=30.0, fits_local=True) -> pd.DataFrame:
    rows = {"agilenn": agile, "local_tiny": 45.0, "local_small": 50.0, "offload_small": best, "split_small": 40.0,
            "local_vgg": 5.0}
    return pd.DataFrame([{"method": m, "fits": fits_local if m != "local_vgg" else False, "modelled ms": v,
                          "measured ms": v, "measured lo": v - 1, "measured hi": v + 1, "bytes": 1.0,
                          "device MFLOPs": 0.1, "requests": 200} for m, v in rows.items()]).set_index("method")


@pytest.mark.parametrize("best,measured_lo,acc_ok,verdict", [
    (30.0, 2.5, True, "supported"),
    (30.0, 1.5, True, "partly supported"),   # the measured interval reaches below 2x
    (15.0, 1.2, False, "not supported"),     # 1.5x by the model, 1.2x measured, accuracy below the margin
])
def test_the_claim_needs_both_latency_figures_and_parity_on_both_endpoints(best, measured_lo, acc_ok, verdict):
    table = _table(best=best)
    modelled = claim.modelled_ratio(table)
    assert modelled["against"] == "offload_small" and modelled["ratio"] == best / 10  # VGG is faster but not a peer
    assert modelled["each"] == {"local_tiny": 4.5, "local_small": 5.0, "offload_small": best / 10, "split_small": 4.0}
    d = {"diff": 0.0, "interval_holm": [-0.01 if acc_ok else -0.05, 0.01], "p_holm": 0.01, "above_margin": acc_ok,
         "margin": -0.02, "n_seeds": [3, 3]}
    measured = {"ratio": measured_lo + 0.5, "interval": [measured_lo, measured_lo + 1], "against": "offload_small"}
    load = {"start": [0.5, 0.4, 0.3], "end": [0.9, 0.5, 0.3], "cpus": 2}
    c = claim.claim({"bal_acc": d, "auc": d}, modelled, measured, protocol.AGILENN_SPEEDUP, "paper", load, 200)
    assert c["verdict"] == verdict and c["n_seeds"] == 3 and c["interval"] == measured["interval"]
    row = protocol.row("agilenn", c["measured"], c["interval"], c["n_seeds"], c["verdict"], c["evidence"], "val", **c["extra"])
    assert set(protocol.ROW_KEYS) <= set(row) and "load average 0.50 then 0.90" in row["evidence"]
    lines = claim.claim_lines(c, [0.81, 0.79], 0.8)
    assert lines[-1].endswith(verdict) and "NOT met (a training target" in lines[-2]
    m = claim.regime_metrics(table, {k: {"acc": 0.8, "bal_acc": 0.7, "auc": 0.9} for k in table.index}, "stage3")
    assert set(m["agilenn"]) >= {"latency_ms_p50_model", "latency_ms_p50_measured", "latency_lo", "latency_hi", "bal_acc",
                                 "auc", "device_mflops", "bytes_per_image"} and m["split_cut_after"] == "stage3"
    near = _table(best=30.0)
    near.loc["split_small", ["modelled ms", "fits"]] = [12.0, False]  # nearer, but its device part does not fit
    assert claim.modelled_ratio(near)["against"] == "offload_small"


def test_parity_is_paired_over_images_and_seeds_on_balanced_accuracy_and_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    probs = lambda noise: np.stack([1 - (s := np.clip(y + rng.normal(0, noise, len(y)), 0, 1)), s], 1)  # noqa: E731
    same = [probs(0.6) for _ in range(3)]
    acc = claim.accuracy(same, [p.copy() for p in same], y, stats.BINARY, -0.02, n_boot=300)
    assert set(acc) == {"bal_acc", "auc"} and all(acc[m]["above_margin"] and acc[m]["diff"] == 0 for m in acc)
    worse = claim.accuracy([probs(3.0) for _ in range(3)], same, y, stats.BINARY, -0.02, n_boot=300)
    with pytest.raises(ValueError, match="paired_seeds needs equal seed counts"):
        claim.accuracy(same[:2], same, y, stats.BINARY, -0.02, n_boot=50)
    assert not worse["auc"]["above_margin"] and worse["auc"]["n_seeds"] == [3, 3] and "boot" not in worse["auc"]


@needs_real_data
def test_every_method_is_served_with_the_batched_answers_and_the_uplink_timed_by_the_receiver(tmp_path):
    study = train.save(train.Trained(small_cnn(1, 2), train.TrainConfig(arch="small_cnn")), tmp_path / "study.pt")
    torch.manual_seed(0)
    agile = agilenn.AgileNN(1, 2).eval()
    torch.save({"config": asdict(training.AgileConfig()), "state_dict": agile.state_dict(), "history": []}, tmp_path / "a.pt")
    net, tiny = agilenn.small_network(1, 2).eval(), agilenn.small_network(1, 2, width=0.25).eval()
    torch.save({"config": asdict(training.AgileConfig()), "state_dict": net.state_dict(), "history": []}, tmp_path / "s.pt")
    torch.save({"config": asdict(training.AgileConfig()), "width": 0.25, "state_dict": tiny.state_dict(), "history": []},
               tmp_path / "t.pt")
    slow = replace(SLOW, device_speed=1e10, remote_speed=1e10, up=1e4, down=1e6)  # only the uplink is slow
    jobs = [[m, i] for i in (0, 1) for m in regimes.METHODS]
    cfg = offload.OffloadConfig("pneumoniamnist", 28, str(study), str(tmp_path / "a.pt"), str(tmp_path / "s.pt"),
                                str(tmp_path / "t.pt"), asdict(slow), cut=3, jobs=jobs)
    got = offload.run(cfg, tmp_path / "run", progress=False)
    test = data.load_split("pneumoniamnist", "test", 28)
    x = test.x[:2]
    want = analysis.batched(small_cnn(1, 2), net, tiny, agile, {"slow": 3}, x, "pneumoniamnist")["slow"]
    assert all(r.pred == want[r.method][r.image] for r in got.itertuples())
    sent = got[got["bytes"] > 0]
    assert set(sent["method"]) == {"offload_vgg", "offload_small", "split_small", "agilenn"}
    assert (sent["up_ms"] >= 1e3 * sent["bytes"] / 1e4 - 0.5).all()  # the emulated link, seen by the receiver
    assert (sent["up_ms"] <= 1e3 * sent["bytes"] / 1e4 + 30).all() and (got["device_ms"] > -0.05).all()
    assert (got.loc[got["bytes"] == 0, ["up_ms", "remote_ms", "down_ms"]] == 0).all().all()
    real = offload.run(replace(cfg, emulate=False, jobs=[["offload_small", 0]] * 3), tmp_path / "real", progress=False)
    assert (real["up_ms"] < 20).all() and (real["up_ms"] > 0).all()  # the real send, measured with emulation off


def test_the_stamps_survive_the_period_and_a_rounding_below_zero():
    p = offload.STAMP_PERIOD
    assert offload._since(p - 0.001, 0.002) == pytest.approx(3.0)  # across the wrap: 3 ms
    assert offload._since(5.0, 5.0 - 4e-6) == pytest.approx(-0.004)  # a few microseconds of rounding stay tiny
    assert offload._since(1.0, 1.25) == pytest.approx(250.0)


def test_the_narrowest_width_within_the_margin_is_kept_on_validation(monkeypatch):
    run = lambda auc: small.Small(None, training.AgileConfig(), 1.0, [{"val_auc": auc - 0.1}, {"val_auc": auc}])  # noqa: E731
    full = [run(0.95), run(0.97)]
    trained = []

    def fake(config, seeds, data_root=None, progress=True, width=1.0):
        trained.append(width)
        return [run(aucs[width])]
    monkeypatch.setattr(small, "train_seeds", fake)
    aucs = {0.5: 0.95, 0.25: 0.945}
    assert small.narrowest(training.AgileConfig(), [0], [0.5, 0.25], full, -0.02)[0] == 0.25 and trained == [0.25]
    aucs, trained[:] = {0.5: 0.95, 0.25: 0.90}, []
    width, tried = small.narrowest(training.AgileConfig(), [0], [0.5, 0.25], full, -0.02)
    assert width == 0.5 and trained == [0.25, 0.5] and set(tried) == {0.25, 0.5}
    aucs = {0.5: 0.80, 0.25: 0.70}
    assert small.narrowest(training.AgileConfig(), [0], [0.25, 0.5], full, -0.02)[0] == 0.5  # none within: the widest
    with pytest.raises(ValueError, match="width=1.5: expected a share"):
        small.train_or_load(training.AgileConfig(), width=1.5)


def test_a_method_not_served_keeps_its_modelled_figures_and_says_why():
    n = nets()
    served = _served({"agilenn": 10.0, "local_small": 50.0}, images=3).assign(up_ms=0.0, remote_ms=0.0, down_ms=0.0,
                                                                             device_ms=1.0)
    methods = ["agilenn", "local_small"]
    boot, _ = analysis.medians(served, methods, n_boot=50)
    test_sent = {m: np.full(4, 300.0) for m in regimes.METHODS}
    table = analysis.latency_table(SLOW, n, served, 1, boot, methods, test_sent)
    assert pd.isna(table.loc["local_vgg", "measured ms"]) and not table.loc["local_vgg", "fits"]
    assert table.loc["local_vgg", "modelled ms"] == pytest.approx(1e3 * 4e8 / 1e8)
    assert table.loc["offload_small", "bytes"] == 300.0 and table.loc["agilenn", "bytes"] == 10.0  # served bytes win
    ends = {m: {"acc": 0.8, "bal_acc": 0.7, "auc": 0.9} for m in regimes.METHODS}
    m = claim.regime_metrics(table, ends, "stem")
    assert m["local_vgg"]["latency_ms_p50_measured"] is None and "exceeds the serving limit" in m["local_vgg"]["not_served"]
    assert m["agilenn"]["requests"] == 3 and "not_served" not in m["agilenn"]


def test_the_device_work_is_stated_against_agilenns_own_network_and_vgg():
    evs = [{"skewness": s, "ordered": 0.5, "local_bal_acc": 0.7, "local_auc": 0.8} for s in (0.7, 0.9)]
    costs = {"device_flops": 2e5, "remote_flops": 6e6, "offloaded_values": 3724}
    m = claim.agilenn_metrics(evs, [0, 1], costs, nets(), 100.0, 300.0, 5, 8)
    device = 2e5 + 100 * 1397
    assert m["device_share_of_own_network"] == round(device / 6.2e6, 4) and m["device_share_of_vgg"] == round(device / 4e8, 4)
    assert m["skewness"] == 0.8 and m["skewness_min"] == 0.7 and m["n_seeds"] == 2 and m["coder_mops"] == 0.1397


def test_every_method_has_a_marker_and_a_network():
    from xaiprune.agilenn import figures

    assert set(figures.MARKERS) == set(regimes.METHODS) == set(analysis.NETWORK_OF)
    assert set(regimes.PEERS) < set(regimes.METHODS) and "agilenn" not in regimes.PEERS


def test_the_coder_free_sensitivity_and_the_ablation_metrics():
    n, methods = nets(), ["agilenn", "offload_small"]
    served = _served({"agilenn": 10.0, "offload_small": 50.0}, images=3).assign(up_ms=0.0, remote_ms=0.0, down_ms=0.0,
                                                                               device_ms=1.0)
    boot, obs = analysis.medians(served, methods, n_boot=50)
    test_sent = {m: np.full(3, 10.0) for m in regimes.METHODS}
    run = analysis.RegimeRun(SLOW, 1, methods, served, {}, boot, obs,
                             analysis.latency_table(SLOW, n, served, 1, boot, methods, test_sent))
    free, cost = claim.coder_free_ratio(run, n, test_sent), replace(SLOW, coder_ops=0.0)
    ms = lambda m: regimes.modelled_ms(cost, regimes.method_cost(m, n, 10.0))  # noqa: E731
    assert free["each"]["offload_small"] == pytest.approx(ms("offload_small") / ms("agilenn"))
    assert free["each"]["offload_small"] != pytest.approx(claim.modelled_ratio(run.table)["each"]["offload_small"])
    frame = pd.DataFrame([{"variant": "default", "test AUC": 0.9, "test ACC": 0.8, "local AUC": 0.85, "skewness": 0.7,
                           "bytes": np.float64(310.25), "seconds": 3.0}]).set_index("variant")
    assert claim.ablation_metrics(frame) == {"default": {"test_auc": 0.9, "test_acc": 0.8, "local_auc": 0.85,
                                                         "skewness": 0.7, "bytes": 310.25}}
