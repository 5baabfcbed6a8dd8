"""The course website (`make book`, course_utils/book.py): its parts, the built site, and the site in a browser.

The site is built once per module into a temporary folder. The browser tests drive Debian's Chromium at
/usr/bin/chromium over a loopback HTTP server (skipped with a message where it is missing), and let no request
leave the machine.
"""

import functools
import html.parser
import http.server
import json
import re
import shutil
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from course_utils import book, checking
from course_utils.paths import NOTEBOOKS_DIR, SOLUTIONS_NOTEBOOKS_DIR

SOURCES = sorted(SOLUTIONS_NOTEBOOKS_DIR.glob("*.ipynb"))
FAVICON = "_static/favicon.svg"  # html_favicon in book/conf.py
_ASSET_ATTRIBUTES = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src"}
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)


def _md(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(source)


def _notebook(*cells) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=list(cells))


# --- glossaries ---------------------------------------------------------------------------------------------


def test_a_glossary_with_a_note_column_gives_terms_and_notes():
    nb = _notebook(
        _md(
            "# Title\n\n## Glossary · 术语表\n\n| English | 中文 | In this chapter |\n|---|---|---|\n"
            "| state dict | 状态字典 | `state_dict()` |\n| hook | 钩子 | |"
        )
    )
    entries = book.parse_glossary(nb, "04_x")
    assert [(e.english, e.chinese, e.note) for e in entries] == [
        ("state dict", "状态字典", "`state_dict()`"),
        ("hook", "钩子", ""),
    ]
    assert {e.chapter for e in entries} == {"04_x"}


def test_a_glossary_table_may_put_chinese_first_omit_edge_pipes_and_escape_pipes():
    nb = _notebook(
        _md(
            "## Glossary\nSome words first.\n\n中文 | English\n:--|:--\n模块 | module\n"
            "逻辑值 | logits \\| scores\n\nAfter the table."
        )
    )
    entries = book.parse_glossary(nb, "03_x")
    assert [(e.english, e.chinese) for e in entries] == [("module", "模块"), ("logits | scores", "逻辑值")]


def test_a_glossary_may_follow_its_heading_in_the_next_cell_and_stops_at_the_next_heading():
    nb = _notebook(
        _md("## References\n\n| English | 中文 |\n|---|---|\n| not | 这个 |"),
        _md("### 术语表"),
        _md("| English | 中文 |\n|---|---|\n| block | 块 |"),
        _md("## After\n\n| English | 中文 |\n|---|---|\n| later | 以后 |"),
    )
    assert [e.english for e in book.parse_glossary(nb, "02_x")] == ["block"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("# Title\n\n## Summary\n\nNo glossary here.", "no glossary"),
        ("## Glossary\n\nmodule: 模块\nblock: 块", "no Markdown table"),
        ("## Glossary\n\n| English | 中文 |\n|---|---|\n\nText.", "has no rows"),
        ("## Glossary\n\n| English | 中文 |\n|---|---|\n| module | |", "without both an English and a Chinese term"),
        ("## Glossary\n\n| English |\n|---|\n| module |", "needs an English and a Chinese column"),
    ],
)
def test_a_chapter_without_a_usable_glossary_fails_loudly(source, message):
    with pytest.raises(book.BookError, match=message) as raised:
        book.parse_glossary(_notebook(_md(source)), "07_new_chapter")
    assert "07_new_chapter" in str(raised.value)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_chapter_has_a_glossary_of_english_and_chinese_terms(path):
    entries = book.parse_glossary(nbformat.read(path, as_version=4), path.stem)
    assert len(entries) >= 5
    assert all(re.search(r"[\u4e00-\u9fff]", e.chinese) for e in entries), [e.chinese for e in entries]


def test_the_combined_glossary_merges_a_term_across_chapters_and_sorts_terms():
    entries = [
        book.GlossaryEntry("State dict", "状态字典", "keys", "04_save_and_load"),
        book.GlossaryEntry("buffer", "缓冲区", "", "01_model_definition"),
        book.GlossaryEntry("state dict", "状态字典", "", "01_model_definition"),
        book.GlossaryEntry("`a|b`", "甲", "", "02_model_blocks"),
    ]
    page = book.glossary_page(entries)
    rows = [line for line in page.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| `a\\|b`", "| buffer", "| State dict"]
    state = rows[2]
    assert state.count("状态字典") == 1
    assert "{ref}`Ch. 4 <glossary-04_save_and_load>`: keys" in state
    assert "{ref}`Ch. 1 <glossary-01_model_definition>`" in state


def test_chapter_labels_come_from_the_notebook_number():
    assert book.chapter_label("04_save_and_load") == "Ch. 4"
    assert book.chapter_label("02a_blocks_unet") == "Ch. 2a"
    assert book.chapter_label("06_project_segmentation", "zh") == "第 6 章"


# --- chapter pages ------------------------------------------------------------------------------------------


def _tqdm_state(model_id: str) -> dict:
    return {
        model_id: {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_a", "IPY_MODEL_b", "IPY_MODEL_c"]}},
        "a": {"model_name": "HTMLModel", "state": {"value": "100%"}},
        "b": {"model_name": "FloatProgressModel", "state": {"value": 30.0, "max": 30.0, "bar_style": "success"}},
        "c": {"model_name": "HTMLModel", "state": {"value": "30/30 [00:02&lt;00:00]"}},
    }


def _chapter_notebook(widget_state: dict) -> nbformat.NotebookNode:
    colab = nbformat.v4.new_code_cell("# Colab", id=book.COLAB_CELL_ID)
    progress = nbformat.v4.new_code_cell("train()")
    for model_id in ("m1", "m2"):
        view = {"model_id": model_id, "version_major": 2, "version_minor": 0}
        progress.outputs.append(
            nbformat.v4.new_output("display_data", {book._WIDGET_VIEW: view, "text/plain": "  0%|  | 0/30"})
        )
    nb = _notebook(
        _md("# Chapter 9 · Things\n\nThe promise.\n\n### Objectives"),
        colab,
        progress,
        _md("## Glossary · 术语表\n\n| English | 中文 |\n|---|---|\n| thing | 东西 |"),
    )
    nb.metadata["widgets"] = {book._WIDGET_STATE: {"state": widget_state}}
    return nb


def test_a_chapter_page_drops_the_colab_cell_and_adds_downloads_and_a_glossary_anchor():
    nb = _chapter_notebook(_tqdm_state("m1"))
    before = nbformat.writes(nb)
    page = book.chapter_page(nb, "09_things")
    assert nbformat.writes(nb) == before, "the source notebook must not change"
    assert book.COLAB_CELL_ID not in [cell.get("id") for cell in page.cells]
    title = page.cells[0].source
    assert title.index("# Chapter 9") < title.index("{download}`student notebook <downloads/09_things.ipynb>`")
    assert "{download}`solved notebook <downloads/09_things_solved.ipynb>`" in title
    assert title.index("solved notebook") < title.index("The promise.")
    assert page.cells[-1].source.startswith("(glossary-09_things)=\n## Glossary")


def test_stored_progress_bars_become_static_html_and_unknown_widgets_their_text():
    page = book.chapter_page(_chapter_notebook(_tqdm_state("m1")), "09_things")
    assert "widgets" not in page.metadata
    drawn, unknown = page.cells[1].outputs
    assert book._WIDGET_VIEW not in drawn.data and book._WIDGET_VIEW not in unknown.data
    assert drawn.data["text/html"] == (
        '<div class="course-progress"><span>100%</span><progress class="course-progress-success" value="30.0" '
        'max="30.0"></progress><span>30/30 [00:02&lt;00:00]</span></div>'
    )
    assert "text/html" not in unknown.data and unknown.data["text/plain"] == "  0%|  | 0/30"


def test_a_chapter_without_a_title_or_a_glossary_is_refused():
    with pytest.raises(book.BookError, match="no '# ' title"):
        book.chapter_page(
            _notebook(_md("## Only a section\n\n## Glossary\n\n| a | b |\n|---|---|\n| x | 乙 |")), "08_x"
        )
    with pytest.raises(book.BookError, match="no glossary"):
        book.chapter_page(_notebook(_md("# Title")), "08_x")


def test_a_warning_about_a_staged_chapter_names_the_source_notebook_cell_and_line(tmp_path):
    nb = _notebook(_md("# Title"), _md("# Title\nText\n### Skipped\nMore"))
    nb.cells[1].id = "s1-intro"
    nbformat.write(nb, tmp_path / "03_x.ipynb")
    warning = f"{tmp_path}/03_x.ipynb:20004: WARNING: Non-consecutive header level increase; H1 to H3 [myst.header]"
    located = book._locate(warning, book.LANGUAGES[0], tmp_path)
    assert located == (
        "notebooks/solutions/03_x.ipynb (cell 's1-intro', '### Skipped'): "
        "WARNING: Non-consecutive header level increase; H1 to H3 [myst.header]"
    )
    other = "/elsewhere/intro.md:3: WARNING: something"
    assert book._locate(other, book.LANGUAGES[0], tmp_path) == other


# --- checks on built HTML, and that they find what they look for -------------------------------------------------


class _Links(html.parser.HTMLParser):
    """Every link and asset reference of a page, and the ids it defines."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []  # <a href>
        self.assets: list[str] = []  # what the browser loads by itself
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "link" and attrs.get("href"):
            self.assets.append(attrs["href"])
        elif tag in _ASSET_ATTRIBUTES and attrs.get(_ASSET_ATTRIBUTES[tag]):
            self.assets.append(attrs[_ASSET_ATTRIBUTES[tag]])


def _pages(site: Path) -> list[Path]:
    """The site's pages (not the theme's HTML fragments under _static/)."""
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@functools.cache
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_internal_links(site: Path) -> list[str]:
    """Every link or asset of the site's pages that points at a missing file or a missing anchor."""
    broken = []
    for page in _pages(site):
        parsed = _parse(page)
        for reference in parsed.links + parsed.assets:
            if _EXTERNAL.match(reference) or reference.startswith(("mailto:", "javascript:", "data:")):
                continue
            split = urllib.parse.urlsplit(reference)
            target = (page.parent / urllib.parse.unquote(split.path)).resolve() if split.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {reference} (no such file)")
            elif split.fragment and target.suffix == ".html":
                if urllib.parse.unquote(split.fragment) not in _parse(target).ids:
                    broken.append(f"{page.relative_to(site)}: {reference} (no such anchor)")
    return broken


def external_assets(site: Path) -> list[str]:
    """Every script, style sheet, image, font or frame that a page or a style sheet would fetch from the network."""
    found = []
    for page in _pages(site):
        found += [f"{page.relative_to(site)}: {a}" for a in _parse(page).assets if _EXTERNAL.match(a)]
    for sheet in sorted(site.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        for url in re.findall(r"""(?:url\(\s*|@import\s+)['"]?([^'")\s]+)""", text):
            if _EXTERNAL.match(url):
                found.append(f"{sheet.relative_to(site)}: {url}")
    return found


def _mini_site(tmp_path: Path) -> Path:
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "ok.css").write_text("a { background: url('data:image/png;base64,AA'); }")
    (tmp_path / "other.html").write_text('<h1 id="top">Other</h1>')
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="_static/ok.css"><a href="other.html#top">ok</a>'
        '<a href="https://docs.pytorch.org/">a reference</a><p id="here"><a href="#here">self</a></p>'
    )
    return tmp_path


def test_the_link_checks_pass_a_sound_site(tmp_path):
    site = _mini_site(tmp_path)
    assert broken_internal_links(site) == [] and external_assets(site) == []


def test_the_link_check_finds_missing_files_and_missing_anchors(tmp_path):
    site = _mini_site(tmp_path)
    (site / "bad.html").write_text('<a href="missing.html">x</a><a href="other.html#nowhere">y</a><img src="p.png">')
    assert broken_internal_links(site) == [
        "bad.html: missing.html (no such file)",
        "bad.html: other.html#nowhere (no such anchor)",
        "bad.html: p.png (no such file)",
    ]


def test_the_asset_check_finds_scripts_styles_and_fonts_from_the_network(tmp_path):
    site = _mini_site(tmp_path)
    (site / "cdn.html").write_text(
        '<script src="https://cdn.example/require.js"></script><link rel="stylesheet" href="//fonts.example/css">'
    )
    (site / "_static" / "font.css").write_text("@font-face { src: url(https://fonts.example/a.woff2); }")
    assert external_assets(site) == [
        "cdn.html: https://cdn.example/require.js",
        "cdn.html: //fonts.example/css",
        "_static/font.css: https://fonts.example/a.woff2",
    ]


# --- the built site ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The site built from the repository's notebooks: (html folder, the build's warnings)."""
    root = tmp_path_factory.mktemp("book")
    warnings = book.build_book(root / "html", work_dir=root, strict=False)
    return root / "html", warnings


@pytest.fixture(scope="module")
def site(built):
    return built[0]


def _outputs(path: Path) -> list[nbformat.NotebookNode]:
    nb = nbformat.read(path, as_version=4)
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def _expected_images(path: Path) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(path))


def _expected_checks(path: Path) -> list[str]:
    statuses = []
    for output in _outputs(path):
        statuses += re.findall(
            r'class="course-check[^"]*" data-status="(\w+)"', output.get("data", {}).get("text/html", "")
        )
    return statuses


@pytest.mark.slow
def test_the_site_builds_without_warnings(built):
    _, warnings = built
    assert not warnings, "the site built with warnings:\n" + "\n".join(warnings)


@pytest.mark.slow
def test_the_site_has_an_intro_a_page_per_chapter_an_instructors_page_a_glossary_and_search(site):
    for name in ["index.html", "instructors.html", "glossary.html", "search.html", "searchindex.js", ".nojekyll"]:
        assert (site / name).is_file(), name
    for path in SOURCES:
        assert (site / f"{path.stem}.html").is_file(), path.stem
    intro = (site / "index.html").read_text(encoding="utf-8")
    assert "make lab" in _text(intro) and "make test" in _text(intro)
    for path in SOURCES:
        assert f'href="{path.stem}.html"' in intro, f"the intro does not link {path.stem}"
    instructors = (site / "instructors.html").read_text(encoding="utf-8")
    for exercise in checking.registry().values():
        assert exercise.id in instructors, f"{exercise.id} is missing from the instructors' page"
    assert "nbgrader" in _text(instructors) and "make grade" in _text(instructors)


@pytest.mark.slow
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_a_chapter_page_shows_its_plots_and_coloured_check_results(site, path):
    page = (site / f"{path.stem}.html").read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="(_images/[^"]+)"', page)
    assert len(images) == _expected_images(path), f"{len(images)} plots on the page, {_expected_images(path)} stored"
    assert all((site / image).stat().st_size > 1000 for image in images)
    boxes = re.findall(r'<div class="course-check[^"]*" data-status="(\w+)" style="border-left:4px solid #', page)
    assert boxes == _expected_checks(path), "check results are missing or lost their colours"
    assert "google.colab" not in page, "the Colab install cell is on the page"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_a_chapter_page_offers_its_student_and_solved_notebooks_for_download(site, path):
    page = (site / f"{path.stem}.html").read_text(encoding="utf-8")
    links = re.findall(r'href="(_downloads/[^"]+)"', page)
    files = {Path(link).name: (site / link).read_bytes() for link in links}
    assert files.get(path.name) == (NOTEBOOKS_DIR / path.name).read_bytes(), "the student notebook download"
    assert files.get(f"{path.stem}_solved.ipynb") == path.read_bytes(), "the solved notebook download"


@pytest.mark.slow
def test_the_glossary_page_has_every_chapters_terms_linked_to_the_chapter(site):
    page = (site / "glossary.html").read_text(encoding="utf-8")
    text = _text(page)
    for path in SOURCES:
        for entry in book.parse_glossary(nbformat.read(path, as_version=4), path.stem):
            assert html.unescape(re.sub(r"`", "", entry.chinese)) in text, entry
        assert f'href="{path.stem}.html#glossary-' in page, f"no link to the glossary of {path.stem}"


def test_the_source_edition_has_check_results_and_plots_for_the_site_to_show():
    assert sum(len(_expected_checks(path)) for path in SOURCES) >= len(SOURCES)
    assert sum(_expected_images(path) for path in SOURCES) >= len(SOURCES)


@pytest.mark.slow
def test_no_internal_link_is_broken(site):
    assert broken_internal_links(site) == []


@pytest.mark.slow
def test_no_page_loads_anything_from_the_network(site):
    assert external_assets(site) == []


@pytest.mark.slow
def test_the_search_index_finds_state_dict_in_chapter_4(site):
    text = (site / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    documents = index["terms"]["state_dict"]
    documents = documents if isinstance(documents, list) else [documents]
    assert "04_save_and_load" in {index["docnames"][i] for i in documents}


@pytest.mark.slow
def test_a_second_language_gets_its_own_tree_and_every_page_links_its_twin(tmp_path):
    one = SOURCES[0]
    trees = {}
    for code in ("en", "zh"):
        solutions, students, pages = tmp_path / code / "solutions", tmp_path / code / "students", tmp_path / code
        solutions.mkdir(parents=True)
        students.mkdir()
        shutil.copy(one, solutions)
        shutil.copy(NOTEBOOKS_DIR / one.name, students)
        for name in ("intro.md", "instructors.md"):
            shutil.copy(book.BOOK_DIR / name, pages / name)
        trees[code] = book.Language(code, code.upper(), solutions, students, pages, "" if code == "en" else code)
    absent = book.Language("xx", "XX", tmp_path / "none", tmp_path / "none", tmp_path / "none", "xx")
    out = tmp_path / "html"
    book.build_book(out, work_dir=tmp_path / "work", languages=[trees["en"], trees["zh"], absent], strict=False)
    assert (out / "index.html").is_file() and (out / "zh" / "index.html").is_file() and not (out / "xx").exists()
    english = (out / f"{one.stem}.html").read_text(encoding="utf-8")
    chinese = (out / "zh" / f"{one.stem}.html").read_text(encoding="utf-8")
    assert re.search(rf'hreflang="zh"\s+href="zh/{one.stem}.html"', english)
    assert re.search(rf'hreflang="en"\s+href="../{one.stem}.html"', chinese)
    assert re.search(r'<html[^>]* lang="zh"', chinese) and re.search(r'<html[^>]* lang="en"', english)
    assert broken_internal_links(out) == []


@pytest.mark.slow
def test_a_single_language_site_shows_no_language_switch(site, tmp_path):
    if (site / "zh").is_dir():  # the course's own site has both: build an English-only one
        assert "course-language-switch" in (site / "index.html").read_text(encoding="utf-8")
        site = tmp_path / "html"
        book.build_book(site, work_dir=tmp_path / "work", languages=book.LANGUAGES[:1])
    assert not (site / "zh").exists()
    assert "course-language-switch" not in (site / "index.html").read_text(encoding="utf-8")


# --- the site in a browser ------------------------------------------------------------------------------------

_PAGE_JS = """() => {
  const visible = e => e.offsetParent !== null;
  const images = [...document.querySelectorAll('.cell_output img')];
  return {
    imagesDrawn: images.filter(i => i.complete && i.naturalWidth > 0 && visible(i)).length,
    checks: [...document.querySelectorAll('.course-check')].filter(visible).map(b => {
      const style = getComputedStyle(b);
      return {status: b.dataset.status, border: style.borderLeftColor, width: style.borderLeftWidth,
              background: style.backgroundColor};
    }),
    math: document.querySelectorAll('.math').length,
    mathDrawn: document.querySelectorAll('mjx-container').length,
  };
}"""


def _rgb(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


@pytest.fixture(scope="module")
def served(site):
    """The site on a loopback HTTP server: its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (the site's browser tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class _Visit:
    """A page opened in Chromium that records console errors, failed loads and any request off the server."""

    def __init__(self, browser, base: str):
        self.base = base
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.route("**/*", self._route)
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def _failed(self, request) -> None:
        # Chromium fetches a page's favicon on its own and may cancel that fetch (net::ERR_ABORTED) when the next
        # navigation starts: that is the browser, not the site. A favicon the site lacks still shows as HTTP 404,
        # and test_the_favicon_is_served checks that it is there.
        if request.url.endswith(FAVICON) and "ERR_ABORTED" in (request.failure or ""):
            return
        self.problems.append(f"failed: {request.url} ({request.failure})")

    def _route(self, route):
        if route.request.url.startswith(self.base) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.problems.append(f"off-site request: {route.request.url}")
            route.abort()

    def open(self, name: str) -> None:
        self.page.goto(self.base + name, wait_until="load")
        self.page.wait_for_load_state("networkidle")


def test_the_favicon_is_served(site, served):
    assert (site / FAVICON).is_file()
    with urllib.request.urlopen(served + FAVICON) as response:
        assert response.status == 200 and response.read().lstrip().startswith(b"<svg")


@pytest.mark.slow
@pytest.mark.browser
def test_every_page_opens_in_chromium_without_errors_or_requests_off_the_site(browser, site, served):
    pages = [p.relative_to(site).as_posix() for p in _pages(site)]
    visit = _Visit(browser, served)
    try:
        for name in pages:
            visit.open(name)
            if visit.page.evaluate(_PAGE_JS)["math"]:
                visit.page.wait_for_selector("mjx-container", timeout=15_000)
            assert not visit.problems, f"{name}: {visit.problems}"
    finally:
        visit.page.close()
    assert len(pages) >= len(SOURCES) + 4


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_a_chapter_in_chromium_draws_its_plots_and_colours_its_check_results(browser, site, served, path):
    visit = _Visit(browser, served)
    try:
        visit.open(f"{path.stem}.html")
        shown = visit.page.evaluate(_PAGE_JS)
        assert not visit.problems, visit.problems
    finally:
        visit.page.close()
    assert shown["imagesDrawn"] == _expected_images(path), f"{shown['imagesDrawn']} of {_expected_images(path)} plots"
    assert [c["status"] for c in shown["checks"]] == _expected_checks(path)
    for check in shown["checks"]:
        border, background = checking._COLOURS[check["status"]]
        expected = (_rgb(border), "4px", _rgb(background))
        found = (check["border"], check["width"], check["background"])
        assert found == expected, f"a {check['status']} box is drawn {found}, not {expected}: were its styles stripped?"
    if shown["math"]:
        assert shown["mathDrawn"] >= shown["math"], "MathJax did not typeset the formulas"


@pytest.mark.slow
def test_the_chinese_search_index_holds_chinese_words(site):
    if not (site / "zh").is_dir():
        pytest.skip("no Chinese edition")
    text = (site / "zh" / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    found = set()
    for kind in ("terms", "titleterms"):  # jieba splits the text; without it no Chinese word is indexed
        documents = index[kind].get("检查点", [])
        found |= set(documents if isinstance(documents, list) else [documents])
    assert "04_save_and_load" in {index["docnames"][i] for i in found}


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize(("page", "query"), [("search.html", "state_dict"), ("zh/search.html", "检查点")])
def test_searching_finds_chapter_4_in_each_language(browser, served, site, page, query):
    if not (site / page).exists():
        pytest.skip("no Chinese edition")
    visit = _Visit(browser, served)
    try:
        visit.open(f"{page}?q={urllib.parse.quote(query)}")
        visit.page.wait_for_selector("#search-results .search-summary:has-text('found')", timeout=30_000)
        results = visit.page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
        assert not visit.problems, visit.problems
    finally:
        visit.page.close()
    assert any("04_save_and_load.html" in url for url in results), results


def test_make_book_builds_the_site_after_installing_and_ci_builds_it():
    makefile = (book.REPO_DIR / "Makefile").read_text()
    assert re.search(r"^book: \$\(STAMP\)\n\t\$\(BIN\)/python -m course_utils\.book$", makefile, re.M)
    assert "make book" in (book.REPO_DIR / ".ci" / "run").read_text()
    assert "/_build/" in (book.REPO_DIR / ".gitignore").read_text().split()
