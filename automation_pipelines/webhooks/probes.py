"""Clients that try a receiver's edge as the internet would: connections that send a request's
headers and one byte of its body and then nothing, kept open by the thousand; and a signed
sender on a fresh connection per event, as GitHub delivers. `bench_slow_clients` measures a
receiver (alone or behind its proxy) with them, and the edge's tests drive it with them."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
from collections import Counter

from automation_pipelines.webhooks.senders import github_headers

#: What a stalled client sends: a plausible delivery's headers announcing a 1,000-byte body, and
#: its first byte.
STALLED_REQUEST = (
    b"POST /hooks/github HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
    b"X-GitHub-Event: push\r\nX-GitHub-Delivery: stalled\r\n"
    b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\nContent-Length: 1000\r\n\r\n{"
)


class StalledConnections:
    """`count` connections to 127.0.0.1:`port` that send `STALLED_REQUEST` and then wait; one the
    receiver closes is opened again at once, so `count` stay held for as long as this runs (in a
    thread of its own, on its own event loop)."""

    def __init__(self, port: int, count: int, *, spread: bool = False) -> None:
        self.port = port
        self.count = count
        #: Each connection from an address of its own (127.1.x.y; Linux routes all of 127/8 to
        #: the loopback interface), as a crowd of clients rather than one, which a proxy's
        #: per-address limits would stop.
        self.spread = spread
        self.held = 0
        #: Clients that have had a connection at least once.
        self.connected = 0
        self.opened = 0
        self.closed_by_receiver = 0
        self.failed_to_connect = 0
        #: The status line of each answer a stalled connection got before it was closed.
        self.answers: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="stalled-clients", daemon=True)

    def start(self, timeout: float = 60) -> None:
        """Return once each of the `count` clients holds a connection or has held one: past a
        receiver's limit on pending connections, the ones it closes are opened again at once,
        so all `count` being held at one instant is a matter of luck on a slow machine."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self.connected < self.count:
            if not self._thread.is_alive():
                raise RuntimeError("the stalled clients stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {self.connected} of {self.count} clients connected "
                    f"({self.held} connections held)"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)

    def __enter__(self) -> StalledConnections:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._hold())
        self._loop.close()

    async def _hold(self) -> None:
        self._stopping = asyncio.Event()
        # At most a few hundred connects in flight, so the receivers' backlog never overflows.
        connecting = asyncio.Semaphore(256)
        clients = [
            asyncio.create_task(self._client(connecting, self._source(number)))
            for number in range(self.count)
        ]
        await self._stopping.wait()
        for client in clients:
            client.cancel()
        await asyncio.gather(*clients, return_exceptions=True)

    def _source(self, number: int) -> tuple[str, int] | None:
        return (f"127.1.{number // 250}.{number % 250 + 1}", 0) if self.spread else None

    async def _client(self, connecting: asyncio.Semaphore, source: tuple[str, int] | None) -> None:
        first = True
        while True:
            writer = None
            try:
                async with connecting:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=source
                    )
                    writer.write(STALLED_REQUEST)
                    await writer.drain()
                self.opened += 1
                self.held += 1
                if first:
                    first = False
                    self.connected += 1
                try:
                    answer = await reader.read(200)
                    while answer and await reader.read(4096):
                        pass
                except ConnectionResetError:  # nginx resets a connection that timed out
                    answer = b"connection reset\r\n"
                finally:
                    self.held -= 1
                self.closed_by_receiver += 1
                if answer:
                    self.answers[answer.split(b"\r\n", 1)[0].decode("latin-1")] += 1
            except OSError:
                self.failed_to_connect += 1
                await asyncio.sleep(0.1)
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()


def post_signed(port: int, delivery: str, secret: str, timeout: float) -> tuple[int | str, float]:
    """One signed GitHub push on a connection of its own: (its status, or what went wrong; the
    seconds from connecting to the answer)."""
    body = json.dumps({"ref": "refs/heads/main", "after": delivery}).encode()
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/hooks/github", body, github_headers(body, secret, delivery=delivery))
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - began
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, time.perf_counter() - began
    finally:
        conn.close()
