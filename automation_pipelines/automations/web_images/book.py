"""What the inbox sensor remembers of files between looks, kept in the project database.

Dagster stores a sensor's cursor with every tick record, so a cursor that names every waiting
file makes each tick cost, and the tick history grow by, the size of the backlog. The per-file
memory lives here instead, one row per file the last look examined or a run was asked for,
and the cursor keeps only where the quarantine sweep goes on. The look examines a bounded
number of files per tick and forgets the rows of files that left the inbox, so the table holds
the files in flight and those the last look examined, whatever the backlog.

A row holds what the sensor's state held for the file: `seen` ([size, mtime_ns] as the last
look saw it) and `requested` ([size, mtime_ns, requested_at, run_key, attempt] when a run was
asked for it). Rows are keyed by the photos root, so two roots sharing a database never mix.
A run the sensor asks for names its batch by run key (`batch_files`) rather than listing its
files: Dagster keeps every run request in its tick record too.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import sqlalchemy as sa

from automation_pipelines.reliability import store

files_table = sa.Table(
    "ap_web_images_files",
    store.metadata,
    sa.Column("root", sa.String(1024), primary_key=True),
    #: "inbox" or "quarantine".
    sa.Column("area", sa.String(16), primary_key=True),
    #: SHA-256 of `rel`: a path may be 4,096 bytes, more than an index entry may hold.
    sa.Column("rel_key", sa.String(64), primary_key=True),
    sa.Column("rel", sa.Text, nullable=False),
    sa.Column("seen", sa.JSON(none_as_null=True)),
    sa.Column("requested", sa.JSON(none_as_null=True)),
    #: The run key the file was last asked for under (`requested`'s fourth field): a run
    #: configured with `batch` reads its files here.
    sa.Column("run_key", sa.String(128), index=True),
)

#: Names per DELETE … IN (…): well inside every database's limit on bound parameters.
_CHUNK = 500
#: The state's maps, by area: (seen, requested).
AREAS = {"inbox": ("seen", "requested"), "quarantine": ("quarantine_seen", "quarantine_requested")}


def empty_state() -> dict[str, dict[str, list]]:
    return {name: {} for names in AREAS.values() for name in names}


class Book(Protocol):
    """Where a look's state comes from and goes to."""

    def load(self) -> dict[str, dict[str, list]]: ...

    def save(self, state: dict[str, dict[str, list]]) -> None: ...


class TableBook:
    """The state of one photos root in `ap_web_images_files`. `save` writes only the rows that
    changed since `load`, in one transaction."""

    def __init__(self, engine: sa.Engine, root: str) -> None:
        self.engine = engine
        self.root = root
        self._loaded: dict[tuple[str, str], tuple] = {}

    def load(self) -> dict[str, dict[str, list]]:
        table = files_table
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.area, table.c.rel, table.c.seen, table.c.requested).where(
                    table.c.root == self.root
                )
            ).all()
        state = empty_state()
        self._loaded = {}
        for area, rel, seen, requested in rows:
            if area not in AREAS:
                continue
            seen_name, requested_name = AREAS[area]
            if seen is not None:
                state[seen_name][rel] = seen
            if requested is not None:
                state[requested_name][rel] = requested
            self._loaded[(area, rel)] = (seen, requested)
        return state

    def save(self, state: dict[str, dict[str, list]]) -> None:
        rows: dict[tuple[str, str], tuple] = {}
        for area, (seen_name, requested_name) in AREAS.items():
            seen, requested = state.get(seen_name, {}), state.get(requested_name, {})
            for rel in seen.keys() | requested.keys():
                rows[(area, rel)] = (seen.get(rel), requested.get(rel))
        gone = [key for key in self._loaded if key not in rows]
        changed = [key for key, row in rows.items() if self._loaded.get(key) != row]
        if not gone and not changed:
            return
        table = files_table
        with self.engine.begin() as conn:
            for area in AREAS:
                keys = [_key(rel) for where, rel in gone + changed if where == area]
                for start in range(0, len(keys), _CHUNK):
                    conn.execute(
                        table.delete().where(
                            (table.c.root == self.root)
                            & (table.c.area == area)
                            & table.c.rel_key.in_(keys[start : start + _CHUNK])
                        )
                    )
            if changed:
                conn.execute(
                    table.insert(),
                    [
                        {
                            "root": self.root,
                            "area": area,
                            "rel_key": _key(rel),
                            "rel": rel,
                            "seen": rows[(area, rel)][0],
                            "requested": rows[(area, rel)][1],
                            "run_key": _run_key(rows[(area, rel)][1]),
                        }
                        for area, rel in changed
                    ],
                )
        self._loaded = rows


def _key(rel: str) -> str:
    return hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()


def _run_key(requested: list | None) -> str | None:
    return requested[3] if requested and len(requested) > 3 else None


def batch_files(engine: sa.Engine, root: str, run_key: str) -> tuple[list[str], list[str]]:
    """The files the sensor asked for under `run_key`: (inbox files, quarantined files to look
    at again), oldest first. Empty once they left (a run took them, or they were asked for
    again under another key)."""
    table = files_table
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.area, table.c.rel, table.c.requested).where(
                (table.c.root == root) & (table.c.run_key == run_key)
            )
        ).all()
    ordered = sorted(rows, key=lambda row: (row.requested[1], row.rel))
    return (
        [row.rel for row in ordered if row.area == "inbox"],
        [row.rel for row in ordered if row.area == "quarantine"],
    )
