"""One DyFiP study of one flag, step by step: ``08_dyfip`` runs its main flag section by section and its second flag
whole (:meth:`Run.all`), through the same steps.

The steps, in order (each records its choices, all on the validation split, through ``choices.made``):

1. :meth:`Run.base`: the base classifier (:func:`~xaiprune.dyfip.core.base_config`, trained or read from 02's
   cache), the splits and the test split's majority rate;
2. :meth:`Run.reference`: the reference images (the study's scarce-class rule);
3. :meth:`Run.branches`: the frozen prefix's features, ``branch_seeds`` branches for every ``k`` of ``ks`` (the
   objective depends on ``k``), the class-specific relevance (cached), one engine per branch on validation;
4. :meth:`Run.validate`: the validation grid (k x keep x tau) and the operating point by
   :data:`~xaiprune.dyfip.evaluation.RULE`;
5. :meth:`Run.test`: every policy at that point on the test split, once, and the static models at equal FLOPs;
6. :meth:`Run.serve`: every candidate set's sub-network built ahead of time, the whole test split served one
   image at a time by each policy, the worst case measured;
7. :meth:`Run.judge`: the claim's comparisons (:func:`~xaiprune.dyfip.analysis.claim`);
8. :meth:`Run.check`: the checks that can fail.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from xaiprune import data, models, train
from xaiprune.dyfip import analysis, core, evaluation, serve, subnets


@dataclass(frozen=True)
class Setting:
    """What a run of one flag needs: the notebook's parameters (``08_dyfip``), for that flag."""

    flag: str
    size: int
    data_root: str | None
    seed: int
    arch: str
    n_per_class: int
    base_epochs: int
    method: str
    aggregate: str
    branch_block: int
    branch_width: int
    branch_epochs: int
    branch_seeds: int
    random_draws: int
    ks: tuple[int, ...]
    bn_refresh: str
    keeps: tuple[float, ...]
    taus: tuple[float, ...]
    latency_images: int

    def check(self, name: str = "dyfip_flag") -> "Setting":
        """Refuse the setting before any training (:func:`~xaiprune.dyfip.core.check_setting`), naming ``name``."""
        n_segments = len(models.build(self.arch, 1, len(data.class_names(self.flag))).segments)
        core.check_setting(self.flag, self.size, n_segments, list(self.ks), list(self.keeps), list(self.taus),
                           self.branch_block, name)
        return self


class Run:
    """The steps of one flag's study; each stores what it computed as attributes and returns the run."""

    def __init__(self, setting: Setting, choices, margin: float, declared: dict):
        self.s, self.choices, self.margin, self.declared = setting, choices, margin, declared
        self.names = data.class_names(setting.flag)

    def base(self) -> "Run":
        s = self.s
        self.config = core.base_config(s.arch, s.flag, s.size, s.base_epochs, s.seed)
        self.trained = train.train_or_load(self.config, s.data_root)
        self.model = self.trained.model.eval()
        self.splits = {name: data.load_split(s.flag, name, s.size, s.data_root) for name in ("train", "val", "test")}
        self.choices.made(f"{s.flag}: base classifier's epoch (validation)", self.splits["val"])
        self.majority = train.majority_rate(self.splits["test"])
        return self

    def reference(self) -> "Run":
        self.ref = data.reference_set(self.splits["val"], self.s.n_per_class, seed=self.s.seed)
        self.choices.made(f"{self.s.flag}: reference images (relevance, BatchNorm refresh)", self.ref)
        return self

    def branches(self) -> "Run":
        s, train_split, val = self.s, self.splits["train"], self.splits["val"]
        prefix, _ = subnets.split_model(self.model, s.branch_block)
        features = {n: evaluation.features(prefix, self.splits[n]) for n in ("train", "val")}
        weights = train.sampling_weights(train_split)
        self.trained_branches = {k: [core.train_branch(features["train"], train_split.y, features["val"], val.y,
                                                       len(self.names), s.branch_width, s.branch_epochs, s.seed + j,
                                                       k=k, weights=weights) for j in range(s.branch_seeds)]
                                 for k in s.ks}
        self.choices.made(f"{s.flag}: branch's epoch (lowest validation objective, per k and seed)", val)
        key = train.cache_key(self.config)
        self.relevance_cached = subnets.relevance_file(key, self.ref, s.method).is_file()
        start = time.perf_counter()
        self.relevance = subnets.class_relevance(self.model, self.ref, s.method, key=key)
        self.relevance_seconds = time.perf_counter() - start
        self.val_engines = self.engines(val)
        self.val_recall = {k: evaluation.recall(e, len(self.names)) for k, e in self.val_engines.items()}
        return self

    def engines(self, split: data.Split) -> dict[int, list[core.Engine]]:
        branches = {k: [b for b, _ in runs] for k, runs in self.trained_branches.items()}
        return evaluation.engines_by_k(self.model, self.s.branch_block, branches, self.relevance, self.ref, split,
                                       self.s.aggregate, self.s.seed)

    def validate(self) -> "Run":
        s = self.s
        self.val_grid = evaluation.grid(self.val_engines, sorted(s.keeps), sorted(s.taus), s.bn_refresh)
        self.means = evaluation.seed_means(self.val_grid)
        e0 = next(iter(self.val_engines.values()))[0]
        self.val_full = e0.metrics(e0.full())
        self.point = evaluation.choose(self.means, self.val_full["bal_acc"], self.margin)
        self.choices.made(f"{s.flag}: operating point (k, keep, tau_exit)", self.splits["val"])
        return self

    @property
    def k(self) -> int:
        return self.point["k"]

    def test(self) -> "Run":
        s, p = self.s, self.point
        self.test_engines = self.engines(self.splits["test"])[self.k]
        self.outcomes = evaluation.at_point(self.test_engines, self.k, p["keep"], p["tau_exit"], s.bn_refresh,
                                            s.random_draws)
        e0 = self.test_engines[0]
        self.static_keep, static = evaluation.static_at(e0, p["val_mean_flops_ratio"], sorted({"none", s.bn_refresh}))
        self.choices.made(f"{s.flag}: static models' keep (matched to the chosen point's validation FLOPs)", self.splits["val"])
        self.summaries = analysis.summaries(e0, self.outcomes, static, s.bn_refresh)
        self.recall = evaluation.recall(self.test_engines, len(self.names))
        return self

    def serve(self) -> "Run":
        """The deployed form on the first branch seed: sub-networks built ahead of time, then the test split served."""
        s, e0, p = self.s, self.test_engines[0], self.point
        nets = {name: serve.prebuild(e0, self.k, p["keep"], s.bn_refresh, sel) for name, sel in serve.SELECTION.items()}
        self.load = os.getloadavg()
        self.log = serve.serve(e0, self.k, p["tau_exit"], nets, s.latency_images, seed=s.seed)
        self.latency = serve.latency_table(self.log)
        first = {name: self.outcomes[name][0].probs for name in serve.SELECTION}  # draw 0 of seed 0 for the random one
        self.agree = serve.agreement(self.log, {**first, "full": e0.full().probs})
        self.prebuilt = {name: {"sets": len(v["nets"]), "seconds": v["seconds"], "bytes": v["bytes"]} for name, v in nets.items()}
        self.serving_lines = serve.serving_lines(self.latency, nets, self.agree, int(self.log["image"].nunique()))
        return self

    def judge(self) -> "Run":
        self.result = analysis.claim(self.test_engines[0], self.outcomes, self.latency, self.declared, self.margin,
                                     seed=self.s.seed)
        self.evidence = analysis.evidence(self.summaries, self.point, self.result, self.s.flag)
        return self

    def check(self) -> "Run":
        """The checks that can fail (:func:`~xaiprune.dyfip.analysis.check`), with the sub-network of the most frequent
        validation candidate set against the full tail with the same filters zeroed (``equivalence``)."""
        e0 = self.val_engines[self.k][0]
        common = analysis.most_common_set(e0, self.k)
        self.common, self.equivalence = common, analysis.pruned_vs_zeroed(e0, common, self.point["keep"])
        analysis.check(self.test_engines[0], self.means, self.point, self.summaries, self.trained.metrics["test_acc"],
                       self.recall, self.equivalence, self.agree)
        return self

    def all(self) -> "Run":
        """Every step in order, and the checks (the second flag of ``08_dyfip``)."""
        return self.base().reference().branches().validate().test().serve().judge().check()

    def metrics(self) -> dict:
        e0 = self.test_engines[0]
        out = analysis.metrics(self.summaries, self.result, self.point, self.static_keep, self.val_full, self.majority,
                               train.published_benchmark(self.s.flag), self.recall,
                               (e0.prefix_macs + e0.branch_macs) / e0.full_macs, self.latency,
                               {self.names[c]: v for c, v in self.ref.counts.items()})
        return {"flag": self.s.flag, **out}

    def timings(self) -> dict:
        return {"latency_ms": self.latency.round(3).to_dict("index"), "load_average": list(np.round(self.load, 2)),
                "prebuilt": self.prebuilt, "relevance_s": self.relevance_seconds}
