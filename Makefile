# Two commands matter: `make run` (the Dagster UI and daemon) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Where the processes listen: `make run PORT=3100` etc. win over .env (AUTOMATION_HOST, UI_PORT,
# WEBHOOKS_PORT, CODE_SERVER_PORT), which wins over the defaults (127.0.0.1, 3000, 3001, 4000).
LISTEN := $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) \
	$(if $(WEBHOOKS_PORT),--webhooks-port $(WEBHOOKS_PORT)) \
	$(if $(CODE_SERVER_PORT),--code-server-port $(CODE_SERVER_PORT))

.PHONY: install run run-prod demo test lint format check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# A gRPC code server, the webserver and the daemon reading it, and the webhook receiver, each
# supervised on its own, on the instance .env chooses (SQLite in .dagster_home/ by default).
run: install
	$(BIN)/automation-pipelines dev $(LISTEN)

# The same processes on PostgreSQL only (DAGSTER_PG_* from .env or the environment).
run-prod: install
	$(BIN)/automation-pipelines prod $(LISTEN)

# With `make run` up in another terminal: sample photos and signed webhook events to watch.
demo: install
	$(BIN)/automation-pipelines demo $(if $(PORT),--ui http://$(or $(HOST),127.0.0.1):$(PORT))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: install
	$(BIN)/automation-pipelines check

# The UI tests drive Debian's Chromium; no browser is ever downloaded. Without root or
# passwordless sudo this only says so, and those tests skip (CI, with AP_REQUIRE_POSTGRES=1, fails).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
		else echo "/usr/bin/chromium is missing and installing it needs root or sudo:" \
			"run 'sudo apt-get install chromium'; until then the browser tests skip."; exit 0; fi; \
		if ! command -v apt-get >/dev/null; then \
			echo "/usr/bin/chromium is missing and this is not a Debian-like system:" \
				"install Chromium at /usr/bin/chromium; until then the browser tests skip."; exit 0; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; \
	fi

# The tests that need no daemon or browser run on both cores; then the e2e and browser tests, one
# at a time, since they measure real processes and must not share the machine with each other.
test: browser lint check
	$(BIN)/pytest -m "not e2e and not browser" -n 2
	$(BIN)/pytest -m "e2e or browser"

bench: install
	@# ImageMagick and vipsthumbnail are what the benchmarks compare against; wrk loads the
	@# webhook receiver. `convert -version` rather than `command -v convert`: some machines carry
	@# a stand-in script of that name.
	@if ! convert -version 2>/dev/null | grep -q 'Version: ImageMagick' \
		|| ! command -v vipsthumbnail >/dev/null || ! command -v wrk >/dev/null \
		|| ! command -v zstd >/dev/null; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends imagemagick libvips-tools wrk zstd; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
