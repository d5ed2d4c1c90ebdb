"""Where ``10_agilenn`` judges every method: two devices and the link between them, and what one image costs there.

A **regime** is a device, a remote and the link between them:

- ``paper``: the regime AgileNN's claim is made for, an MCU-class device on a low-rate wireless link with a server
  behind it (``params/regimes/paper.yaml``; every figure's source is in the file's comments);
- ``ward``: the ward scenario's source device and one of its other devices (by default the fastest), with the
  scenario's bandwidths (``params/scenarios/<scenario>.yaml``).

:meth:`Regime.scenario` gives the two as a :class:`xaiprune.planning.system.Scenario` (device 0 is the source), so
that the serving processes' link emulation (:mod:`xaiprune.serving.emulation`) and the modelled latency here go
through the project's one transfer model, :func:`xaiprune.planning.system.transfer_seconds`.

A :class:`Cost` is what one image of one method costs: FLOPs and the bytes through the lossless coder on each side
(each byte charged ``coder_ops`` operations at that side's rate), the bytes sent and returned. :func:`method_cost`
builds it from the networks' :class:`Networks` summary; :func:`modelled_parts` turns it into milliseconds (device,
link, remote). The serving processes pad their compute with the same :func:`device_ops` and :func:`remote_ops`,
so that the modelled and the emulated latency charge the same work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from xaiprune import paths
from xaiprune.planning import system

REGIMES = ("paper", "ward")
METHODS = ("agilenn", "local_tiny", "local_small", "offload_small", "split_small", "local_vgg", "offload_vgg")
PEERS = ("local_tiny", "local_small", "offload_small", "split_small")  # what AgileNN must beat: its own network
# locally, offloaded whole and split, and the same network narrowed to the device (the study's VGG is beside)


class RegimeError(ValueError):
    """A regime that cannot be built; the message names the file or parameter and what was expected."""


@dataclass(frozen=True)
class Regime:
    """A device and a remote with their speeds, the link's rates and the coder's cost (SI units)."""

    name: str
    device: str
    device_speed: float    # FLOP/s
    device_weights: float  # bytes of weights the device can store
    weight_bytes: int      # bytes per stored weight
    remote: str
    remote_speed: float    # FLOP/s
    up: float              # bytes/s, device -> remote
    down: float            # bytes/s, remote -> device
    coder_ops: float       # operations per byte through the lossless coder
    source: str            # the file the figures come from
    latency: float = 0.0   # s per message on the link, each way

    def scenario(self) -> system.Scenario:
        """The two devices as a scenario (device 0 is the source), for the transfer model and the emulation."""
        devices = [system.Device(self.device, self.device_speed, self.device_weights, math.inf, 0.0, 0.0),
                   system.Device(self.remote, self.remote_speed, math.inf, math.inf, 0.0, 0.0)]
        lat = np.array([[0.0, self.latency], [self.latency, 0.0]])
        return system.Scenario(self.name, devices, np.array([[math.inf, self.up], [self.down, math.inf]]), 0, math.inf, lat)

    def fits(self, n_weights: int) -> bool:
        """The device can store ``n_weights`` weights."""
        return n_weights * self.weight_bytes <= self.device_weights

    def as_dict(self) -> dict:
        return asdict(self)

    def row(self) -> dict:
        """The regime's figures in the units a reader expects (a table row)."""
        return {"device": self.device, "device GFLOP/s": self.device_speed / 1e9, "device weights (MB)":
                self.device_weights / 1e6, "bytes per weight": self.weight_bytes, "remote": self.remote,
                "remote GFLOP/s": self.remote_speed / 1e9, "up kbit/s": self.up * 8e-3, "down kbit/s": self.down * 8e-3,
                "coder ops / byte": self.coder_ops, "link ms / message": 1e3 * self.latency, "source": self.source}


def _value(doc: dict, keys: tuple[str, ...]):
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def _number(doc: dict, keys: tuple[str, ...], where: str, zero: bool = False) -> float:
    v = _value(doc, keys)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if zero else v > 0):
        raise RegimeError(f"{where}: {'.'.join(keys)} = {v!r}; expected a {'non-negative' if zero else 'positive'} number")
    return float(v)


def _name(doc: dict, keys: tuple[str, ...], where: str) -> str:
    v = _value(doc, keys)
    if not isinstance(v, str) or not v:
        raise RegimeError(f"{where}: {'.'.join(keys)} = {v!r}; expected a name")
    return v


def from_file(path: str | Path) -> Regime:
    """A regime from a YAML file like ``params/regimes/paper.yaml`` (its units in the key names)."""
    path = Path(path)
    if not path.is_file():
        known = sorted(p.stem for p in (paths.PARAMS / "regimes").glob("*.yaml"))
        raise RegimeError(f"regime file {path}: not found; known regimes: {known} and 'ward'")
    doc, where = yaml.safe_load(path.read_text()) or {}, str(path)
    n = lambda *keys: _number(doc, keys, where)  # noqa: E731
    return Regime(str(doc.get("name", path.stem)), _name(doc, ("device", "name"), where), n("device", "mflops") * 1e6,
                  n("device", "weight_kb") * 1024, int(n("device", "weight_bytes")), _name(doc, ("remote", "name"), where),
                  n("remote", "gflops") * 1e9, n("link_kbps", "up") * 1e3 / 8, n("link_kbps", "down") * 1e3 / 8,
                  n("coder_ops_per_byte"), paths.relative(path),
                  _number(doc, ("link_ms_per_message",), where, zero=True) / 1e3)


def ward(scenario: str, remote: str = "", coder_ops: float | None = None) -> Regime:
    """The ward's regime: the scenario's source, ``remote`` (a device name; "" picks the fastest other device),
    their bandwidths and link latency, float32 weights in the source's memory; the coder's cost from the paper's
    regime file (the same coder runs on both)."""
    scn = system.load_scenario(scenario)
    names, src = [d.name for d in scn.devices], scn.source
    if remote and (remote not in names or names.index(remote) == src):
        raise RegimeError(f"remote={remote!r}: expected a device of scenario {scenario!r} other than its source "
                          f"{names[src]!r}, or '' for the fastest (devices: {names})")
    rem = names.index(remote) if remote else max((j for j in range(scn.n) if j != src), key=lambda j: scn.devices[j].speed)
    d, r = scn.devices[src], scn.devices[rem]
    ops = from_file(paths.PARAMS / "regimes" / "paper.yaml").coder_ops if coder_ops is None else coder_ops
    lat = 0.0 if scn.link_latency is None else float(scn.link_latency[src, rem])
    return Regime("ward", d.name, d.speed, d.memory, 4, r.name, r.speed, float(scn.bandwidth[src, rem]),
                  float(scn.bandwidth[rem, src]), ops, f"params/scenarios/{scenario}.yaml (coder: params/regimes/paper.yaml)",
                  lat)


def load(name: str, scenario: str = "ward-4", remote: str = "") -> Regime:
    """``ward`` (from the scenario) or ``params/regimes/<name>.yaml``."""
    return ward(scenario, remote) if name == "ward" else from_file(paths.PARAMS / "regimes" / f"{name}.yaml")


@dataclass(frozen=True)
class Networks:
    """What the cost model needs of the three networks (FLOPs are 2 x MACs of :func:`xaiprune.pruning.prune.profile`)."""

    image_bytes: int        # the raw image (uint8), what the image coder reads
    returned: int           # the answer's bytes (float32 logits)
    vgg_flops: float
    vgg_weights: int
    small_flops: tuple      # per segment of the equal-capacity network
    small_values: tuple     # values per segment output (uint8 once quantised)
    small_weights: tuple    # weights per segment
    tiny_flops: float       # the narrowed network (local_tiny), whole
    tiny_weights: int
    agile_device_flops: float  # extractor, local predictor and quantiser
    agile_remote_flops: float
    agile_packed: int       # bytes of the packed indices, what AgileNN's coder reads
    agile_device_weights: int

    @property
    def small_total(self) -> float:
        return float(sum(self.small_flops))


@dataclass(frozen=True)
class Cost:
    """One image of one method: FLOPs and coder bytes per side, bytes sent to the remote and returned."""

    device_flops: float
    device_coded: float = 0.0
    sent: float = 0.0
    remote_flops: float = 0.0
    remote_coded: float = 0.0
    returned: float = 0.0


def method_cost(method: str, nets: Networks, sent: float = 0.0, cut: int = 0) -> Cost:
    """One image of ``method`` (:data:`METHODS`) that sent ``sent`` bytes; ``cut``: the split's segments on the device."""
    n, s = nets, nets.small_flops
    if method == "local_vgg":
        return Cost(n.vgg_flops)
    if method == "local_small":
        return Cost(n.small_total)
    if method == "local_tiny":
        return Cost(n.tiny_flops)
    if method in ("offload_vgg", "offload_small"):
        remote = n.vgg_flops if method == "offload_vgg" else n.small_total
        return Cost(0.0, n.image_bytes, sent, remote, n.image_bytes, n.returned)
    if method == "split_small":
        if not 1 <= cut < len(s):
            raise ValueError(f"cut={cut}: expected 1..{len(s) - 1} segments of the small network on the device")
        return Cost(float(sum(s[:cut])), n.small_values[cut - 1], sent, float(sum(s[cut:])), n.small_values[cut - 1],
                    n.returned)
    if method == "agilenn":
        return Cost(n.agile_device_flops, n.agile_packed, sent, n.agile_remote_flops, n.agile_packed, n.returned)
    raise ValueError(f"method={method!r}: expected one of {METHODS}")


def device_weights(method: str, nets: Networks, cut: int = 0) -> int:
    """Weights ``method`` stores on the device."""
    return {"local_vgg": nets.vgg_weights, "local_small": sum(nets.small_weights), "local_tiny": nets.tiny_weights,
            "agilenn": nets.agile_device_weights,
            "split_small": sum(nets.small_weights[:cut])}.get(method, 0)


def device_ops(regime: Regime, cost: Cost) -> float:
    """Operations the device runs: the network's FLOPs and the coder's operations."""
    return cost.device_flops + regime.coder_ops * cost.device_coded


def remote_ops(regime: Regime, cost: Cost) -> float:
    return cost.remote_flops + regime.coder_ops * cost.remote_coded


def modelled_parts(regime: Regime, cost: Cost) -> dict[str, float]:
    """Milliseconds of device compute (coder included), the link (the send and the answer's return), remote compute."""
    scn, link = regime.scenario(), 0.0
    if cost.sent or cost.remote_flops:
        link = system.transfer_seconds(scn, 0, 1, cost.sent) + system.transfer_seconds(scn, 1, 0, cost.returned)
    return {"device": 1e3 * device_ops(regime, cost) / regime.device_speed, "link": 1e3 * link,
            "remote": 1e3 * remote_ops(regime, cost) / regime.remote_speed}


def modelled_ms(regime: Regime, cost: Cost) -> float:
    return float(sum(modelled_parts(regime, cost).values()))
