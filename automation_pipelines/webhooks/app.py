"""The receiver: `POST /hooks/{source}` verifies, then commits to the inbox, then answers 2xx.

Requests are committed in groups by the inbox writer, a process of its own (`writer.py`):
every request waiting when a commit starts shares that transaction (and its fsync), so the
durable commit per event stays cheap under load while each sender still hears back only after
its event is on disk.

Nothing a request carries can earn it a 5xx, which senders retry for days: a body that is not a
JSON object or nests deeper than `payloads.MAX_DEPTH`, anything else that makes reading it fail,
and an event whose values the database refuses (it alone; its group commits without it) are
400s. Only a database that cannot commit at all answers 503, so the sender delivers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from automation_pipelines import settings
from automation_pipelines.reliability import store
from automation_pipelines.reliability.processes import run_forked
from automation_pipelines.webhooks.edge import EdgeLimits, closed_by_edge, edge_protocol
from automation_pipelines.webhooks.inbox import Event
from automation_pipelines.webhooks.payloads import PayloadError, object_fields, parse_object
from automation_pipelines.webhooks.sources import (
    PREVIOUS_SUFFIX,
    MissingSecret,
    SourceConfig,
    build_verifier,
    load_sources,
)
from automation_pipelines.webhooks.verifiers import Rejected, RotatingVerifier, Verifier
from automation_pipelines.webhooks.writer import (
    MAX_GROUP,
    InboxRefused,
    InboxUnavailable,
    InboxWriter,
    run_writer,
    socket_pair,
    writer_settings,
)

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("automation_pipelines.webhooks")


@dataclass
class Source:
    """A configured sender and its verifier, or why it cannot be used yet."""

    config: SourceConfig
    verifier: Verifier | None
    problem: str | None = None

    def state(self, now: float) -> str:
        """What /healthz says of it: ready, closed and why, or ready during a rotation."""
        if self.verifier is None:
            return f"disabled: {self.problem}"
        if not isinstance(self.verifier, RotatingVerifier):
            return "ready"
        until = datetime.fromtimestamp(self.verifier.until, UTC).isoformat(timespec="seconds")
        previous = self.config.secret_env + PREVIOUS_SUFFIX
        if now < self.verifier.until:
            return f"ready; the previous secret ({previous}) is accepted until {until}"
        return f"ready; the previous secret's window ended at {until}: unset {previous}"


def prepare_sources(
    configs: Mapping[str, SourceConfig], environ: Mapping[str, str] | None = None
) -> dict[str, Source]:
    """A verifier per source; a source whose secret is not set answers 503 and says so."""
    prepared = {}
    for name, config in configs.items():
        try:
            prepared[name] = Source(config, build_verifier(config, environ))
        except (MissingSecret, ValueError) as exc:  # unset, or set to an unusable value
            log.error("webhook source %r is disabled: %s", name, exc)
            prepared[name] = Source(config, None, str(exc))
    return prepared


def commit_lock_path(url: str) -> Path | None:
    """The file inbox writers on one SQLite database take turns at commits with (None
    elsewhere: PostgreSQL lets their inserts run side by side). One `serve` has one writer;
    this keeps a second receiver on the same database (or a restarted one whose old writer is
    still finishing) out of SQLite's busy handler."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(f"{parsed.database}.commit-lock")


class BodyDeadlines:
    """Deadlines for reading request bodies, on one timer of the event loop for them all.

    `asyncio.timeout` arms and disarms a timer of the loop per request, about 8 us each time
    with uvloop: a twentieth of what a request costs the receiver. Every body here has the
    same allowance, so the deadlines come in the order they are set: one timer, armed for the
    oldest one still waiting, cancels a task whose body is late, as `asyncio.timeout` would;
    `expired` tells that cancellation from any other (the server stopping)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._waiting: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def enter(self, task: asyncio.Task) -> None:
        loop = task.get_loop()
        deadline = loop.time() + self.seconds
        self._waiting[task] = deadline
        if self._timer is None or self._timer_loop is not loop:  # an app served again
            self._timer, self._timer_loop = loop.call_at(deadline, self._check, loop), loop

    def leave(self, task: asyncio.Task) -> None:
        self._waiting.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task) -> bool:
        """Whether this task was cancelled for its late body (asked once, after that
        cancellation; it is taken back, so the task goes on as if it never happened)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        waiting = self._waiting
        while waiting:
            task, deadline = next(iter(waiting.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._check, loop)
                return
            del waiting[task]
            if not task.done() and task.get_loop() is loop:  # not one of a loop gone since
                self._expired.add(task)
                task.cancel()


class _Disconnected(Exception):
    """The sender hung up before its body was read; nobody is left to answer."""


async def _read_limited(scope, receive, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past `limit` bytes."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            if value.isdigit() and int(value) > limit:
                return None
            break
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send, status: int, content: dict, *, close: bool = False) -> None:
    """A JSON answer, byte for byte as Starlette's JSONResponse would render it (orjson writes
    the same compact UTF-8, 20 times as fast); with `close`, the connection ends after it (the
    rest of a body that never came cannot be read)."""
    data = orjson.dumps(content)
    headers = [(b"content-length", str(len(data)).encode()), (b"content-type", _JSON)]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


_JSON = b"application/json"
_HOOKS = "/hooks/"


class ReceiverApp:
    """The receiver's ASGI app. `POST /hooks/<source>` goes straight to its handler; everything
    else (health, lifespan, unknown paths and methods) through Starlette. Starlette's routing and
    middleware cost about 55 us a request, a sixth of a durable delivery's whole cost."""

    def __init__(self, hooks, rest: Starlette) -> None:
        self.hooks = hooks
        self.rest = rest

    @property
    def state(self):
        return self.rest.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path.startswith(_HOOKS):
                name = path[len(_HOOKS) :]
                if name and "/" not in name:
                    await self.hooks(name, scope, receive, send)
                    return
        await self.rest(scope, receive, send)


#: How long a sender has, once its headers are in, to send the whole body
#: (WEBHOOKS_BODY_TIMEOUT_SECONDS). A real sender's few kilobytes take milliseconds; a client
#: that trickles its body would otherwise hold a request, and its place, for as long as it likes.
BODY_TIMEOUT_SECONDS = 10


def create_app(
    database_url: str | None = None,
    sources: Mapping[str, Source] | None = None,
    *,
    max_group: int = MAX_GROUP,
    body_timeout: float | None = None,
    writer_socket=None,
) -> ReceiverApp:
    """The receiver's ASGI app on the project database (or `database_url`)."""
    if body_timeout is None:
        body_timeout = settings.integer(
            "WEBHOOKS_BODY_TIMEOUT_SECONDS", BODY_TIMEOUT_SECONDS, minimum=1, maximum=3600
        )
    url = database_url or store.database_url()
    reloadable = sources is None
    prepared = sources if sources is not None else prepare_sources(load_sources())
    # Lazy: with its database down the receiver still starts, answers 503 (senders deliver
    # again) and makes its tables on the first commit once the database is back.
    engine = store.engine(url, lazy=True)
    writer = InboxWriter(
        url, max_group=max_group, lock_path=commit_lock_path(url), sock=writer_socket
    )
    deadlines = BodyDeadlines(body_timeout)

    async def take_delivery(name: str, scope, receive, send) -> None:
        source = prepared.get(name)
        if source is None:
            return await _reply(send, 404, {"error": f"unknown source {name!r}"})
        if source.verifier is None:
            message = f"source {name!r} is not configured on this server"
            return await _reply(send, 503, {"error": message})
        task = asyncio.current_task()
        deadlines.enter(task)
        try:
            body = await _read_limited(scope, receive, source.config.max_body_bytes)
        except _Disconnected:
            if not closed_by_edge(scope):  # if it did, it has logged it
                log.info("%s delivery: the sender hung up before its body was read", name)
            return None
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            log.info("%s delivery: no whole body within %g s; answered 408", name, body_timeout)
            message = f"the body did not arrive within {body_timeout:g} s"
            return await _reply(send, 408, {"error": message}, close=True)
        finally:
            deadlines.leave(task)
        if body is None:
            return await _reply(
                send, 413, {"error": f"body over {source.config.max_body_bytes} bytes"}
            )
        status, content = await accept(name, source, scope, body)
        return await _reply(send, status, content)

    async def accept(name: str, source: Source, scope, body: bytes) -> tuple[int, dict]:
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        try:
            source.verifier.check_signature(body, headers, time.time())
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return 400, {"error": f"body is not JSON in UTF-8: {exc}"}
            keys = source.verifier.payload_keys
            if keys is None:
                payload = parse_object(text, what="body")
            else:
                payload = object_fields(text, keys, what="body")
            delivery = source.verifier.identify(headers, payload)
        except Rejected as exc:
            log.info("rejected %s delivery: %s %s", name, exc.status, exc)
            return exc.status, {"error": str(exc)}
        except PayloadError as exc:
            log.info("rejected %s delivery: 400 %s", name, exc)
            return 400, {"error": str(exc)}
        except Exception:
            # Whatever in this request made reading it fail will fail on every delivery: a 5xx
            # would have the sender retry it for days, so it is a 400, and logged for us.
            log.exception("could not read a %s delivery; answered 400", name)
            return 400, {"error": "the request could not be read (see the receiver's log)"}
        event = Event(name, delivery.delivery_id, delivery.event_type, text, time.time())
        try:
            added = await writer.put(event)
        except InboxUnavailable:
            return 503, {"error": "the inbox cannot commit right now; deliver again later"}
        except InboxRefused as exc:
            return 400, {"error": f"the inbox cannot store this event: {exc}"}
        status = "accepted" if added else "duplicate"
        return (202 if added else 200), {"status": status, "delivery_id": delivery.delivery_id}

    async def hooks_route(scope, receive, send) -> None:
        await take_delivery(scope["path_params"]["source"], scope, receive, send)

    def database_ok() -> bool:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    async def healthz(_request: Request) -> JSONResponse:
        with contextlib.suppress(InboxUnavailable):  # a writer of its own that died: a new one
            await writer.revive()
        ok = writer.alive and await run_in_threadpool(database_ok)
        return JSONResponse(
            {
                "status": "ok" if ok else "unavailable",
                "writer": "running" if writer.alive else "stopped",
                "sources": {name: s.state(time.time()) for name, s in sorted(prepared.items())},
            },
            status_code=200 if ok else 503,
        )

    def reload_sources() -> None:
        """SIGHUP: read `.env` and the sources file again and key every source with what they
        say now (a rotated secret, a new source); if either cannot be read, nothing changes."""
        try:
            settings.reload_project_env()
            fresh = prepare_sources(load_sources())
        except Exception as exc:
            log.error("webhook sources not reloaded, the ones before stay: %s", exc)
            return
        prepared.clear()
        prepared.update(fresh)
        now = time.time()
        states = ", ".join(f"{name} {s.state(now)}" for name, s in sorted(prepared.items()))
        # The pid says which worker read them: each one of `--workers` reads on its own.
        log.info("webhook sources reloaded in process %d: %s", os.getpid(), states)

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        if reloadable:
            # Only the main thread may take signals (the tests serve from other threads).
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_sources)
                # `serve` holds SIGHUP blocked while the process starts: one sent meanwhile
                # is taken now instead of being lost (or, by default, ending the process).
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()

    app = Starlette(
        routes=[
            Route("/hooks/{source}", hooks_route, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.writer = writer
    app.state.engine = engine
    app.state.sources = prepared
    return ReceiverApp(take_delivery, app)


#: Receiver processes on one listening socket (`webhooks serve --workers`, WEBHOOKS_WORKERS). A
#: process verifies, parses and answers on one core (Python's interpreter lock), so a second
#: one is what lets a 2-core machine take more events; they share one inbox writer.
DEFAULT_WORKERS = 2


def serve(
    host: str,
    port: int,
    database_url: str | None = None,
    *,
    max_group: int | None = None,
    fd: int | None = None,
    workers: int = 1,
) -> int:
    """Run the receiver until SIGINT/SIGTERM (uvicorn handles both), in this process (with an
    inbox writer process of its own) or in `workers` forked ones sharing the listening socket
    and one forked inbox writer; the exit code. With `fd`, serve the
    listening socket the supervisor holds open: while this process restarts, new connections
    wait in that socket's backlog instead of being refused."""
    import socket

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    limits = EdgeLimits.from_settings()  # a bad value stops the start, not each worker
    listening = socket.socket(fileno=fd) if fd is not None else None
    if workers <= 1:
        # Until the app takes SIGHUP (in its lifespan), a SIGHUP waits instead of ending it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        return _serve_here(host, port, database_url, max_group, listening, limits)
    if listening is None:  # bound before the fork, so the workers share it (IPv6 too)
        listening = uvicorn.Config(app=None, host=host, port=port).bind_socket()
    url = database_url or store.database_url()
    lock = commit_lock_path(url)
    # SQLite takes one write at a time: one writer serves every receiver. PostgreSQL takes
    # inserts side by side: a writer per receiver.
    writers = 1 if lock is not None else workers
    log.info(
        "receiver: %d worker processes and %d inbox writer(s) on %s:%d",
        workers,
        writers,
        host,
        port,
    )
    pairs = [socket_pair() for _ in range(workers)]
    hello = writer_settings(url, max_group or MAX_GROUP, lock)
    for ours, _ in pairs:
        ours.sendall(hello)

    def forked(number: int) -> int:
        """Processes 0 to workers - 1 receive, each on its own link; the others write, writer k
        for the links k, k + writers, ... Each closes the ends it does not use, so a link's far
        end sees it end."""
        if number >= workers:
            listening.close()
            served = range(number - workers, workers, writers)
            for index, (ours, theirs) in enumerate(pairs):
                ours.close()
                if index not in served:
                    theirs.close()
            return run_writer([pairs[index][1] for index in served])
        for index, (ours, theirs) in enumerate(pairs):
            theirs.close()
            if index != number:
                ours.close()
        link = pairs[number][0]
        return _serve_here(host, port, database_url, max_group, listening, limits, link)

    def close_links() -> None:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()

    names = [f"receiver {n} of {workers}" for n in range(1, workers + 1)]
    names += [f"inbox writer {n} of {writers}" for n in range(1, writers + 1)]
    return run_forked(
        workers + writers, forked, forward=(signal.SIGHUP,), forked=close_links, names=names
    )


def server_config(app, host: str, port: int, limits: EdgeLimits, **options) -> uvicorn.Config:
    """How the receiver is served: uvloop, and httptools behind the edge's limits (`edge.py`),
    which also bound the requests in progress (uvicorn's `limit_concurrency` would count stalled
    connections too and answer fresh senders 503)."""
    import uvicorn

    defaults = {
        "loop": "uvloop",
        "http": edge_protocol(limits),
        "access_log": False,
        "log_level": "info",
        "timeout_graceful_shutdown": 5,
        # Nothing here reads the client's address, which uvicorn's proxy-headers middleware
        # would work out from X-Forwarded-For on every request.
        "proxy_headers": False,
    }
    return uvicorn.Config(app, host=host, port=port, **{**defaults, **options})


def _serve_here(
    host, port, database_url, max_group, listening, limits: EdgeLimits, writer_socket=None
) -> int:
    import uvicorn

    app = create_app(database_url, max_group=max_group or MAX_GROUP, writer_socket=writer_socket)
    config = server_config(app, host, port, limits)
    sockets = [listening] if listening is not None else None
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it handled
        uvicorn.Server(config).run(sockets=sockets)
    return 0
