"""Sphinx configuration of the course website. Build it with `make book` (`python -m course_utils.book`).

`course_utils.book` stages the pages of one language into `_build/src/<lang>/` and runs Sphinx on them with
this folder as the configuration directory; the language, the title and the language switch come in through
the environment variable ``COURSE_BOOK_SITE`` (JSON), written by `course_utils.book`. Nothing here may fetch
anything from the network, at build time or when a reader opens a page.
"""

import json
import os

_site = json.loads(os.environ.get("COURSE_BOOK_SITE", "{}"))

project = _site.get("title", "Defining models in PyTorch")
author = "The course authors"
copyright = "the course authors, MIT License"
language = _site.get("language", "en")

# githubpages writes .nojekyll: GitHub Pages would otherwise hide _static/, _images/ and _downloads/.
extensions = ["myst_nb", "sphinx.ext.githubpages"]

# MathJax: Sphinx loads it from a CDN by default. Serve it from the site instead: the pinned wheel
# sphinx-mathjax-offline carries MathJax 3; _copy_mathjax (below) copies the parts our pages load.
mathjax_path = "mathjax/tex-chtml.js"

# The source edition is already executed (and checked by nbval): render its stored outputs, never run it again.
nb_execution_mode = "off"
nb_merge_streams = True  # a cell's stdout chunks in one block
# Pygments' IPython traceback lexer trips over backticks in messages (torch.load's); the plain Python one does not.
nb_render_error_lexer = "pytb"
nb_ipywidgets_js = {}  # no widget JavaScript from a CDN; course_utils.book renders progress bars as static HTML
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

exclude_patterns = ["downloads/**", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_theme = "sphinx_book_theme"
html_title = project
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None
html_copy_source = False  # the student and solved notebooks are offered as downloads on each chapter page
html_show_sourcelink = False
html_context = {"default_mode": "light", "course_languages": _site.get("languages", []), "course_language": language}
html_sidebars = {"**": ["navbar-logo.html", "search-button-field.html", "language-switch.html", "sbt-sidebar-nav.html"]}
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_persistent": [],
}

_MATHJAX_PARTS = ("tex-chtml.js", "input/tex/extensions", "output/chtml", "ui", "a11y", "adaptors")


def _copy_mathjax(app, exception):
    """Copy MathJax's TeX-to-HTML bundle, its extensions and its fonts into the site (not the 24 MB whole)."""
    if exception is not None or app.builder.format != "html":
        return
    import importlib.util
    import shutil
    from pathlib import Path

    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    source = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in _MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)


def _chinese_search():
    """Sphinx 9.0.4's Chinese search ships the English stemmer but binds ``ChineseStemmer``, which no file defines:
    every Chinese page then fails with "ChineseStemmer is not defined". Bind the stemmer it ships."""
    from sphinx.search import _MINIFIED_JS_PATH
    from sphinx.search.zh import SearchChinese

    class SearchChineseWithItsStemmer(SearchChinese):
        js_stemmer_rawcode = ""  # the stemmer comes inline, in js_stemmer_code
        js_stemmer_code = "\n".join(
            [
                (_MINIFIED_JS_PATH / "base-stemmer.js").read_text(encoding="utf-8"),
                (_MINIFIED_JS_PATH / "english-stemmer.js").read_text(encoding="utf-8"),
                "window.Stemmer = EnglishStemmer;",
            ]
        )

    return SearchChineseWithItsStemmer


def setup(app):
    app.connect("build-finished", _copy_mathjax)
    if language == "zh":
        app.add_search_language(_chinese_search())
