"""Nothing wrong is ever published, and one bad file never takes the good ones with it.

A corpus of 78 broken and unusual inputs in one batch: every output decodes, shows its own
source upright and belongs to one source; every other input is quarantined alone, with its
reason and one open dead letter. Then each finding on its own: two sources with one stem, a PNG
whose picture data is damaged, a photo re-dropped smaller, a screenshot too tall for WebP, an
upload that stalls and one that goes on writing into quarantine, files of kinds not accepted, a
run that set items aside flagged in the run list, and a fixed photo resolving its dead letter.
Hypothesis cuts and damages photos at any byte: the run either renders the right picture or sets
the file aside with a reason, never anything in between.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from automation_pipelines.automations.web_images.batch import process_batch
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import (
    QUARANTINED_TAG,
    open_dead_letters,
)
from automation_pipelines_tests.automations.web_images import corpus
from automation_pipelines_tests.automations.web_images.corpus import (
    COLOURS,
    Case,
    diff,
    quadrants,
)
from automation_pipelines_tests.automations.web_images.photos import rendition
from automation_pipelines_tests.automations.web_images.ticks import look_once


def make_folders(root: Path, **options) -> PhotoFolders:
    folders = PhotoFolders(root=str(root), **options)
    folders.inbox.mkdir(parents=True, exist_ok=True)
    return folders


@pytest.fixture
def folders(tmp_path: Path) -> PhotoFolders:
    """No grace: these files are finished (the upload tests set their own)."""
    return make_folders(tmp_path / "photos", truncated_grace_seconds=0.0)


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return store.engine(f"sqlite:///{tmp_path / 'project.db'}")


def inbox_files(folders: PhotoFolders) -> list[str]:
    return sorted(
        p.relative_to(folders.inbox).as_posix()
        for p in folders.inbox.rglob("*")
        if not p.is_dir() or p.is_symlink()
    )


def put(folders: PhotoFolders, name: str, picture: Image.Image, fmt: str, **options) -> Path:
    path = folders.inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, fmt, **options)
    return path


def published(folders: PhotoFolders) -> list[str]:
    return sorted(
        p.relative_to(folders.output).as_posix()
        for p in folders.output.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )


def test_a_corpus_of_78_kinds_publishes_only_right_pictures(folders, engine) -> None:
    cases = corpus.build()
    assert len(cases) >= 60
    corpus.stage(cases, folders.inbox)

    outcome = process_batch(folders, engine, inbox_files(folders))

    good = sorted(case.name for case in cases if not case.reason)
    bad = sorted(case.name for case in cases if case.reason)
    assert sorted(entry["source"] for entry in outcome.delivered) == good
    assert sorted(name for name, _ in outcome.quarantined) == bad
    assert outcome.waiting == []
    corpus.check_outputs(cases, Path(folders.root))
    corpus.check_quarantine(cases, Path(folders.root))
    assert inbox_files(folders) == []
    letters = {row.item: row.reason for row in open_dead_letters(engine, "web_images")}
    assert sorted(letters) == bad  # one open letter each, with the reason of its note
    for name, reason in outcome.quarantined:
        assert letters[name] == reason


def test_two_sources_with_one_stem_keep_their_own_pictures(folders, engine) -> None:
    red_first = quadrants(1000, 600)
    blue_first = quadrants(1000, 600, colours=COLOURS[::-1])
    put(folders, "IMG_1.jpg", red_first, "JPEG", quality=90)
    put(folders, "IMG_1.png", blue_first, "PNG")

    process_batch(folders, engine, ["IMG_1.jpg", "IMG_1.png"])

    cases = [Case("IMG_1.jpg", None, red_first), Case("IMG_1.png", None, blue_first)]
    manifest = corpus.check_outputs(cases, Path(folders.root))
    jpg_outputs = {o["path"] for o in manifest["IMG_1.jpg"]["outputs"]}
    png_outputs = {o["path"] for o in manifest["IMG_1.png"]["outputs"]}
    assert jpg_outputs.isdisjoint(png_outputs) and len(jpg_outputs) == len(png_outputs) == 4


def test_a_png_with_damaged_picture_data_is_quarantined_not_published(folders, engine) -> None:
    """Pillow's PNG reader skips the picture data's CRC and returns what it decoded so far."""
    buffer = io.BytesIO()
    quadrants(900, 600).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    idat = next(at for at, kind in corpus.png_chunks(bytes(data)) if kind == b"IDAT")
    data[idat + 200] ^= 0xFF
    (folders.inbox / "damaged.png").write_bytes(bytes(data))
    put(folders, "fine.png", quadrants(900, 600), "PNG")

    outcome = process_batch(folders, engine, ["damaged.png", "fine.png"])

    [(name, reason)] = outcome.quarantined
    assert name == "damaged.png" and "corrupt PNG" in reason and "CRC" in reason
    assert [path for path in published(folders) if path.startswith("damaged")] == []
    assert [entry["source"] for entry in outcome.delivered] == ["fine.png"]


def test_a_photo_re_dropped_smaller_replaces_its_whole_set(folders, engine) -> None:
    put(folders, "holiday.jpg", quadrants(2000, 1200), "JPEG")
    process_batch(folders, engine, ["holiday.jpg"])
    first = published(folders)
    assert len(first) == 6  # 1600, 800 and 400 px, WebP and JPEG

    smaller = quadrants(900, 540, colours=COLOURS[::-1])
    put(folders, "holiday.jpg", smaller, "JPEG", quality=90)
    outcome = process_batch(folders, engine, ["holiday.jpg"])

    now = published(folders)
    assert set(now).isdisjoint(first)  # every old file gone, none overwritten in place
    assert len(now) == 4 and not any("-1600." in path for path in now)
    assert sorted(outcome.removed_outputs) == first
    corpus.check_outputs([Case("holiday.jpg", None, smaller)], Path(folders.root))


def test_a_screenshot_too_tall_for_webp_gets_its_jpeg_and_says_so(folders, engine) -> None:
    tall = quadrants(1080, 30000)
    put(folders, "screenshot.png", tall, "PNG")

    outcome = process_batch(folders, engine, ["screenshot.png"])

    [entry] = outcome.delivered
    assert entry["skipped"] == [
        {
            "width": 800,
            "height": 22222,
            "format": "webp",
            "reason": "800x22222 is over WEBP's 16383 px per side",
        }
    ]
    made = sorted((o["width"], o["format"]) for o in entry["outputs"])
    assert made == [(400, "jpeg"), (400, "webp"), (800, "jpeg")]
    case = Case("screenshot.png", None, tall, skipped=((800, "webp"),))
    corpus.check_outputs([case], Path(folders.root))  # nothing partial, nothing unlisted


def test_a_picture_no_web_format_can_hold_is_quarantined_with_nothing_written(
    folders, engine
) -> None:
    put(folders, "ribbon.png", Image.new("L", (2, 66000), 128), "PNG")

    outcome = process_batch(folders, engine, ["ribbon.png"])

    [(_, reason)] = outcome.quarantined
    assert "too tall or wide for web formats" in reason
    assert published(folders) == []


def _cut_jpeg(folders: PhotoFolders) -> tuple[Path, bytes]:
    whole = io.BytesIO()
    quadrants(1200, 800).save(whole, "JPEG", quality=90)
    data = whole.getvalue()
    path = folders.inbox / "upload.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path, data


def test_a_stalled_upload_waits_out_its_grace_then_renders_when_finished(tmp_path, engine):
    folders = make_folders(tmp_path / "photos", truncated_grace_seconds=300.0)
    path, data = _cut_jpeg(folders)

    outcome = process_batch(folders, engine, ["upload.jpg"])

    [(name, reason, until)] = outcome.waiting
    assert name == "upload.jpg" and "truncated" in reason
    assert until == pytest.approx(path.stat().st_mtime + 300, abs=2)
    assert path.exists() and not folders.quarantine.exists() and published(folders) == []
    # The sensor names it, with its reason, and does not ask again within the grace period.
    _, cursor, _ = look_once(folders, None, until - 100)
    requests, _, sentence = look_once(folders, cursor, until - 50)
    assert requests == [] and "upload.jpg" in sentence and "truncated" in sentence

    with path.open("ab") as upload:  # the upload resumes and finishes
        upload.write(data[len(data) // 2 :])
    outcome = process_batch(folders, engine, ["upload.jpg"])
    assert [entry["source"] for entry in outcome.delivered] == ["upload.jpg"]
    assert not (folders.waiting / "upload.jpg.json").exists()


def test_a_cut_short_file_with_an_mtime_ahead_waits_its_grace_from_its_last_change(
    tmp_path, engine
) -> None:
    """The grace period counts from the ctime, not from an mtime set into the future (which
    would keep a stalled upload waiting until then)."""
    folders = make_folders(tmp_path / "photos", truncated_grace_seconds=300.0)
    path, _ = _cut_jpeg(folders)
    ahead = time.time_ns() + 30 * 86400 * 10**9
    os.utime(path, ns=(ahead, ahead))
    outcome = process_batch(folders, engine, ["upload.jpg"])
    [(_, reason, until)] = outcome.waiting
    assert "truncated" in reason
    assert until == pytest.approx(path.stat().st_ctime + 300, abs=2)


def test_a_file_written_into_after_quarantine_is_looked_at_again(folders, engine) -> None:
    _, data = _cut_jpeg(folders)
    outcome = process_batch(folders, engine, ["upload.jpg"])
    [(_, reason)] = outcome.quarantined
    assert "unchanged for 0 s or more" in reason
    quarantined = folders.quarantine / "upload.jpg"
    with quarantined.open("ab") as upload:  # the uploader kept its file open
        upload.write(data[len(data) // 2 :])

    # The sensor sees the change once it is quiet, and asks for a look again.
    now = quarantined.stat().st_mtime + 60
    requests, _, _ = look_once(folders, None, now)
    [request] = requests
    config = request.run_config["ops"]["render_web_images"]["config"]
    assert (config.get("files", []), config["revisit"]) == ([], ["upload.jpg"])

    outcome = process_batch(folders, engine, [], revisit=["upload.jpg"])
    assert outcome.revisited == ["upload.jpg"]
    assert [entry["source"] for entry in outcome.delivered] == ["upload.jpg"]
    assert not quarantined.exists() and not (folders.quarantine / "upload.jpg.reason.txt").exists()
    assert open_dead_letters(engine, "web_images") == []


def test_files_of_every_kind_are_requested_and_none_sits_unseen(folders) -> None:
    put(folders, "photo.jpg", quadrants(), "JPEG")
    put(folders, "anim.gif", quadrants().convert("P"), "GIF")
    put(folders, "pic.bmp", quadrants(), "BMP")
    (folders.inbox / "photo.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64)
    (folders.inbox / "notes.txt").write_text("not a photo")
    os.symlink("photo.jpg", folders.inbox / "link.jpg")
    quiet = time.time() + folders.quiet_seconds + 1

    requests, _, _ = look_once(folders, None, quiet)

    asked = sorted(
        f for r in requests for f in r.run_config["ops"]["render_web_images"]["config"]["files"]
    )
    assert asked == sorted(inbox_files(folders))


def test_a_run_that_quarantined_shows_it_in_the_run_list_and_a_fix_resolves_it(
    folders, sqlite_instance, alert_router, monkeypatch, json_receiver
) -> None:
    monkeypatch.setenv("ALERT_URLS_PLATFORM", json_receiver.url)
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)

    def run(files: list[str]) -> dg.ExecuteInProcessResult:
        return render_web_images_job.execute_in_process(
            instance=sqlite_instance,
            resources={"folders": folders, "alerts": alert_router},
            run_config={"ops": {"render_web_images": {"config": {"files": files}}}},
        )

    (folders.inbox / "broken.jpg").write_bytes(b"not a photo at all")
    put(folders, "good.jpg", quadrants(), "JPEG")
    result = run(["broken.jpg", "good.jpg"])
    assert result.success
    run_tags = sqlite_instance.get_run_by_id(result.run_id).tags
    assert run_tags[QUARANTINED_TAG] == "1"  # the run list shows it, not only the event log
    engine = alert_router.outbox(sqlite_instance).engine
    assert [row.item for row in open_dead_letters(engine, "web_images")] == ["broken.jpg"]

    (folders.quarantine / "broken.jpg").unlink()
    put(folders, "broken.jpg", quadrants(), "JPEG")  # the owner drops a fixed copy
    fixed = run(["broken.jpg"])
    assert QUARANTINED_TAG not in sqlite_instance.get_run_by_id(fixed.run_id).tags
    assert open_dead_letters(engine, "web_images") == []
    assert rendition(folders.output, "broken.jpg", 400, "webp").exists()


PICTURE = quadrants(640, 400)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    PICTURE.save(buffer, fmt, **options)
    return buffer.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "WEBP", "TIFF")}


def _judged(tmp_path: Path, data: bytes, name: str) -> tuple[list, list]:
    """Run one file through a fresh batch: (delivered entries, quarantined)."""
    root = tmp_path / f"r{abs(hash(data)) % 10**12}-{len(data)}"
    folders = make_folders(root, truncated_grace_seconds=0.0)
    (folders.inbox / name).write_bytes(data)
    engine = store.engine(f"sqlite:///{root / 'project.db'}")
    try:
        outcome = process_batch(folders, engine, [name])
        for entry in outcome.delivered:
            for output in entry["outputs"]:
                with Image.open(folders.output / output["path"]) as picture:
                    picture.load()
                    assert diff(picture, PICTURE) < corpus.TOLERANCE, (name, len(data))
        assert len(outcome.delivered) + len(outcome.quarantined) == 1
        return outcome.delivered, outcome.quarantined
    finally:
        store.dispose_all()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(ENCODED)), cut=st.floats(0.0, 0.999))
def test_a_photo_cut_at_any_byte_is_never_published(tmp_path, fmt, cut) -> None:
    data = ENCODED[fmt]
    at = int(len(data) * cut)
    delivered, quarantined = _judged(tmp_path, data[:at], f"cut.{fmt.lower()}")
    assert delivered == [], (fmt, at)
    [(_, reason)] = quarantined
    assert any(word in reason for word in ("truncated", "empty file", "corrupt")), reason


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0.0, 0.999), mask=st.integers(1, 255))
def test_any_flipped_byte_of_a_png_is_quarantined(tmp_path, where, mask) -> None:
    """Every byte of a PNG is under a checksum (or is its signature): damage anywhere is found
    before a pixel is published."""
    data = bytearray(ENCODED["PNG"])
    at = int(len(data) * where)
    data[at] ^= mask
    delivered, quarantined = _judged(tmp_path, bytes(data), "flip.png")
    assert delivered == [], at
    [(_, reason)] = quarantined
    # A flipped chunk length makes the chunk run past the end: that reads as cut short.
    assert any(word in reason for word in ("corrupt", "not an image", "truncated")), (at, reason)
