"""The receivers a person would write by hand, for `bench_webhooks` to compare against.

`python -m bench.minimal_receiver --port P --store sqlite --db FILE`: a Starlette app on uvicorn
(the same server, loop and HTTP parser as the project's receiver) that reads the body and
commits it as one row in its own SQLite transaction per request (WAL, synchronous=FULL), in
Starlette's thread pool, then answers 202. It checks no signature and parses nothing.

`--store none`: the same app answering 202 without storing anything: the cost of HTTP alone.
`--workers N`: N processes, as `uvicorn --workers N` runs them (one unless told).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import threading

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_app(store: str, db: str | None) -> Starlette:
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(db, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            local.conn = conn
        return conn

    def commit(body: bytes) -> None:
        conn = connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (body) VALUES (?)", (body,))
        conn.execute("COMMIT")

    if store == "sqlite":
        setup = sqlite3.connect(db)
        setup.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body BLOB)")
        setup.commit()
        setup.close()

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        if store == "sqlite":
            await run_in_threadpool(commit, body)
        return JSONResponse({"status": "accepted"}, status_code=202)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/hooks/{source}", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def app_from_environment() -> Starlette:
    """The app for each of uvicorn's worker processes, which import it by name."""
    return create_app(os.environ["MINIMAL_STORE"], os.environ.get("MINIMAL_DB") or None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", choices=["sqlite", "none"], required=True)
    parser.add_argument("--db")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ.update(MINIMAL_STORE=args.store, MINIMAL_DB=args.db or "")
    if args.workers > 1:
        app = "minimal_receiver:app_from_environment"
    else:
        app = create_app(args.store, args.db)
    uvicorn.run(
        app,
        factory=args.workers > 1,
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
