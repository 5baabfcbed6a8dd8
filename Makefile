# Two commands for a learner: `make lab` and `make test`. Both install what is missing first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export COURSE_UTILS_STRICT ?= 1
PYTEST_NOTEBOOKS := --nbval --nbval-current-env --nbval-cell-timeout=300 --sanitize-with tests/sanitize.cfg

.PHONY: help install lab test test-fast test-browser build book lint format grade grade-nbval bench clean

help:
	@echo "make lab        open the course in JupyterLab (installs first if needed)"
	@echo "make test       run the whole test suite (installs first if needed)"
	@echo "make test-fast  unit tests only, no notebook runs"
	@echo "make test-browser  the student notebooks in JupyterLab in headless Chromium (needs /usr/bin/chromium)"
	@echo "make build      regenerate the student notebooks from notebooks/solutions/"
	@echo "make book       the course website from the executed notebooks -> _build/html/index.html (offline)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make bench      time every notebook, check and the test suite -> bench/results.md"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make grade SUBMISSIONS=dir [CHAPTER=N]   grade a folder of notebooks -> grades.csv, feedback/"
	@echo "make grade-nbval NOTEBOOK=file.ipynb      nbval fails exactly at the exercises that do not pass"

$(STAMP): pyproject.toml course_utils/lab_settings.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m course_utils.lab_settings
	@touch $(STAMP)

install: $(STAMP)

# JupyterLab refuses to run as root without --allow-root (containers, CI); learners' own accounts never need it.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(ALLOW_ROOT)

# Two pytest workers each run a kernel on this 2-core machine: one torch thread each avoids oversubscription.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope $(PYTEST_NOTEBOOKS) tests notebooks/solutions

test-browser: $(STAMP)
	@test -x /usr/bin/chromium || (echo "Chromium not found: sudo apt-get install chromium (Debian/Ubuntu)"; exit 2)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m browser tests/test_browser.py tests/test_book.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests

build: $(STAMP)
	$(BIN)/python -m course_utils.build

# The website renders the stored outputs of notebooks/solutions/ (nothing is executed); it fails on any build warning.
book: $(STAMP)
	$(BIN)/python -m course_utils.book

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || (echo "usage: make grade SUBMISSIONS=folder [CHAPTER=N]"; exit 2)
	$(BIN)/python -m course_utils.grade "$(SUBMISSIONS)" $(if $(CHAPTER),--chapter $(CHAPTER)) \
		--out grades.csv --feedback-dir feedback

grade-nbval: $(STAMP)
	@test -n "$(NOTEBOOK)" || (echo "usage: make grade-nbval NOTEBOOK=file.ipynb"; exit 2)
	COURSE_UTILS_GRADING=1 COURSE_UTILS_STRICT=0 $(BIN)/python -m pytest -p no:cacheprovider \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=120 "$(NOTEBOOK)"

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache _build
