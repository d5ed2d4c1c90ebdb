"""XAI-guided compression: a score decides which weights to prune, how to share them and how many bits a layer keeps.

The project's reconstruction of Sabih, Hannig and Teich, "Utilizing Explainable AI for Quantization and
Pruning of Deep Neural Networks" (2020, https://arxiv.org/abs/2008.09072), whose full text is not
available here (see ``docs/DESIGN.md``). Every conv and linear weight tensor of a trained model becomes a :class:`Code`.
The scores come from :mod:`xaiprune.compression.relevance` (DeepLIFT, the Taylor counterpart, the magnitude), and so
do the dead weights every variant removes first:

- **unstructured pruning** (:class:`WeightRanking`): the dead weights go first, then one global ranking of the
  scores over all live weights of all layers, so each layer's sparsity follows from the scores; every layer
  keeps at least its best live weight;
- **weight sharing** (:func:`share`): per layer, 1-D k-means with ``k = 2^b`` centres on the kept weights, each
  weight's score as its sample weight (scikit-learn ``KMeans(sample_weight=...)``), or unweighted (plain k-means);
- **quantisation** (:func:`quantise`): symmetric, per output channel, simulated in float; **mixed precision**
  (:func:`allocate_bits`) gives each layer 2..8 bits from its share of a score, or of the weights' range
  (:func:`range_sensitivity`), under a total bit budget, against uniform bits at the same total.

Sizes are counted in bits exactly by :mod:`xaiprune.compression.storage` (codes x bits + codebooks or scales +
sparse index + every other tensor raw), which also writes and reads the real file. Pruned weights stay
exactly zero whatever follows. Used by ``09_compression.ipynb``.
"""

from __future__ import annotations

import copy
import heapq
import numbers
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from xaiprune import data
from xaiprune.pruning import repairs

HIST_BINS = 4096        # k-means runs on a weighted histogram of this many bins per layer (see share)
BIT_LIMITS = (1, 16)    # accepted bit widths of a code
MIXED_RANGE = (2, 8)    # per-layer bits of mixed precision
ALPHAS = np.linspace(1.0, 0.3, 8)  # clipping fractions of max|w| searched per channel by quantise
KINDS = ("raw", "share", "quant")


# ----- checks, before any work ------------------------------------------------------------------------
def check_bits(bits, name: str = "bits", lo: int = BIT_LIMITS[0], hi: int = BIT_LIMITS[1]) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not lo <= int(bits) <= hi:
        raise ValueError(f"{name}={bits!r}; expected an integer bit width in [{lo}, {hi}]")
    return int(bits)


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name}={sparsity!r}; expected a fraction of weights removed in [0, 1)")
    return float(sparsity)


def check_reference(reference: data.Split | None) -> data.Split:
    if reference is None or len(reference) == 0:
        raise ValueError("the reference set is empty: weight relevance needs at least one labelled image")
    return reference


def weight_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Conv and linear layers by state-dict key of their weight (``<module>.weight``), in forward order."""
    return OrderedDict((f"{n}.weight", m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# ----- pruning by a score ----------------------------------------------------------------------------
class WeightRanking:
    """All live weights of all layers ranked once by a score; :meth:`masks` removes the lowest ``sparsity`` of them.

    ``dead`` (``{key: bool tensor}``, True for a weight no input reaches: see
    :func:`xaiprune.compression.relevance.dead_weights`) are removed at every sparsity and are not counted in it:
    ``sparsity`` is the fraction of the live weights removed. One global ranking (raw scores, no per-layer
    normalisation), so each layer's sparsity is what the scores give it. Ties (above all the exact zeros of
    relevance) are broken by ``tiebreak`` (scores, e.g. the magnitude, or a :class:`WeightRanking` of them over the
    same weights, sorted once for many rankings), then by position. Every layer keeps at least its highest-scored
    live weight.
    """

    def __init__(self, scores: "dict[str, torch.Tensor]", tiebreak: "dict[str, torch.Tensor] | WeightRanking | None" = None,
                 dead: "dict[str, torch.Tensor] | None" = None):
        self.shapes = OrderedDict((k, tuple(s.shape)) for k, s in scores.items())
        flat = torch.cat([s.detach().flatten().double() for s in scores.values()])
        self.live = (torch.cat([~dead[k].flatten() for k in scores]) if dead is not None
                     else torch.ones(len(flat), dtype=torch.bool))
        if tiebreak is not None and not isinstance(tiebreak, WeightRanking):
            tiebreak = WeightRanking(tiebreak, dead=dead)
        if tiebreak is not None and not torch.equal(tiebreak.live, self.live):
            raise ValueError("tiebreak ranks other weights (another model or other dead weights)")
        first = tiebreak.order if tiebreak is not None else torch.nonzero(self.live)[:, 0]  # live, in the tiebreak's order
        self.order = first[torch.argsort(flat[first], stable=True)]  # stable: equal scores keep the tiebreak's order
        masked = flat.masked_fill(~self.live, -float("inf")).split([int(np.prod(s)) for s in self.shapes.values()])
        self.best = OrderedDict((k, int(torch.argmax(m))) for k, m in zip(self.shapes, masked))

    def masks(self, sparsity: float) -> "OrderedDict[str, torch.Tensor]":
        """``{key: bool tensor}``: True for the weights kept."""
        n_removed = int(round(check_sparsity(sparsity) * len(self.order)))
        keep = self.live.clone()
        keep[self.order[:n_removed]] = False
        out, start = OrderedDict(), 0
        for k, shape in self.shapes.items():
            n = int(np.prod(shape))
            m = keep[start:start + n].clone()
            m[self.best[k]] = True
            out[k], start = m.reshape(shape), start + n
        return out


# ----- codes: how one weight tensor is stored ---------------------------------------------------------
@dataclass
class Code:
    """One compressed weight tensor.

    ``kind`` "raw": ``values`` are the kept weights as float32 (``bits`` 32); "share": ``values`` are
    b-bit indices into the float32 codebook ``table``; "quant": ``values`` are b-bit codes of symmetric
    per-output-channel levels, ``table`` the channels' float32 scales. ``mask`` (flat bool, or None when
    nothing is pruned) marks the kept weights; ``values`` hold the kept weights only, in flat order.
    """

    kind: str
    shape: tuple[int, ...]
    bits: int
    values: np.ndarray
    table: np.ndarray
    mask: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))

    @property
    def zero_code(self) -> int | None:
        """The code that decodes to exactly 0 (so pruned weights may be stored densely), or None."""
        if self.kind == "quant" and self.bits >= 2:
            return 2 ** (self.bits - 1) - 1
        return None

    def kept_channels(self) -> np.ndarray:
        per = self.n // self.shape[0]
        idx = np.arange(self.n) if self.mask is None else np.flatnonzero(self.mask)
        return idx // per


def decode(code: Code) -> np.ndarray:
    """The float32 weight tensor a :class:`Code` stands for (pruned weights exactly 0)."""
    if code.kind == "raw":
        kept = code.values.astype(np.float32)
    elif code.kind == "share":
        kept = code.table[code.values.astype(np.int64)]
    else:
        levels = (code.values.astype(np.int64) - code.zero_code if code.bits >= 2
                  else 2 * code.values.astype(np.int64) - 1).astype(np.float32)
        kept = levels * code.table[code.kept_channels()]
    out = np.zeros(code.n, dtype=np.float32)
    if code.mask is None:
        out[:] = kept
    else:
        out[code.mask] = kept
    return out.reshape(code.shape)


def _flat(w: torch.Tensor, mask: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    w = w.detach().cpu().numpy().astype(np.float32).ravel()
    m = None if mask is None or bool(mask.all()) else mask.detach().cpu().numpy().astype(bool).ravel()
    return w, m


def raw(w: torch.Tensor, mask: torch.Tensor | None = None) -> Code:
    """The kept weights as float32 (unstructured pruning alone)."""
    flat, m = _flat(w, mask)
    return Code("raw", tuple(w.shape), 32, flat if m is None else flat[m], np.zeros(0, np.float32), m)


def _nearest(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centres`` for each value."""
    cut = (centres[1:] + centres[:-1]) / 2
    return np.searchsorted(cut, values).astype(np.uint32)


def share(w: torch.Tensor, bits: int, sample_weight: torch.Tensor | None = None, mask: torch.Tensor | None = None,
          seed: int = 0) -> Code:
    """Weight sharing: k-means with ``k = 2^bits`` centres on one layer's kept weights.

    Each weight counts with its ``sample_weight`` (its relevance; None: all equal, the plain k-means).
    Lloyd's algorithm (scikit-learn ``KMeans``, linear initialisation over the weights' range as in Han et
    al., "Deep Compression", ICLR 2016) runs on a weighted histogram of :data:`HIST_BINS` bins of the
    weights (each bin's centre, weighted by the summed sample weights of its weights), which is exact up to
    the bin width and keeps a 2.4-million-weight layer to milliseconds. A layer whose sample weights sum to
    zero is clustered unweighted. Every kept weight then takes its nearest centre.
    """
    check_bits(bits)
    flat, m = _flat(w, mask)
    values = (flat if m is None else flat[m]).astype(np.float64)
    sw = np.ones_like(values) if sample_weight is None else (
        sample_weight.detach().cpu().numpy().astype(np.float64).ravel()[m if m is not None else slice(None)])
    if sw.sum() <= 0 or not np.isfinite(sw).all():
        sw = np.ones_like(values)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        centres = np.array([lo])
    else:
        width = (hi - lo) / HIST_BINS
        which = np.minimum(((values - lo) / width).astype(np.int64), HIST_BINS - 1)
        mass = np.bincount(which, weights=sw, minlength=HIST_BINS)
        points = (lo + (np.arange(HIST_BINS) + 0.5) * width)[mass > 0]
        k = min(2 ** bits, len(points))
        init = np.linspace(points.min(), points.max(), k)[:, None]
        fit = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(points[:, None], sample_weight=mass[mass > 0])
        centres = np.sort(fit.cluster_centers_[:, 0])
    centres = centres.astype(np.float32)
    return Code("share", tuple(w.shape), bits, _nearest(values, centres.astype(np.float64)), centres, m)


def quantise(w: torch.Tensor, bits: int, mask: torch.Tensor | None = None) -> Code:
    """Symmetric uniform quantisation per output channel, simulated in float.

    ``bits >= 2``: levels ``q * s_c`` with ``q`` in ``[-L, L]``, ``L = 2^(bits-1) - 1`` (zero exact, so a
    pruned weight stays 0); the channel's scale ``s_c = alpha * max|w_c| / L`` takes the clipping fraction
    ``alpha`` of :data:`ALPHAS` with the least squared error on the channel's kept weights. ``bits = 1``:
    ``sign(w) * mean|w_c|``. Codes are ``q + L`` (``bits = 1``: 1 for positive).
    """
    bits = check_bits(bits)
    flat, m = _flat(w, mask)
    c = w.shape[0]
    x = torch.from_numpy(flat.reshape(c, -1).copy())
    keep = torch.ones_like(x, dtype=torch.bool) if m is None else torch.from_numpy(m.reshape(c, -1))
    x = x * keep
    if bits == 1:
        scale = x.abs().sum(1) / keep.sum(1).clamp_min(1)
        codes = (x >= 0).to(torch.int64)
    else:
        top = 2 ** (bits - 1) - 1
        peak = x.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny)
        best_err, scale = None, None
        for alpha in ALPHAS:
            s = (float(alpha) * peak / top)[:, None]
            err = (((x / s).round().clamp(-top, top) * s - x) ** 2 * keep).sum(1)
            if best_err is None:
                best_err, scale = err, s[:, 0].clone()
            else:
                better = err < best_err
                best_err, scale = torch.where(better, err, best_err), torch.where(better, s[:, 0], scale)
        codes = (x / scale[:, None]).round().clamp(-top, top).to(torch.int64) + top
    codes = codes.numpy().ravel()
    return Code("quant", tuple(w.shape), bits, (codes if m is None else codes[m]).astype(np.uint32),
                scale.numpy().astype(np.float32), m)


# ----- mixed precision --------------------------------------------------------------------------------
def allocate_bits(counts: "dict[str, int]", sensitivity: "dict[str, float]", average: float,
                  lo: int = MIXED_RANGE[0], hi: int = MIXED_RANGE[1]) -> "OrderedDict[str, int]":
    """Bits per layer, ``lo..hi``, spending at most ``average x sum(counts)`` bits on the codes.

    A layer's error at ``b`` bits is modelled as ``S_l 4^-b`` (quantisation noise power falls 4x per bit)
    with ``S_l`` its ``sensitivity``: its share of relevance (XAI) or of the weights' squared range (the
    non-XAI allocation). Starting from ``lo`` everywhere, one bit at a time goes to the layer with the
    largest error reduction per bit spent, ``S_l (4^-b - 4^-(b+1)) / n_l``, among those it still fits.
    """
    if not lo <= average <= hi:
        raise ValueError(f"average={average!r}; expected a budget between {lo} and {hi} bits per weight")
    bits = OrderedDict((k, lo) for k in counts)
    left = average * sum(counts.values()) - lo * sum(counts.values())
    heap = [(-sensitivity[k] * 0.75 * 4.0 ** -lo / counts[k], k) for k in counts if counts[k] > 0]
    heapq.heapify(heap)
    while heap:  # a layer that no longer fits never will (the budget only shrinks): it leaves the heap
        gain, k = heapq.heappop(heap)
        if gain >= 0 or counts[k] > left:
            continue
        bits[k] += 1
        left -= counts[k]
        if bits[k] < hi:
            heapq.heappush(heap, (-sensitivity[k] * 0.75 * 4.0 ** -bits[k] / counts[k], k))
    return bits


def range_sensitivity(model: nn.Module, masks: "dict[str, torch.Tensor] | None" = None) -> "OrderedDict[str, float]":
    """Non-XAI sensitivity of each layer: its kept weights' summed squared channel range, ``sum_c n_c max|w_c|^2``
    (``n_c``, ``max|w_c|``: over channel c's weights that ``masks`` keeps; all without ``masks``)."""
    out = OrderedDict()
    for k, m in weight_layers(model).items():
        keep = torch.ones_like(m.weight, dtype=torch.bool) if masks is None else masks[k]
        w = (m.weight.detach() * keep).reshape(m.weight.shape[0], -1)
        out[k] = float((w.abs().amax(1) ** 2 * keep.reshape(len(w), -1).sum(1)).sum())
    return out


def layer_sums(scores: "dict[str, torch.Tensor]", masks: "dict[str, torch.Tensor] | None" = None) -> "OrderedDict[str, float]":
    """Each layer's total score over its kept weights (its share of relevance, unnormalised)."""
    return OrderedDict((k, float((s * (masks[k] if masks else 1)).sum())) for k, s in scores.items())


# ----- the whole model --------------------------------------------------------------------------------
def compress(model: nn.Module, kind: str = "raw", bits: "int | dict[str, int] | None" = None,
             masks: "dict[str, torch.Tensor] | None" = None, sample_weights: "dict[str, torch.Tensor] | None" = None,
             seed: int = 0) -> "OrderedDict[str, Code]":
    """A :class:`Code` for every conv and linear weight: pruned by ``masks``, then stored as ``kind``.

    Args:
        kind: "raw" (float32), "share" (k-means, weighted by ``sample_weights`` if given) or "quant".
        bits: bits per code, one for all layers or ``{key: bits}`` (mixed precision); not for "raw".
        masks: ``{key: bool tensor}`` of kept weights (:meth:`WeightRanking.masks`); None prunes nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
    layers = weight_layers(model)
    per = {k: None for k in layers} if kind == "raw" else (
        {k: check_bits(bits.get(k) if isinstance(bits, dict) else bits, f"bits[{k}]") for k in layers})
    out = OrderedDict()
    for k, m in layers.items():
        mask = None if masks is None else masks[k]
        if kind == "raw":
            out[k] = raw(m.weight, mask)
        elif kind == "share":
            out[k] = share(m.weight, per[k], None if sample_weights is None else sample_weights[k], mask, seed)
        else:
            out[k] = quantise(m.weight, per[k], mask)
    return out


def apply(model: nn.Module, codes: "dict[str, Code]", reference: data.Split | None = None) -> nn.Module:
    """A copy of ``model`` whose conv and linear weights are the decoded ``codes`` (everything else as is).

    With ``reference``, the BatchNorm means are then corrected (:func:`xaiprune.pruning.repairs.correct_means`).
    """
    out = copy.deepcopy(model).eval()
    state = out.state_dict()
    with torch.no_grad():
        for k, code in codes.items():
            state[k].copy_(torch.from_numpy(decode(code)))
    return out if reference is None else repairs.correct_means(model, out, check_reference(reference))
