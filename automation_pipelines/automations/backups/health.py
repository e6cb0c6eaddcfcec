"""The daily health check: is there a recent, intact, restorable snapshot of every source in a
repository that can take the next one? Each problem becomes one precise sentence and one finding
for the owner.

It reads the repository itself and, when the destination cannot be read, falls back on what
Dagster recorded of the last good backup, so "the backups stopped" is reported even when the
place they went has vanished. `restic check` reads a different slice of the packs each day
(`--read-data-subset=n/7`), so every pack is read within a week without reading it all daily.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automation_pipelines.automations.backups import engine
from automation_pipelines.automations.backups.restic import (
    Lock,
    Repository,
    RepositoryMissing,
    ResticError,
    SpaceUnknown,
)
from automation_pipelines.automations.backups.sources import BackupError
from automation_pipelines.reliability.conditions import Finding

#: Finding kinds; each clears (with a recovery notice) when a later check no longer sees it.
DESTINATION, TOO_OLD, DAMAGED, RESTORE, REPOSITORY, LOCKED = (
    "backup_destination",
    "backup_too_old",
    "backup_damaged",
    "backup_restore_failed",
    "backup_repository",
    "backup_stale_lock",
)
KINDS = (DESTINATION, TOO_OLD, DAMAGED, RESTORE, REPOSITORY, LOCKED)
#: Asset check names, as the UI shows them on the backup asset.
CHECK_DESTINATION, CHECK_RECENT, CHECK_INTACT, CHECK_RESTORE, CHECK_UNLOCKED = (
    "destination_ready",
    "snapshot_recent",
    "snapshots_intact",
    "test_restore",
    "repository_unlocked",
)


@dataclass(frozen=True)
class LastGood:
    """The newest backup run Dagster recorded as made and verified (from its materialization)."""

    snapshot: str
    created: float


@dataclass
class CheckOutcome:
    passed: bool
    sentence: str
    metadata: dict = field(default_factory=dict)


@dataclass
class HealthReport:
    """What the health check found: one outcome per asset check, one finding per problem."""

    checks: dict[str, CheckOutcome]
    findings: list[Finding]


@dataclass(frozen=True)
class Limits:
    """What healthy means, from backups.yaml."""

    max_age_hours: float = 26.0
    min_free_percent: float = 10.0
    sample_files: int = 20
    check_days: int = 7
    stale_lock_hours: float = 6.0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.0f} h" if seconds >= 36_000 else f"{seconds / 3600:.1f} h"


def data_subset(now: float, days: int) -> str:
    """Today's slice of the packs for `restic check`: n/days, n turning with the date, so each
    pack is read once every `days` days (with 7, the weekday picks the slice)."""
    day = datetime.fromtimestamp(now, tz=UTC).date().toordinal()
    return f"{day % days + 1}/{days}"


def _destination_problem(destination: Path, min_free_percent: float) -> tuple[str, Any]:
    """(why the destination cannot take the next backup or "", its `shutil.disk_usage` if it
    could be read, else None)."""
    if not destination.exists():
        return f"destination {destination} does not exist", None
    if not destination.is_dir():
        return f"destination {destination} is not a folder", None
    probe = destination / f".health-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"probe")
    except OSError as exc:
        return f"destination {destination} is not writable: {exc.strerror or exc}", None
    finally:
        probe.unlink(missing_ok=True)
    usage = shutil.disk_usage(destination)
    free_percent = 100.0 * usage.free / usage.total if usage.total else 0.0
    if free_percent < min_free_percent:
        return (
            f"destination {destination} is almost full: {usage.free / 1e9:.2f} GB free "
            f"({free_percent:.1f}%), below {min_free_percent:g}%"
        ), usage
    return "", usage


def _remote_destination(repo: Repository, exists: bool, min_free_percent: float) -> CheckOutcome:
    """A remote repository that answers: its free space as the server reports it (an `sftp:`
    one, through statvfs@openssh.com), held to the same rule as a folder. Where it cannot be
    measured the outcome passes and its sentence says so: not knowing is no failure."""
    where = repo.location
    if not exists:
        return CheckOutcome(
            True,
            f"destination {where} answers; it holds no repository yet, so its free space is "
            "measured after the first backup",
            {"free_space": "not measured"},
        )
    try:
        space = repo.free_space(timeout=120)
    except SpaceUnknown as exc:
        return CheckOutcome(
            True,
            f"repository {where} answers; its free space is not measured: {exc}",
            {"free_space": "not measured"},
        )
    free_gb, percent = space.free / 1e9, space.free_percent
    metadata = {"free_gb": round(free_gb, 2), "free_percent": round(percent, 1)}
    if percent < min_free_percent:
        return CheckOutcome(
            False,
            f"destination {where} is almost full: {free_gb:.2f} GB free ({percent:.1f}%), "
            f"below {min_free_percent:g}%",
            metadata,
        )
    return CheckOutcome(
        True, f"repository {where} answers with {free_gb:.2f} GB free ({percent:.1f}%)", metadata
    )


def _lock_sentence(repo: Repository, lock: Lock, now: float, limit_hours: float) -> str | None:
    age = now - lock.time.timestamp()
    if engine.lock_holder_gone(lock):
        why = "its process no longer runs"
    elif age > limit_hours * 3600:
        why = f"it is older than {limit_hours:g} h (restic refreshes a live lock every 5 min)"
    else:
        return None
    kind = "an exclusive" if lock.exclusive else "a"
    return (
        f"repository {repo.location} holds {kind} lock {lock.id[:8]} of {lock.username}@"
        f"{lock.hostname} pid {lock.pid} since {lock.time:%Y-%m-%d %H:%M} UTC "
        f"({_hours(age)}): {why}; it is not removed automatically"
    )


def inspect(
    *,
    destination: str,
    local: Path | None,
    open_repository: Callable[[], Repository],
    expected: list[str],
    folders: dict[str, Path],
    limits: Limits,
    owner: str,
    automation: str,
    last_good: LastGood | None,
    last_failure: str | None,
    now: float | None = None,
    rng: random.Random | None = None,
) -> HealthReport:
    """Check the destination and its repository; `last_failure` is why the latest backup run
    failed (None if it succeeded), so an old snapshot is explained, not only reported."""
    now = time.time() if now is None else now
    subject = f"backups:{destination}"
    findings: list[Finding] = []
    checks: dict[str, CheckOutcome] = {}

    def problem(kind: str, check: str, sentence: str, **metadata) -> None:
        findings.append(Finding(subject, kind, owner, automation, sentence))
        checks[check] = CheckOutcome(False, sentence, metadata)

    # Ready: a local folder that exists, takes a write and has room; a remote one that answers
    # and, where its server says how much, has room.
    readable = True
    if local is not None:
        trouble, usage = _destination_problem(local, limits.min_free_percent)
        readable = local.is_dir() and os.access(local, os.R_OK | os.X_OK)
        if trouble:
            problem(DESTINATION, CHECK_DESTINATION, trouble)
        else:
            checks[CHECK_DESTINATION] = CheckOutcome(
                True,
                f"destination {local} is writable with {usage.free / 1e9:.2f} GB free",
                {
                    "free_gb": round(usage.free / 1e9, 2),
                    "free_percent": round(100.0 * usage.free / usage.total, 1),
                },
            )

    # Open the repository; every later check needs it.
    repo: Repository | None = None
    cannot_open = ""
    exists = False
    snapshots = []
    if readable:
        try:
            repo = open_repository()
            exists = repo.exists()
            snapshots = repo.snapshots() if exists else []
        except RepositoryMissing:
            exists = False
        except BackupError as exc:
            cannot_open = str(exc)
    if local is None and CHECK_DESTINATION not in checks:
        if cannot_open and not isinstance(repo, Repository):
            checks[CHECK_DESTINATION] = CheckOutcome(True, f"destination {destination} is set")
        elif cannot_open:
            problem(DESTINATION, CHECK_DESTINATION, cannot_open)
        elif repo is None:
            checks[CHECK_DESTINATION] = CheckOutcome(True, f"destination {destination} is set")
        else:
            outcome = _remote_destination(repo, exists, limits.min_free_percent)
            if outcome.passed:
                checks[CHECK_DESTINATION] = outcome
            else:
                problem(DESTINATION, CHECK_DESTINATION, outcome.sentence, **outcome.metadata)

    # Recent: the newest snapshot of each source, else what Dagster last recorded.
    newest = engine.newest_per_source(snapshots)
    limit = limits.max_age_hours * 3600
    because = f"; last backup run failed: {last_failure}" if last_failure else ""
    present = {name: newest[name] for name in expected if name in newest}
    if present:
        ages = {name: now - snap.time.timestamp() for name, snap in present.items()}
        never = [name for name in expected if name not in newest]
        stale = sorted(name for name, age in ages.items() if age > limit)
        oldest = max(ages, key=ages.get)
        run = present[oldest].tag(engine.RUN) or present[oldest].short_id
        if never:
            problem(
                TOO_OLD,
                CHECK_RECENT,
                f"source {never[0]!r} has no snapshot yet at {destination}{because}",
            )
        elif stale and len(stale) == len(expected):
            problem(
                TOO_OLD,
                CHECK_RECENT,
                f"latest snapshot is {_hours(ages[oldest])} old, expected ≤ "
                f"{limits.max_age_hours:g} h{because} (run {run})",
                age_hours=round(ages[oldest] / 3600, 1),
            )
        elif stale:
            problem(
                TOO_OLD,
                CHECK_RECENT,
                f"latest snapshot of {', '.join(repr(n) for n in stale)} is "
                f"{_hours(ages[oldest])} old, expected ≤ {limits.max_age_hours:g} h{because}",
                age_hours=round(ages[oldest] / 3600, 1),
            )
        else:
            checks[CHECK_RECENT] = CheckOutcome(
                True,
                f"latest snapshot of every source is at most {_hours(ages[oldest])} old "
                f"(≤ {limits.max_age_hours:g} h; run {run})",
                {"age_hours": round(ages[oldest] / 3600, 2)},
            )
    elif last_good is not None:
        where = (
            "the destination cannot be read"
            if not readable
            else "the repository cannot be opened"
            if cannot_open
            else "the repository shows none"
        )
        age = now - last_good.created
        if age > limit:
            problem(
                TOO_OLD,
                CHECK_RECENT,
                f"latest snapshot is {_hours(age)} old, expected ≤ {limits.max_age_hours:g} h"
                f"{because} (snapshot {last_good.snapshot} (as last recorded; {where}))",
                age_hours=round(age / 3600, 1),
            )
        else:
            problem(
                TOO_OLD,
                CHECK_RECENT,
                f"no snapshot can be found at {destination} although run {last_good.snapshot} "
                f"made one {_hours(age)} ago: {where}",
            )
    else:
        problem(TOO_OLD, CHECK_RECENT, f"no snapshot has been made yet at {destination}{because}")

    # Unlocked: read before restic check takes its own lock.
    stale_locks: list[str] = []
    if repo is not None and exists:
        try:
            stale_locks = [
                sentence
                for lock in repo.locks()
                if (sentence := _lock_sentence(repo, lock, now, limits.stale_lock_hours))
            ]
        except ResticError as exc:
            stale_locks = [f"the locks of repository {repo.location} cannot be read: {exc}"]
    if stale_locks:
        more = f" (+{len(stale_locks) - 1} more)" if len(stale_locks) > 1 else ""
        problem(LOCKED, CHECK_UNLOCKED, stale_locks[0] + more, locks=len(stale_locks))
    elif repo is not None and exists:
        checks[CHECK_UNLOCKED] = CheckOutcome(True, "no stale lock in the repository")
    else:
        checks[CHECK_UNLOCKED] = CheckOutcome(False, "no repository to look at")

    # Intact: restic check, reading today's slice of the packs.
    subset = data_subset(now, limits.check_days)
    intact = False
    if cannot_open and readable:
        problem(REPOSITORY, CHECK_INTACT, cannot_open)
    elif repo is not None and exists:
        try:
            found = repo.check(subset)
        except ResticError as exc:
            found = [f"restic check could not run: {exc}"]
        if found:
            more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            problem(
                DAMAGED,
                CHECK_INTACT,
                f"repository {repo.location}: restic check (data {subset}) found: "
                + "; ".join(found[:3])
                + more,
                problems=len(found),
            )
        else:
            intact = True
            checks[CHECK_INTACT] = CheckOutcome(
                True,
                f"restic check is clean, data subset {subset} read; {len(snapshots)} snapshot(s)",
                {"snapshots": len(snapshots), "data_subset": subset},
            )
    elif repo is not None and last_good is not None:
        problem(
            REPOSITORY,
            CHECK_INTACT,
            f"repository {repo.location} does not exist, although backup run "
            f"{last_good.snapshot} was recorded there",
        )
    else:
        checks[CHECK_INTACT] = CheckOutcome(False, "no repository to check", {"snapshots": 0})

    # Restore: a sample of the newest snapshots' files, read back against their hashes.
    if repo is not None and newest:
        restored, failed = engine.sample_restore(repo, newest, limits.sample_files, folders, rng)
        if failed:
            problem(RESTORE, CHECK_RESTORE, "; ".join(failed[:3]), files=restored)
        else:
            checks[CHECK_RESTORE] = CheckOutcome(
                True,
                f"restored {restored} file(s) of the newest snapshots; restic verified each "
                "against its content hashes, and unchanged sources matched byte for byte",
                {"files": restored, "repository_intact": intact},
            )
    else:
        checks[CHECK_RESTORE] = CheckOutcome(False, "no snapshot to restore from")
    return HealthReport(checks=checks, findings=findings)
