"""The analysis of ``10_agilenn``: the link's cost model, payloads, latency tables, ablations and metrics.

- :class:`Link`: the study's model on the device-remote link of a scenario: per-segment FLOPs and output bytes,
  the system model's latency of every cut (:func:`xaiprune.agilenn.offload.predicted_seconds`), Neurosurgeon's best
  interior cut, and the prediction of every method, whole or in its parts (device, link, remote);
- :func:`endpoint_table`: ACC, balanced accuracy and AUC of every model on test;
- :func:`payloads` (a :class:`Payloads`) and :func:`bytes_table`: what each method sends, round trips checked;
- :func:`jobs`, :func:`serve`, :func:`latency_frame`, :func:`agreement`: the serving run (with the machine's load
  average before and after) and its summary;
- :func:`per_pixel` and :func:`crossover_lines`: bytes per pixel of AgileNN against the image;
- :func:`ablation_variants`, :func:`ablations`: the variants trained at the same budget;
- :func:`speedups`, :func:`check` and :func:`metrics` (``metrics.json``); the claim's statistics are in
  :mod:`xaiprune.agilenn.claim`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from medmnist import INFO

from xaiprune import data, stats
from xaiprune.agilenn import model as agilenn, offload, training
from xaiprune.planning import system
from xaiprune.pruning import prune
from xaiprune.serving import payload

METHODS = ["local", "offload_png", "offload_jpeg", "split", "agilenn"]
OTHERS = [m for m in METHODS if m != "agilenn"]  # the schemes AgileNN's latency is compared with


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

    def parts_ms(self, method: str, multiplier: float, sent: dict) -> dict[str, float]:
        """:meth:`predicted_ms` in its parts: device compute, the link (the send and the answer's return), remote compute."""
        if method == "split":
            c = self.best_cut(multiplier)
            d, b, r = sum(self.seg_flops[:c]), self.seg_out[c - 1], sum(self.seg_flops[c:])
        else:
            d, b, r = sent[method]
        wire = 0.0
        if b or r:
            wire = (system.transfer_seconds(self.scn, self.dev, self.rem, b, multiplier)
                    + system.transfer_seconds(self.scn, self.rem, self.dev, 4 * self.n_classes, multiplier))
        return {"device": 1e3 * d / self.scn.devices[self.dev].speed, "link": 1e3 * wire,
                "remote": 1e3 * r / self.scn.devices[self.rem].speed}

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
    jpeg_metrics = training.endpoints(study_model, data.Split(jpeg_x, test.y, test.flag, "test", test.size))
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


def endpoint_table(arch: str, full: dict, evs: list[dict], seeds: list[int], test: data.Split) -> pd.DataFrame:
    """Test ACC, balanced accuracy and AUC of the study's model, AgileNN per training seed and their mean, its local
    predictor alone (per seed) and the answer "always the most frequent class" (:func:`xaiprune.stats.endpoints`)."""
    y, task = test.y.numpy().reshape(len(test), -1), INFO[test.flag]["task"]
    const = (np.tile(y.mean(0) > 0.5, (len(y), 1)) if task == stats.MULTILABEL
             else np.eye(int(y.max()) + 1 if task != stats.BINARY else 2)[np.full(len(y), np.bincount(y[:, 0]).argmax())])
    cols = list(stats.ENDPOINTS)
    rows = [(f"study model {arch} (the full model)", full)] + [(f"AgileNN, seed {s}", e) for s, e in zip(seeds, evs)]
    rows += [("AgileNN, mean over seeds", {m: np.mean([e[m] for e in evs]) for m in cols})]
    rows += [(f"AgileNN local predictor alone (link down), seed {s}", {m: e[f"local_{m}"] for m in cols})
             for s, e in zip(seeds, evs)]
    rows += [("always the most frequent class", stats.endpoints(y, const.astype(float), task))]
    return pd.DataFrame([{"model": name, **{m: float(e[m]) for m in cols}} for name, e in rows]).set_index("model")


def jobs(images: list[int], factors: list[float], cuts: dict) -> list[list]:
    """The serving run's jobs: local once per image, then every other method per bandwidth factor, interleaved by image."""
    out = [["local", i, 1.0, 0] for i in images]
    for m in factors:
        for i in images:
            out += [["offload_png", i, m, 0], ["offload_jpeg", i, m, 0], ["split", i, m, cuts[m]], ["agilenn", i, m, 0]]
    return out


def serve(cfg: offload.OffloadConfig, folder: Path, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Serve ``cfg``'s jobs (:func:`xaiprune.agilenn.offload.run`); the machine's load average (1, 5, 15 minutes,
    :func:`os.getloadavg`) just before and just after, and its CPU count, go with the measurement."""
    before = os.getloadavg()
    served = offload.run(cfg, folder, progress)
    after = os.getloadavg()
    return served, {"start": [round(v, 2) for v in before], "end": [round(v, 2) for v in after], "cpus": os.cpu_count()}


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
    """Train (or read back) every variant for ``epochs`` epochs; per variant its k, test AUC and ACC, local AUC and ACC,
    skewness, ordered share, mean bytes sent, device MFLOPs and training seconds."""
    rows = []
    for name, change in variants:
        t = training.train_or_load(dataclasses.replace(config, epochs=epochs, **change), data_root)
        e, cst = training.evaluate(t, test), training.costs(t.model, test.x.shape[1], config.size)
        with torch.no_grad():
            idx = t.model.outputs(test.x)["indices"]
        b = agilenn.bits_per_index(t.config.centroids)
        rows.append({"variant": name, "k": t.model.k, "test AUC": e["auc"], "test ACC": e["acc"], "local AUC": e["local_auc"],
                     "local ACC": e["local_acc"], "skewness": e["skewness"],
                     "ordered": e["ordered"], "bytes": np.mean([len(payload.encode_indices(i, b, codec)) for i in idx]),
                     "device MFLOPs": cst["device_flops"] / 1e6, "seconds": t.seconds, "cached": t.cached})
    return pd.DataFrame(rows).set_index("variant")


def at(latency: pd.DataFrame, method: str) -> pd.Series:
    """A method's row of :func:`latency_frame` at the scenario's own bandwidth (factor 1.0)."""
    return latency[(latency["method"] == method) & (latency["multiplier"] == 1.0)].iloc[0]


def speedups(latency: pd.DataFrame) -> dict:
    """Each other method's median latency over AgileNN's, at the scenario's bandwidth."""
    return {m: float(at(latency, m)["p50"] / at(latency, "agilenn")["p50"]) for m in OTHERS}


def check(pay: Payloads, agree: pd.Series, agree_local: float, link: Link, cut: int, ev: dict) -> None:
    """The payloads decode to their indices, PNG is lossless, the served answers equal the batched ones, the split
    is at the best interior cut, skewness and ordered share are shares."""
    assert pay.roundtrip, "a payload did not decode to its indices"
    assert pay.png_exact, "PNG did not give back the pixels"
    assert (agree >= 0.97).all() and agree_local >= 0.97, f"served answers differ from the batched ones: {agree.to_dict()}"
    interior = [link.cut_seconds(c) for c in range(1, len(link.seg_flops))]
    assert min(interior) == interior[cut - 1], "the split is not at the best interior cut"
    assert 0 <= ev["skewness"] <= 1 and 0 <= ev["ordered"] <= 1


def _method(latency: pd.DataFrame, name: str, ep: dict, device_flops: float, nbytes: float, **extra) -> dict:
    r = at(latency, name)
    return {"test_acc": round(ep["acc"], 6), "test_bal_acc": round(ep["bal_acc"], 6), "test_auc": round(ep["auc"], 6),
            "device_mflops": round(device_flops / 1e6, 6), "bytes_per_image": round(float(nbytes), 1),
            "latency_ms_p50": round(float(r["p50"]), 3), "latency_ms_p95": round(float(r["p95"]), 3),
            "predicted_ms": round(float(r["predicted_ms"]), 3), **extra}


def _rounded(v):
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return round(float(v), 6) if isinstance(v, (float, np.floating)) else v


def metrics(latency: pd.DataFrame, link: Link, cut: int, acc: dict, evs: list[dict], costs: dict, pay: Payloads,
            ablation_frame: pd.DataFrame, c: dict, measured: dict, *, arch: str, k: int, centroids: int, quality: int,
            emulate: bool, seeds: list[int]) -> dict:
    """``metrics.json`` of ``10_agilenn`` (the notebook adds the claim row and the choices). ``agilenn``'s endpoints
    are the means over the training seeds (``seeds``: each seed's), the rest of its row the served seed's (the first)."""
    s, j, ev = acc["full"], pay.jpeg_metrics, evs[0]
    return {
        "local_only": _method(latency, "local", s, link.full_flops, 0, arch=arch),
        "full_offload": _method(latency, "offload_png", s, 0, pay.png.mean(), codec="png"),
        "full_offload_jpeg": _method(latency, "offload_jpeg", j, 0, pay.jpeg.mean(), quality=quality),
        "split": _method(latency, "split", s, sum(link.seg_flops[:cut]), link.seg_out[cut - 1],
                         cut_after=link.seg_names[cut - 1]),
        "agilenn": _method(latency, "agilenn", acc["agilenn"], costs["device_flops"], pay.agile.mean(),
                           skewness=round(ev["skewness"], 6), local_only_acc=round(ev["local_acc"], 6),
                           local_only_auc=round(ev["local_auc"], 6), ordered=round(ev["ordered"], 6),
                           device_flops_ratio=round(costs["device_flops"] / link.full_flops, 6),
                           remote_mflops=round(costs["remote_flops"] / 1e6, 6), k=k, centroids=centroids,
                           bits_per_value=round(float(8 * pay.agile.mean() / costs["offloaded_values"]), 4),
                           seeds=seeds, per_seed=_rounded([{m: e[m] for m in ("acc", "bal_acc", "auc", "skewness")} for e in evs])),
        "auc_vs_full": _rounded({k_: v for k_, v in acc["auc"].items()}),
        "latency_by_bandwidth": {m: {f"{r.multiplier:g}": {"p50": round(r.p50, 3), "p95": round(r.p95, 3)}
                                     for r in latency[latency["method"] == m].itertuples()} for m in METHODS},
        "speedup_vs": {m: round(v, 3) for m, v in speedups(latency).items()},
        "latency_ratios": _rounded({"modelled": c["extra"]["modelled_ratios"], "measured": measured["ratios"],
                                    "measured_min": measured["min"], "load_average": c["extra"]["load_average"]}),
        "ablations": {name: {col.replace(" ", "_").lower(): round(float(r[col]), 6)
                             for col in ("test AUC", "test ACC", "local AUC", "local ACC", "skewness", "ordered", "bytes")}
                      for name, r in ablation_frame.iterrows()},
        "targets": c["parts"],
        "link": {"device": link.scn.devices[link.dev].name, "remote": link.scn.devices[link.rem].name,
                 "mbps": round(link.mbps(), 3), "emulated": emulate, "images": measured["images"]},
    }
