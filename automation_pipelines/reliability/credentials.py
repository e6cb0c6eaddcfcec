"""Credentials as declared, checked things: which variable holds each one, the service account it
belongs to, who hears about it, where it is used, how and how often it is rotated.

Tokens expire and passwords rotate; an automation that uses a credential eventually breaks
unless someone notices first. `credentials.yaml` declares every credential the project uses (the
readiness check refuses a secret variable that is used but not declared); the daily credentials
check probes each one with a harmless call (a PostgreSQL login, a connection to an alert route's
server, a webhook secret present and long enough) and warns its owner `warn_days` before a
rotation is due or the credential expires. Rotations are recorded in the project database by
`automation-pipelines credentials rotated NAME`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
import smtplib
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import yaml

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import store

CREDENTIALS_FILE = PROJECT_ROOT / "credentials.yaml"
#: Another inventory than the project's (tests, a deployment's own copy).
CREDENTIALS_FILE_ENV = "CREDENTIALS_FILE"
DEFAULT_WARN_DAYS = 14
#: How long a probe may wait for a server before the credential counts as unreachable.
PROBE_TIMEOUT_SECONDS = 5.0
#: A webhook secret shorter than this is guessable by brute force (bytes of key material).
MIN_WEBHOOK_SECRET_BYTES = 16
PROBES = (
    "postgres",
    "alert_urls",
    "webhook_secret",
    "tls_certificate",
    "secret_file",
    "present",
    "restic_repository",
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: An account that is a person's mailbox is not a service account.
_PERSONAL = re.compile(r"^(person|user|me)\b|^[^@\s]+@[^@\s]+\.[a-z]+$", re.I)

rotations_table = sa.Table(
    "ap_credential_rotations",
    store.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("credential", sa.String(64), nullable=False, index=True),
    #: "rotated" (recorded by a person) or "seen" (the first time a check saw it set).
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("note", sa.Text),
)


class InventoryError(ValueError):
    """credentials.yaml cannot be used; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class Credential:
    """One declared credential."""

    name: str
    env: str
    probe: str
    account: str
    owner: str
    used_by: tuple[str, ...]
    rotate: str
    rotate_every_days: int | None = None
    expires: dt.date | None = None
    last_rotated: dt.date | None = None
    required: bool = True

    @property
    def check_name(self) -> str:
        return f"{self.name}_credential"

    def describe(self) -> str:
        used = ", ".join(self.used_by)
        return f"${self.env} of {self.account}; used by {used}. Rotate: {self.rotate}"


@dataclass(frozen=True)
class Inventory:
    credentials: tuple[Credential, ...]
    warn_days: int = DEFAULT_WARN_DAYS
    path: Path = CREDENTIALS_FILE

    def get(self, name: str) -> Credential:
        for credential in self.credentials:
            if credential.name == name:
                return credential
        known = ", ".join(c.name for c in self.credentials)
        raise InventoryError(f"no credential named {name!r} in {self.path} (known: {known})")

    @property
    def variables(self) -> set[str]:
        return {c.env for c in self.credentials}


def inventory_path() -> Path:
    configured = os.environ.get(CREDENTIALS_FILE_ENV)
    return Path(configured) if configured else CREDENTIALS_FILE


def _date(value: Any, where: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InventoryError(f"{where} is {value!r}, not a date (YYYY-MM-DD)") from None


def _parse(name: str, raw: Any, where: str) -> Credential:
    here = f"{where}: credentials.{name}"
    if not _NAME.match(str(name)):
        raise InventoryError(f"{here}: a name is lowercase letters, digits and _ (max 63)")
    if not isinstance(raw, Mapping):
        raise InventoryError(f"{here} is not a mapping of settings")
    unknown = set(raw) - {
        "env",
        "probe",
        "account",
        "owner",
        "used_by",
        "rotate",
        "rotate_every_days",
        "expires",
        "last_rotated",
        "required",
    }
    if unknown:
        raise InventoryError(f"{here}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key in ("env", "probe", "account", "owner", "used_by", "rotate"):
        if not raw.get(key):
            raise InventoryError(f"{here}.{key} is missing")
    if not _ENV.match(str(raw["env"])):
        raise InventoryError(f"{here}.env {raw['env']!r} is not an environment variable name")
    if raw["probe"] not in PROBES:
        raise InventoryError(f"{here}.probe {raw['probe']!r} is not one of {', '.join(PROBES)}")
    account = str(raw["account"])
    if _PERSONAL.search(account):
        raise InventoryError(
            f"{here}.account {account!r} looks like a person; credentials belong to a service "
            "account, so they outlive people leaving"
        )
    used_by = raw["used_by"]
    used = (used_by,) if isinstance(used_by, str) else tuple(str(u) for u in used_by)
    every = raw.get("rotate_every_days")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise InventoryError(f"{here}.rotate_every_days is {every!r}, not a whole number ≥ 1")
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise InventoryError(f"{here}.required is {required!r}, not true or false")
    return Credential(
        name=str(name),
        env=str(raw["env"]),
        probe=str(raw["probe"]),
        account=account,
        owner=str(raw["owner"]),
        used_by=used,
        rotate=" ".join(str(raw["rotate"]).split()),
        rotate_every_days=every,
        expires=_date(raw.get("expires"), f"{here}.expires"),
        last_rotated=_date(raw.get("last_rotated"), f"{here}.last_rotated"),
        required=required,
    )


def load(path: Path | str | None = None) -> Inventory:
    """The declared credentials, or `InventoryError` naming what is wrong and where."""
    source = Path(path) if path else inventory_path()
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise InventoryError(f"cannot read {source}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise InventoryError(f"{source} is not valid YAML: {error}") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("credentials"), Mapping):
        raise InventoryError(f"{source} needs a `credentials:` mapping of name → settings")
    warn = raw.get("warn_days", DEFAULT_WARN_DAYS)
    if not isinstance(warn, int) or isinstance(warn, bool) or warn < 0:
        raise InventoryError(f"{source}: warn_days is {warn!r}, not a whole number ≥ 0")
    items = tuple(_parse(n, v, str(source)) for n, v in raw["credentials"].items())
    seen: dict[str, str] = {}
    for item in items:
        if item.env in seen:
            raise InventoryError(
                f"{source}: ${item.env} is declared twice ({seen[item.env]} and {item.name})"
            )
        seen[item.env] = item.name
    return Inventory(items, warn, source)


# -- What is recorded ------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """What the project database knows of one credential's rotations."""

    rotated_at: float | None = None
    expires_at: float | None = None
    first_seen_at: float | None = None


def _engine(database: str | sa.Engine | None) -> sa.Engine:
    """The project database: an engine, a URL, else the one of the instance in force."""
    if isinstance(database, sa.Engine):
        return database
    return store.engine(database or store.database_url())


def record_rotation(
    name: str,
    *,
    at: float,
    expires_at: float | None = None,
    note: str | None = None,
    database_url: str | sa.Engine | None = None,
) -> None:
    """Remember that `name` was rotated at `at` (and, if known, when the new one expires)."""
    with _engine(database_url).begin() as conn:
        conn.execute(
            rotations_table.insert().values(
                credential=name, kind="rotated", at=at, expires_at=expires_at, note=note
            )
        )


def history(
    names: Sequence[str], *, database_url: str | sa.Engine | None = None
) -> dict[str, History]:
    """The latest recorded rotation and the first sighting of each named credential."""
    table = rotations_table
    query = sa.select(table.c.credential, table.c.kind, table.c.at, table.c.expires_at).where(
        table.c.credential.in_(list(names))
    )
    found: dict[str, History] = {name: History() for name in names}
    with _engine(database_url).connect() as conn:
        for row in conn.execute(query.order_by(table.c.at, table.c.id)):
            known = found[row.credential]
            if row.kind == "rotated":
                found[row.credential] = History(row.at, row.expires_at, known.first_seen_at)
            elif known.first_seen_at is None:
                found[row.credential] = History(known.rotated_at, known.expires_at, row.at)
    return found


def mark_seen(
    names: Sequence[str], *, at: float, database_url: str | sa.Engine | None = None
) -> None:
    """The first time a credential is seen set, its rotation clock starts (if nothing says when
    it was last rotated)."""
    if not names:
        return
    with _engine(database_url).begin() as conn:
        for name in names:
            conn.execute(rotations_table.insert().values(credential=name, kind="seen", at=at))


# -- Probes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    sentence: str
    in_use: bool = True
    #: When the credential stops working, if the probe can tell (a certificate's notAfter).
    expires_at: float | None = None


Probe = Callable[[Credential, str], ProbeResult]


def _postgres_urls(value: str) -> list[tuple[str, str]]:
    """The PostgreSQL server a credential logs in to, with the settings that name it: a URL
    credential names its own; a password is the instance storage's (dagster.yaml)."""
    from automation_pipelines.instance import instance_config_path, storage_of

    if value.startswith("postgres"):
        return [(value, "the credential's URL")]
    storage = storage_of(instance_config_path())
    if not storage.postgres_url:
        return []
    return [(storage.postgres_url, ", ".join(storage.settings) or "dagster.yaml")]


def probe_postgres(_credential: Credential, value: str) -> ProbeResult:
    """Log in and run SELECT 1."""
    urls = _postgres_urls(value)
    if not urls:
        return ProbeResult(True, "not in use: the instance is on SQLite", in_use=False)
    for url, named in urls:
        where = sa.engine.make_url(url).render_as_string(hide_password=True)
        probe = sa.create_engine(
            url,
            poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": int(PROBE_TIMEOUT_SECONDS)},
        )
        try:
            with probe.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.DBAPIError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
            return ProbeResult(False, f"cannot log in to {where} (settings: {named}): {reason}")
        except sa.exc.ArgumentError as error:
            return ProbeResult(False, f"is not a database URL SQLAlchemy understands: {error}")
        finally:
            probe.dispose()
    servers = ", ".join(sa.engine.make_url(u).render_as_string(hide_password=True) for u, _ in urls)
    return ProbeResult(True, f"logged in to {servers}")


#: Class attributes of apprise plugins that name a product page, not where it sends.
_NOT_ENDPOINTS = {"setup_url", "service_url"}
_ENDPOINT_ORDER = ("notify_url", "webhook_url", "api_url", "cloud_notify_url")


def _fixed_endpoint(plugin: Any) -> str | None:
    """The server a hosted service's plugin sends to (Slack, Discord, ntfy.sh …), if any; a
    self-hosted one (`mode: private`) sends to the URL's own host."""
    if getattr(plugin, "mode", None) == "private":
        return None
    found = {
        name: value
        for name in dir(type(plugin))
        if name.endswith("_url")
        and name not in _NOT_ENDPOINTS
        and isinstance(value := getattr(type(plugin), name, None), str)
        and value.startswith(("http://", "https://"))
    }
    for name in (*_ENDPOINT_ORDER, *sorted(found)):
        if name in found:
            return found[name]
    return None


def _endpoint(url: str) -> tuple[str, int, str]:
    """Host and port an apprise URL sends to, and how to greet it (an SMTP mode, else "tcp"),
    or ValueError saying why not."""
    import apprise

    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        raise ValueError("apprise does not understand this URL")
    mode = getattr(plugin, "secure_mode", None) if hasattr(plugin, "smtp_host") else None
    if mode is not None:
        host = plugin.smtp_host or plugin.host
        port = plugin.port or {"ssl": 465, "starttls": 587}.get(str(mode).lower(), 25)
        return str(host), int(port), str(mode).lower()
    fixed = _fixed_endpoint(plugin)
    if fixed:
        parts = urlsplit(fixed)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    else:
        host = plugin.host
        port = plugin.port or (443 if getattr(plugin, "secure", False) else 80)
    if not host:
        raise ValueError("no server to reach is known for this kind of URL")
    return str(host), int(port), "tcp"


def _reach(host: str, port: int, how: str) -> None:
    """Connect (and greet an SMTP server); raises OSError or SMTPException when unreachable."""
    if how in ("ssl", "starttls", "insecure"):
        client = smtplib.SMTP_SSL if how == "ssl" else smtplib.SMTP
        with client(host, port, timeout=PROBE_TIMEOUT_SECONDS) as smtp:
            code, reply = smtp.noop()
            if code != 250:
                raise OSError(f"SMTP NOOP answered {code} {reply.decode(errors='replace')}")
        return
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS):
        pass


def probe_alert_urls(_credential: Credential, value: str) -> ProbeResult:
    """Every URL understood by apprise and its server reachable (nothing is sent)."""
    urls = [u for u in re.split(r"[\s,]+", value) if u]
    if not urls:
        return ProbeResult(False, "holds no URL")
    for number, url in enumerate(urls, 1):
        # The URL itself carries the token: a channel is named by its number and kind only.
        label = f"URL {number} of {len(urls)} ({url.split('://', 1)[0][:20]}://…)"
        try:
            host, port, how = _endpoint(url)
        except ValueError as error:
            return ProbeResult(False, f"{label}: {error}")
        try:
            _reach(host, port, how)
        except (OSError, smtplib.SMTPException) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            return ProbeResult(False, f"{label}: {host}:{port} cannot be reached ({reason})")
    return ProbeResult(True, f"{len(urls)} channel(s) reachable")


def secret_bytes(value: str) -> int:
    """How much key material a webhook secret holds: a Standard Webhooks `whsec_` secret is
    base64, anything else counts by its characters."""
    if value.startswith("whsec_"):
        try:
            return len(base64.b64decode(value[len("whsec_") :], validate=True))
        except (binascii.Error, ValueError):
            return 0
    return len(value.encode())


def probe_webhook_secret(credential: Credential, value: str) -> ProbeResult:
    size = secret_bytes(value)
    if size < MIN_WEBHOOK_SECRET_BYTES:
        what = "a whsec_ secret that is not base64" if size == 0 else f"{size} byte(s)"
        return ProbeResult(
            False,
            f"is too short to be safe ({what}; at least {MIN_WEBHOOK_SECRET_BYTES} bytes of "
            "random key material)",
        )
    return ProbeResult(True, f"set ({size} bytes of key material)")


def _readable_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{value} is not a file")
    try:
        path.read_bytes()
    except OSError as error:
        raise ValueError(f"{value} cannot be read ({error.strerror})") from None
    return path


def probe_tls_certificate(_credential: Credential, value: str) -> ProbeResult:
    """The certificate file parses and names its own expiry (which then counts as the
    credential's): a renewal that did not happen is warned about like a rotation."""
    import subprocess

    try:
        path = _readable_file(value)
    except ValueError as error:
        return ProbeResult(False, str(error))
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-subject", "-in", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    ends = re.search(r"notAfter=(.+)", done.stdout)
    if done.returncode != 0 or not ends:
        return ProbeResult(False, f"{value} is not a PEM certificate openssl can read")
    expires = dt.datetime.strptime(ends.group(1).strip(), "%b %d %H:%M:%S %Y %Z")
    at = expires.replace(tzinfo=dt.UTC).timestamp()
    subject = re.search(r"subject=(.+)", done.stdout)
    named = f" for {subject.group(1).strip()}" if subject else ""
    return ProbeResult(True, f"certificate{named}, valid until {_day(at)}", expires_at=at)


#: Password hashes nginx's basic auth accepts that are worth keeping (no {PLAIN}, no DES crypt).
_HASHED = re.compile(r"^(\$apr1\$|\$2[aby]\$|\$5\$|\$6\$|\{SSHA\}|\{SHA\})")


def probe_secret_file(_credential: Credential, value: str) -> ProbeResult:
    """A key or users file: present, readable, not readable by every local user; a users file
    (`name:hash` lines) holds at least one user and only hashed passwords."""
    try:
        path = _readable_file(value)
    except ValueError as error:
        return ProbeResult(False, str(error))
    if path.stat().st_mode & 0o004:
        return ProbeResult(False, f"{value} is readable by every user of the machine (chmod o-r)")
    text = path.read_text(errors="replace")
    if "PRIVATE KEY-----" in text:
        return ProbeResult(True, f"{value}: a private key, readable by its owner only")
    users = [line.split(":", 1) for line in text.splitlines() if line.strip() and ":" in line]
    if not users:
        return ProbeResult(False, f"{value} holds neither a private key nor any `name:hash` line")
    clear = [name for name, hashed in users if not _HASHED.match(hashed.strip())]
    if clear:
        return ProbeResult(
            False,
            f"{value}: the password of {', '.join(clear)} is not hashed with apr1, bcrypt, "
            "SHA-256/512 crypt or SHA (openssl passwd -6)",
        )
    return ProbeResult(True, f"{value}: {len(users)} user(s), passwords hashed")


def probe_present(_credential: Credential, value: str) -> ProbeResult:
    return ProbeResult(True, "set")


PROBE_FUNCTIONS: dict[str, Probe] = {
    "postgres": probe_postgres,
    "alert_urls": probe_alert_urls,
    "webhook_secret": probe_webhook_secret,
    "tls_certificate": probe_tls_certificate,
    "secret_file": probe_secret_file,
    "present": probe_present,
}


def register_probe(kind: str, probe: Probe) -> None:
    """An automation's own probe kind (the backups' `restic_repository`), registered when its
    package is imported, so this layer never imports an automation."""
    if kind not in PROBES:
        raise ValueError(f"probe kind {kind!r} is not one of {', '.join(PROBES)}")
    PROBE_FUNCTIONS[kind] = probe


# -- The check -------------------------------------------------------------------------------

DAY = 86400.0


@dataclass(frozen=True)
class Status:
    """One credential's state now. `kind`: ok; broken (missing, or its probe failed); due (a
    rotation or expiry within `warn_days`); overdue (rotation overdue, or expired). Only ok
    passes; due is a warning."""

    credential: Credential
    kind: str
    sentence: str
    rotated_at: float | None = None
    rotated_from: str = "unknown"
    rotation_due_at: float | None = None
    expires_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.kind == "ok"

    @property
    def severity(self) -> str:
        return {"ok": "ok", "due": "warn"}.get(self.kind, "error")


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def _midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()


def _days_left(at: float, now: float) -> int:
    """Whole calendar days (UTC) from now's date to the date of `at`."""
    day = dt.datetime.fromtimestamp(at, dt.UTC).date()
    return (day - dt.datetime.fromtimestamp(now, dt.UTC).date()).days


def evaluate(
    credential: Credential,
    *,
    value: str | None,
    known: History,
    now: float,
    warn_days: int,
    probe: Probe | None = None,
) -> Status:
    """Probe the credential and compare its dates with now; one sentence says what is wrong."""
    rotated_at, rotated_from = known.rotated_at, "recorded"
    if rotated_at is None and credential.last_rotated is not None:
        rotated_at, rotated_from = _midnight(credential.last_rotated), "declared"
    if rotated_at is None and known.first_seen_at is not None:
        rotated_at, rotated_from = known.first_seen_at, "first seen"
    if rotated_at is None:
        rotated_from = "unknown"
    due = (
        rotated_at + credential.rotate_every_days * DAY
        if rotated_at is not None and credential.rotate_every_days
        else None
    )
    expires = known.expires_at if known.rotated_at is not None else None
    if expires is None and credential.expires is not None:
        expires = _midnight(credential.expires)
    facts = {
        "variable": credential.env,
        "account": credential.account,
        "owner": credential.owner,
        "used_by": ", ".join(credential.used_by),
        "rotate": credential.rotate,
        "last_rotated": f"{_day(rotated_at)} ({rotated_from})" if rotated_at else "unknown",
        "rotation_due": _day(due)
        if due
        else f"every {credential.rotate_every_days} days, from the first check"
        if credential.rotate_every_days
        else "no cadence declared",
        "expires": _day(expires) if expires else "not known",
    }

    def status(kind: str, sentence: str, **extra: Any) -> Status:
        return Status(
            credential,
            kind,
            sentence,
            rotated_at,
            rotated_from,
            due,
            expires,
            {**facts, **extra},
        )

    label = f"{credential.name} (${credential.env})"
    if not value:
        if not credential.required:
            return status("ok", f"{label} is not set, so nothing uses it", probe="not set")
        return status(
            "broken",
            f"{label} is not set; {', '.join(credential.used_by)} cannot work",
            probe="not set",
        )
    probe = probe or PROBE_FUNCTIONS.get(credential.probe)
    if probe is None:
        return status(
            "broken",
            f"{label} cannot be probed: nothing registered the probe {credential.probe!r} "
            "(its automation's package is not loaded)",
        )
    result = probe(credential, value)
    if not result.ok:
        return status("broken", f"{label} does not work: {result.sentence}", probe=result.sentence)
    if result.expires_at is not None:
        expires = min(expires, result.expires_at) if expires else result.expires_at
        facts["expires"] = _day(expires)
    if expires is not None and expires <= now:
        return status("overdue", f"{label} expired on {_day(expires)}", probe=result.sentence)
    if due is not None and due <= now:
        return status(
            "overdue",
            f"{label} is overdue for rotation since {_day(due)} (every "
            f"{credential.rotate_every_days} days). Rotate: {credential.rotate}",
            probe=result.sentence,
        )
    soon = [
        (at, what)
        for at, what in ((expires, "expires"), (due, "is due for rotation"))
        if at is not None and _days_left(at, now) < warn_days
    ]
    if soon:
        at, what = min(soon)
        days = _days_left(at, now)
        return status(
            "due",
            f"{label} {what} in {days} day(s), on {_day(at)}. Rotate: {credential.rotate}",
            probe=result.sentence,
        )
    return status("ok", f"{label}: {result.sentence}", probe=result.sentence)


def check_all(
    inventory: Inventory,
    *,
    now: float,
    environ: Mapping[str, str] | None = None,
    database_url: str | sa.Engine | None = None,
) -> list[Status]:
    """Every declared credential evaluated now; the first sighting of each set one is kept."""
    env = os.environ if environ is None else environ
    names = [c.name for c in inventory.credentials]
    known = history(names, database_url=database_url)
    unseen = [
        c.name
        for c in inventory.credentials
        if env.get(c.env) and known[c.name].first_seen_at is None
    ]
    mark_seen(unseen, at=now, database_url=database_url)
    for name in unseen:
        found = known[name]
        known[name] = History(found.rotated_at, found.expires_at, now)
    return [
        evaluate(
            c, value=env.get(c.env), known=known[c.name], now=now, warn_days=inventory.warn_days
        )
        for c in inventory.credentials
    ]


def secret_variables_in_use(project_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Variable → where the project reads it as a secret: the alert routes, the webhook sources'
    secrets, the PostgreSQL password; every one of them must be declared."""
    from automation_pipelines.reliability.routes import Routes

    used: dict[str, str] = {}
    routes = Routes.load()
    for name in routes.default:
        used.setdefault(name, "alert_routes.yaml (default route)")
    for owner, names in routes.owners.items():
        for name in names:
            used.setdefault(name, f"alert_routes.yaml ({owner})")
    sources_file = project_root / "webhook_sources.yaml"
    if sources_file.is_file():
        raw = yaml.safe_load(sources_file.read_text(encoding="utf-8")) or {}
        for source, settings in (raw.get("sources") or {}).items():
            if isinstance(settings, Mapping) and settings.get("secret_env"):
                used.setdefault(str(settings["secret_env"]), f"webhook_sources.yaml ({source})")
    used.setdefault("DAGSTER_PG_PASSWORD", "dagster.yaml on PostgreSQL (instance storage)")
    used.setdefault("BACKUP_RESTIC_PASSWORD", "backups (the restic repository's password)")
    # The public edge's TLS certificate, its key and the UI's users (automation_pipelines/proxy.py).
    used.setdefault("PROXY_TLS_CERT", "the proxy (TLS certificate)")
    used.setdefault("PROXY_TLS_KEY", "the proxy (TLS private key)")
    used.setdefault("PROXY_HTPASSWD", "the proxy (the UI's users)")
    return used


def undeclared(inventory: Inventory, project_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Secret variables the project reads that credentials.yaml does not declare."""
    return {
        name: where
        for name, where in secret_variables_in_use(project_root).items()
        if name not in inventory.variables
    }
