"""DyFiP: an early branch picks the likely classes, then only their filters run (the project's reconstruction).

Sabih, Hannig and Teich, "DyFiP: Explainable AI-based Dynamic Filter Pruning of Convolutional Neural
Networks", EuroMLSys 2022, https://doi.org/10.1145/3517207.3526982. The full text is not available here;
this is the project's reconstruction, from the abstract and the authors' earlier work:

1. a frozen base classifier (trained by :func:`xaiprune.train.train_or_load`), cut after block ``b``;
2. a small **branch** (:class:`BranchHead`: 1x1 conv, BN, ReLU, global average pool, linear) trained on
   the frozen features of the train split for top-``k`` (:func:`branch_loss`: cross-entropy plus Lapin et al.'s
   truncated top-k entropy); if its top-1 probability is at least ``tau_exit`` the image exits with the
   branch's label (:func:`exits`), otherwise its top-``k`` classes are the candidates (:func:`candidate_sets`);
3. class-specific filter relevance and subset scores (:mod:`xaiprune.dyfip.subnets`);
4. the tail pruned to the candidates' filters, cached per candidate set, its logits restricted to the
   candidates (:func:`restrict`).

Departure (recorded in the notebook): without fine-tuning the thinned tails collapse, so the
default re-estimates each sub-network's BatchNorm statistics on the reference images of its candidate
classes when it is built (:data:`REFRESH`; ``"none"`` is the plain reconstruction). No weight changes.

:class:`Engine` holds one split's features, one branch's probabilities and the frozen tail, and evaluates
the policies that need no sub-network per candidate set (the full model, early exit, static pruning with
the XAI criterion or L1); :mod:`xaiprune.dyfip.evaluation` runs the dynamic ones (and the ablations whose tail
ignores the candidates, :data:`AGNOSTIC`) over branch seeds and random draws. FLOPs by :func:`xaiprune.pruning.prune.profile`; ACC, balanced accuracy and AUC by
:func:`xaiprune.stats.endpoints`. Used by ``08_dyfip.ipynb``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xaiprune import data, models, names as study_names, stats, train
from xaiprune.dyfip import subnets
from xaiprune.pruning import prune, repairs

REFRESH = ("candidates", "all", "none")  # BN statistics of a sub-network from the candidates' reference images, all, or none
AGNOSTIC = ("xai_total", "random_agnostic")  # filter scores that ignore the candidate set: one choice of filters for all
RANDOM = ("random", "random_agnostic")  # random filter scores: each branch seed draws its own


def multiclass(flag: str) -> bool:
    """A single-label flag with more than two classes: the only kind where top-k candidates prune anything."""
    info = data.info(flag)
    return info["task"] != "multi-label, binary-class" and len(info["label"]) > 2


def base_config(arch: str, flag: str, size: int, epochs: int, seed: int) -> train.TrainConfig:
    """The base classifier's training config: as ``02_train`` trains it, so the same flag and epochs reuse 02's
    checkpoint (the hospital-wide model with balanced draws, any other flag without)."""
    return train.TrainConfig(arch=arch, flag=flag, size=size, epochs=epochs, seed=seed,
                             balance=flag == study_names.HOSPITAL).validate()


def check_setting(flag: str, size: int, n_segments: int, ks: list, keeps: list, taus: list, branch_block: int,
                  name: str = "dyfip_flag") -> None:
    """Refuse a setting before any training, naming the parameter (the schema of ``08_dyfip`` checks the same)."""
    data.check_flag_size(flag, size)
    info = data.info(flag)
    n = len(info["label"])
    problems = []
    if not multiclass(flag):
        problems.append(f"{name}={flag!r}: expected a single-label flag with more than 2 classes ({flag} has {n} "
                        f"{'labels (multi-label)' if info['task'].startswith('multi-label') else 'classes'}; "
                        "top-k of 2 classes prunes nothing)")
    elif not ks or any(not 1 <= k < n for k in ks):
        problems.append(f"ks={ks}: expected each k with 1 <= k < {n}, the number of classes of {flag}")
    if not keeps or any(isinstance(v, bool) or not 0 < v <= 1 for v in keeps):
        problems.append(f"keeps={keeps}: expected fractions of filters in (0, 1]")
    if not taus or any(not 0 < v <= 1 for v in taus):
        problems.append(f"taus={taus}: expected probabilities in (0, 1] (1.0 never exits)")
    if not 1 <= branch_block < n_segments:
        problems.append(f"branch_block={branch_block}: expected 1 <= branch_block < {n_segments} (segments of the model; "
                        "at least one must follow the branch)")
    if problems:
        raise ValueError("; ".join(problems))


# ----- the branch ----------------------------------------------------------------------------------
class BranchHead(nn.Module):
    """The coarse branch: 1x1 conv (``width`` filters), BatchNorm, ReLU, global average pool, linear."""

    def __init__(self, c_in: int, n_classes: int, width: int = 128):
        super().__init__()
        self.conv = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.head = models.Head(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.bn(self.conv(x))))


def topk_entropy(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Lapin, Hein and Schiele's truncated top-k entropy loss (CVPR 2016), mean over the batch.

    With ``a_j = z_j - z_y`` for the classes ``j != y`` sorted so that ``a_[1] >= a_[2] >= ...``, the loss is
    ``log(1 + sum_{j >= k} exp(a_[j]))``: the ``k - 1`` strongest rivals are free, so it is low once the true
    class is among the top ``k``. ``k = 1`` is the cross-entropy.
    """
    rivals = (logits - logits.gather(1, y[:, None])).scatter(1, y[:, None], float("-inf"))
    rest = rivals.sort(dim=1, descending=True).values[:, k - 1:]
    return torch.logsumexp(torch.cat([torch.zeros_like(rest[:, :1]), rest], dim=1), dim=1).mean()


def branch_loss(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The branch's objective: cross-entropy (the exit rule reads the top-1 probability) plus the truncated
    top-``k`` entropy (the candidates are the top ``k``; :func:`topk_entropy`); ``k = 1``: cross-entropy alone."""
    ce = nn.functional.cross_entropy(logits, y)
    return ce if k == 1 else ce + topk_entropy(logits, y, k)


def train_branch(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 n_classes: int, width: int = 128, epochs: int = 40, seed: int = 0, lr: float = 1e-3,
                 batch_size: int = 128, k: int = 1, weights: torch.Tensor | None = None) -> tuple[BranchHead, list[dict]]:
    """Train a :class:`BranchHead` on frozen features (N x C x H x W) for top-``k`` (:func:`branch_loss`) with Adam.

    Seeded and deterministic. ``weights`` (per training image, e.g. :func:`xaiprune.train.sampling_weights`):
    each epoch draws ``N`` images with replacement in proportion to them; None shuffles. The epoch with the lowest
    validation objective is kept (the exit rule reads the probabilities, so calibration matters more than
    ranking). Returns it in eval mode and the per-epoch history.
    """
    with train.deterministic():
        torch.manual_seed(seed)
        head = BranchHead(train_x.shape[1], n_classes, width)
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
        gen, history, best = torch.Generator().manual_seed(seed), [], (float("inf"), None)
        for epoch in range(epochs):
            head.train()
            order = (torch.randperm(len(train_x), generator=gen) if weights is None else
                     torch.multinomial(weights.double(), len(train_x), replacement=True, generator=gen))
            for idx in order.split(batch_size):
                loss = branch_loss(head(train_x[idx]), train_y[idx], k)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            head.eval()
            with torch.no_grad():
                logits = head(val_x)
            val_loss = float(branch_loss(logits, val_y, k))
            history.append({"epoch": epoch + 1, "val_loss": val_loss,
                            "val_acc": float((logits.argmax(1) == val_y).float().mean())})
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy(head.state_dict()))
        head.load_state_dict(best[1])
    return head.eval(), history


def exits(probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Images that exit at the branch: top-1 probability at least ``tau`` (``tau == 1`` never exits)."""
    top = probs.max(dim=1).values
    return top >= float(tau) if tau < 1 else torch.zeros_like(top, dtype=torch.bool)


def candidate_sets(probs: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """Each image's top-``k`` classes as a sorted tuple (the key of its sub-network)."""
    return [tuple(sorted(row.tolist())) for row in probs.topk(k, dim=1).indices]


def oracle_sets(probs: torch.Tensor, y: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """The top-``k`` with the true class forced in (replacing the k-th candidate when missing): the branch's upper bound."""
    out = []
    for row, label in zip(probs.topk(k, dim=1).indices.tolist(), y.tolist()):
        out.append(tuple(sorted(row if label in row else row[:-1] + [label])))
    return out


def topk_recall(probs: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Fraction of images whose true class is among the branch's top ``k``."""
    return float((probs.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean())


def restrict(logits: torch.Tensor, sets: list[tuple[int, ...]]) -> torch.Tensor:
    """``logits`` with every class outside the image's candidate set at -inf (its softmax is 0 there)."""
    mask = torch.full_like(logits, float("-inf"))
    for i, s in enumerate(sets):
        mask[i, list(s)] = 0
    return logits + mask


# ----- evaluation ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Per-image probabilities (N x classes) and MACs of one policy on one split."""

    probs: np.ndarray
    macs: np.ndarray
    exited: np.ndarray


class Engine:
    """One split's features and one branch's probabilities, with the frozen tail, its relevance and sub-networks.

    Args:
        model: the frozen base classifier (never modified).
        block: the branch follows this segment (1-based).
        branch: the trained :class:`BranchHead`.
        relevance: :func:`xaiprune.dyfip.subnets.class_relevance` of ``model``.
        reference: the reference set (its images re-estimate BN statistics, see :data:`REFRESH`).
        split: the evaluation split (validation to choose, test to report, in ``08_dyfip``).
        aggregate: ``"max"`` or ``"sum"`` over the candidate classes.
        seed: seeds the random-filter baseline (draw ``d`` uses ``seed + d``, per candidate set).
    :meth:`with_branch` gives the same engine with another branch (the features are computed once).
    """

    def __init__(self, model: models.SegmentedModel, block: int, branch: BranchHead, relevance: dict,
                 reference: data.Split, split: data.Split, aggregate: str = "max", seed: int = 0, branch_id: int = 0):
        self.model, self.branch, self.relevance, self.aggregate, self.seed = model.eval(), branch.eval(), relevance, aggregate, seed
        self.branch_id = branch_id
        self.prefix, self.tail = subnets.split_model(model, block)
        self.split, self.task = split, data.info(split.flag)["task"]
        self.y = split.y.numpy()[:, None]
        input_shape = tuple(split.x.shape[1:])
        with torch.inference_mode():
            self.features = torch.cat([self.prefix(c) for c in split.x.split(256)])
            self.ref_features = self.prefix(reference.x)
            self.branch_probs = torch.softmax(branch(self.features), dim=1)
            self.full_logits = torch.cat([self.tail(c) for c in self.features.split(256)])
        self.reference = reference
        self.builder = subnets.SubnetBuilder(self.tail, tuple(self.features.shape[1:]))
        self.prefix_macs = subnets.macs(self.prefix, input_shape)
        self.branch_macs = subnets.macs(models.SegmentedModel({"branch": branch}), self.builder.input_shape)
        self.full_macs = self.prefix_macs + self.builder.full_macs
        self._static_macs: dict[tuple[str, float], int] = {}
        self.build_seconds: list[float] = []

    def with_branch(self, branch: BranchHead, branch_id: int = 0) -> "Engine":
        """This engine (features, tail, sub-network builder shared) with ``branch``'s probabilities instead; its random
        draws are its own (``branch_id`` enters their seeds)."""
        other = copy.copy(self)
        other.branch, other.branch_id = branch.eval(), branch_id
        with torch.inference_mode():
            other.branch_probs = torch.softmax(branch(self.features), dim=1)
        other.branch_macs = subnets.macs(models.SegmentedModel({"branch": branch}), self.builder.input_shape)
        return other

    # -- sub-networks --
    def scores(self, selection: str, classes: tuple[int, ...] | None, draw: int = 0) -> dict[str, torch.Tensor]:
        """Filter scores: ``xai`` for a candidate set, ``random`` (seeded by the set and the draw), or, ignoring the set
        (:data:`AGNOSTIC`), ``random_agnostic`` (seeded by the draw alone), ``xai_total`` (every class's relevance
        summed) or ``l1``."""
        if selection == "xai":
            return subnets.subset_scores(self.relevance, classes, self.aggregate)
        if selection in RANDOM:  # one stream per (seed, branch, draw, kind and, if class-specific, candidate set)
            chosen = tuple(classes) if selection == "random" and classes else ()
            key = int(np.random.SeedSequence([self.seed, self.branch_id, draw, RANDOM.index(selection), *chosen])
                      .generate_state(1)[0])
            gen = torch.Generator().manual_seed(key)
            return {layer: torch.rand(rows.shape[1], generator=gen) for layer, rows in self.relevance.items()}
        if selection == "xai_total":
            return {layer: rows.sum(0) for layer, rows in self.relevance.items()}
        if selection == "l1":
            return prune.criterion_scores(self.tail, "l1", input_shape=self.builder.input_shape)
        raise ValueError(f"selection={selection!r}; expected 'xai', 'random', 'random_agnostic', 'xai_total' or 'l1'")

    def build(self, selection: str, classes: tuple[int, ...] | None, keep: float, draw: int = 0) -> tuple[nn.Module, int]:
        """The tail pruned for ``classes`` at ``keep`` by ``selection``'s scores (timed), and its MACs."""
        start = time.perf_counter()
        net = self.builder.build(self.builder.plan(self.scores(selection, classes, draw), keep))
        self.build_seconds.append(time.perf_counter() - start)
        return net, self.builder.macs(net)

    def refresh(self, subnet: nn.Module, classes: tuple[int, ...] | None, mode: str) -> nn.Module:
        """``subnet`` with BN statistics re-estimated on reference images (:data:`REFRESH`); weights untouched."""
        if mode not in REFRESH:
            raise ValueError(f"refresh={mode!r}; expected one of {REFRESH}")
        if mode == "none":
            return subnet
        x = self.ref_features
        if mode == "candidates" and classes is not None:
            inside = torch.isin(self.reference.y, torch.as_tensor(classes))
            x = x[inside] if int(inside.sum()) >= 2 else x  # a BN needs two values per channel
        return repairs.reestimate_batchnorm(subnet, x)

    def run(self, net: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """``net``'s logits on the features of the images ``idx``."""
        with torch.inference_mode():
            return torch.cat([net(self.features[c]) for c in idx.split(256)])

    # -- policies --
    def outcome(self, logits: torch.Tensor, tail_macs: np.ndarray, exited: torch.Tensor) -> Outcome:
        """The answers: the branch's probabilities where the image ``exited``, else the softmax of the tail ``logits``."""
        probs = torch.softmax(logits, dim=1)
        probs[exited] = self.branch_probs[exited]
        macs = np.where(exited.numpy(), 0, tail_macs) + self.prefix_macs + self.branch_macs
        return Outcome(probs.numpy(), macs, exited.numpy())

    def full(self) -> Outcome:
        """The full model: no branch, the whole tail for every image."""
        n = len(self.y)
        return Outcome(torch.softmax(self.full_logits, 1).numpy(), np.full(n, self.full_macs), np.zeros(n, dtype=bool))

    def exit_only(self, tau: float) -> Outcome:
        """The branch's early exit, then the full tail for the rest (``tau`` 1: the full model; 0: the branch alone)."""
        return self.outcome(self.full_logits.clone(), np.full(len(self.y), self.builder.full_macs), exits(self.branch_probs, tau))

    def full_restricted(self, k: int, tau: float) -> Outcome:
        """Early exit, then the *unpruned* tail with its logits restricted to the top-k: what the branch alone costs."""
        logits = restrict(self.full_logits.clone(), candidate_sets(self.branch_probs, k))
        return self.outcome(logits, np.full(len(self.y), self.builder.full_macs), exits(self.branch_probs, tau))

    def static(self, criterion: str, keep: float, modes: list[str]) -> dict[str, Outcome]:
        """The tail pruned once (``xai_total`` or ``l1`` scores, every layer keeping ``keep``), no branch, per mode."""
        net, n = self.build(criterion, None, keep)
        self._static_macs[criterion, keep] = n
        everyone, none = torch.arange(len(self.y)), np.zeros(len(self.y), dtype=bool)
        return {m: Outcome(torch.softmax(self.run(self.refresh(net, None, m), everyone), 1).numpy(),
                           np.full(len(self.y), self.prefix_macs + n), none) for m in modes}

    def static_macs(self, criterion: str, keep: float) -> int:
        if (criterion, keep) not in self._static_macs:
            self._static_macs[criterion, keep] = self.build(criterion, None, keep)[1]
        return self.prefix_macs + self._static_macs[criterion, keep]

    def matched_keep(self, budget_macs: float, steps: int = 10, criterion: str = "l1") -> float:
        """The largest ``keep`` (bisection to 2^-steps) whose static model costs at most ``budget_macs``.

        A model's FLOPs depend only on how many filters each layer keeps, not on which, so one bisection
        (with ``criterion``'s models) serves every static criterion.
        """
        if self.static_macs(criterion, 1.0) <= budget_macs:
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(steps):
            mid = round((lo + hi) / 2, 6)
            lo, hi = (mid, hi) if self.static_macs(criterion, mid) <= budget_macs else (lo, mid)
        return max(lo, 1e-6)

    def metrics(self, out: Outcome) -> dict:
        """ACC, balanced accuracy and AUC (:func:`xaiprune.stats.endpoints`), mean and max FLOPs relative to the full
        model, exit rate."""
        return {**stats.endpoints(self.y, out.probs, self.task),
                "mean_flops_ratio": float(out.macs.mean() / self.full_macs),
                "max_flops_ratio": float(out.macs.max() / self.full_macs), "exit_rate": float(out.exited.mean())}
