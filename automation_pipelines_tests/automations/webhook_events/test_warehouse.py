"""Validation of events against their schemas (pandas), and the idempotent upsert."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import warehouse
from automation_pipelines.reliability import store
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.webhook_events.events import (
    payment,
    pull_request,
    push,
    seed,
)


def _rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(inbox.inbox_table).order_by(inbox.inbox_table.c.id)).all()


@pytest.fixture
def engine(tmp_path) -> sa.Engine:
    yield store.engine(f"sqlite:///{tmp_path / 'w.db'}")
    store.dispose_all()


def test_valid_events_become_typed_rows(engine: sa.Engine) -> None:
    seed(
        engine,
        [
            ("github", "p1", "push", push(commits=3)),
            ("github", "r1", "pull_request", pull_request("closed", merged=True, additions=5)),
            ("stripe", "evt_1", "payment_intent.succeeded", payment(2500, "eur")),
            ("partner", "m1", "order.created", {"type": "order.created", "data": {"n": 1}}),
        ],
    )
    result = warehouse.validate(_rows(engine), now=5.0)
    assert result.invalid == []
    assert len(result.base) == 4 and len(result.valid_ids) == 4
    typed = {name: rows for name, (_, rows) in result.typed.items()}
    assert typed["wh_github_pushes"] == [
        {
            "source": "github",
            "delivery_id": "p1",
            "repository": "acme/app",
            "ref": "refs/heads/main",
            "commits": 3,
            "pusher": "ci-bot",
        }
    ]
    assert typed["wh_github_pull_requests"][0]["merged"] is True
    assert typed["wh_github_pull_requests"][0]["additions"] == 5
    assert typed["wh_stripe_payments"][0]["amount"] == 2500
    assert typed["wh_stripe_payments"][0]["currency"] == "eur"
    # An event type without a schema is kept in wh_webhook_events only.
    assert "partner/order.created" in result.by_type
    assert set(typed) == {"wh_github_pushes", "wh_github_pull_requests", "wh_stripe_payments"}


@pytest.mark.parametrize(
    ("source", "event_type", "payload", "reason"),
    [
        ("github", "push", "{not json", "payload is not JSON"),
        ("github", "push", json.dumps([1, 2]), "payload must be a JSON object, got list"),
        ("github", "push", {"ref": "x", "commits": []}, "required field repository.full_name"),
        ("github", "push", {**push(), "commits": 3}, "commits must be a list"),
        ("github", "push", {**push(), "ref": ""}, "ref must be a non-empty string"),
        ("github", "pull_request", {**pull_request(), "number": "7"}, "number must be a number"),
        ("github", "pull_request", {**pull_request(), "number": 7.5}, "must be a whole number"),
        (
            "github",
            "pull_request",
            {**pull_request(), "pull_request": {"merged": "yes"}},
            "pull_request.merged must be true or false",
        ),
        (
            "stripe",
            "payment_intent.succeeded",
            {**payment(), "data": {"object": {"id": "pi", "currency": "usd"}}},
            "required field data.object.amount is missing",
        ),
        ("stripe", "charge.succeeded", {**payment(), "created": True}, "created must be a number"),
    ],
)
def test_invalid_event_names_its_problem(
    engine: sa.Engine, source: str, event_type: str, payload: object, reason: str
) -> None:
    seed(engine, [(source, "bad", event_type, payload), ("github", "good", "push", push())])
    result = warehouse.validate(_rows(engine), now=5.0)
    assert [row.delivery_id for row, _ in result.invalid] == ["bad"]
    assert reason in result.invalid[0][1]
    # The good event of the same chunk is not held back by the bad one.
    assert [row["delivery_id"] for row in result.base] == ["good"]


def test_upsert_is_idempotent_and_counts_loads(engine: sa.Engine) -> None:
    seed(engine, [("github", "p1", "push", push(commits=1))])
    for _ in range(2):
        with engine.begin() as conn:
            warehouse.write(conn, warehouse.validate(_rows(engine), now=7.0))
    with engine.connect() as conn:
        events = conn.execute(sa.select(warehouse.events_table)).all()
        pushes = conn.execute(sa.select(warehouse.github_pushes_table)).all()
    assert len(events) == 1 and len(pushes) == 1
    assert events[0].load_count == 2  # the second write was seen, and added no row
    assert pushes[0].commits == 1
