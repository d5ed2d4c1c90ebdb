"""Replay of a served policy's plans with other criteria' filters: offline, exact, request by request.

A device of :mod:`xaiprune.serving` runs the segments :func:`xaiprune.pruning.prune.prune_with_scores` builds from
the checkpoint, the plan's level of every segment and the criterion's fixed per-filter scores (07's
``scores_<criterion>.pt``); nothing else reaches the output. The logits the system returns for a request
are therefore a function of (levels, criterion, test image) alone: placement, links and timing decide
when and where the segments run, never what they compute. :func:`replay` recomputes them on one machine:
for each served request of one policy it takes the plan served (``levels``) and the image
(``test_index``), builds the model pruned at those levels with each criterion's scores, and runs the
image through it. With the served criterion it reproduces the served logits (:func:`max_difference`
checks it); with another, it gives what serving the same plans with that criterion's filters returns.
Same plans, same images, only the filters differ: the comparison isolates the criterion. Latency and
bytes are the served policy's by construction (the pruned segments have the same shapes whichever
filters go), so a replay reports accuracy only.

Each distinct plan is built once per criterion and runs only the images served under it, under
``torch.inference_mode``. The default batch is one image, as on the devices: batches change float
rounding (about 2e-6 in a logit of VGG-16-BN), which is enough to move the AUC of a nearly collapsed
pruned model. :func:`table` gives ACC, balanced accuracy and AUC as 07's summaries of the served policies do
(:func:`xaiprune.stats.endpoints` on the softmax of the logits), so they compare with the served numbers.
Used by ``07_distributed.ipynb``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from xaiprune import data, models, stats
from xaiprune.pruning import prune


@dataclass
class Replay:
    """Replayed logits of one served policy's requests (rows in the served order)."""

    requests: pd.DataFrame         # request, test_index, label (the test split's), levels (tuple) of each row
    logits: dict[str, np.ndarray]  # criterion -> (requests, classes) float32
    built: int                     # pruned models built: distinct plans x criteria
    seconds: float

    @property
    def pruned(self) -> np.ndarray:
        """Whether each request's plan pruned anything (mean level > 0); at level 0 every criterion is the unpruned model."""
        return np.array([np.mean(lv) > 0 for lv in self.requests["levels"]], dtype=bool)


def replay(model: models.SegmentedModel, scores: dict[str, dict[str, torch.Tensor]], segments: Sequence[str],
           input_shape: tuple[int, int, int], test: data.Split, requests: pd.DataFrame,
           criteria: Sequence[str] | None = None, batch_size: int = 1) -> Replay:
    """The logits of every served request of one policy, its plan executed with each criterion's filters.

    ``scores``: criterion -> {conv name: per-filter scores} (``torch.load`` of 07's score files);
    ``segments``: the model's segment names, in the order of each row's ``levels``; ``test``: the split
    the system served, indexed by ``test_index``; ``requests``: one policy's rows of a served run
    (``request``, ``test_index``, ``levels``; ``label`` is checked against ``test`` when present);
    ``criteria``: those to replay, default every one of ``scores``.
    """
    criteria = list(scores) if criteria is None else list(criteria)
    if not criteria or any(c not in scores for c in criteria):
        raise ValueError(f"criteria={criteria}: expected criteria with scores, one of {sorted(scores)}")
    convs = set(models.conv_layers(model))
    for c in criteria:
        if not isinstance(scores[c], dict) or convs - set(scores[c]):
            raise ValueError(f"scores[{c!r}]: expected a dict of per-filter scores for every conv layer {sorted(convs)}")
    if list(segments) != list(model.segments):
        raise ValueError(f"segments={list(segments)}: the model's segments are {list(model.segments)}")
    if tuple(input_shape) != tuple(test.x.shape[1:]):
        raise ValueError(f"input_shape={tuple(input_shape)}: the test images are {tuple(test.x.shape[1:])}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    rows = _rows(requests, len(segments), test)
    start, built, index = time.perf_counter(), 0, torch.as_tensor(rows["test_index"].to_numpy(dtype=np.int64).copy())
    classes = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features  # never pruned
    logits = {c: np.zeros((len(rows), classes), dtype=np.float32) for c in criteria}
    for plan, at in rows.groupby("levels", sort=False).indices.items():
        images = test.x[index[at]]
        for c in criteria:
            pruned = prune.prune_with_scores(model, dict(zip(segments, plan)), scores[c], tuple(input_shape))
            built += 1
            with torch.inference_mode():
                logits[c][at] = torch.cat([pruned(chunk) for chunk in torch.split(images, batch_size)]).numpy()
    return Replay(rows, logits, built, time.perf_counter() - start)


def _rows(requests: pd.DataFrame, n_segments: int, test: data.Split) -> pd.DataFrame:
    """request, test_index, label and levels (a tuple) of each row of ``requests``, each checked."""
    absent = [c for c in ("request", "test_index", "levels") if c not in requests]
    if absent:
        raise ValueError(f"requests: no column {absent}; expected the rows of a served run (requests.jsonl)")
    if "policy" in requests and requests["policy"].nunique() > 1:
        raise ValueError(f"requests holds policies {list(requests['policy'].unique())}: expected one policy's rows")
    rows = pd.DataFrame({"request": requests["request"].to_numpy(), "test_index": requests["test_index"].to_numpy(),
                         "levels": [tuple(round(float(v), 6) for v in lv) for lv in requests["levels"]]})
    for t, lv, i in zip(rows["request"], rows["levels"], rows["test_index"]):
        if len(lv) != n_segments or not all(0 <= v < 1 for v in lv):
            raise ValueError(f"levels of request {t}: {list(lv)}; expected {n_segments} fractions in [0, 1), one per segment")
        if not 0 <= int(i) < len(test):
            raise ValueError(f"test_index of request {t}: {i}; the test split has {len(test)} images")
    rows["label"] = test.y.numpy()[rows["test_index"].to_numpy(dtype=np.int64)]
    if "label" in requests and not np.array_equal(requests["label"].to_numpy(), rows["label"].to_numpy()):
        raise ValueError("label: the requests' labels differ from the test split's at test_index (another split served?)")
    return rows


def metrics(logits: np.ndarray, labels: np.ndarray, flag: str) -> dict[str, float]:
    """ACC, balanced accuracy and AUC (:func:`xaiprune.stats.endpoints`) of the softmax of ``logits``, as 07's
    summaries compute them; NaN where undefined (no request; AUC of one class)."""
    from medmnist import INFO

    if len(labels) == 0:
        return {k: float("nan") for k in stats.ENDPOINTS}
    y = np.asarray(labels)[:, None]
    probs = torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1).numpy()
    out = stats.endpoints(y, probs, INFO[flag]["task"])
    return {**out, "auc": out["auc"] if len(np.unique(y)) > 1 else float("nan")}


def table(rep: Replay, flag: str) -> pd.DataFrame:
    """One row per criterion: ACC, balanced accuracy and AUC over every replayed request, and over those whose plan
    pruned (``*_pruned``)."""
    labels, pruned = rep.requests["label"].to_numpy(), rep.pruned
    rows = []
    for c, logits in rep.logits.items():
        every, where = metrics(logits, labels, flag), metrics(logits[pruned], labels[pruned], flag)
        rows.append({"criterion": c, **every, **{f"{k}_pruned": v for k, v in where.items()},
                     "requests": len(labels), "pruned_requests": int(pruned.sum()),
                     "distinct_plans": int(rep.requests["levels"].nunique())})
    return pd.DataFrame(rows).set_index("criterion")


def max_difference(rep: Replay, requests: pd.DataFrame, criterion: str) -> float:
    """Largest |replayed - served| logit over the requests ``rep`` replayed, ``criterion`` being the one served."""
    if criterion not in rep.logits:
        raise ValueError(f"criterion={criterion!r}: not replayed; the replay has {sorted(rep.logits)}")
    if "criterion" in requests and set(requests["criterion"]) != {criterion}:
        raise ValueError(f"criterion={criterion!r}: the requests were served with {sorted(set(requests['criterion']))}")
    served = np.array(requests["logits"].tolist(), dtype=np.float64)
    if served.shape != rep.logits[criterion].shape or list(requests["request"]) != list(rep.requests["request"]):
        raise ValueError("requests: not the rows that were replayed (other requests, order or number of logits)")
    return float(np.abs(served - rep.logits[criterion]).max()) if served.size else 0.0


def wrong_answers(model: models.SegmentedModel, scores: dict[str, dict[str, torch.Tensor]], segments: Sequence[str],
                  input_shape: tuple[int, int, int], test: data.Split, requests: pd.DataFrame,
                  tolerance: float = 1e-4) -> dict[str, dict]:
    """Per policy of a served run, its answered requests whose logits differ from the single-process reference by more
    than ``tolerance``: each request's plan built on one machine from the same checkpoint and its criterion's scores
    and run on the same image (:func:`replay`). A fault may delay, re-route or repeat a request; it must never change
    its answer. Returns ``wrong_answers``, ``answers`` and the largest |difference| (``max_logit_difference``)."""
    out = {}
    for name, served in requests.groupby("policy", sort=False):
        served = served.sort_values("request")
        criterion = served["criterion"].iloc[0]
        rep = replay(model, scores, segments, input_shape, test, served, criteria=[criterion])
        diff = np.abs(np.array(served["logits"].tolist(), dtype=np.float64) - rep.logits[criterion]).max(axis=1)
        out[name] = {"answers": int(len(diff)), "wrong_answers": int((diff > tolerance).sum()),
                     "max_logit_difference": float(diff.max()) if len(diff) else 0.0}
    return out
