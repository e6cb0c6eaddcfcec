"""One row per rendered photo in the project database; `web/manifest.json` is made from the rows.

A manifest read, changed and rewritten per photo loses records when two writers overlap (the
other's changes are overwritten) and goes stale when a run dies between the move of the original
and the write. A row per photo, written in one upsert after the renditions and before the
original moves, survives a kill at any instant; the manifest is regenerated whole from the rows
by every run, so the next run repairs one a killed run left behind.

Rows are keyed by the photos root and the path relative to the inbox, so two roots sharing one
project database never mix. A manifest entry without a row (a manifest from before this table,
a fresh database, a moved root) is adopted as a row first, so regenerating never drops it.

An output file belongs to one source. Names made since they carry the source's whole file name
cannot collide, but rows from before (`IMG_1.jpg` and `IMG_1.png` both listing `IMG_1-1600.webp`)
can: the manifest lists such a file only under the source that wrote it last.

The `details` column (animation frames, renditions a format could not hold) came after the
table was deployed; `ensure_schema` adds it to an existing table, once per database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from automation_pipelines.reliability import store
from automation_pipelines.reliability.files import atomic_write_bytes

log = logging.getLogger(__name__)

web_images_table = sa.Table(
    "ap_web_images",
    store.metadata,
    sa.Column("root", sa.String(1024), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    #: None for a row adopted from an old manifest, which never recorded it.
    sa.Column("source_sha256", sa.String(64)),
    #: The output settings (widths, qualities) the renditions were made with.
    sa.Column("settings", sa.String(255)),
    sa.Column("source_bytes", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Column("bytes_saved", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("rendered_at", sa.Float, nullable=False),
    #: Extra manifest fields: {"animated": true, "frames": N}, {"skipped": [...]}; None for most.
    sa.Column("details", sa.JSON),
)

_ENTRY_FIELDS = ("source_bytes", "width", "height", "outputs", "bytes_saved")
#: The manifest fields `details` may add to an entry.
DETAIL_FIELDS = ("animated", "frames", "skipped")
_schema_ready: set[str] = set()


def ensure_schema(engine: sa.Engine) -> None:
    """Add `details` to an `ap_web_images` made before it existed (ALTER TABLE … ADD COLUMN, a
    nullable column: old rows read as None). Safe when two processes race to do it."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _schema_ready:
        return
    if not _has_details(engine):
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {web_images_table.name} ADD COLUMN details JSON")
        except sa.exc.DBAPIError:
            if not _has_details(engine):  # not a lost race with another process
                raise
    _schema_ready.add(key)


def _has_details(engine: sa.Engine) -> bool:
    columns = sa.inspect(engine).get_columns(web_images_table.name)
    return any(column["name"] == "details" for column in columns)


def root_key(root: str | Path) -> str:
    """The photos root as rows name it: absolute, symlinks resolved."""
    return Path(root).resolve().as_posix()


def _insert(engine: sa.Engine):
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"web_images records need SQLite or PostgreSQL, not {dialect}")


def record_photo(
    engine: sa.Engine,
    root: str | Path,
    entry: Mapping,
    *,
    source_sha256: str | None,
    settings: str | None,
    run_id: str | None,
) -> None:
    """Insert or replace the row of one photo (`entry` as the manifest shows it), in one
    transaction: a reader sees the old row or the new one."""
    record_photos(engine, root, [(entry, source_sha256)], settings=settings, run_id=run_id)


def record_photos(
    engine: sa.Engine,
    root: str | Path,
    entries: list[tuple[Mapping, str | None]],
    *,
    settings: str | None,
    run_id: str | None,
) -> None:
    """`record_photo` for several photos ((entry, source_sha256) each) in one transaction: a
    batch renders many photos a second, and a commit per photo would cost more than one."""
    if not entries:
        return
    ensure_schema(engine)
    key, now = root_key(root), time.time()
    rows = []
    for entry, source_sha256 in entries:
        details = {name: entry[name] for name in DETAIL_FIELDS if name in entry}
        rows.append(
            {
                "root": key,
                "path": entry["source"],
                "source_sha256": source_sha256,
                "settings": settings,
                **{name: entry[name] for name in _ENTRY_FIELDS},
                "run_id": run_id,
                "rendered_at": now,
                "details": details or None,
            }
        )
    statement = _insert(engine)(web_images_table)
    statement = statement.on_conflict_do_update(
        index_elements=["root", "path"],
        set_={name: statement.excluded[name] for name in rows[0] if name not in ("root", "path")},
    )
    with engine.begin() as conn:
        conn.execute(statement, rows)


def get_record(engine: sa.Engine, root: str | Path, relative: str) -> sa.Row | None:
    return get_records(engine, root, [relative]).get(relative)


#: Paths per query of `get_records`: well under every database's limit of bound values.
_PATHS_PER_QUERY = 500


def get_records(engine: sa.Engine, root: str | Path, paths: list[str]) -> dict[str, sa.Row]:
    """The rows of these photos of `root` that exist, by path, in a query per 500."""
    ensure_schema(engine)
    table, key, found = web_images_table, root_key(root), {}
    with engine.connect() as conn:
        for start in range(0, len(paths), _PATHS_PER_QUERY):
            chunk = paths[start : start + _PATHS_PER_QUERY]
            for row in conn.execute(
                sa.select(table).where(table.c.root == key, table.c.path.in_(chunk))
            ):
                found[row.path] = row
    return found


def manifest_entry_of(row: sa.Row) -> dict:
    """The manifest's entry for a row: the shape readers of manifest.json know, plus `animated`,
    `frames` and `skipped` where the row has them."""
    details = {k: v for k, v in (row.details or {}).items() if k in DETAIL_FIELDS}
    return {"source": row.path, **{name: getattr(row, name) for name in _ENTRY_FIELDS}, **details}


def manifest_from_records(engine: sa.Engine, root: str | Path) -> dict[str, dict]:
    """Every row of `root` as a manifest entry; an output listed by two rows (possible only for
    rows from before names carried the source's extension) stays under the latest one."""
    ensure_schema(engine)
    table = web_images_table
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.root == root_key(root)).order_by(table.c.path)
        ).all()
    manifest = {row.path: manifest_entry_of(row) for row in rows}
    owner: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: (-r.rendered_at, r.path)):
        for output in row.outputs:
            owner.setdefault(output["path"], row.path)
    for path, entry in manifest.items():
        kept = [o for o in entry["outputs"] if owner[o["path"]] == path]
        if len(kept) != len(entry["outputs"]):
            log.warning(
                "%s: %d output(s) also listed by a source rendered later; listed there only",
                path,
                len(entry["outputs"]) - len(kept),
            )
            entry["outputs"] = kept
    return manifest


def listed_outputs(manifest: Mapping[str, Mapping]) -> set[str]:
    """Every output path a manifest lists."""
    return {output["path"] for entry in manifest.values() for output in entry["outputs"]}


def outputs_present(output_root: Path, row: sa.Row) -> bool:
    """Every output the row lists is on disk with the recorded size."""
    for output in row.outputs:
        try:
            if (output_root / output["path"]).stat().st_size != output["bytes"]:
                return False
        except OSError:
            return False
    return True


def adopt_manifest(engine: sa.Engine, root: str | Path, manifest: Mapping[str, Mapping]) -> int:
    """Keep, as rows, the manifest entries that have none; return how many were adopted."""
    key = root_key(root)
    ensure_schema(engine)
    rows = []
    if not manifest:
        return 0
    table = web_images_table
    with engine.connect() as conn:
        known = set(conn.execute(sa.select(table.c.path).where(table.c.root == key)).scalars())
    for relative, entry in manifest.items():
        if relative in known or not _is_entry(entry):
            continue
        rows.append(
            {
                "root": key,
                "path": relative,
                "source_sha256": None,
                "settings": None,
                **{name: entry[name] for name in _ENTRY_FIELDS},
                "run_id": None,
                "rendered_at": time.time(),
                "details": {k: entry[k] for k in DETAIL_FIELDS if k in entry} or None,
            }
        )
    if rows:
        statement = _insert(engine)(web_images_table).on_conflict_do_nothing(
            index_elements=["root", "path"]
        )
        with engine.begin() as conn:
            conn.execute(statement, rows)
    return len(rows)


def _is_entry(entry: object) -> bool:
    return isinstance(entry, Mapping) and all(name in entry for name in _ENTRY_FIELDS)


def read_manifest(path: Path) -> tuple[dict, bytes | None]:
    """The manifest on disk and its bytes; an unreadable or garbled one counts as empty."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    try:
        manifest = json.loads(data)
    except ValueError:
        log.warning("%s is not valid JSON; it will be regenerated from the records", path)
        return {}, data
    return (manifest if isinstance(manifest, dict) else {}), data


def manifest_bytes(manifest: Mapping) -> bytes:
    """One entry per line, sorted: readable and diffable, and made by the C encoder entry by
    entry (an indented dump runs in Python: 1.8 s for 20,000 photos, at every run)."""
    lines = [
        f"{json.dumps(source)}: {json.dumps(manifest[source], sort_keys=True)}"
        for source in sorted(manifest)
    ]
    return ("{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n").encode()


def regenerate_manifest(engine: sa.Engine, root: str | Path, path: Path) -> dict[str, dict]:
    """Write `path` whole from the rows of `root` (atomically; not at all when unchanged), after
    adopting entries the rows lack; return the manifest written."""
    current, data = read_manifest(path)
    adopt_manifest(engine, root, current)
    manifest = manifest_from_records(engine, root)
    new = manifest_bytes(manifest)
    if new != data:
        atomic_write_bytes(path, new)
    return manifest
