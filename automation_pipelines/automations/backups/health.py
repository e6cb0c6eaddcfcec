"""The daily health check: is there a recent, intact, restorable snapshot at a destination that
can take the next one? Each problem becomes one precise sentence and one finding for the owner.

It reads the destination itself and, when the destination cannot be read, falls back on what
Dagster recorded of the last good snapshot, so "the backups stopped" is reported even when the
place they went has vanished.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automation_pipelines.automations.backups import snapshots as s
from automation_pipelines.reliability.conditions import Finding

#: Finding kinds; each clears (with a recovery notice) when a later check no longer sees it.
DESTINATION, TOO_OLD, DAMAGED, RESTORE = (
    "backup_destination",
    "backup_too_old",
    "backup_damaged",
    "backup_restore_failed",
)
KINDS = (DESTINATION, TOO_OLD, DAMAGED, RESTORE)
#: Asset check names, as the UI shows them on the backup asset.
CHECK_DESTINATION, CHECK_RECENT, CHECK_INTACT, CHECK_RESTORE = (
    "destination_ready",
    "snapshot_recent",
    "snapshots_intact",
    "test_restore",
)


@dataclass(frozen=True)
class LastGood:
    """The newest snapshot Dagster recorded as made and verified (from its materialization)."""

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


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.0f} h" if seconds >= 36_000 else f"{seconds / 3600:.1f} h"


def _destination_problem(
    destination: Path, min_free_percent: float, last_archive: int
) -> tuple[str, Any]:
    """(why the destination cannot take the next snapshot or "", its `shutil.disk_usage` if it
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
    needed = 2 * last_archive
    if free_percent < min_free_percent or usage.free < needed:
        why = (
            f"below {min_free_percent:g}%"
            if free_percent < min_free_percent
            else f"less than twice the last snapshot ({last_archive / 1e9:.2f} GB)"
        )
        return (
            f"destination {destination} is almost full: {usage.free / 1e9:.2f} GB free "
            f"({free_percent:.1f}%), {why}"
        ), usage
    return "", usage


def inspect(
    destination: Path,
    *,
    max_age_hours: float,
    min_free_percent: float,
    sample_files: int,
    owner: str,
    automation: str,
    last_good: LastGood | None,
    last_failure: str | None,
    now: float | None = None,
    rng: random.Random | None = None,
) -> HealthReport:
    """Check the destination and its snapshots; `last_failure` is why the latest backup run
    failed (None if it succeeded), so an old snapshot is explained, not only reported."""
    now = time.time() if now is None else now
    subject = f"backups:{destination}"
    findings: list[Finding] = []
    checks: dict[str, CheckOutcome] = {}

    def problem(kind: str, check: str, sentence: str, **metadata) -> None:
        findings.append(Finding(subject, kind, owner, automation, sentence))
        checks[check] = CheckOutcome(False, sentence, metadata)

    readable = destination.is_dir() and os.access(destination, os.R_OK | os.X_OK)
    found = s.list_snapshots(destination) if readable else []
    verified = [snap for snap in found if snap.verified]
    newest = verified[0] if verified else None
    last_archive = newest.archive.stat().st_size if newest and newest.archive.exists() else 0

    trouble, usage = _destination_problem(destination, min_free_percent, last_archive)
    if trouble:
        problem(DESTINATION, CHECK_DESTINATION, trouble)
    else:
        checks[CHECK_DESTINATION] = CheckOutcome(
            True,
            f"destination {destination} is writable with {usage.free / 1e9:.2f} GB free",
            {
                "free_gb": round(usage.free / 1e9, 2),
                "free_percent": round(100.0 * usage.free / usage.total, 1),
            },
        )

    # Recent: the destination's newest verified snapshot, else what Dagster last recorded.
    if newest is not None:
        newest_id, created = newest.id, newest.created.timestamp()
        seen_where = ""
    elif last_good is not None:
        newest_id, created = last_good.snapshot, last_good.created
        seen_where = (
            " (as last recorded; the destination shows none)"
            if readable
            else " (as last recorded; the destination cannot be read)"
        )
    else:
        newest_id, created, seen_where = None, None, ""
    limit = max_age_hours * 3600
    because = f"; last backup run failed: {last_failure}" if last_failure else ""
    if created is None:
        problem(TOO_OLD, CHECK_RECENT, f"no snapshot has been made yet at {destination}{because}")
    elif now - created > limit:
        problem(
            TOO_OLD,
            CHECK_RECENT,
            f"latest snapshot is {_hours(now - created)} old, expected ≤ {max_age_hours:g} h"
            f"{because} (snapshot {newest_id}{seen_where})",
            age_hours=round((now - created) / 3600, 1),
        )
    else:
        checks[CHECK_RECENT] = CheckOutcome(
            True,
            f"latest snapshot {newest_id} is {_hours(now - created)} old (≤ {max_age_hours:g} h)",
            {"age_hours": round((now - created) / 3600, 2)},
        )

    # Intact: every file of the newest snapshot read back; the older ones by archive hash.
    damaged = []
    newest_sound = False
    for index, snapshot in enumerate(found):
        depth = s.EVERY_FILE if index == 0 else s.ARCHIVE_HASH
        problems = s.verify(snapshot.path, depth=depth)
        newest_sound = newest_sound or (index == 0 and not problems)
        damaged.extend(problems)
        if not snapshot.verified:
            damaged.append(f"snapshot {snapshot.id} was never verified ({s.VERIFIED} is missing)")
    if damaged:
        more = f" (+{len(damaged) - 3} more)" if len(damaged) > 3 else ""
        problem(DAMAGED, CHECK_INTACT, "; ".join(damaged[:3]) + more, problems=len(damaged))
    elif found:
        checks[CHECK_INTACT] = CheckOutcome(
            True, f"{len(found)} snapshot(s) match their manifests", {"snapshots": len(found)}
        )
    else:
        checks[CHECK_INTACT] = CheckOutcome(False, "no snapshot to check", {"snapshots": 0})

    # Restore: a sample of the newest snapshot's files into a temp folder, hash-compared.
    if found:
        failed = s.sample_restore(found[0].path, sample_files, rng, verified=newest_sound)
        if failed:
            problem(RESTORE, CHECK_RESTORE, "; ".join(failed[:3]), files=sample_files)
        else:
            checks[CHECK_RESTORE] = CheckOutcome(
                True,
                f"restored up to {sample_files} file(s) of {found[0].id}; every hash matched",
                {"files": sample_files},
            )
    else:
        checks[CHECK_RESTORE] = CheckOutcome(False, "no snapshot to restore from")
    return HealthReport(checks=checks, findings=findings)
