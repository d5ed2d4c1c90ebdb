"""The analysis of ``10_agilenn``: payloads, the split's cut, the serving runs per regime, latency tables, ablations.

- :func:`payloads` (a :class:`Payloads`): what each method sends per test image, round trips checked;
  :func:`cut_bytes` and :func:`choose_cut`: the split's bytes per cut on validation and the cut a regime gets;
- :func:`modelled`: the modelled milliseconds of every image of a method (:mod:`xaiprune.agilenn.regimes`);
- :func:`endpoint_table`: ACC, balanced accuracy and AUC of every network per seed on test;
- :func:`jobs`, :func:`serve`, :func:`run_regime`: the serving run of one regime (every method on the same images in a
  seeded random order, the machine's load average before and after); :func:`medians` and :func:`latency_table`: per
  method, the modelled and the measured median with its interval and parts; :func:`method_endpoints`: each method's
  accuracy; :func:`batched`, :func:`agreement` and :func:`check`: served answers against the batched ones;
- :func:`per_pixel` and :func:`crossover_lines`: bytes per pixel of AgileNN against the image;
- :func:`ablation_variants`, :func:`ablations`: the variants trained at the same budget.

The claim's statistics and ``metrics.json`` are in :mod:`xaiprune.agilenn.claim`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xaiprune import data, stats, train
from xaiprune.agilenn import model as agilenn, offload, regimes, small, training
from xaiprune.serving import payload

PARTS = ("device", "up", "remote", "down")  # the measured parts of a request (ms)


@dataclass
class Payloads:
    """Bytes per test image of AgileNN's payload and of the PNG image, and whether both decode exactly."""

    agile: np.ndarray
    png: np.ndarray
    roundtrip: bool
    png_exact: bool

    def sent(self, method: str, split: np.ndarray | None = None) -> np.ndarray:
        """Bytes per test image that ``method`` sends (``split``: the split's bytes at its cut)."""
        if method.startswith("local"):
            return np.zeros_like(self.png, dtype=float)
        return {"agilenn": self.agile, "split_small": split}.get(method, self.png).astype(float)


def payloads(model: agilenn.AgileNN, test: data.Split, bits: int, codec: str) -> Payloads:
    """Encode every test image's AgileNN payload and PNG image, and decode both back."""
    with torch.no_grad():
        indices = torch.cat([model.outputs(test.x[i:i + 256])["indices"] for i in range(0, len(test), 256)])
    agile = [payload.encode_indices(i, bits, codec) for i in indices]
    roundtrip = all(torch.equal(payload.decode_indices(b, bits, tuple(i.shape), codec), i) for b, i in zip(agile, indices))
    png = [payload.encode_image(x, "png") for x in test.x]
    png_exact = all(torch.equal(payload.decode_image(b), x) for b, x in zip(png, test.x))
    return Payloads(np.array([len(b) for b in agile]), np.array([len(b) for b in png]), roundtrip, png_exact)


def cut_bytes(net, split: data.Split, codec: str) -> dict[int, np.ndarray]:
    """Bytes per image of ``split`` for every interior cut of the small network (1..S-1 segments on the device)."""
    return {c: small.activation_bytes(net, split, c, codec) for c in range(1, len(net.segments))}


def modelled(regime: regimes.Regime, nets: regimes.Networks, method: str, sent: np.ndarray, cut: int = 0) -> np.ndarray:
    """Modelled milliseconds of ``method`` for each image, from the bytes that image sends."""
    return np.array([regimes.modelled_ms(regime, regimes.method_cost(method, nets, b, cut)) for b in sent])


def choose_cut(regime: regimes.Regime, nets: regimes.Networks, val_bytes: dict[int, np.ndarray]) -> int:
    """Neurosurgeon's choice, made on validation: the cut of least median modelled latency in ``regime``."""
    return min(val_bytes, key=lambda c: np.median(modelled(regime, nets, "split_small", val_bytes[c], c)))


def cut_table(regime: regimes.Regime, nets: regimes.Networks, val_bytes: dict[int, np.ndarray], names: list[str]) -> pd.Series:
    """Median modelled ms of the split at every cut, on validation."""
    return pd.Series({f"after {names[c - 1]}": float(np.median(modelled(regime, nets, "split_small", b, c)))
                      for c, b in val_bytes.items()}, name=regime.name)


def endpoint_table(rows: dict[str, list[dict]]) -> pd.DataFrame:
    """Per network (one list of per-seed endpoints each): test ACC, balanced accuracy and AUC, mean and range."""
    out = []
    for name, evs in rows.items():
        r = {"network": name, "seeds": len(evs)}
        for m in stats.ENDPOINTS:
            v = [e[m] for e in evs]
            r |= {m: float(np.mean(v)), f"{m} min": float(np.min(v)), f"{m} max": float(np.max(v))}
        out.append(r)
    return pd.DataFrame(out).set_index("network")


def jobs(images: list[int], methods: list[str], seed: int) -> list[list]:
    """Every method on every image, in a seeded random order (no method's requests share one stretch of load)."""
    out = [[m, int(i)] for i in images for m in methods]
    return [out[j] for j in np.random.default_rng(seed).permutation(len(out))]


def serve(cfg: offload.OffloadConfig, folder: Path, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Serve ``cfg``'s jobs (:func:`xaiprune.agilenn.offload.run`); the machine's load average (1, 5, 15 minutes,
    :func:`os.getloadavg`) just before and just after, and its CPU count, go with the measurement."""
    before = os.getloadavg()
    served = offload.run(cfg, folder, progress)
    after = os.getloadavg()
    return served, {"start": [round(v, 2) for v in before], "end": [round(v, 2) for v in after], "cpus": os.cpu_count()}


def medians(served: pd.DataFrame, methods: list[str], n_boot: int = 2000, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Per method, the median latency of each of ``n_boot`` resamples of the served images (the same resample for
    every method: paired); returns (resampled medians (B, M), observed medians)."""
    lat = served.pivot_table(index="image", columns="method", values="latency_ms", aggfunc="median")[methods].dropna()
    if len(lat) < 2:
        raise ValueError(f"{len(lat)} image(s) served by every method {methods}: expected at least 2")
    x = lat.to_numpy()
    boot = np.median(x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))], axis=1)
    return boot, dict(zip(methods, np.median(x, axis=0).tolist()))


def latency_table(regime: regimes.Regime, nets: regimes.Networks, served: pd.DataFrame, cut: int, boot: np.ndarray,
                  methods: list[str], test_sent: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per method in ``regime``: whether its weights fit on the device, the modelled median ms and its parts (device,
    link, remote), device MFLOPs (coder included) and mean bytes sent, from the bytes each served image sent (for a
    method not served, every test image's: ``test_sent``); for the served ``methods``, the measured median with its
    95% interval over the served images (``boot``: :func:`medians`) and the measured parts' medians."""
    rows = []
    for m in regimes.METHODS:
        r = {"method": m, "fits": regime.fits(regimes.device_weights(m, nets, cut))}
        got = served[served["method"] == m]
        sent = got["bytes"].to_numpy(float) if m in methods else test_sent[m]
        parts = pd.DataFrame([regimes.modelled_parts(regime, regimes.method_cost(m, nets, b, cut)) for b in sent])
        r |= {f"modelled {p} ms": float(parts[p].median()) for p in parts} | {
            "modelled ms": float(np.median(parts.sum(axis=1))), "bytes": float(sent.mean()),
            "device MFLOPs": regimes.device_ops(regime, regimes.method_cost(m, nets, float(np.median(sent)), cut)) / 1e6}
        if m in methods:
            j = methods.index(m)
            r |= {"measured ms": float(got["latency_ms"].median()), "measured lo": float(np.quantile(boot[:, j], 0.025)),
                  "measured hi": float(np.quantile(boot[:, j], 0.975)), "requests": len(got)}
            r |= {f"measured {p} ms": float(got[f"{p}_ms"].median()) for p in PARTS}
        rows.append(r)
    return pd.DataFrame(rows).set_index("method")


@dataclass
class RegimeRun:
    """One regime's serving run and its summary (:func:`run_regime`)."""

    regime: regimes.Regime
    cut: int
    methods: list
    served: pd.DataFrame
    load: dict
    boot: np.ndarray
    observed: dict
    table: pd.DataFrame


def run_regime(regime: regimes.Regime, nets: regimes.Networks, cut: int, base: offload.OffloadConfig, images: list[int],
               sent: tuple[dict, dict], limit_ms: float, seed: int, folder: Path, progress: bool = True) -> RegimeRun:
    """Serve, on ``images``, every method whose modelled median on the validation images is at most ``limit_ms``;
    the medians' paired bootstrap and the :func:`latency_table`. ``sent``: bytes per image of every method on
    validation and on test."""
    val_sent, test_sent = sent
    methods = [m for m in regimes.METHODS if np.median(modelled(regime, nets, m, val_sent[m], cut)) <= limit_ms]
    cfg = dataclasses.replace(base, regime=regime.as_dict(), cut=cut, jobs=jobs(images, methods, seed))
    served, load = serve(cfg, folder, progress)
    boot, observed = medians(served, methods, seed=seed)
    return RegimeRun(regime, cut, methods, served, load, boot, observed,
                     latency_table(regime, nets, served, cut, boot, methods, test_sent))


NETWORK_OF = {"local_vgg": "vgg", "offload_vgg": "vgg", "local_small": "small", "offload_small": "small",
              "split_small": "split", "local_tiny": "tiny", "agilenn": "agilenn"}  # whose answers (PNG is lossless)


def network_endpoints(vgg: dict, smalls: list, tinies: list, agiles: list, cuts: dict[str, int], test: data.Split
                      ) -> dict[str, dict[str, list[dict]]]:
    """Per regime and network of :data:`NETWORK_OF`, its test endpoints per seed (the split with its activation
    quantised at the regime's cut); each network and cut evaluated once."""
    ends = lambda models: [training.endpoints(m, test) for m in models]  # noqa: E731
    base = {"vgg": [vgg], "small": ends(s.model for s in smalls), "tiny": ends(s.model for s in tinies),
            "agilenn": ends(r.model for r in agiles)}
    split = {c: ends(small.Split(s.model, c) for s in smalls) for c in set(cuts.values())}
    return {n: base | {"split": split[c]} for n, c in cuts.items()}


def method_endpoints(by_network: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method, the endpoints of its network (mean over seeds, and the balanced accuracy's range over them)."""
    out = {}
    for m, net in NETWORK_OF.items():
        evs = by_network[net]
        out[m] = {e: float(np.mean([v[e] for v in evs])) for e in stats.ENDPOINTS}
        out[m] |= {"bal_acc_min": min(v["bal_acc"] for v in evs), "bal_acc_max": max(v["bal_acc"] for v in evs)}
    return out


def batched(vgg: torch.nn.Module, net: torch.nn.Module, tiny: torch.nn.Module, agile: torch.nn.Module,
            cuts: dict[str, int], x: torch.Tensor, flag: str) -> dict[str, dict[str, np.ndarray]]:
    """Per regime (its split's cut in ``cuts``) and method, the batched predictions on ``x`` of the method's network;
    each network (each cut of the split) evaluated once."""
    pred = lambda model: train.predict(model, x, flag).argmax(1)  # noqa: E731
    base = {"vgg": pred(vgg), "small": pred(net), "tiny": pred(tiny), "agilenn": pred(agile)}
    split = {c: pred(small.Split(net, c)) for c in set(cuts.values())}
    return {n: {m: split[c] if name == "split" else base[name] for m, name in NETWORK_OF.items()} for n, c in cuts.items()}


def check(pay: Payloads, agreements: list[tuple[pd.Series, float]], runs: list[RegimeRun], evs: list[dict]) -> None:
    """The payloads decode exactly, the served answers equal the batched ones, every measured part is a duration
    (to within the stamps' precision) and the parts add up to no more than the latency, skewness and ordered share
    are shares."""
    assert pay.roundtrip, "a payload did not decode to its indices"
    assert pay.png_exact, "PNG did not give back the pixels"
    for agree, local in agreements:
        assert (agree >= 0.97).all() and local >= 0.97, f"served answers differ from the batched ones: {agree.to_dict()}"
    for r in runs:
        parts = r.served[[f"{p}_ms" for p in PARTS]]
        assert (parts > -0.05).all().all(), f"{r.regime.name}: a measured part below 0 (clocks or stamps wrong)"
        assert (parts.sum(axis=1) <= r.served["latency_ms"] + 0.05).all(), f"{r.regime.name}: the parts exceed the latency"
    assert all(0 <= e["skewness"] <= 1 and 0 <= e["ordered"] <= 1 for e in evs)


def agreement(served: pd.DataFrame, batched: dict[str, np.ndarray], local: np.ndarray) -> tuple[pd.Series, float]:
    """Share of served answers equal to the batched answer of the same network on the same image, per method
    (``batched[method]``: predictions on every test image); and the same for AgileNN's local predictor."""
    same = [batched[m][i] == p for m, i, p in zip(served["method"], served["image"], served["pred"])]
    agree = served.assign(same=same).groupby("method")["same"].mean()
    ag = served[served["method"] == "agilenn"]
    return agree, float((ag["pred_local"].to_numpy() == local[ag["image"].to_numpy()]).mean())


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
            f"{pay.png.mean():.0f}: {ratio:.2f}x the bytes of full offload",
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
