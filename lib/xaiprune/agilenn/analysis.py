"""The analysis of ``10_agilenn``: the link's cost model, payloads, latency tables, ablations, targets and metrics.

- :class:`Link`: the study's model on the device-remote link of a scenario: per-segment FLOPs and output bytes,
  the system model's latency of every cut (:func:`xaiprune.agilenn.offload.predicted_seconds`), Neurosurgeon's best
  interior cut, and the prediction of every method;
- :func:`payloads` (a :class:`Payloads`) and :func:`bytes_table`: what each method sends, round trips checked;
- :func:`jobs`, :func:`latency_frame`, :func:`agreement`: the serving run's requests and their summary;
- :func:`per_pixel` and :func:`crossover_lines`: bytes per pixel of AgileNN against the image;
- :func:`ablation_variants`, :func:`ablations`: the variants trained at the same budget;
- :func:`speedups`, :func:`targets` (the targets of this project's reconstruction, docs/DESIGN.md),
  :func:`target_lines`, :func:`check` and :func:`metrics` (``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from xaiprune import data, train
from xaiprune.agilenn import model as agilenn, offload, training
from xaiprune.planning import system
from xaiprune.pruning import prune
from xaiprune.serving import payload

METHODS = ["local", "offload_png", "offload_jpeg", "split", "agilenn"]
# The targets of this project's reconstruction (docs/DESIGN.md), at the scenario's own bandwidth.
TARGETS = {"acc_points": 0.02, "device_flops_ratio": 0.05, "skewness": 0.8}


@dataclass
class Link:
    """The study's model on the link from device ``dev`` to remote ``rem`` of ``scn``."""

    scn: system.Scenario
    dev: int
    rem: int
    n_classes: int
    seg_names: list
    seg_flops: list
    seg_out: list

    @classmethod
    def of(cls, model, shape: tuple[int, int, int], scn: system.Scenario, dev: int, rem: int, n_classes: int) -> "Link":
        out = list(prune.profile(model, shape)["segment_out_bytes"].values())
        return cls(scn, dev, rem, n_classes, list(model.segments), offload.flops_per_segment(model, shape), out)

    @property
    def full_flops(self) -> int:
        return sum(self.seg_flops)

    def mbps(self, a: int | None = None, b: int | None = None) -> float:
        """Bandwidth from ``a`` to ``b`` (default: device to remote) in Mbit/s."""
        a, b = self.dev if a is None else a, self.rem if b is None else b
        return float(self.scn.bandwidth[a, b] * 8 / 1e6)

    def cut_seconds(self, c: int, multiplier: float = 1.0) -> float:
        """Predicted latency of a cut after segment ``c`` (1..S; S: everything on the device, nothing sent)."""
        f = self.seg_flops
        return offload.predicted_seconds(self.scn, self.dev, self.rem, sum(f[:c]), self.seg_out[c - 1] if c < len(f) else 0,
                                         sum(f[c:]), 4 * self.n_classes, multiplier)

    def best_cut(self, multiplier: float = 1.0) -> int:
        """Neurosurgeon's choice among the interior cuts 1..S-1: the least predicted latency at this bandwidth."""
        return min(range(1, len(self.seg_flops)), key=lambda c: self.cut_seconds(c, multiplier))

    def table(self) -> pd.DataFrame:
        """Per segment: MFLOPs, output bytes (float32) and the predicted milliseconds of a cut after it."""
        return pd.DataFrame({"segment": self.seg_names, "MFLOPs": np.array(self.seg_flops) / 1e6,
                             "output bytes (float32)": self.seg_out,
                             "cut after it: predicted ms": [1e3 * self.cut_seconds(c + 1) for c in range(len(self.seg_flops))]})

    def predicted_ms(self, method: str, multiplier: float, sent: dict) -> float:
        """The system model's milliseconds of ``method``; ``sent[method]``: (device FLOPs, bytes sent, remote FLOPs)."""
        if method == "split":
            return 1e3 * self.cut_seconds(self.best_cut(multiplier), multiplier)
        d, b, r = sent[method]
        return 1e3 * offload.predicted_seconds(self.scn, self.dev, self.rem, d, b, r, 4 * self.n_classes if r else 0, multiplier)


@dataclass
class Payloads:
    """Bytes per test image of AgileNN's payload, the PNG and the JPEG image, and their round trips."""

    agile: np.ndarray
    png: np.ndarray
    jpeg: np.ndarray
    roundtrip: bool
    png_exact: bool
    jpeg_x: torch.Tensor
    jpeg_metrics: dict


def payloads(model: agilenn.AgileNN, study_model, test: data.Split, bits: int, codec: str, jpeg_quality: int) -> Payloads:
    """Encode every test image's payload (AgileNN's indices, PNG, JPEG), decode it back, and evaluate the study's
    model on the JPEG-decoded images."""
    with torch.no_grad():
        indices = torch.cat([model.outputs(test.x[i:i + 256])["indices"] for i in range(0, len(test), 256)])
    agile = [payload.encode_indices(i, bits, codec) for i in indices]
    roundtrip = all(torch.equal(payload.decode_indices(b, bits, tuple(i.shape), codec), i) for b, i in zip(agile, indices))
    png = [payload.encode_image(x, "png") for x in test.x]
    jpeg = [payload.encode_image(x, "jpeg", jpeg_quality) for x in test.x]
    png_exact = all(torch.equal(payload.decode_image(b), x) for b, x in zip(png, test.x))
    jpeg_x = torch.stack([payload.decode_image(b) for b in jpeg])
    jpeg_metrics = train.evaluate(study_model, data.Split(jpeg_x, test.y, test.flag, "test", test.size))
    size = lambda bs: np.array([len(b) for b in bs])  # noqa: E731
    return Payloads(size(agile), size(png), size(jpeg), roundtrip, png_exact, jpeg_x, jpeg_metrics)


def bytes_table(pay: Payloads, link: Link, cut: int, shape: tuple, values: int, bits: int, codec: str, quality: int) -> pd.DataFrame:
    """Mean bytes per image of everything a method could send."""
    rows = [("image, raw uint8", int(np.prod(shape))), ("image, PNG (lossless)", pay.png.mean()),
            (f"image, JPEG q{quality}", pay.jpeg.mean()),
            (f"split: {link.seg_names[cut - 1]} output, float32", link.seg_out[cut - 1]),
            ("AgileNN: offloaded features, one byte per index", values),
            (f"AgileNN: packed at {bits} bits", math.ceil(values * bits / 8)),
            (f"AgileNN: packed + {codec} (sent)", pay.agile.mean())]
    return pd.DataFrame(rows, columns=["what is sent", "bytes per image (mean)"]).set_index("what is sent")


def sent(pay: Payloads, link: Link, costs: dict) -> dict:
    """Per method except split: (device FLOPs, bytes sent, remote FLOPs) of one image."""
    full = link.full_flops
    return {"local": (full, 0, 0), "offload_png": (0, pay.png.mean(), full), "offload_jpeg": (0, pay.jpeg.mean(), full),
            "agilenn": (costs["device_flops"], pay.agile.mean(), costs["remote_flops"])}


def jobs(images: list[int], factors: list[float], cuts: dict) -> list[list]:
    """The serving run's jobs: local once per image, then every other method per bandwidth factor, interleaved by image."""
    out = [["local", i, 1.0, 0] for i in images]
    for m in factors:
        for i in images:
            out += [["offload_png", i, m, 0], ["offload_jpeg", i, m, 0], ["split", i, m, cuts[m]], ["agilenn", i, m, 0]]
    return out


def latency_frame(served: pd.DataFrame, link: Link, sent_by_method: dict) -> pd.DataFrame:
    """Per method and bandwidth factor: median, p5 and p95 ms, requests, the predicted ms, mean bytes, and the excess."""
    by = served.groupby(["method", "multiplier"])
    latency = by["latency_ms"].agg(p50="median", p5=lambda v: np.percentile(v, 5), p95=lambda v: np.percentile(v, 95),
                                   requests="size").reset_index()
    latency["predicted_ms"] = [link.predicted_ms(r.method, r.multiplier, sent_by_method) for r in latency.itertuples()]
    latency["bytes"] = by["bytes"].mean().values
    latency["measured - predicted"] = latency["p50"] - latency["predicted_ms"]
    return latency


def agreement(served: pd.DataFrame, study_model, model: agilenn.AgileNN, test: data.Split, jpeg_x: torch.Tensor
              ) -> tuple[pd.Series, float]:
    """Share of served answers equal to the batched answer of the same model on the same image, per method; and the
    same for AgileNN's local predictor."""
    with torch.no_grad():
        batched = {"study": study_model(test.x).argmax(1).numpy(), "jpeg": study_model(jpeg_x).argmax(1).numpy(),
                   "agilenn": model(test.x).argmax(1).numpy(), "local": model.local_logits(test.x).argmax(1).numpy()}
    source = {"local": "study", "offload_png": "study", "split": "study", "offload_jpeg": "jpeg", "agilenn": "agilenn"}
    served = served.assign(batched=[batched[source[m]][i] for m, i in zip(served["method"], served["image"])])
    agree = served.groupby("method").apply(lambda g: float((g["pred"] == g["batched"]).mean()), include_groups=False)
    ag = served[served["method"] == "agilenn"]
    return agree, float((ag["pred_local"].values == batched["local"][ag["image"].values]).mean())


def per_pixel(offloaded_channels: int, bits_per_value: float, png_ratio: float) -> pd.DataFrame:
    """Bytes per image pixel of AgileNN at strides 1-4 against the PNG and raw image, grayscale and RGB."""
    return pd.DataFrame([{"stride": s, "AgileNN bytes/pixel": offloaded_channels * bits_per_value / 8 / s ** 2,
                          "PNG grayscale bytes/pixel": png_ratio, "PNG RGB bytes/pixel": 3 * png_ratio,
                          "raw grayscale": 1.0, "raw RGB": 3.0} for s in (1, 2, 3, 4)]).set_index("stride")


def crossover_lines(pay: Payloads, stride: int, shape: tuple, packed: int) -> list[str]:
    """AgileNN's bytes against the PNG image in this run, and the official setting's ratio for comparison."""
    ratio = pay.agile.mean() / pay.png.mean()
    official_image, official_packed = 96 * 96 * 3, 19 * 32 * 32 * 3 / 8  # CIFAR resized to 96x96 RGB; 19 channels at 32x32, 3 bits
    raw = int(np.prod(shape))
    return [f"this run (stride {stride}): AgileNN sends {pay.agile.mean():.0f} bytes per image, the PNG image "
            f"{pay.png.mean():.0f}: AgileNN sends {ratio:.2f}x the bytes of full offload ({'more' if ratio > 1 else 'fewer'})",
            f"the official setting for comparison: the resized image is {official_image} bytes raw, the packed indices "
            f"{official_packed:.0f} bytes before coding ({official_image / official_packed:.1f}x fewer); here the image is "
            f"{raw} bytes raw and the packed indices {packed} bytes ({raw / packed:.2f}x)"]


def ablation_variants(ratios: list[float], centroids: list[int]) -> list[tuple[str, dict]]:
    """The default, no XAI (random split), remapping only, and the other split ratios and centroid counts."""
    return [("default", {}), ("no XAI: random split", {"importance_losses": False, "remap": False}),
            ("remapping only, no XAI losses", {"importance_losses": False}),
            *[(f"split_ratio {r}", {"split_ratio": r}) for r in ratios],
            *[(f"{c} centroids", {"centroids": c}) for c in centroids]]


def ablations(config: training.AgileConfig, variants: list[tuple[str, dict]], epochs: int, test: data.Split,
              codec: str, data_root: str | None = None) -> pd.DataFrame:
    """Train (or read back) every variant for ``epochs`` epochs; per variant its k, test ACC, local ACC, skewness,
    ordered share, mean bytes sent, device MFLOPs and training seconds."""
    rows = []
    for name, change in variants:
        t = training.train_or_load(dataclasses.replace(config, epochs=epochs, **change), data_root)
        e, cst = training.evaluate(t, test), training.costs(t.model, test.x.shape[1], config.size)
        with torch.no_grad():
            idx = t.model.outputs(test.x)["indices"]
        b = agilenn.bits_per_index(t.config.centroids)
        rows.append({"variant": name, "k": t.model.k, "test ACC": e["acc"], "local ACC": e["local_acc"], "skewness": e["skewness"],
                     "ordered": e["ordered"], "bytes": np.mean([len(payload.encode_indices(i, b, codec)) for i in idx]),
                     "device MFLOPs": cst["device_flops"] / 1e6, "seconds": t.seconds, "cached": t.cached})
    return pd.DataFrame(rows).set_index("variant")


def at(latency: pd.DataFrame, method: str) -> pd.Series:
    """A method's row of :func:`latency_frame` at the scenario's own bandwidth (factor 1.0)."""
    return latency[(latency["method"] == method) & (latency["multiplier"] == 1.0)].iloc[0]


def speedups(latency: pd.DataFrame) -> dict:
    """Each other method's median latency over AgileNN's, at the scenario's bandwidth."""
    return {m: float(at(latency, m)["p50"] / at(latency, "agilenn")["p50"]) for m in ("local", "split", "offload_png", "offload_jpeg")}


def targets(study_acc: float, ev: dict, flops_ratio: float, speed: dict) -> dict:
    """ACC within 2 points of the study's model, device FLOPs at most 5% of its, skewness at least 0.8, and median
    latency below local only and split computing."""
    return {"acc_within_2_points": bool(study_acc - ev["acc"] <= TARGETS["acc_points"]),
            "device_flops_at_most_5pct": bool(flops_ratio <= TARGETS["device_flops_ratio"]),
            "skewness_at_least_0_8": bool(ev["skewness"] >= TARGETS["skewness"]),
            "latency_below_local_and_split": bool(speed["local"] > 1 and speed["split"] > 1)}


def target_lines(latency: pd.DataFrame, link: Link, study_acc: float, ev: dict, costs: dict, pay: Payloads, met: dict) -> list[str]:
    """Each target met or not, the comparison with full offload explained, and the paper's headline ratio."""
    a, speed, flops_ratio = (lambda m: at(latency, m)), speedups(latency), costs["device_flops"] / link.full_flops
    word = lambda key: "met" if met[key] else "NOT met"  # noqa: E731
    png_b, ag_b = pay.png.mean(), pay.agile.mean()
    lines = [f"ACC: AgileNN {ev['acc']:.3f} against the study's {study_acc:.3f} ({(study_acc - ev['acc']) * 100:+.1f} points lost): "
             f"{word('acc_within_2_points')}",
             f"device FLOPs: {flops_ratio:.3%} of the study model's: {word('device_flops_at_most_5pct')}",
             f"skewness: {ev['skewness']:.3f}: {word('skewness_at_least_0_8')}",
             f"median latency at {link.mbps():.0f} Mbit/s: AgileNN {a('agilenn')['p50']:.1f} ms; local {a('local')['p50']:.1f} ms "
             f"({speed['local']:.1f}x), split {a('split')['p50']:.1f} ms ({speed['split']:.1f}x): {word('latency_below_local_and_split')}",
             f"against full offload (PNG, {a('offload_png')['p50']:.1f} ms): AgileNN is {speed['offload_png']:.1f}x "
             f"{'faster' if speed['offload_png'] > 1 else 'slower'}. It sends {ag_b:.0f} bytes against the image's {png_b:.0f} "
             f"({'more' if ag_b > png_b else 'fewer'}: section 7), so the difference is not in the bytes: the remote runs "
             f"{costs['remote_flops'] / 1e6:.1f} MFLOPs for AgileNN ({costs['remote_flops'] / link.full_flops:.1%} of the study's "
             f"model that full offload runs). At the scenario's bandwidth the transfer of either costs "
             f"{1e3 * system.transfer_seconds(link.scn, link.dev, link.rem, max(png_b, ag_b)):.2f} ms or less.",
             f"AgileNN's measured median exceeds the system model's {a('agilenn')['predicted_ms']:.1f} ms by "
             f"{a('agilenn')['p50'] - a('agilenn')['predicted_ms']:.1f} ms: a round trip is two messages of the serving system "
             "(a header and a payload each, gloo sends that complete when the peer receives) between two processes on a shared "
             f"CPU, which the model does not charge; full offload pays them too, but beside {a('offload_png')['predicted_ms']:.0f} ms "
             f"of remote compute. By the model alone AgileNN would be "
             f"{a('offload_png')['predicted_ms'] / a('agilenn')['predicted_ms']:.0f}x faster than full offload.",
             f"'over 6x lower latency than existing schemes': {min(speed.values()):.1f}x against the fastest other scheme at "
             f"this bandwidth ({'met' if min(speed.values()) >= 6 else 'NOT met'} as measured)"]
    return lines


def check(pay: Payloads, agree: pd.Series, agree_local: float, link: Link, cut: int, ev: dict) -> None:
    """The payloads decode to their indices, PNG is lossless, the served answers equal the batched ones, the split
    is at the best interior cut, skewness and ordered share are shares."""
    assert pay.roundtrip, "a payload did not decode to its indices"
    assert pay.png_exact, "PNG did not give back the pixels"
    assert (agree >= 0.97).all() and agree_local >= 0.97, f"served answers differ from the batched ones: {agree.to_dict()}"
    interior = [link.cut_seconds(c) for c in range(1, len(link.seg_flops))]
    assert min(interior) == interior[cut - 1], "the split is not at the best interior cut"
    assert 0 <= ev["skewness"] <= 1 and 0 <= ev["ordered"] <= 1


def _method(latency: pd.DataFrame, name: str, acc: float, auc: float, device_flops: float, nbytes: float, **extra) -> dict:
    r = at(latency, name)
    return {"test_acc": round(acc, 6), "test_auc": round(auc, 6), "device_mflops": round(device_flops / 1e6, 6),
            "bytes_per_image": round(float(nbytes), 1), "latency_ms_p50": round(float(r["p50"]), 3),
            "latency_ms_p95": round(float(r["p95"]), 3), "predicted_ms": round(float(r["predicted_ms"]), 3), **extra}


def metrics(latency: pd.DataFrame, link: Link, cut: int, study_metrics: dict, ev: dict, costs: dict, pay: Payloads,
            ablation_frame: pd.DataFrame, met: dict, *, arch: str, k: int, centroids: int, quality: int, emulate: bool,
            images: int) -> dict:
    """``metrics.json`` of ``10_agilenn``."""
    s, j = study_metrics, pay.jpeg_metrics
    return {
        "local_only": _method(latency, "local", s["acc"], s["auc"], link.full_flops, 0, arch=arch),
        "full_offload": _method(latency, "offload_png", s["acc"], s["auc"], 0, pay.png.mean(), codec="png"),
        "full_offload_jpeg": _method(latency, "offload_jpeg", j["acc"], j["auc"], 0, pay.jpeg.mean(), quality=quality),
        "split": _method(latency, "split", s["acc"], s["auc"], sum(link.seg_flops[:cut]), link.seg_out[cut - 1],
                         cut_after=link.seg_names[cut - 1]),
        "agilenn": _method(latency, "agilenn", ev["acc"], ev["auc"], costs["device_flops"], pay.agile.mean(),
                           skewness=round(ev["skewness"], 6), local_only_acc=round(ev["local_acc"], 6),
                           local_only_auc=round(ev["local_auc"], 6), ordered=round(ev["ordered"], 6),
                           device_flops_ratio=round(costs["device_flops"] / link.full_flops, 6),
                           remote_mflops=round(costs["remote_flops"] / 1e6, 6), k=k, centroids=centroids,
                           bits_per_value=round(float(8 * pay.agile.mean() / costs["offloaded_values"]), 4)),
        "latency_by_bandwidth": {m: {f"{r.multiplier:g}": {"p50": round(r.p50, 3), "p95": round(r.p95, 3)}
                                     for r in latency[latency["method"] == m].itertuples()} for m in METHODS},
        "speedup_vs": {m: round(v, 3) for m, v in speedups(latency).items()},
        "ablations": {name: {c.replace(" ", "_").lower(): round(float(r[c]), 6)
                             for c in ("test ACC", "local ACC", "skewness", "ordered", "bytes")}
                      for name, r in ablation_frame.iterrows()},
        "targets": met,
        "link": {"device": link.scn.devices[link.dev].name, "remote": link.scn.devices[link.rem].name,
                 "mbps": round(link.mbps(), 3), "emulated": emulate, "images": images},
    }
