"""No drift: the environment the code runs on is the one `requirements.lock` describes.

`make install` installs the lock (every transitive package, pinned with its hashes) and then the
project itself, so the running Python and every installed distribution should match it exactly. A
package upgraded or added by hand, or a venv left over from an older lock, runs code nobody
tested: the daily `matches_lock` check on the asset `python_environment` names each such package
and alerts the monitoring owner. `lock_problems` holds the lock itself to `pyproject.toml` (CI, and
`make install` through `automation-pipelines drift`), so the lock cannot fall behind it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution
from pathlib import Path

import dagster as dg
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from automation_pipelines.monitoring.jobs import MONITORING
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.conditions import Finding, report_findings
from automation_pipelines.reliability.errors import LOCAL_IO, classify_errors

#: Another lock than the project's: the Kubernetes image sets its own (requirements-k8s.lock).
LOCK_ENV = "AUTOMATION_LOCK_FILE"
LOCK_FILE = Path(os.environ.get(LOCK_ENV) or PROJECT_ROOT / "requirements.lock")
PYPROJECT = PROJECT_ROOT / "pyproject.toml"
#: The extras `make install` installs, and so the lock covers (dev names bench itself too).
LOCKED_EXTRAS = ("dev", "bench")
#: What `python -m venv` puts in every venv (pip is pinned by the Makefile); not locked.
INSTALLER = frozenset({"pip", "setuptools", "wheel"})
DRIFT_KIND = "environment_drift"
ENVIRONMENT_KEY = dg.AssetKey("python_environment")

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;=]+)$")
_HASH = re.compile(r"^--hash=sha(256|384|512):[0-9a-f]{64,128}$")


class LockError(ValueError):
    """The lock or pyproject.toml cannot be read as they must be; the message names the line."""


@dataclass(frozen=True)
class Pin:
    """One package of the lock: the version pip will install, and the hashes it will accept."""

    name: str
    version: str
    hashes: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class Drift:
    """One way the environment differs from the lock, as the owner reads it."""

    name: str
    installed: str | None
    locked: str | None
    sentence: str


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """The lock's lines with comments dropped and `\\` continuations joined, with the number of
    the line each starts on."""
    start, parts = 0, []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(part.strip() for part in parts).strip()
        parts = []
        if joined:
            yield start, joined
    if parts and " ".join(parts).strip():
        yield start, " ".join(part.strip() for part in parts).strip()


def parse_lock(text: str, label: str = "requirements.lock") -> dict[str, Pin]:
    """The pins of a lock by normalized name. Anything pip would read other than `name==version`
    with hashes (an index, find-links, a path, a marker, a range) is refused, since the lock must
    install the same files from PyPI on every machine."""
    pins: dict[str, Pin] = {}
    for number, line in _logical_lines(text):
        requirement, *options = line.split()
        where = f"{label} line {number}"
        if requirement.startswith("-"):
            raise LockError(
                f"{where}: {requirement} has no place in the lock (it must install from PyPI "
                "alone, with no index, find-links or file of this machine): run `make lock`"
            )
        match = _PIN.match(requirement)
        if match is None:
            raise LockError(f"{where}: {line[:120]!r} is not `name==version` with hashes")
        name, version = match["name"], match["version"]
        bad = [option for option in options if not _HASH.match(option)]
        if bad:
            raise LockError(f"{where}: {name}=={version} carries {bad[0][:80]!r}, not a hash")
        if not options:
            raise LockError(
                f"{where}: {name}=={version} has no --hash, so pip would accept any file of "
                "that name: run `make lock`"
            )
        key = canonicalize_name(name)
        if key in pins:
            raise LockError(f"{where}: {name} is pinned twice (line {pins[key].line} too)")
        pins[key] = Pin(name, version, tuple(o.split("=", 1)[1] for o in options), number)
    if not pins:
        raise LockError(f"{label} pins no package")
    return pins


def read_lock(path: Path = LOCK_FILE) -> dict[str, Pin]:
    """`parse_lock` of the file at `path`; a missing lock is an error that says what to run."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockError(
            f"there is no lock at {path}: this environment was not installed from one "
            "(`make lock` writes it, `make install` installs it)"
        ) from None
    return parse_lock(text, path.name)


def read_project(path: Path = PYPROJECT) -> Mapping:
    """The `[project]` table of pyproject.toml."""
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project")
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise LockError(f"cannot read {path}: {error}") from error
    if not isinstance(project, dict) or not project.get("name"):
        raise LockError(f"{path} has no [project] table with a name")
    return project


def _requirement(text: str, label: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as error:
        raise LockError(f"{label}: {text!r} is not a requirement: {error}") from error


def project_requirements(
    project: Mapping, extras: Iterable[str] = LOCKED_EXTRAS
) -> list[Requirement]:
    """pyproject's dependencies and those of `extras`, following the project's references to
    its own extras (`automation_pipelines[bench]`) instead of listing the project itself."""
    own = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies") or {}
    pending, seen = list(extras), set()
    found = [_requirement(t, "pyproject.toml") for t in project.get("dependencies") or ()]
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise LockError(f"pyproject.toml has no extra {extra!r}")
        for text in optional[extra]:
            requirement = _requirement(text, f"pyproject.toml extra {extra!r}")
            if canonicalize_name(requirement.name) == own:
                pending += sorted(requirement.extras)
            else:
                found.append(requirement)
    return [r for r in found if r.marker is None or r.marker.evaluate({"extra": ""})]


def _same_version(installed: str, locked: str) -> bool:
    try:
        return Version(installed) == Version(locked)
    except InvalidVersion:
        return installed == locked


def python_drift(version: str, requires: str) -> Drift | None:
    """A drift when the running Python is outside pyproject's `requires-python` (the Python the
    lock was resolved for)."""
    try:
        allowed = SpecifierSet(requires)
    except InvalidSpecifier as error:
        raise LockError(f"pyproject.toml: requires-python {requires!r}: {error}") from error
    if allowed.contains(version, prereleases=True):
        return None
    sentence = f"Python {version} is running, pyproject.toml requires {requires}"
    return Drift("python", version, requires, sentence)


def package_drift(
    pins: Mapping[str, Pin], installed: Iterable[tuple[str, str]], project: str
) -> list[Drift]:
    """Each locked package missing or at another version, and each installed package the lock
    does not list (but the project itself and what `python -m venv` brings), by name."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name, version in installed:
        found.setdefault(canonicalize_name(name), []).append((name, version))
    own = canonicalize_name(project)
    drift = []
    for key in sorted(set(pins) | set(found)):
        pin, copies = pins.get(key), found.get(key, [])
        versions = sorted({version for _name, version in copies})
        shown = copies[0][0] if copies else pin.name if pin else key
        if key == own or (pin is None and key in INSTALLER):
            continue
        if pin is None:
            sentence = f"{shown} {' and '.join(versions)} is installed, the lock does not list it"
            drift.append(Drift(shown, versions[0], None, sentence))
        elif not copies:
            sentence = f"{pin.name} is not installed, the lock says {pin.version}"
            drift.append(Drift(pin.name, None, pin.version, sentence))
        elif len(versions) > 1:
            sentence = (
                f"{shown} is installed twice ({' and '.join(versions)}), the lock says "
                f"{pin.version}"
            )
            drift.append(Drift(shown, ", ".join(versions), pin.version, sentence))
        elif not _same_version(versions[0], pin.version):
            sentence = f"{shown} {versions[0]} is installed, the lock says {pin.version}"
            drift.append(Drift(shown, versions[0], pin.version, sentence))
    return drift


def distributions(site_packages: Sequence[str] | None = None) -> list[Distribution]:
    """The installed distributions that have a name, read from `site_packages` (default: this
    interpreter's `sys.path`)."""
    found = (
        importlib.metadata.distributions(path=list(site_packages))
        if site_packages
        else importlib.metadata.distributions()
    )
    return [d for d in found if d.metadata["Name"]]


def environment_drift(
    pins: Mapping[str, Pin],
    project: Mapping,
    installed: Iterable[Distribution],
    python: str | None = None,
) -> list[Drift]:
    """Everything in which the running Python and the `installed` distributions differ from
    the lock."""
    versions = [(d.metadata["Name"], d.version) for d in installed]
    drift = package_drift(pins, versions, project["name"])
    requires = project.get("requires-python") or ""
    wrong_python = python_drift(python or platform.python_version(), requires)
    return [wrong_python, *drift] if wrong_python else drift


def lock_problems(
    pins: Mapping[str, Pin],
    project: Mapping,
    installed: Iterable[Distribution],
    extras: Iterable[str] = LOCKED_EXTRAS,
) -> list[str]:
    """Where the lock disagrees with pyproject.toml: a requirement it lacks or pins outside the
    range asked for, a package it pins that nothing requires any more. The requirements of each
    locked package come from its installed metadata (`make install` installed the lock), so
    this needs no network."""
    dists: dict[str, Distribution] = {}
    for dist in installed:
        dists.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    problems: list[str] = []

    def problem(sentence: str) -> None:
        if sentence not in problems:
            problems.append(sentence)

    needed: set[str] = set()
    followed: set[tuple[str, str]] = set()
    queue = [(r, "pyproject.toml") for r in project_requirements(project, extras)]
    while queue:
        requirement, by = queue.pop(0)
        key = canonicalize_name(requirement.name)
        pin = pins.get(key)
        if pin is None:
            problem(f"{by} requires {requirement}, the lock does not list it: run `make lock`")
            continue
        if not requirement.specifier.contains(pin.version, prereleases=True):
            problem(f"{by} requires {requirement}, the lock has {pin.version}: run `make lock`")
        needed.add(key)
        for extra in ("", *sorted(canonicalize_name(e) for e in requirement.extras)):
            if (key, extra) in followed:
                continue
            followed.add((key, extra))
            dist = dists.get(key)
            if dist is None:
                problem(f"{pin.name} is not installed, so what it requires cannot be read")
                continue
            label = f"{pin.name}[{extra}]" if extra else pin.name
            for text in dist.requires or ():
                dependency = _requirement(text, f"{pin.name}'s metadata")
                marker = dependency.marker
                if marker is None and extra:
                    continue  # followed with the package itself
                if marker is None or marker.evaluate({"extra": extra}):
                    queue.append((dependency, label))
    for key, pin in sorted(pins.items()):
        if key not in needed:
            problem(
                f"{pin.name} {pin.version} is in the lock, but nothing pyproject.toml requires "
                "needs it: run `make lock`"
            )
    return problems


def report(lock_file: Path = LOCK_FILE, pyproject: Path = PYPROJECT) -> tuple[list[str], bool]:
    """What `automation-pipelines drift` prints, and whether all is as locked: this environment
    against the lock, then the lock against pyproject.toml."""
    pins, project, installed = read_lock(lock_file), read_project(pyproject), distributions()
    drift = environment_drift(pins, project, installed)
    problems = lock_problems(pins, project, installed)
    lines = [f"✗ {d.sentence}" for d in drift]
    if drift:
        lines.append("  `make clean install` rebuilds .venv exactly as locked")
    else:
        lines.append(
            f"✓ Python {platform.python_version()} and the {len(pins)} packages of "
            f"{lock_file.name} are installed as locked, and nothing else"
        )
    lines += [f"✗ {problem}" for problem in problems]
    if not problems:
        extras = " and ".join(LOCKED_EXTRAS)
        lines.append(
            f"✓ {lock_file.name} pins exactly what pyproject.toml requires (its dependencies "
            f"and the {extras} extras), each with hashes"
        )
    return lines, not drift and not problems


python_environment = dg.AssetSpec(
    ENVIRONMENT_KEY,
    group_name="monitoring",
    owners=[MONITORING.owner],
    description="The Python interpreter and the packages this code location runs on, as "
    "`make install` installed them from requirements.lock; its check `matches_lock` runs daily "
    "(python_environment_check_job).",
)


class DriftConfig(dg.Config):
    """Which lock and which installed distributions to compare; the defaults are the code
    location's own (requirements.lock beside the code, this interpreter's `sys.path`)."""

    lock_file: str = ""
    site_packages: list[str] = []


@dg.asset_check(
    asset=ENVIRONMENT_KEY,
    name="matches_lock",
    retry_policy=LOCAL_IO.policy,
    pool=MONITORING.pool,
    description="The running Python is the one pyproject.toml requires, and every installed "
    "package is at the version requirements.lock pins, with none missing or added; alerts the "
    "monitoring owner once per drifted package.",
)
@classify_errors(LOCAL_IO)
def check_python_environment(
    context: dg.AssetCheckExecutionContext, config: DriftConfig, alerts: AlertRouter
) -> dg.AssetCheckResult:
    lock_file = Path(config.lock_file) if config.lock_file else LOCK_FILE
    installed = distributions(config.site_packages or None)
    drift = environment_drift(read_lock(lock_file), read_project(), installed)
    findings = [
        Finding(
            f"python_environment:{d.name}",
            DRIFT_KIND,
            MONITORING.owner,
            MONITORING.name,
            d.sentence,
        )
        for d in drift
    ]
    outbox = alerts.outbox(context.instance)
    opened = report_findings(
        outbox,
        findings,
        {DRIFT_KIND},
        details=lambda _finding: [
            f"Lock: {lock_file}",
            "See every difference: automation-pipelines drift",
            "Rebuild it as locked: make clean install",
            f"Runbook: {MONITORING.runbook_ref}",
        ],
    )
    context.log.info(f"{len(drift)} drifted, {opened} new alert(s)")
    return dg.AssetCheckResult(
        passed=not drift,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(d.sentence for d in drift) or f"as locked in {lock_file.name}",
        metadata={
            "lock": dg.MetadataValue.path(str(lock_file)),
            "python": dg.MetadataValue.text(platform.python_version()),
            "drifted": dg.MetadataValue.json([d.sentence for d in drift]),
        },
    )


python_environment_check_job = MONITORING.asset_job(
    "python_environment_check_job",
    selection=dg.AssetSelection.checks_for_assets(ENVIRONMENT_KEY),
    description="Compares the running Python and every installed package with the lock; "
    "alerts the monitoring owner once per package that is missing, added or at another version.",
)

python_environment_daily_schedule = MONITORING.schedule(
    name="python_environment_daily_schedule",
    cron_schedule="45 6 * * *",
    job=python_environment_check_job,
    description="Checks the Python environment against the lock every day at 06:45 UTC, before "
    "the digest.",
)
