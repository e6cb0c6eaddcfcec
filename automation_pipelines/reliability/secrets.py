"""Secret values never leave the process in an alert, a log line or the outbox.

The values to hide are those of environment variables that resources read through `dg.EnvVar`
(found by walking the definitions), names registered with `secret_env`, names that look secret
(…_PASSWORD, …_TOKEN, ALERT_URLS…), and passwords embedded in URLs. `literal_secrets` finds the
secrets someone wrote into a settings file instead of the environment (the readiness check
refuses them), and `strip_passwords` takes them out of a connection string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

# Dagster is imported where a function needs it, not here: processes that only redact text,
# such as the webhook receiver's inbox writer, would otherwise spend most of their start
# (about 0.8 s of 1.1 s) importing it.

MASK = "***"
#: Shorter values are not masked: they would blank out ordinary words and numbers.
MIN_SECRET_LENGTH = 4

SECRET_NAME = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH|"
    r"ALERT_URLS|DB_URL|DSN)",
    re.IGNORECASE,
)
#: Names that look secret but point at something (a socket, a file, a host) or describe it.
_POINTER_NAME = re.compile(
    r"_(SOCK|SOCKET|FILE|PATH|DIR|HOST|PORT|USER|USERNAME|TYPE|METHOD|MODE|UNTIL|SECONDS)$",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?=@)", re.I
)

_registered: set[str] = set()


def secret_env(name: str) -> dg.EnvVar:
    """`dg.EnvVar(name)` for a secret: the value is also masked wherever it would be shown."""
    import dagster as dg

    _registered.add(name)
    return dg.EnvVar(name)


def register_secret_names(names: Iterable[str]) -> None:
    _registered.update(names)


def _env_vars_of(value: Any, seen: set[int]) -> Iterator[str]:
    import dagster as dg

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
        if name in _registered or (SECRET_NAME.search(name) and not _POINTER_NAME.search(name)):
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


#: Setting names whose literal value is a secret (matched on snake_case words of the name).
_SECRET_SETTING = re.compile(
    r"(^|_)(password|passwd|pwd|passphrase|secret|token|credentials?|api_?key|apikey|"
    r"access_?key|private_?key|secret_?key|signing_?key|client_?secret)(_|$)"
)
#: Names that point at a secret instead of holding it (`secret_env: NAME`, `token_header: …`).
_REFERENCE_SETTING = re.compile(
    r"_(env|env_var|var|file|path|header|name|prefix|encoding|seconds|minutes|hours|ttl|type|"
    r"kind|length|bytes)$"
)
#: A bare `key` is usually a tag key (`key: automation`); only a generated-looking value counts.
_GENERATED = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])\S{16,}$")
_ENV_REFERENCE = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")
_KEYWORD_PASSWORD = re.compile(
    r"(?P<lead>^|\s+)password\s*=\s*(?P<password>'(?:[^'\\]|\\.)*'|[^\s']+)", re.I
)
_QUERY_PASSWORD = re.compile(r"(?P<sep>[?&;])password=(?P<password>[^&;#\s]*)&?", re.I)


def _words(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).replace("-", "_").lower()


def _is_reference(value: str) -> bool:
    return bool(_ENV_REFERENCE.match(value.strip().strip("'\"")))


def password_kind(text: str) -> str | None:
    """How `text` (a URL or a libpq connection string) carries a literal password, or None."""
    for match in _URL_PASSWORD.finditer(text):
        if not _is_reference(match.group("password")):
            return "a URL"
    for match in _QUERY_PASSWORD.finditer(text):
        if match.group("password") and not _is_reference(match.group("password")):
            return "a URL"
    for match in _KEYWORD_PASSWORD.finditer(text):
        if not _is_reference(match.group("password")):
            return "a connection string (password=…)"
    return None


def has_password(text: str) -> bool:
    return password_kind(text) is not None


def strip_passwords(text: str) -> str:
    """`text` without the passwords of its URLs and `password=` settings, so a connection string
    can be stored and shown; the client then takes the password from PGPASSWORD or ~/.pgpass."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head")[:-1], text)
    text = _QUERY_PASSWORD.sub(lambda m: m.group("sep") if m.group(0).endswith("&") else "", text)
    text = re.sub(r"\?$", "", text)
    return _KEYWORD_PASSWORD.sub("", text).strip()


def _literal(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(value.strip()) and not _is_reference(value)


def literal_secrets(settings: Any, where: str = "") -> list[str]:
    """Where a settings mapping (a parsed YAML file) holds a secret in clear: a URL or
    connection string with a password, or a password/secret/token/key setting with a literal
    value. Says where and how, never the value; references (`{env: NAME}`, `$NAME`, `*_env`)
    are fine."""
    found: list[str] = []
    if isinstance(settings, dict):
        for key, value in settings.items():
            path = f"{where}.{key}" if where else str(key)
            name = _words(str(key))
            if isinstance(value, dict | list):
                found.extend(literal_secrets(value, path))
                continue
            kind = password_kind(value) if isinstance(value, str) else None
            if kind:
                found.append(f"{path} holds a password in {kind}")
            elif _REFERENCE_SETTING.search(name) or not _literal(value):
                continue
            elif _SECRET_SETTING.search(name) or (name == "key" and _GENERATED.match(str(value))):
                found.append(f"{path} is a literal value")
    elif isinstance(settings, list):
        for index, value in enumerate(settings):
            path = f"{where}[{index}]"
            if isinstance(value, dict | list):
                found.extend(literal_secrets(value, path))
            elif isinstance(value, str) and (kind := password_kind(value)):
                found.append(f"{path} holds a password in {kind}")
    return found
