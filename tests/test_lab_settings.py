"""course_utils.lab_settings: the JupyterLab defaults that make install writes into the environment."""

import json
import sys

import pytest

from course_utils import lab_settings


def test_install_writes_the_overrides_where_jupyterlab_reads_them(tmp_path):
    path = lab_settings.install(tmp_path)
    assert path == tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert json.loads(path.read_text()) == lab_settings.OVERRIDES
    assert lab_settings.is_installed(tmp_path)


def test_install_keeps_other_overrides(tmp_path):
    path = lab_settings.overrides_path(tmp_path)
    path.parent.mkdir(parents=True)
    plugin = next(iter(lab_settings.OVERRIDES))
    theirs = {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}, plugin: {"showStatusBar": False}}
    path.write_text(json.dumps(theirs))
    lab_settings.install(tmp_path)
    merged = json.loads(path.read_text())
    assert merged["@jupyterlab/apputils-extension:themes"] == {"theme": "JupyterLab Dark"}
    assert merged[plugin] == {"showStatusBar": False, **lab_settings.OVERRIDES[plugin]}
    assert lab_settings.is_installed(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"], ids=["invalid JSON", "not an object"])
def test_a_broken_overrides_file_is_reported_and_left_alone(tmp_path, content, capsys):
    path = lab_settings.overrides_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match="fix or remove it"):
        lab_settings.install(tmp_path)
    assert path.read_text() == content
    assert lab_settings.main(tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith("could not write the JupyterLab settings:") and "Traceback" not in err
    assert not lab_settings.is_installed(tmp_path)


def test_main_says_where_it_wrote(tmp_path, capsys):
    assert lab_settings.main(tmp_path) == 0
    assert str(lab_settings.overrides_path(tmp_path)) in capsys.readouterr().out


def test_a_missing_or_different_setting_is_not_installed(tmp_path):
    assert not lab_settings.is_installed(tmp_path)
    path = lab_settings.overrides_path(tmp_path)
    path.parent.mkdir(parents=True)
    plugin, settings = next(iter(lab_settings.OVERRIDES.items()))
    path.write_text(json.dumps({plugin: {key: "something else" for key in settings}}))
    assert not lab_settings.is_installed(tmp_path)


def test_this_environment_has_the_settings():
    assert lab_settings.is_installed(), (
        f"{lab_settings.overrides_path()} lacks the course's JupyterLab settings: run `make install` "
        f"or `{sys.executable} -m course_utils.lab_settings`"
    )
