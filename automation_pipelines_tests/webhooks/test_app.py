"""The receiver over real HTTP, on SQLite and on PostgreSQL: a signed delivery is committed to the
inbox before its 202, a re-delivery answers 200 without a second row, every rejection (404, 401,
413, 400, 503) adds no row and never echoes a secret, concurrent requests share commits, an
inbox that cannot commit answers 503 until it can again, requests off the hooks route are routed
by Starlette as before, commits on SQLite wait for the receivers' commit lock, and a secret's
rotation window ends by itself in a running receiver."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psutil
import pytest
import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.webhooks import inbox
from automation_pipelines.webhooks.app import commit_lock_path, prepare_sources
from automation_pipelines.webhooks.sources import SourceConfig
from automation_pipelines_tests.webhooks.conftest import (
    GITHUB_SECRET,
    MAX_BODY,
    STRIPE_SECRET,
    github_headers,
    hmac_hex,
    inbox_rows,
    post_while_writer_holds,
    push_body,
    stripe_headers,
    wait_until_handed,
    writer_held,
)

SECRETS = (GITHUB_SECRET, STRIPE_SECRET)


def padded_json(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    body = b'{"pad": ""}'
    return body[:-2] + b"x" * (size - len(body)) + body[-2:]


def test_signed_delivery_is_committed_before_202(receiver, events_db_url) -> None:
    reply = receiver.post_push("delivery-1")

    assert reply.status == 202
    assert reply.json() == {"status": "accepted", "delivery_id": "delivery-1"}
    [row] = inbox_rows(store.engine(events_db_url))
    assert (row.source, row.delivery_id, row.event_type) == ("github", "delivery-1", "push")
    assert json.loads(row.body) == json.loads(push_body("delivery-1"))
    assert (row.status, row.batch, row.attempts) == (inbox.PENDING, None, 0)


def test_stripe_event_is_kept_under_its_event_id(receiver, events_db_url) -> None:
    body = json.dumps({"id": "evt_42", "type": "invoice.paid", "data": {}}).encode()

    reply = receiver.request("POST", "/hooks/stripe", body, stripe_headers(body, int(time.time())))

    assert reply.status == 202
    [row] = inbox_rows(store.engine(events_db_url))
    assert (row.source, row.delivery_id, row.event_type) == ("stripe", "evt_42", "invoice.paid")


def test_redelivery_answers_200_without_a_second_row(receiver, events_db_url) -> None:
    assert receiver.post_push("delivery-1").status == 202

    reply = receiver.post_push("delivery-1")

    assert reply.status == 200
    assert reply.json() == {"status": "duplicate", "delivery_id": "delivery-1"}
    assert [row.delivery_id for row in inbox_rows(store.engine(events_db_url))] == ["delivery-1"]


def test_body_at_the_limit_is_accepted(receiver) -> None:
    body = padded_json(MAX_BODY)

    reply = receiver.request("POST", "/hooks/github", body, github_headers(body, "at-limit"))

    assert reply.status == 202


def test_chunked_body_under_the_limit_is_accepted(receiver, events_db_url) -> None:
    body = padded_json(MAX_BODY)
    chunks = iter([body[:500], body[500:]])

    reply = receiver.request("POST", "/hooks/github", chunks, github_headers(body, "chunked"))

    assert reply.status == 202
    [row] = inbox_rows(store.engine(events_db_url))
    assert row.body == body.decode()


def _unsigned() -> tuple:
    headers = github_headers(push_body("d-1"), "d-1")
    del headers["X-Hub-Signature-256"]
    return "/hooks/github", push_body("d-1"), headers


def _other_secret() -> tuple:
    body = push_body("d-1")
    return "/hooks/github", body, github_headers(body, "d-1", secret="other")


def _stale_stripe() -> tuple:
    body = json.dumps({"id": "evt_1", "type": "invoice.paid"}).encode()
    return "/hooks/stripe", body, stripe_headers(body, int(time.time()) - 3600)


def _signed(body: bytes, delivery: str | None = "d-1", path: str = "/hooks/github") -> tuple:
    return path, body, github_headers(body, delivery)


def _chunked_over_limit() -> tuple:
    body = padded_json(MAX_BODY + 1)
    return "/hooks/github", iter([body[:600], body[600:]]), github_headers(body, "d-1")


#: name → (request builder, expected status, part of the error message)
REJECTIONS = {
    "unknown source": (lambda: _signed(push_body("d-1"), path="/hooks/gitlab"), 404, "gitlab"),
    "unconfigured source": (
        lambda: _signed(push_body("d-1"), path="/hooks/partner"),
        503,
        "not configured",
    ),
    "missing signature": (_unsigned, 401, "missing X-Hub-Signature-256"),
    "signature with another secret": (_other_secret, 401, "does not match"),
    "stale stripe timestamp": (_stale_stripe, 401, "timestamp"),
    "over the limit by content-length": (lambda: _signed(padded_json(MAX_BODY + 1)), 413, "1024"),
    "over the limit while chunked": (_chunked_over_limit, 413, "1024"),
    "not JSON": (lambda: _signed(b"ref=main"), 400, "not JSON"),
    "not UTF-8": (lambda: _signed(b'{"ref": "\xff"}'), 400, "UTF-8"),
    "no delivery header": (lambda: _signed(push_body("d-1"), None), 400, "x-github-delivery"),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=list(REJECTIONS))
def test_rejection_adds_no_row_and_reveals_no_secret(receiver, events_db_url, case) -> None:
    build, status, message = REJECTIONS[case]
    path, body, headers = build()

    reply = receiver.request("POST", path, body, headers)

    assert reply.status == status, reply.body
    assert message in reply.json()["error"]
    for secret in SECRETS:
        assert secret.encode() not in reply.body
    assert inbox_rows(store.engine(events_db_url)) == []


def test_bad_signature_reply_does_not_show_the_expected_one(receiver) -> None:
    body = push_body("d-1")
    expected = hmac_hex(GITHUB_SECRET, body)

    reply = receiver.request(
        "POST", "/hooks/github", body, github_headers(body, "d-1", secret="other")
    )

    assert reply.status == 401
    assert expected.encode() not in reply.body


def test_healthz_lists_each_source_and_why_one_is_closed(receiver) -> None:
    reply = receiver.request("GET", "/healthz")

    assert reply.status == 200
    health = reply.json()
    assert (health["status"], health["writer"]) == ("ok", "running")
    assert health["sources"]["github"] == "ready"
    assert health["sources"]["stripe"] == "ready"
    assert health["sources"]["partner"].startswith("disabled: set STANDARD_WEBHOOK_SECRET")
    for secret in SECRETS:
        assert secret.encode() not in reply.body


def test_concurrent_deliveries_share_one_commit(start_receiver, events_db_url) -> None:
    """50 deliveries, 10 of them re-deliveries, reach the inbox writer while it is stopped;
    let go, it must commit them all in one transaction."""
    receiver = start_receiver()
    writer = receiver.app.state.writer
    distinct = [f"delivery-{n}" for n in range(40)]
    later = distinct[1:] + distinct[1:11]
    replies = post_while_writer_holds(receiver, distinct[0], later)

    statuses = [reply.status for reply in replies]
    assert (statuses.count(202), statuses.count(200), len(statuses)) == (40, 10, 50)
    rows = inbox_rows(store.engine(events_db_url))
    assert sorted(row.delivery_id for row in rows) == sorted(distinct)
    assert writer.commits == 1


def test_inbox_that_cannot_commit_answers_503_until_repaired(receiver, events_db_url) -> None:
    engine = store.engine(events_db_url)
    assert receiver.post_push("before").status == 202
    inbox.inbox_table.drop(engine)

    failed = receiver.post_push("during")

    assert failed.status == 503
    assert "deliver again later" in failed.json()["error"]
    inbox.inbox_table.create(engine)
    assert receiver.post_push("during").status == 202
    assert [row.delivery_id for row in inbox_rows(engine)] == ["during"]


#: (method, path) → status: what the hooks route does not take is answered by Starlette's routing.
OFF_THE_ROUTE = {
    ("GET", "/hooks/github"): 405,
    ("PUT", "/hooks/github"): 405,
    ("POST", "/hooks/"): 404,
    ("POST", "/hooks/github/extra"): 404,
    ("POST", "/hooks/git%2Fhub"): 404,
    ("POST", "/elsewhere"): 404,
    ("GET", "/healthz"): 200,
}


@pytest.mark.parametrize(
    ("method", "path"), OFF_THE_ROUTE, ids=[" ".join(k) for k in OFF_THE_ROUTE]
)
def test_requests_off_the_hooks_route_are_routed_as_before(
    receiver, events_db_url, method, path
) -> None:
    body = push_body("d-1")

    reply = receiver.request(method, path, body, github_headers(body, "d-1"))

    assert reply.status == OFF_THE_ROUTE[(method, path)], reply.body
    assert inbox_rows(store.engine(events_db_url)) == []


def test_a_source_named_outside_ascii_is_named_back_in_utf8(receiver) -> None:
    body = push_body("d-1")

    reply = receiver.request("POST", "/hooks/%C3%A9t%C3%A9", body, github_headers(body, "d-1"))

    assert reply.status == 404
    assert reply.json() == {"error": "unknown source 'été'"}


def raw_push(delivery: str) -> tuple[bytes, bytes]:
    """A signed GitHub push as bytes on the wire: (the request line and headers, the body)."""
    body = push_body(delivery)
    head = "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, delivery).items())
    start = f"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    return f"{start}{head}\r\n".encode(), body


def test_a_sender_that_hangs_up_mid_body_leaves_nothing_and_harms_no_one(
    receiver, events_db_url, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="automation_pipelines.webhooks")
    head, body = raw_push("cut-off")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as conn:
        conn.sendall(head + body[: len(body) // 2])
    time.sleep(0.3)

    assert receiver.post_push("after").status == 202
    assert [row.delivery_id for row in inbox_rows(store.engine(events_db_url))] == ["after"]
    said = [r.getMessage() for r in caplog.records if r.name.startswith("automation_pipelines")]
    assert said == ["github delivery: the sender hung up before its body was read"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_commits_on_sqlite_wait_for_the_receivers_commit_lock(start_receiver, events_db_url):
    """Receiver processes on one SQLite file take turns at commits through a file lock; on
    PostgreSQL there is none and nothing waits."""
    lock_path = commit_lock_path(events_db_url)
    receiver = start_receiver()
    if lock_path is None:
        assert events_db_url.startswith("postgresql")
        assert receiver.post_push("no-lock").status == 202
        return
    with ThreadPoolExecutor(1) as pool, open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another receiver process in its commit
        try:
            reply = pool.submit(receiver.post_push, "waits")
            time.sleep(0.5)
            assert not reply.done()
            assert inbox_rows(store.engine(events_db_url)) == []
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        assert reply.result(timeout=10).status == 202
    assert [row.delivery_id for row in inbox_rows(store.engine(events_db_url))] == ["waits"]


def test_a_rotation_window_ends_by_itself_with_nothing_restarted(start_receiver) -> None:
    """GitHub's hook is moved to a new secret: during the window both are accepted, and when it
    ends the old one gets 401 from the same running receiver; /healthz says which state it is in."""
    ends = datetime.now(UTC) + timedelta(seconds=2)
    config = SourceConfig("github", "github", "GITHUB_WEBHOOK_SECRET", MAX_BODY)
    environ = {
        "GITHUB_WEBHOOK_SECRET": "the-new-secret",
        "GITHUB_WEBHOOK_SECRET_PREVIOUS": GITHUB_SECRET,
        "GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL": ends.isoformat(),
    }
    receiver = start_receiver(prepare_sources({"github": config}, environ=environ))

    def post(delivery: str, secret: str) -> int:
        body = push_body(delivery)
        return receiver.request(
            "POST", "/hooks/github", body, github_headers(body, delivery, secret=secret)
        ).status

    assert post("old-during", GITHUB_SECRET) == 202
    assert post("new-during", "the-new-secret") == 202
    health = receiver.request("GET", "/healthz").json()["sources"]["github"]
    assert health.startswith("ready; the previous secret (GITHUB_WEBHOOK_SECRET_PREVIOUS) is")
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.2)

    assert post("old-after", GITHUB_SECRET) == 401
    assert post("new-after", "the-new-secret") == 202
    health = receiver.request("GET", "/healthz").json()["sources"]["github"]
    assert "window ended" in health and "unset GITHUB_WEBHOOK_SECRET_PREVIOUS" in health


#: How early a timer of the receiver's event loop may end (see the trickle test below).
LOOP_CLOCK_SLACK = 0.005


def test_a_body_that_trickles_in_gets_408_and_its_connection_closed(
    start_receiver, events_db_url, caplog
) -> None:
    """One byte every 0.3 s, against a 1 s deadline: the sender is answered and let go, and the
    receiver goes on answering others meanwhile."""
    caplog.set_level(logging.INFO, logger="automation_pipelines.webhooks")
    receiver = start_receiver(body_timeout=1)
    head, body = raw_push("trickled")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as conn:
        # The clock starts before the head is sent: the receiver's deadline starts once it has
        # the head, which may be before sendall() returns here.
        began = time.monotonic()
        conn.sendall(head)
        answer = b""
        conn.settimeout(0.3)
        reset = False
        for n, byte in enumerate(body):
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                assert receiver.post_push(f"meanwhile-{n}").status == 202
                conn.sendall(bytes([byte]))
                continue
            except ConnectionResetError:  # closed with a byte of ours unread: the 408 may be lost
                reset = True
                break
            answer += chunk
            if not chunk:  # closed by the receiver
                break
        took = time.monotonic() - began

    if not (reset and not answer):
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"did not arrive within 1 s" in answer
    # uvloop keeps the loop's time in whole milliseconds, read at the start of a loop turn: its
    # timers can end up to a millisecond or so before the exact second.
    assert 1.0 - LOOP_CLOCK_SLACK <= took < 5.0
    rows = [row.delivery_id for row in inbox_rows(store.engine(events_db_url))]
    assert "trickled" not in rows and rows
    said = [r.getMessage() for r in caplog.records if " delivery: " in r.getMessage()]
    assert said == ["github delivery: no whole body within 1 s; answered 408"]


def test_events_are_committed_by_a_writer_process_that_never_sees_the_url_on_its_command_line(
    start_receiver, events_db_url
) -> None:
    """The commits happen outside the receiver's interpreter (a commit thread fought its event
    loop for the interpreter lock), and the database URL, which may hold a password, reaches
    the writer over its socket, not through the process list or its environment."""
    url = sa.make_url(events_db_url)
    if url.get_backend_name() == "postgresql":  # the local server trusts any password
        url = url.set(password="writer-pw-3c1f9e")
        events_db_url = url.render_as_string(hide_password=False)
    receiver = start_receiver(url=events_db_url)
    assert receiver.post_push("through-the-writer").status == 202

    writer = receiver.app.state.writer
    process = psutil.Process(writer.process.pid)
    assert process.pid != os.getpid() and process.is_running()
    shown = " ".join(process.cmdline()) + " ".join(f"{k}={v}" for k, v in process.environ().items())
    assert events_db_url not in shown
    assert "writer-pw-3c1f9e" not in shown
    assert writer.commits >= 1
    rows = inbox_rows(store.engine(events_db_url))
    assert [row.delivery_id for row in rows] == ["through-the-writer"]


def test_a_writer_that_dies_costs_only_its_unanswered_events_a_503_then_is_replaced(
    receiver, events_db_url
) -> None:
    """Events the writer took but never answered get 503 (their senders deliver again) when it
    is killed; the next health probe or delivery starts a new writer, and the re-deliveries
    are kept once each."""
    writer = receiver.app.state.writer
    first = writer.process
    with writer_held(receiver), ThreadPoolExecutor(3) as pool:
        held = [pool.submit(receiver.post_push, f"held-{n}") for n in range(3)]
        wait_until_handed(receiver, 3)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        statuses = [future.result().status for future in held]

    assert statuses == [503, 503, 503]
    health = json.loads(receiver.request("GET", "/healthz").body)  # a probe starts one too
    assert (health["status"], health["writer"]) == ("ok", "running")
    second = writer.process
    assert second.pid != first.pid and second.poll() is None
    assert receiver.post_push("after").status == 202
    assert [receiver.post_push(f"held-{n}").status for n in range(3)] == [202, 202, 202]
    assert writer.process is second
    stored = sorted(row.delivery_id for row in inbox_rows(store.engine(events_db_url)))
    assert stored == ["after", "held-0", "held-1", "held-2"]
