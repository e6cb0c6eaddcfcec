"""The receiver served for real by uvicorn on a loopback port, the test sources it trusts, and
helpers that sign requests and seed the inbox.

`events_db_url` (SQLite and PostgreSQL) comes from the suite's root conftest.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette

from automation_pipelines.local_stack import free_port
from automation_pipelines.webhooks import inbox, senders
from automation_pipelines.webhooks.app import Source, create_app, prepare_sources
from automation_pipelines.webhooks.sources import SourceConfig

GITHUB_SECRET = "gh-test-secret-4f1c9a7e"
STRIPE_SECRET = "whsec_stripe-test-secret-b2d8e05"
MAX_BODY = 1024


def webhook_sources() -> dict[str, Source]:
    """github and stripe with secrets and a 1 KiB body limit; partner without its secret."""
    configs = {
        "github": SourceConfig("github", "github", "GITHUB_WEBHOOK_SECRET", MAX_BODY),
        "stripe": SourceConfig("stripe", "stripe", "STRIPE_WEBHOOK_SECRET", MAX_BODY),
        "partner": SourceConfig("partner", "standard", "STANDARD_WEBHOOK_SECRET"),
    }
    environ = {"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET}
    return prepare_sources(configs, environ=environ)


def hmac_hex(secret: str, content: bytes) -> str:
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def github_headers(
    body: bytes, delivery: str | None, event: str = "push", secret: str = GITHUB_SECRET
) -> dict[str, str]:
    """Headers GitHub would send for `body`, signed with the test secret by default."""
    return senders.github_headers(body, secret, delivery=delivery, event=event)


def stripe_headers(body: bytes, timestamp: int, secret: str = STRIPE_SECRET) -> dict[str, str]:
    signature = hmac_hex(secret, f"{timestamp}.".encode() + body)
    return {"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={signature}"}


def push_body(delivery: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": delivery}).encode()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """The real app under uvicorn in a thread of this process, answering on 127.0.0.1."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="receiver", daemon=True)

    def start(self, timeout: float = 10) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the receiver could not start on port {self.port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the receiver did not start within {timeout}s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        if self.thread.is_alive():
            raise RuntimeError("the receiver did not stop within 15s")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request on its own connection; an iterable body goes out chunked."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.read())
        finally:
            conn.close()

    def post_push(self, delivery: str) -> Reply:
        """A correctly signed GitHub push with this delivery id."""
        body = push_body(delivery)
        return self.request("POST", "/hooks/github", body, github_headers(body, delivery))


@pytest.fixture
def start_receiver(events_db_url: str) -> Iterator[Callable[..., Receiver]]:
    """Start receivers on `events_db_url` (or `url`, another URL of that database; with
    `webhook_sources()` unless told); they stop before the database is disposed of, since this
    fixture depends on it."""
    started: list[Receiver] = []

    def start(
        sources: dict[str, Source] | None = None, url: str | None = None, **options
    ) -> Receiver:
        app = create_app(
            url or events_db_url, webhook_sources() if sources is None else sources, **options
        )
        receiver = Receiver(app)
        receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in reversed(started):
        receiver.stop()


@pytest.fixture
def receiver(start_receiver: Callable[..., Receiver]) -> Receiver:
    return start_receiver()


def inbox_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(inbox.inbox_table).order_by(inbox.inbox_table.c.id)).all()


def add_events(engine: sa.Engine, events: Iterable[tuple[str, str]]) -> list[int]:
    """Keep (source, delivery id) events as the receiver would; return their inbox ids."""
    rows = [
        inbox.Event(source, delivery, "push", json.dumps({"delivery": delivery}), 1_790_000_000.0)
        for source, delivery in events
    ]
    with engine.begin() as conn:
        assert all(inbox.insert_events(conn, rows))
    table = inbox.inbox_table
    with engine.connect() as conn:
        found = {
            (row.source, row.delivery_id): row.id
            for row in conn.execute(sa.select(table.c.id, table.c.source, table.c.delivery_id))
        }
    return [found[(row.source, row.delivery_id)] for row in rows]


def kill(engine: sa.Engine, ids: Iterable[int], reason: str = "payload has no repository") -> None:
    """Dead-letter inbox rows as the load job does when it gives up on them."""
    table = inbox.inbox_table
    with engine.begin() as conn:
        rows = conn.execute(sa.select(table).where(table.c.id.in_(list(ids)))).all()
        inbox.mark_dead(conn, "webhook_events", [(row, reason) for row in rows], time.time())


@contextmanager
def writer_held(receiver: Receiver) -> Iterator[Callable[[], None]]:
    """Stop the receiver's inbox writer process (SIGSTOP) for the block: events handed to it
    wait in its socket, unread. Yields `release`, which lets it go on (SIGCONT); the block's end
    does too."""
    process = receiver.app.state.writer.process
    assert process is not None and process.poll() is None, "the receiver has no writer running"
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            with contextlib.suppress(ProcessLookupError):  # the test may have killed it
                os.kill(process.pid, signal.SIGCONT)

    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield release
    finally:
        release()


def wait_until_handed(receiver: Receiver, count: int) -> None:
    """Until `count` events wait in the writer's socket (sent, not answered)."""
    writer = receiver.app.state.writer
    deadline = time.monotonic() + 10
    while writer.waiting < count:
        assert time.monotonic() < deadline, f"{writer.waiting} of {count} reached the writer"
        time.sleep(0.01)


def post_while_writer_holds(receiver: Receiver, first: str, later: list[str]) -> list[Reply]:
    """POST `first`, then every delivery of `later`, while the inbox writer is stopped; once
    all are handed to it, let it go on: it takes them all at once, as one group. Replies come
    back in order, `first`'s first."""
    with writer_held(receiver) as release, ThreadPoolExecutor(len(later) + 1) as pool:
        try:
            head = pool.submit(receiver.post_push, first)
            wait_until_handed(receiver, 1)
            rest = [pool.submit(receiver.post_push, delivery) for delivery in later]
            wait_until_handed(receiver, 1 + len(later))
        finally:
            release()
        return [head.result(), *(future.result() for future in rest)]
