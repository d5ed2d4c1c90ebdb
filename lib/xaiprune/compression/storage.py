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

:func:`size_bits` counts exactly those bits; the uncompressed model counts
``8 x prune.weight_bytes(model)``. :func:`save` writes them: ``b"XPC1"``, a little-endian uint32 header
length, a zlib-compressed JSON header (architecture, and per tensor its shape, kind, bits, layout, stream
lengths), then each stream padded to whole bytes, so the file exceeds the counted size by the header and
at most one byte per stream. :func:`load` rebuilds a working model, whatever its (pruned) shapes. Used by
``09_compression.ipynb``.
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


def layout(code: Code) -> dict:
    """How ``code`` is stored and its bits: ``{"layout", "g", "codes", "table", "index", "total"}``."""
    table = FLOAT_BITS * len(code.table)
    kept = code.n if code.mask is None else int(code.mask.sum())
    name, g, index = index_layout(code.mask)
    options = [(name, g, kept * code.bits, index)]
    if code.mask is not None and (code.kind == "raw" or code.zero_code is not None):
        options.append(("dense", 0, code.n * code.bits, 0))  # pruned weights stored as the code of zero
    name, g, codes, index = min(options, key=lambda o: o[2] + o[3])
    return {"layout": name, "g": g, "codes": codes, "table": table, "index": index, "total": codes + table + index}


def size_bits(model: nn.Module, codes: "dict[str, Code]") -> dict:
    """Exact bits of ``model`` stored with ``codes`` for its conv/linear weights and every other tensor raw.

    Returns ``{"total", "weights", "other", "layers": {key: layout(...)}}``. With no ``codes`` the
    total is ``8 x prune.weight_bytes(model)``.
    """
    layers = {k: layout(c) for k, c in codes.items()}
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


def _values_to_store(code: Code, name: str) -> np.ndarray:
    if name != "dense" or code.mask is None:
        return code.values
    full = np.full(code.n, code.zero_code if code.kind != "raw" else 0, dtype=code.values.dtype)
    full[code.mask] = code.values
    return full


# ----- the file ---------------------------------------------------------------------------------------
def save(path: str | Path, model: nn.Module, codes: "dict[str, Code]", arch: str) -> Path:
    """Write ``model`` (built by ``models.build(arch, ...)``, possibly pruned) with ``codes`` to ``path``."""
    if arch not in models.ARCHS:
        raise ValueError(f"arch={arch!r}; expected one of {sorted(models.ARCHS)}")
    entries, blobs = [], []
    for key, tensor in model.state_dict().items():
        if key in codes:
            code = codes[key]
            how = layout(code)
            values = _values_to_store(code, how["layout"])
            streams = [values.astype(np.float32).tobytes() if code.kind == "raw" else pack(values, code.bits),
                       code.table.astype(np.float32).tobytes(),
                       b"" if how["layout"] == "dense" else (np.packbits(code.mask, bitorder="little").tobytes()
                                                           if how["layout"] == "bitmap" else
                                                           pack(_encode_gaps(code.mask, how["g"]), how["g"]))]
            entries.append({"key": key, "shape": list(code.shape), "kind": code.kind, "bits": code.bits,
                            "layout": how["layout"], "g": how["g"], "count": int(len(values)),
                            "table": int(len(code.table)), "symbols": 0 if how["layout"] != "gaps" else
                            gap_symbols(code.mask, how["g"]), "bytes": [len(s) for s in streams]})
        else:
            t = tensor.detach().cpu().contiguous()
            streams = [t.numpy().tobytes()]
            entries.append({"key": key, "shape": list(t.shape), "kind": "tensor", "dtype": str(t.dtype).replace("torch.", ""),
                            "bytes": [len(streams[0])]})
        blobs += streams
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    header = zlib.compress(json.dumps({"format": 1, "arch": arch, "in_channels": first.in_channels,
                                       "n_classes": last.out_features, "tensors": entries}).encode(), 9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", len(header)) + header)
        for blob in blobs:
            fh.write(blob)
    return path


def _decode_entry(e: dict, streams: list[bytes]) -> torch.Tensor:
    if e["kind"] == "tensor":
        return torch.from_numpy(np.frombuffer(streams[0], dtype=np.dtype(e["dtype"])).copy()).reshape(e["shape"])
    n = int(np.prod(e["shape"]))
    values = (np.frombuffer(streams[0], np.float32).copy() if e["kind"] == "raw"
              else unpack(streams[0], e["bits"], e["count"]))
    mask = None
    if e["layout"] == "bitmap":
        mask = np.unpackbits(np.frombuffer(streams[2], np.uint8), count=n, bitorder="little").astype(bool)
    elif e["layout"] == "gaps":
        mask = _decode_gaps(unpack(streams[2], e["g"], e["symbols"]), e["g"], n)
    code = Code(e["kind"], tuple(e["shape"]), e["bits"], values, np.frombuffer(streams[1], np.float32).copy(), mask)
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
    for e in header["tensors"]:
        streams = []
        for size in e["bytes"]:
            streams.append(raw_bytes[offset:offset + size])
            offset += size
        tensor = _decode_entry(e, streams)
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
