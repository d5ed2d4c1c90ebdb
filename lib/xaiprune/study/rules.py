"""The names every parameter may take and the rules over several parameters, for :mod:`xaiprune.study.parameters`.

The names every parameter may take come from the registry :mod:`xaiprune.names`, never from a system.
:data:`RULES` check values within one notebook, :data:`RUN_RULES` across the notebooks of one run; each returns
the problems it finds as sentences naming parameter, value and expectation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from medmnist import INFO

from xaiprune.names import (ARCHS, HOSPITAL, CRITERIA, SCOPES, SEGMENTS, SIZES, WARDS, XAI_CRITERIA, XAI_METHODS,  # noqa: F401
                            flags_2d, multiclass_flags_2d, scenario_devices, scenario_names)

DATA = ("flag", "size", "data_root")  # the parameters that locate the data file, the same in every notebook


def _multiclass_flag(v: str) -> str | None:
    if v == HOSPITAL or v in multiclass_flags_2d():
        return None
    why = ""
    if v in INFO:
        n = len(INFO[v]["label"])
        why = (f"{v} is multi-label; " if INFO[v]["task"] == "multi-label, binary-class"
               else f"{v} has {n} classes: top-k of {n} classes prunes nothing; " if n <= 2 else f"{v} is 3D; ")
    return (f"a single-label 2D MedMNIST flag with more than 2 classes, or {HOSPITAL!r} ({why}one of "
            f"{[HOSPITAL, *multiclass_flags_2d()]})")


def _second_flag(v: str) -> str | None:
    return None if v == "" else _multiclass_flag(v)


# ----- rules over several parameters of one notebook, and across notebooks -------------------------
def _data_file(v: dict) -> list[str]:
    """An explicit ``data_root`` must be a folder that holds the file (no silent fall-through)."""
    if not v.get("data_root"):
        return []
    from xaiprune import data

    root = Path(v["data_root"]).expanduser()
    if not root.is_dir():
        return [f"data_root={v['data_root']!r}: expected an existing folder holding the MedMNIST npz; {root} does not exist"]
    flags = ([v["dyfip_flag"], v["second_flag"]] if "dyfip_flag" in v else [v["flag"]] if "flag" in v
             else list(WARDS.values()))
    flags = [g for f in flags if f for g in (WARDS.values() if f == HOSPITAL else [f])]
    wants = [root / data.file_name(f, v["size"]) for f in dict.fromkeys(flags)]
    return [f"data_root={v['data_root']!r}: expected the file {w}; it is not there" for w in wants if not w.is_file()]


def _second_ward(v: dict) -> list[str]:
    """06_rl: the second ward is another ward (or "" to skip it)."""
    return [] if v["second_scenario"] != v["scenario"] else [
        f"second_scenario={v['second_scenario']!r}: expected another ward than scenario (or \"\" to skip it)"]


def _classes(flag: str) -> int:
    return sum(len(INFO[f]["label"]) for f in WARDS.values()) if flag == HOSPITAL else len(INFO[flag]["label"])


def _dyfip_setting(v: dict) -> list[str]:
    """08_dyfip: every k below both flags' numbers of classes, two different flags, a segment after the branch."""
    segments, out = SEGMENTS[v["archs"][0]], []
    for name in ("dyfip_flag", "second_flag"):
        n = _classes(v[name]) if v[name] else None
        if n is not None and max(v["ks"]) >= n:
            out.append(f"ks={v['ks']}: expected every k with 1 <= k < {n}, the number of classes of {name}={v[name]!r} "
                       "(k = all classes prunes nothing)")
    if v["second_flag"] == v["dyfip_flag"]:
        out.append(f"second_flag={v['second_flag']!r}: expected another flag than dyfip_flag (or \"\" for none)")
    if v["branch_block"] >= segments:
        out.append(f"branch_block={v['branch_block']}: expected 1 <= branch_block < {segments}, the segments of "
                   f"archs[0]={v['archs'][0]!r} (at least one must follow the branch)")
    return out


def _agilenn_setting(v: dict) -> list[str]:
    """10_agilenn: at least one feature channel on each side for every split ratio, a remote device that exists, the
    claim's regime among the regimes run."""
    out = []
    for name, ratio in [("split_ratio", v["split_ratio"]), *(("ablation_ratios", r) for r in v["ablation_ratios"])]:
        k = round(ratio * v["channels"])
        if not 1 <= k < v["channels"]:
            out.append(f"{name}: {ratio} x channels={v['channels']} rounds to {k} device channels; expected 1..{v['channels'] - 1}")
    names, source = scenario_devices(v["scenario"])
    if v["remote"] and (v["remote"] not in names or names.index(v["remote"]) == source):
        out.append(f"remote={v['remote']!r}: expected a device of scenario {v['scenario']!r} other than its source "
                   f"{names[source]!r} (one of {[n for n in names if n != names[source]]}), or '' for the fastest")
    if v["claim_regime"] not in v["regimes"]:
        out.append(f"claim_regime={v['claim_regime']!r}: expected one of regimes={v['regimes']} (the claim is decided "
                   "in a regime the notebook runs)")
    return out


RULES: dict[str, list[Callable[[dict], list[str]]]] = {
    "04_pruning_comparison": [
        lambda v: [] if 0.0 in v["ratios"] else [f"ratios={v['ratios']}: expected 0.0 among them (the unpruned reference "
                                                 "of the sensitivity table and of every curve)"],
        lambda v: [] if v["repair_draws"] <= v["draws"] else [
            f"repair_draws={v['repair_draws']}: expected at most draws={v['draws']} (the repairs reuse the sweep's draws)"],
    ],
    "06_rl": [_second_ward],
    "08_dyfip": [_dyfip_setting],
    "09_compression": [
        lambda v: [] if v["combo_stage"] == "share" or all(2 <= b <= 8 for b in v["combo_bits"]) else [
            f"combo_bits={v['combo_bits']}: expected average bits in [2, 8] when combo_stage='mixed' (each layer gets 2..8)"],
        lambda v: [f"filter_baselines={v['filter_baselines']}: expected non-XAI criteria (none of {list(XAI_CRITERIA)})"]
        if set(v["filter_baselines"]) & set(XAI_CRITERIA) else [],
    ],
    "10_agilenn": [_agilenn_setting],
    "11_ward_regime": [
        lambda v: [] if 0.0 in v["ratios"] else [f"ratios={v['ratios']}: expected 0.0 among them (the unpruned model "
                                                 "of every ward)"],
        lambda v: [] if v["explore_draws"] <= v["draws"] else [
            f"explore_draws={v['explore_draws']}: expected at most draws={v['draws']} (the exploration reuses the draws)"],
        lambda v: [f"explore_criteria: {sorted(set(v['criteria']) & set(v['explore_criteria']))} also in criteria; "
                   "expected each criterion in one list"] if set(v["criteria"]) & set(v["explore_criteria"]) else [],
    ],
    "07_distributed": [
        lambda v: [] if v["fault_at"] < v["fault_requests"] else [
            f"fault_at={v['fault_at']}: expected a request index below fault_requests={v['fault_requests']}"],
        lambda v: [] if v["dead_after_s"] > v["heartbeat_s"] else [
            f"dead_after_s={v['dead_after_s']}: expected more than heartbeat_s={v['heartbeat_s']}"],
        lambda v: [] if v["straggler_delay_s"] > v["hop_margin_s"] else [
            f"straggler_delay_s={v['straggler_delay_s']}: expected more than hop_margin_s={v['hop_margin_s']} "
            "(a slower straggler never misses a deadline)"],
        lambda v: [] if v["down_s"] > v["dead_after_s"] else [
            f"down_s={v['down_s']}: expected more than dead_after_s={v['dead_after_s']} (the device must be "
            "declared dead before it comes back)"],
    ],
}


def _agree(by: dict[str, dict], name: str) -> list[str]:
    seen = {stem: v[name] for stem, v in by.items() if name in v}
    if len({json.dumps(x) for x in seen.values()}) <= 1:
        return []
    return [f"{name} differs between notebooks ({seen}): expected one value for the whole run"]


def _first_arch(by: dict[str, dict]) -> list[str]:
    """05-07 plan, train an agent for and serve the first of ``archs``: it must be the same and trained."""
    out, firsts = [], {s: by[s]["archs"][0] for s in ("05_nlp", "06_rl", "07_distributed") if s in by}
    if len(set(firsts.values())) > 1:
        out.append(f"archs: the first architecture differs between {firsts}: expected the same (05 profiles it, "
                   "06 trains the agent on those profiles, 07 serves it)")
    for stem, need in [("03_xai_scores", by.get("03_xai_scores", {}).get("archs", [])),
                       ("04_pruning_comparison", by.get("04_pruning_comparison", {}).get("archs", [])),
                       *((s, [a]) for s, a in firsts.items())]:
        for source in ("02_train", *(["04_pruning_comparison"] if stem in firsts else [])):
            have = by.get(source, {}).get("archs")
            missing = [a for a in need if have is not None and a not in have]
            if missing:
                out.append(f"{stem}.archs: {missing} expected among {source}.archs={have}")
    return out


def _levels(by: dict[str, dict]) -> list[str]:
    if "07_distributed" not in by or "04_pruning_comparison" not in by:
        return []
    level, ratios = by["07_distributed"]["static_level"], by["04_pruning_comparison"]["ratios"]
    return [] if level in ratios else [f"07_distributed.static_level={level}: expected one of the levels profiled by "
                                       f"04_pruning_comparison.ratios={ratios}"]


def _agent_scenario(by: dict[str, dict]) -> list[str]:
    if "07_distributed" not in by or "06_rl" not in by or by["07_distributed"]["scenario"] == by["06_rl"]["scenario"]:
        return []
    return [f"07_distributed.scenario={by['07_distributed']['scenario']!r}: expected 06_rl.scenario="
            f"{by['06_rl']['scenario']!r}, the scenario the agent is trained on"]


def _agilenn_arch(by: dict[str, dict]) -> list[str]:
    """10_agilenn compares AgileNN with the first of its archs, which 02_train must have trained."""
    if "10_agilenn" not in by or "02_train" not in by:
        return []
    arch, have = by["10_agilenn"]["archs"][0], by["02_train"]["archs"]
    return [] if arch in have else [f"10_agilenn.archs: {arch!r} expected among 02_train.archs={have}"]


def _compression_arch(by: dict[str, dict]) -> list[str]:
    """09_compression compresses the first of its archs, which 02_train must have trained."""
    if "09_compression" not in by or "02_train" not in by:
        return []
    arch, have = by["09_compression"]["archs"][0], by["02_train"]["archs"]
    return [] if arch in have else [f"09_compression.archs: {arch!r} expected among 02_train.archs={have}"]


def _hospital_archs(by: dict[str, dict]) -> list[str]:
    """11_ward_regime prunes hospital-wide models, which 02_train must have trained."""
    if "11_ward_regime" not in by or "02_train" not in by:
        return []
    want, have = by["11_ward_regime"]["hospital_archs"], by["02_train"]["hospital_archs"]
    missing = [a for a in want if a not in have]
    return [f"11_ward_regime.hospital_archs: {missing} expected among 02_train.hospital_archs={have}"] if missing else []


def _one_fade(by: dict[str, dict]) -> list[str]:
    """07 serves the fade 06's agent was judged on: one depth, declared in both."""
    if "06_rl" not in by or "07_distributed" not in by:
        return []
    six, seven = by["06_rl"]["fade_low"], by["07_distributed"]["fade_low"]
    return [] if six == seven else [f"07_distributed.fade_low={seven}: expected 06_rl.fade_low={six} (07 serves the fade "
                                    "06 judged its agent on; set both, e.g. -p fade_low=...)"]


RUN_RULES: list[Callable[[dict[str, dict]], list[str]]] = [
    lambda by: [p for name in ("profile", *DATA) for p in _agree(by, name)],
    _first_arch, _levels, _agent_scenario, _agilenn_arch, _compression_arch, _hospital_archs, _one_fade,
]
