# System Design Prototypes: the two commands are `make demo` and `make test`.
# Every target that needs Python packages depends on `setup`, so each works on
# a fresh clone with nothing but Python 3.11+ and make.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed

.PHONY: setup demo test bench lint format clean

setup: $(STAMP)

# Reinstall whenever requirements.txt changes; `touch` records the install.
$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

demo: setup
	$(PY) tour.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

bench: setup
	@set -e; for b in */bench.py; do \
		echo "=== $$b"; $(PY) $$b; \
	done

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
