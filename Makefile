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

.PHONY: install lock upgrade run run-prod demo test lint format check bench clean

# requirements.lock: every package `make install` installs (pyproject's dependencies and the dev
# and bench extras, and all they pull in), each pinned with the hashes of its files on PyPI.
# uv (pinned in the dev extra) resolves it from PyPI alone, for Linux x86-64 and Python 3.11,
# whatever indexes or find-links this machine's pip is set up with.
# requirements-k8s.lock is the same for the Kubernetes image (deploy/Dockerfile): the
# dependencies and the k8s extra, at the versions of requirements.lock wherever the two meet.
LOCK := requirements.lock
LOCK_K8S := requirements-k8s.lock
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
	--no-config --default-index https://pypi.org/simple --custom-compile-command "make lock" \
	--quiet
LOCK_COMMAND = $(UV_COMPILE) --extra dev --extra bench --output-file $(LOCK)
LOCK_K8S_COMMAND = $(UV_COMPILE) --extra k8s --constraint $(LOCK) --output-file $(LOCK_K8S)

# The lock, then the project alone; `automation-pipelines drift` fails the install when what is
# installed is not exactly the lock, or the lock does not cover pyproject.toml.
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/automation-pipelines drift
	@touch $(STAMP)

install: $(STAMP) nginx restic

# After changing pyproject.toml's dependencies: `make lock` writes the lock again, keeping every
# version it can; `make upgrade` moves every package pyproject.toml does not pin to its newest
# release. Either way .venv is then rebuilt from the new lock, so it holds nothing else.
lock upgrade:
	@test -x $(BIN)/uv || { echo "$(BIN)/uv is missing: run make install first"; exit 2; }
	$(LOCK_COMMAND) $(if $(filter upgrade,$@),--upgrade)
	$(LOCK_K8S_COMMAND) $(if $(filter upgrade,$@),--upgrade)
	rm -rf $(VENV)
	$(MAKE) install

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

# The readiness checklist, then Dagster's own loader on the project ([tool.dg] in pyproject.toml).
check: install
	$(BIN)/automation-pipelines check
	@home=$$(mktemp -d) && printf 'telemetry:\n  enabled: false\n' > $$home/dagster.yaml && \
	echo "dg check defs" && VIRTUAL_ENV=$(abspath $(VENV)) DAGSTER_HOME=$$home $(BIN)/dg check defs; \
	status=$$?; rm -rf $$home; exit $$status

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

# The production topology's reverse proxy (PROXY_PORT) is Debian's nginx, run by the topology
# with its own config, ports and folders; the system service the package may start on port 80
# is stopped and disabled at once. `make install` and `make test` get it; without root or
# passwordless sudo this only says so, and the proxy tests skip (CI, with AP_REQUIRE_POSTGRES=1,
# fails).
nginx:
	@if [ ! -x /usr/sbin/nginx ]; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
		else echo "/usr/sbin/nginx is missing and installing it needs root or sudo:" \
			"run 'sudo apt-get install nginx'; until then the proxy tests skip."; exit 0; fi; \
		if ! command -v apt-get >/dev/null; then \
			echo "/usr/sbin/nginx is missing and this is not a Debian-like system:" \
				"install nginx at /usr/sbin/nginx; until then the proxy tests skip."; exit 0; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends nginx || exit 1; \
		if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now nginx; \
		else $$SUDO invoke-rc.d nginx stop >/dev/null 2>&1; \
			$$SUDO update-rc.d nginx disable >/dev/null 2>&1; true; fi; \
	fi

# The backups store their snapshots with Debian's restic; the SFTP destination's tests start
# Debian's OpenSSH server with their own config on a loopback port (the system service the
# package may start is stopped and disabled at once). Without root or passwordless sudo this
# only says so, and those tests skip (CI, with AP_REQUIRE_POSTGRES=1, fails).
restic:
	@if [ ! -x /usr/bin/restic ] || [ ! -x /usr/sbin/sshd ]; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
		else echo "/usr/bin/restic or /usr/sbin/sshd is missing and installing them needs root" \
			"or sudo: run 'sudo apt-get install restic openssh-server'; until then the backup" \
			"tests skip."; exit 0; fi; \
		if ! command -v apt-get >/dev/null; then \
			echo "/usr/bin/restic is missing and this is not a Debian-like system:" \
				"install restic at /usr/bin/restic; until then the backup tests skip."; exit 0; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends restic openssh-server || exit 1; \
		if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now ssh; \
		else $$SUDO invoke-rc.d ssh stop >/dev/null 2>&1; \
			$$SUDO update-rc.d ssh disable >/dev/null 2>&1; true; fi; \
	fi

# The tests that need no daemon or browser run on both cores; then the e2e and browser tests, one
# at a time, since they measure real processes and must not share the machine with each other.
test: browser nginx restic lint check
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
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
