"""The parameter schema: notebooks and schema agree, checks refuse what they should, and outputs are per profile."""

from __future__ import annotations

import ast
import json
import shutil

import nbformat
import papermill as pm
import pytest

from xaiprune import data, models, paths
from xaiprune.pruning import prune
from xaiprune.study import parameters, pipeline, report, schema
from xaiprune.study.schema import ParameterError

NOTEBOOKS = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_declares_exactly_the_schema(notebook):
    cell = pm.inspect_notebook(str(notebook))
    spec = parameters.declared(notebook.stem)
    assert list(cell) == list(spec), "names or order differ"
    for name, p in spec.items():
        assert ast.literal_eval(cell[name]["default"]) == p.default, name
        assert cell[name]["inferred_type_name"] == p.type.split("[")[0], name
        assert cell[name]["help"] == p.doc, name
        assert schema.conform(p.type, p.default, name) == p.default  # every default passes its own type


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_valid_and_their_text_has_no_stray_control_characters(notebook):
    """A Python string edit can turn "\\frac" into a form feed and "\\bar" into a backspace: the equation then
    renders as garbage. Every cell has an id (nbformat 4.5)."""
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        bad = sorted({hex(ord(ch)) for ch in cell.source if ord(ch) < 32 and ch not in "\n\t"})
        assert not bad, f"cell {i} holds control characters {bad}"
        assert cell.get("id"), f"cell {i} has no id"


def test_every_default_passes_its_checks_and_the_run_rules():
    checked = parameters.validate_run({stem: parameters.defaults(stem) for stem in parameters.NOTEBOOKS})
    assert set(checked) == {nb.stem for nb in NOTEBOOKS}


def test_names_repeated_for_speed_agree_with_the_library():
    assert set(parameters.CRITERIA) == set(prune.CRITERIA)
    assert set(parameters.SCOPES) == set(prune.SCOPES)
    assert set(parameters.ARCHS) == set(models.ARCHS)
    assert tuple(parameters.SIZES) == tuple(data.SIZES)
    assert parameters.flags_2d() == data.flags_2d()


@pytest.mark.parametrize("type_,value,expected", [
    ("float", 1, 1.0), ("list[float]", [0, 0.5], [0.0, 0.5]), ("list[list[int]]", [[1, 2]], [[1, 2]]), ("bool", False, False),
])
def test_conform_accepts_and_converts(type_, value, expected):
    got = schema.conform(type_, value, "x")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("type_,value,match", [
    ("int", True, "x=True: expected int, got bool"), ("int", 1.5, "expected int, got float"),
    ("list[float]", [0.1, "a"], "x[1]='a': expected float, got str"), ("list[int]", 3, "expected a list of int"),
    ("list[list[int]]", [[1], [2, "b"]], "x[1][1]='b'"),
])
def test_conform_refuses_with_the_name_and_the_value(type_, value, match):
    with pytest.raises(schema._Mismatch, match=match.replace("[", r"\[")):
        schema.conform(type_, value, "x")


@pytest.mark.parametrize("check,value,ok", [
    (schema.within(0, 1, hi_open=True), 0.0, True), (schema.within(0, 1, hi_open=True), 1.0, False),
    (schema.within(0, lo_open=True), 0.0, False), (schema.within(2), 2, True), (schema.nonempty, [], False),
    (schema.unique, [1, 1], False), (schema.length(3), [1, 2], False), (schema.optional(schema.one_of(("a",))), "", True),
])
def test_checks(check, value, ok):
    assert (check(value) is None) == ok


def test_an_explicit_data_root_must_hold_the_file(tmp_path):
    values = {**parameters.defaults("01_data"), "data_root": str(tmp_path)}
    with pytest.raises(ParameterError, match=f"expected the file {tmp_path}/pneumoniamnist.npz"):
        parameters.validate("01_data", values)
    with pytest.raises(data.DataError, match="does not exist"):
        data.resolve("pneumoniamnist", 28, tmp_path / "typo")


def test_fingerprint_ignores_the_profile_and_int_float_spelling():
    a = parameters.validate("07_distributed", {**parameters.defaults("07_distributed"), "fade_low": 1})
    b = parameters.validate("07_distributed", {**parameters.defaults("07_distributed"), "fade_low": 1.0, "profile": "x"})
    assert schema.fingerprint(a) == schema.fingerprint(b)
    assert schema.fingerprint(a) != schema.fingerprint({**a, "seed": 1})


def test_begin_checks_a_notebooks_namespace_and_points_artifacts_at_its_profile(isolated, monkeypatch):
    monkeypatch.setattr(paths, "PROFILE", "default")
    namespace = {**parameters.defaults("06_rl"), "profile": "mine", "other": 1}
    run = parameters.begin("06_rl", namespace)
    assert run.profile == "mine" and paths.artifact_dir("06_rl") == paths.ARTIFACTS / "mine" / "06_rl"
    with pytest.raises(ParameterError, match="06_rl: penalty=0.0: expected a value in"):
        parameters.begin("06_rl", {**namespace, "penalty": 0})


def test_skewed_fractions_fit_any_number_of_classes():
    assert data.skewed_fractions(2, 0.9) == pytest.approx({0: 0.9, 1: 0.1})
    five = data.skewed_fractions(5, 0.6)
    assert sum(five.values()) == pytest.approx(1) and five[4] == pytest.approx(0.1)


# ----- per-profile artifacts, hashes, --from and the report, with a fake notebook runner ---------------
def fake_execute(seen: list):
    """Stand-in for papermill: what a notebook does with its parameters (begin, write_metrics), in-process."""
    def run(input_path, output_path, parameters, **_):
        stem = paths.Path(input_path).stem
        run_ = pipeline.parameters.begin(stem, parameters)
        report.write_metrics(run_, {"seed": parameters.get("seed", -1), "profile_seen": run_.profile})
        shutil.copy(input_path, output_path)
        seen.append((stem, run_.profile))
    return run


@pytest.fixture
def project(isolated, monkeypatch):
    monkeypatch.setattr(paths, "REPORTS", isolated / "reports")
    monkeypatch.setattr(paths, "PROFILE", "default")
    monkeypatch.setattr(report, "notebook_to_html", lambda nb, out: out.write_text("<html></html>") or out)
    monkeypatch.setattr(report, "render_report", lambda meta, metrics, figures: "<html>claims need real metrics</html>")
    seen = []
    monkeypatch.setattr(pipeline.pm, "execute_notebook", fake_execute(seen))
    return seen


def metrics_files(profile: str) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in (paths.ARTIFACTS / profile).glob("*/metrics.json")}


def test_a_profile_key_in_a_params_file_is_refused(tmp_path):
    (tmp_path / "odd.yaml").write_text("shared:\n  profile: other\n")
    with pytest.raises(pipeline.PipelineError, match="'profile' is chosen with --profile"):
        pipeline.plan(pipeline.discover(), pipeline.load_profile("odd", tmp_path), [])


def test_smoke_after_default_leaves_default_intact_and_its_report_builds(project, capsys):
    assert pipeline.main(["--profile", "default", "--no-progress"]) == 0
    before = metrics_files("default")
    assert set(before) == {nb.stem for nb in NOTEBOOKS}
    assert pipeline.main(["--profile", "smoke", "--no-progress"]) == 0
    assert metrics_files("default") == before and set(metrics_files("smoke")) == set(before)
    assert json.loads(before["02_train"])["provenance"]["profile"] == "default"
    # the default report can be rebuilt from its own outputs after the smoke run
    assert pipeline.main(["--profile", "default", "--no-progress", "--from", "07_distributed"]) == 0
    summary = json.loads((paths.REPORTS / "default" / "summary.json").read_text())
    assert summary["metrics"]["02_train"]["profile_seen"] == "default"


def test_from_reuses_only_outputs_made_with_this_runs_parameters(project, capsys):
    assert pipeline.main(["--profile", "smoke", "--no-progress"]) == 0
    project.clear()
    assert pipeline.main(["--profile", "smoke", "--no-progress", "--from", "05_nlp", "-p", "02_train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "outputs of 02_train were made with other parameters" in err and "epochs=2 -> 1" in err
    assert "rerun from 02_train" in err and project == []
    assert pipeline.main(["--profile", "smoke", "--no-progress", "--from", "05_nlp"]) == 0
    assert [s for s, _ in project] == [nb.stem for nb in NOTEBOOKS if nb.stem >= "05_nlp"]
    assert pipeline.main(["--profile", "nope-never-run", "--from", "03_xai_scores"]) == 2  # no such profile file
    (paths.REPORTS / "smoke" / "02_train.ipynb").unlink()  # outputs without the executed notebook: refused up front
    project.clear()
    assert pipeline.main(["--profile", "smoke", "--no-progress", "--from", "05_nlp"]) == 2
    assert "reports/smoke/02_train.ipynb for profile 'smoke'; rerun from 02_train" in capsys.readouterr().err
    assert project == []


def test_the_report_refuses_stale_or_foreign_metrics(project):
    assert pipeline.main(["--profile", "smoke", "--no-progress"]) == 0
    steps = pipeline.plan(pipeline.discover(), pipeline.load_profile("smoke"), [])
    with pytest.raises(report.ReportError, match="stale; rerun from 03_xai_scores"):
        report.read_metrics("03_xai_scores", "smoke", "0" * 16)
    # a metrics file copied over from another profile is refused, not mixed in
    foreign = paths.stage_dir("04_pruning_comparison", "default")
    foreign.mkdir(parents=True)
    shutil.copy(paths.stage_dir("04_pruning_comparison", "smoke") / "metrics.json", foreign / "metrics.json")
    with pytest.raises(report.ReportError, match="of profile 'smoke', not '04_pruning_comparison' of 'default'"):
        report.read_metrics("04_pruning_comparison", "default")
    assert report.read_metrics("04_pruning_comparison", "smoke", steps[3].sha256)["profile_seen"] == "smoke"
