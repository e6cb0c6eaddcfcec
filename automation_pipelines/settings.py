"""One configuration for every command: `.env` at the project root, under the environment, over
documented defaults.

cron and systemd start commands with an almost empty environment, an interactive shell with
whatever was exported. Every `automation-pipelines` command therefore reads the project's `.env`
first (variables already set in the environment win), so the README's cron line, a systemd unit
and a shell all act on the same instance with the same alert routes. Settings that are wrong or
missing raise `ConfigurationError` naming the variable, instead of falling back to something
that only looks like it works.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit

from automation_pipelines.paths import PROJECT_ROOT

#: Another file than the project's `.env` (tests point it at their own, or at nothing).
ENV_FILE_ENV = "AUTOMATION_ENV_FILE"


class ConfigurationError(Exception):
    """A setting is missing, malformed or points at something unreachable; the message names
    the variable to fix."""


def env_file() -> Path:
    """`$AUTOMATION_ENV_FILE`, else `.env` at the project root."""
    configured = os.environ.get(ENV_FILE_ENV)
    return Path(configured) if configured else PROJECT_ROOT / ".env"


#: The variables taken from the env file, by this process or the one that started it (its
#: children inherit both), so that reading the file again can replace exactly those.
FROM_FILE_ENV = "AUTOMATION_ENV_FILE_KEYS"


def load_project_env() -> Path | None:
    """Put the variables of the project's `.env` into this process's environment, except those
    already set there; return the file read, or None when there is none."""
    from dotenv import dotenv_values

    path = env_file()
    if not path.is_file():
        return None
    taken = _taken_from_file()
    for key, value in dotenv_values(path).items():
        if value is not None and key not in os.environ:
            os.environ[key] = value
            taken.add(key)
    if taken:
        os.environ[FROM_FILE_ENV] = ",".join(sorted(taken))
    return path


def reload_project_env() -> Path | None:
    """Read the env file again: what came from it takes its current values (and what was
    removed from it goes), while variables set in the environment proper still win. How a
    restarted process, or a receiver told SIGHUP, sees a secret that was changed in `.env`."""
    for key in _taken_from_file():
        os.environ.pop(key, None)
    os.environ.pop(FROM_FILE_ENV, None)
    return load_project_env()


def _taken_from_file() -> set[str]:
    listed = os.environ.get(FROM_FILE_ENV)
    return set(listed.split(",")) - {""} if listed else set()


def integer(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer setting, its default when unset or empty; a bad value names the variable."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
    if maximum is not None and not minimum <= value <= maximum:
        raise ConfigurationError(f"{name}={value} must be between {minimum} and {maximum}")
    if value < minimum:
        raise ConfigurationError(f"{name}={value} must be at least {minimum}")
    return value


def port(name: str, default: int) -> int:
    """A TCP port setting (1-65535)."""
    return integer(name, default, minimum=1, maximum=65535)


def http_url(name: str, default: str) -> str:
    """An http(s) URL setting without its trailing slash; anything else names the variable."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default.rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name}={raw!r} is not an http:// or https:// URL")
    return raw.rstrip("/")


#: Where a browser opens the repository's files: a runbook's link is this plus its path, so an
#: alert read in Slack or e-mail and the job's page in the UI link a page that opens.
RUNBOOK_BASE_URL_ENV = "RUNBOOK_BASE_URL"
DEFAULT_RUNBOOK_BASE_URL = "https://git.example.com/team/automation_pipelines/blob/main"


def runbook_url(path: str) -> str:
    """The runbook at `path` (relative to the project root) as a link that opens in a browser."""
    base = http_url(RUNBOOK_BASE_URL_ENV, DEFAULT_RUNBOOK_BASE_URL)
    return f"{base}/{quote(path.lstrip('/'))}"
