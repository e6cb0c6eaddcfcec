"""What an alert about a run says: its facts, its incident's fingerprint, and its title (short
enough for a phone) and body (complete, for e-mail)."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

TITLE_LIMIT = 120


@dataclass(frozen=True)
class FailureDetail:
    """What failed inside a run: the op, the error and the item at fault, already redacted."""

    op: str | None
    error_class: str
    message: str
    attempts: int | None = None
    item: str | None = None


@dataclass(frozen=True)
class RunFacts:
    """What an alert says about one finished run."""

    run_id: str
    job: str
    owner: str
    automation: str | None = None
    run_attempt: int = 1
    details: tuple[FailureDetail, ...] = ()
    runbook: str | None = None
    pause: str | None = None

    @property
    def main(self) -> FailureDetail:
        if self.details:
            return self.details[0]
        return FailureDetail(op=None, error_class="RunFailure", message="the run failed")


_VOLATILE = re.compile(r"[0-9a-f]{8,}|\d+", re.IGNORECASE)


def fingerprint(facts: RunFacts) -> str:
    """Same job, op, error class and message shape (numbers and ids ignored) → same incident."""
    main = facts.main
    shape = _VOLATILE.sub("#", main.message.lower())[:300]
    raw = "|".join([facts.job, main.op or "", main.error_class, shape])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def one_line(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compose(
    kind: str,
    facts: RunFacts,
    ui_base_url: str,
    *,
    failure_count: int = 1,
    opened_at: float | None = None,
) -> tuple[str, str]:
    """Title (≤120 chars, for a phone) and body (complete, for e-mail) of an alert."""
    name = f"{facts.automation}/{facts.job}" if facts.automation else facts.job
    main = facts.main
    run_url = f"{ui_base_url.rstrip('/')}/runs/{facts.run_id}"
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(opened_at)) if opened_at else "?"
    if kind == "recovery":
        title = f"[RECOVERED] {name} succeeded after {failure_count} failed run(s)"
        lines = [
            f"{name} succeeded again; the incident open since {since} is closed.",
            f"Failed runs during the incident: {failure_count}",
            f"Automation: {facts.automation or '-'} (owner: {facts.owner})",
            f"Job: {facts.job}",
            f"Successful run: {facts.run_id}",
            f"Link: {run_url}",
        ]
        return one_line(title, TITLE_LIMIT), "\n".join(lines)
    where = f" · {main.op}" if main.op else ""
    prefix = "[FAILED]" if kind == "failure" else f"[STILL FAILING x{failure_count}]"
    title = f"{prefix} {name}{where}: {main.error_class}: {main.message}"
    attempts = f"{main.attempts} attempt(s) of the op" if main.attempts else "op attempts unknown"
    lines = [
        f"Automation: {facts.automation or '-'}",
        f"Owner: {facts.owner}",
        f"Job: {facts.job}",
        f"Failed op: {main.op or '- (the run failed outside any op)'}",
        f"Run: {facts.run_id}",
        f"Link: {run_url}",
        f"Error: {main.error_class}: {main.message}",
    ]
    if main.item:
        lines.append(f"Item at fault: {main.item}")
    lines.append(f"Attempts: {attempts}; run attempt {facts.run_attempt}")
    for extra in facts.details[1:]:
        lines.append(f"Also failed: {extra.op or '-'}: {extra.error_class}: {extra.message}")
    if kind != "failure":
        lines.append(f"Still failing: {failure_count} failed run(s) since {since}")
    lines += [
        f"Runbook: {facts.runbook or '- (none linked from the job description)'}",
        f"How to pause: {facts.pause or 'stop whatever launches the job'}",
    ]
    return one_line(title, TITLE_LIMIT), "\n".join(lines)
