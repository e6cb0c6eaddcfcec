"""The production topology behind its reverse proxy: `automation-pipelines prod` with PROXY_PORT
on a real PostgreSQL, Debian's nginx terminating TLS with a certificate the test makes.

Through the proxy, one topology for every scenario: a signed webhook gets 202 without UI
credentials and reaches the warehouse; a body of exactly the receiver's limit is accepted and one
byte more is refused with 413 by the proxy; a client over its rate gets 429 while another address
still gets 202; so does a client over its connection limit, until it lets go; a client that stalls
in its headers is cut off; 2,000 connections from 2,000 addresses that stall in their bodies are
held open while every signed POST of a legitimate sender gets 202 (the latencies are printed, not
asserted), and a stalled sender that finishes late is served. The UI answers 401 without or with
wrong credentials, 200 with right ones, and its GraphQL works over HTTP and over a websocket.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import socket
import ssl
import statistics
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import store
from automation_pipelines.webhooks.senders import github_headers
from automation_pipelines.webhooks.sources import load_sources
from automation_pipelines_tests.automations.webhook_events.events import push
from automation_pipelines_tests.e2e.harness import wait_for
from automation_pipelines_tests.e2e.test_production_topology import SECRET, Topology
from automation_pipelines_tests.test_proxy import certificate, htpasswd, require_nginx

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RATE, BURST, PER_CLIENT = 4, 10, 8  # hooks per second and burst, requests at once, per address
STALLED = 2000
HOLD_SECONDS = 12
USER, PASSWORD = "alice", "correct horse battery staple"


class Wire:
    """A TLS connection from a chosen source address, read by hand: heads, exact byte counts."""

    def __init__(self, edge: Edge, source: str, timeout: float = 10) -> None:
        raw = socket.create_connection(("127.0.0.1", edge.port), timeout, (source, 0))
        self.sock = edge.tls.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the proxy")
        self.buffer += chunk

    def head(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the next answer (its body stays in the buffer)."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split(" ")[1]), {k.lower(): v for k, v in headers.items()}

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def still_open(self) -> bool:
        """Nothing came back and the connection stands (read below TLS, without waiting)."""
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            socket.socket.recv(self.sock, 1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(timeout)
        return False  # an answer, or the end of the connection

    def close(self) -> None:
        self.sock.close()


class Edge:
    """The proxy as clients see it: its port and the TLS context that trusts its certificate."""

    def __init__(self, port: int, cert: Path) -> None:
        self.port = port
        self.tls = ssl.create_default_context(cafile=str(cert))

    def request(
        self,
        method: str,
        path: str,
        *,
        source: str = "127.0.0.1",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5,
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, source_address=(source, 0), context=self.tls
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def answer(
        self, delivery: str, *, source: str = "127.0.0.1", size: int | None = None
    ) -> tuple[int, str]:
        """The status and content type of a signed push."""
        body, headers = signed_push(delivery, size)
        status, got, _ = self.request(
            "POST", "/hooks/github", source=source, body=body, headers=headers
        )
        return status, got.get("Content-Type", "")

    def push(self, delivery: str, *, source: str = "127.0.0.1", size: int | None = None) -> int:
        return self.answer(delivery, source=source, size=size)[0]


def signed_push(delivery: str, size: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A GitHub push signed as `demo.post_github` signs it, padded with spaces to `size`."""
    body = json.dumps(push(commits=1)).encode()
    if size is not None:
        body += b" " * (size - len(body))
    return body, github_headers(body, SECRET, delivery=delivery)


def stall(edge: Edge, source: str, delivery: str) -> tuple[Wire, bytes]:
    """A signed push whose sender stops after the first byte of its body, once the proxy has
    taken the request (its `100 Continue`); returns the rest of the body."""
    body, headers = signed_push(delivery)
    wire = Wire(edge, source)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    wire.send(
        f"POST /hooks/github HTTP/1.1\r\nHost: edge\r\n{lines}Content-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    status, _ = wire.head()
    assert status == 100, status
    wire.send(body[:1])
    return wire, body[1:]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def stall_address(number: int) -> str:
    return f"127.1.{number // 250}.{number % 250 + 1}"


def ws_send(wire: Wire, text: str) -> None:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    wire.send(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def ws_receive(wire: Wire) -> str:
    first, second = wire.exactly(2)
    assert first & 0x0F == 0x1, f"opcode {first & 0x0F}"
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(wire.exactly(2), "big")
    elif size == 127:
        size = int.from_bytes(wire.exactly(8), "big")
    return wire.exactly(size).decode()


@pytest.mark.timeout(900)
def test_the_proxy_is_the_hardened_way_in(postgres_env, json_receiver, tmp_path: Path) -> None:
    require_nginx()
    cert, key = certificate(tmp_path / "tls")
    users = htpasswd(tmp_path / "htpasswd", USER, PASSWORD)
    home = tmp_path / "prod_home"
    edge = Edge(free_port(), cert)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "ALERT_URLS": json_receiver.url,
        "WEB_IMAGES_ROOT": str(tmp_path / "photos"),
        "WEBHOOK_REPORTS_DIR": str(tmp_path / "reports"),
        "BACKUP_DESTINATION": str(tmp_path / "backups"),
        "AUTOMATION_INSTANCE_CONFIG": "",
        "PROXY_PORT": str(edge.port),
        "PROXY_HOST": "0.0.0.0",  # the public side; everything else stays on loopback
        "PROXY_TLS_CERT": str(cert),
        "PROXY_TLS_KEY": str(key),
        "PROXY_HTPASSWD": str(users),
        "PROXY_HOOKS_RATE": str(RATE),
        "PROXY_HOOKS_BURST": str(BURST),
        "PROXY_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "PROXY_HEADER_TIMEOUT_SECONDS": "2",
        "PROXY_BODY_TIMEOUT_SECONDS": "120",  # the stalled bodies are held through the test
    }
    topology = Topology(tmp_path, env)
    engine = None
    stalled: list[tuple[Wire, bytes]] = []
    try:
        topology.start()
        wait_for(
            "the proxy",
            lambda: _answers(edge, "/healthz") == 200,
            60,
            topology.logs,
        )
        engine = store.engine(store.database_url(home))

        # A signed webhook needs no UI credentials.
        assert edge.push("edge-first") == 202, topology.logs()

        # The receiver's own body limit, enforced by the proxy: the limit passes, one byte more
        # is refused by nginx (an HTML page, not the receiver's JSON) before the body is sent.
        limit = load_sources()["github"].max_body_bytes
        assert edge.push("edge-at-limit", size=limit) == 202
        body, headers = signed_push("edge-over-limit", limit + 1)
        wire = Wire(edge, "127.0.0.1")
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        wire.send(
            f"POST /hooks/github HTTP/1.1\r\nHost: edge\r\n{lines}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        status, answer_headers = wire.head()
        wire.close()
        assert (status, answer_headers["content-type"]) == (413, "text/html")

        # Over the rate: the first BURST + 1 pass, then 429 from nginx for this address only.
        answers = []
        while len(answers) < 100 and answers[-1:] != [(429, "text/html")]:
            answers.append(edge.answer(f"edge-rate-{len(answers)}", source="127.0.0.3"))
        statuses = [status for status, _ in answers]
        assert statuses[: BURST + 1] == [202] * (BURST + 1), answers
        assert answers[-1] == (429, "text/html") and set(statuses) == {202, 429}, answers
        assert edge.push("edge-rate-other", source="127.0.0.4") == 202

        # Over the connections: PER_CLIENT requests held open, the next one refused, another
        # address served; once they are let go the address is served again.
        held = [stall(edge, "127.0.0.5", f"edge-held-{n}") for n in range(PER_CLIENT)]
        assert edge.answer("edge-conn-over", source="127.0.0.5") == (429, "text/html")
        assert edge.push("edge-conn-other", source="127.0.0.6") == 202
        for wire, _ in held:
            wire.close()
        again = iter(range(100))
        wait_for(
            "the address served again",
            lambda: edge.push(f"edge-conn-again-{next(again)}", source="127.0.0.5") == 202,
            30,
            topology.logs,
            interval=0.5,
        )

        # Headers that never end are cut off after PROXY_HEADER_TIMEOUT_SECONDS.
        slow = Wire(edge, "127.0.0.7", timeout=30)
        slow.send(b"POST /hooks/github HTTP/1.1\r\nHost: edge\r\n")
        with pytest.raises((ConnectionError, ssl.SSLError)):
            slow.head()
        slow.close()

        # 2,000 senders from 2,000 addresses stall in their bodies; a legitimate one keeps
        # getting 202 meanwhile.
        opened = time.monotonic()
        stalled = [stall(edge, stall_address(n), f"edge-stalled-{n}") for n in range(STALLED)]
        opening = time.monotonic() - opened
        timed: list[tuple[int, float]] = []
        deadline = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < deadline:
            started = time.monotonic()
            status = edge.push(f"edge-legit-{len(timed)}")
            timed.append((status, time.monotonic() - started))
            time.sleep(0.3)  # under RATE per second
        assert [status for status, _ in timed] == [202] * len(timed), timed
        assert all(wire.still_open() for wire, _ in stalled)
        latencies = sorted(seconds for _, seconds in timed)
        print(
            f"\n{STALLED} stalled connections opened in {opening:.1f} s; {len(timed)} signed "
            f"POSTs meanwhile: median {statistics.median(latencies) * 1000:.0f} ms, p95 "
            f"{latencies[int(0.95 * (len(latencies) - 1))] * 1000:.0f} ms, max "
            f"{latencies[-1] * 1000:.0f} ms"
        )
        # A stalled sender that finishes late is served; the others hang up.
        for wire, rest in stalled[:5]:
            wire.send(rest)
            assert wire.head()[0] == 202
        for wire, _ in stalled:
            wire.close()
        stalled = []

        # The UI: 401 without or with wrong credentials, 200 and GraphQL with the right ones.
        assert edge.request("GET", "/")[0] == 401
        assert edge.request("GET", "/server_info")[0] == 401
        assert edge.request("GET", "/", headers=basic(USER, "wrong"))[0] == 401
        assert edge.request("GET", "/", headers=basic("mallory", PASSWORD))[0] == 401
        status, _, page = edge.request("GET", "/", headers=basic(USER, PASSWORD))
        assert status == 200 and b"<html" in page.lower()
        status, _, answer = edge.request(
            "POST",
            "/graphql",
            body=json.dumps({"query": "{ version }"}).encode(),
            headers={**basic(USER, PASSWORD), "Content-Type": "application/json"},
        )
        assert status == 200 and json.loads(answer)["data"]["version"] == dg.__version__
        assert _websocket_ack(edge) == {"type": "connection_ack"}

        # The proxy is the one way in: it listens on every address, each other process of the
        # topology on loopback only, so from another address only the proxy answers.
        listening = _listening(topology.process.pid)
        assert {port for _, port in listening} >= {edge.port, *topology.ports}, listening
        outside = [(ip, port) for ip, port in listening if not _loopback(ip)]
        assert outside == [("0.0.0.0", edge.port)], listening
        other = _non_loopback_address()
        if other is not None:
            assert _connects(other, edge.port)
            for port in topology.ports:
                assert not _connects(other, port), f"{other}:{port} answers from outside"

        wait_for(
            "the first event in the warehouse",
            lambda: _loaded(engine, "edge-first"),
            180,
            topology.logs,
        )
        topology.stop()  # nginx exits with the rest
    finally:
        for wire, _ in stalled:
            wire.close()
        topology.cleanup()
        store.dispose_all()


def _listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses the process `pid` and its descendants listen on."""
    root = psutil.Process(pid)
    pids = {root.pid, *(child.pid for child in root.children(recursive=True))}
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (gRPC's dual stack)
    return (mapped or address).is_loopback


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not _loopback(address.address):
                return address.address
    return None


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _answers(edge: Edge, path: str) -> int:
    try:
        return edge.request("GET", path)[0]
    except OSError:
        return 0


def _websocket_ack(edge: Edge) -> dict:
    """Open the UI's GraphQL websocket through the proxy and say hello."""
    wire = Wire(edge, "127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    auth = basic(USER, PASSWORD)["Authorization"]
    wire.send(
        "GET /graphql HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: graphql-ws\r\nAuthorization: {auth}\r\n\r\n".encode()
    )
    status, headers = wire.head()
    assert (status, headers["sec-websocket-protocol"]) == (101, "graphql-ws")
    ws_send(wire, json.dumps({"type": "connection_init", "payload": {}}))
    try:
        return json.loads(ws_receive(wire))
    finally:
        wire.close()


def _loaded(engine: sa.Engine, delivery: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(events_table.c.delivery_id).where(events_table.c.delivery_id == delivery)
        )
        return found.first() is not None
