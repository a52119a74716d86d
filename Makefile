# System Design Prototypes: the two commands are `make demo` and `make test`.
# Every target that needs Python packages depends on `setup`, so each works on
# a fresh clone with nothing but Python 3.11+ and make.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed

.PHONY: setup demo test bench lint format clean

# Some tests need things pip cannot install: Chromium for the browser tests
# (RealTimeChat's page, WebSockets' interoperability), redis-server for the
# chat's scale-out test (apt-get), and the Socket.IO browser client the chat
# page serves (npm). Each has its own target, so set-up runs them once, not
# on every `make test`.
SYSTEM_STAMP := $(VENV)/.system-packages-installed
CHAT_JS      := RealTimeChat/static/vendor/socket.io.min.js
SUDO         := $(if $(filter 0,$(shell id -u)),,sudo)

setup: $(STAMP) $(SYSTEM_STAMP) $(CHAT_JS)

# Reinstall whenever requirements.txt changes; `touch` records the install.
$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# Install only what is missing (`command -v`), so a machine that has them is
# left alone; without apt-get (not Debian) say what the chat tests will lack.
$(SYSTEM_STAMP): | $(STAMP)
	@set -e; missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "Installing with apt-get:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "No apt-get: install$$missing yourself (the browser and Redis tests need them)"; \
	fi
	@touch $@

# The Socket.IO browser client, at the exact version package-lock.json pins
# (npm ci checks its integrity hash), served by the chat from its own static
# folder so the page works offline.
$(CHAT_JS): RealTimeChat/package.json RealTimeChat/package-lock.json | $(SYSTEM_STAMP)
	npm ci --prefix RealTimeChat --no-audit --no-fund --loglevel=error
	@mkdir -p $(@D)
	cp RealTimeChat/node_modules/socket.io-client/dist/socket.io.min.js $@

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
	rm -rf RealTimeChat/node_modules RealTimeChat/static/vendor
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
