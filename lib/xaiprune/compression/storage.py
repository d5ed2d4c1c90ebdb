"""Exact size in bits of a compressed model, and the real file it is written to and read back from.

A model compressed by :mod:`xaiprune.compression.compress` is stored tensor by tensor, in state-dict order:

- a conv or linear weight (a :class:`~xaiprune.compression.compress.Code`) as up to three bit streams:
  **codes** (``bits`` per stored weight, packed little-endian), **table** (its float32 codebook or
  per-channel scales) and a **sparse index** when weights are pruned. Its layout is the cheapest of
  ``dense`` (a code for every position, the pruned ones at the code of 0; only when a code decodes to
  exactly 0), ``bitmap`` (one bit per position, then the kept weights' codes) and ``gaps`` (for each kept
  weight the number of pruned weights before it in ``g``-bit symbols, with the escape symbol ``2^g - 1``
  meaning "skip ``2^g - 1`` positions, no weight", ``g`` = 1..16 chosen per layer; then the codes);
- every other tensor (biases, BatchNorm parameters and statistics) raw, at its dtype's size.

**Dead weights** (``dead``, :func:`xaiprune.compression.relevance.dead_weights`: kernel taps that only ever read zero
padding) follow from the architecture and the input size, both in the file's header, so they cost nothing: with
``dead``, the codes, the index and the dense layout cover the live positions only, and a dead weight must be pruned.

:func:`size_bits` counts exactly those bits; the uncompressed model counts
``8 x prune.weight_bytes(model)``. :func:`save` writes them: ``b"XPC1"``, a little-endian uint32 header
length, a zlib-compressed JSON header (architecture, input shape, and per tensor its shape, kind, bits, layout, stream
lengths), then each stream padded to whole bytes, so the file exceeds the counted size by the header and
at most one byte per stream. :func:`load` rebuilds a working model, whatever its (pruned) shapes, and finds the
dead weights again from its geometry. Used by ``09_compression.ipynb``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xaiprune import models
from xaiprune.compression import relevance
from xaiprune.compression.compress import Code, decode

MAGIC = b"XPC1"
FLOAT_BITS = 32


# ----- sparse index -----------------------------------------------------------------------------------
def _zero_runs(mask: np.ndarray) -> np.ndarray:
    """Pruned positions before each kept one."""
    return np.diff(np.r_[-1, np.flatnonzero(mask)]) - 1


def gap_symbols(mask: np.ndarray, g: int) -> int:
    """Symbols of the ``gaps`` index with ``g``-bit symbols: one per kept weight plus the escapes."""
    return int(mask.sum() + (_zero_runs(mask) // (2 ** g - 1)).sum())


def index_layout(mask: np.ndarray | None) -> tuple[str, int, int]:
    """(layout, g, index bits) of the cheapest sparse index for ``mask``: ``bitmap`` or ``gaps`` with g bits."""
    if mask is None:
        return "dense", 0, 0
    runs = _zero_runs(mask)
    best = ("bitmap", 0, int(mask.size))
    for g in range(1, 17):
        bits = g * int(len(runs) + (runs // (2 ** g - 1)).sum())
        if bits < best[2]:
            best = ("gaps", g, bits)
    return best


def live_mask(code: Code, dead: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    """``code``'s mask over the positions it stores (the live ones, with ``dead``: a flat bool array, True for a dead
    weight) and how many those are; None when every such position is kept. A kept dead weight is refused."""
    if dead is None or code.mask is None:
        return code.mask, code.n
    if code.mask[dead].any():
        raise ValueError("a dead weight is kept: prune every dead weight before storing without it")
    kept = code.mask[~dead]
    return (None if kept.all() else kept), int(len(kept))


def layout(code: Code, dead: np.ndarray | None = None) -> dict:
    """How ``code`` is stored and its bits: ``{"layout", "g", "codes", "table", "index", "total"}`` (with ``dead``, over
    the live positions only)."""
    mask, n = live_mask(code, dead)
    table = FLOAT_BITS * len(code.table)
    kept = n if mask is None else int(mask.sum())
    name, g, index = index_layout(mask)
    options = [(name, g, kept * code.bits, index)]
    if mask is not None and (code.kind == "raw" or code.zero_code is not None):
        options.append(("dense", 0, n * code.bits, 0))  # pruned weights stored as the code of zero
    name, g, codes, index = min(options, key=lambda o: o[2] + o[3])
    return {"layout": name, "g": g, "codes": codes, "table": table, "index": index, "total": codes + table + index}


def _flat_dead(dead: "dict[str, torch.Tensor] | None", key: str) -> np.ndarray | None:
    return None if dead is None else dead[key].detach().cpu().numpy().astype(bool).ravel()


def size_bits(model: nn.Module, codes: "dict[str, Code]", dead: "dict[str, torch.Tensor] | None" = None) -> dict:
    """Exact bits of ``model`` stored with ``codes`` for its conv/linear weights and every other tensor raw; with
    ``dead`` (``{key: bool tensor}``), the dead weights cost nothing.

    Returns ``{"total", "weights", "other", "layers": {key: layout(...)}}``. With no ``codes`` the
    total is ``8 x prune.weight_bytes(model)``.
    """
    layers = {k: layout(c, _flat_dead(dead, k)) for k, c in codes.items()}
    other = sum(8 * v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in codes)
    weights = sum(v["total"] for v in layers.values())
    return {"total": weights + other, "weights": weights, "other": other, "layers": layers}


# ----- bit packing ------------------------------------------------------------------------------------
def pack(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers below ``2^bits`` packed ``bits`` each, little-endian, padded to whole bytes."""
    v = np.asarray(values, dtype=np.uint32)
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"a value {int(v.max())} does not fit in {bits} bits")
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack(buffer: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``count`` unsigned integers of ``bits`` bits."""
    planes = np.unpackbits(np.frombuffer(buffer, np.uint8), count=count * bits, bitorder="little")
    return (planes.reshape(count, bits).astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(1, dtype=np.uint32)


def _encode_gaps(mask: np.ndarray, g: int) -> np.ndarray:
    top = 2 ** g - 1
    runs = _zero_runs(mask)
    escapes = runs // top
    symbols = np.full(int(len(runs) + escapes.sum()), top, dtype=np.uint32)
    ends = np.cumsum(escapes + 1) - 1          # each kept weight's symbol comes after its escapes
    symbols[ends] = runs - escapes * top
    return symbols


def _decode_gaps(symbols: np.ndarray, g: int, n: int) -> np.ndarray:
    top = 2 ** g - 1
    step = symbols.astype(np.int64) + (symbols < top)  # a weight symbol also consumes its own position
    kept = np.cumsum(step)[symbols < top] - 1
    mask = np.zeros(n, dtype=bool)
    mask[kept] = True
    return mask


def _values_to_store(code: Code, mask: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if name != "dense" or mask is None:
        return code.values
    full = np.full(n, code.zero_code if code.kind != "raw" else 0, dtype=code.values.dtype)
    full[mask] = code.values
    return full


def _code_entry(key: str, code: Code, dead: np.ndarray | None) -> tuple[dict, list[bytes]]:
    mask, n = live_mask(code, dead)
    how = layout(code, dead)
    values = _values_to_store(code, mask, n, how["layout"])
    streams = [values.astype(np.float32).tobytes() if code.kind == "raw" else pack(values, code.bits),
               code.table.astype(np.float32).tobytes(),
               b"" if how["layout"] == "dense" or mask is None else (
                   np.packbits(mask, bitorder="little").tobytes() if how["layout"] == "bitmap" else
                   pack(_encode_gaps(mask, how["g"]), how["g"]))]
    return {"key": key, "shape": list(code.shape), "kind": code.kind, "bits": code.bits, "layout": how["layout"],
            "g": how["g"], "count": int(len(values)), "table": int(len(code.table)),
            "dead": dead is not None and code.mask is not None,  # a code without a mask stores every position
            "symbols": 0 if how["layout"] != "gaps" else gap_symbols(mask, how["g"]),
            "bytes": [len(s) for s in streams]}, streams


def save(path: str | Path, model: nn.Module, codes: "dict[str, Code]", arch: str,
         input_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``model`` (built by ``models.build(arch, ...)``, possibly pruned) with ``codes`` to ``path``.

    With ``input_shape`` (C, H, W), the dead weights at that input size (every one pruned in ``codes``) are not stored:
    :func:`load` finds them again from the geometry."""
    if arch not in models.ARCHS:
        raise ValueError(f"arch={arch!r}; expected one of {sorted(models.ARCHS)}")
    dead = None if input_shape is None else relevance.dead_weights(model, torch.zeros(1, *input_shape))
    entries, blobs = [], []
    for key, tensor in model.state_dict().items():
        if key in codes:
            entry, streams = _code_entry(key, codes[key], _flat_dead(dead, key))
        else:
            t = tensor.detach().cpu().contiguous()
            streams = [t.numpy().tobytes()]
            entry = {"key": key, "shape": list(t.shape), "kind": "tensor", "dtype": str(t.dtype).replace("torch.", ""),
                     "bytes": [len(streams[0])]}
        entries.append(entry)
        blobs += streams
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    header = zlib.compress(json.dumps({"format": 2, "arch": arch, "in_channels": first.in_channels,
                                       "n_classes": last.out_features, "input_shape": input_shape and list(input_shape),
                                       "tensors": entries}).encode(), 9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", len(header)) + header)
        for blob in blobs:
            fh.write(blob)
    return path


def _decode_entry(e: dict, streams: list[bytes], dead: np.ndarray | None) -> torch.Tensor:
    if e["kind"] == "tensor":
        return torch.from_numpy(np.frombuffer(streams[0], dtype=np.dtype(e["dtype"])).copy()).reshape(e["shape"])
    n_all = int(np.prod(e["shape"]))
    live = np.ones(n_all, dtype=bool) if not e["dead"] else ~dead
    n = int(live.sum())
    values = (np.frombuffer(streams[0], np.float32).copy() if e["kind"] == "raw"
              else unpack(streams[0], e["bits"], e["count"]))
    mask = np.ones(n, dtype=bool)  # dense: every live position stored (the pruned ones at the code of zero)
    if e["layout"] == "bitmap":
        mask = np.unpackbits(np.frombuffer(streams[2], np.uint8), count=n, bitorder="little").astype(bool)
    elif e["layout"] == "gaps":
        mask = _decode_gaps(unpack(streams[2], e["g"], e["symbols"]), e["g"], n)
    full = np.zeros(n_all, dtype=bool)
    full[np.flatnonzero(live)[mask]] = True
    code = Code(e["kind"], tuple(e["shape"]), e["bits"], values, np.frombuffer(streams[1], np.float32).copy(),
                None if full.all() else full)
    return torch.from_numpy(decode(code))


def _fit_shapes(model: nn.Module) -> None:
    """Make layer attributes agree with (possibly pruned) weight shapes after tensors were replaced."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features = m.weight.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape


def load(path: str | Path) -> nn.Module:
    """Read a file written by :func:`save` and return the working model (eval mode)."""
    raw_bytes = Path(path).read_bytes()
    if raw_bytes[:4] != MAGIC:
        raise ValueError(f"{path} is not a compressed model (magic {raw_bytes[:4]!r}, expected {MAGIC!r})")
    (length,) = struct.unpack("<I", raw_bytes[4:8])
    header = json.loads(zlib.decompress(raw_bytes[8:8 + length]))
    model = models.build(header["arch"], header["in_channels"], header["n_classes"])
    expected = list(model.state_dict())
    if [e["key"] for e in header["tensors"]] != expected:
        raise ValueError(f"{path}: its tensors are not those of {header['arch']}")
    offset = 8 + length
    shape = header.get("input_shape")  # the dead taps depend on the geometry, not on the (pruned) channel counts
    taps = {} if not shape else {k: d[:1, :1] for k, d in relevance.dead_weights(model, torch.zeros(1, *shape)).items()}
    for e in header["tensors"]:
        streams = []
        for size in e["bytes"]:
            streams.append(raw_bytes[offset:offset + size])
            offset += size
        tensor = _decode_entry(e, streams, None if not e.get("dead") else
                               torch.broadcast_to(taps[e["key"]], e["shape"]).numpy().ravel())
        owner, name = e["key"].rsplit(".", 1)
        module = model.get_submodule(owner)
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[name] = tensor
    if offset != len(raw_bytes):
        raise ValueError(f"{path}: {len(raw_bytes) - offset} bytes left over after the last tensor")
    _fit_shapes(model)
    return model.eval()


def file_report(path: str | Path, counted_bits: int) -> OrderedDict:
    """File size against the counted size: bytes, counted bytes, header bytes and the relative excess."""
    raw_bytes = Path(path).read_bytes()
    (length,) = struct.unpack("<I", raw_bytes[4:8])
    counted = counted_bits / 8
    return OrderedDict(file_bytes=len(raw_bytes), counted_bytes=counted, header_bytes=8 + length,
                       excess=len(raw_bytes) / counted - 1)
