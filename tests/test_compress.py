"""XAI-guided compression (notebook 09): DeepLIFT weight relevance and its summation to delta, dead weights from the
geometry and removed by every variant, weighted k-means, exact bit counts (the dead weights free), the file round trip,
zeros kept by quantisation, the claim's targets, bad settings refused."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LayerDeepLift
from torch import nn

from xaiprune import data, models, stats
from xaiprune.compression import compress, experiments, operating, relevance, results as compress_results, storage
from xaiprune.pruning import comparison, prune, repairs
from xaiprune.study import parameters
from xaiprune.study.schema import ParameterError
from conftest import small, split


def tiny() -> models.SegmentedModel:
    """One 3x3 conv (2 -> 3 filters, no bias), BatchNorm, ReLU, then the head: hand-countable."""
    torch.manual_seed(0)
    return models.SegmentedModel(OrderedDict(block1=nn.Sequential(*models.conv_bn_relu(2, 3), models.Head(3, 2)))).eval()


def test_weighted_kmeans_with_equal_weights_equals_unweighted():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    for bits in (1, 2, 4):
        plain = compress.share(w, bits)
        equal = compress.share(w, bits, sample_weight=torch.full_like(w, 3.7))
        np.testing.assert_allclose(compress.decode(equal), compress.decode(plain), rtol=0, atol=1e-7)
        assert len(plain.table) == 2 ** bits and plain.values.max() < 2 ** bits


def test_relevance_moves_the_centres_toward_the_relevant_weights():
    w = torch.cat([torch.linspace(-1, -0.5, 50), torch.linspace(0.5, 1, 50)])
    relevant = torch.cat([torch.zeros(50), torch.ones(50)])  # only the positive half matters
    plain, weighted = compress.share(w, 1), compress.share(w, 1, sample_weight=relevant)
    err = lambda code: float(((compress.decode(code) - w.numpy())[50:] ** 2).mean())  # noqa: E731
    assert err(weighted) < 0.5 * err(plain)


def test_sizes_in_bits_by_hand_on_a_tiny_model():
    model = tiny()
    assert storage.size_bits(model, {})["total"] == 8 * prune.weight_bytes(model)
    other = 8 * prune.weight_bytes(model) - 32 * (3 * 2 * 9 + 2 * 3)  # BatchNorm (4 x 3 float32 + int64) and fc bias
    assert other == 32 * (4 * 3 + 2) + 64
    fc = "segments.block1.3.fc.weight"
    # 4-bit sharing, nothing pruned: 54 + 6 codes of 4 bits, two codebooks (16 and 6 centres: fc has 6 weights)
    shared = compress.compress(model, "share", 4)
    assert storage.size_bits(model, shared)["total"] == 60 * 4 + 32 * (16 + 6) + other
    # 3-bit quantisation: 60 codes of 3 bits and one float32 scale per output channel (3 + 2)
    quant = compress.compress(model, "quant", 3)
    assert storage.size_bits(model, quant)["total"] == 60 * 3 + 32 * 5 + other
    # the conv pruned to its first 6 of 54 weights, stored raw: gaps of g bits (6 symbols, the trailing zeros implied)
    mask = torch.zeros(3, 2, 3, 3, dtype=torch.bool)
    mask.view(-1)[:6] = True
    code = compress.raw(model.segments.block1[0].weight, mask)
    assert storage.index_layout(code.mask) == ("gaps", 1, 6)
    assert storage.layout(code)["total"] == 6 * 32 + 6
    # a 2-bit quantised conv with one weight in nine kept: gaps (4-bit symbols) beat a bitmap (54 bits) and dense codes
    mask = torch.zeros(54, dtype=torch.bool)
    mask[::9] = True
    code = compress.quantise(model.segments.block1[0].weight, 2, mask.view(3, 2, 3, 3))
    assert storage.index_layout(code.mask) == ("gaps", 4, 4 * 6)  # 0 or 8 zeros before each: one 4-bit symbol
    assert storage.layout(code) == {"layout": "gaps", "g": 4, "codes": 6 * 2, "table": 32 * 3, "index": 24,
                                        "total": 12 + 96 + 24}
    assert storage.gap_symbols(code.mask, 3) == 6 + 5  # with 3-bit symbols, a run of 8 needs one escape (7)
    assert storage.layout(compress.compress(model, "raw")[fc])["total"] == 6 * 32


@pytest.mark.parametrize("kind,bits,sparsity", [("share", 3, 0.7), ("quant", 4, 0.5), ("quant", 2, 0.05), ("raw", None, 0.9),
                                                ("share", 1, 0.0)])
def test_saved_file_round_trips_to_the_same_logits_and_its_size_is_the_counted_one(tmp_path, kind, bits, sparsity):
    model = small()
    ref = split(8)
    masks = compress.WeightRanking(relevance.magnitude(model)).masks(sparsity) if sparsity else None
    scores = relevance.weight_relevance(model, ref, cache=False)
    codes = compress.compress(model, kind, bits, masks=masks, sample_weights=scores if kind == "share" else None)
    path = storage.save(tmp_path / "m.xpc", model, codes, "small_cnn")
    back = storage.load(path)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(back(x), compress.apply(model, codes)(x))
    counted = storage.size_bits(model, codes)["total"]
    report = storage.file_report(path, counted)
    streams = 3 * len(codes) + len(model.state_dict()) - len(codes)
    assert 0 <= report["file_bytes"] - report["header_bytes"] - counted / 8 <= streams  # padding only


def test_a_structurally_pruned_model_is_saved_and_rebuilt_with_its_shapes(tmp_path):
    model = small()
    pruned, _ = prune.prune(model, "l1", 0.5)
    codes = compress.compress(pruned, "quant", 6)
    back = storage.load(storage.save(tmp_path / "p.xpc", pruned, codes, "small_cnn"))
    assert [c.out_channels for c in models.conv_layers(back).values()] == [c.out_channels for c in models.conv_layers(pruned).values()]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), compress.apply(pruned, codes)(x))


def test_gap_index_round_trips_with_escapes():
    rng = np.random.default_rng(0)
    for p in (0.001, 0.05, 0.5, 0.99):
        mask = rng.random(5000) < p
        mask[0] = True
        for g in (1, 3, 8):
            symbols = storage._encode_gaps(mask, g)
            assert len(symbols) == storage.gap_symbols(mask, g)
            assert np.array_equal(storage._decode_gaps(symbols, g, mask.size), mask)
    values = rng.integers(0, 2 ** 5, 1001)
    assert np.array_equal(storage.unpack(storage.pack(values, 5), 5, 1001), values)


def at_1x1() -> data.Split:
    return data.Split(x=torch.randn(6, 2, 1, 1, generator=torch.Generator().manual_seed(3)), y=torch.arange(6) % 2,
                      flag="pneumoniamnist", split="val", size=28)


@pytest.mark.parametrize("method", ["deeplift", "taylor"])
def test_a_weight_that_never_affects_the_output_has_zero_relevance_and_is_dead_by_geometry(method):
    # at a 1x1 input a padded 3x3 conv uses only its centre tap: the eight others never affect the output
    model, ref = tiny(), at_1x1()
    r = relevance.weight_relevance(model, ref, method, cache=False)["segments.block1.0.weight"]
    centre = torch.zeros(3, 3, dtype=torch.bool)
    centre[1, 1] = True
    assert torch.all(r[:, :, ~centre] == 0) and torch.all(r[:, :, centre] > 0)
    dead = relevance.dead_weights(model, ref.x)
    assert torch.equal(dead["segments.block1.0.weight"], (~centre).expand(3, 2, 3, 3)) and not dead["segments.block1.3.fc.weight"].any()
    assert relevance.dead_share(dead) == pytest.approx(48 / 60)
    assert not relevance.dead_weights(model, torch.zeros(1, 2, 3, 3))["segments.block1.0.weight"].any()  # 3x3: all live
    assert relevance.magnitude(model)["segments.block1.0.weight"][:, :, ~centre].gt(0).all()  # magnitude cannot tell


def test_live_taps_follow_the_geometry():
    assert relevance.live_taps(1, 3, 1, 1, 1).tolist() == [False, True, False]
    assert relevance.live_taps(3, 3, 1, 1, 1).tolist() == [True, True, True]
    assert relevance.live_taps(2, 3, 2, 1, 1).tolist() == [False, True, True]  # one output: reads -1, 0, 1
    assert relevance.live_taps(3, 3, 1, 1, 2).tolist() == [False, True, False]  # dilation 2: the outer taps read -1 and 3
    assert relevance.live_taps(5, 3, 1, 0, 1).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="no output"):
        relevance.live_taps(1, 3, 1, 0, 1)
    circular = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    seq = models.SegmentedModel(OrderedDict(b=nn.Sequential(circular, models.Head(3, 2))))
    assert not relevance.dead_weights(seq, torch.zeros(1, 2, 1, 1))["segments.b.0.weight"].any()  # circular reads pixels


def relu_net() -> nn.Module:
    """conv (bias), ReLU, conv (bias), ReLU, average pool, linear: a tiny ReLU network with biases everywhere."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    return net.eval()


def test_deeplift_weight_contributions_sum_to_the_output_difference_on_a_relu_network():
    net, x = relu_net(), torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 1, 0, 1])
    gaps = relevance.completeness(net, x, target)
    assert len(gaps) == 3 and max(g[k] for g in gaps.values() for k in ("layer", "delta")) < 1e-5  # summation to delta
    # the second conv's weights carry Captum's attribution to its output (multipliers x output differences), image by image
    dx, m, _ = relevance.deeplift_parts(net, x, target)["2.weight"]
    conv = net[2]
    copied = copy.deepcopy(net)
    total = LayerDeepLift(copied, copied[2]).attribute(x, torch.zeros_like(x), target=target).sum(dim=(1, 2, 3))
    sums = torch.stack([c.sum() for c in relevance.contributions(conv, dx, m)])
    assert torch.allclose(sums, total, atol=1e-5)
    # a check that can fail: the layer's inputs instead of their differences to the reference (biases make x' nonzero)
    inputs = relevance.layer_io(net, x)["2.weight"][0]
    wrong = torch.stack([c.sum() for c in relevance.contributions(conv, inputs, m)])
    assert not torch.allclose(wrong, total, atol=1e-3)


def test_the_weights_split_the_layer_attribution_exactly_where_max_pooling_bends_summation_to_delta():
    model, x = small(), torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    gaps = relevance.completeness(model, x, torch.arange(6) % 2)
    assert max(g["layer"] for g in gaps.values()) < 1e-4
    # Captum's max-pool rule with BatchNorm keeps summation to delta only roughly before a pool; exactly after the last
    assert gaps["segments.block1.0.weight"]["delta"] > 1e-3 and gaps["segments.block3.0.weight"]["delta"] < 1e-5


def test_deeplift_weight_relevance_by_explicit_sums_over_positions():
    net, x = relu_net(), torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = data.Split(x=x, y=torch.tensor([1, 0, 1]), flag="pneumoniamnist", split="val", size=28)
    r = relevance.weight_relevance(net, ref, "deeplift", cache=False)["0.weight"]
    delta, m, _ = relevance.deeplift_parts(net, x, ref.y)["0.weight"]
    pad = torch.nn.functional.pad(delta, (1, 1, 1, 1))  # the first conv: 3x3, stride 1, padding 1, on 4x4
    w = net[0].weight.detach()
    by_hand = torch.zeros_like(w)
    for o, i, ky, kx in np.ndindex(*w.shape):
        per_image = (m[:, o] * pad[:, i, ky:ky + 4, kx:kx + 4]).sum(dim=(1, 2)) * w[o, i, ky, kx]
        by_hand[o, i, ky, kx] = per_image.abs().sum()
    assert torch.allclose(r, by_hand, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["deeplift", "taylor"])
def test_relevance_by_hand_on_a_linear_layer(method):
    head = models.SegmentedModel(OrderedDict(h=models.Head(2, 2))).eval()
    with torch.no_grad():
        head.segments.h.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    x = torch.tensor([[[[2.0]], [[1.0]]], [[[-1.0]], [[4.0]]]])  # two 2-channel 1x1 images
    ref = data.Split(x=x, y=torch.tensor([0, 1]), flag="pneumoniamnist", split="val", size=28)
    r = relevance.weight_relevance(head, ref, method, cache=False)["segments.h.fc.weight"]
    # one linear layer, zero reference: both are |w * x| of the target row; row 0 from image 0 = [2, 2], row 1 from image 1
    assert torch.allclose(r, torch.tensor([[2.0, 2.0], [0.5, 12.0]]))


@pytest.mark.parametrize("kind,bits", [("share", 3), ("quant", 2), ("quant", 1), ("quant", 8)])
def test_pruned_weights_stay_zero_after_sharing_or_quantisation(kind, bits):
    model = small()
    masks = compress.WeightRanking(relevance.magnitude(model)).masks(0.6)
    out = compress.apply(model, compress.compress(model, kind, bits, masks=masks))
    for key, layer in compress.weight_layers(out).items():
        assert torch.all(layer.weight[~masks[key]] == 0)
        assert masks[key].any()  # every layer keeps a weight
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int((~m).sum()) for m in masks.values()) - 0.6 * total) <= len(masks)


def test_quantisation_is_symmetric_per_channel_and_exact_on_its_grid():
    w = torch.tensor([[-3.0, 0.0, 1.0, 3.0], [0.1, -0.2, 0.2, 0.0]])
    code = compress.quantise(w, 3)  # 7 levels, L = 3
    np.testing.assert_allclose(compress.decode(code)[0], [-3, 0, 1, 3], atol=1e-6)
    assert code.table[1] < code.table[0] and code.values.max() <= 6


def test_mixed_precision_allocation_follows_relevance_within_the_budget():
    counts = {"a": 100, "b": 1000, "c": 10}
    bits = compress.allocate_bits(counts, {"a": 1.0, "b": 1.0, "c": 1.0}, 4)
    assert sum(bits[k] * counts[k] for k in counts) <= 4 * sum(counts.values())
    assert bits["c"] >= bits["a"] >= bits["b"] and all(2 <= b <= 8 for b in bits.values())
    flipped = compress.allocate_bits(counts, {"a": 1.0, "b": 1e6, "c": 1e-6}, 4)
    assert flipped["b"] > bits["b"] and flipped["c"] < bits["c"]  # relevance moves bits to b, away from c
    assert compress.allocate_bits(counts, {"a": 1, "b": 1, "c": 1}, 2) == {"a": 2, "b": 2, "c": 2}


@pytest.mark.parametrize("call,match", [
    (lambda m, r: compress.share(m.segments.block1[0].weight, 0), "bits=0"),
    (lambda m, r: compress.quantise(m.segments.block1[0].weight, 17), "bits=17"),
    (lambda m, r: compress.compress(m, "share", 2.5), r"bits\[.*\]=2.5"),
    (lambda m, r: compress.WeightRanking(relevance.magnitude(m)).masks(1.0), "sparsity=1.0"),
    (lambda m, r: compress.WeightRanking(relevance.magnitude(m)).masks(-0.1), "sparsity=-0.1"),
    (lambda m, r: relevance.weight_relevance(m, data.Split(r.x[:0], r.y[:0], r.flag, "val", 28)), "reference set is empty"),
    (lambda m, r: relevance.weight_relevance(m, r, "lrp"), "method='lrp'"),
    (lambda m, r: compress.WeightRanking(relevance.magnitude(m), tiebreak=compress.WeightRanking(relevance.magnitude(m)),
                                         dead=relevance.dead_weights(m, torch.zeros(1, 1, 4, 4))), "tiebreak ranks other"),
    (lambda m, r: compress.allocate_bits({"a": 1}, {"a": 1.0}, 9), "average=9"),
    (lambda m, r: compress.compress(m, "zip", 2), "kind='zip'"),
])
def test_bad_settings_are_refused_before_any_work(call, match, monkeypatch):
    monkeypatch.setattr(compress, "KMeans", None)           # any clustering would fail differently
    monkeypatch.setattr(compress.torch.autograd, "grad", None)  # so would any backward pass
    with pytest.raises(ValueError, match=match):
        call(small(), split(4))


def test_the_schema_of_09_refuses_bad_settings_and_names_the_xai_criteria_as_prune_does():
    assert set(parameters.XAI_CRITERIA) == set(prune.XAI_CRITERIA)
    good = parameters.defaults("09_compression")
    for change, match in [({"share_bits": [0, 2]}, "share_bits"), ({"budget_bits": [9]}, "budget_bits"),
                          ({"sparsities": [1.0]}, "sparsities"), ({"filter_baselines": ["l1", "deeplift"]}, "non-XAI"),
                          ({"combo_stage": "mixed", "combo_bits": [1, 3]}, "combo_bits"), ({"draws": 1}, "draws"),
                          ({"val_images": -1}, "val_images")]:
        with pytest.raises(ParameterError, match=match):
            parameters.validate("09_compression", {**good, **change})
    assert parameters.validate("09_compression", good)["combo_stage"] == "share"


def test_ratio_at_reads_the_largest_ratio_within_the_loss():
    curve = pd.DataFrame({"setting": [1, 2, 3], "bits": [100.0, 200.0, 400.0], "ratio": [40.0, 20.0, 10.0],
                          "auc": [0.80, 0.845, 0.86], "acc": [0.9, 0.5, 0.5]})
    assert experiments.ratio_at(curve, 0.855, 1)["ratio"] == 20.0 and experiments.ratio_at(curve, 0.855, 3)["ratio"] == 20.0
    assert experiments.ratio_at(curve, 0.825, 3)["setting"] == 1
    assert experiments.ratio_at(curve, 0.99, 1) is None
    assert experiments.ratio_at(curve, 0.905, 1, "acc")["ratio"] == 40.0  # any endpoint, AUC by default


def curves_for_plan() -> pd.DataFrame:
    """Weight pruning: DeepLIFT within 1 point up to 10x; magnitude at 4, 8, 16x; uniform only at 12 and 24x.
    Sharing: no DeepLIFT setting within 1 point. Ratios on live weights are half the overall ones."""
    def variant(tech, name, ratios, aucs):
        return pd.DataFrame({"technique": tech, "variant": name, "xai": name == "deeplift", "setting": ratios,
                             "ratio": ratios, "live_ratio": [r / 2 for r in ratios], "auc": aucs, "bal_acc": 0.9})
    return pd.concat([variant("weight_pruning", "deeplift", [5.0, 10.0, 20.0], [0.95, 0.945, 0.90]),
                      variant("weight_pruning", "magnitude", [4.0, 8.0, 16.0], [0.95, 0.94, 0.80]),
                      variant("weight_pruning", "uniform", [12.0, 24.0], [0.95, 0.95]),
                      variant("sharing", "deeplift", [3.0], [0.90]),
                      variant("sharing", "kmeans", [3.0], [0.95])], ignore_index=True)


def test_the_operating_point_is_chosen_on_validation_and_the_counterpart_matched_at_no_larger_ratio():
    entries = operating.plan(curves_for_plan(), base_auc=0.952, points=1)
    by = {(e["technique"], e["counterpart"]["variant"]): e for e in entries}
    first = by[("weight_pruning", "magnitude")]
    assert first["status"] == "compared" and first["xai"]["ratio"] == 10.0 and first["counterpart"]["ratio"] == 8.0
    assert first["xai"] == {"variant": "deeplift", "setting": 10.0, "ratio": 10.0, "live_ratio": 5.0, "val_auc": 0.945,
                            "val_bal_acc": 0.9}
    assert by[("weight_pruning", "uniform")]["status"] == "every uniform setting compresses more than 10.0x"
    assert by[("sharing", "kmeans")]["xai"] is None and "no DeepLIFT setting within 1" in by[("sharing", "kmeans")]["status"]
    lines = compress_results.plan_lines(entries)
    assert lines[0] == ("weight_pruning: deeplift at 10.0 (10.0x, validation AUC 0.9450) against magnitude at 8.0 "
                        "(8.0x, validation AUC 0.9400)") and "not compared" in lines[1]
    points = operating.operating_points(curves_for_plan(), base_auc=0.952, points=1)
    assert {v: p and p["live_ratio"] for v, p in points["weight_pruning"].items()} == {
        "deeplift": 5.0, "magnitude": 2.0, "uniform": 12.0}  # each variant's own ratio at 1 point
    assert points["sharing"]["deeplift"] is None and points["sharing"]["kmeans"]["live_ratio"] == 1.5


def probs_of(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Binary probabilities whose ranking of ``y`` worsens with ``noise``."""
    p = 1 / (1 + np.exp(-(y * 2.0 - 1 + np.random.default_rng(seed).normal(0, noise, len(y)))))
    return np.c_[1 - p, p]


def test_the_equal_size_comparisons_are_paired_holm_corrected_and_nothing_compared_is_never_a_win():
    y = np.arange(300) % 2
    good = [probs_of(y, 0.3, s) for s in range(3)]
    bad = [probs_of(y, 3.0, s + 10) for s in range(3)]

    def entry(tech, cp, status="compared"):
        return {"technique": tech, "xai": {"variant": "deeplift", "setting": 10.0, "ratio": 10.0},
                "counterpart": {"variant": cp, "setting": 8.0, "ratio": 8.0}, "status": status}
    probs = {("a", "deeplift", (10.0,)): good, ("a", "m", (8.0,)): bad, ("b", "deeplift", (10.0,)): bad,
             ("b", "m", (8.0,)): good[:1]}
    entries = [entry("a", "m"), entry("b", "m"), entry("c", "m", "every m setting compresses more than 10.0x")]
    result = operating.compare(entries, probs, y, stats.BINARY, margin=0.0, n_boot=400)
    t = result["techniques"]
    assert t["a"]["outcome"] == "above the margin" and t["b"]["outcome"] == "not above the margin"
    assert t["c"]["outcome"] == "not measured" and t["c"]["diff"] is None and "compresses more" in t["c"]["why"]
    assert result["target_met"] is False and result["wins_somewhere"] is True
    b = next(r for r in result["comparisons"] if r["technique"] == "b")
    assert b["n_seeds"] == [3, 1] and "boot" not in b  # unequal draws: unpaired, nested; Holm drops the bootstrap values
    assert b["diff"] < 0 and b["interval_family"][1] < 0  # DeepLIFT below its counterpart: the family-wise check sees it
    alone = operating.compare(entries[:1], probs, y, stats.BINARY, margin=0.0, n_boot=400)
    assert alone["target_met"] is True and alone["n_seeds"] == 3
    assert alone["comparisons"][0]["xai_side"]["auc"] > alone["comparisons"][0]["counterpart_side"]["auc"]
    none = operating.compare(entries[2:], probs, y, stats.BINARY, margin=0.0, n_boot=400)
    assert none["target_met"] is None and none["wins_somewhere"] is False and none["measured"] is None
    shown = operating.table(result)
    assert list(shown["technique"]) == ["a", "b"] and shown["one class (XAI, counterpart)"].iloc[1] == "0 of 3, 0 of 1"


def point(live: float | None, overall: float | None = None, test_auc: float = 0.95) -> dict | None:
    return None if live is None else {"setting": 0.9, "live_ratio": live, "ratio": overall or 2 * live,
                                      "val_auc": 0.99, "test_auc": test_auc, "test_bal_acc": 0.9, "test_acc": 0.9}


def test_the_targets_read_the_ratios_at_one_point_and_the_verdict_combines_them():
    result = {"comparisons": [], "techniques": {}}
    def found(wp, share, combined, comparisons=()):  # noqa: E306
        points = {"weight_pruning": wp, "sharing": share, "combined": {"deeplift": combined}}
        return operating.targets(points, 0.96, {**result, "comparisons": list(comparisons)}, 1.5, 16.0, 1)
    strong = {"deeplift": point(30.0), "taylor": point(12.0), "magnitude": point(19.0)}
    weak = {"deeplift": point(15.0), "taylor": point(15.0), "kmeans": point(30.0)}
    ok = found(strong, strong, point(20.0, 40.0, test_auc=0.955))
    assert ok["verdict"] == stats.SUPPORTED and ok["not_met"] == [] and ok["measured"] == pytest.approx(30 / 19)
    assert ok["ratio"]["weight_pruning"]["best"] == "magnitude" and ok["combined"]["test_loss"] == pytest.approx(0.005)
    partly = found(strong, weak, point(20.0, 40.0))
    assert partly["verdict"] == stats.PARTLY and partly["ratio"]["sharing"]["factor"] == 0.5
    assert partly["not_met"][0].startswith("sharing: DeepLIFT 15.0x against kmeans 30.0x")
    assert found(weak, weak, point(20.0, 40.0))["verdict"] == stats.NOT
    # the combined pipeline: under 16x overall, or its test AUC more than 1 point below the uncompressed model's
    assert not found(strong, strong, point(7.0, 15.0))["combined"]["met"]
    lossy = found(strong, strong, point(20.0, 40.0, test_auc=0.94))
    assert not lossy["combined"]["met"] and lossy["verdict"] == stats.PARTLY
    # an equal-size comparison below 0 (family-wise) keeps the claim from support
    below = found(strong, strong, point(20.0, 40.0), [{"technique": "sharing", "counterpart": "kmeans",
                                                        "interval_family": [-0.02, -0.001]}])
    assert below["verdict"] == stats.PARTLY and below["below"] == ["sharing against kmeans"]
    # DeepLIFT with no setting within the loss is not met; no counterpart within it while DeepLIFT is, met
    assert not found({"deeplift": None, "magnitude": point(5.0)}, strong, point(20.0))["ratio"]["weight_pruning"]["met"]
    assert found({"deeplift": point(5.0), "magnitude": None}, strong, point(20.0))["ratio"]["weight_pruning"]["met"]
    text = operating.evidence({"weight_pruning": strong, "sharing": weak}, partly, result, 0.43, 3, 1)
    assert "43.0% of the conv and linear weights are dead" in text and "Not met: sharing" in text
    lines = compress_results.claim_lines(partly, result, 1.5, 16.0)
    assert lines[1].endswith("target 1.5x: NOT met") and lines[-1].startswith("not met: sharing")


def test_a_model_answering_one_class_is_counted_as_threshold_drift():
    y = np.arange(10) % 2
    shifted = np.c_[np.full(10, 0.2), np.full(10, 0.8)]
    shifted[:, 1] += 0.01 * y  # still ranks every image right: AUC 1, one answer for all
    assert experiments.one_class(shifted, stats.BINARY) and not experiments.one_class(probs_of(y, 0.1, 0), stats.BINARY)
    assert stats.endpoints(y, shifted, stats.BINARY)["bal_acc"] == 0.5
    assert experiments.one_class(np.eye(3)[[0, 0, 0]], "multi-class") and not experiments.one_class(np.eye(3), "multi-class")
    rows = pd.DataFrame({"technique": ["t", "t", "u"], "variant": ["a", "a", "b"], "one_class": [True, False, True],
                         "auc": [0.95, 0.95, 0.5]})
    found = operating.drift(rows, base_auc=0.96)
    assert found == {"models": 3, "one_class_high_auc": 1, "by_variant": {"t / a": 1}}
    assert "1 of 3 compressed models" in compress_results.drift_line(found, 2)


def test_the_selection_split_is_validation_outside_the_reference_draws():
    val = split(40, seed=5)
    refs = [data.reference_set(val, n_per_class=3, seed=k) for k in (0, 1)]
    used = {x.numpy().tobytes() for r in refs for x in r.x}
    select = operating.selection_split(val, refs, 10, seed=0)
    assert len(select) == 10 and select.split == "val" and not used & {x.numpy().tobytes() for x in select.x}
    assert torch.equal(select.x, operating.selection_split(val, refs, 10, seed=0).x)
    assert len(operating.selection_split(val, refs, 0)) == 40 - len(used)
    with pytest.raises(ValueError, match="validation"):
        operating.selection_split(data.Split(val.x, val.y, val.flag, "test", 28), refs, 10)


def test_a_study_measures_every_endpoint_and_rebuilds_a_setting_for_the_test(isolated):
    model, select = small(), split(32, seed=3)
    refs = [split(6, seed=1), split(6, seed=2)]
    plain = experiments.Study(model, select, refs, correct=False, progress=False)
    assert len(list((isolated / "artifacts" / "relevance").glob("weights-*.pt"))) == 4  # per method and draw
    plain.sharing([2])
    plain.combined([0.5], [3])
    rows = plain.frame()
    shared = rows[rows["technique"] == "sharing"]
    assert sorted(shared["variant"]) == ["deeplift", "deeplift", "kmeans", "taylor", "taylor"]  # no correction: one plain draw
    assert shared["bits"].nunique() == 1  # same bits: 2-bit codes and four centres per layer either way
    assert (shared["ratio"] == shared["live_ratio"]).all()  # 28x28: small_cnn has no dead weight
    first = rows.iloc[0]
    assert {k: first[k] for k in stats.ENDPOINTS} == pytest.approx(
        stats.endpoints(plain.evaluator.y, plain.evaluator.scores[first["model"]], plain.evaluator.task))
    curves = experiments.summary(rows)
    assert set(curves.loc[curves["technique"] == "combined", "setting"]) == {(0.5, 3)}
    assert {"bal_acc", "bal_acc_lo", "auc_hi", "live_ratio"} <= set(curves.columns)
    corrected = experiments.Study(model, select, refs, progress=False)
    corrected.weight_pruning([0.5])
    assert len(corrected.frame()) == 6 and corrected.frame()["corrected"].all()
    before = len(corrected.evaluator.scores)
    corrected.mixed_precision([2])  # every allocation gives every layer 2 bits: the same codes, one model per draw
    mixed = corrected.frame().query("technique == 'mixed_precision'")
    assert len(mixed) == 8 and mixed["model"].nunique() == 2 and len(corrected.evaluator.scores) == before + 2
    # the same setting rebuilt on another evaluator of the same split gives the same probabilities, draw by draw
    again = comparison.Evaluator(model, select)
    for variant in experiments.PRUNERS:
        measured = corrected.frame().query("variant == @variant")["model"]
        rebuilt = corrected.probabilities(again, "weight_pruning", variant, 0.5)
        assert len(rebuilt) == 2 and all(np.array_equal(p, corrected.evaluator.scores[i]) for p, i in zip(rebuilt, measured))
    assert len(plain.probabilities(again, "combined", "magnitude", [0.5, 3.0])) == 1  # no correction: one draw
    assert len(plain.probabilities(again, "sharing", "taylor", 2.0)) == 2  # 2 bits, as a table gives them
    with pytest.raises(ValueError, match="not measured"):
        plain.probabilities(again, "sharing", "kmeans", 3)
    unchanged = repairs.correct_means(model, compress.apply(model, compress.compress(model, "raw")), refs[0])
    assert all(torch.equal(a, b) for a, b in zip(unchanged.state_dict().values(), model.state_dict().values()))


def images(n: int, side: int, seed: int = 0) -> data.Split:
    x = torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))
    return data.Split(x=x, y=torch.arange(n) % 2, flag="pneumoniamnist", split="val", size=28)


def test_every_variant_prunes_the_dead_weights_and_the_live_ratio_leaves_them_out(isolated):
    # small_cnn on 4x4 images: its third conv sees 1x1 inputs, so 8 of its 9 taps are dead
    model, select = small(), images(16, 4, seed=3)
    study = experiments.Study(model, select, [images(6, 4, seed=1)], progress=False)
    third = "segments.block3.0.weight"
    assert study.dead[third][:, :, 1, 1].eq(False).all() and int(study.dead[third].sum()) == 64 * 32 * 8
    assert sum(int(d.sum()) for k, d in study.dead.items() if k != third) == 0
    study.weight_pruning([0.5])
    study.sharing([2])
    study.mixed_precision([3])
    study.combined([0.5], [2], "share")
    study.combined([0.5], [3], "mixed")
    assert len(study.builders) == 3 + 3 + 4 + 3
    for (tech, variant), make in study.builders.items():
        setting = {"weight_pruning": 0.5, "sharing": 2, "mixed_precision": 3, "combined": (0.5, 3)}[tech]
        codes = make(setting, 0)
        for k, dead in study.dead.items():
            mask = codes[k].mask
            assert mask is not None or not dead.any(), (tech, variant, k)
            assert mask is None or not mask[dead.numpy().ravel()].any(), f"{tech}/{variant} keeps a dead weight of {k}"
    # removing the dead weights alone changes no output: the geometry found only taps that read padding
    x = images(5, 4, seed=7).x
    with torch.no_grad():
        assert torch.allclose(compress.apply(model, compress.compress(model, "raw", masks=study.live))(x), model(x), atol=1e-6)
    # the ratio on live weights: the 32-bit model without its dead weights, against the same size in bits
    rows = study.frame()
    assert study.live_bits == study.full_bits - 32 * 64 * 32 * 8
    assert np.allclose(rows["live_ratio"] / rows["ratio"], study.live_bits / study.full_bits)
    # sharing stores the live weights only: 2-bit codes, four centres, no index (nothing else is pruned)
    codes = compress.compress(model, "share", 2, masks=study.live)
    size = storage.size_bits(model, codes, study.dead)
    live = {k: int((~d).sum()) for k, d in study.dead.items()}
    assert size["layers"][third] == {"layout": "dense", "g": 0, "codes": 2 * live[third], "table": 4 * 32, "index": 0,
                                     "total": 2 * live[third] + 128}
    assert size["weights"] == sum(2 * n + 32 * len(codes[k].table) for k, n in live.items())
    assert storage.size_bits(model, codes)["layers"][third]["index"] > 0  # without the geometry the dead ones cost an index
    keep = {k: torch.ones_like(d) for k, d in study.dead.items()}
    keep[third][0, 0, 1, 1] = False  # one live weight pruned, the dead ones kept
    with pytest.raises(ValueError, match="dead weight is kept"):
        storage.size_bits(model, compress.compress(model, "raw", masks=keep), study.dead)


@pytest.mark.parametrize("kind,bits,sparsity", [("share", 2, 0.0), ("quant", 3, 0.6), ("raw", None, 0.8)])
def test_a_file_without_its_dead_weights_reloads_them_from_the_geometry(tmp_path, kind, bits, sparsity):
    model = small()
    dead = relevance.dead_weights(model, torch.zeros(1, 1, 4, 4))
    masks = compress.WeightRanking(relevance.magnitude(model), dead=dead).masks(sparsity)
    codes = compress.compress(model, kind, bits, masks=masks)
    path = storage.save(tmp_path / "d.xpc", model, codes, "small_cnn", (1, 4, 4))
    back = storage.load(path)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(back(x), compress.apply(model, codes)(x))
    counted = storage.size_bits(model, codes, dead)["total"]
    report = storage.file_report(path, counted)
    assert 0 <= report["file_bytes"] - report["header_bytes"] - counted / 8 <= 3 * len(codes) + len(model.state_dict())
    assert counted < storage.size_bits(model, codes)["total"]  # the dead weights' index costs nothing


def test_ties_of_relevance_are_broken_by_the_tiebreak_then_by_position():
    scores = {"a": torch.tensor([0.0, 0.0, 0.0, 2.0]), "b": torch.tensor([0.0, 1.0])}
    size = {"a": torch.tensor([3.0, 1.0, 2.0, 0.1]), "b": torch.tensor([0.5, 9.0])}
    masks = compress.WeightRanking(scores, tiebreak=size).masks(0.5)  # three of six go: the zeros with the smallest |w|
    assert masks["a"].tolist() == [True, False, False, True] and masks["b"].tolist() == [False, True]
    plain = compress.WeightRanking(scores).masks(0.5)  # by position: a's first three zeros
    assert plain["a"].tolist() == [False, False, False, True] and plain["b"].tolist() == [True, True]


def test_the_layer_table_counts_dead_weights_relevance_and_zeros_per_layer(isolated):
    model = small()
    study = experiments.Study(model, images(8, 4, seed=2), [images(6, 4, seed=s) for s in (1, 2)], progress=False)
    table = compress_results.layer_table(study)
    layers = compress.weight_layers(model)
    assert table["weights"].tolist() == [m.weight.numel() for m in layers.values()]
    assert table["DeepLIFT share"].sum() == pytest.approx(1.0)
    assert table["input HxW"].tolist() == ["4x4", "2x2", "1x1", "-"]  # three convs, then the linear head
    assert table["dead"].tolist() == pytest.approx([0, 0, 8 / 9, 0])
    assert (table["weights vs layer"] < 1e-4).all() and table["sum-to-delta gap"].iloc[-1] < 1e-5
    zeros = [float((torch.stack([r[k] == 0 for r in study.relevance["deeplift"]]).all(0) & study.live[k]).sum()
                   / study.live[k].sum()) for k in layers]
    assert table["live, zero DeepLIFT"].tolist() == pytest.approx(zeros)


def test_the_points_table_and_the_saved_setting_are_read_on_validation_auc():
    def rows(tech):
        xai = pd.DataFrame({"variant": "deeplift", "xai": True, "setting": [(0.9, 2), (0.8, 3), (0.7, 4)],
                            "ratio": [40.0, 20.0, 10.0], "auc": [0.80, 0.845, 0.86], "acc": [0.9, 0.9, 0.9]})
        other = pd.DataFrame({"variant": "b", "xai": False, "setting": [(0.9, 2), (0.7, 4)], "ratio": [40.0, 10.0],
                              "auc": [0.5, 0.6], "acc": [0.9, 0.9]})
        return pd.concat([xai, other]).assign(technique=tech)
    curves = pd.concat([rows(t) for t in compress_results.TECHNIQUES + [experiments.UNCORRECTED]], ignore_index=True)
    curves = curves.assign(live_ratio=curves["ratio"] / 2, bal_acc=0.9)
    points = operating.operating_points(curves, 0.855, 1)
    assert list(points) == compress_results.TECHNIQUES  # the uncorrected rows are shown beside, never read
    tested = {t: {v: p and {**p, "test_auc": 0.9, "test_bal_acc": 0.8} for v, p in by.items()} for t, by in points.items()}
    table = compress_results.points_table(tested, curves, 0.855)
    assert len(table) == 2 * 5
    assert table.loc[("sharing", "deeplift (XAI)"), "ratio on live weights"] == 10.0
    assert table.loc[("sharing", "deeplift (XAI)"), "overall ratio"] == 20.0
    assert table.loc[("sharing", "deeplift (XAI)"), "live ratio at 3 points"] == 10.0
    assert pd.isna(table.loc[("sharing", "b"), "ratio on live weights"])
    assert compress_results.choose_saved(curves, 0.855, 1)["setting"] == (0.8, 3)
    assert compress_results.choose_saved(curves, 0.99, 1)["setting"] == (0.7, 4)  # none within 1 point: the highest AUC


def test_the_combined_model_is_saved_reloaded_and_checked(isolated, tmp_path):
    model, select, test = small(), split(32, seed=3), split(24, seed=4)
    study = experiments.Study(model, select, [split(6, seed=1)], correct=True, progress=False)
    tested = comparison.Evaluator(model, test)
    saved = compress_results.save_and_reload(study, tested, 0.5, 3, "share", tmp_path / "c.xpc", "small_cnn")
    compress_results.check_saved(study, saved)
    assert saved["path"].is_file() and saved["file"]["file_bytes"] == saved["path"].stat().st_size
    assert set(saved["from_file"]) == set(stats.ENDPOINTS) and len(tested.scores) == 3  # in memory, from file, uncorrected
    per_layer = compress_results.bits_per_weight(model, saved["size"])
    assert list(per_layer.index) == list(compress_results.short_names(model).values())
    assert (per_layer["codes"] > 0).all()
    result = {"comparisons": [], "techniques": {}}
    points = {"sharing": {"deeplift": point(10.0, 12.0), "kmeans": None}}
    m = compress_results.metrics(study, "small_cnn", True, {"val": {"auc": 0.5}}, points, [], result, {"verdict": "x"},
                                 {"models": 0}, saved)
    assert m["saved"]["test"] == {k: round(v, 6) for k, v in saved["from_file"].items()}
    assert m["saved"]["ratio"] == round(study.full_bits / saved["size"]["total"], 6)
    assert m["techniques"]["sharing"]["deeplift"]["ratio_at_1pt"] == 10.0
    assert m["techniques"]["sharing"]["deeplift"]["overall_ratio_at_1pt"] == 12.0
    assert m["techniques"]["sharing"]["kmeans"]["ratio_at_1pt"] is None
    assert m["dead_weight_share"] == 0.0 and m["targets"] == {"verdict": "x"}
    saved["logit_gap"] = 1e-3
    with pytest.raises(AssertionError, match="logits differ"):
        compress_results.check_saved(study, saved)
