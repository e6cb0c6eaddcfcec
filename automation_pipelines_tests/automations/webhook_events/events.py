"""Sample webhook events for the webhook_events tests, and a way to put them in the inbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.jobs import load_webhook_events_job
from automation_pipelines.reliability.tags import RUN_KEY_TAG
from automation_pipelines.webhooks import inbox


def daemon_tags(request: dg.RunRequest) -> dict[str, str]:
    """The tags the daemon gives the run it makes of `request`: the job's run tags, the
    request's own and its run key, by which the sensor finds a batch's runs."""
    key = {RUN_KEY_TAG: request.run_key} if request.run_key else {}
    return {**load_webhook_events_job.run_tags, **request.tags, **key}


def at(day: str, hour: int = 12, minute: int = 0) -> float:
    return (
        datetime.strptime(day, "%Y-%m-%d").replace(hour=hour, minute=minute, tzinfo=UTC).timestamp()
    )


def push(commits: int = 2, repository: str = "acme/app") -> dict:
    return {
        "ref": "refs/heads/main",
        "repository": {"full_name": repository},
        "commits": [{"id": f"c{i}"} for i in range(commits)],
        "pusher": {"name": "ci-bot"},
    }


def pull_request(action: str = "opened", merged: bool = False, additions: int = 10) -> dict:
    return {
        "action": action,
        "number": 7,
        "repository": {"full_name": "acme/app"},
        "pull_request": {"merged": merged, "additions": additions, "deletions": 1},
    }


def payment(amount: int = 1999, currency: str = "usd", event_id: str = "evt_1") -> dict:
    return {
        "id": event_id,
        "type": "payment_intent.succeeded",
        "created": 1_790_000_000,
        "data": {
            "object": {
                "id": f"pi_{event_id}",
                "amount": amount,
                "currency": currency,
                "status": "succeeded",
            }
        },
    }


def seed(
    engine: sa.Engine,
    events: list[tuple[str, str, str, object]],
    received_at: float = 1_790_000_000.0,
) -> list[int]:
    """Insert (source, delivery id, event type, payload) rows as the receiver would; a payload
    that is a str is stored as it is (to seed broken JSON). Returns the inbox ids."""
    rows = [
        inbox.Event(
            source,
            delivery,
            event_type,
            payload if isinstance(payload, str) else json.dumps(payload),
            received_at + index * 0.001,
        )
        for index, (source, delivery, event_type, payload) in enumerate(events)
    ]
    with engine.begin() as conn:
        inbox.insert_events(conn, rows)
        found = conn.execute(
            sa.select(inbox.inbox_table.c.id)
            .where(inbox.inbox_table.c.delivery_id.in_([r.delivery_id for r in rows]))
            .order_by(inbox.inbox_table.c.id)
        )
        return [row.id for row in found]


def partner_event(n: int = 1) -> dict:
    """A Standard Webhooks event of a type without a schema: kept whole in wh_webhook_events."""
    return {"type": "order.created", "data": {"order": n, "note": "naïve ☃ 𝄞"}}


def with_path(payload: dict, path: str, value: object) -> dict:
    """A deep copy of `payload` with the dotted `path` set to `value` (or removed if it is
    `REMOVE`), creating objects on the way."""
    copy = json.loads(json.dumps(payload))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node.setdefault(key, {})
    if value is REMOVE:
        node.pop(last, None)
    else:
        node[last] = value
    return copy


REMOVE = object()
