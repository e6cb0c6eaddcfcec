"""The alert outbox and router against real peers: a JSON webhook server and an SMTP server get
complete alerts; a channel that is down gets every alert once it is back, none twice; repeats
fold into one incident; a success sends one recovery notice; secrets never reach an alert."""

from __future__ import annotations

import time

import pytest

from automation_pipelines.reliability.alerts import AlertRouter, Outbox
from automation_pipelines.reliability.messages import (
    TITLE_LIMIT,
    FailureDetail,
    RunFacts,
    compose,
    fingerprint,
)
from automation_pipelines.reliability.routes import Routes


def facts(run_id: str = "run-1", message: str = "upstream refused: 503", **kw) -> RunFacts:
    detail = FailureDetail(
        op="load_events", error_class="ConnectionError", message=message, attempts=4, item="e-17"
    )
    base = dict(
        run_id=run_id,
        job="load_events_job",
        owner="team:test",
        automation="webhook_events",
        run_attempt=1,
        details=(detail,),
        runbook="automation_pipelines/automations/webhook_events/README.md",
        pause="automation-pipelines pause webhook_events",
    )
    base.update(kw)
    return RunFacts(**base)


@pytest.fixture
def outbox(alert_router, monkeypatch, json_receiver) -> Outbox:
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    return alert_router.outbox()


FIELDS = [
    "Automation: webhook_events",
    "Owner: team:test",
    "Job: load_events_job",
    "Failed op: load_events",
    "Run: run-1",
    "Link: http://dagster.example:3000/runs/run-1",
    "Error: ConnectionError: upstream refused: 503",
    "Item at fault: e-17",
    "Attempts: 4 attempt(s) of the op; run attempt 1",
    "Runbook: automation_pipelines/automations/webhook_events/README.md",
    "How to pause: automation-pipelines pause webhook_events",
]


def test_json_webhook_receives_a_complete_alert(outbox, json_receiver) -> None:
    assert outbox.process_failure(facts()) is not None
    report = outbox.deliver_due()
    assert (report.sent, report.failed) == (1, 0)
    [payload] = json_receiver.received
    assert payload["title"].startswith("[FAILED] webhook_events/load_events_job · load_events")
    for line in FIELDS:
        assert line in payload["message"].splitlines()
    assert [a.status for a in outbox.alerts()] == ["delivered"]


def test_email_receives_a_complete_alert(alert_router, monkeypatch, smtp_receiver) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", smtp_receiver.url)
    outbox = alert_router.outbox()
    outbox.process_failure(facts())
    assert outbox.deliver_due().sent == 1
    [message] = smtp_receiver.messages
    assert message["To"] == "owner@example.org"
    assert message["Subject"].startswith("[FAILED] webhook_events/load_events_job")
    lines = [line.strip() for line in smtp_receiver.bodies()[0].splitlines()]
    for line in FIELDS:
        assert line in lines


def test_every_channel_of_the_owner_gets_it(
    alert_router, monkeypatch, json_receiver, smtp_receiver
) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", f"{json_receiver.url}, {smtp_receiver.url}")
    outbox = alert_router.outbox()
    outbox.process_failure(facts())
    assert outbox.deliver_due().sent == 2
    assert len(json_receiver.received) == 1 and len(smtp_receiver.messages) == 1


def test_title_fits_a_phone_and_body_keeps_everything() -> None:
    long = facts(message="x" * 5000)
    title, body = compose("failure", long, "http://ui")
    assert len(title) <= TITLE_LIMIT and title.endswith("…")
    assert "x" * 5000 in body


def test_channel_answering_500_gets_every_alert_later_exactly_once(outbox, json_receiver) -> None:
    json_receiver.status = 500
    for n in range(3):
        outbox.process_failure(facts(run_id=f"run-{n}", message=f"problem kind {'abc'[n]}"))
    first = outbox.deliver_due()
    assert (first.sent, first.failed) == (0, 3)
    assert json_receiver.refused == 3 and json_receiver.received == []
    assert all(d.last_error and "500" in d.last_error for d in outbox.deliveries())
    json_receiver.status = 200
    assert outbox.deliver_due().sent == 3
    assert outbox.deliver_due().sent == 0
    assert sorted(p["title"][-1] for p in json_receiver.received) == ["a", "b", "c"]
    assert [a.status for a in outbox.alerts()] == ["delivered"] * 3


def test_stopped_channel_gets_the_alert_when_it_is_back(outbox, json_receiver) -> None:
    json_receiver.stop()
    outbox.process_failure(facts())
    assert outbox.deliver_due().failed == 1
    assert outbox.deliver_due().failed == 1
    json_receiver.start()
    assert outbox.deliver_due().sent == 1
    assert outbox.deliver_due().sent == 0
    assert len(json_receiver.received) == 1
    [delivery] = outbox.deliveries()
    assert delivery.attempts == 3 and delivery.status == "sent"


def test_backoff_waits_before_the_next_attempt(alert_router, monkeypatch, json_receiver) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    slow = AlertRouter(
        **{**alert_router.model_dump(), **{"retry_base_seconds": 3600, "retry_max_seconds": 7200}}
    )
    outbox = slow.outbox()
    json_receiver.status = 500
    outbox.process_failure(facts())
    assert outbox.deliver_due().failed == 1
    json_receiver.status = 200
    assert outbox.deliver_due().sent == 0  # not due for at least half an hour
    [delivery] = outbox.deliveries()
    assert delivery.next_attempt_at - time.time() >= 1800 - 5


def test_unrouted_owner_waits_until_a_route_is_set(alert_router, monkeypatch, json_receiver):
    monkeypatch.delenv("TEST_DEFAULT_URLS", raising=False)
    outbox = alert_router.outbox()
    outbox.process_failure(facts(owner="team:other"))
    report = outbox.deliver_due()
    assert report.unrouted == 1
    assert "no alert URLs for owner team:other: set TEST_DEFAULT_URLS" in report.errors
    [alert] = outbox.alerts()
    assert alert.status == "pending" and "TEST_DEFAULT_URLS" in alert.last_error
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)
    assert outbox.deliver_due().sent == 1
    assert len(json_receiver.received) == 1


def test_a_run_is_alerted_at_most_once(outbox, json_receiver) -> None:
    assert outbox.process_failure(facts()) is not None
    assert outbox.process_failure(facts()) is None
    outbox.deliver_due()
    assert len(json_receiver.received) == 1


def test_repeats_fold_into_one_incident_with_a_count(outbox, json_receiver) -> None:
    for n in range(4):
        outbox.process_failure(facts(run_id=f"run-{n}", message=f"upstream refused: {500 + n}"))
    outbox.deliver_due()
    assert len(json_receiver.received) == 1
    [incident] = outbox.open_incidents()
    assert incident.failure_count == 4
    outbox.process_failure(facts(run_id="run-x", message="schema mismatch in column amount"))
    outbox.deliver_due()
    assert len(json_receiver.received) == 2
    assert len(outbox.open_incidents()) == 2


def test_a_reminder_goes_out_once_the_window_has_passed(alert_router, monkeypatch, json_receiver):
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    outbox = AlertRouter(**{**alert_router.model_dump(), "fold_window_seconds": 0}).outbox()
    outbox.process_failure(facts(run_id="run-1"))
    outbox.process_failure(facts(run_id="run-2"))
    outbox.deliver_due()
    titles = json_receiver.titles()
    assert len(titles) == 2
    assert titles[1].startswith("[STILL FAILING x2]")
    assert "Still failing: 2 failed run(s) since" in json_receiver.received[1]["message"]


def test_success_sends_one_recovery_notice(outbox, json_receiver) -> None:
    outbox.process_failure(facts(run_id="run-1"))
    outbox.process_failure(facts(run_id="run-2"))
    ok = facts(run_id="run-ok", details=())
    assert outbox.process_success(ok) is not None
    assert outbox.process_success(ok) is None
    assert outbox.process_success(facts(run_id="run-ok-2", details=())) is None
    outbox.deliver_due()
    titles = json_receiver.titles()
    assert len(titles) == 2
    assert titles[1] == "[RECOVERED] webhook_events/load_events_job succeeded after 2 failed run(s)"
    assert outbox.open_incidents() == []
    outbox.process_failure(facts(run_id="run-3"))
    outbox.deliver_due()
    assert json_receiver.titles()[2].startswith("[FAILED]")


def test_fingerprint_ignores_numbers_and_ids() -> None:
    a = fingerprint(facts(message="timeout after 30s talking to 10.0.0.7 (req 9f8e7d6c5b)"))
    b = fingerprint(facts(message="timeout after 31s talking to 10.0.0.9 (req 0a1b2c3d4e)"))
    c = fingerprint(facts(message="permission denied"))
    assert a == b != c


def test_secret_values_are_masked_in_the_outbox_and_the_delivery(
    outbox, json_receiver, monkeypatch
) -> None:
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "s3cr3t-Pa55word")
    outbox.record_failure_detail(
        "run-1",
        "load_events",
        FailureDetail("load_events", "OperationalError", "login s3cr3t-Pa55word refused"),
    )
    [detail] = outbox.failure_details("run-1")
    assert "s3cr3t-Pa55word" not in detail.message and "***" in detail.message
    outbox.process_failure(facts(message="password s3cr3t-Pa55word was refused"))
    outbox.deliver_due()
    assert "s3cr3t-Pa55word" not in str(json_receiver.received)
    assert all("s3cr3t-Pa55word" not in (a.title + a.body) for a in outbox.alerts())


def test_routes_file_of_the_project_routes_every_owner_it_lists() -> None:
    routes = Routes.load()
    assert routes.default == ("ALERT_URLS",)
    assert routes.has_route("team:platform")
    assert not routes.has_route("team:unknown")
    assert routes.env_names("team:unknown") == ("ALERT_URLS",)


@pytest.mark.postgres
def test_outbox_on_postgres(postgres_database, alert_routes, monkeypatch, json_receiver) -> None:
    import psycopg2

    db = postgres_database
    url = f"postgresql+psycopg2://{db['user']}@{db['host']}:{db['port']}/{db['dbname']}"
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    outbox = AlertRouter(database_url=url, routes_file=str(alert_routes)).outbox()
    assert outbox.process_failure(facts()) is not None
    assert outbox.process_failure(facts()) is None
    assert outbox.process_success(facts(run_id="run-ok", details=())) is not None
    assert outbox.deliver_due().sent == 2
    assert [t.split(" ")[0] for t in json_receiver.titles()] == ["[FAILED]", "[RECOVERED]"]
    with psycopg2.connect(connect_timeout=3, **db) as conn, conn.cursor() as cur:
        cur.execute("SELECT kind, status FROM ap_alerts ORDER BY id")
        assert cur.fetchall() == [("failure", "delivered"), ("recovery", "delivered")]


@pytest.mark.postgres
def test_project_database_follows_the_postgres_instance(postgres_env, monkeypatch) -> None:
    from automation_pipelines.reliability import store

    monkeypatch.delenv("AUTOMATION_DB_URL", raising=False)
    url = store.database_url("/nonexistent-home")
    assert url.startswith("postgresql+psycopg2://") and postgres_env["DAGSTER_PG_DB"] in url
    with store.engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM ap_alerts").scalar() == 0
