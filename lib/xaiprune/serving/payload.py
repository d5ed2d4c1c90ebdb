"""What AgileNN and full offload put on the wire: packed, losslessly compressed bytes, carried as tensors.

- :func:`pack_indices` / :func:`unpack_indices`: centroid indices at ``bits`` bits each (3 for 8
  centroids), most significant bit first, with numpy's ``packbits``;
- :func:`compress` / :func:`decompress`: ``zlib`` (level 9) or ``lzma`` (the ``xz`` format, preset 9)
  from the standard library (:data:`CODECS`);
- :func:`quantise`, :func:`encode_activation` / :func:`decode_activation`: a split network's activation as
  uint8 codes over its own range (8 bytes of range), compressed;
- :func:`encode_image` / :func:`decode_image`: an image as PNG (lossless) or JPEG at a quality, with
  Pillow, for full offload; pixels are MedMNIST's uint8 values (:func:`xaiprune.data.to_tensor` inverted);
- :func:`to_tensor` / :func:`from_tensor`: bytes as a float32 tensor (zero-padded to a multiple of 4 and
  reinterpreted, never converted), because the wire (:mod:`xaiprune.serving.wire`) carries float32
  payloads; the true byte count travels in the header, and the link emulation charges those bytes.

Used by :mod:`xaiprune.agilenn.offload` and ``10_agilenn.ipynb``.
"""

from __future__ import annotations

import io
import lzma
import zlib

import numpy as np
import torch
from PIL import Image

from xaiprune import data

CODECS = ("zlib", "lzma")
IMAGE_FORMATS = ("png", "jpeg")


def pack_indices(indices: torch.Tensor | np.ndarray, bits: int) -> bytes:
    """Indices (any shape, each in [0, 2**bits)) as a bit string of ``bits`` bits each, padded to whole bytes."""
    v = np.asarray(indices, dtype=np.int64).ravel()
    if v.size and (v.min() < 0 or v.max() >= 1 << bits):
        raise ValueError(f"indices in [{v.min()}, {v.max()}] do not fit in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((v[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def unpack_indices(buf: bytes, bits: int, count: int) -> np.ndarray:
    """The first ``count`` indices of a :func:`pack_indices` bit string (int64)."""
    if len(buf) * 8 < bits * count:
        raise ValueError(f"{len(buf)} bytes hold fewer than {count} indices of {bits} bits")
    b = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))[:bits * count].reshape(count, bits).astype(np.int64)
    return b @ (1 << np.arange(bits - 1, -1, -1))


def _codec(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"codec={codec!r}: expected one of {CODECS}")
    return codec


def compress(buf: bytes, codec: str = "zlib") -> bytes:
    return zlib.compress(buf, 9) if _codec(codec) == "zlib" else lzma.compress(buf, preset=9)


def decompress(buf: bytes, codec: str = "zlib") -> bytes:
    return zlib.decompress(buf) if _codec(codec) == "zlib" else lzma.decompress(buf)


def encode_indices(indices: torch.Tensor, bits: int, codec: str = "zlib") -> bytes:
    """AgileNN's payload: packed indices, compressed."""
    return compress(pack_indices(indices, bits), codec)


def decode_indices(buf: bytes, bits: int, shape: tuple[int, ...], codec: str = "zlib") -> torch.Tensor:
    """Inverse of :func:`encode_indices`: int64 indices of ``shape``."""
    count = int(np.prod(shape))
    return torch.from_numpy(unpack_indices(decompress(buf, codec), bits, count).reshape(shape))


def quantise(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample of ``a`` (N, ...) as uint8 codes over its own range: codes, lowest value and step, one per sample."""
    flat = a.reshape(len(a), -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    step = ((hi - lo) / 255).clamp_min(1e-12)
    q = torch.round((flat - lo[:, None]) / step[:, None]).clamp(0, 255).to(torch.uint8)
    return q.reshape(a.shape), lo, step


def dequantise(q: torch.Tensor, lo: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantise` (to within half a step)."""
    shape = (len(q),) + (1,) * (q.ndim - 1)
    return q.float() * step.reshape(shape) + lo.reshape(shape)


def encode_activation(a: torch.Tensor, codec: str = "zlib") -> bytes:
    """A split network's activation (one sample, shape (1, ...)): its lowest value and step (float32), then the
    uint8 codes (:func:`quantise`), compressed."""
    q, lo, step = quantise(a)
    return np.array([lo[0], step[0]], dtype="<f4").tobytes() + compress(q.numpy().tobytes(), codec)


def decode_activation(buf: bytes, shape: tuple[int, ...], codec: str = "zlib") -> torch.Tensor:
    """Inverse of :func:`encode_activation`: the dequantised activation of ``shape`` (1, ...)."""
    lo, step = np.frombuffer(buf[:8], dtype="<f4")
    q = torch.from_numpy(np.frombuffer(decompress(buf[8:], codec), dtype=np.uint8).copy()).reshape(shape)
    return dequantise(q, torch.tensor([float(lo)]), torch.tensor([float(step)]))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """One image (C, H, W) normalised by :func:`xaiprune.data.to_tensor` back to uint8 (H, W) or (H, W, C)."""
    a = torch.round((x * 0.5 + 0.5) * 255).clamp(0, 255).to(torch.uint8).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def encode_image(x: torch.Tensor, fmt: str = "png", quality: int = 90) -> bytes:
    """One normalised image (C, H, W) as PNG (lossless, maximal compression) or JPEG at ``quality``."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}: expected one of {IMAGE_FORMATS}")
    out = io.BytesIO()
    img = Image.fromarray(to_uint8(x))
    if fmt == "png":
        img.save(out, format="PNG", optimize=True)
    else:
        img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_image(buf: bytes) -> torch.Tensor:
    """A PNG or JPEG image back to a normalised (C, H, W) tensor."""
    return data.to_tensor(np.asarray(Image.open(io.BytesIO(buf)))[None])[0]


def to_tensor(buf: bytes) -> torch.Tensor:
    """Bytes as a 1-D float32 tensor (bit patterns reinterpreted, zero-padded to a multiple of 4 bytes)."""
    padded = buf + b"\0" * (-len(buf) % 4)
    return torch.from_numpy(np.frombuffer(padded, dtype="<f4").copy())


def from_tensor(t: torch.Tensor, nbytes: int) -> bytes:
    """The first ``nbytes`` bytes of a :func:`to_tensor` tensor."""
    if t.dtype != torch.float32 or t.ndim != 1 or nbytes > 4 * t.numel() or nbytes < 0:
        raise ValueError(f"expected a 1-D float32 tensor of at least {nbytes} bytes, got {t.dtype} {tuple(t.shape)}")
    return t.numpy().astype("<f4", copy=False).tobytes()[:nbytes]
