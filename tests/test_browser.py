"""The student edition in a real browser: JupyterLab on loopback, headless Chromium, Run All, look at the page.

Needs Debian's Chromium at /usr/bin/chromium (`.ci/run` installs it); skipped with a message where it is missing.
Run it alone with `make test-browser`. Screenshots land in `screenshots/` for a person to look at.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from course_utils import i18n, lab_settings, translate
from course_utils.paths import NOTEBOOKS_DIR, REPO_DIR

STUDENTS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# One chapter of each translated edition too: its prose and check results must render (CJK fonts included).
TRANSLATED = [NOTEBOOKS_DIR / language / STUDENTS[0].name for language in translate.languages()]
SCREENSHOTS = REPO_DIR / "screenshots"
TOKEN = "course-browser-test"
SETTINGS = {  # user settings for the test's JupyterLab: render every cell, never fetch news
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
# Summarise what the open notebook's model holds and what the page rendered.
_SUMMARY_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') continue;
    const outputs = cell.outputs.toJSON();
    cells.push({
      source: cell.sharedModel.getSource(),
      tags: cell.getMetadata('tags') || [],
      count: cell.executionCount,
      errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
      images: outputs.filter(o => o.data && o.data['image/png']).length,
      widgets: outputs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length,
    });
  }
  const images = [...document.querySelectorAll('.jp-RenderedImage img')];
  return {
    cells,
    kernel: panel.sessionContext.session && panel.sessionContext.session.kernel
      ? panel.sessionContext.session.kernel.status : 'none',
    checkBoxes: [...document.querySelectorAll('.course-check')].map(b => b.dataset.status),
    imagesDrawn: images.filter(i => i.complete && i.naturalWidth > 0).length,
    progressBars: document.querySelectorAll('.widget-progress, .jupyter-widgets .progress-bar').length,
  };
}"""

# Record the request type behind every status message the kernel publishes from now on.
_WATCH_KERNEL_STATUS_JS = """() => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  window.courseStatusParents = [];
  kernel.iopubMessage.connect((_, msg) => {
    if (msg.header.msg_type === 'status') window.courseStatusParents.push(msg.parent_header.msg_type || '');
  });
}"""

# Draw two different CJK characters in the font of the rendered Markdown: without a CJK font both come out as the
# same "missing glyph" box (or nothing), so identical pixels mean the Chinese edition is unreadable.
_CJK_GLYPHS_JS = """() => {
  const el = document.querySelector('.jp-RenderedMarkdown');
  const font = el ? getComputedStyle(el).fontFamily : 'sans-serif';
  const draw = (ch) => {
    const canvas = document.createElement('canvas');
    canvas.width = 48; canvas.height = 48;
    const ctx = canvas.getContext('2d');
    ctx.font = `36px ${font}`;
    ctx.fillText(ch, 4, 40);
    return Array.from(ctx.getImageData(0, 0, 48, 48).data).join(',');
  };
  const first = draw('模'), second = draw('块'), missing = draw('\\u{10FFFD}');
  return {font, distinct: first !== second, inked: /[1-9]/.test(first), notMissing: first !== missing};
}"""

_SCROLL_TO_FIRST_VISIBLE_JS = """(selector) => {
  const element = [...document.querySelectorAll(selector)].find(e => e.offsetParent !== null);
  if (element) element.scrollIntoView({block: 'center'});
  return Boolean(element);
}"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM}: apt-get install chromium"),
]

_CHECK_CALL = re.compile(r"\bcheck_[a-z][a-z0-9_]*\(")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for path in STUDENTS:
        shutil.copy(path, root / path.name)
    for path in TRANSLATED:
        (root / path.parent.name).mkdir(exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    settings = tmp_path_factory.mktemp("settings")
    for name, value in SETTINGS.items():
        target = settings / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    port = _free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "COURSE_UTILS_STRICT": "1"}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1"]
    command += [f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"]
    command += ["--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:  # CI runs as root; JupyterLab refuses root unless told
        command.append("--allow-root")
    log = open(os.environ.get("COURSE_LAB_LOG", os.devnull), "w")  # set COURSE_LAB_LOG to keep the server's log
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start") from None
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _not_run(summary: dict) -> list[str]:
    return [c["source"][:80] for c in summary["cells"] if c["count"] is None and c["source"].strip()]


def _unexpected_errors(summary: dict) -> list[list[str]]:
    return [c["errors"] for c in summary["cells"] if c["errors"] and "raises-exception" not in c["tags"]]


def _wait_until_done(page, timeout_s: float) -> dict:
    """Poll until every code cell has run, or until an unexpected error has stopped Run All.

    Neither the prompts nor the kernel's status can say when Run All is over: after a cell tagged
    ``raises-exception`` has failed, JupyterLab 4.6 shows ``[ ]`` on the cells still queued behind it (the kernel
    runs them all the same), and a status message answering a control-channel request can read "idle" while a
    cell runs. Execution counts are set only when a cell's reply arrives, so they are what this waits for.
    """
    deadline = time.monotonic() + timeout_s
    idle_polls = 0
    while True:
        summary = page.evaluate(_SUMMARY_JS)
        if not _not_run(summary):
            time.sleep(2)  # let the last outputs render
            return page.evaluate(_SUMMARY_JS)
        if summary["kernel"] in ("dead", "restarting", "autorestarting"):
            raise AssertionError(f"the kernel is {summary['kernel']}; Run All had not reached: {_not_run(summary)[:3]}")
        idle_polls = idle_polls + 1 if summary["kernel"] == "idle" else 0
        if _unexpected_errors(summary) and idle_polls >= 3:  # the kernel dropped the cells queued after the error
            return summary
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s:.0f} s, Run All had not reached: {_not_run(summary)[:3]}")
        time.sleep(1)


def _run_all_and_inspect(lab: str, browser, path: Path, language: str = i18n.ENGLISH) -> None:
    """Open ``path`` in JupyterLab, run all cells, and check what the page shows."""
    where = path.name if language == i18n.ENGLISH else f"{language}/{path.name}"
    name = where.replace("/", "_").removesuffix(".ipynb")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        # A fresh workspace per notebook: otherwise JupyterLab reopens every notebook opened before it.
        page.goto(f"{lab}/lab/workspaces/{name}/tree/{where}?reset&token={TOKEN}")
        page.wait_for_function(
            "(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return w && w.context && w.context.path === name && w.sessionContext.session"
            " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }",
            arg=where,
            timeout=90_000,
        )
        page.evaluate(_WATCH_KERNEL_STATUS_JS)
        # Not awaited: the command's promise settles at the first cell that raises, long before the end.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        summary = _wait_until_done(page, timeout_s=480)
        status_parents = page.evaluate("() => window.courseStatusParents")
        SCREENSHOTS.mkdir(exist_ok=True)
        shot = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(shot))
        for what, selector in (
            ("check", ".course-check"),
            ("plot", ".jp-RenderedImage img"),
            ("progress", ".widget-progress"),
        ):
            if page.evaluate(_SCROLL_TO_FIRST_VISIBLE_JS, selector):
                page.screenshot(path=str(SCREENSHOTS / f"{name}_{what}.png"))
        glyphs = page.evaluate(_CJK_GLYPHS_JS)
        labels = page.evaluate("() => [...document.querySelectorAll('.course-check b')].map(b => b.textContent)")
    finally:
        page.evaluate("() => window.jupyterapp && window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
        page.close()

    unexpected = _unexpected_errors(summary)
    assert not unexpected, f"cells raised errors: {unexpected}"
    assert not _not_run(summary), f"Run All stopped before these cells: {_not_run(summary)[:3]}"
    # With comms over subshells, each progress bar opens a subshell and the indicator reads "idle" mid-training.
    assert "create_subshell_request" not in status_parents, (
        f"widgets opened a kernel subshell: is {lab_settings.overrides_path()} installed? (make install)"
    )
    demonstrated = [c for c in summary["cells"] if "raises-exception" in c["tags"]]
    assert all(c["errors"] for c in demonstrated), "a raises-exception cell did not raise"
    # A check cell calls check_<name>(...); save_checkpoint( and friends are not checks (no word boundary).
    check_cells = [c for c in summary["cells"] if _CHECK_CALL.search(c["source"]) and "import" not in c["source"]]
    assert len(summary["checkBoxes"]) >= len(check_cells) > 0, summary["checkBoxes"]
    assert set(summary["checkBoxes"]) == {"not_attempted"}
    expected_images = sum(c["images"] for c in summary["cells"])
    assert summary["imagesDrawn"] >= expected_images, f"{summary['imagesDrawn']} of {expected_images} plots drawn"
    if any(c["widgets"] for c in summary["cells"]):
        assert summary["progressBars"] > 0, "progress bars did not render"
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"
    if language != i18n.ENGLISH:
        label = i18n.translate_message("NOT ATTEMPTED", language)
        assert labels and all(text.endswith(label) for text in labels), labels
        assert glyphs["distinct"] and glyphs["inked"] and glyphs["notMissing"], (
            f"Chinese characters do not render in {glyphs['font']}: apt-get install fonts-noto-cjk"
        )


class _NotebookInJupyterLab:
    path: Path

    @pytest.mark.slow
    def test_runs_all_without_errors_and_renders_checks_plots_and_progress_bars(self, lab, browser):
        _run_all_and_inspect(lab, browser, self.path)


class _TranslatedNotebookInJupyterLab:
    path: Path

    @pytest.mark.slow
    def test_runs_all_and_shows_its_prose_and_check_results_in_its_language(self, lab, browser):
        _run_all_and_inspect(lab, browser, self.path, language=self.path.parent.name)


# One class per notebook: pytest-xdist's --dist loadscope spreads classes, not parametrized cases, over workers.
for _path in STUDENTS:
    _name = "TestInJupyterLab_" + _path.stem
    globals()[_name] = type(_name, (_NotebookInJupyterLab,), {"path": _path})
for _path in TRANSLATED:
    _name = f"TestInJupyterLab_{_path.parent.name}_{_path.stem}"
    globals()[_name] = type(_name, (_TranslatedNotebookInJupyterLab,), {"path": _path})


def test_the_student_notebooks_to_open_exist():
    assert STUDENTS and all(nbformat.read(p, as_version=4).cells for p in STUDENTS)
