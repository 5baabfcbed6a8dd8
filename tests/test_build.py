"""Tests for course_utils.build: injecting references, generating the student edition, --check."""

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest

from course_utils import build, checking
from course_utils.build import BuildError, strip_solutions
from course_utils.paths import REPO_DIR, SOLUTIONS_NOTEBOOKS_DIR
from course_utils.solutions import ch01_model_definition as ref

EXERCISE_CELL = (
    "# Exercise: write build_mlp.\ndef build_mlp(sizes):\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION\n"
)


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title")]
    for i, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source, execution_count=i + 1)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output\n")]
        cell.metadata = {"tags": ["nbval-ignore-output"], "scrolled": True, "execution": {"t": 1}}
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    return nb


@pytest.fixture(autouse=True)
def no_translations(tmp_path, monkeypatch):
    """These tests build made-up notebooks: the course's own catalogs do not translate them (test_translate.py)."""
    from course_utils import translate

    monkeypatch.setattr(translate, "TRANSLATIONS_DIR", tmp_path / "no-translations")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    source, out = tmp_path / "solutions", tmp_path / "student"
    source.mkdir()
    out.mkdir()
    return source, out


def _write(path: Path, nb: nbformat.NotebookNode) -> None:
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def test_indented_solution_regions_become_raise_not_implemented():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    assert strip_solutions(source) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError"


def test_top_level_solution_regions_become_ellipsis_assignments_that_do_not_raise():
    source = (
        "### BEGIN SOLUTION\nn_params = 3\nlayers, extra = [1], 2\nn_params += 1\n### END SOLUTION\nprint(n_params)"
    )
    stub = strip_solutions(source)
    assert stub == "# YOUR CODE HERE\nn_params = ...\nprint(n_params)"
    exec(compile(stub, "<stub>", "exec"), {})  # runs without raising


def test_several_regions_in_one_cell_are_all_stubbed():
    source = (
        "class Net:\n    def __init__(self):\n"
        "        ### BEGIN SOLUTION\n        self.a = 1\n        ### END SOLUTION\n\n"
        "    def forward(self, x):\n        ### BEGIN SOLUTION\n        return x\n        ### END SOLUTION\n"
    )
    stub = strip_solutions(source)
    assert stub.count("raise NotImplementedError") == 2
    assert "self.a" not in stub and "return x" not in stub


def test_unbalanced_markers_are_an_error():
    with pytest.raises(BuildError, match="unbalanced"):
        strip_solutions("def f():\n    ### BEGIN SOLUTION\n    return 1\n")


def test_student_edition_clears_outputs_and_keeps_only_tags():
    nb = _notebook("x = 1")
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    student = build.student_edition(nb)
    assert "widgets" not in student.metadata
    cell = student.cells[1]
    assert cell.outputs == [] and cell.execution_count is None
    assert cell.metadata == {"tags": ["nbval-ignore-output"]}
    assert nb.cells[1].outputs, "the source edition itself is not modified"


def test_reference_module_name_follows_the_notebook_name():
    assert build.reference_module_name(Path("02_model_blocks.ipynb")) == "course_utils.solutions.ch02_model_blocks"
    assert build.reference_module_name(Path("02_model_blocks_a.ipynb")) == "course_utils.solutions.ch02_model_blocks"
    with pytest.raises(BuildError, match="must look like"):
        build.reference_module_name(Path("Untitled.ipynb"))


def test_build_injects_the_reference_source_and_writes_the_student_edition(dirs):
    source_dir, out_dir = dirs
    _write(source_dir / "01_model_definition.ipynb", _notebook(EXERCISE_CELL))
    changes = build.build(source_dir=source_dir, out_dir=out_dir)
    assert len(changes) == 4
    injected = nbformat.read(source_dir / "01_model_definition.ipynb", as_version=4).cells[2].source
    assert injected == "# Exercise: write build_mlp.\n" + inspect.getsource(ref.build_mlp).rstrip("\n")
    student = nbformat.read(out_dir / "01_model_definition.ipynb", as_version=4).cells[2].source
    assert "### BEGIN SOLUTION" not in student and "OrderedDict()" not in student
    assert student.startswith("# Exercise: write build_mlp.\ndef build_mlp(sizes: list[int]) -> nn.Sequential:")
    assert student.endswith("    # YOUR CODE HERE\n    raise NotImplementedError")
    assert build.build(check=True, source_dir=source_dir, out_dir=out_dir) == []


def test_check_reports_drift_and_changes_nothing(dirs):
    source_dir, out_dir = dirs
    path = source_dir / "01_model_definition.ipynb"
    _write(path, _notebook(EXERCISE_CELL))
    before = path.read_text()
    drift = build.build(check=True, source_dir=source_dir, out_dir=out_dir)
    assert drift == [
        "solutions/01_model_definition.ipynb: exercise cells differ from course_utils.solutions.ch01_model_definition",
        "solutions/01_model_definition.ipynb: the Colab install cell is missing or out of date",
        "solutions/01_model_definition.ipynb: nbgrader cell metadata is missing or out of date",
        "student/01_model_definition.ipynb: student edition is out of date",
    ]
    assert path.read_text() == before and not (out_dir / "01_model_definition.ipynb").exists()


def test_a_hand_edited_student_edition_is_drift(dirs):
    source_dir, out_dir = dirs
    _write(source_dir / "01_model_definition.ipynb", _notebook("x = 1"))
    build.build(source_dir=source_dir, out_dir=out_dir)
    student = out_dir / "01_model_definition.ipynb"
    student.write_text(student.read_text().replace("x = 1", "x = 2"))
    assert build.build(check=True, source_dir=source_dir, out_dir=out_dir) == [
        "student/01_model_definition.ipynb: student edition is out of date"
    ]


def test_student_notebooks_without_a_source_are_reported_and_removed(dirs):
    source_dir, out_dir = dirs
    (out_dir / "09_gone.ipynb").write_text("{}")
    assert build.build(check=True, source_dir=source_dir, out_dir=out_dir) == [
        "student/09_gone.ipynb: has no source edition"
    ]
    build.build(source_dir=source_dir, out_dir=out_dir)
    assert not (out_dir / "09_gone.ipynb").exists()


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\n", "may only define functions and classes"),
        ("def not_in_package():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION\n", "has no not_in_package"),
        ("def build_mlp(:\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n", "does not parse"),
    ],
)
def test_exercise_cells_that_break_the_rules_are_build_errors(dirs, cell, message):
    source_dir, out_dir = dirs
    _write(source_dir / "01_model_definition.ipynb", _notebook(cell))
    with pytest.raises(BuildError, match=message):
        build.build(source_dir=source_dir, out_dir=out_dir)


def test_main_exits_non_zero_on_drift_and_zero_when_clean(dirs, monkeypatch, capsys):
    source_dir, out_dir = dirs
    _write(source_dir / "01_model_definition.ipynb", _notebook("x = 1"))
    monkeypatch.setattr(build, "SOLUTIONS_NOTEBOOKS_DIR", source_dir)
    monkeypatch.setattr(build, "NOTEBOOKS_DIR", out_dir)
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_colab_cell_comes_first_is_skipped_by_nbval_and_is_added_once():
    nb = _notebook("x = 1")
    assert build.ensure_colab_cell(nb) is True
    assert build.ensure_colab_cell(nb) is False
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert first.id == build.COLAB_CELL_ID and first.metadata["tags"] == ["nbval-skip"]
    assert 'if "google.colab" in sys.modules:' in first.source
    assert [cell.source for cell in nb.cells if cell.cell_type == "code"][1] == "x = 1"


def test_the_colab_cell_does_nothing_outside_colab():
    namespace: dict = {}
    exec(compile(build.colab_cell_source(), "<colab>", "exec"), namespace)
    assert "subprocess" not in namespace


def test_on_colab_the_cell_clones_once_and_adds_only_what_colab_lacks(monkeypatch, tmp_path):
    project = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command))
    cloned = []
    monkeypatch.setattr(os.path, "isdir", lambda path: path in cloned)
    code = compile(build.colab_cell_source(), "<colab>", "exec")

    exec(code, {})
    clone, pip = commands
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [project["urls"]["Repository"], "/content/course"]
    assert pip[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in pip
    pinned = [arg for arg in pip if "==" in arg]
    assert sorted(pinned) == sorted(d for d in project["dependencies"] if d.split("==")[0] in build.COLAB_EXTRAS)
    assert not any(arg.startswith(("torch==", "torchvision==", "jupyterlab==", "ipykernel==")) for arg in pip)

    cloned.append("/content/course")
    commands.clear()
    exec(code, {})  # run again: no second clone, the path is added once
    assert [command[0] for command in commands] == [sys.executable]
    assert sys.path.count("/content/course") == 1


# --- nbgrader's cell metadata -------------------------------------------------------------------------------------


def _nbgrader(cell: nbformat.NotebookNode) -> dict | None:
    return cell.metadata.get("nbgrader")


def test_exercise_cells_become_solution_cells_and_check_cells_locked_tests_worth_the_registry_points():
    nb = _notebook(EXERCISE_CELL, "check_build_mlp(build_mlp)", "print(1)", "check_task_heads(TaskHeads)")
    assert build.ensure_nbgrader_metadata(nb, 1, "nb") == 3
    markdown, exercise, check, plain, heads = nb.cells
    assert _nbgrader(markdown) is None and _nbgrader(plain) is None
    assert _nbgrader(exercise) == {
        "grade": False,
        "grade_id": "cell-1",
        "locked": False,
        "schema_version": 3,
        "solution": True,
        "task": False,
    }
    registry = checking.registry()
    assert _nbgrader(check) == {
        "grade": True,
        "grade_id": "ch1-build_mlp",
        "locked": True,
        "points": registry["ch1.build_mlp"].points,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }
    assert _nbgrader(heads)["points"] == registry["ch1.task_heads"].points == 2
    assert build.ensure_nbgrader_metadata(nb, 1, "nb") == 0, "a second pass changes nothing"


def test_stale_nbgrader_metadata_is_rewritten_or_removed(monkeypatch):
    nb = _notebook("check_build_mlp(build_mlp)", "print(1)")
    build.ensure_nbgrader_metadata(nb, 1, "nb")
    nb.cells[1].metadata["nbgrader"]["points"] = 5  # hand-edited points
    nb.cells[2].metadata["nbgrader"] = {"grade": True, "grade_id": "old", "points": 1}  # no longer a check cell
    assert build.ensure_nbgrader_metadata(nb, 1, "nb") == 2
    assert _nbgrader(nb.cells[1])["points"] == checking.registry()["ch1.build_mlp"].points
    assert _nbgrader(nb.cells[2]) is None
    registered = checking.registry()["ch1.build_mlp"]
    monkeypatch.setitem(checking._REGISTRY, "ch1.build_mlp", dataclasses.replace(registered, points=3))
    assert build.ensure_nbgrader_metadata(nb, 1, "nb") == 1, "points follow the registry"
    assert _nbgrader(nb.cells[1])["points"] == 3


def test_check_calls_of_other_chapters_and_unregistered_names_are_not_check_cells():
    nb = _notebook("check_build_mlp(build_mlp)", "check_nothing_registered(x)", "def check_build_mlp(f):\n    pass")
    build.ensure_nbgrader_metadata(nb, 2, "nb")
    assert [_nbgrader(c) for c in nb.cells] == [None] * 4


def test_the_student_edition_carries_no_nbgrader_metadata(dirs):
    source_dir, out_dir = dirs
    _write(source_dir / "01_model_definition.ipynb", _notebook(EXERCISE_CELL, "check_build_mlp(build_mlp)"))
    build.build(source_dir=source_dir, out_dir=out_dir)
    assert any(_nbgrader(c) for c in nbformat.read(source_dir / "01_model_definition.ipynb", as_version=4).cells)
    assert not any(_nbgrader(c) for c in nbformat.read(out_dir / "01_model_definition.ipynb", as_version=4).cells)


def test_every_exercise_id_maps_to_a_grade_id_nbgrader_accepts_and_back():
    for exercise_id in checking.registry():
        grade_id = build.grade_id(exercise_id)
        assert re.fullmatch(r"[a-zA-Z0-9_\-]+", grade_id), grade_id  # the rule of nbgrader's cell toolbar
        assert build.exercise_id(grade_id) == exercise_id


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ((EXERCISE_CELL + "\ncheck_build_mlp(build_mlp)",), "may not call a check"),
        (("check_build_mlp(build_mlp)\ncheck_task_heads(TaskHeads)",), "checks one exercise"),
        (("check_build_mlp(build_mlp)", "check_build_mlp(build_mlp)"), "ch1-build_mlp is checked twice"),
    ],
)
def test_check_cells_that_nbgrader_could_not_score_right_are_build_errors(cells, message):
    with pytest.raises(BuildError, match=message):
        build.ensure_nbgrader_metadata(_notebook(*cells), 1, "nb")


def test_a_check_cell_without_an_id_is_a_build_error():
    nb = _notebook("check_build_mlp(build_mlp)")
    del nb.cells[1]["id"]
    with pytest.raises(BuildError, match="needs a cell id"):
        build.ensure_nbgrader_metadata(nb, 1, "nb")


def test_every_source_notebook_checks_each_exercise_in_exactly_one_locked_cell():
    for path in sorted(SOLUTIONS_NOTEBOOKS_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tests = [_nbgrader(c) for c in nb.cells if (_nbgrader(c) or {}).get("grade")]
        assert all(t["locked"] for t in tests)
        chapter = build.chapter_of(path)
        assert sorted(build.exercise_id(t["grade_id"]) for t in tests) == sorted(
            ex.id for ex in checking.chapter_exercises(chapter)
        ), path.name
