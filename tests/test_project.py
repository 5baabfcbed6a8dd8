"""The project's own files: one dependency list, style, and the two commands a learner needs."""

import re
import subprocess
import sys
import tomllib

import yaml

from course_utils.paths import REPO_DIR

RUFF = [sys.executable, "-m", "ruff"]


def _pyproject() -> dict:
    return tomllib.loads((REPO_DIR / "pyproject.toml").read_text())


def _requirement_name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_every_runtime_dependency_is_pinned_exactly():
    project = _pyproject()["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    loose = [r for r in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", r)]
    assert not loose, f"pin these exactly: {loose}"
    assert "torch==2.14.1" in requirements and "torchvision==0.29.1" in requirements


def test_environment_yml_lists_the_same_packages_as_pyproject():
    environment = yaml.safe_load((REPO_DIR / "environment.yml").read_text())
    project = _pyproject()["project"]
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert any(d.startswith("python=3.11") for d in conda)
    assert "-e .[test]" in pip, "the pip section must install the course itself"
    listed = {_requirement_name(r): r for r in conda + pip if not r.startswith(("python=", "pip", "-e"))}
    wanted = {_requirement_name(r): r for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert set(listed) == set(wanted)
    for name, requirement in wanted.items():
        version = requirement.split("==")[1]
        assert listed[name].replace("=", " ").split()[-1] == version, f"{name}: {listed[name]} vs {requirement}"


def test_ruff_check_is_clean():
    result = subprocess.run([*RUFF, "check", "--no-cache", "."], cwd=REPO_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = subprocess.run(
        [*RUFF, "format", "--check", "--no-cache", "."], cwd=REPO_DIR, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_quick_start_is_the_two_make_commands():
    readme = (REPO_DIR / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    makefile = (REPO_DIR / "Makefile").read_text()
    assert re.search(r"^lab: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)


def test_ci_runs_make_test():
    assert "make test" in (REPO_DIR / ".ci" / "run").read_text()


def test_binder_installs_the_pinned_torch_and_the_course():
    post_build = (REPO_DIR / "binder" / "postBuild").read_text()
    pins = [r for r in _pyproject()["project"]["dependencies"] if r.startswith(("torch==", "torchvision=="))]
    assert all(pin in post_build for pin in pins) and len(pins) == 2
    assert "pip install --no-cache-dir -e ." in post_build
    environment = yaml.safe_load((REPO_DIR / "binder" / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]
