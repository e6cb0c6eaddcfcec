"""Alerts that reach the owner exactly once and are never lost.

A finished run is turned into an alert inside one transaction of the project database (the
outbox), and only then delivered through apprise URLs named in `alert_routes.yaml`. Delivery is
retried per channel with backoff until the channel accepts it, so a channel that is down for an
hour still gets every alert afterwards. Failures with the same fingerprint fold into one open
incident (with a count and a reminder once per window); the next success closes it with a
recovery notice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import apprise
import dagster as dg
import sqlalchemy as sa
import yaml

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import store
from automation_pipelines.reliability.secrets import redact

ROUTES_FILE = PROJECT_ROOT / "alert_routes.yaml"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
TITLE_LIMIT = 120

failures_table = sa.Table(
    "ap_alert_failures",
    store.metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_key", sa.String(255), primary_key=True),
    sa.Column("op", sa.String(255)),
    sa.Column("error_class", sa.String(255)),
    sa.Column("message", sa.Text),
    sa.Column("attempts", sa.Integer),
    sa.Column("item", sa.Text),
    sa.Column("recorded_at", sa.Float, nullable=False),
)

processed_runs_table = sa.Table(
    "ap_alert_processed_runs",
    store.metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("processed_at", sa.Float, nullable=False),
)

incidents_table = sa.Table(
    "ap_incidents",
    store.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(255), nullable=False),
    sa.Column("automation", sa.String(255)),
    sa.Column("owner", sa.String(255)),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("summary", sa.Text),
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),
    sa.Column("last_alerted_at", sa.Float, nullable=False),
    sa.Column("failure_count", sa.Integer, nullable=False),
    sa.Column("last_run_id", sa.String(64)),
    sa.Column("closed_at", sa.Float),
    sa.Index("ix_ap_incidents_open", "job", "closed_at"),
)

alerts_table = sa.Table(
    "ap_alerts",
    store.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(255), nullable=False, unique=True),
    sa.Column("incident_id", sa.Integer),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("automation", sa.String(255)),
    sa.Column("job", sa.String(255)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("title", sa.String(TITLE_LIMIT), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float),
)

deliveries_table = sa.Table(
    "ap_alert_deliveries",
    store.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.Integer, nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("channel_label", sa.Text),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("sent_at", sa.Float),
    sa.UniqueConstraint("alert_id", "channel", name="uq_ap_delivery_channel"),
)


@dataclass(frozen=True)
class Routes:
    """Owner → names of environment variables holding apprise URLs (they carry tokens)."""

    default: tuple[str, ...]
    owners: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls, path: Path | str | None = None) -> Routes:
        raw = yaml.safe_load(Path(path or ROUTES_FILE).read_text(encoding="utf-8")) or {}

        def names(value: object) -> tuple[str, ...]:
            return (value,) if isinstance(value, str) else tuple(value or ())

        owners = {str(k): names(v) for k, v in (raw.get("owners") or {}).items()}
        return cls(default=names(raw.get("default")), owners=owners)

    def has_route(self, owner: str) -> bool:
        return bool(self.owners.get(owner))

    def env_names(self, owner: str) -> tuple[str, ...]:
        return self.owners.get(owner) or self.default

    def urls(self, owner: str) -> list[str]:
        """The apprise URLs configured now for `owner` (its own route, else the default)."""
        found: list[str] = []
        for name in self.env_names(owner):
            for url in re.split(r"[\s,]+", os.environ.get(name) or ""):
                if url and url not in found:
                    found.append(url)
        return found


def channel_id(url: str) -> str:
    """A stable name for a channel that does not reveal its URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def channel_label(url: str) -> str:
    """The URL as apprise shows it with secrets hidden (for people reading the outbox)."""
    try:
        plugin = apprise.Apprise.instantiate(url)
        if plugin:
            return redact(plugin.url(privacy=True))
    except Exception:  # a label is a nicety; never let it stop a delivery
        pass
    return redact(url.split("://", 1)[0] + "://…")


def send_apprise(url: str, title: str, body: str) -> tuple[bool, str]:
    """Send one notification; return whether the channel accepted it and what went wrong."""
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return False, f"apprise does not understand the URL {channel_label(url)}"
    with apprise.LogCapture(level=logging.WARNING) as captured:
        accepted = notifier.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT)
    return bool(accepted), redact(captured.getvalue().strip())[-2000:]


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


def _truncate(text: str, limit: int) -> str:
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
        return _truncate(title, TITLE_LIMIT), "\n".join(lines)
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
    return _truncate(title, TITLE_LIMIT), "\n".join(lines)


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    unrouted: int = 0
    errors: list[str] = field(default_factory=list)


def _now() -> float:
    return time.time()


def _due(now: float) -> sa.ColumnElement[bool]:
    """Deliveries to attempt: pending and due, or claimed by a sender whose lease ran out."""
    return sa.or_(
        sa.and_(deliveries_table.c.status == "pending", deliveries_table.c.next_attempt_at <= now),
        sa.and_(deliveries_table.c.status == "sending", deliveries_table.c.lease_until < now),
    )


class Outbox:
    """The durable alert outbox in the project database, and its delivery loop."""

    def __init__(
        self,
        url: str,
        routes: Routes,
        *,
        ui_base_url: str = DEFAULT_UI_URL,
        fold_window_seconds: float = 3600.0,
        retry_base_seconds: float = 15.0,
        retry_max_seconds: float = 600.0,
        lease_seconds: float = 120.0,
        sender=send_apprise,
    ) -> None:
        self.engine = store.engine(url)
        self.routes = routes
        self.ui_base_url = ui_base_url
        self.fold_window_seconds = fold_window_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.lease_seconds = lease_seconds
        self.sender = sender

    # -- recording -------------------------------------------------------------------------

    def record_failure_detail(self, run_id: str, step_key: str, detail: FailureDetail) -> None:
        """Keep what the failure hook saw; the alert is decided when the run has finished."""
        row = {
            "run_id": run_id,
            "step_key": step_key,
            "op": detail.op,
            "error_class": detail.error_class,
            "message": redact(detail.message),
            "attempts": detail.attempts,
            "item": redact(detail.item) if detail.item else None,
            "recorded_at": _now(),
        }
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(failures_table.c.run_id).where(
                    failures_table.c.run_id == run_id, failures_table.c.step_key == step_key
                )
            ).first()
            if exists is None:
                conn.execute(failures_table.insert().values(**row))

    def failure_details(self, run_id: str) -> list[FailureDetail]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(failures_table)
                .where(failures_table.c.run_id == run_id)
                .order_by(failures_table.c.recorded_at)
            ).all()
        return [FailureDetail(r.op, r.error_class, r.message, r.attempts, r.item) for r in rows]

    def is_processed(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(processed_runs_table.c.run_id).where(
                        processed_runs_table.c.run_id == run_id
                    )
                ).first()
                is not None
            )

    def _claim_run(self, conn: sa.Connection, run_id: str, outcome: str) -> bool:
        """Mark a run processed; False if it already was (so it is never alerted twice)."""
        if conn.execute(
            sa.select(processed_runs_table.c.run_id).where(processed_runs_table.c.run_id == run_id)
        ).first():
            return False
        conn.execute(
            processed_runs_table.insert().values(
                run_id=run_id, outcome=outcome, processed_at=_now()
            )
        )
        return True

    def mark_processed(self, run_id: str, outcome: str) -> None:
        with self.engine.begin() as conn:
            self._claim_run(conn, run_id, outcome)

    def _insert_alert(
        self, conn: sa.Connection, kind: str, facts: RunFacts, incident_id: int, **compose_args
    ) -> int:
        title, body = compose(kind, facts, self.ui_base_url, **compose_args)
        result = conn.execute(
            alerts_table.insert().values(
                dedup_key=f"{kind}:{facts.run_id}",
                incident_id=incident_id,
                kind=kind,
                owner=facts.owner,
                automation=facts.automation,
                job=facts.job,
                run_id=facts.run_id,
                title=redact(title),
                body=redact(body),
                status="pending",
                created_at=_now(),
            )
        )
        return result.inserted_primary_key[0]

    def process_failure(self, facts: RunFacts) -> int | None:
        """Open or fold an incident for a failed run; return the new alert's id, if any."""
        now = _now()
        fp = fingerprint(facts)
        try:
            with self.engine.begin() as conn:
                if not self._claim_run(conn, facts.run_id, "failure"):
                    return None
                incident = conn.execute(
                    sa.select(incidents_table).where(
                        incidents_table.c.job == facts.job,
                        incidents_table.c.fingerprint == fp,
                        incidents_table.c.closed_at.is_(None),
                    )
                ).first()
                if incident is None:
                    incident_id = conn.execute(
                        incidents_table.insert().values(
                            job=facts.job,
                            automation=facts.automation,
                            owner=facts.owner,
                            fingerprint=fp,
                            summary=redact(f"{facts.main.error_class}: {facts.main.message}")[:500],
                            opened_at=now,
                            last_seen_at=now,
                            last_alerted_at=now,
                            failure_count=1,
                            last_run_id=facts.run_id,
                        )
                    ).inserted_primary_key[0]
                    return self._insert_alert(conn, "failure", facts, incident_id, opened_at=now)
                count = incident.failure_count + 1
                remind = now - incident.last_alerted_at >= self.fold_window_seconds
                conn.execute(
                    incidents_table.update()
                    .where(incidents_table.c.id == incident.id)
                    .values(
                        failure_count=count,
                        last_seen_at=now,
                        last_run_id=facts.run_id,
                        last_alerted_at=now if remind else incident.last_alerted_at,
                    )
                )
                if not remind:
                    return None
                return self._insert_alert(
                    conn,
                    "reminder",
                    facts,
                    incident.id,
                    failure_count=count,
                    opened_at=incident.opened_at,
                )
        except sa.exc.IntegrityError:
            return None  # another process recorded this run at the same moment

    def process_success(self, facts: RunFacts) -> int | None:
        """Close the job's open incidents with one recovery notice; None if nothing was open."""
        try:
            with self.engine.begin() as conn:
                open_incidents = conn.execute(
                    sa.select(incidents_table).where(
                        incidents_table.c.job == facts.job,
                        incidents_table.c.closed_at.is_(None),
                    )
                ).all()
                if not open_incidents or not self._claim_run(conn, facts.run_id, "success"):
                    return None
                conn.execute(
                    incidents_table.update()
                    .where(incidents_table.c.id.in_([i.id for i in open_incidents]))
                    .values(closed_at=_now())
                )
                return self._insert_alert(
                    conn,
                    "recovery",
                    facts,
                    open_incidents[0].id,
                    failure_count=sum(i.failure_count for i in open_incidents),
                    opened_at=min(i.opened_at for i in open_incidents),
                )
        except sa.exc.IntegrityError:
            return None

    def report_condition(
        self,
        *,
        subject: str,
        kind: str,
        owner: str,
        automation: str | None,
        sentence: str,
        details: Sequence[str] = (),
    ) -> int | None:
        """Open an incident for a condition (e.g. a stalled sensor) once; repeats only count.

        Returns the new alert's id when the incident was opened now, else None.
        """
        now = _now()
        with self.engine.begin() as conn:
            incident = conn.execute(
                sa.select(incidents_table).where(
                    incidents_table.c.job == subject,
                    incidents_table.c.fingerprint == kind,
                    incidents_table.c.closed_at.is_(None),
                )
            ).first()
            if incident is not None:
                conn.execute(
                    incidents_table.update()
                    .where(incidents_table.c.id == incident.id)
                    .values(failure_count=incident.failure_count + 1, last_seen_at=now)
                )
                return None
            incident_id = conn.execute(
                incidents_table.insert().values(
                    job=subject,
                    automation=automation,
                    owner=owner,
                    fingerprint=kind,
                    summary=redact(sentence)[:500],
                    opened_at=now,
                    last_seen_at=now,
                    last_alerted_at=now,
                    failure_count=1,
                )
            ).inserted_primary_key[0]
            title = f"[{kind.upper().replace('_', ' ')}] {automation or subject}: {sentence}"
            lines = [sentence, f"Automation: {automation or '-'}", f"Owner: {owner}"]
            body = "\n".join([*lines, f"Subject: {subject}", *details])
            return conn.execute(
                alerts_table.insert().values(
                    dedup_key=f"condition:{incident_id}",
                    incident_id=incident_id,
                    kind="condition",
                    owner=owner,
                    automation=automation,
                    job=subject,
                    title=redact(_truncate(title, TITLE_LIMIT)),
                    body=redact(body),
                    status="pending",
                    created_at=now,
                )
            ).inserted_primary_key[0]

    def clear_conditions(self, active: set[tuple[str, str]], kinds: set[str]) -> int:
        """Close open incidents of `kinds` whose (subject, kind) is no longer in `active`, each
        with a recovery notice; return how many were closed."""
        now = _now()
        closed = 0
        with self.engine.begin() as conn:
            open_rows = conn.execute(
                sa.select(incidents_table).where(
                    incidents_table.c.closed_at.is_(None),
                    incidents_table.c.fingerprint.in_(sorted(kinds)),
                )
            ).all()
            for row in open_rows:
                if (row.job, row.fingerprint) in active:
                    continue
                conn.execute(
                    incidents_table.update()
                    .where(incidents_table.c.id == row.id)
                    .values(closed_at=now)
                )
                since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row.opened_at))
                title = f"[RECOVERED] {row.automation or row.job}: {row.summary}"
                conn.execute(
                    alerts_table.insert().values(
                        dedup_key=f"cleared:{row.id}",
                        incident_id=row.id,
                        kind="recovery",
                        owner=row.owner or "unowned",
                        automation=row.automation,
                        job=row.job,
                        title=_truncate(title, TITLE_LIMIT),
                        body=f"Resolved: {row.summary}\nOpen since {since}; seen "
                        f"{row.failure_count} time(s).\nSubject: {row.job}",
                        status="pending",
                        created_at=now,
                    )
                )
                closed += 1
        return closed

    def enqueue_message(self, owner: str, title: str, body: str, dedup_key: str) -> int | None:
        """Queue a free-form alert (test messages, digests); None if `dedup_key` was used."""
        try:
            with self.engine.begin() as conn:
                return conn.execute(
                    alerts_table.insert().values(
                        dedup_key=dedup_key,
                        kind="message",
                        owner=owner,
                        title=redact(_truncate(title, TITLE_LIMIT)),
                        body=redact(body),
                        status="pending",
                        created_at=_now(),
                    )
                ).inserted_primary_key[0]
        except sa.exc.IntegrityError:
            return None

    # -- delivery --------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * (2 ** max(0, attempts - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def _route_pending(self, report: DeliveryReport) -> dict[str, str]:
        """Give every undelivered alert a delivery row per channel its owner has now."""
        by_channel: dict[str, str] = {}
        with self.engine.begin() as conn:
            pending = conn.execute(
                sa.select(alerts_table.c.id, alerts_table.c.owner).where(
                    alerts_table.c.status == "pending"
                )
            ).all()
            for alert in pending:
                urls = self.routes.urls(alert.owner)
                if not urls:
                    report.unrouted += 1
                    names = " or ".join(self.routes.env_names(alert.owner)) or "a route"
                    message = f"no alert URLs for owner {alert.owner}: set {names}"
                    report.errors.append(message)
                    conn.execute(
                        alerts_table.update()
                        .where(alerts_table.c.id == alert.id)
                        .values(last_error=message)
                    )
                    continue
                current = {channel_id(url): url for url in urls}
                by_channel.update(current)
                known = {
                    row.channel: row.status
                    for row in conn.execute(
                        sa.select(deliveries_table.c.channel, deliveries_table.c.status).where(
                            deliveries_table.c.alert_id == alert.id
                        )
                    )
                }
                for channel, url in current.items():
                    if channel not in known:
                        conn.execute(
                            deliveries_table.insert().values(
                                alert_id=alert.id,
                                channel=channel,
                                channel_label=channel_label(url),
                                status="pending",
                                attempts=0,
                                next_attempt_at=0.0,
                            )
                        )
                gone = [c for c, status in known.items() if c not in current and status != "sent"]
                if gone:
                    conn.execute(
                        deliveries_table.update()
                        .where(
                            deliveries_table.c.alert_id == alert.id,
                            deliveries_table.c.channel.in_(gone),
                        )
                        .values(status="dropped", last_error="channel no longer configured")
                    )
        return by_channel

    def _claim_delivery(self, delivery_id: int, now: float) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                deliveries_table.update()
                .where(
                    deliveries_table.c.id == delivery_id,
                    _due(now),
                )
                .values(status="sending", lease_until=now + self.lease_seconds)
            )
            return result.rowcount == 1

    def deliver_due(self, *, budget_seconds: float = 30.0, limit: int = 100) -> DeliveryReport:
        """Send what is due, one attempt per delivery, within a time budget."""
        report = DeliveryReport()
        urls = self._route_pending(report)
        started = time.monotonic()
        now = _now()
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(deliveries_table, alerts_table.c.title, alerts_table.c.body)
                .join(alerts_table, alerts_table.c.id == deliveries_table.c.alert_id)
                .where(_due(now))
                .order_by(deliveries_table.c.id)
                .limit(limit)
            ).all()
        for delivery in due:
            if time.monotonic() - started > budget_seconds:
                break
            url = urls.get(delivery.channel)
            if url is None or not self._claim_delivery(delivery.id, _now()):
                continue
            accepted, error = self.sender(url, delivery.title, delivery.body)
            values: dict[str, object]
            if accepted:
                report.sent += 1
                values = {"status": "sent", "sent_at": _now(), "attempts": delivery.attempts + 1}
            else:
                report.failed += 1
                attempts = delivery.attempts + 1
                error = error or "the channel did not accept the notification"
                report.errors.append(f"{delivery.channel_label}: {error}")
                values = {
                    "status": "pending",
                    "attempts": attempts,
                    "next_attempt_at": _now() + self._backoff(attempts),
                    "last_error": error,
                }
            with self.engine.begin() as conn:
                conn.execute(
                    deliveries_table.update()
                    .where(deliveries_table.c.id == delivery.id)
                    .values(lease_until=None, **values)
                )
        self._close_delivered()
        return report

    def _close_delivered(self) -> None:
        with self.engine.begin() as conn:
            open_deliveries = (
                sa.select(deliveries_table.c.id)
                .where(
                    deliveries_table.c.alert_id == alerts_table.c.id,
                    deliveries_table.c.status.in_(["pending", "sending"]),
                )
                .exists()
            )
            any_sent = (
                sa.select(deliveries_table.c.id)
                .where(
                    deliveries_table.c.alert_id == alerts_table.c.id,
                    deliveries_table.c.status == "sent",
                )
                .exists()
            )
            conn.execute(
                alerts_table.update()
                .where(alerts_table.c.status == "pending", any_sent, ~open_deliveries)
                .values(status="delivered", delivered_at=_now(), last_error=None)
            )

    # -- reading ---------------------------------------------------------------------------

    def alerts(self, *, status: str | None = None) -> Sequence[sa.Row]:
        query = sa.select(alerts_table).order_by(alerts_table.c.id)
        if status:
            query = query.where(alerts_table.c.status == status)
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def deliveries(self) -> Sequence[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(deliveries_table).order_by(deliveries_table.c.id)).all()

    def open_incidents(self) -> Sequence[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(incidents_table).where(incidents_table.c.closed_at.is_(None))
            ).all()


class AlertRouter(dg.ConfigurableResource):
    """Where alerts are kept and how they are delivered; URLs come from the environment."""

    ui_base_url: str = DEFAULT_UI_URL
    database_url: str | None = None
    routes_file: str | None = None
    fold_window_seconds: float = 3600.0
    retry_base_seconds: float = 15.0
    retry_max_seconds: float = 600.0
    delivery_budget_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> AlertRouter:
        """The router as deployed: the UI link from DAGSTER_UI_URL, the rest from defaults."""
        return cls(ui_base_url=os.environ.get("DAGSTER_UI_URL") or DEFAULT_UI_URL)

    def routes(self) -> Routes:
        return Routes.load(self.routes_file)

    def outbox(self, instance: dg.DagsterInstance | None = None) -> Outbox:
        """The outbox in the configured database, else the one beside `instance`'s storage."""
        root = instance.root_directory if instance is not None else None
        return self.outbox_at(self.database_url or store.database_url(root))

    def outbox_at(self, url: str) -> Outbox:
        return Outbox(
            url,
            self.routes(),
            ui_base_url=self.ui_base_url,
            fold_window_seconds=self.fold_window_seconds,
            retry_base_seconds=self.retry_base_seconds,
            retry_max_seconds=self.retry_max_seconds,
        )
