"""AgileNN: explainable AI decides which features stay on a weak device and which are offloaded.

Huang and Gao, "Real-time Neural Network Inference on Extremely Weak Devices: Agile Offloading with
Explainable AI", MobiCom 2022, https://doi.org/10.1145/3495243.3560551. This is the project's own
PyTorch version, written after reading the official TensorFlow code (github.com/pittisl/AgileNN); no
code is copied. The pieces:

- :class:`FeatureExtractor` (device): two separable 3x3 convolutions (``4`` then ``channels``
  filters), each followed by BatchNorm and ReLU6; the first has a stride that shrinks the image.
- :class:`LocalPredictor` (device): global average pooling of the first ``k`` feature channels,
  a linear layer and BatchNorm.
- :class:`SoftToHardQuantizer` (device): the other channels are quantised to ``n`` trainable
  centroids kept in (0, 6) by ``6 * sigmoid``; hard assignment forward, soft assignment's gradient
  backward (Agustsson et al., NeurIPS 2017, https://arxiv.org/abs/1704.00648).
- :class:`RemotePredictor` (remote): a MobileNetV2-like network on the quantised channels.
- :func:`small_network`: the same layers without the split, quantiser or local predictor (the
  equal-capacity baseline).
- :class:`AgileNN`: all four, and the prediction ``w_0 * local + w_1 * remote`` (``w = softmax``
  of two learned numbers); :meth:`AgileNN.local_logits` alone is the answer when the link is down.
- :class:`Reference`: the frozen network whose integrated gradients rank the feature channels; it
  is trained on images with a stem shaped like the feature extractor, and the stem is dropped so that
  it reads the features (as the official code drops EfficientNetV2's first convolution).
- :func:`channel_importance` (two-point trapezoid integrated gradients, zero baseline),
  :func:`skewness`, :func:`skewness_loss`, :func:`disorder_loss`.

Training (:mod:`xaiprune.agilenn.training`), the payload on the wire (:mod:`xaiprune.serving.payload`)
and the device/remote processes (:mod:`xaiprune.agilenn.offload`) build on this module.
Used by ``10_agilenn.ipynb``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from xaiprune import models

# (expand ratio t, output channels c, repeats n, stride s) of the remote predictor's inverted residual
# stages: MobileNetV2's table (Sandler et al. 2018) cut to four stages for 14x14 inputs (see the notebook).
REMOTE_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1))
REMOTE_HEAD = 256      # width of the last 1x1 convolution (MobileNetV2: 1280)
REFERENCE_WIDTHS = (48, 96)  # the reference body's two conv stages


def split_channels(split_ratio: float, channels: int) -> int:
    """k = round(split_ratio * channels) feature channels stay on the device; refuses a useless split."""
    if isinstance(split_ratio, bool) or not 0 < split_ratio < 1:
        raise ValueError(f"split_ratio={split_ratio}: expected a fraction in (0, 1) of the feature channels kept "
                         "on the device")
    k = int(round(split_ratio * channels))
    if not 1 <= k < channels:
        raise ValueError(f"split_ratio={split_ratio}: round({split_ratio} x {channels} channels) = {k}; expected "
                         f"1..{channels - 1} channels on the device (at least one on each side)")
    return k


def check_centroids(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"centroids={n!r}: expected an integer >= 2 (a quantiser needs at least two values)")
    return n


def bits_per_index(n_centroids: int) -> int:
    """Bits of one centroid index on the wire: ceil(log2(n)) (3 for 8 centroids)."""
    return max(1, math.ceil(math.log2(check_centroids(n_centroids))))


def separable(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """Keras' SeparableConv2D: a depthwise 3x3 convolution, then a pointwise 1x1 one (no bias)."""
    return [nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False)]


class FeatureExtractor(nn.Sequential):
    """The device's feature extractor: (separable conv, BN, ReLU6) x 2; the first has stride ``stride``."""

    def __init__(self, in_channels: int, channels: int = 24, stride: int = 2):
        super().__init__(*separable(in_channels, 4, stride), nn.BatchNorm2d(4), nn.ReLU6(),
                         *separable(4, channels), nn.BatchNorm2d(channels), nn.ReLU6())


class LocalPredictor(nn.Module):
    """Global average pooling of the first ``k`` channels, linear, BatchNorm (the official ``l_predictor``)."""

    def __init__(self, k: int, n_classes: int):
        super().__init__()
        self.k = k
        self.fc = nn.Linear(k, n_classes)
        self.bn = nn.BatchNorm1d(n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(features[:, :self.k].mean((2, 3))))


class SoftToHardQuantizer(nn.Module):
    """Quantise every value to the nearest of ``n`` centroids ``6 * sigmoid(theta)``, with soft gradients.

    Forward: the nearest centroid (hard). Backward: the gradient of the soft assignment
    ``sum_j softmax_j(-(x - c_j)^2) c_j`` (straight-through: ``soft + (hard - soft).detach()``).
    The centroids start evenly spread over (0, 6) (the official code draws theta ~ N(0, 0.05), all
    centroids near 3; a few epochs do not spread them).
    """

    def __init__(self, n: int = 8):
        super().__init__()
        p = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        self.theta = nn.Parameter(torch.log(p / (1 - p)))

    def centroids(self) -> torch.Tensor:
        return 6.0 * torch.sigmoid(self.theta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the quantised values (shape of ``x``) and the centroid indices (int64)."""
        c = self.centroids()
        d = (x.unsqueeze(-1) - c).square()
        idx = d.argmin(-1)
        hard = c[idx]
        soft = (torch.softmax(-d, -1) * c).sum(-1)
        return soft + (hard - soft).detach(), idx

    def dequantize(self, idx: torch.Tensor) -> torch.Tensor:
        """Centroid values of indices (what the remote side rebuilds from the wire)."""
        return self.centroids()[idx]


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (unless t = 1), depthwise 3x3, 1x1 project; identity sum when shapes agree."""

    def __init__(self, c_in: int, c_out: int, stride: int, t: int):
        super().__init__()
        hidden = c_in * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(), nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class RemotePredictor(nn.Sequential):
    """The remote predictor: separable conv to 16, inverted residual stages, 1x1 conv, pool, linear, BN."""

    def __init__(self, c_in: int, n_classes: int, stages=REMOTE_STAGES, head: int = REMOTE_HEAD):
        layers: list[nn.Module] = [*separable(c_in, 16)]
        c = 16
        for t, c_out, n, s in stages:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(), models.Head(head, n_classes),
                   nn.BatchNorm1d(n_classes)]
        super().__init__(*layers)


def small_network(in_channels: int, n_classes: int, channels: int = 24, stride: int = 2,
                  width: float = 1.0) -> models.SegmentedModel:
    """AgileNN's network without its split: the extractor, then the remote predictor reading all ``channels``.

    The equal-capacity baseline (same layers, same FLOPs up to the first separable convolution's width), as
    segments so that it runs locally, offloaded whole, or split at a segment boundary: ``extractor``, ``stem``
    (the separable convolution to 16), one segment per inverted residual stage, and ``head``. ``width`` < 1 narrows
    the stages and the head (at least 8 and 16 channels): a network sized for a weak device.
    """
    stages = tuple((t, max(8, round(c * width)), n, s) for t, c, n, s in REMOTE_STAGES)
    layers = list(RemotePredictor(channels, n_classes, stages, max(16, round(REMOTE_HEAD * width))))
    segs = OrderedDict(extractor=FeatureExtractor(in_channels, channels, stride))
    segs["stem"], at = nn.Sequential(*layers[:2]), 2
    for j, (_, _, n, _) in enumerate(REMOTE_STAGES, start=1):
        segs[f"stage{j}"], at = nn.Sequential(*layers[at:at + n]), at + n
    segs["head"] = nn.Sequential(*layers[at:])
    return models.SegmentedModel(segs)


class AgileNN(nn.Module):
    """The whole AgileNN: device half (extractor, local predictor, quantiser) and remote predictor.

    Args:
        in_channels, n_classes: of the flag.
        channels: feature channels (24 as in the official code); ``k = round(split_ratio * channels)``
            stay on the device, the other ``channels - k`` are quantised and offloaded.
        stride: of the extractor's first convolution (28x28 images give 14x14 features at 2).
        centroids: quantiser levels (8: 3 bits per offloaded value).
    """

    def __init__(self, in_channels: int, n_classes: int, channels: int = 24, split_ratio: float = 0.2,
                 stride: int = 2, centroids: int = 8):
        super().__init__()
        self.k = split_channels(split_ratio, channels)
        self.channels, self.stride = channels, stride
        self.extractor = FeatureExtractor(in_channels, channels, stride)
        self.local = LocalPredictor(self.k, n_classes)
        self.quantizer = SoftToHardQuantizer(check_centroids(centroids))
        self.remote = RemotePredictor(channels - self.k, n_classes)
        self.mix = nn.Parameter(torch.zeros(2))  # softmax weights of local and remote logits

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.mix, 0)

    def combine(self, local: torch.Tensor, remote: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        return w[0] * local + w[1] * remote

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features, centroid indices of the offloaded channels, local, remote and combined logits."""
        f = self.extractor(x)
        q, idx = self.quantizer(f[:, self.k:])
        local, remote = self.local(f), self.remote(q)
        return {"features": f, "indices": idx, "local": local, "remote": remote, "logits": self.combine(local, remote)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)["logits"]

    def local_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The device's answer alone (graceful degradation when the link is down)."""
        return self.local(self.extractor(x))

    def device_segments(self) -> models.SegmentedModel:
        """The device's networks as segments, for :func:`xaiprune.pruning.prune.profile` (the quantiser is counted apart)."""
        return models.SegmentedModel(OrderedDict(extractor=self.extractor, local=self.local))

    def remote_segments(self) -> models.SegmentedModel:
        return models.SegmentedModel(OrderedDict(remote=self.remote))


class Reference(nn.Module):
    """The frozen reference network: ``stem`` (shaped like :class:`FeatureExtractor`) and ``body``.

    It is trained on images (``body(stem(x))``); AgileNN's importance then reads the features through
    ``body`` alone. The body: two stages of (3x3 conv, BN, SiLU) x 2 at ``widths``, a 2x2 max-pool between
    them, global average pooling and a linear layer (SiLU as in the official EfficientNetV2: its second
    derivative is not zero, which the double backpropagation of training uses).
    """

    def __init__(self, in_channels: int, n_classes: int, channels: int = 24, stride: int = 2,
                 widths: tuple[int, int] = REFERENCE_WIDTHS):
        super().__init__()
        self.stem = FeatureExtractor(in_channels, channels, stride)
        layers: list[nn.Module] = []
        c = channels
        for i, w in enumerate(widths):
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.SiLU()]
                c = w
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        layers.append(models.Head(c, n_classes))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


def permute_channels(ref: Reference, order: torch.Tensor) -> Reference:
    """A copy of ``ref`` whose feature channel ``i`` is the old channel ``order[i]``: the same function, renumbered.

    The stem's last pointwise filters and BatchNorm entries are reordered, and the body's first convolution reads its
    input channels in the new order. AgileNN's extractor starts from the permuted stem, so with ``order`` the channels
    by decreasing importance its first ``k`` channels start as the most important ones (the official code's optional
    "channel remapping", which reorders the extractor's filters the same way).
    """
    new = copy.deepcopy(ref)
    pointwise, bn, first = new.stem[-3], new.stem[-2], new.body[0]
    with torch.no_grad():
        pointwise.weight.copy_(pointwise.weight[order])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(bn, name)[order])
        first.weight.copy_(first.weight[:, order])
    return new


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per image (summed binary cross-entropy over the labels for multi-label y of shape (N, L))."""
    if y.ndim == 2:
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").sum(1)
    return F.cross_entropy(logits, y, reduction="none")


class BaselineGradient:
    """The reference's loss gradient at the zero baseline, once per class.

    With a zero baseline and a frozen reference in eval mode, ``d loss(body(0), y) / d f`` depends only on
    the label, so it is computed once per class (per batch for multi-label tasks, where the label is a vector).
    """

    def __init__(self, body: nn.Module, shape: tuple[int, int, int], n_classes: int):
        self.body, self.shape, self.table = body, shape, None
        self.n_classes = n_classes

    def _grad(self, y: torch.Tensor) -> torch.Tensor:
        f0 = torch.zeros(len(y), *self.shape, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(per_sample_loss(self.body(f0), y).sum(), f0)
        return g

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 2:
            return self._grad(y)
        if self.table is None:
            self.table = self._grad(torch.arange(self.n_classes))
        return self.table[y]


def channel_importance(body: nn.Module, f: torch.Tensor, y: torch.Tensor, baseline: BaselineGradient,
                       create_graph: bool = False) -> torch.Tensor:
    """Per-channel importance (N, C): two-point trapezoid integrated gradients of the loss, zero baseline.

    ``I = sum_{h,w} | (f - 0) * (g(0) + g(f)) / 2 |`` with ``g(z) = d loss(body(z), y) / dz`` (Sundararajan
    et al. 2017 with two trapezoid points, as the official code; Captum's ``riemann_trapezoid`` with 2 steps gives half
    of it, its weights summing to 1/2). ``create_graph=True`` keeps the graph of
    ``g(f)`` so that a loss on ``I`` trains the feature extractor (double backpropagation).
    """
    if not create_graph:
        f = f.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(per_sample_loss(body(f), y).sum(), f, create_graph=create_graph)
    return (0.5 * (baseline(y) + g) * f).abs().sum((2, 3))


def skewness(importance: torch.Tensor, k: int, eps: float = 1e-9) -> torch.Tensor:
    """Share of each image's total importance held by the first ``k`` channels, shape (N,)."""
    return importance[:, :k].sum(1) / (importance.sum(1) + eps)


def skewness_loss(importance: torch.Tensor, k: int, rho: float) -> torch.Tensor:
    """mean over images of max(rho - skewness, 0): zero once the local channels hold a share rho."""
    return torch.relu(rho - skewness(importance, k)).mean()


def disorder_loss(importance: torch.Tensor, k: int, eps: float = 1e-9) -> torch.Tensor:
    """mean over images of max(max remote - min local, 0) / total: zero when every local channel outranks every remote one.

    Per channel, as the reconstruction states the rule (the official code compares single feature values).
    """
    gap = importance[:, k:].max(1).values - importance[:, :k].min(1).values
    return (torch.relu(gap) / (importance.sum(1) + eps)).mean()


def quantizer_flops(n_values: int, n_centroids: int) -> int:
    """FLOPs of quantising ``n_values`` values: a subtraction, a square and a comparison per centroid."""
    return 3 * n_values * n_centroids
