"""Which senders may POST to the receiver, read from `webhook_sources.yaml`.

The file names each source's secret only by environment variable, so it can be reviewed and
committed; it is validated strictly because a typo here would otherwise surface as a sender's
deliveries being refused, or worse, accepted under the wrong rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.webhooks.verifiers import (
    GitHubVerifier,
    HmacVerifier,
    RotatingVerifier,
    StandardWebhooksVerifier,
    StripeVerifier,
    Verifier,
)

SOURCES_FILE_ENV = "WEBHOOK_SOURCES_FILE"
DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_TOLERANCE_SECONDS = 300

KINDS = ("github", "stripe", "standard", "hmac")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_COMMON_KEYS = frozenset({"kind", "secret_env", "max_body_bytes"})
_HMAC_HEADER_OPTIONS = ("signature_header", "timestamp_header", "id_header", "type_header")
_HMAC_OPTIONS = frozenset({*_HMAC_HEADER_OPTIONS, "prefix", "encoding"})
# Only kinds that read a timestamp with our clock take a tolerance: GitHub signs none, and the
# Standard Webhooks library fixes its own at five minutes.
_KEYS_BY_KIND = {
    "github": _COMMON_KEYS,
    "stripe": _COMMON_KEYS | {"tolerance_seconds"},
    "standard": _COMMON_KEYS,
    "hmac": _COMMON_KEYS | {"tolerance_seconds"} | _HMAC_OPTIONS,
}


@dataclass(frozen=True)
class SourceConfig:
    """One sender: how it signs, where its secret is, and how much it may send."""

    name: str
    kind: str
    secret_env: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    options: Mapping[str, Any] = field(default_factory=dict)


class SourceConfigError(ValueError):
    """The sources file is not what the receiver can safely run on."""


class MissingSecret(RuntimeError):
    """A source's secret is not in the environment, so its deliveries cannot be checked."""

    def __init__(self, env_name: str, source: str) -> None:
        super().__init__(f"set {env_name} (the shared secret for webhook source {source!r})")
        self.env_name = env_name
        self.source = source


def sources_file() -> Path:
    """The sources file: `$WEBHOOK_SOURCES_FILE`, else the one at the project root."""
    override = os.environ.get(SOURCES_FILE_ENV)
    return Path(override) if override else PROJECT_ROOT / "webhook_sources.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses repeated keys, which plain YAML resolves silently to the last."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            continue  # construct_mapping reports unhashable keys itself
        if key in seen:
            raise SourceConfigError(f"line {key_node.start_mark.line + 1}: {key!r} appears twice")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SourceConfigError(f"{where}: {key} must be a positive integer, not {value!r}")
    return value


def _header_option(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise SourceConfigError(f"{where}: {key} must be an HTTP header name, not {value!r}")
    return value.lower()


def _hmac_options(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in _HMAC_HEADER_OPTIONS:
        if key in raw and not (key == "timestamp_header" and raw[key] is None):
            options[key] = _header_option(raw[key], where, key)
    if "prefix" in raw:
        if not isinstance(raw["prefix"], str):
            raise SourceConfigError(f"{where}: prefix must be a string, not {raw['prefix']!r}")
        options["prefix"] = raw["prefix"]
    if "encoding" in raw:
        if raw["encoding"] not in ("hex", "base64"):
            raise SourceConfigError(
                f"{where}: encoding must be hex or base64, not {raw['encoding']!r}"
            )
        options["encoding"] = raw["encoding"]
    if "tolerance_seconds" in raw and "timestamp_header" not in options:
        raise SourceConfigError(f"{where}: tolerance_seconds needs a timestamp_header to apply to")
    return options


def _source(name: Any, raw: Any, default_max_body: int, file: Path) -> SourceConfig:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SourceConfigError(
            f"{file}: source name {name!r} must match {_NAME.pattern} (it is part of the URL)"
        )
    where = f"{file}: source {name!r}"
    if not isinstance(raw, dict):
        raise SourceConfigError(f"{where}: settings must be a mapping")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SourceConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    unknown = sorted(str(key) for key in raw if key not in _KEYS_BY_KIND[kind])
    if unknown:
        raise SourceConfigError(f"{where}: unknown key(s) for kind {kind}: {', '.join(unknown)}")
    secret_env = raw.get("secret_env")
    if secret_env is None:
        raise SourceConfigError(f"{where}: secret_env is missing")
    if not isinstance(secret_env, str) or not _ENV_NAME.match(secret_env):
        raise SourceConfigError(
            f"{where}: secret_env must be an upper-case environment variable name, "
            f"not {secret_env!r}"
        )
    max_body = raw.get("max_body_bytes", default_max_body)
    tolerance = raw.get("tolerance_seconds", DEFAULT_TOLERANCE_SECONDS)
    return SourceConfig(
        name=name,
        kind=kind,
        secret_env=secret_env,
        max_body_bytes=_positive_int(max_body, where, "max_body_bytes"),
        tolerance_seconds=_positive_int(tolerance, where, "tolerance_seconds"),
        options=_hmac_options(raw, where) if kind == "hmac" else {},
    )


def load_sources(path: Path | str | None = None) -> dict[str, SourceConfig]:
    """Every source in the file, or a `SourceConfigError` naming the file, source and problem."""
    file = Path(path) if path is not None else sources_file()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise SourceConfigError(f"{file}: cannot read: {error.strerror or error}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except SourceConfigError as error:
        raise SourceConfigError(f"{file}: {error}") from None
    except yaml.YAMLError as error:
        raise SourceConfigError(f"{file}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise SourceConfigError(f"{file}: must be a mapping with a `sources:` key")
    unknown = sorted(str(key) for key in raw if key not in ("sources", "max_body_bytes"))
    if unknown:
        raise SourceConfigError(f"{file}: unknown top-level key(s): {', '.join(unknown)}")
    default_max_body = _positive_int(
        raw.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES), str(file), "max_body_bytes"
    )
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise SourceConfigError(f"{file}: `sources:` must map at least one source name to settings")
    return {
        name: _source(name, settings, default_max_body, file) for name, settings in sources.items()
    }


#: Appended to a source's `secret_env` for the previous secret during a rotation, and for the
#: moment it stops being accepted (ISO 8601 with its offset, e.g. 2026-12-31T00:00:00Z).
PREVIOUS_SUFFIX, UNTIL_SUFFIX = "_PREVIOUS", "_PREVIOUS_UNTIL"


def build_verifier(config: SourceConfig, environ: Mapping[str, str] | None = None) -> Verifier:
    """The verifier for `config`, keyed with its secret from `environ` (default `os.environ`).

    A secret never has a default: without one the source must stay closed. While
    `<secret_env>_PREVIOUS` is set, the previous secret is accepted as well until
    `<secret_env>_PREVIOUS_UNTIL`, which must then be set: a previous secret without an end
    would stay valid for ever, so the source stays closed instead and says why.
    """
    env = os.environ if environ is None else environ
    secret = env.get(config.secret_env)
    if not secret:
        raise MissingSecret(config.secret_env, config.name)
    current = _keyed(config, secret, config.secret_env)
    previous = env.get(config.secret_env + PREVIOUS_SUFFIX)
    if not previous:
        return current
    until = _rotation_end(config, env.get(config.secret_env + UNTIL_SUFFIX))
    return RotatingVerifier(
        current, _keyed(config, previous, config.secret_env + PREVIOUS_SUFFIX), until
    )


def _rotation_end(config: SourceConfig, raw: str | None) -> float:
    name = config.secret_env + UNTIL_SUFFIX
    example = "an ISO 8601 moment with its offset, e.g. 2026-12-31T00:00:00Z"
    if not raw:
        raise ValueError(
            f"{config.secret_env}{PREVIOUS_SUFFIX} is set without {name}: set {name} to the "
            f"moment the previous secret stops being accepted ({example})"
        )
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {example}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name}={raw!r} has no offset; write it as {example}")
    return moment.timestamp()


def _keyed(config: SourceConfig, secret: str, env_name: str) -> Verifier:
    try:
        if config.kind == "github":
            return GitHubVerifier(secret)
        if config.kind == "stripe":
            return StripeVerifier(secret, tolerance_seconds=config.tolerance_seconds)
        if config.kind == "standard":
            return StandardWebhooksVerifier(secret)
        if config.kind == "hmac":
            options = dict(config.options)
            for key in _HMAC_HEADER_OPTIONS:
                if options.get(key):
                    options[key] = options[key].lower()
            return HmacVerifier(secret, tolerance_seconds=config.tolerance_seconds, **options)
    except ValueError as error:
        raise ValueError(f"{env_name} (source {config.name!r}): {error}") from None
    raise SourceConfigError(f"source {config.name!r}: unknown kind {config.kind!r}")
