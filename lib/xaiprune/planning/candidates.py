"""The verified answer: the MILP's best few plans under the surrogate, measured on really pruned models.

The accuracy surrogate of :mod:`xaiprune.planning.system` (A_0 * prod rho[s,l], from one segment pruned at a time)
is off by several points on plans that prune several segments, so the surrogate's optimum need not be
the most accurate plan. Only the levels change the prediction (placement changes latency, memory and
energy, never the output), so :func:`top_candidates` finds the k best distinct *level vectors* under the
surrogate, each with its best placement, by no-good cuts on the level variables y[s,l] = sum_j z[s,j,l]:
once the vector l* is found, sum_s y[s, l*_s] <= S - 1 excludes it (with every placement of it) and the
lexicographic MILP is solved again. :func:`choose` measures each candidate (:class:`Measurements`: the
model really pruned as the plan says, evaluated on the validation split, cached by plan) and keeps the
best measured. :func:`design` draws the plans on which the surrogate's own error is measured.
Used by ``05_nlp.ipynb``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from xaiprune import data, train
from xaiprune.planning import nlp
from xaiprune.planning.solution import Result
from xaiprune.planning.system import Profiles, Scenario, evaluate

TOP_K = 4  # candidates measured per instance in 05_nlp (its parameter `n_candidates` once declared)
DESIGN_PLANS = 30  # plans of the surrogate-error design: the L uniform ones, then random ones


def top_candidates(scenario: Scenario, profiles: Profiles, k: int = TOP_K, time_limit: float = 30.0,
                   explain_infeasible: bool = True, first: Result | None = None) -> list[Result]:
    """The ``k`` best distinct level vectors under the surrogate, each with its best placement.

    The first is :func:`xaiprune.planning.nlp.solve_milp`'s answer (returned alone when it has no plan); each next
    one is the lexicographic MILP again with a no-good cut on every level vector found so far. The list is
    in the solver's order (surrogate accuracy, then least pruning, latency, energy); it is shorter than
    ``k`` when no other level vector is feasible or none was found within ``time_limit`` (s, per solve).
    A candidate not proven optimal ("feasible (time limit)") ends the list: what would follow it is
    not known to be next. ``first``: the instance's :func:`~xaiprune.planning.nlp.solve_milp` answer if already
    solved (it is not solved again).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: expected a positive number of candidates")
    found = [first or nlp.solve_milp(scenario, profiles, time_limit, explain_infeasible=explain_infeasible)]
    while len(found) < k and found[-1].status == "optimal":
        start = time.perf_counter()
        model = nlp.MilpModel(scenario, profiles)
        for i, r in enumerate(found):
            model.exclude_levels(r.plan.levels, f"nogood_{i}")
        plan, status = nlp.solve_stages(model, time_limit)
        if plan is None:
            break
        if any(plan.levels == r.plan.levels for r in found):
            raise RuntimeError(f"CBC returned the excluded level vector {plan.levels} (history {model.history})")
        found.append(Result("milp", status, plan, evaluate(plan, scenario, profiles), time.perf_counter() - start,
                            stages=model.history))
    return found


@dataclass
class Verified:
    """Candidates of one instance, their measured accuracy and the chosen one (None: no plan)."""

    candidates: list[Result]
    measured: list[float]   # accuracy of each candidate on the selection split (empty without a plan)
    chosen: int | None

    @property
    def optimum(self) -> Result:
        """What trusting the surrogate alone returns: the MILP's optimum."""
        return self.candidates[0]

    @property
    def result(self) -> Result:
        """The best measured candidate (the optimum's Result when there is no plan)."""
        return self.candidates[self.chosen if self.chosen is not None else 0]


def choose(candidates: list[Result], profiles: Profiles, measure: Callable[[list[float]], float]) -> Verified:
    """Measure every candidate and keep the most accurate; a tie goes to the earlier (surrogate-better) one.

    ``measure`` maps the level of every segment (fractions, the profiles' segment order) to a measured
    accuracy, e.g. :meth:`Measurements.metric` on the validation split.
    """
    if not candidates:
        raise ValueError("candidates is empty: pass the list of top_candidates")
    if candidates[0].plan is None:
        return Verified(candidates, [], None)
    measured = []
    for r in candidates:
        value = float(measure([profiles.levels[l] for l in r.plan.levels]))
        if not math.isfinite(value):
            raise ValueError(f"measure returned {value} for levels {r.plan.levels}: expected a finite accuracy")
        measured.append(value)
    chosen = max(range(len(candidates)), key=lambda i: (measured[i], -i))
    return Verified(candidates, measured, chosen)


def verify(scenario: Scenario, profiles: Profiles, measure: Callable[[list[float]], float], k: int = TOP_K,
           time_limit: float = 30.0, explain_infeasible: bool = True) -> Verified:
    """:func:`top_candidates` then :func:`choose`: the verified answer of one instance."""
    return choose(top_candidates(scenario, profiles, k, time_limit, explain_infeasible), profiles, measure)


def weights_id(model) -> str:
    """Identity of a checkpoint: SHA-256 (first 16 hex digits) of its parameter and buffer values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Measurements:
    """Measured accuracy of really pruned plans, cached by plan.

    ``scoring`` says how a plan is pruned (each segment at its level, filters ranked within the
    segment by ``criterion`` on ``reference``):

    - ``"fixed"``: by the scores of the unpruned model, taken once (:func:`xaiprune.pruning.prune.criterion_scores`,
      then :func:`xaiprune.pruning.prune.prune_with_scores`): the models the sensitivity table of 04 measures
      one segment at a time, and the ones the devices of ``07_distributed`` build for a plan;
    - ``"rescored"``: :func:`xaiprune.pruning.prune.prune_plan`, which scores again after each pruned segment.

    The pruned model is evaluated on one of ``splits`` (name -> :class:`xaiprune.data.Split`) with the
    study's endpoints (:func:`xaiprune.stats.endpoints`: MedMNIST's ACC and AUC, and balanced accuracy),
    in batches of ``batch_size`` images (default: the largest batch whose biggest activation fits
    ``BATCH_BYTES``) without autograd, and from the first segment the plan changes: the unpruned
    model's input to each segment is computed once per split (as far as ``CACHE_BYTES`` allows), since
    pruning never changes earlier segments. The cache key is the level of every segment, the scoring
    and criterion, the reference draw (``seed`` and size), the checkpoint's identity (:func:`weights_id`
    unless ``model_id`` is given) and the split. With ``path`` the cache is read from that JSON file if
    it exists and written after each new measurement. The last ``keep`` pruned models are kept, so a
    plan measured on one split is not pruned again for another.
    """

    SCORING = ("fixed", "rescored")
    BATCH_BYTES = 256 * 2**20  # largest activation of one evaluation batch
    CACHE_BYTES = 512 * 2**20  # cached segment inputs of the unpruned model, per split

    def __init__(self, model, splits: dict, reference, criterion: str = "lrp", seed: int = 0,
                 scoring: str = "fixed", model_id: str | None = None, path: str | Path | None = None,
                 keep: int = TOP_K + 1, batch_size: int | None = None):
        from xaiprune.pruning import prune

        if scoring not in self.SCORING:
            raise ValueError(f"scoring={scoring!r}; expected one of {self.SCORING}")
        self.model, self.splits, self.reference = model.eval(), dict(splits), reference
        self.criterion, self.seed, self.scoring = criterion, int(seed), scoring
        self.model_id = model_id or weights_id(model)
        self.path = Path(path) if path else None
        self.input_shape = tuple(reference.x.shape[1:])
        peak = max(prune.profile(model, self.input_shape)["segment_peak_bytes"].values())
        self.batch_size = batch_size or max(1, int(self.BATCH_BYTES // peak))
        self.scores = None       # per-filter scores of the unpruned model ("fixed"), computed on first use
        self.cache: dict[str, dict[str, float]] = {}
        self.pruned = 0          # models pruned (measurements that needed a new model)
        self.seconds = 0.0       # spent pruning and evaluating
        self.keep = keep
        self._models: OrderedDict[tuple, object] = OrderedDict()  # the last pruned models, by plan
        self._inputs: dict[str, dict[int, list]] = {}  # split -> segment index -> input batches
        if self.path and self.path.is_file():
            self.cache = {e["key"]: e["metrics"] for e in json.loads(self.path.read_text())}

    def key(self, levels: Sequence[float], split: str) -> str:
        """The cache key of a plan (levels per segment, as fractions) on a split."""
        segments = list(self.model.segments)
        if len(levels) != len(segments):
            raise ValueError(f"levels={list(levels)}: expected one level per segment {segments}")
        if split not in self.splits:
            raise ValueError(f"split={split!r}: expected one of {sorted(self.splits)}")
        return json.dumps({"levels": {s: round(float(v), 6) for s, v in zip(segments, levels)},
                           "scoring": self.scoring, "criterion": self.criterion, "reference_seed": self.seed,
                           "reference_size": len(self.reference.y), "model": self.model_id, "split": split},
                          sort_keys=True)

    def pruned_model(self, levels: Sequence[float]):
        """The model pruned as the plan says (kept among the last ``keep``)."""
        from xaiprune.pruning import prune

        plan = tuple(round(float(v), 6) for v in levels)
        if plan not in self._models:
            named = dict(zip(self.model.segments, plan))
            if self.scoring == "rescored":
                pruned = prune.prune_plan(self.model, named, self.criterion, reference=self.reference, seed=self.seed)
            else:
                if self.scores is None:
                    self.scores = prune.criterion_scores(self.model, self.criterion, self.reference, self.input_shape)
                pruned = prune.prune_with_scores(self.model, named, self.scores, self.input_shape)
            self._models[plan] = pruned
            self.pruned += 1
            while len(self._models) > self.keep:
                self._models.popitem(last=False)
        self._models.move_to_end(plan)
        return self._models[plan]

    def measure(self, levels: Sequence[float], split: str) -> dict[str, float]:
        """ACC, balanced accuracy and AUC (:func:`xaiprune.stats.endpoints`) on ``split`` of the model pruned at
        ``levels`` (one fraction per segment). A cached entry lacking one of them is measured again."""
        import torch
        from medmnist import INFO

        from xaiprune import stats, train

        key = self.key(levels, split)
        if not set(stats.ENDPOINTS) <= set(self.cache.get(key, ())):
            started = time.perf_counter()
            model, data = self.pruned_model(levels), self.splits[split]
            inputs = self._segment_inputs(split)
            first = next((s for s, v in enumerate(levels) if v > 0), len(levels) - 1)
            start = max(s for s in inputs if s <= first and self._unchanged(model, s))
            with torch.inference_mode():
                logits = torch.cat([model.run_segments(chunk, start) for chunk in inputs[start]])
            scores = (torch.sigmoid(logits) if train.is_multilabel(data.flag) else torch.softmax(logits, 1)).numpy()
            y = data.y.numpy() if data.y.ndim == 2 else data.y.numpy()[:, None]
            task = INFO[data.flag]["task"]
            self.cache[key] = stats.endpoints(y, scores, task)
            self.seconds += time.perf_counter() - started
            if self.path:
                self.save()
        return self.cache[key]

    def _segment_inputs(self, split: str) -> dict[int, list]:
        """The unpruned model's input to each segment on ``split``, in batches, within ``CACHE_BYTES``."""
        import torch

        if split not in self._inputs:
            chunks, cached, used = list(torch.split(self.splits[split].x, self.batch_size)), {}, 0
            with torch.inference_mode():
                for s, segment in enumerate(self.model.segments.values()):
                    size = sum(c.numel() * c.element_size() for c in chunks)
                    if s > 0 and used + size > self.CACHE_BYTES:
                        break
                    cached[s], used = chunks, used + size * (s > 0)
                    chunks = [segment(c) for c in chunks]
            self._inputs[split] = cached
        return self._inputs[split]

    def _unchanged(self, pruned, start: int) -> bool:
        """Whether segments before ``start`` of ``pruned`` are the unpruned model's (same weights)."""
        import torch

        for name in list(self.model.segments)[:start]:
            a, b = self.model.segments[name].state_dict(), pruned.segments[name].state_dict()
            if a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
                return False
        return True

    def metric(self, split: str, metric: str = "acc") -> Callable[[Sequence[float]], float]:
        """``levels -> measured metric`` on ``split``: the ``measure`` argument of :func:`choose`."""
        from xaiprune.stats import ENDPOINTS

        if metric not in ENDPOINTS:
            raise ValueError(f"metric={metric!r}; expected one of {ENDPOINTS}")
        return lambda levels: self.measure(levels, split)[metric]

    def save(self, path: str | Path | None = None) -> Path:
        """Write every cached measurement as JSON (a list of {key, metrics})."""
        target = Path(path or self.path)
        entries = [{"key": k, "metrics": v} for k, v in sorted(self.cache.items())]
        target.write_text(json.dumps(entries, indent=1))
        return target


def of_the_study(arch: str, flag: str, size: int, data_root: str, n_per_class: int, seed: int,
                 splits: tuple[str, ...] = ("test",), path: str | Path | None = None) -> Measurements:
    """:class:`Measurements` of 02's checkpoint of ``arch`` with 05's reference draw (``n_per_class``, ``seed``) and
    scoring, on ``splits``; ``path``: a saved cache (05's ``measurements.json``) whose plans are not measured again."""
    model = train.trained_models([arch], flag, size)[arch]
    loaded = {s: data.load_split(flag, s, size, data_root or None) for s in dict.fromkeys(["val", *splits])}
    reference = data.reference_set(loaded["val"], n_per_class=n_per_class, seed=seed)
    return Measurements(model, {s: loaded[s] for s in splits}, reference, seed=seed, path=path)


def design(profiles: Profiles, n_plans: int = DESIGN_PLANS, seed: int = 0,
           pool: int = 20000) -> list[tuple[int, ...]]:
    """``n_plans`` level-index vectors on which to measure the surrogate: every uniform one, then random ones.

    The L uniform vectors (every segment at level l) span the pruning range. The random ones span the
    surrogate's range instead: for each of ``n_plans - L`` predictions evenly spaced from the lowest the
    surrogate can make to A_0, the vector whose prediction is nearest (ties drawn at random) among
    ``pool`` seeded draws not chosen yet (each draw: a total pruning drawn uniformly, spread one step at
    a time over random segments not yet at the top level). A network without fine-tuning collapses
    after little pruning, so strata of total pruning would put most plans where the surrogate only
    predicts its floor; spreading the prediction puts them where the solver chooses between plans.
    A grid of at most ``n_plans`` vectors is returned whole, by total pruning. Same profiles and
    arguments, same list.
    """
    S, L = profiles.S, profiles.L
    for name, value in (("n_plans", n_plans), ("pool", pool)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    n_random = max(0, n_plans - L)
    if L ** S <= n_plans:
        return sorted(itertools.product(range(L), repeat=S), key=lambda v: (sum(v), v))
    plans = [tuple([l] * S) for l in range(L)]
    rng = np.random.default_rng(seed)
    drawn = set()
    for total in rng.integers(0, S * (L - 1) + 1, pool):
        levels = [0] * S
        for _ in range(int(total)):
            open_ = [s for s in range(S) if levels[s] < L - 1]
            levels[open_[int(rng.integers(len(open_)))]] += 1
        drawn.add(tuple(levels))
    drawn = sorted(drawn - set(plans))
    predicted = np.array([profiles.accuracy(list(v)) for v in drawn])
    free = np.ones(len(drawn), dtype=bool)
    for target in np.linspace(profiles.accuracy([L - 1] * S), profiles.base_accuracy, n_random):
        if not free.any():
            break
        gap = np.where(free, np.abs(predicted - target), np.inf)
        nearest = np.flatnonzero(gap <= gap.min() + 1e-12)
        pick = int(nearest[rng.integers(len(nearest))])
        plans.append(drawn[pick])
        free[pick] = False
    return plans
