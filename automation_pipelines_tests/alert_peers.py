"""Real peers for alert delivery: an HTTP server for apprise `json://` and an SMTP server
(aiosmtpd) for `mailto://`, both on loopback, recording what they receive; a channel that hangs;
and one tick of the outbox sensor, which is what delivers what runs queue."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

from automation_pipelines.local_stack import free_port


class JsonReceiver:
    """Accepts apprise json:// POSTs; `status` can be set to 500 to play a channel that is down,
    and `stop()`/`start()` take the port away and back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict] = []
        self.pings: list[str] = []
        #: The body of each ping, "" for a GET (a dead-man's switch `/fail` carries the reason).
        self.ping_bodies: list[str] = []
        self.refused = 0
        self.status = 200
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/alerts"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/ping"):
                    receiver.pings.append(self.path)
                    receiver.ping_bodies.append(body.decode(errors="replace"))
                elif receiver.status >= 400:
                    receiver.refused += 1
                else:
                    receiver.received.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                receiver.pings.append(self.path)
                receiver.ping_bodies.append("")
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def titles(self) -> list[str]:
        return [payload["title"] for payload in self.received]


class SmtpReceiver:
    """A real SMTP server on loopback that keeps every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                receiver.messages.append(
                    message_from_bytes(envelope.content, policy=default_policy)
                )
                return "250 Message accepted for delivery"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return (
            f"mailto://127.0.0.1:{self.port}?from=alerts@example.org&to=owner@example.org"
            "&mode=insecure"
        )

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def bodies(self) -> list[str]:
        return [m.get_body(preferencelist=("plain",)).get_content() for m in self.messages]


class HangingChannel:
    """A channel that takes connections and never answers, as a stuck webhook or mail relay
    does; counts the connections it was given."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/alerts"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                self.connections.append(connection)  # held open, never read, never answered

    def close(self) -> None:
        for connection in [*self.connections, self._listener]:
            connection.close()


def deliver_queued(instance, router) -> str:
    """One tick of alert_outbox_sensor, the daemon's deliverer, on `instance` with `router`;
    returns what the tick said."""
    import dagster as dg

    from automation_pipelines.monitoring.alerting import alert_outbox_sensor

    with dg.build_sensor_context(instance=instance, resources={"alerts": router}) as context:
        result = alert_outbox_sensor(context)
    return getattr(result, "skip_message", None) or str(result)
