"""The papermill pipeline: parameter checks before anything runs, clean notebooks, and the smoke run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nbformat
import pytest

from xaiprune import data, paths, serving
from xaiprune.synthetic import write_synthetic
from xaiprune.study import pipeline
from conftest import needs_real_data, real_root

NOTEBOOKS = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture
def no_execution(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was executed although the parameters were invalid")

    monkeypatch.setattr(pipeline.pm, "execute_notebook", refuse)


@pytest.mark.parametrize("profile,overrides,match", [
    ("smoke", ["epoch=3"], "'epoch' is declared by no notebook"),
    ("smoke", ["02_train.n_per_class=3"], "not declared by 02_train"),
    ("smoke", ["99_nope.seed=1"], "notebook '99_nope' does not exist"),
    ("smoke", ["seed=abc"], "seed='abc': expected int, got str"),
    ("smoke", ["archs=small_cnn"], "archs='small_cnn': expected a list of str"),
    ("smoke", ["novalue"], "expected name=value"),
    ("smoke", ["profile=other"], "chosen with --profile"),
    ("smoke", ["03_xai_scores.profile=other"], "chosen with --profile"),
    # each used to be accepted or to fail only inside a notebook
    ("default", ["06_rl.penalty=-1"], "06_rl: penalty=-1.0: expected a value in (0, inf)"),
    ("default", ["scenario=nope"], "scenario='nope': expected one of ['constrained'"),
    ("default", ["ratios=[1.5]"], "ratios=[1.5]: expected every element a value in [0, 1)"),
    ("default", ['ratios=[0.1,"a"]'], "ratios[1]='a': expected float, got str"),
    ("default", ["ratios=[0.1,0.5]"], "expected 0.0 among them"),
    ("default", ["static_level=0.55"], "07_distributed.static_level=0.55: expected one of the levels profiled"),
    ("default", ["fade_low=0"], "fade_low=0.0: expected a value in (0, 1]"),
    ("default", ["flag=nope"], "flag='nope': expected one of ["),
    ("default", ["size=30"], "size=30: expected one of [28, 64, 128, 224]"),
    ("default", ["data_root=/typo"], "data_root='/typo': expected an existing folder"),
    ("default", ["ref_bias=[0.9,0.1]"], "ref_bias=[0.9, 0.1]: expected float, got list"),
    ("default", ["07_distributed.scenario=ward-4b"], "expected 06_rl.scenario='ward-edge'"),
    ("default", ["06_rl.archs=[resnet18]"], "archs: the first architecture differs"),
    ("default", ["07_distributed.fade_low=0.05"], "07_distributed.fade_low=0.05: expected 06_rl.fade_low=0.03"),
    ("default", ["epochs=0"], "02_train: epochs=0"),  # 02's alone: 08 and 10 name their own epochs
])
def test_bad_parameters_rejected_before_any_notebook_runs(profile, overrides, match, no_execution, capsys):
    assert pipeline.main(["--profile", profile, *(a for o in overrides for a in ("-p", o))]) == 2
    err = capsys.readouterr().err
    assert "rejected before running anything" in err or "-p" in err
    assert match in err


def test_an_unregistered_kernel_is_an_error_not_a_fallback(no_execution, capsys):
    assert pipeline.main(["--profile", "smoke", "--kernel", "no-such-kernel"]) == 2
    assert "--kernel no-such-kernel: no such Jupyter kernel" in capsys.readouterr().err


def test_check_validates_and_runs_nothing(no_execution, capsys):
    assert pipeline.main(["--profile", "smoke", "--check", "-p", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "parameters valid" in out and "nothing was run" in out and "07_distributed" in out


@pytest.mark.parametrize("profile", sorted(f.stem for f in paths.PARAMS.glob("*.yaml")))
def test_every_profile_passes_its_check(profile, no_execution, capsys):
    assert pipeline.main(["--profile", profile, "--check"]) == 0, capsys.readouterr().err
    assert f"profile '{profile}': parameters valid" in capsys.readouterr().out


def test_unknown_profile_lists_known_ones(no_execution, capsys):
    assert pipeline.main(["--profile", "huge"]) == 2
    err = capsys.readouterr().err
    assert "huge" in err and "smoke" in err and "default" in err


def test_every_profile_is_valid_and_overrides_apply():
    for profile in ("smoke", "default", "full"):
        steps = pipeline.plan(pipeline.discover(), pipeline.load_profile(profile), [])
        assert [s.stem for s in steps] == [nb.stem for nb in NOTEBOOKS]
    steps = pipeline.plan(pipeline.discover(), pipeline.load_profile("smoke"),
                          ["seed=5", "02_train.epochs=1", "archs=[small_cnn, resnet18]", "07_distributed.ewma=1"])
    by = {s.stem: s.parameters for s in steps}
    assert by["01_data"]["seed"] == 5 and by["02_train"]["seed"] == 5
    assert by["02_train"]["epochs"] == 1 and by["02_train"]["archs"] == ["small_cnn", "resnet18"]
    assert "epochs" not in by["01_data"] and all(p["profile"] == "smoke" for p in by.values())
    assert by["07_distributed"]["ewma"] == 1.0 and isinstance(by["07_distributed"]["ewma"], float)
    assert by["03_xai_scores"]["ig_steps"] == 8  # a default of the schema, passed explicitly


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean_and_parameterised(notebook):
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "committed with outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def run_smoke(root, data_root, *args, **env):
    """The smoke profile through papermill in a scratch project root (a copy of notebooks/ and params/)."""
    for folder in ("notebooks", "params"):
        shutil.copytree(paths.ROOT / folder, root / folder)
    env = {**os.environ, "XAIPRUNE_HOME": str(root), "MEDMNIST_ROOT": str(data_root), **env}
    proc = subprocess.run([sys.executable, "-m", "xaiprune.study.pipeline", "--profile", "smoke", "--no-progress", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "reports" / "smoke"


@pytest.mark.slow
@needs_real_data
def test_smoke_pipeline_end_to_end(tmp_path):
    """Run the smoke profile through papermill on real PneumoniaMNIST in a scratch project root."""
    out = run_smoke(tmp_path, real_root())
    for nb in NOTEBOOKS:
        assert (out / nb.name).is_file() and (out / f"{nb.stem}.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {nb.stem for nb in NOTEBOOKS}
    train_metrics = summary["metrics"]["02_train"]["small_cnn"]
    assert 0.5 < train_metrics["test_auc"] <= 1 and 0 < train_metrics["test_acc"] <= 1
    assert summary["metrics"]["01_data"]["counts"]["test"] == {"normal": 234, "pneumonia": 390}
    meta = summary["metadata"]
    assert meta["profile"] == "smoke" and set(meta["notebooks"]) == {nb.stem for nb in NOTEBOOKS}
    assert meta["versions"]["torch"].startswith("2.13.0")
    index = (out / "index.html").read_text()
    assert "test_auc" in index and "02_train.html" in index
    m = summary["metrics"]
    assert set(m["03_xai_scores"]["small_cnn"]["spearman"]) >= {"lrp~l1", "lrp~taylor"}
    assert {"lrp", "taylor", "l1", "random", "winners"} <= set(m["04_pruning_comparison"]["small_cnn"])
    assert m["05_nlp"]["status"] == {"ward-edge": "optimal", "ward-4": "optimal"}
    assert 0 < m["06_rl"]["nominal"]["acc_vs_optimum"] <= 1 + 1e-9 and 0 <= m["06_rl"]["fade"]["violation_rate"] <= 1
    assert 0 < m["06_rl"]["estimator_view"]["acc_vs_optimum"] <= 1 + 1e-9 and m["06_rl"]["large"] is None
    assert set(m["06_rl"]["ablation"]) == {"behaviour cloning", "+ DAgger", "+ PPO"}
    assert {"surrogate_error"} <= set(m["05_nlp"]) and "change_mean_abs_points" in m["05_nlp"]["surrogate_error"]
    art = tmp_path / "artifacts" / "smoke"
    for rel in ("04_pruning_comparison/sensitivity_small_cnn.csv", "05_nlp/profiles_small_cnn.json",
                "06_rl/agent_ward-edge_lrp.zip", "06_rl/agent_ward-edge_lrp.json", "06_rl/baseline_ward-edge.zip",
                "07_distributed/summary.csv", "07_distributed/replayed.csv",
                "07_distributed/policies/requests.jsonl", "07_distributed/faults/events.jsonl"):
        assert (art / rel).is_file(), rel
    m7 = m["07_distributed"]
    assert m7["shield"]["requests"] == 24 and "holds" in m7["premise"] and m7["serving"]["hop_overhead_ms"]["declared_ms"] == 2.0
    assert all(f["wrong_answers"] == 0 for f in m7["faults"].values()), "a fault changed an answer"
    assert {k for k, f in m7["faults"].items() if f["simulated"]} == {"rejoin"}  # the partition closes a real connection
    assert m7["serving"]["loopback_only"] and m7["serving"]["hosts"] == ["127.0.0.1"]
    assert len(m7["policies"]) == 6 and all(p["requests"] == 24 for p in m7["policies"].values())
    replayed = m7["replayed"][m7["scenario"]]  # the baselines on XAI + RL's served plans, replayed offline
    assert {r["plans_of"] for r in replayed.values()} == {"XAI + RL"} and len(replayed) == 2
    assert all(r["requests"] == 24 and r["max_abs_logit_difference"] < 1e-3 for w in m7["replayed"].values()
               for r in w.values())
    assert set(m7["faults"]) == set(serving.FAULTS) and set(m7["throughput_rps"]) == {"window_1", "window_4"}
    assert all(f["lost"] == 0 and f["duplicated"] == 0 and f["answered_once"] + f["failed"] == f["requests"]
               for f in m7["faults"].values())
    page = (out / "report.html").read_text()
    assert "Claims against evidence" in page and "data:image/png;base64," in page and "07_distributed.html" in page


def test_from_an_unknown_notebook_is_refused(no_execution, capsys):
    assert pipeline.main(["--profile", "smoke", "--from", "99_nope"]) == 2
    assert "--from 99_nope: no such notebook" in capsys.readouterr().err


def test_to_before_from_is_refused(no_execution, capsys):
    assert pipeline.main(["--profile", "smoke", "--to", "99_nope"]) == 2
    assert "--to 99_nope: expected a notebook at or after the first one run" in capsys.readouterr().err


SITECUSTOMIZE = """
# Test only: trust the synthetic files (their MD5 and split sizes) in every process of the run (pipeline, kernels, workers).
import medmnist.info
for flag, md5 in {md5s!r}.items():
    medmnist.info.INFO[flag].update(MD5=md5, MD5_64=md5, n_samples={n!r})
"""


@pytest.mark.slow
def test_smoke_chain_on_a_synthetic_multiclass_flag_at_64x64(tmp_path):
    """Every notebook runs unchanged on a 5-class RGB flag at 64x64 (synthetic, in the official format): a flag and a
    size the study was not tuned on, through the planner's agent too; the hospital-wide model of 02 and 11 unites it
    with synthetic pneumonia and breast files."""
    flag, n, size = "retinamnist", {"train": 400, "val": 300, "test": 100}, 64
    md5s = {f: data.md5sum(write_synthetic(tmp_path / "data", f, size=size, n=n, separable=True))
            for f in ("pneumoniamnist", "breastmnist", flag)}
    path = tmp_path / "data" / data.file_name(flag, size)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE.format(md5s=md5s, n=n))
    out = run_smoke(tmp_path / "project", path.parent, "-p", f"flag={flag}", "-p", f"size={size}",
                    PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    m = json.loads((out / "summary.json").read_text())["metrics"]
    names = data.class_names(flag)
    assert m["01_data"]["counts"]["test"] == {c: 20 for c in names}
    assert set(m["01_data"]["reference_counts"]["biased"]) == set(names)
    assert m["02_train"]["small_cnn"]["test_auc"] > 0.6  # the classes are separable: it learned something
    assert 0 < m["06_rl"]["nominal"]["acc_vs_optimum"] <= 1 + 1e-9, "the agent trained and decided at 64x64"
    assert set(m["07_distributed"]["policies"]) and all(f["lost"] == 0 for f in m["07_distributed"]["faults"].values())
