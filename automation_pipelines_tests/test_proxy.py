"""The production topology's reverse proxy (`proxy.py`) with Debian's real nginx: the config it
renders passes `nginx -t` with and without TLS; each webhook source is cut off at the receiver's
own body limit; a head over its buffers gets 431 before any body; settings that are missing or
unsafe are refused by name; and in front of two recording HTTP servers nginx hands on each
request only once its body is whole, with the client's address (a spoofed X-Forwarded-For is
replaced, unless it came through a trusted proxy)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from automation_pipelines import proxy, topology
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines.settings import ConfigurationError
from automation_pipelines.webhooks.sources import load_sources
from automation_pipelines_tests.conftest import require_program


def require_nginx() -> Path:
    return require_program(proxy.NGINX, "nginx")


def certificate(folder: Path, days: int = 2) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI; its
    key readable by its owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", str(days), "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o600)
    return cert, key


def htpasswd(path: Path, user: str, password: str) -> Path:
    """A users file as the docs tell operators to make one (`openssl passwd -6`)."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    path.write_text(f"{user}:{hashed}\n")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [name for name in os.environ if name.startswith("PROXY_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_rendered_config_passes_nginx_t(tmp_path: Path, tls: bool) -> None:
    require_nginx()
    cert, key = certificate(tmp_path / "tls") if tls else (None, None)
    settings = proxy.ProxySettings(
        port=free_port(),
        htpasswd=htpasswd(tmp_path / "htpasswd", "alice", "s3cret"),
        host="127.0.0.1",
        tls_cert=cert,
        tls_key=key,
        trusted_proxies=("10.0.0.0/8",),
    )
    edge = proxy.prepare(
        settings,
        tmp_path / "home",
        upstream_host="127.0.0.1",
        webserver_port=free_port(),
        receiver_port=free_port(),
    )

    done = subprocess.run([*edge.argv(), "-t"], capture_output=True, text=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    text = edge.config.read_text()
    assert f"listen 127.0.0.1:{settings.port}{' ssl' if tls else ''};" in text
    assert ("ssl_certificate " in text) is tls
    assert "proxy_request_buffering on;" in text
    assert str(edge.prefix / "temp" / "body") in text  # nothing under /var/lib/nginx


def _source_limits(config: str) -> dict[str, int]:
    found = re.findall(r"location = /hooks/(\S+) \{\s*client_max_body_size (\d+);", config)
    return {name: int(limit) for name, limit in found}


def test_each_source_is_cut_at_the_receivers_own_body_limit(tmp_path: Path) -> None:
    sources = tmp_path / "webhook_sources.yaml"
    sources.write_text(
        "max_body_bytes: 2000\n"
        "sources:\n"
        "  github: {kind: github, secret_env: GITHUB_WEBHOOK_SECRET}\n"
        "  bulk: {kind: github, secret_env: BULK_SECRET, max_body_bytes: 50000}\n"
    )
    settings = proxy.ProxySettings(port=8443, htpasswd=tmp_path / "htpasswd")

    for file, expected in (
        (sources, {"bulk": 50000, "github": 2000}),
        (None, {n: s.max_body_bytes for n, s in load_sources().items()}),  # the project's own
    ):
        text = proxy.render(
            settings,
            prefix=tmp_path,
            upstream_host="127.0.0.1",
            webserver_port=3000,
            receiver_port=3001,
            limits=proxy.body_limits(file),
        )
        assert _source_limits(text) == expected
        # A name the receiver does not know gets no more than the smallest source.
        fallback = re.search(r"location /hooks/ \{[^}]*?client_max_body_size (\d+);", text)
        assert int(fallback.group(1)) == min(expected.values())


def test_the_settings_are_read_from_the_environment(clean_env, tmp_path: Path) -> None:
    assert proxy.from_env() is None  # no PROXY_PORT, no proxy

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for path in (cert, key):
        path.write_text("pem")
    users = htpasswd(tmp_path / "htpasswd", "alice", "s3cret")
    clean_env.setenv(proxy.PORT_ENV, "8443")
    clean_env.setenv(proxy.HTPASSWD_ENV, str(users))
    clean_env.setenv(proxy.CERT_ENV, str(cert))
    clean_env.setenv(proxy.KEY_ENV, str(key))
    clean_env.setenv(proxy.TRUSTED_ENV, "10.0.0.0/8, 192.168.1.7")
    clean_env.setenv("PROXY_HOOKS_RATE", "5")
    clean_env.setenv("PROXY_BODY_TIMEOUT_SECONDS", "30")

    settings = proxy.from_env()

    assert settings == proxy.ProxySettings(
        port=8443,
        htpasswd=users,
        tls_cert=cert,
        tls_key=key,
        trusted_proxies=("10.0.0.0/8", "192.168.1.7/32"),
        hooks_rate=5,
        body_timeout=30,
    )
    assert settings.url == "https://0.0.0.0:8443"
    assert settings.probe_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "set PROXY_HTPASSWD to a users file kept outside the repository"),
        ({"PROXY_HTPASSWD": "missing"}, "PROXY_HTPASSWD=missing: no such file"),
        ({"PROXY_HTPASSWD": "webhook_sources.yaml"}, "is inside the project folder"),
        ({"PROXY_TLS_CERT": "USERS"}, "set both PROXY_TLS_CERT and PROXY_TLS_KEY"),
        ({"PROXY_TRUSTED_PROXIES": "10.0.0.0/8,lan"}, "'lan' is not an address or network"),
        ({"PROXY_HOOKS_RATE": "0"}, "PROXY_HOOKS_RATE=0 must be at least 1"),
        ({"PROXY_PORT": "70000"}, "PROXY_PORT=70000 must be between 1 and 65535"),
    ],
    ids=["no-users", "users-missing", "users-in-repo", "cert-alone", "network", "rate", "port"],
)
def test_unsafe_or_missing_settings_are_refused_by_name(
    clean_env, tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    users = htpasswd(tmp_path / "htpasswd", "alice", "s3cret")
    clean_env.setenv(proxy.PORT_ENV, "8443")
    if variables:
        clean_env.setenv(proxy.HTPASSWD_ENV, str(users))
    for name, value in variables.items():
        clean_env.setenv(name, str(users) if value == "USERS" else value)

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        proxy.from_env()


def test_the_proxy_is_refused_in_front_of_processes_on_every_interface(
    clean_env, tmp_path: Path
) -> None:
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": "test",
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_HOME": str(tmp_path / "h"),
    }.items():
        clean_env.setenv(name, value)
    clean_env.delenv("AUTOMATION_INSTANCE_CONFIG", raising=False)
    clean_env.setenv(proxy.PORT_ENV, str(free_port()))
    clean_env.setenv(proxy.HTPASSWD_ENV, str(htpasswd(tmp_path / "users", "alice", "s3cret")))

    ports = topology.Ports("0.0.0.0", free_port(), free_port(), free_port())
    with pytest.raises(ConfigurationError, match="must not listen on every interface"):
        topology.run(ports, production=True)
    assert not (tmp_path / "h").exists()


def test_a_taken_proxy_port_is_named(tmp_path: Path) -> None:
    settings = proxy.ProxySettings(port=free_port(), htpasswd=tmp_path, host="127.0.0.1")
    ports = topology.Ports("127.0.0.1", free_port(), free_port(), free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.port))
        taken.listen()
        busy = topology.busy_ports(ports, settings)
    assert busy == [f"127.0.0.1:{settings.port} (PROXY_PORT)"]


class Recorder(ThreadingHTTPServer):
    """An upstream that records each request as its head arrives, then whole, and answers 202."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.arrived.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                recorder.seen.append((self.path, dict(self.headers), body))
                payload = json.dumps({"ok": True}).encode()
                self.send_response(202)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *_args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    receiver, webserver = Recorder(), Recorder()
    yield receiver, webserver
    for server in (receiver, webserver):
        server.shutdown()
        server.server_close()


def _wait_accepting(port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nginx did not listen on {port}\n{log.read_text(errors='replace')}")


def _status(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return int(answer.split(b" ", 2)[1])


@contextlib.contextmanager
def running_nginx(
    tmp_path: Path, recorders: tuple[Recorder, Recorder], **options: object
) -> Iterator[int]:
    """Debian's nginx with the rendered config in front of the two recorders; yields its port."""
    require_nginx()
    receiver, webserver = recorders
    settings = proxy.ProxySettings(
        port=free_port(), htpasswd=htpasswd(tmp_path / "htpasswd", "alice", "s3cret"), **options
    )
    edge = proxy.prepare(
        settings,
        tmp_path / "home",
        upstream_host="127.0.0.1",
        webserver_port=webserver.port,
        receiver_port=receiver.port,
    )
    log = tmp_path / "nginx.log"
    with ProcessGroup() as group, log.open("wb") as out:
        group.start(edge.argv(), stdout=out, stderr=subprocess.STDOUT)
        _wait_accepting(settings.port, log)
        yield settings.port


@pytest.mark.parametrize(
    ("trusted", "seen_as"),
    [((), "127.0.0.2"), (("127.0.0.0/8",), "203.0.113.9")],
    ids=["direct", "behind-a-trusted-proxy"],
)
def test_nginx_hands_on_whole_bodies_with_the_clients_address(
    tmp_path: Path, recorders: tuple[Recorder, Recorder], trusted: tuple[str, ...], seen_as: str
) -> None:
    receiver, webserver = recorders
    with running_nginx(tmp_path, recorders, host="127.0.0.1", trusted_proxies=trusted) as port:
        body = b'{"zen": "Keep it logically awesome."}'
        with socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.2", 0)) as sock:
            sock.sendall(
                b"POST /hooks/github HTTP/1.1\r\nHost: hooks.example\r\n"
                b"X-Forwarded-For: 203.0.113.9\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            time.sleep(0.5)
            assert receiver.arrived == []  # not even the head: half a body is held at the proxy
            sock.sendall(body[10:])
            assert _status(sock) == 202

        [(path, headers, received)] = receiver.seen
        assert (path, received) == ("/hooks/github", body)
        assert headers["X-Forwarded-For"] == headers["X-Real-IP"] == seen_as
        assert headers["Host"] == "hooks.example"
        assert webserver.seen == []


@pytest.mark.parametrize(
    ("path", "lines"),
    [
        ("/hooks/github", [b"X-Big: " + b"a" * 9_000]),  # one line over a buffer
        ("/hooks/github", [b"X-H%d: %s" % (n, b"b" * 1_000) for n in range(40)]),  # 40 KB
        ("/hooks/github", [b"X-Huge: " + b"c" * 4_000_000]),
        ("/", [b"Cookie: " + b"d" * 9_000]),  # the UI's side, before its password
    ],
    ids=["one-line", "many-lines", "megabytes", "ui"],
)
def test_a_head_over_nginx_buffers_gets_431_before_the_body(
    tmp_path: Path, recorders: tuple[Recorder, Recorder], path: str, lines: list[bytes]
) -> None:
    """The receiver's 431 for an oversized head holds through the proxy: nginx answers it as
    soon as the head overflows its buffers, the body never sent, neither upstream reached."""
    receiver, webserver = recorders
    with running_nginx(tmp_path, recorders) as port:

        def head(extra: list[bytes]) -> bytes:
            return (
                f"POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n".encode()
                + b"".join(line + b"\r\n" for line in extra)
                + b"\r\n"
            )

        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            # and never the body; nginx may answer and close before it took the whole head
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head(lines))
            assert _status(sock) == 431

        # A head under the buffers reaches the upstream with its body.
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            auth = [b"Authorization: Basic YWxpY2U6czNjcmV0"]  # alice:s3cret
            sock.sendall(head([b"X-Fine: " + b"e" * 6_000, *auth]) + b"hello")
            assert _status(sock) == 202
        upstream = receiver if path.startswith("/hooks/") else webserver
        assert [(p, body) for p, _, body in upstream.seen] == [(path, b"hello")]
        assert receiver.arrived + webserver.arrived == [path]


#: Spellings of a UI path that try to pass as /hooks/ or /healthz, which need no password.
AROUND_THE_PASSWORD = [
    "/hooks/../graphql",
    "/hooks/%2e%2e/graphql",
    "/hooks/%2E%2E/graphql",
    "/hooks/..%2fgraphql",
    "/hooks/github/../../graphql",
    "/hooks/./../graphql",
    "/%68ooks/../graphql",
    "/hooks\\..\\graphql",
    "/HOOKS/github",
    "//graphql",
    "/healthz/../graphql",
    "/healthz/",
    "/healthz%3f",
    "http://edge/graphql",
]


def test_no_spelling_of_a_ui_path_reaches_the_ui_without_the_password(
    tmp_path: Path, recorders: tuple[Recorder, Recorder]
) -> None:
    receiver, webserver = recorders
    with running_nginx(tmp_path, recorders) as port:
        for path in AROUND_THE_PASSWORD:
            with socket.create_connection(("127.0.0.1", port), 10) as sock:
                sock.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode()
                )
                assert (path, _status(sock)) == (path, 401)
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            auth = "Authorization: Basic YWxpY2U6czNjcmV0\r\n"  # alice:s3cret
            sock.sendall(f"GET /graphql HTTP/1.1\r\nHost: edge\r\n{auth}\r\n".encode())
            assert _status(sock) == 202  # the recorder's answer: the password lets one through
    assert (receiver.arrived, webserver.arrived) == ([], ["/graphql"])
