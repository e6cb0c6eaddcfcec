"""Per-photo rows of web_images on SQLite and PostgreSQL: an upsert replaces a photo's row, two
roots never mix, two processes writing rows at once lose none (the manifest rewritten whole by
two writers did), and manifest.json is regenerated from the rows in its old shape, entries of an
older manifest adopted, an unchanged manifest left alone."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import sqlalchemy as sa

from automation_pipelines.automations.web_images import records
from automation_pipelines.reliability import store


def entry(relative: str, source_bytes: int = 1000, saved: int = 600) -> dict:
    stem = Path(relative).with_suffix("").as_posix()
    return {
        "source": relative,
        "source_bytes": source_bytes,
        "width": 1600,
        "height": 1200,
        "outputs": [
            {
                "path": f"{stem}-800.webp",
                "format": "webp",
                "width": 800,
                "height": 600,
                "bytes": 400,
            },
            {
                "path": f"{stem}-800.jpg",
                "format": "jpeg",
                "width": 800,
                "height": 600,
                "bytes": 500,
            },
        ],
        "bytes_saved": saved,
    }


def record(engine, root, relative: str, **kwargs) -> None:
    records.record_photo(
        engine,
        root,
        entry(relative, **kwargs),
        source_sha256="a" * 64,
        settings="widths=800;webp=80;jpeg=82",
        run_id="run-1",
    )


def test_upsert_replaces_a_photos_row_and_roots_do_not_mix(events_db_url, tmp_path) -> None:
    engine = store.engine(events_db_url)
    one, other = tmp_path / "one", tmp_path / "other"
    record(engine, one, "trip/a.jpg", source_bytes=1000)
    record(engine, one, "trip/a.jpg", source_bytes=2000, saved=1500)  # rendered again
    record(engine, other, "trip/a.jpg", source_bytes=7)

    row = records.get_record(engine, one, "trip/a.jpg")
    assert (row.source_bytes, row.bytes_saved, row.run_id) == (2000, 1500, "run-1")
    assert row.outputs == entry("trip/a.jpg")["outputs"]
    assert records.get_record(engine, other, "trip/a.jpg").source_bytes == 7
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(records.web_images_table))
        assert count.scalar_one() == 2
    assert records.manifest_from_records(engine, one) == {
        "trip/a.jpg": entry("trip/a.jpg", source_bytes=2000, saved=1500)
    }


def _write_rows(url: str, root: str, prefix: str, count: int) -> None:
    engine = store.engine(url)
    for n in range(count):
        record(engine, root, f"{prefix}/{n:03d}.jpg")
        record(engine, root, "shared.jpg", source_bytes=n)  # both write this one too


def test_two_writers_at_once_lose_no_row(events_db_url, tmp_path) -> None:
    store.engine(events_db_url)  # tables exist before the writers race to create them
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_rows, args=(events_db_url, str(tmp_path), name, 40))
        for name in ("left", "right")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    manifest = tmp_path / "web" / "manifest.json"
    assert len(records.regenerate_manifest(store.engine(events_db_url), tmp_path, manifest)) == 81
    written = json.loads(manifest.read_text())
    assert sorted(written) == sorted(
        [f"{side}/{n:03d}.jpg" for side in ("left", "right") for n in range(40)] + ["shared.jpg"]
    )


def test_manifest_is_regenerated_from_rows_and_adopts_an_older_manifest(
    events_db_url, tmp_path
) -> None:
    engine = store.engine(events_db_url)
    manifest = tmp_path / "web" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    # Written by the version that kept everything in the file: no rows for these yet.
    old = {"old.jpg": entry("old.jpg"), "b.jpg": entry("b.jpg", source_bytes=5)}
    manifest.write_text(json.dumps(old))
    record(engine, tmp_path, "b.jpg", source_bytes=9)  # re-rendered since: the row wins
    record(engine, tmp_path, "new.jpg")

    assert len(records.regenerate_manifest(engine, tmp_path, manifest)) == 3
    written = json.loads(manifest.read_text())
    assert written == {
        "b.jpg": entry("b.jpg", source_bytes=9),
        "new.jpg": entry("new.jpg"),
        "old.jpg": entry("old.jpg"),
    }
    assert records.get_record(engine, tmp_path, "old.jpg").source_sha256 is None  # adopted
    assert manifest.read_bytes() == records.manifest_bytes(written)

    # Nothing changed: the file is not rewritten (same inode, no temp file).
    inode = manifest.stat().st_ino
    records.regenerate_manifest(engine, tmp_path, manifest)
    assert manifest.stat().st_ino == inode
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json"]


def test_a_garbled_manifest_is_replaced_from_the_rows(events_db_url, tmp_path) -> None:
    engine = store.engine(events_db_url)
    manifest = tmp_path / "web" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"a.jpg": {"sou')
    record(engine, tmp_path, "a.jpg")
    assert len(records.regenerate_manifest(engine, tmp_path, manifest)) == 1
    assert json.loads(manifest.read_text()) == {"a.jpg": entry("a.jpg")}


def test_outputs_present_checks_every_output_and_its_size(events_db_url, tmp_path) -> None:
    engine = store.engine(events_db_url)
    record(engine, tmp_path, "a.jpg")
    row = records.get_record(engine, tmp_path, "a.jpg")
    out = tmp_path / "web"
    out.mkdir()
    (out / "a-800.webp").write_bytes(b"w" * 400)
    assert not records.outputs_present(out, row)  # the JPEG is missing
    (out / "a-800.jpg").write_bytes(b"j" * 499)
    assert not records.outputs_present(out, row)  # cut short
    (out / "a-800.jpg").write_bytes(b"j" * 500)
    assert records.outputs_present(out, row)
