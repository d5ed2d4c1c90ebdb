"""Every notebook's parameters, declared once, and the entry points that check them.

Every notebook's ``parameters`` cell declares exactly the names, types and defaults listed in
:data:`NOTEBOOKS` (tests/test_schema.py reads the cells), and its next cell calls :func:`begin`,
which checks the values papermill injected. The pipeline checks the same declarations, plus
:data:`~xaiprune.study.rules.RUN_RULES` across notebooks (:mod:`xaiprune.study.rules` holds the name
tables and the rules), before it starts any kernel, so a typo fails in the first second
instead of after twenty minutes of training:

    python -m xaiprune.study.pipeline --check --profile default -p ratios=[0.0,0.1,0.5]

``profile`` is not set by hand: the pipeline passes ``--profile`` to every notebook, and
:func:`begin` points :mod:`xaiprune.paths` at ``artifacts/<profile>/``. ``python -m
xaiprune.study.parameters`` prints the README's parameter tables.
"""

from __future__ import annotations

import json
import re

from xaiprune import paths
from xaiprune.study.rules import (ARCHS, CRITERIA, DATA, RULES, RUN_RULES, SCOPES, SEGMENTS, SIZES,  # noqa: F401
                                      WARDS, XAI_CRITERIA, XAI_METHODS, _data_file, _multiclass_flag, _second_flag, flags_2d,
                                      multiclass_flags_2d, scenario_names)
from xaiprune.study.schema import (Param, ParameterError, Run, check_values, each, fingerprint, length, nonempty, one_of,
                             optional, unique, within)


_CRITERIA_LIST = Param("list[str]", [], "", (nonempty, unique, each(one_of(CRITERIA))))
_FRACTIONS = Param("list[float]", [], "", (nonempty, unique, each(within(0, 1, hi_open=True))))
def _regime_names() -> list[str]:
    """``ward`` and every ``params/regimes/*.yaml``."""
    return ["ward", *sorted(p.stem for p in (paths.PARAMS / "regimes").glob("*.yaml"))]


_POSITIVE_FACTORS = Param("list[float]", [], "", (nonempty, each(within(0, lo_open=True))))
SHARED = {
    "profile": Param("str", "default", "set by the pipeline (--profile): outputs go to artifacts/<profile>/",
                     (lambda v: None if re.fullmatch(r"[A-Za-z0-9_.-]+", v) else "a profile name of letters, digits, '_', '.', '-'",)),
    "flag": Param("str", "pneumoniamnist", "any 2D MedMNIST flag", (one_of(flags_2d),)),
    "size": Param("int", 28, "image side: 28, 64, 128 or 224", (one_of(SIZES),)),
    "data_root": Param("str", "", "folder with the npz; empty searches $MEDMNIST_ROOT, then data/medmnist/"),
    "seed": Param("int", 0, "seed of the reference-set draw", (within(0),)),
    "archs": Param("list[str]", ["vgg16_bn"], "architectures trained by 02_train", (nonempty, unique, each(one_of(ARCHS)))),
    "n_per_class": Param("int", 10, "reference images per class (a class with fewer validation images gives all it has, and says so)", (within(1),)),
    "scenario": Param("str", "ward-4", "file in params/scenarios/", (one_of(scenario_names),)),
}


def _pick(*names: str, **docs: str) -> dict[str, Param]:
    return {n: SHARED[n].but(doc=docs[n]) if n in docs else SHARED[n] for n in ("profile", *names)}


_DATA = DATA
NOTEBOOKS: dict[str, dict[str, Param]] = {
    "01_data": {
        **_pick(*_DATA, "seed", "n_per_class", n_per_class="reference images per class (the ward's scarce labelled data)"),
        "ref_bias": Param("float", 0.9, "share of class 0 in the biased example draw, the rest split evenly over the other classes; 0 skips it",
                          (within(0, 1, hi_open=True),)),
    },
    "02_train": {
        **_pick(*_DATA, "seed", "archs", seed="seed of initialisation and batch order",
                archs="architectures to train: vgg16_bn, resnet18, small_cnn"),
        "epochs": Param("int", 8, "training epochs (smoke: 2)", (within(1),)),
        "batch_size": Param("int", 128, "images per step", (within(1),)),
        "lr": Param("float", 0.001, "Adam learning rate at the start of the cosine schedule", (within(0, lo_open=True),)),
        "weight_decay": Param("float", 0.0001, "L2 penalty lambda", (within(0),)),
        "max_train": Param("int", 0, "0 trains on the whole train split, n > 0 on its first n images only", (within(0),)),
        "hospital_archs": Param("list[str]", ["vgg16_bn", "resnet18"], "architectures of the hospital-wide model "
                                "(9 classes, three sources; empty: none)", (unique, each(one_of(ARCHS)))),
        "hospital_epochs": Param("int", 3, "training epochs of the hospital-wide models (balanced draws)", (within(1),)),
    },
    "03_xai_scores": {
        **_pick(*_DATA, "seed", "archs", "n_per_class", archs="architectures trained by 02_train to score"),
        "criteria": _CRITERIA_LIST.but(default=["lrp", "lrp_epsilon", "deeplift", "ig", "gradxact", "taylor", "l1"],
                                       doc="criteria to score and compare"),
        "ig_steps": Param("int", 8, "Riemann steps of integrated gradients", (within(1),)),
        "n_heatmaps": Param("int", 4, "X-rays per class shown with their input-level LRP heatmaps", (within(0),)),
    },
    "04_pruning_comparison": {
        **_pick(*_DATA, "seed", "archs", "n_per_class", seed="first seed of the reference-set draws (draw k uses seed + k)"),
        "criteria": _CRITERIA_LIST.but(default=["lrp", "lrp_epsilon", "deeplift", "ig", "gradxact", "taylor", "l1", "random"],
                                       doc="criteria compared"),
        "ratios": _FRACTIONS.but(default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                 doc="fractions of filters removed; 0.0 (the unpruned model) must be one of them"),
        "draws": Param("int", 5, "independent reference-set draws (at least 2 for an interval)", (within(2),)),
        "scope": Param("str", "global", "global ranking of per-layer-normalised scores, or per-layer", (one_of(SCOPES),)),
        "ig_steps": Param("int", 8, "Riemann steps of integrated gradients", (within(1),)),
        "sensitivity_criterion": Param("str", "lrp", "criterion used to prune one segment at a time", (one_of(CRITERIA),)),
        "sensitivity_draws": Param("int", 2, "reference draws for the per-segment sensitivity table", (within(1),)),
        "ref_sizes": Param("list[int]", [1, 5, 10, 50], "reference images per class in the size study",
                           (nonempty, unique, each(within(1)))),
        "study_criteria": _CRITERIA_LIST.but(default=["lrp", "taylor"], doc="criteria of the size and bias studies"),
        "study_ratios": _FRACTIONS.but(default=[0.1, 0.2, 0.3, 0.5], doc="ratios of the size and bias studies"),
        "study_draws": Param("int", 3, "reference draws per setting of the size and bias studies", (within(2),)),
        "bias": Param("float", 0.9, "share of class 0 in the biased reference set, the rest split evenly over the other classes",
                      (within(0, 1, lo_open=True, hi_open=True),)),
        "unlabelled": Param("int", 256, "unlabelled validation images on which the BatchNorm repair re-estimates statistics",
                            (within(2),)),
        "repair_draws": Param("int", 2, "reference draws of the repair study on validation, and of the chosen BatchNorm or "
                              "compensation repair on test (recalibration alone: every draw)", (within(1),)),
        "repair_criteria": _CRITERIA_LIST.but(default=["lrp", "taylor", "l1", "random"],
                                              doc="criteria of the repair study (the declared primary and the baselines)"),
        "unlabelled_sizes": Param("list[int]", [16, 64, 256], "unlabelled images in the BatchNorm scaling study",
                                  (nonempty, unique, each(within(2)))),
    },
    "05_nlp": {
        **_pick(*_DATA, "seed", "archs", "n_per_class", seed="reference draw used to prune the measured plans",
                archs="the first one is planned; its sensitivity table comes from 04",
                n_per_class="reference images per class for the measured plans"),
        "scenarios": Param("list[str]", ["ward-edge", "ward-4"], "files in params/scenarios/ (the first is the primary ward; 06 trains and judges the agent on `large`)",
                           (nonempty, unique, each(one_of(scenario_names)))),
        "accuracy_metric": Param("str", "acc", "what the surrogate models (measured on validation): \"acc\" or \"auc\"", (one_of(("acc", "auc")),)),
        "deadline_factors": _POSITIVE_FACTORS.but(default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 4.0],
                                                  doc="deadlines swept, x the scenario's"),
        "bandwidth_factors": _POSITIVE_FACTORS.but(default=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0], doc="all link bandwidths scaled by these"),
        "time_limit": Param("float", 30.0, "CBC time limit per solve (s)", (within(0, lo_open=True),)),
        "n_candidates": Param("int", 4, "distinct level vectors measured on validation per instance whose optimum prunes; 1: no verification",
                              (within(1, 20),)),
        "fit_plans": Param("int", 40, "plans pruning several segments, measured on validation, on which the accuracy model is refitted", (within(5),)),
        "surrogate_plans": Param("int", 30, "plans of the fixed design (those not fitted) on which the accuracy model's error is measured", (within(1),)),
        "measure_scoring": Param("str", "fixed", "measured plans pruned with the unpruned model's scores (fixed, as 04 and 07) or re-scored per segment",
                                 (one_of(("fixed", "rescored")),)),
        "scaling_sizes": Param("list[list[int]]", [[3, 3, 4], [4, 4, 6], [5, 4, 10], [5, 8, 10], [5, 14, 10], [8, 8, 10]],
                               "(segments, devices, levels) of the solve-time study",
                               (nonempty, each(length(3)), each(each(within(2))))),
        "enumeration_limit": Param("float", 20.0, "time limit of the enumeration in the scaling study (s)", (within(0, lo_open=True),)),
    },
    "06_rl": {
        **_pick(*_DATA, "seed", "archs", "n_per_class", "scenario",
                seed="first training seed (seed + 1000 k for the others; held-out ward runs use other seeds), and 05's reference draw",
                archs="the first one's profiles (from 05) are used", scenario="ward the agent is trained on (07 serves it)",
                n_per_class="05's reference images per class (the chosen plans are measured as 05 measures them)"),
        "scenario": SHARED["scenario"].but(default="ward-edge", doc="ward the agent is trained on (07 serves it): the primary ward, where one device cannot run the model"),
        "agent_seeds": Param("int", 3, "training seeds of the agent per ward (the protocol asks for at least 3)", (within(1, 9),)),
        "second_scenario": SHARED["scenario"].but(default="", checks=(optional(one_of(scenario_names)),),
                                                  doc="a second ward, trained and judged the same way (\"\" skips it; e.g. ward-4, the easy case, which 07 serves without the agent)"),
        "large_scenario": SHARED["scenario"].but(default="large", checks=(optional(one_of(scenario_names)),),
                                                 doc="a ward of many devices, trained and judged the same way (\"\" skips it)"),
        "replay_requests": Param("int", 624, "requests of 07's fade replayed through its bandwidth estimator (07 serves the whole test split)",
                                 (within(8),)),
        "ewma": Param("float", 0.5, "07's weight of the newest measured transfer in the bandwidth estimate (the replay's)",
                      (within(0, 1, lo_open=True),)),
        "demo_requests": Param("int", 700, "requests whose exact optimum the agent imitates (behaviour cloning), per seed", (within(1),)),
        "bc_epochs": Param("int", 30, "epochs of behaviour cloning", (within(1),)),
        "dagger_rounds": Param("int", 1, "DAgger rounds after cloning (0: none)", (within(0),)),
        "dagger_requests": Param("int", 200, "requests the cloned policy serves in each DAgger round", (within(1),)),
        "closed_loop_rounds": Param("int", 1, "DAgger rounds more on `scenario` seen through 07's link estimate (weight `ewma`); 0: none",
                                    (within(0),)),
        "timesteps": Param("int", 1000, "MaskablePPO fine-tuning steps per seed, one per segment decision (0: none)", (within(0),)),
        "baseline_timesteps": Param("int", 15000, "PPO steps of the earlier MultiDiscrete agent, the labelled baseline (first seed, on `scenario` only)", (within(1),)),
        "episode_length": Param("int", 200, "requests per ward run (training and held-out)", (within(8),)),
        "eval_episodes": Param("int", 4, "held-out ward runs per ward, each with one fade of a held-out shape", (within(1),)),
        "eval_every": Param("int", 1000, "fine-tuning steps between points of the validation curve (the checkpoint is its best point)", (within(1),)),
        "penalty": Param("float", 1.0, "reward penalty per unit of relative overshoot of a violated constraint", (within(0, lo_open=True),)),
        "fade_low": Param("float", 0.03, "bandwidth multiplier at the bottom of the trace figure's fade (07's), centre of the held-out fade depths",
                          (within(0, 1, lo_open=True),)),
        "cbc_samples": Param("int", 30, "requests on which CBC's decision time is measured", (within(1),)),
    },
    "07_distributed": {
        **_pick(*_DATA, "seed", "archs", "n_per_class", "scenario", seed="reference draw for the filter scores (as in 03-05)",
                archs="the first one is served; 05 and 06 must have run for it",
                n_per_class="reference images per class for the filter scores",
                scenario="the scenario 06's agent was trained on"),
        "scenario": SHARED["scenario"].but(default="ward-edge", doc="the scenario 06's agent was trained on (the primary ward)"),
        "n_requests": Param("int", 0, "test images served per policy; 0 serves the whole test split", (within(0),)),
        "baselines": _CRITERIA_LIST.but(default=["l1", "taylor"],
                                        doc="criteria whose filters are replayed on the plans XAI + RL and XAI + NLP served (besides LRP)"),
        "static_level": Param("float", 0.5, "the pre-pruned model: every segment at this level (one of 04's ratios)",
                              (within(0, 1, hi_open=True),)),
        "fade_low": Param("float", 0.03, "bandwidth multiplier at the bottom of the fade (deep enough that the optimum must prune; 06's)",
                          (within(0, 1, lo_open=True),)),
        "emulate": Param("bool", True, "emulate the scenario's device speeds and links (False on real hardware)"),
        "stress_scenario": SHARED["scenario"].but(default="ward-4", checks=(optional(one_of(scenario_names)),),
                                                  doc="a second ward served beside (\"\" skips it; ward-4: the easy case, where one device suffices)"),
        "stress_requests": Param("int", 60, "requests per policy on the second ward", (within(1),)),
        "stress_fade_low": Param("float", 0.003, "bandwidth multiplier at the bottom of the second ward's fade (its emulated "
                                 "links really wait: deeper makes the unpruned policy take longer per request)",
                                 (within(0, 1, lo_open=True),)),
        "shield_margin": Param("float", 0.05, "share of the deadline the agent's plan must leave free on its view, else the shield replaces it",
                               (within(0, 1, hi_open=True),)),
        "shield_accuracy": Param("float", 0.98, "share of the greedy plan's surrogate accuracy below which the shield replaces the agent's plan",
                                 (within(0, 1),)),
        "fault_requests": Param("int", 60, "requests per policy of the load-and-faults run (each window, each fault kind)",
                                (within(1),)),
        "fault_at": Param("int", 10, "request at which each fault acts", (within(0),)),
        "heartbeat_s": Param("float", 0.1, "heartbeat period of the workers (s)", (within(0, lo_open=True),)),
        "dead_after_s": Param("float", 1.0, "silence after which a worker is declared dead (s)", (within(0, lo_open=True),)),
        "window": Param("int", 4, "requests in flight at once in the load-and-faults run (compared with 1; at least 2)",
                        (within(2),)),
        "hop_margin_s": Param("float", 0.5, "a hop's deadline: 3 x its expected time plus this margin (s)",
                              (within(0, lo_open=True),)),
        "strikes": Param("int", 2, "missed hop deadlines in a row after which a device is excluded", (within(1),)),
        "ewma": Param("float", 0.5, "weight of the newest measured transfer in the bandwidth estimate",
                      (within(0, 1, lo_open=True),)),
        "straggler_delay_s": Param("float", 1.0, "seconds the straggler adds to every activation", (within(0, lo_open=True),)),
        "down_s": Param("float", 1.5, "seconds the rejoining device stays dark", (within(0, lo_open=True),)),
    },
    "08_dyfip": {
        "profile": SHARED["profile"],
        "dyfip_flag": Param("str", "hospital", "its own multi-class flag (the study's flag parameter does not reach it): "
                            "hospital, the hospital-wide 9-class task of 02, or a multi-class 2D MedMNIST flag",
                            (_multiclass_flag,)),
        **_pick("size", "data_root", "seed", "archs", "n_per_class",  # profile keeps its place, first
                seed="seed of the base model's training and the reference draw; branch seed j uses seed + j, random draw d seed + d",
                archs="the first one is DyFiP's base classifier, trained on dyfip_flag as 02 trains it (and reused from its cache)",
                n_per_class="reference images per class from the validation split (capped at the class's count)"),
        "base_epochs": Param("int", 3, "training epochs of the base classifier on dyfip_flag (3 is 02's hospital_epochs: "
                             "its hospital-wide model is reused)", (within(1),)),
        "second_flag": Param("str", "retinamnist", "a second flag, run whole with the same settings and reported beside "
                             "(empty: none)", (_second_flag,)),
        "second_epochs": Param("int", 8, "training epochs of the base classifier on second_flag", (within(1),)),
        "method": Param("str", "deeplift", "explanation method of the class-specific relevance: deeplift, lrp, ig, gradxact",
                        (one_of(XAI_METHODS),)),
        "aggregate": Param("str", "max", "a filter's score for a candidate set: max or sum over its classes", (one_of(("max", "sum")),)),
        "branch_block": Param("int", 2, "the branch follows this segment (1-based; at least one segment must follow it)", (within(1),)),
        "branch_width": Param("int", 128, "filters of the branch's 1x1 conv", (within(1),)),
        "branch_epochs": Param("int", 20, "training epochs of the branch on the frozen features", (within(1),)),
        "branch_seeds": Param("int", 3, "training seeds of the branch for each k (the protocol asks for at least 3)", (within(1),)),
        "random_draws": Param("int", 5, "draws of each random baseline per branch seed (the protocol asks for at least 5)",
                              (within(1),)),
        "ks": Param("list[int]", [2, 3], "candidate counts of the grid: the branch is trained for each k (top-k objective) "
                    "and k is chosen on validation (each at least 1, fewer than the classes)", (nonempty, unique, each(within(1)))),
        "bn_refresh": Param("str", "candidates", "BN statistics of a sub-network re-estimated on the reference images of its "
                            "candidate classes, of all classes, or none (the plain reconstruction)",
                            (one_of(("candidates", "all", "none")),)),
        "keeps": Param("list[float]", [0.3, 0.4, 0.5, 0.6, 0.8], "fractions of every post-branch layer's filters a sub-network "
                       "keeps: the grid the operating point is chosen from on validation",
                       (nonempty, unique, each(within(0, 1, lo_open=True)))),
        "taus": Param("list[float]", [0.5, 0.7, 0.8, 0.9, 1.0], "exit thresholds of the grid (exit when the branch's top-1 "
                      "probability is at least tau; 1.0 never exits)",
                      (nonempty, unique, each(within(0, 1, lo_open=True)))),
        "latency_images": Param("int", 0, "test images served one at a time by every policy (worst-case latency); 0 serves all",
                                (within(0),)),
    },
    "09_compression": {
        **_pick(*_DATA, "seed", "archs", "n_per_class", seed="first seed of the reference-set draws (draw k uses seed + k)",
                archs="the first one is compressed (trained by 02_train)"),
        "draws": Param("int", 3, "reference-set draws (at least 2 for an interval)", (within(2),)),
        "val_images": Param("int", 256, "validation images outside the reference draws on which every curve is measured "
                            "and every choice made (0: all of them)", (within(0),)),
        "filter_ratios": _FRACTIONS.but(default=[0.1, 0.2, 0.3, 0.4],
                                        doc="fractions of filters removed by DeepLIFT and its baselines (technique 1)"),
        "filter_baselines": _CRITERIA_LIST.but(default=["l1", "taylor"], doc="non-XAI filter criteria of technique 1 "
                                               "(random, if added, needs at least 5 draws to count as a baseline)"),
        "sparsities": _FRACTIONS.but(default=[0.9, 0.93, 0.95, 0.97], doc="fractions of the live conv and linear weights "
                                     "removed, after the dead ones (technique 2)"),
        "share_bits": Param("list[int]", [1, 2, 3], "bits of a shared weight's index, 2^bits centres per layer (technique 3)",
                            (nonempty, unique, each(within(1, 16)))),
        "budget_bits": Param("list[int]", [2, 3], "average bits per live weight of mixed precision, each layer 2..8 (technique 4)",
                             (nonempty, unique, each(within(2, 8)))),
        "combo_sparsities": _FRACTIONS.but(default=[0.9, 0.95], doc="fractions of the live weights removed in the combined "
                                           "pipeline (technique 5)"),
        "combo_bits": Param("list[int]", [2, 3], "bits after pruning in the combined pipeline (index bits, or average bits if mixed)",
                            (nonempty, unique, each(within(1, 16)))),
        "combo_stage": Param("str", "share", "what follows pruning in the combined pipeline: share (k-means) or mixed (mixed precision)",
                             (one_of(("share", "mixed")),)),
        "bn_correction": Param("bool", True, "shift BatchNorm means by the change compression makes on the reference images "
                               "(no weights change); false: the plain reconstruction"),
    },
    "10_agilenn": {
        **_pick(*_DATA, "seed", "archs", "scenario",
                seed="first training seed of the reference network and AgileNN (seed j: seed + j)",
                archs="the first one is the study's model (local_vgg, offload_vgg), trained by 02_train",
                scenario="the ward regime's scenario: its source is the device"),
        "remote": Param("str", "", "the remote device, a device of the scenario other than its source; empty picks the fastest"),
        "channels": Param("int", 24, "feature channels of the device's extractor", (within(2),)),
        "stride": Param("int", 2, "stride of the extractor's first convolution (28x28 images give 14x14 features)", (within(1, 4),)),
        "split_ratio": Param("float", 0.2, "share of the feature channels kept on the device (k: split_ratio x channels, rounded)",
                             (within(0, 1, lo_open=True, hi_open=True),)),
        "centroids": Param("int", 8, "quantiser centroids (8: 3 bits per offloaded value)", (within(2),)),
        "rho": Param("float", 0.8, "skewness target: the share of importance the local channels should hold", (within(0, 1, lo_open=True),)),
        "klambda": Param("float", 0.8, "weight of the cross-entropy; the skewness and disorder losses get 1 - klambda", (within(0, 1, lo_open=True),)),
        "agilenn_seeds": Param("int", 3, "training seeds of AgileNN and of the small network (seed, seed + 1, ...; their reference network's "
                               "too): the claim's accuracy is judged over all of them", (within(1),)),
        "agilenn_epochs": Param("int", 3, "training epochs of AgileNN, per seed (smoke: 1)", (within(1),)),
        "ref_epochs": Param("int", 2, "training epochs of the reference network, per seed", (within(1),)),
        "agilenn_batch_size": Param("int", 128, "images per step of AgileNN's and the reference network's training", (within(1),)),
        "agilenn_lr": Param("float", 0.001, "Adam learning rate of AgileNN at the start of the cosine schedule", (within(0, lo_open=True),)),
        "extractor_lr": Param("float", 0.03, "the same for the device's extractor, whose few weights must move far", (within(0, lo_open=True),)),
        "agilenn_max_train": Param("int", 0, "0 trains AgileNN on the whole train split, n > 0 on its first n images only", (within(0),)),
        "tiny_widths": _FRACTIONS.but(default=[0.5, 0.25], checks=(nonempty, unique, each(within(0, 1, lo_open=True, hi_open=True))),
                                      doc="widths of AgileNN's network narrowed for the device (local_tiny): the narrowest "
                                          "within the claim's margin of the full width's validation AUC is kept"),
        "codec": Param("str", "zlib", "lossless compression of the packed indices: zlib or lzma", (one_of(("zlib", "lzma")),)),
        "regimes": Param("list[str]", ["paper", "ward"], "where every method is judged: paper (params/regimes/paper.yaml: "
                         "MCU-class device, low-rate link, server) and ward (the scenario's source and remote)",
                         (nonempty, unique, each(one_of(_regime_names)))),
        "claim_regime": Param("str", "paper", "the regime the claim is decided in (one of regimes)", (one_of(_regime_names),)),
        "serve_limit_ms": Param("float", 1000.0, "a method whose modelled median latency in a regime exceeds this is "
                                "reported modelled only, not served", (within(0, lo_open=True),)),
        "latency_requests": Param("int", 200, "test images served by every method in every regime (a seeded random sample)",
                                  (within(2),)),
        "ablation_epochs": Param("int", 1, "training epochs of every ablation (and of the default setting beside them)", (within(1),)),
        "ablation_ratios": _FRACTIONS.but(default=[0.1, 0.4], checks=(unique, each(within(0, 1, lo_open=True, hi_open=True))),
                                          doc="other split ratios trained for the ablation (empty: none)"),
        "ablation_centroids": Param("list[int]", [4, 16], "other centroid counts trained for the ablation (empty: none)",
                                    (unique, each(within(2)))),
        "emulate": Param("bool", True, "emulate the regime's device speeds and links (False on real hardware)"),
    },
    "11_ward_regime": {
        **_pick("size", "data_root", "seed", "n_per_class", seed="first seed of the reference draws (draw k uses seed + k)",
                n_per_class="reference images per class of the ward (capped at the class's validation images)"),
        "hospital_archs": Param("list[str]", ["vgg16_bn", "resnet18"], "hospital-wide models pruned (trained by 02_train)",
                                (nonempty, unique, each(one_of(ARCHS)))),
        "wards": Param("list[str]", list(WARDS), "wards, one source each: pneumonia, breast, retina",
                       (nonempty, unique, each(one_of(tuple(WARDS))))),
        "criteria": _CRITERIA_LIST.but(default=["lrp", "l1", "taylor", "random"],
                                       doc="criteria on every draw, as pruned and repaired (the claim needs lrp, l1 and taylor)"),
        "explore_criteria": _CRITERIA_LIST.but(default=["gradxact"], checks=(unique, each(one_of(CRITERIA))),
                                               doc="exploration criteria, on the first explore_draws draws, as pruned only "
                                               "(empty: none; ig and deeplift cost about a minute per ward on ResNet-18)"),
        "explore_draws": Param("int", 1, "reference draws of the exploration criteria (scoring IG and DeepLIFT costs most)",
                               (within(1),)),
        "ratios": _FRACTIONS.but(default=[0.0, 0.3, 0.5], doc="fractions of filters removed; 0.0 (the unpruned "
                                 "model) must be one of them, the claim reads 0.3 and 0.5"),
        "draws": Param("int", 5, "reference draws per ward (the protocol asks for at least 5)", (within(2),)),
        "unlabelled": Param("int", 128, "unlabelled validation images of the ward for the BatchNorm repair (all, if fewer)",
                            (within(2),)),
        "ig_steps": Param("int", 8, "Riemann steps of integrated gradients", (within(1),)),
    },
}




# ----- the entry points -----------------------------------------------------------------------------
def declared(stem: str) -> dict[str, Param]:
    if stem not in NOTEBOOKS:
        raise ParameterError([f"notebook {stem!r} has no parameter schema (known: {sorted(NOTEBOOKS)})"])
    return NOTEBOOKS[stem]


def defaults(stem: str) -> dict:
    return {name: p.default for name, p in declared(stem).items()}


def validate(stem: str, values: dict) -> dict:
    """``values`` (every declared name) conformed to their types and checked; raises :class:`ParameterError`."""
    spec = declared(stem)
    return check_values(stem, spec, values, RULES.get(stem, []) + [_data_file] * ("data_root" in spec))


def validate_run(values_by_stem: dict[str, dict]) -> dict[str, dict]:
    """:func:`validate` for every notebook, then :data:`RUN_RULES` across them; all problems are reported together.

    A problem shared by several notebooks (a bad ``flag`` declared by six of them) is listed once,
    with every notebook it concerns.
    """
    out, found = {}, {}
    for stem, values in values_by_stem.items():
        try:
            out[stem] = validate(stem, values)
        except ParameterError as exc:
            for problem in exc.problems:
                found.setdefault(problem.removeprefix(f"{stem}: "), []).append(stem)
    problems = [f"{', '.join(stems)}: {text}" for text, stems in found.items()]
    if not problems:
        problems = [p for rule in RUN_RULES for p in rule(out)]
    if problems:
        raise ParameterError(problems)
    return out


def begin(stem: str, namespace: dict) -> Run:
    """Check the parameters a notebook holds (its ``globals()``) and point the artifacts at its profile.

    Called by the cell after every notebook's ``parameters`` cell, so that a notebook run by hand in
    JupyterLab is checked exactly as the pipeline checks it.
    """
    values = validate(stem, {name: namespace[name] for name in declared(stem) if name in namespace})
    paths.use_profile(values["profile"])
    return Run(stem, values, values["profile"], fingerprint(values))


def markdown() -> str:
    """The README's parameter tables, one per notebook (``python -m xaiprune.study.parameters`` prints them)."""
    out = []
    for stem, spec in NOTEBOOKS.items():
        out += [f"**{stem}**", "", "| parameter | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{n}` | {p.type} | `{json.dumps(p.default)}` | {p.doc} |" for n, p in spec.items() if n != "profile"]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
