"""Conditions that hold until they clear (a stalled sensor, a stale asset, a backup too old):
one alert when a condition appears, a recovery notice when it is gone, nothing in between.

Whatever finds conditions (the watchdog, the freshness sensor, an automation's own health check)
reports the full list of what it sees now; `report_findings` opens incidents for new ones and
closes those of the same kinds that are no longer seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from automation_pipelines.reliability.alerts import Outbox


@dataclass(frozen=True)
class Finding:
    """One condition: what it is about, its kind, who is told, and the sentence they read."""

    subject: str
    kind: str
    owner: str
    automation: str | None
    sentence: str


def report_findings(
    outbox: Outbox,
    findings: Sequence[Finding],
    kinds: Iterable[str],
    held_subjects: Iterable[str] = (),
    details: Callable[[Finding], list[str]] | None = None,
) -> int:
    """Open an incident per new finding and close those of `kinds` that cleared (each with a
    recovery notice); incidents of `held_subjects` (paused, so not evaluated) stay as they are.
    `details` adds lines (a link, say) to a finding's alert. Return how many alerts were opened."""
    opened = sum(
        1
        for f in findings
        if outbox.report_condition(
            subject=f.subject,
            kind=f.kind,
            owner=f.owner,
            automation=f.automation,
            sentence=f.sentence,
            details=details(f) if details else (),
        )
    )
    kinds = set(kinds)
    still = {(f.subject, f.kind) for f in findings}
    still |= {(subject, kind) for subject in held_subjects for kind in kinds}
    outbox.clear_conditions(still, kinds)
    return opened
