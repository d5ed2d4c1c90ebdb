"""The study's one evaluation protocol: every claim declared once, before any number is seen.

A claim states the paper it comes from (and whether the study had to reconstruct its formulation: the
papers are not available in full), its hypothesis, the **primary endpoint** that decides it (metric and
split), the split on which every choice behind it is made (``val`` or the scarce ``reference`` set,
never ``test``), the comparator that would refute it, the margin, the target, the test and the least
number of seeds. Notebooks take their targets from here (:data:`CLAIMS`) and write one row per claim
with :func:`row`; the report (:mod:`xaiprune.study.claims`) reads the rows back. No target is written twice.

Endpoints. ACC at a drifting decision threshold measures the threshold (a pruned model that answers one
class keeps ACC at the majority rate), so ACC never decides a verdict; it is shown beside. AUC is the
primary endpoint where a claim is about what the network still knows (pruning, compression): no
threshold shift changes it. Balanced accuracy (the mean per-class recall at the trained decision rule)
is primary where the method changes the decision itself (DyFiP answers among its candidates only, so
its probabilities outside them are zero and their AUC is not comparable with the full model's); a
model answering one class scores 1/classes there.

Statistics (:mod:`xaiprune.stats`). Every comparison is a paired difference against the comparator on
the same test images, bootstrapped over the images and, nested inside, over the seeds (reference
draws, random draws, training seeds) of each side; a claim's family of comparisons is Holm-corrected,
and the verdict reads the corrected interval: **supported** when the target holds with it,
**partly supported** when the method wins somewhere but misses the target, **not supported**
otherwise, **not measured** when the data is missing (never a win). A latency verdict is decided on
the modelled figure and on the measured one separately; the measured one carries its interval and the
machine's load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from xaiprune.stats import MISSING, NOT, PARTLY, SUPPORTED, VERDICTS, verdict  # noqa: F401  (re-exported)

SELECTION_SPLITS = ("val", "reference")
ROW_KEYS = ("id", "paper", "reconstructed", "endpoint", "selection_split", "comparator", "target", "measured",
            "interval", "n_seeds", "test", "verdict")
ALPHA = 0.05  # the family-wise error rate of every claim's family of comparisons
PAIRED_TEST = (f"paired bootstrap over test images, seeds nested (2000 resamples), one-sided against the margin, "
               f"Holm-corrected across the family at alpha = {ALPHA}")

BACCOUR = ("Baccour et al., 'RL-PDNN: XAI-guided dynamic pruning for distributed DNN inference' "
           "(IEEE IoT Journal 2023; Computer Communications 2024)")
DYFIP = "Sabih et al., 'DyFiP: explainable AI-based dynamic filter pruning of CNNs' (EuroMLSys 2022)"
SABIH = "Sabih et al., 'Utilizing explainable AI for quantization and pruning of deep neural networks' (arXiv 2020)"
AGILENN = "Huang & Gao, 'Real-time neural network inference on extremely weak devices: AgileNN' (MobiCom 2022)"
YEOM = "Yeom et al., 'Pruning by explaining: a novel criterion for deep neural network pruning' (Pattern Recognition 2021)"
STUDY = "this study (the system it built to test the papers)"


@dataclass(frozen=True)
class Claim:
    """One claim as the protocol declares it (see the module's docstring for the vocabulary)."""

    id: str
    claim: str
    paper: str
    reconstructed: bool
    reconstruction: str
    notebooks: str
    hypothesis: str
    endpoint: str
    selection_split: str
    comparator: str
    margin: float
    target: str
    test: str
    min_seeds: int = 1
    measured_as: str = ""  # what a row's ``measured`` holds (a difference, an error, a ratio)
    params: dict = field(default_factory=dict)  # the claim's other declared numbers, which the notebooks pass on

    def __post_init__(self):
        if self.selection_split not in SELECTION_SPLITS:
            raise ValueError(f"claim {self.id}: selection_split={self.selection_split!r}; expected one of "
                             f"{SELECTION_SPLITS} (never test)")


DEADLINE_SHARE = 0.95  # distributed_accuracy: the least share of deadlines XAI + NLP must meet
DYFIP_FLOPS = 0.5  # dyfip: the most mean FLOPs per image, as a share of the full model's
DYFIP_POINTS = 0.02  # dyfip: the least lead in balanced accuracy over the branch with one class-agnostic tail
DYFIP_LATENCY = 0.6  # dyfip: the most measured worst-case latency per image, as a share of the full model's
AGILENN_SPEEDUP = 2.0  # agilenn: the least latency ratio of the nearest baseline of its own size over AgileNN's
HEADLINE_RATIO = 0.5  # xai_criterion: the headline ratio is the profile's pruned ratio nearest this
RL_NOMINAL, RL_VIOLATIONS = 0.98, 0.02  # rl_near_optimum: share of the optimum on nominal requests, fade violations
WARD_POINTS, WARD_MIN, WARD_RATIOS = 0.05, 2, (0.3, 0.5)  # ward_regime: margin in balanced accuracy, wards, ratios
COMPRESSION_POINTS = 1  # compression: AUC points of validation loss at which each operating ratio is read
COMPRESSION_FACTOR = 1.5  # compression: DeepLIFT's ratio over the best counterpart's (weight pruning, sharing)
COMPRESSION_COMBINED = 16.0  # compression: the least overall ratio of the combined DeepLIFT pipeline

CLAIMS: dict[str, Claim] = {c.id: c for c in (
    Claim("xai_criterion",
          "The XAI criterion removes filters better than the baselines (L1, Taylor, random), without fine-tuning.",
          BACCOUR, True, "the paper states no margin or ratio; LRP (the paper's criterion) is declared the primary one, "
          "the other XAI criteria are shown as exploration", "04",
          "At the profile's headline pruning ratio, LRP-pruned models keep a higher test AUC than models pruned by "
          "each baseline, and at no ratio a lower one.",
          "test AUC of the pruned model, no repair", "reference",
          "each baseline (L1, Taylor, random over the same reference or random draws), at every pruning ratio",
          0.0, "the Holm-corrected interval of LRP minus the strongest baseline lies above 0 at the headline ratio "
          f"(the profile's ratio nearest {HEADLINE_RATIO:.0%}) and below 0 at no ratio (family-wise interval)", PAIRED_TEST, 2,
          measured_as="LRP minus the strongest baseline, test AUC at the headline ratio",
          params={"headline_ratio": HEADLINE_RATIO}),
    Claim("ward_regime",
          "In the regime it was proposed for (a broad pre-trained model pruned for one ward's narrow task from that "
          "ward's scarce images), the XAI criterion removes filters better than weight norms and Taylor, without "
          "fine-tuning.", f"{BACCOUR}; {YEOM}", True,
          "the hospital-wide model (three MedMNIST files as one 9-class task), the wards, the ratios and the 5-point "
          "margin are the study's construction after Yeom et al.'s 3-class subsets of an ImageNet model; LRP is "
          "declared the primary criterion, the other XAI criteria are shown as exploration", "02, 11",
          f"For each hospital-wide model (VGG-16-BN and ResNet-18 by default; one claim row each), on at least "
          f"{WARD_MIN} of the 3 wards, at {' or '.join(f'{r:.0%}' for r in WARD_RATIOS)} of filters removed, "
          f"LRP-pruned models answer the ward's test images with a balanced accuracy at least "
          f"{WARD_POINTS * 100:g} points above both L1's and Taylor's.",
          "test balanced accuracy among the ward's classes, no repair (after the no-label repairs: shown beside)",
          "reference", "each of L1 and Taylor over the same reference draws, in every ward at every claim ratio",
          0.0, f"for each model, in at least {WARD_MIN} wards, at one claim ratio, LRP minus each baseline at least {WARD_POINTS:g} "
          "with its Holm-corrected interval (wards x ratios x baselines) above 0; partly supported when one ward meets "
          "this (a win against one baseline alone, or by less than the margin, is none)", PAIRED_TEST, 5,
          measured_as=f"LRP minus the better of L1 and Taylor in the ward ranked {WARD_MIN}nd, test balanced accuracy",
          params={"points": WARD_POINTS, "min_wards": WARD_MIN, "ratios": list(WARD_RATIOS)}),
    Claim("distributed_accuracy",
          "Distributed inference with dynamic pruning keeps the accuracy high while meeting the deadline.",
          BACCOUR, True, "the deadline share, the accuracy margin and the comparators are the study's",
          "07", "On the real multi-process system, XAI + NLP answers with a test AUC no more than 2 points below the "
          "unpruned model's and meets the deadline for more requests than the unpruned model run on one device.",
          "test AUC of the served answers, and the share of requests answered within the deadline",
          "val", "the unpruned model on one device (the simplest system), and the unpruned model distributed",
          -0.02, "AUC minus the unpruned model's above -0.02 and the deadline share above one device's, both with "
          f"the Holm-corrected interval, and at least {DEADLINE_SHARE:.0%} of deadlines met",
          PAIRED_TEST.replace("test images", "requests"),
          measured_as="XAI + NLP minus one device, test AUC of the served answers (the deadline share in the evidence)",
          params={"deadline_share": DEADLINE_SHARE}),
    Claim("bytes_saved", "Pruning reduces the data shared between devices.", BACCOUR, False, "", "07",
          "The dynamic XAI policies send fewer bytes between devices than the same routes unpruned.",
          "share of the bytes between devices that pruning removed, over the served requests", "val",
          "the same routes with every segment unpruned", 0.10,
          "a dynamic XAI policy saves at least 10% of its bytes (the interval over requests above 10%)",
          "bootstrap over requests (2000 resamples)", measured_as="the largest share of bytes saved by a dynamic policy"),
    Claim("rl_near_optimum", "The RL agent adapts online, near the optimum of the integer program.", BACCOUR, True,
          f"'near' is the study's: {RL_NOMINAL:.0%} of the optimum's accuracy on nominal requests, 95% during fades", "06",
          "Over training seeds, the agent reaches at least 95% of the exact optimum's accuracy during held-out link "
          f"fades with under {RL_VIOLATIONS:.0%} deadline violations.",
          "accuracy relative to the exact optimum on held-out fades (simulated wards)", "val",
          "the exact optimum of the integer program (and the greedy planner)", 0.95,
          "the lower end of the interval over seeds and episodes at least 95% of the optimum during fades, fade "
          f"violations under {RL_VIOLATIONS:.0%}, and at least {RL_NOMINAL:.0%} of the optimum on nominal requests",
          "bootstrap over training seeds and held-out episodes (nested)", 3,
          measured_as="the agent's accuracy over the optimum's during fades, pooled over seeds",
          params={"nominal_share": RL_NOMINAL, "max_violations": RL_VIOLATIONS}),
    Claim("latency_model",
          "(This study) The system model predicts the latency of the real multi-process system, and no fault "
          "(a dead, hung or slow device, a cut link, bad input) costs a request.", STUDY, False, "", "07",
          "Every policy's mean measured latency is within 20% of the model's, and every fault kind loses and "
          "duplicates no request.", "relative error of the mean latency (modelled against measured), faults' lost "
          "and duplicated requests", "val", "the latency the system model predicts", 0.20,
          "every policy's error within 20% with its interval (Holm-corrected across the policies), every fault kind "
          "seen acting, 0 lost and 0 duplicated",
          "bootstrap over requests of the mean measured latency; fault counts are exact",
          measured_as="the relative latency error furthest from 0 (measured / modelled - 1)"),
    Claim("surrogate", "(This study) The accuracy model the planners optimise predicts the measured accuracy of "
          "pruned plans.", STUDY, False, "", "05",
          "The surrogate's accuracy for a pruned plan is within 2 points of the measured one on average.",
          "absolute error of the surrogate's prediction of the planners' accuracy metric (`accuracy_metric`, ACC by "
          "default: what the planners maximise, so what the surrogate must predict) against the measured one, "
          "on pruned plans, test split (a report: the table behind it is measured on validation)", "val",
          "the measured test accuracy of the same plans", 0.02, "mean absolute error at most 2 points",
          "bootstrap over the checked plans", measured_as="mean absolute error (fraction)"),
    Claim("pipelining", "(This study) Pipelining requests raises the real system's throughput towards the bound "
          "its busiest device sets.", STUDY, False, "", "07",
          "With a window of requests in flight, throughput reaches at least 90% of the busiest-device bound.",
          "throughput gain over one request at a time, against the bound", "val", "one request at a time", 0.90,
          "gain at least 90% of the bound", "a single timed run (the load recorded)",
          measured_as="throughput gain as a share of the busiest-device bound"),
    Claim("dyfip", "(DyFiP) XAI-selected class-specific filters let a dynamic network keep the full model's accuracy "
          "at a fraction of its FLOPs.", DYFIP, True, "the early branch, its top-k objective, its exits, the top-k rule "
          "and the hospital-wide task are reconstructed or the study's", "08",
          f"On each flag of 08 (the hospital-wide 9-class task by default, RetinaMNIST beside; one claim row each), at no "
          f"more than {DYFIP_FLOPS:.0%} of the full model's mean FLOPs, DyFiP's balanced accuracy is within 2 points of the "
          f"full model's, at least {DYFIP_POINTS * 100:g} points above the same branch with one class-agnostic XAI tail and "
          "above random filters per candidate set, and its measured worst-case latency per image is at most "
          f"{DYFIP_LATENCY:.0%} of the full model's.",
          "test balanced accuracy at the decision rule, at the operating point (k, keep, tau) chosen on validation; "
          "the worst-case latency measured over the whole test split", "val",
          "the full model (non-inferiority, margin 2 points); the same branch, exits and candidate restriction with one "
          "class-agnostic XAI tail (isolates the class-specific choice); random filters per candidate set (random "
          "draws per branch seed)", -0.02,
          f"mean FLOPs at most {DYFIP_FLOPS:.0%} of the full model's; Holm-corrected intervals (three comparisons) against "
          f"the full model above -0.02, against the class-agnostic tail above 0 with a lead of at least {DYFIP_POINTS:g}, "
          f"against random filters above 0; worst-case latency at most {DYFIP_LATENCY:.0%} of the full model's",
          PAIRED_TEST, 3, measured_as="DyFiP minus the full model, test balanced accuracy",
          params={"max_flops": DYFIP_FLOPS, "points_static_tail": DYFIP_POINTS, "max_worst_latency": DYFIP_LATENCY}),
    Claim("compression", "XAI guides compression better than its non-XAI counterparts.", SABIH, True,
          "the DeepLIFT weight relevance, the techniques' settings, the removal of dead weights and the targets are "
          "the study's reconstruction", "09",
          "On the live weights (every variant first removes the weights that only ever read zero padding), DeepLIFT-"
          f"guided weight pruning and weight sharing each reach a compression ratio within {COMPRESSION_POINTS:g} AUC "
          f"point of the uncompressed model at least {COMPRESSION_FACTOR:g}x the best non-XAI counterpart's, and the "
          f"combined DeepLIFT pipeline reaches at least {COMPRESSION_COMBINED:g}x the 32-bit model.",
          f"compression ratio on live weights at a loss of {COMPRESSION_POINTS:g} validation AUC point (test AUC and "
          "balanced accuracy reported there); test AUC at equal size as the check", "val",
          "weight-level Taylor saliency |w dR/dw| and magnitude (pruning), Taylor-weighted and plain k-means (sharing), "
          "Taylor, range and uniform bits (mixed precision), the Taylor and magnitude pipelines (combined), L1 and "
          "Taylor filters; all with the dead weights removed too", 0.0,
          f"for weight pruning and for sharing, DeepLIFT's ratio at {COMPRESSION_POINTS:g} AUC point (read on "
          f"validation) at least {COMPRESSION_FACTOR:g}x the best counterpart's; the combined DeepLIFT pipeline at "
          f"least {COMPRESSION_COMBINED:g}x overall with its test AUC within {COMPRESSION_POINTS:g} point of the "
          "uncompressed model's; no test comparison at equal size below 0 (family-wise interval). Supported: all of "
          "these; partly supported: one of the two ratio targets met; not supported: neither",
          "ratios read on validation over the reference draws; at equal size, " + PAIRED_TEST,
          measured_as=f"DeepLIFT's ratio at {COMPRESSION_POINTS:g} AUC point over the best counterpart's, the smaller of "
          "weight pruning and sharing",
          params={"points": COMPRESSION_POINTS, "factor": COMPRESSION_FACTOR, "combined": COMPRESSION_COMBINED}),
    Claim("agilenn", "(AgileNN) Offloading the less important features, chosen by XAI at training time, gives over "
          "6x lower latency than existing schemes with accuracy near the full model.", AGILENN, True,
          "the paper's regime (MCU-class device, low-rate link, server) rebuilt from public figures (params/regimes/"
          "paper.yaml); the network sizes are the study's; the paper's 6x is against other systems, not rebuilt here: "
          "against the baselines that would refute the idea (AgileNN's own network, whole or narrowed) the target is "
          "2x, declared before the first run", "10",
          f"In the paper's regime AgileNN's median latency is at least {AGILENN_SPEEDUP:g}x below that of the nearest "
          "baseline of its own size or smaller that fits on the device (modelled and measured separately), with "
          "balanced accuracy and AUC no more than 2 points below the same network offloaded whole.",
          "latency per image (modelled; measured over the served requests with the machine's load), test balanced "
          "accuracy and AUC", "val",
          "AgileNN's network without its split run locally, offloaded whole (PNG) and split at the best cut "
          "(quantised activation; the cut chosen on validation), and narrowed for the device (the width chosen on "
          "validation); the study's VGG-16-BN beside, deciding nothing", -0.02,
          f"modelled ratio at least {AGILENN_SPEEDUP:g}, and the lower end of the measured ratio's interval (paired "
          "bootstrap over the served images) too; balanced accuracy and AUC minus offload_small above -0.02 with the "
          "corrected intervals (seeds paired)", PAIRED_TEST, 3, measured_as="the nearest baseline's measured median "
          "latency over AgileNN's in the paper's regime", params={"speedup": AGILENN_SPEEDUP}),
)}


def row(claim_id: str, measured, interval, n_seeds: int, verdict_: str, evidence: str, selection_split: str | None = None,
        **extra) -> dict:
    """One claim's row as the notebooks write it (``metrics["claims"]``) and the report reads it.

    ``measured`` and ``interval`` are the primary endpoint's value and its corrected interval (``None`` when not
    measured); ``n_seeds`` the seeds behind it. The declared fields come from :data:`CLAIMS`; a verdict other
    than "not measured" with fewer seeds than the claim declares is refused.
    """
    c = CLAIMS[claim_id]
    if verdict_ not in VERDICTS:
        raise ValueError(f"verdict={verdict_!r}; expected one of {VERDICTS}")
    split = selection_split or c.selection_split
    if split not in SELECTION_SPLITS:
        raise ValueError(f"claim {claim_id}: choices made on {split!r}; expected one of {SELECTION_SPLITS}")
    if verdict_ != MISSING and n_seeds < 1:
        raise ValueError(f"claim {claim_id}: n_seeds={n_seeds}; expected at least 1")
    out = {"id": claim_id + extra.pop("suffix", ""), "claim": c.claim, "paper": c.paper,
           "reconstructed": c.reconstructed, "reconstruction": c.reconstruction, "notebooks": c.notebooks,
           "hypothesis": c.hypothesis, "endpoint": c.endpoint, "selection_split": split,
           "comparator": c.comparator, "target": c.target, "measured": _round(measured),
           "measured_as": c.measured_as, "interval": _round(interval), "n_seeds": int(n_seeds),
           "min_seeds": c.min_seeds, "test": c.test, "verdict": verdict_, "evidence": evidence}
    if verdict_ != MISSING and n_seeds < c.min_seeds:
        out["evidence"] += (f" Only {n_seeds} seed(s) where the protocol asks for {c.min_seeds}: this profile's "
                            "verdict is indicative.")
    return {**out, **extra}


def missing(claim_id: str, why: str) -> dict:
    """The row of a claim whose evidence did not run."""
    return row(claim_id, None, None, 0, MISSING, why)


def _round(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return v


class Choices:
    """The record of every choice a notebook makes, and the split it was made on; a choice on test fails.

    ``choices.made("best repair", val)`` takes the :class:`xaiprune.data.Split` (or the name ``"reference"``)
    the choice was computed on and raises ``ValueError`` if it is the test split, so a notebook states, in
    code that fails otherwise, which split each choice used. :meth:`as_dict` goes to ``metrics.json``.
    """

    def __init__(self):
        self.record: dict[str, str] = {}

    def made(self, what: str, on) -> str:
        split = on if isinstance(on, str) else getattr(on, "split", None)
        if split not in SELECTION_SPLITS:
            raise ValueError(f"choice {what!r} was made on split {split!r}; the protocol allows only "
                             f"{SELECTION_SPLITS} (the test split is for reporting once)")
        self.record[what] = split
        return split

    def split(self) -> str:
        """``val`` if any recorded choice used validation, else ``reference`` (what a claim's row reports)."""
        if not self.record:
            raise ValueError("no choice recorded: record the splits with Choices.made before writing a claim row")
        return "val" if "val" in self.record.values() else "reference"

    def as_dict(self) -> dict[str, str]:
        return dict(self.record)


def declared() -> list[dict]:
    """Every claim's declaration as plain data (for the report's protocol table and the docs)."""
    return [asdict(c) for c in CLAIMS.values()]
