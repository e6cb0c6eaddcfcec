"""The inbox writer: a process of its own that commits receivers' events in groups.

A receiver process hands each verified event to its writer over a private socket pair and
answers the sender once the writer says the event is committed. Every event waiting when a
commit starts shares that transaction (and its fsync). The writer is a process and not a
thread of the receiver because the two fought for Python's interpreter lock: each group's
INSERT waited for the busy event loop, and the loop for it.

`webhooks serve --workers N` forks one writer beside its N receiver processes, which share
it; a receiver started alone (`--workers 1`, or `create_app` embedded elsewhere) starts a
writer of its own and starts another if that one dies. The writer reads its settings from the
first message on each socket (a database URL may hold a password, which must not show in the
process list), and ends once every receiver has closed its socket or died, after answering
what it had taken: SIGTERM and SIGINT, which reach a whole process group, do not stop it while
receivers still wait on it. Messages are length-prefixed `marshal` data, exchanged only over
the socket pairs these processes inherit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import marshal
import selectors
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.processes import exit_reason
from automation_pipelines.webhooks.inbox import Event, data_refusal, insert_events

log = logging.getLogger("automation_pipelines.webhooks")

#: How many waiting events one commit takes at most.
MAX_GROUP = 512

#: Outcome codes in the writer's answers.
ADDED, DUPLICATE, REFUSED, UNAVAILABLE = 1, 0, 2, 3

_LENGTH = struct.Struct("!I")
#: The largest message either side accepts: a group of the largest bodies a source may take.
MAX_MESSAGE = 1 << 30


class InboxUnavailable(RuntimeError):
    """The inbox could not commit; the sender gets a 503 and delivers again later."""


class InboxRefused(ValueError):
    """The database refused this one event for a value in it; the sender gets a 400, since
    delivering it again cannot help, and the events it was grouped with commit without it."""


def _frame(value) -> bytes:
    data = marshal.dumps(value)
    return _LENGTH.pack(len(data)) + data


class _Frames:
    """Splits a byte stream into the values of its length-prefixed messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list:
        self._buffer += data
        values, start, buffer = [], 0, self._buffer
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > MAX_MESSAGE:
                raise ValueError(f"a message of {size} bytes is over the limit")
            end = start + _LENGTH.size + size
            if len(buffer) < end:
                break
            values.append(marshal.loads(memoryview(buffer)[start + _LENGTH.size : end]))
            start = end
        if start:
            del buffer[:start]
        return values


# ---------------------------------------------------------------- in the writer process


#: Bytes of events committed after which the write-ahead log is copied back into the database:
#: about SQLite's own default (1,000 pages of 4 KiB).
CHECKPOINT_BYTES = 4_000_000
#: Pages in the log past which a commit checkpoints it itself (4x SQLite's default).
BACKSTOP_PAGES = 4000


class Checkpoints:
    """Copies a SQLite database's write-ahead log back into it from a thread of the writer
    process, each time the writer has committed about CHECKPOINT_BYTES. PASSIVE: it never
    waits for, nor blocks, the commits, which go on meanwhile (SQLite's checkpoint runs without
    the interpreter lock). Other processes' connections keep SQLite's own checkpoints."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = 0
        self._written = 0
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inbox-checkpoints", daemon=True)
        self._thread.start()

    def wrote(self, size: int) -> None:
        """The writer committed about `size` bytes."""
        self._written += size
        if self._written >= CHECKPOINT_BYTES:
            self._written = 0
            self._due.set()

    def _run(self) -> None:
        conn = None
        failed = None
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping:
                break
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.done += 1
                failed = None
            except sqlite3.Error as exc:
                if str(exc) != failed:  # once per distinct fault
                    log.warning("inbox checkpoint failed (tried again later): %s", exc)
                    failed = str(exc)
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        self._thread.join(timeout=30)


class Committer:
    """Owns the write connection and commits groups of events (in the writer process)."""

    def __init__(self, url: str, *, lock_path: str | None = None) -> None:
        self.engine = store.engine(url, lazy=True)
        self.lock_path = lock_path
        self._lock_file = None
        self._conn: sa.Connection | None = None
        self._checkpoints: Checkpoints | None = None
        self.commits = 0

    def _connect(self) -> sa.Connection:
        store.ensure_tables(self.engine)  # the receiver may have started with its database down
        conn = self.engine.connect()
        if conn.dialect.name == "sqlite":
            # Each commit reaches the disk before its senders are answered.
            conn.exec_driver_sql("PRAGMA synchronous=FULL")
            # Checkpoints move to a thread of their own (below): run by a commit, each one
            # held that commit's senders, and every other sender behind them, for the ~4 MB it
            # copies into the database file and that file's fsync.
            # SQLite's own, inline, stays only as the backstop should the thread fall behind:
            # under writes that never pause its checkpoints may never finish the whole log,
            # which only then starts over.
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            # Delivery ids come in no order, so a group's inserts change pages all over the
            # id index, whose old contents SQLite's statement journal keeps until the INSERT
            # ends: past 64 KB that went to a new file in the temporary folder, made and
            # unlinked on most commits, which waited for it. In memory it takes a few MB at
            # most (a page or two per event of a MAX_GROUP group).
            conn.exec_driver_sql("PRAGMA temp_store=MEMORY")
            if self._checkpoints is None:
                self._checkpoints = Checkpoints(self.engine.url.database)
            conn.commit()
        return conn

    @contextlib.contextmanager
    def _exclusive(self):
        """Hold the receivers' commit lock (SQLite only). Writers on one SQLite file take turns
        at commits through this file lock, which wakes the next one the moment it is free;
        without it they meet in SQLite's busy handler, which sleeps in steps of up to 100 ms."""
        if self.lock_path is None:
            yield
            return
        if self._lock_file is None:
            self._lock_file = open(self.lock_path, "a")  # noqa: SIM115 - kept for the writer's life
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def commit(self, events: Sequence[Event]) -> list:
        """Keep `events` in one transaction; per event True (added), False (already there),
        InboxRefused (its values) or InboxUnavailable (the database)."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._exclusive(), self._conn.begin():
                added = insert_events(self._conn, events)
            self.commits += 1
            if self._checkpoints is not None:
                self._checkpoints.wrote(sum(len(event.body) for event in events))
            return added
        except Exception as exc:  # every sender must hear back
            if self._conn is not None and data_refusal(exc) is not None:
                # One event's values, not the database: commit the others without it.
                return self._one_by_one(events)
            log.error("inbox commit failed for %d event(s): %s", len(events), exc)
            self._drop()
            return [InboxUnavailable(str(exc))] * len(events)

    def _drop(self) -> None:
        """Discard a connection that failed; the next group opens a fresh one."""
        if self._conn is not None:
            self._conn.invalidate()
            self._conn.close()
            self._conn = None

    def _one_by_one(self, events: Sequence[Event]) -> list:
        """Commit each event of a refused group alone: the refused ones answer 400, the others
        as usual."""
        outcomes: list = []
        for event in events:
            name = f"{event.source}/{event.delivery_id}"
            if self._conn is None:
                outcomes.append(InboxUnavailable("the inbox connection was lost"))
                continue
            try:
                with self._exclusive(), self._conn.begin():
                    outcomes.extend(insert_events(self._conn, [event]))
                self.commits += 1
            except Exception as exc:
                reason = data_refusal(exc)
                if reason is not None:
                    log.warning("inbox refused %s: %s", name, reason)
                    outcomes.append(InboxRefused(reason))
                else:
                    log.error("inbox commit failed for %s: %s", name, exc)
                    self._drop()
                    outcomes.append(InboxUnavailable(str(exc)))
        return outcomes

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.stop()
        if self._conn is not None:
            self._conn.close()
        if self._lock_file is not None:
            self._lock_file.close()
        self.engine.dispose()


def _encode(seq: int, outcome) -> tuple:
    if outcome is True:
        return (seq, ADDED, "")
    if outcome is False:
        return (seq, DUPLICATE, "")
    code = REFUSED if isinstance(outcome, InboxRefused) else UNAVAILABLE
    return (seq, code, str(outcome))


class _Link:
    """One receiver process's socket, as the writer sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = _Frames()
        self.settings: dict | None = None
        self.open = True

    def take(self) -> list:
        """Every event this receiver has sent so far, without waiting for more."""
        events: list = []
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return events
            except OSError:
                data = b""
            if not data:
                self.open = False
                return events
            for value in self.frames.feed(data):
                if self.settings is None:
                    self.settings = value
                else:
                    events += [(self, values) for values in value]


def serve_receivers(socks: Sequence[socket.socket]) -> None:
    """Commit what the receivers at the other ends of `socks` send until they all close them.
    Each receiver's first message is the writer's settings (the same from each)."""
    links = [_Link(sock) for sock in socks]
    committer: Committer | None = None
    waiting: list = []
    try:
        with selectors.DefaultSelector() as selector:
            for link in links:
                selector.register(link.sock, selectors.EVENT_READ, link)
            while selector.get_map():
                for key, _ in selector.select(None if not waiting else 0):
                    link = key.data
                    waiting += link.take()
                    if not link.open:
                        selector.unregister(link.sock)
                if not waiting:
                    continue
                if committer is None:
                    settings = next(link.settings for link in links if link.settings)
                    committer = Committer(settings["url"], lock_path=settings["lock_path"])
                    max_group = settings["max_group"]
                group, waiting = waiting[:max_group], waiting[max_group:]
                outcomes = committer.commit([Event(*values[1:]) for _, values in group])
                answers: dict[_Link, list] = {}
                for (link, values), outcome in zip(group, outcomes, strict=True):
                    answers.setdefault(link, []).append(_encode(values[0], outcome))
                for link, batch in answers.items():
                    if link.open:
                        with contextlib.suppress(OSError):  # it went away: nobody to answer
                            link.sock.sendall(_frame((committer.commits, batch)))
    finally:
        if committer is not None:
            committer.close()


def run_writer(socks: Sequence[socket.socket]) -> int:
    """The writer process's life: serve the receivers on `socks` until they are all gone."""
    # The receivers decide when this ends (they close their sockets): a SIGINT or SIGTERM sent
    # to the whole process group must not stop commits their last requests still wait for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        for sock in socks:  # ready: each receiver starts serving once it reads this
            sock.sendall(_frame((0, [])))
        serve_receivers(socks)
    finally:
        for sock in socks:
            sock.close()
    return 0


def main() -> int:
    """`python -m automation_pipelines.webhooks.writer FD...`: serve the receivers on those
    inherited sockets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_writer([socket.socket(fileno=int(fd)) for fd in sys.argv[1:]])


# ---------------------------------------------------------------- in the receiver process


def writer_settings(url: str, max_group: int, lock_path: Path | None) -> bytes:
    """The first message a receiver sends its writer."""
    settings = {
        "url": url,
        "max_group": max_group,
        "lock_path": None if lock_path is None else str(lock_path),
    }
    return _frame(settings)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the receiver's end, the writer's end) of a new link."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


#: How long a receiver that starts its own writer waits before starting another after one died.
RESTART_SECONDS = 1.0
#: How long a writer has to start and say it is ready.
READY_SECONDS = 60


class InboxWriter(asyncio.Protocol):
    """The receiver's side of the link: hands events to the writer and awaits its answers.

    With `sock`, the writer is the one `serve` forked beside its receivers (whose supervision
    restarts everything should it die); without, this starts a writer process of its own when
    the app starts, and another on the next event should that one die."""

    def __init__(
        self,
        url: str,
        *,
        max_group: int = MAX_GROUP,
        lock_path: Path | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.url = url
        self.max_group = max_group
        self.lock_path = lock_path
        self._sock = sock
        self.process: subprocess.Popen | None = None
        self._transport: asyncio.Transport | None = None
        self._frames = _Frames()
        self._waiting: dict[int, asyncio.Future] = {}
        self._batch: list = []
        self._seq = 0
        self._restart_at = 0.0
        self._stopping = False
        self._closed: asyncio.Future | None = None
        self._ready: asyncio.Future | None = None
        #: Commits the writer has made (all its receivers' together), as of its last answer.
        self.commits = 0

    async def start(self) -> None:
        if self._sock is not None:
            ours, self._sock = self._sock, None
        else:
            ours, theirs = socket_pair()
            with theirs:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", __name__, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            ours.sendall(writer_settings(self.url, self.max_group, self.lock_path))
        ours.setblocking(False)
        self._frames = _Frames()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        await loop.create_unix_connection(lambda: self, sock=ours)
        # Requests are taken once the writer is there to answer them (it needs about 0.3 s
        # to start as a new interpreter), so the first senders do not wait on its start.
        await asyncio.wait_for(self._ready, READY_SECONDS)

    async def revive(self) -> None:
        """Start a new writer of our own if the last one died, at most once per
        RESTART_SECONDS; InboxUnavailable meanwhile, or when the writer is `serve`'s."""
        if self.alive:
            return
        if self.process is None or self._stopping or time.monotonic() < self._restart_at:
            raise InboxUnavailable("the inbox writer is not running")
        self._restart_at = time.monotonic() + RESTART_SECONDS
        if self.process.poll() is None:  # it closed its end without ending: a writer no more
            self.process.kill()
            self.process.wait()
        log.warning("starting a new inbox writer")
        try:
            await self.start()
        except (OSError, TimeoutError) as exc:
            raise InboxUnavailable(f"the inbox writer could not start: {exc}") from exc

    async def stop(self, timeout: float = 10) -> None:
        """Close the link; a writer of our own ends once it answered what it took."""
        self._stopping = True
        if self._transport is not None:
            self._closed = asyncio.get_running_loop().create_future()
            self._transport.close()
            await self._closed
        if self.process is not None:
            try:
                await asyncio.to_thread(self.process.wait, timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)

    @property
    def alive(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def waiting(self) -> int:
        """Events sent to the writer and not answered yet."""
        return len(self._waiting) - len(self._batch)

    async def put(self, event: Event) -> bool:
        """Keep `event` durably; True if it is new, False if it was a re-delivery."""
        if not self.alive:
            await self.revive()
        self._seq += 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[self._seq] = future
        if not self._batch:  # everything put in this turn of the loop goes in one message
            loop.call_soon(self._flush)
        self._batch.append(
            (
                self._seq,
                event.source,
                event.delivery_id,
                event.event_type,
                event.body,
                event.received_at,
            )
        )
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if self.alive:
            self._transport.write(_frame(batch))
        else:  # the writer went away within this turn
            for values in batch:
                future = self._waiting.pop(values[0], None)
                if future is not None and not future.done():
                    future.set_exception(InboxUnavailable("the inbox writer went away"))

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        for commits, answers in self._frames.feed(data):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            self.commits = commits
            for seq, code, text in answers:
                future = self._waiting.pop(seq, None)
                if future is None or future.done():
                    continue
                if code == ADDED:
                    future.set_result(True)
                elif code == DUPLICATE:
                    future.set_result(False)
                elif code == REFUSED:
                    future.set_exception(InboxRefused(text))
                else:
                    future.set_exception(InboxUnavailable(text))

    def connection_lost(self, exc) -> None:
        self._transport = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError("the inbox writer ended as it started"))
        if not self._stopping:
            ended = ""
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    ended = f" ({exit_reason(self.process.wait(2))})"
            log.error(
                "the inbox writer went away%s; %d event(s) it had not answered get 503",
                ended,
                len(self._waiting),
            )
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(InboxUnavailable("the inbox writer went away"))
        self._waiting.clear()


if __name__ == "__main__":
    sys.exit(main())
