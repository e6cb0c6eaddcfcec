"""Secret values never leave the process in an alert, a log line or the outbox.

The values to hide are those of environment variables that resources read through `dg.EnvVar`
(found by walking the definitions), names registered with `secret_env`, names that look secret
(…_PASSWORD, …_TOKEN, ALERT_URLS…), and passwords embedded in URLs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg

MASK = "***"
#: Shorter values are not masked: they would blank out ordinary words and numbers.
MIN_SECRET_LENGTH = 4

SECRET_NAME = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH|"
    r"ALERT_URLS|DB_URL|DSN)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?=@)", re.I
)

_registered: set[str] = set()


def secret_env(name: str) -> dg.EnvVar:
    """`dg.EnvVar(name)` for a secret: the value is also masked wherever it would be shown."""
    _registered.add(name)
    return dg.EnvVar(name)


def register_secret_names(names: Iterable[str]) -> None:
    _registered.update(names)


def _env_vars_of(value: Any, seen: set[int]) -> Iterator[str]:
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dg.EnvVar):
        yield value.env_var_name
    elif isinstance(value, dg.ConfigurableResource | dg.Config):
        for field in type(value).model_fields:
            yield from _env_vars_of(getattr(value, field, None), seen)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _env_vars_of(item, seen)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _env_vars_of(item, seen)


def env_vars_of_resources(resources: dict[str, Any]) -> set[str]:
    """Names of the environment variables the given resources read through `dg.EnvVar`."""
    seen: set[int] = set()
    return {name for value in resources.values() for name in _env_vars_of(value, seen)}


def register_resources(defs: dg.Definitions) -> set[str]:
    """Treat every variable a resource of `defs` reads through `dg.EnvVar` as secret."""
    names = env_vars_of_resources(dict(defs.resources or {}))
    register_secret_names(names)
    return names


def secret_values() -> list[str]:
    """The values to mask, longest first so a value containing another is masked whole."""
    values = set()
    for name, value in os.environ.items():
        if name in _registered or SECRET_NAME.search(name):
            for part in [value, *re.split(r"[\s,]+", value)]:
                if len(part) >= MIN_SECRET_LENGTH:
                    values.add(part)
            values.update(m.group("password") for m in _URL_PASSWORD.finditer(value))
    return sorted(values, key=len, reverse=True)


def redact(text: str, values: list[str] | None = None) -> str:
    """`text` with every secret value and every URL password replaced by ***."""
    if not text:
        return text
    for value in secret_values() if values is None else values:
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
