"""Link fades: their shapes, random draws of them, and the bandwidth overlay they make.

A fade multiplies the bandwidth of some links by a factor that falls from 1 to ``depth`` and comes back,
over ``length`` requests from ``start``. Either every link fades together (``links="all"``: the ward's
access point is congested or the ward moves) or one pair of devices (both directions: a bedside device
behind a door). Shapes, in log space over the event's fraction x in [0, 1]:

- ``ramp``: geometric fall over the first 30%, a hold, geometric recovery over the last 25% (the kind of
  fade of :func:`xaiprune.planning.env.fade_trace`, which 06's trace figure and 07 replay; its breakpoints are fractions
  of the whole trace, these of the event);
- ``cosine``: log m = log(depth) * (1 - cos 2 pi x) / 2, a smooth trough;
- ``dip``: a V, geometric down to ``depth`` at the middle and back;
- ``step``: an abrupt drop to ``depth`` for the whole event.

The sequential agent trains on :data:`TRAINING_SHAPES` only and is judged on :data:`HELD_OUT_SHAPES`
(with dynamics seeds never used in training). :func:`overlay` turns fades into a (T, N, N) array of
multipliers that :class:`xaiprune.planning.env.WardEnv` applies on top of its own random walk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("ramp", "cosine", "dip", "step")
TRAINING_SHAPES = ("dip", "step")
HELD_OUT_SHAPES = ("ramp", "cosine")


def shape(name: str, length: int, depth: float) -> np.ndarray:
    """Multipliers (length,) of one fade: 1 -> ``depth`` -> 1 in the named shape (see the module docstring)."""
    if name not in SHAPES:
        raise ValueError(f"shape={name!r}: expected one of {SHAPES}")
    if length < 1 or not 0 < depth <= 1:
        raise ValueError(f"length={length}, depth={depth}: expected length >= 1 and 0 < depth <= 1")
    x = (np.arange(length) + 0.5) / length
    if name == "ramp":
        frac = np.clip(np.minimum(x / 0.3, (1 - x) / 0.25), 0, 1)
    elif name == "cosine":
        frac = (1 - np.cos(2 * np.pi * x)) / 2
    elif name == "dip":
        frac = 1 - np.abs(2 * x - 1)
    else:
        frac = np.ones(length)
    return depth ** frac


@dataclass(frozen=True)
class Fade:
    """One fade: from request ``start`` for ``length`` requests, down to ``depth``, on ``links``."""

    start: int
    length: int
    depth: float
    shape: str
    links: str | tuple[int, int] = "all"   # "all", or a pair of devices (both directions fade)


def overlay(T: int, n: int, fades: list[Fade]) -> np.ndarray:
    """(T, n, n) bandwidth multipliers of ``fades`` over T requests (1 where none acts; overlapping ones multiply)."""
    out = np.ones((T, n, n))
    for f in fades:
        m = shape(f.shape, f.length, f.depth)
        stop = min(T, f.start + f.length)
        if stop <= f.start:
            continue
        m = m[: stop - f.start]
        if f.links == "all":
            out[f.start:stop] *= m[:, None, None]
        else:
            a, b = f.links
            out[f.start:stop, a, b] *= m
            out[f.start:stop, b, a] *= m
    return out


@dataclass(frozen=True)
class Randomisation:
    """How training wards are drawn (domain randomisation), one draw per ward run.

    Each run gets, with probability ``p_all``, a fade of every link and, with ``p_single``, a fade of one
    random pair; with ``p_patchy``, every pair fades on its own (its own depth, timing and shape: links that
    differ widely, as a coordinator's estimates do when some links were measured recently and others long
    ago). Depths log-uniform in ``depth``, lengths uniform in ``length`` (fractions of the run), starts
    uniform, shapes from ``shapes``. The dynamics' dropout probability is drawn uniform in
    ``p_drop`` (devices go down, batteries drain, priorities vary by the ward's own :class:`~xaiprune.planning.env.Dynamics`).
    """

    shapes: tuple[str, ...] = TRAINING_SHAPES
    p_all: float = 0.7
    p_single: float = 0.4
    p_patchy: float = 0.3
    depth: tuple[float, float] = (5e-4, 0.5)
    length: tuple[float, float] = (0.2, 0.7)
    p_drop: tuple[float, float] = (0.0, 0.08)

    def validate(self) -> "Randomisation":
        if not self.shapes or set(self.shapes) - set(SHAPES):
            raise ValueError(f"shapes={self.shapes}: expected a non-empty subset of {SHAPES}")
        for name in ("p_all", "p_single", "p_patchy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a probability")
        lo, hi = self.depth
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"depth={self.depth}: expected 0 < low <= high <= 1")
        if not 0 < self.length[0] <= self.length[1] <= 1:
            raise ValueError(f"length={self.length}: expected fractions 0 < low <= high <= 1")
        if not 0 <= self.p_drop[0] <= self.p_drop[1] <= 1:
            raise ValueError(f"p_drop={self.p_drop}: expected probabilities low <= high")
        return self

    def draw(self, rng: np.random.Generator, T: int, n: int) -> tuple[list[Fade], float]:
        """The fades of one run of T requests on n devices, and its dropout probability."""
        def one(links) -> Fade:
            length = max(1, int(round(T * rng.uniform(*self.length))))
            start = int(rng.integers(0, max(1, T - length + 1)))
            depth = float(np.exp(rng.uniform(np.log(self.depth[0]), np.log(self.depth[1]))))
            return Fade(start, length, depth, str(rng.choice(self.shapes)), links)

        fades = []
        if rng.random() < self.p_all:
            fades.append(one("all"))
        if rng.random() < self.p_single:
            fades.append(one(tuple(int(d) for d in rng.choice(n, 2, replace=False))))
        if rng.random() < self.p_patchy:
            fades += [one((a, b)) for a in range(n) for b in range(a + 1, n)]
        return fades, float(rng.uniform(*self.p_drop))


def held_out(rng: np.random.Generator, T: int, depth: float, spread: float = 3.0,
             shapes: tuple[str, ...] = HELD_OUT_SHAPES) -> Fade:
    """A held-out fade of every link over the middle half of T requests, its depth log-uniform within
    ``depth`` / ``spread`` .. ``depth`` * ``spread`` (at most 1), its shape from ``shapes``."""
    if T < 4:
        raise ValueError(f"T={T}: expected at least 4 requests for a fade window")
    lo, hi = np.log(depth / spread), np.log(min(1.0, depth * spread))
    d = float(np.exp(rng.uniform(lo, hi)))
    start = int(rng.integers(T // 8, T // 4 + 1))
    length = int(rng.integers(T // 3, T // 2 + 1))
    return Fade(start, min(length, T - start), d, str(rng.choice(shapes)), "all")
