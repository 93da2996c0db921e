# The two set-up commands are `make demo` and `make test`; both create what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYENV_ROOT ?= $(HOME)/.pyenv
# The Pythons the uWSGI integration tests run on, each in .venvs/<version>.
TEST_PYTHONS ?= 3.10 3.11 3.12 3.13
STAMP := $(VENV)/.installed

.PHONY: venv pythons chromium test screenshot demo lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# One virtualenv with uWSGI per supported Python found here (pyenv or PATH),
# with what the server tests run there: uWSGI (its pip build has the gevent loop
# built in), gunicorn and gevent, from the test extra. A Python that is missing
# is said, and its server tests are skipped.
.venvs/.installed: pyproject.toml
	@mkdir -p .venvs
	@for v in $(TEST_PYTHONS); do \
	  py=$$(ls -d $(PYENV_ROOT)/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v 2>/dev/null); \
	  if [ -n "$$py" ] && "$$py" -c 'import venv' 2>/dev/null; then \
	    echo "Python $$v: $$py"; \
	    [ -x .venvs/$$v/bin/python ] || "$$py" -m venv .venvs/$$v || exit 1; \
	    .venvs/$$v/bin/python -m pip install -q --upgrade pip wheel || exit 1; \
	    .venvs/$$v/bin/python -m pip install -q -e '.[test]' || exit 1; \
	  else \
	    echo "Python $$v not found: its uWSGI tests will be skipped"; \
	  fi; \
	done
	touch $@

pythons: .venvs/.installed

# Headless Chromium for the test of the dump page (tests/test_page.py), from Debian.
chromium:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

test: $(STAMP) .venvs/.installed chromium
	$(BIN)/python -m pytest

# Renew docs/_static/dump-page.png from a live uWSGI in headless Chromium.
screenshot: $(STAMP) chromium
	UTD_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/test_page.py

# Static checks: ruff (lint and format) and mypy strict, configured in pyproject.toml.
LINT_PATHS := flask_utd tests demo_app $(wildcard bench docs/conf.py)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# Prints one table: flask-utd against py-spy and against no extension (about
# 4 minutes; BENCH_SMOKE=1 for a few seconds). See docs/performance.md.
bench: $(STAMP)
	@[ -x $(BIN)/py-spy ] || $(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench

# The documentation site, warnings as errors, into docs/_build/html.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

demo: $(STAMP)
	$(BIN)/python -m demo_app.run

clean:
	rm -rf $(VENV) .venvs .pytest_cache .mypy_cache docs/_build
