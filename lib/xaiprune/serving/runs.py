"""The three runs of ``07_distributed.ipynb``: what they share, the policies each serves, and who each fault hits.

:func:`prepare` loads once what every run shares (the checkpoint, each criterion's filter scores, 05's profiles,
06's agent, the fade) from the notebook's checked parameters. :func:`serve_ward` serves the six policies on
the scenario under its fade, one request in flight; :func:`serve_stress` the unpruned placement and the
optimum (planned on estimates, and on the trace: the oracle) on a second ward whose fade forces pruning;
:func:`fault_plan` chooses the device each fault hits and :func:`serve_faults` serves the load-and-faults run
(one request in flight against ``window``, then one policy per fault kind). :func:`replay_served` replays a
served policy's plans with each baseline criterion's filters (:mod:`xaiprune.serving.replay`) and checks the
replay against what the system returned. Every run goes to ``artifacts/<profile>/07_distributed/<run>/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from xaiprune import data, paths, train
from xaiprune.planning import agent, nlp, system
from xaiprune.planning.env import fade_trace
from xaiprune.serving import evidence, replay
from xaiprune.serving.config import RunConfig
from xaiprune.serving.launcher import Outcome, launch
from xaiprune.serving.records import summarise
from xaiprune.serving.segments import write_scores

STAGE = "07_distributed"
TOLERANCE = 1e-3  # largest |replayed - served| logit accepted for the served criterion
RUN_KEYS = ("data_root", "seed", "emulate", "heartbeat_s", "dead_after_s", "hop_margin_s", "strikes", "ewma")


@dataclass
class Study:
    """What every run of 07 shares, loaded once by :func:`prepare`."""

    values: dict                   # the notebook's checked parameters
    arch: str                      # the architecture served (the first of ``archs``)
    info: dict                     # :func:`xaiprune.data.check_flag_size`
    ward: system.Scenario          # the scenario 06's agent was trained on
    stress: system.Scenario | None  # the stress scenario (None: skipped)
    profiles: system.Profiles      # 05's profiles of ``arch``
    profiles_file: Path
    agent_file: Path               # 06's agent (.zip, .json) for these profiles' criterion
    checkpoint: str                # 02's checkpoint, relative to the project root
    model: torch.nn.Module
    reference: data.Split          # the reference draw (from validation) every criterion's filters are scored on
    scores: dict[str, str]         # criterion -> its filter scores file (``scores/scores_<criterion>.pt``)
    out_dir: Path                  # artifacts/<profile>/07_distributed
    n: int                         # requests per policy on the ward
    trace: np.ndarray              # (n, N, N) bandwidth multipliers of the ward's fade

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.info["n_channels"], self.values["size"], self.values["size"])

    def config(self, scenario: str, policies: list[dict], n_requests: int, trace, **kw) -> RunConfig:
        """A :class:`RunConfig` of ``policies`` on ``scenario`` (a file of params/scenarios/) with the shared settings."""
        v = self.values
        spec = yaml.safe_load((paths.PARAMS / "scenarios" / f"{scenario}.yaml").read_text())
        return RunConfig(arch=self.arch, flag=v["flag"], size=v["size"], checkpoint=self.checkpoint, scores=self.scores,
                         scenario=spec, profiles=paths.relative(self.profiles_file), policies=policies,
                         n_requests=n_requests, trace=None if trace is None else np.asarray(trace).tolist(),
                         **{k: v[k] for k in RUN_KEYS}, **kw)

    def describe(self) -> str:
        return (f"{self.arch} on {self.values['scenario']}: {self.ward.n} devices = {self.ward.n} processes; {self.profiles.S} "
                f"segments; {self.n} requests per policy; filter scores for {list(self.scores)} in "
                f"{paths.relative(self.out_dir / 'scores')}")


def prepare(values: dict) -> Study:
    """Check that 05 and 06 ran for the served architecture, load the model and score every filter once per criterion."""
    v = values
    info = data.check_flag_size(v["flag"], v["size"])
    arch, ward = v["archs"][0], system.load_scenario(v["scenario"])
    profiles_file = paths.stage_dir("05_nlp") / f"profiles_{arch}.json"
    agent_file = agent.agent_file(v["scenario"], agent.criterion_of_profiles())
    profiles = system.load_profiles(profiles_file)
    meta = agent_file.with_suffix(".json")
    if not meta.is_file() or json.loads(meta.read_text()).get("arch") != arch:
        raise FileNotFoundError(f"{agent_file}.zip/.json: no agent trained for {arch} on {v['scenario']}; run "
                                f"06_rl.ipynb with archs=[{arch!r}] and scenario={v['scenario']!r}")
    stress = system.load_scenario(v["stress_scenario"]) if v["stress_scenario"] else None
    if v["static_level"] not in profiles.levels:
        raise ValueError(f"static_level={v['static_level']}: expected one of the profiled levels {profiles.levels}")
    checkpoint = train.trained_checkpoints([arch], v["flag"], v["size"])[arch]
    model = train.load(paths.ROOT / checkpoint).model
    reference = data.reference_set(data.load_split(v["flag"], "val", v["size"], v["data_root"] or None),
                                   v["n_per_class"], seed=v["seed"])
    out_dir = paths.artifact_dir(STAGE)
    scores = write_scores(model, ["lrp", *v["baselines"]], reference, out_dir / "scores",
                          (info["n_channels"], v["size"], v["size"]))
    n_test = info["n_samples"]["test"]
    n = n_test if v["n_requests"] == 0 else min(v["n_requests"], n_test)
    return Study(v, arch, info, ward, stress, profiles, profiles_file, agent_file, checkpoint, model, reference, scores,
                 out_dir, n, fade_trace(n, ward.n, low=v["fade_low"]))


@dataclass
class Served:
    """One launched run: its outcome, its per-policy summary (:func:`~xaiprune.serving.summarise`), its ward."""

    scenario: str                            # its file in params/scenarios/
    ward: system.Scenario
    outcome: Outcome
    summary: pd.DataFrame
    n: int                                   # requests per policy
    trace: np.ndarray | None
    faults: list[dict] = field(default_factory=list)

    @property
    def requests(self) -> pd.DataFrame:
        return self.outcome.requests

    @property
    def order(self) -> list[str]:
        return list(self.summary.index)

    def describe(self) -> str:
        o = self.outcome
        return (f"{paths.relative(o.folder)}: {len(o.requests)} requests of {len(self.summary)} policies answered in "
                f"{o.seconds:.0f} s by {o.summary['world_size']} processes; exit codes {o.returncodes}")


def _serve(study: Study, scenario: str, policies: list[dict], n: int, trace, folder: str, **kw) -> Served:
    out = launch(study.config(scenario, policies, n, trace, **kw), study.out_dir / folder, overwrite=True)
    order = [p["name"] for p in policies]
    summary = with_endpoints(summarise(out.requests, study.values["flag"], order, study.profiles), out.requests,
                             study.info["task"])
    return Served(scenario, system.load_scenario(scenario), out, summary, n, trace, kw.get("fault") or [])


def with_endpoints(summary: pd.DataFrame, requests: pd.DataFrame, task: str) -> pd.DataFrame:
    """``summary`` with ACC, balanced accuracy (after ACC) and AUC from :func:`xaiprune.stats.endpoints`."""
    if summary.empty:
        return summary
    ends = evidence.endpoints_table(requests, task).reindex(summary.index)
    out = summary.drop(columns=["bal_acc"], errors="ignore").assign(acc=ends["acc"], auc=ends["auc"])
    out.insert(out.columns.get_loc("acc") + 1, "bal_acc", ends["bal_acc"].astype(float))
    return out


def ward_policies(static_level: float, agent_file: Path, shield: dict | None = None) -> list[dict]:
    """The six policies of 07's table: unpruned, the optimum (on estimates and the oracle), the agent (with ``shield``,
    :class:`xaiprune.planning.shield.Shield`'s settings, when given), static, local."""
    return [{"name": "no pruning", "planner": "no_pruning", "criterion": "lrp"},
            {"name": "XAI + NLP", "planner": "nlp", "criterion": "lrp"},
            {"name": "XAI + NLP (oracle)", "planner": "nlp", "criterion": "lrp", "view": "oracle"},
            {"name": "XAI + RL", "planner": "rl", "criterion": "lrp", "agent": paths.relative(agent_file),
             **({"shield": shield} if shield else {})},
            {"name": f"static {static_level:.0%} XAI", "planner": "static", "criterion": "lrp", "level": static_level},
            {"name": "one device", "planner": "local", "criterion": "lrp"}]


def serve_ward(study: Study) -> Served:
    """The six policies on the ward under its fade, one request in flight (``policies/``; ``summary.csv``)."""
    v = study.values
    shield = {"margin": v["shield_margin"], "accuracy_share": v["shield_accuracy"]}
    run = _serve(study, v["scenario"], ward_policies(v["static_level"], study.agent_file, shield),
                 study.n, study.trace, "policies", window=1)
    run.summary.to_csv(study.out_dir / "summary.csv")
    return run


def serve_stress(study: Study) -> Served | None:
    """Unpruned placement, the optimum (estimates, oracle) and the whole model on the source, on the second ward's fade
    (``stress/``); None if skipped."""
    if study.stress is None:
        return None
    v = study.values
    n = min(v["stress_requests"], study.info["n_samples"]["test"])
    every = ward_policies(v["static_level"], study.agent_file)
    policies = every[:3] + every[-1:]
    return _serve(study, v["stress_scenario"], policies, n, fade_trace(n, study.stress.n, low=v["stress_fade_low"]),
                  "stress")


def most_used(devices: list[str], workers: list[str], without=()) -> list[str]:
    """The workers in ``devices`` (a plan's device per segment), most segments first, ties in the ward's order."""
    used = [d for d in devices if d in workers and d not in without]
    return sorted(set(used), key=lambda d: (-used.count(d), workers.index(d)))


def fault_plan(study: Study, nominal: list[str]) -> dict:
    """Who each fault hits, given ``nominal``, the devices of the optimum's plan before the fade.

    The victim is the worker the plan uses most, the partition's peer the second; the hang hits the worker
    the optimum uses most once the victim is gone (the kill and the hang need two devices); the duplicate,
    the device that sends the result back. When fewer than two workers are used, a fixed unpruned plan
    spreading the segments over every worker is served instead, so that every fault meets a request.
    Returns ``base`` (the policy served), ``victim``, ``peer``, ``hang``, ``kinds`` (kind -> its settings, in the
    order served: the partition closes a real connection, so it comes after the faults that need the link).
    """
    ward, v = study.ward, study.values
    workers = [d.name for j, d in enumerate(ward.devices) if j != ward.source]
    ranked, base = most_used(nominal, workers), {"planner": "nlp", "criterion": "lrp"}
    if len(ranked) < 2:
        ranked, S = workers, study.profiles.S
        base = {"planner": "fixed", "criterion": "lrp",
                "plan": {"devices": [workers[s % len(workers)] for s in range(S)], "levels": [0.0] * S}}
    victim, peer = ranked[0], ranked[1]
    after_kill = nlp.solve(ward.with_changes(unavailable=(victim,)), study.profiles, "enumeration").plan
    hang = (most_used([ward.devices[j].name for j in after_kill.devices], workers) if after_kill else []) or [peer]
    last = [d for d in (nominal if base["planner"] == "nlp" else base["plan"]["devices"])[-1:] if d in workers]
    kinds = {"duplicate": {"device": (last or [victim])[0]}, "bad_header": {}, "bad_shape": {},
             "rejoin": {"down_s": v["down_s"]}, "straggler": {"delay_s": v["straggler_delay_s"]},
             "partition": {"peer": peer}, "kill": {}, "hang": {"device": hang[0]}}  # the last three for good
    return {"base": base, "victim": victim, "peer": peer, "hang": hang[0], "kinds": kinds}


def serve_faults(study: Study, plan: dict) -> Served:
    """The load-and-faults run at nominal bandwidth (``faults/``): window 1, ``window``, then one policy per fault."""
    v, base = study.values, plan["base"]
    policies = [{"name": "window 1", **base, "window": 1}, {"name": f"window {v['window']}", **base}]
    faults = []
    for kind, extra in plan["kinds"].items():
        policies.append({"name": kind, **base})
        faults.append({"policy": kind, "device": plan["victim"], "request": v["fault_at"], "kind": kind, **extra})
    return _serve(study, v["scenario"], policies, v["fault_requests"], None, "faults", window=v["window"], fault=faults)


def replay_served(study: Study, run: Served, name: str, tolerance: float = TOLERANCE) -> dict:
    """Policy ``name``'s served plans replayed with its own criterion and each baseline's, checked against the served logits.

    Returns ``plans_of``, ``criterion`` (the served one), ``table`` (:func:`xaiprune.serving.replay.table`),
    ``max_difference`` (largest |replayed - served| logit of the served criterion; above ``tolerance`` the
    replay does not build the devices' models and this raises), ``built``, ``seconds`` and ``requests``.
    """
    v = study.values
    served = run.requests[run.requests["policy"] == name].sort_values("request")
    own = served["criterion"].iloc[0]
    scores = {c: torch.load(paths.ROOT / p, map_location="cpu", weights_only=True) for c, p in study.scores.items()}
    test = data.load_split(v["flag"], "test", v["size"], v["data_root"] or None)
    rep = replay.replay(study.model, scores, study.profiles.segments, study.input_shape, test, served,
                        criteria=list(dict.fromkeys([own, *v["baselines"]])))
    diff = replay.max_difference(rep, served, own)
    if not diff < tolerance:
        raise AssertionError(f"replaying {name}'s own criterion ({own}) on its served plans gives logits up to {diff:.3g} "
                             f"away from those the system returned (tolerance {tolerance}): the replay does not build "
                             f"the devices' models (another checkpoint, score file or test split?)")
    return {"plans_of": name, "criterion": own, "table": replay.table(rep, v["flag"]), "max_difference": diff,
            "built": rep.built, "seconds": rep.seconds, "requests": len(served), "ward": run.scenario}


def wrong_answers(study: Study, run: Served, tolerance: float = 1e-4) -> dict[str, dict]:
    """Per policy of ``run``: how many of its answers differ from the single-process reference by more than
    ``tolerance`` in a logit (:func:`xaiprune.serving.replay.wrong_answers`, every criterion's scores of the study)."""
    v = study.values
    scores = {c: torch.load(paths.ROOT / p, map_location="cpu", weights_only=True) for c, p in study.scores.items()}
    test = data.load_split(v["flag"], "test", v["size"], v["data_root"] or None)
    return replay.wrong_answers(study.model, scores, study.profiles.segments, study.input_shape, test, run.requests,
                                tolerance)


def save_replays(study: Study, replayed: dict[str, dict]) -> str:
    """Every replay's table (scenario, criterion) to ``replayed.csv``; its path relative to the project root."""
    path = study.out_dir / "replayed.csv"
    pd.concat({ward: r["table"] for ward, r in replayed.items()}, names=["scenario", "criterion"]).to_csv(path)
    return paths.relative(path)
