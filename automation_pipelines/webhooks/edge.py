"""The receiver's public edge: what a connection may cost before it has sent a whole request.

uvicorn's httptools protocol reads a request head of any size and waits for it for ever, and its
`limit_concurrency` counts every open connection, so clients that never finish a request could
exhaust memory or make every fresh sender get 503. `EdgeProtocol` is that protocol with bounds:
- a request head over `max_header_bytes` is answered 431 as soon as it passes the limit, and
  the rest of it is read and dropped, never kept;
- a head has `header_timeout` seconds, from the connection's accept or from the answer before it
  on a kept-alive connection, then gets 408; an idle kept-alive connection is closed then too;
- connections still waiting for a whole request are "pending"; past `max_pending` in one process
  the one pending longest is closed (408), never one younger than `min_pending_age`, so slow
  clients cannot starve fast ones and a burst of fast ones cannot push each other out;
- 503 is answered only past `max_in_progress` requests that are whole and being answered: a
  stalled connection is pending, not work.

Each server (each worker process) has its own `Edge`; the fast path adds a few comparisons and
one timer per request, like uvicorn's keep-alive timer.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from automation_pipelines import settings

log = logging.getLogger("automation_pipelines.webhooks")

#: The request line and headers together (WEBHOOKS_MAX_HEADER_BYTES). A webhook's head is one or
#: two kilobytes; Node.js allows 16 KiB too.
MAX_HEADER_BYTES = 16 * 1024
#: WEBHOOKS_HEADER_TIMEOUT_SECONDS: a sender's head takes milliseconds.
HEADER_TIMEOUT_SECONDS = 10
#: WEBHOOKS_MAX_PENDING_CONNECTIONS, per receiver process.
MAX_PENDING_CONNECTIONS = 1000
#: Whole requests being answered (mostly waiting for their commit) before new ones get 503.
MAX_IN_PROGRESS = 2000
#: A connection this young is never closed to make room: under a burst the accept loop takes
#: many at once before reading any, and none of them has had its chance yet.
MIN_PENDING_AGE_SECONDS = 1.0
#: How long the rest of a refused head is read and dropped, so the sender can read its 431
#: (closing with its bytes unread would reset the connection and lose the answer).
LINGER_SECONDS = 2.0
#: Closings and 503s past the first are logged as counts, at most once in this many seconds.
REPORT_SECONDS = 10.0

_EXTENSION = "automation_pipelines.edge"


@dataclass(frozen=True)
class EdgeLimits:
    """The edge's bounds; `from_settings` reads the operator's."""

    max_header_bytes: int = MAX_HEADER_BYTES
    header_timeout: float = HEADER_TIMEOUT_SECONDS
    max_pending: int = MAX_PENDING_CONNECTIONS
    max_in_progress: int = MAX_IN_PROGRESS
    min_pending_age: float = MIN_PENDING_AGE_SECONDS

    @classmethod
    def from_settings(cls) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.integer(
                "WEBHOOKS_MAX_HEADER_BYTES", MAX_HEADER_BYTES, minimum=1024, maximum=1024 * 1024
            ),
            header_timeout=settings.integer(
                "WEBHOOKS_HEADER_TIMEOUT_SECONDS", HEADER_TIMEOUT_SECONDS, minimum=1, maximum=3600
            ),
            max_pending=settings.integer(
                "WEBHOOKS_MAX_PENDING_CONNECTIONS",
                MAX_PENDING_CONNECTIONS,
                minimum=1,
                maximum=1_000_000,
            ),
        )


def closed_by_edge(scope) -> bool:
    """Whether the edge closed this request's connection to make room (and has logged it), so
    the handler that sees it disconnect need not say the sender hung up."""
    return _EXTENSION in scope.get("extensions", ())


class Edge:
    """One server's connections that have not sent a whole request, longest waiting first, and
    how many requests are being answered."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.pending: OrderedDict[EdgeProtocol, float] = OrderedDict()
        self.in_progress = 0
        self._unreported: Counter[str] = Counter()
        self._report = None

    def wait(self, protocol: EdgeProtocol) -> None:
        """`protocol` waits for a request; close the longest waiting if that makes too many."""
        pending = self.pending
        if protocol in pending:
            return
        now = protocol.loop.time()
        pending[protocol] = now
        if len(pending) > self.limits.max_pending:
            cutoff = now - self.limits.min_pending_age
            while len(pending) > self.limits.max_pending:
                oldest, since = next(iter(pending.items()))
                if since > cutoff:
                    break
                del pending[oldest]
                oldest.make_room()
                self.note("closed", protocol)

    def done(self, protocol: EdgeProtocol) -> None:
        self.pending.pop(protocol, None)

    def note(self, what: str, protocol: EdgeProtocol) -> None:
        """Log the first closing (or 503) at once and the ones after it as a count, at most
        once every REPORT_SECONDS: an attacker's pace must not set the log's."""
        if self._report is None:
            log.warning(_FIRST[what], self._figures())
            self._report = protocol.loop.call_later(REPORT_SECONDS, self._flush, protocol.loop)
        else:
            self._unreported[what] += 1

    def _flush(self, loop) -> None:
        counts, self._unreported = self._unreported, Counter()
        for what, count in sorted(counts.items()):
            log.warning(_MORE[what], {**self._figures(), "count": count})
        self._report = loop.call_later(REPORT_SECONDS, self._flush, loop) if counts else None

    def _figures(self) -> dict:
        limits = self.limits
        return {
            "pending": limits.max_pending,
            "in_progress": limits.max_in_progress,
            "every": REPORT_SECONDS,
        }


_FIRST = {
    "closed": "closed a connection that had not sent a whole request, the longest waiting of "
    "more than %(pending)d (WEBHOOKS_MAX_PENDING_CONNECTIONS) in this process; more are "
    "counted every %(every)g s",
    "busy": "answered 503: %(in_progress)d requests in progress in this process, the most it "
    "takes; more are counted every %(every)g s",
}
_MORE = {
    "closed": "closed %(count)d more connection(s) in the last %(every)g s to keep to "
    "WEBHOOKS_MAX_PENDING_CONNECTIONS=%(pending)d",
    "busy": "answered 503 to %(count)d more request(s) in the last %(every)g s: "
    "%(in_progress)d in progress, the most it takes",
}


class OneSendPerTurn:
    """A connection's transport that sends what is written to it during one turn of the event
    loop as one piece, right after that turn.

    uvicorn writes an answer's head and its body separately, and each write is a send of its
    own: two packets the client reads, and wakes up for, one after the other. Joined, each
    answer costs both sides a system call and a wake-up less (about 9% more events per second
    in bench_webhooks). Closing, or ending the output, first sends what is held."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport, loop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data) -> None:
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)  # the caller may change its buffer after the call
        held = self._held
        if held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            held.append(data)

    def writelines(self, lines) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """A protocol class for uvicorn's `http=`, with an `Edge` of its own: make one per server."""
    return type("EdgeProtocol", (EdgeProtocol,), {"edge": Edge(limits)})


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within the edge's limits (see the module's docstring)."""

    edge: Edge

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the edge counts requests in progress instead
        self._max_head = self.edge.limits.max_header_bytes
        #: Bytes the head being read may still take; None while a body is read.
        self._head_room: int | None = self._max_head
        self._head_begun = False
        self._deadline = None
        self._working = 0
        #: After a 431 or a websocket upgrade, what this protocol is given is dropped.
        self._dropping = False

    # -- the connection's life

    def connection_made(self, transport) -> None:
        super().connection_made(OneSendPerTurn(transport, self.loop))
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._forget()
        self._dropping, self._head_room = True, 0  # the websocket protocol reads from now on
        super().handle_websocket_upgrade()

    def _forget(self) -> None:
        self.edge.done(self)
        self._cancel_deadline()
        if self._working:
            self.edge.in_progress -= self._working
            self._working = 0

    def _await_head(self) -> None:
        """Waiting for a request from now: pending, with a deadline for its head."""
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.edge.limits.header_timeout, self._head_late)
        self.edge.wait(self)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- reading

    def data_received(self, data: bytes) -> None:
        room = self._head_room
        if room is None or len(data) <= room:
            if room is not None:
                self._head_room = room - len(data)
            super().data_received(data)
            return
        if self._dropping:
            return
        # This would take the head past the limit: feed what the limit allows, then see whether
        # the head ended within it.
        self._head_room = 0
        if room:
            super().data_received(data[:room])
        if self.transport.is_closing() or self._dropping:
            return
        if self._head_room == 0:
            self._refuse_head()
        else:
            self.data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._head_room = None
        self._head_begun = False
        self._cancel_deadline()
        edge = self.edge
        if edge.in_progress < edge.limits.max_in_progress:
            super().on_headers_complete()
            return
        edge.note("busy", self)
        app, self.app = self.app, service_unavailable
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_room = self._max_head
        if self.cycle is not None and not self.cycle.response_complete:
            # Whole, and being answered: work, no longer pending.
            self._working += 1
            self.edge.in_progress += 1
            self.edge.done(self)

    def on_response_complete(self) -> None:
        if self._working:
            self._working -= 1
            self.edge.in_progress -= 1
        super().on_response_complete()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle.response_complete:
            self._await_head()  # kept alive, idle until the next request
        elif cycle.more_body:
            self.edge.wait(self)  # a pipelined request whose body is still to come

    # -- giving up on a connection

    def _handler_running(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.edge.done(self)
        if self.cycle is not None and not self._head_begun:
            self.transport.close()  # kept alive and idle: nothing was asked, nothing to answer
            return
        timeout = self.edge.limits.header_timeout
        log.info("a request head did not arrive within %g s; answered 408", timeout)
        self._answer(408, f"the request head did not arrive within {timeout:g} s")
        self.transport.close()

    def make_room(self) -> None:
        """Close this connection, the one pending longest, for a newer one."""
        if self.transport.is_closing():
            return
        self._cancel_deadline()
        message = "the request did not arrive in time; closed to make room for others"
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # mid-body: its handler waits
            cycle.scope.setdefault("extensions", {})[_EXTENSION] = {}
            if not cycle.response_started:
                cycle.response_started = True
                self._answer(408, message)
        elif cycle is None or self._head_begun:
            self._answer(408, message)
        self.transport.close()

    def _refuse_head(self) -> None:
        """431, then read and drop what else comes for a while, so the sender reads it."""
        self._dropping = True
        self._cancel_deadline()
        self.edge.done(self)
        if self._handler_running():  # a pipelined head behind an answer still being written
            self.transport.close()
            return
        limit = self._max_head
        log.info("a request head over %d bytes; answered 431", limit)
        self._answer(431, f"the request head is over {limit} bytes")
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _answer(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
