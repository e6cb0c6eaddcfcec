"""The receiver's public edge, served as shipped (uvloop, httptools and the edge's protocol): a
request head over WEBHOOKS_MAX_HEADER_BYTES gets 431 before it ends, one at the limit is taken,
and heads of megabytes leave the real command's memory flat; a head that is not in within
WEBHOOKS_HEADER_TIMEOUT_SECONDS gets 408, on a new connection and on a kept-alive one, while
others are answered, and an idle kept-alive connection is closed; connections stalled mid-request
are not requests in progress, and past WEBHOOKS_MAX_PENDING_CONNECTIONS the longest waiting is
closed first, a fresh one never; requests really in progress are still bounded with 503; the
counts behind these bounds go back to zero whatever the requests did; the limits are settings;
and thousands of stalled connections against the real command leave every signed sender
answered 202 (e2e)."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import uvicorn

from automation_pipelines import settings
from automation_pipelines.reliability import store
from automation_pipelines.webhooks.app import DEFAULT_WORKERS, create_app, server_config
from automation_pipelines.webhooks.edge import EdgeLimits, OneSendPerTurn
from automation_pipelines.webhooks.probes import (
    STALLED_REQUEST,
    StalledConnections,
    post_signed,
)
from automation_pipelines_tests.webhooks.conftest import (
    Receiver,
    github_headers,
    inbox_rows,
    push_body,
    wait_until_handed,
    webhook_sources,
    writer_held,
)
from automation_pipelines_tests.webhooks.test_cli_events import SERVE_SECRET, serving

LIMIT = 4096


class EdgeReceiver(Receiver):
    """The app under uvicorn configured as `webhooks serve` configures it, with `limits`."""

    def __init__(self, app, limits: EdgeLimits) -> None:
        super().__init__(app)
        config = server_config(app, "127.0.0.1", self.port, limits, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="receiver", daemon=True)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def serve_edge(tmp_path: Path) -> Iterator[Callable[..., EdgeReceiver]]:
    """Start receivers with the edge's limits on a SQLite inbox of their own."""
    started: list[EdgeReceiver] = []
    url = f"sqlite:///{tmp_path / 'project.db'}"

    def start(limits: EdgeLimits | None = None, **options) -> EdgeReceiver:
        app = create_app(url, webhook_sources(), **options)
        receiver = EdgeReceiver(app, limits or EdgeLimits())
        receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in reversed(started):
        receiver.stop()
    store.dispose_all()


def inbox(receiver: EdgeReceiver) -> list[str]:
    return [row.delivery_id for row in inbox_rows(receiver.app.state.engine)]


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("automation_pipelines")]


def signed_request(delivery: str, head_size: int | None = None, close: bool = True):
    """A signed GitHub push as bytes on the wire, (head, body); with `head_size`, the head is
    padded to exactly that many bytes."""
    body = push_body(delivery)
    fields = {"Host": "x", "Content-Length": str(len(body)), **github_headers(body, delivery)}
    if close:
        fields["Connection"] = "close"
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    head = f"POST /hooks/github HTTP/1.1\r\n{lines}\r\n".encode()
    if head_size is not None:
        pad = head_size - len(head) - len(b"X-Pad: \r\n")
        head = head[:-2] + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"
        assert len(head) == head_size
    return head, body


def read_to_end(conn: socket.socket) -> bytes:
    """Everything the receiver sends until it closes the connection."""
    answer = b""
    try:
        while chunk := conn.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def read_response(conn: socket.socket) -> bytes:
    """One whole response on a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += conn.recv(4096)
    return head + b"\r\n\r\n" + rest


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_a_head_over_the_limit_gets_431_before_it_ends(serve_edge, caplog) -> None:
    """A megabyte of header with no end in sight: the answer comes without it."""
    caplog.set_level(logging.INFO, logger="automation_pipelines.webhooks")
    receiver = serve_edge(EdgeLimits(max_header_bytes=LIMIT))
    caplog.clear()
    with receiver.connect() as conn:
        conn.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1_000_000)
        answer = read_to_end(conn)

    assert status_of(answer) == 431, answer[:200]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert b"over 4096 bytes" in answer
    assert receiver.post_push("after").status == 202
    assert inbox(receiver) == ["after"]
    assert said(caplog) == ["a request head over 4096 bytes; answered 431"]


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 202), (LIMIT + 1, 431)])
def test_a_head_at_the_limit_is_taken_and_one_byte_more_is_not(serve_edge, size, status) -> None:
    receiver = serve_edge(EdgeLimits(max_header_bytes=LIMIT))
    head, body = signed_request("sized", head_size=size)
    with receiver.connect() as conn:
        conn.sendall(head + body)
        answer = read_to_end(conn)

    assert status_of(answer) == status, answer[:200]
    assert inbox(receiver) == (["sized"] if status == 202 else [])


HUGE_HEAD = 16 * 1024 * 1024
HUGE_CLIENTS = 8
#: How much the receiver's processes may grow while eight clients each send a 16 MiB head.
MEMORY_ALLOWANCE = 4 * 1024 * 1024


def send_huge_head(port: int, answered: threading.Semaphore, measured: threading.Event) -> bytes:
    """Stream a 16 MiB header (stopping once an answer shows), read the answer, and keep the
    connection until the receiver's memory has been read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        chunk, sent = b"a" * 65536, 0
        try:
            while sent < HUGE_HEAD and not select.select([conn], [], [], 0)[0]:
                conn.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = read_to_end(conn)
        except TimeoutError:
            answer = b""
        answered.release()
        measured.wait(60)
    return answer


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def test_heads_of_megabytes_leave_the_receivers_memory_flat(tmp_path: Path) -> None:
    """The real command with its default worker processes; eight clients at once, each
    streaming a 16 MiB header, are refused and cost the receiver next to nothing."""
    with serving(tmp_path, DEFAULT_WORKERS) as served:
        port = int(served.base_url.rsplit(":", 1)[1])
        for n in range(10):
            assert served.post(f"warm-{n}")[0] == 202
        before = tree_rss(served.process.pid)
        answered, measured = threading.Semaphore(0), threading.Event()
        with ThreadPoolExecutor(HUGE_CLIENTS) as pool:
            answers = [
                pool.submit(send_huge_head, port, answered, measured) for _ in range(HUGE_CLIENTS)
            ]
            try:
                for _ in range(HUGE_CLIENTS):
                    assert answered.acquire(timeout=120), "a client never finished its head"
                grown = tree_rss(served.process.pid) - before
            finally:
                measured.set()
            statuses = [status_of(answer.result()) for answer in answers]

        assert statuses == [431] * HUGE_CLIENTS
        assert grown < MEMORY_ALLOWANCE, f"the receiver grew by {grown / 2**20:.1f} MiB"
        assert served.post("after")[0] == 202


def test_a_head_that_trickles_in_gets_408_while_others_are_answered(serve_edge, caplog) -> None:
    """One byte every 0.3 s against a 1 s deadline."""
    caplog.set_level(logging.INFO, logger="automation_pipelines.webhooks")
    receiver = serve_edge(EdgeLimits(header_timeout=1))
    caplog.clear()
    head, _ = signed_request("trickled")
    answer = b""
    with receiver.connect() as conn:
        conn.settimeout(0.3)
        for n, byte in enumerate(head):
            try:
                answer = read_to_end(conn)
                break
            except TimeoutError:
                assert receiver.post_push(f"meanwhile-{n}").status == 202
                conn.sendall(bytes([byte]))

    assert status_of(answer) == 408, answer
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert b"did not arrive within 1 s" in answer
    rows = inbox(receiver)
    assert "trickled" not in rows and rows
    assert said(caplog) == ["a request head did not arrive within 1 s; answered 408"]


def test_a_connection_that_sends_nothing_gets_408(serve_edge) -> None:
    receiver = serve_edge(EdgeLimits(header_timeout=1))
    with receiver.connect() as conn:
        answer = read_to_end(conn)

    assert status_of(answer) == 408, answer


def test_a_kept_alive_connection_has_a_deadline_for_its_next_head(serve_edge) -> None:
    """After an answer on a kept-alive connection, the next head has its own deadline; a
    connection that sends nothing more is closed without one."""
    receiver = serve_edge(EdgeLimits(header_timeout=1))
    with receiver.connect() as slow, receiver.connect() as idle:
        for n, conn in enumerate((slow, idle)):
            head, body = signed_request(f"first-{n}", close=False)
            conn.sendall(head + body)
            assert status_of(read_response(conn)) == 202
        slow.sendall(b"POST /hooks/gith")
        slow_answer, idle_answer = read_to_end(slow), read_to_end(idle)

    assert status_of(slow_answer) == 408, slow_answer
    assert idle_answer == b""
    assert sorted(inbox(receiver)) == ["first-0", "first-1"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.01)


def test_connections_stalled_mid_body_are_not_requests_in_progress(serve_edge) -> None:
    """Twelve connections that sent their headers and one body byte, against a bound of four
    requests in progress: fresh senders are still answered 202, not 503."""
    receiver = serve_edge(EdgeLimits(max_in_progress=4))
    stalled = [receiver.connect() for _ in range(12)]
    try:
        for conn in stalled:
            conn.sendall(STALLED_REQUEST)
        tasks = receiver.server.server_state.tasks
        wait_until(lambda: len(tasks) >= 12, "the receiver read the stalled headers")

        statuses = [receiver.post_push(f"fresh-{n}").status for n in range(5)]
    finally:
        for conn in stalled:
            conn.close()

    assert statuses == [202] * 5


def test_past_the_bound_the_longest_waiting_connection_is_closed_first(serve_edge, caplog):
    """Six stalled connections, some mid-head and some mid-body, against a bound of four: the
    two oldest are closed as the fifth and sixth arrive, the third when a sender connects; the
    three newest are still open and finish their requests."""
    caplog.set_level(logging.INFO, logger="automation_pipelines.webhooks")
    receiver = serve_edge(EdgeLimits(max_pending=4, min_pending_age=0))
    caplog.clear()
    requests = [signed_request(f"stalled-{n}") for n in range(6)]
    parts = [
        (head[:40], head[40:] + body) if n % 2 == 0 else (head + body[:1], body[1:])
        for n, (head, body) in enumerate(requests)
    ]
    stalled = []
    try:
        for sent, _ in parts:
            conn = receiver.connect()
            conn.sendall(sent)
            stalled.append(conn)
        assert receiver.post_push("fresh").status == 202
        closed = [read_to_end(conn) for conn in stalled[:3]]
        for conn, (_, rest) in zip(stalled[3:], parts[3:], strict=True):
            conn.sendall(rest)
        finished = [read_to_end(conn) for conn in stalled[3:]]
    finally:
        for conn in stalled:
            conn.close()

    assert [status_of(answer) for answer in closed] == [408] * 3, closed
    assert all(b"closed to make room" in answer for answer in closed)
    assert [status_of(answer) for answer in finished] == [202] * 3, finished
    assert sorted(inbox(receiver)) == ["fresh", "stalled-3", "stalled-4", "stalled-5"]
    assert said(caplog) == [
        "closed a connection that had not sent a whole request, the longest waiting of more "
        "than 4 (WEBHOOKS_MAX_PENDING_CONNECTIONS) in this process; more are counted every 10 s"
    ]


def test_fresh_connections_are_never_closed_to_make_room(serve_edge) -> None:
    """Seven connections arriving together against a bound of two, all younger than the age
    below which none is closed: every one is answered."""
    receiver = serve_edge(EdgeLimits(max_pending=2, min_pending_age=60))
    requests = [signed_request(f"burst-{n}") for n in range(6)]
    conns = [receiver.connect() for _ in requests]
    try:
        for conn, (head, _) in zip(conns, requests, strict=True):
            conn.sendall(head[:40])
        assert receiver.post_push("fresh").status == 202
        for conn, (head, body) in zip(conns, requests, strict=True):
            conn.sendall(head[40:] + body)
        answers = [read_to_end(conn) for conn in conns]
    finally:
        for conn in conns:
            conn.close()

    assert [status_of(answer) for answer in answers] == [202] * 6, answers
    assert len(inbox(receiver)) == 7


def test_requests_in_progress_past_the_bound_get_503(serve_edge) -> None:
    """With the inbox writer stopped, two whole requests wait for it; a third,
    past a bound of two in progress, is told to come back (503), and once the writer goes on
    the two are answered 202 and new ones are taken again."""
    receiver = serve_edge(EdgeLimits(max_in_progress=2))
    with writer_held(receiver) as release, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(receiver.post_push, "first")
            wait_until_handed(receiver, 1)
            second = pool.submit(receiver.post_push, "second")
            wait_until_handed(receiver, 2)
            third = receiver.post_push("third")
        finally:
            release()
        held = [first.result().status, second.result().status]

    assert (held, third.status) == ([202, 202], 503)
    assert receiver.post_push("fourth").status == 202
    assert sorted(inbox(receiver)) == ["first", "fourth", "second"]


def test_every_kind_of_request_leaves_the_edge_counting_nothing(serve_edge) -> None:
    """The counts the bounds rest on go back to zero once the connections are gone, whatever
    their requests did: a count that leaked would in time close or refuse everyone."""
    receiver = serve_edge(body_timeout=1)
    edge = receiver.server.config.http_protocol_class.edge
    head, body = signed_request("kept", close=False)
    with receiver.connect() as kept:  # two requests on one connection
        kept.sendall(head + body)
        assert status_of(read_response(kept)) == 202
        kept.sendall(head + body)
        assert status_of(read_response(kept)) == 200
        wait_until(lambda: not edge.in_progress, "no request in progress on a kept connection")
        assert len(edge.pending) == 1  # idle, kept alive: waiting for its next request
    assert receiver.post_push("alone").status == 202
    assert receiver.request("POST", "/hooks/gitlab", b"{}").status == 404
    assert receiver.request("GET", "/healthz").status == 200
    big = b'{"pad": "' + b"x" * 2000 + b'"}'
    assert receiver.request("POST", "/hooks/github", big, github_headers(big, "big")).status == 413
    head, body = signed_request("cut")
    for sent in (head[:30], head + body[:5]):  # the sender hangs up mid-head and mid-body
        with receiver.connect() as conn:
            conn.sendall(sent)
    with receiver.connect() as slow:  # the body does not come: 408 from the handler
        slow.sendall(head + body[:5])
        assert status_of(read_to_end(slow)) == 408

    wait_until(lambda: not edge.pending and not edge.in_progress, "the counts went back to 0")


def test_the_edge_limits_come_from_settings(monkeypatch) -> None:
    for name in (
        "WEBHOOKS_MAX_HEADER_BYTES",
        "WEBHOOKS_HEADER_TIMEOUT_SECONDS",
        "WEBHOOKS_MAX_PENDING_CONNECTIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert EdgeLimits.from_settings() == EdgeLimits()

    monkeypatch.setenv("WEBHOOKS_MAX_HEADER_BYTES", "32768")
    monkeypatch.setenv("WEBHOOKS_HEADER_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("WEBHOOKS_MAX_PENDING_CONNECTIONS", "300")
    limits = EdgeLimits.from_settings()
    assert (limits.max_header_bytes, limits.header_timeout, limits.max_pending) == (32768, 5, 300)

    monkeypatch.setenv("WEBHOOKS_MAX_HEADER_BYTES", "100")
    with pytest.raises(settings.ConfigurationError, match="WEBHOOKS_MAX_HEADER_BYTES"):
        EdgeLimits.from_settings()


#: More stalled connections than the 2,000 open requests each worker process used to allow.
STALLED = 2100 * DEFAULT_WORKERS
SIEGE_SECONDS = 10


@pytest.mark.e2e
def test_thousands_of_stalled_connections_starve_no_signed_sender(tmp_path: Path) -> None:
    """`webhooks serve` with its default workers, while thousands of connections that sent their
    headers and one body byte are held (one the receiver closes is opened again at once): a
    signed sender posting all the while gets 202 for every event, and the receiver answers
    afterwards as before."""
    with serving(tmp_path, DEFAULT_WORKERS) as served:
        port = int(served.base_url.rsplit(":", 1)[1])
        with StalledConnections(port, STALLED) as stalled:
            outcomes = []
            deadline = time.monotonic() + SIEGE_SECONDS
            while time.monotonic() < deadline:
                delivery = f"legit-{len(outcomes)}"
                outcomes.append((delivery, post_signed(port, delivery, SERVE_SECRET, 5)[0]))
                time.sleep(0.02)
            reopened = stalled.opened - STALLED

        statuses = [status for _, status in outcomes]
        assert statuses and set(statuses) == {202}, (statuses, reopened, stalled.answers)
        assert served.post("after")[0] == 202
        assert set(served.inbox()) == {delivery for delivery, _ in outcomes} | {"after"}


@pytest.fixture
def closing_server() -> Iterator[int]:
    """A port whose server closes every connection the moment it accepts it, as a receiver past
    its limit on pending connections closes the oldest for each new one."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def test_the_stalled_clients_start_once_each_has_connected_though_the_server_closes_them(
    closing_server: int,
) -> None:
    """The siege is up once each client has had its connection, even where never all of them
    are held at one instant (every one is closed at once here; on a slow machine, a receiver
    at its pending limit does the same to the oldest): the probe used to wait for them all to be
    held together, and timed out."""
    stalled = StalledConnections(closing_server, 300)
    try:
        stalled.start(timeout=20)
        assert stalled.connected == 300
        deadline = time.monotonic() + 10
        while stalled.closed_by_receiver < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stalled.opened > 300 and stalled.closed_by_receiver >= 300  # they come back
    finally:
        stalled.stop()


class RecordingTransport:
    """A connection's transport that records what the protocol does with it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 3001)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", b""))

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    @property
    def writes(self) -> list[bytes]:
        return [data for call, data in self.calls if call == "write"]


def unknown_source_request(close: bool) -> bytes:
    fields = "Host: x\r\nContent-Length: 2\r\n" + ("Connection: close\r\n" if close else "")
    return f"POST /hooks/nowhere HTTP/1.1\r\n{fields}\r\n{{}}".encode()


def answers_in(data: bytes) -> list[bytes]:
    """The whole HTTP answers in `data`, each head with its body."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers


@pytest.mark.parametrize("pipelined", [1, 3])
def test_each_answer_leaves_in_one_send(tmp_path: Path, pipelined: int) -> None:
    """The receiver's protocol, with the receiver's app, sends each answer (head and body) in
    one write to the connection, and requests that came together are answered together in
    order; a `Connection: close` answer is sent before the connection closes. uvicorn alone
    writes a head and its body apart: two sends, two packets, two wake-ups of the client."""
    from uvicorn.server import ServerState

    app = create_app(f"sqlite:///{tmp_path / 'project.db'}", webhook_sources())
    config = server_config(app, "127.0.0.1", 0, EdgeLimits(), log_level="warning", loop="asyncio")
    config.load()
    transport = RecordingTransport()

    async def converse() -> None:
        protocol = config.http_protocol_class(
            config=config, server_state=ServerState(), app_state={}
        )
        protocol.connection_made(transport)
        requests = [unknown_source_request(close=i == pipelined - 1) for i in range(pipelined)]
        protocol.data_received(b"".join(requests))
        for _ in range(1000):  # at most 10 s on a busy machine; a few turns of the loop here
            if transport.closing:
                break
            await asyncio.sleep(0.01)
        protocol.connection_lost(None)

    asyncio.run(converse())
    assert transport.calls[-1] == ("close", b""), transport.calls
    # One write per turn of the loop that answered: never a head without its body.
    assert all(data.endswith(b"}") for data in transport.writes), transport.writes
    assert len(transport.writes) <= pipelined
    answers = [answer for data in transport.writes for answer in answers_in(data)]
    assert len(answers) == pipelined, transport.calls
    assert all(status_of(answer) == 404 and b"unknown source" in answer for answer in answers)
    store.dispose_all()


def test_a_joined_send_keeps_order_and_every_byte() -> None:
    """What one turn writes goes out once, whole and in order, right after the turn; a closing,
    or the end of the output, first sends what is held; an abort sends nothing more; a buffer
    the caller changes after writing it is sent as it was."""

    async def scenario() -> list[list[tuple[str, bytes]]]:
        loop = asyncio.get_running_loop()
        seen = []
        for ending in ("close", "write_eof", "abort", "turn"):
            transport = RecordingTransport()
            joined = OneSendPerTurn(transport, loop)
            buffer = bytearray(b"head|")
            joined.write(buffer)
            buffer[:] = b"XXXX|"
            joined.write(b"")
            joined.writelines([b"body|", memoryview(b"tail")])
            assert transport.calls == []  # nothing leaves within the turn
            if ending == "turn":
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            else:
                getattr(joined, ending)()
            await asyncio.sleep(0)
            joined.write(b"late")  # after a close or an abort: never sent
            await asyncio.sleep(0)
            seen.append(transport.calls)
        return seen

    closed, ended, aborted, turned = asyncio.run(scenario())
    assert closed == [("write", b"head|body|tail"), ("close", b"")]
    assert ended[:2] == [("write", b"head|body|tail"), ("write_eof", b"")]
    assert aborted == [("abort", b"")]
    assert turned == [("write", b"head|body|tail"), ("write", b"late")]
