# System Design Prototypes: the two commands are `make demo` and `make test`.
# Every target that needs Python packages depends on `setup`, so each works on
# a fresh clone with nothing but Python 3.11+ and make.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed

.PHONY: setup demo test bench images lint format clean

# Tests run in parallel (pytest-xdist); every test is independent of the others.
TEST_WORKERS ?= 3

# Some tests need things pip cannot install, from apt-get: Chromium for the
# browser tests (RealTimeChat's page, WebSockets' interoperability), and the
# real engines the tests start privately (tests/conftest.py): redis-server
# (with redis-cli, for Redis Cluster too), PostgreSQL and etcd; and from npm,
# the Socket.IO browser client the chat page serves. Each has its own target,
# so set-up runs them once, not on every `make test`. The benches install
# their own peers (nginx, Varnish, wrk) on first use.
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

# Install only what is missing, so a machine that has them is left alone;
# without apt-get (not Debian) say what the tests will lack. Debian keeps
# PostgreSQL's server binaries off PATH, in /usr/lib/postgresql/<version>/bin.
# Rechecked whenever this Makefile changes (a new engine may have joined).
$(SYSTEM_STAMP): Makefile | $(STAMP)
	@set -e; missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	command -v postgres >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "Installing with apt-get:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "No apt-get: install$$missing yourself (the browser and engine tests need them)"; \
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
	$(PY) -m pytest -n $(TEST_WORKERS)

# Every folder's bench.py, then one summary table (also out/bench-summary.json).
bench: setup
	$(PY) tour.py --bench

# Rewrite the pictures the READMEs show (images/), on purpose: the demos'
# plain runs write only to their git-ignored out/ folders.
images: setup
	$(PY) tour.py --save-images

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis out */out
	rm -rf RealTimeChat/node_modules RealTimeChat/static/vendor
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
