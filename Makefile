# Two commands matter: `make run` (the Dagster UI and daemon) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install run run-prod demo test lint format check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/automation-pipelines dev --host $(HOST) --port $(PORT)

# The team topology on PostgreSQL (DAGSTER_PG_* from the environment or .env): a gRPC code server,
# the webserver and the daemon reading it, and the webhook receiver, as separate processes.
run-prod: install
	$(BIN)/automation-pipelines prod --host $(HOST) --port $(PORT)

# With `make run` up in another terminal: sample photos and signed webhook events to watch.
demo: install
	$(BIN)/automation-pipelines demo --ui http://$(HOST):$(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: install
	$(BIN)/automation-pipelines check

test: lint check
	$(BIN)/pytest

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
