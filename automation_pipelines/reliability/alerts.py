"""The alert outbox: alerts that reach the owner exactly once and are never lost.

A finished run is turned into an alert inside one transaction of the project database (the
outbox), and only then delivered through the apprise URLs of the owner's route (`routes.py`).
Delivery is retried per channel with backoff until the channel accepts it, so a channel that is
down for an hour still gets every alert afterwards. Failures with the same fingerprint fold into
one open incident (with a count and a reminder once per window); the next success closes it with
a recovery notice. What an alert says is `messages.py`'s; only alert_outbox_sensor and the paths
outside Dagster (`monitoring/outside.py`) call `Outbox.deliver_due`.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.messages import (
    TITLE_LIMIT,
    FailureDetail,
    RunFacts,
    compose,
    fingerprint,
    one_line,
)
from automation_pipelines.reliability.routes import Routes, channel_id, channel_label, send_apprise
from automation_pipelines.reliability.secrets import redact

DEFAULT_UI_URL = "http://127.0.0.1:3000"

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
                    title=redact(one_line(title, TITLE_LIMIT)),
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
                        title=one_line(title, TITLE_LIMIT),
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
                        title=redact(one_line(title, TITLE_LIMIT)),
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

    @classmethod
    @functools.cache
    def deployed(cls) -> AlertRouter:
        """The one router of the code location. Every automation's definitions carry it (so a
        folder loads on its own) and so do the monitoring layer's; Dagster merges definitions
        only when a resource key names the same object, so they all share this one."""
        return cls.from_env()

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
