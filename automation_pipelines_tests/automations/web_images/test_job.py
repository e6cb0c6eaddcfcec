"""The web images job on real photographs: renditions at the configured widths with orientation
applied and GPS stripped, WebP and JPEG written, one row per photo, originals moved, manifest
correct, re-runs idempotent; a batch mixing a corpus of bad files with good ones delivers the good
ones, quarantines each bad one with its reason and queues one alert (a channel that hangs holds
no run); a run waits while another
holds the automation's lock; and the next run repairs what a killed run left (a photo recorded but
not moved is only moved, a half-rendered one rendered again, stale temp files and a stale
manifest replaced)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from automation_pipelines.automations.web_images import records
from automation_pipelines.automations.web_images.images import render_image
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.deadletters import open_dead_letters
from automation_pipelines.reliability.locks import exclusive_lock
from automation_pipelines_tests.alert_peers import HangingChannel, deliver_queued
from automation_pipelines_tests.automations.web_images.photos import GPS_IFD, photo, rendition


@pytest.fixture
def folders(tmp_path: Path) -> PhotoFolders:
    """No grace for files that end early: these tests judge finished files."""
    folders = PhotoFolders(root=str(tmp_path / "photos"), truncated_grace_seconds=0.0)
    folders.inbox.mkdir(parents=True)
    return folders


@pytest.fixture
def run(folders, sqlite_instance, alert_router, monkeypatch, json_receiver):
    monkeypatch.setenv("ALERT_URLS_PLATFORM", json_receiver.url)
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)

    def execute(files: list[str], **config) -> dg.ExecuteInProcessResult:
        return render_web_images_job.execute_in_process(
            instance=sqlite_instance,
            resources={"folders": folders, "alerts": alert_router},
            run_config={"ops": {"render_web_images": {"config": {"files": files, **config}}}},
        )

    return execute


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def materialization(result) -> dict:
    [event] = [
        e
        for e in result.asset_materializations_for_node("render_web_images")
        if e.asset_key == dg.AssetKey("web_images")
    ]
    return {k: v.value for k, v in event.metadata.items()}


def test_a_run_whose_alert_channel_hangs_finishes_without_waiting_for_it(
    run, folders, alert_router, sqlite_instance, monkeypatch
) -> None:
    """The run queues its quarantine alert and ends; the channel, which would hold a sender
    until the delivery budget ran out, is not even connected to until the outbox sensor runs."""
    hanging = HangingChannel()
    try:
        monkeypatch.setenv("TEST_DEFAULT_URLS", hanging.url)
        photo(folders.inbox / "good.jpg", 1200)
        (folders.inbox / "notes.jpg").write_text("not a photo\n")

        result = run(["good.jpg", "notes.jpg"])

        assert result.success
        assert materialization(result)["images_quarantined"] == 1
        assert hanging.connections == []
        [queued] = alert_router.outbox(sqlite_instance).alerts(status="pending")
        assert queued.title.startswith("[QUARANTINED] web_images: 1 file(s)")
    finally:
        hanging.close()


def test_good_photos_become_web_images(run, folders) -> None:
    photo(folders.inbox / "landscape.jpg", 3000)
    photo(folders.inbox / "trip/portrait.jpg", 2400, sample="coffee", orientation=6)
    photo(folders.inbox / "small.jpg", 600, sample="chelsea")
    files = ["landscape.jpg", "trip/portrait.jpg", "small.jpg"]

    result = run(files)

    out = folders.output
    for width in (1600, 800, 400):
        with Image.open(rendition(out, "landscape.jpg", width, "webp")) as webp:
            assert webp.width == width and webp.format == "WEBP"
        with Image.open(rendition(out, "landscape.jpg", width, "jpg")) as jpeg:
            assert jpeg.width == width and jpeg.info.get("progressive") == 1
            assert jpeg.height == round(width * 3000 / 3000)  # astronaut is square
            assert not jpeg.getexif().get_ifd(GPS_IFD) and 0x010F not in jpeg.getexif()
            assert jpeg.info.get("icc_profile")
        with Image.open(rendition(out / "trip", "portrait.jpg", width, "jpg")) as turned:
            assert turned.height > turned.width  # orientation 6 applied: now portrait
    assert sorted(p.name.split(".")[1] for p in out.glob("small.jpg-*")) == ["jpg-400"] * 2
    with Image.open(rendition(out, "small.jpg", 400, "jpg")) as small:
        assert small.width == 400

    assert sorted(
        p.relative_to(folders.processed).as_posix() for p in folders.processed.rglob("*.jpg")
    ) == sorted(files)
    assert list(folders.inbox.rglob("*.jpg")) == []
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    manifest = json.loads(folders.manifest.read_text())
    assert sorted(manifest) == sorted(files)
    entry = manifest["landscape.jpg"]
    assert entry["source_bytes"] == (folders.processed / "landscape.jpg").stat().st_size
    assert {o["path"] for o in entry["outputs"]} == {
        rendition(out, "landscape.jpg", w, ext).name
        for w in (1600, 800, 400)
        for ext in ("webp", "jpg")
    }
    for output in entry["outputs"]:
        assert (out / output["path"]).stat().st_size == output["bytes"]
    largest_webp = rendition(out, "landscape.jpg", 1600, "webp").stat().st_size
    assert entry["bytes_saved"] == entry["source_bytes"] - largest_webp

    meta = materialization(result)
    assert meta["images_processed"] == 3 and meta["images_quarantined"] == 0
    assert meta["mb_in"] > 0 and meta["mb_out"] > 0 and 0 < meta["percent_saved"] < 100


def test_re_running_a_batch_is_idempotent(run, folders) -> None:
    original = photo(folders.inbox / "a.jpg", 2000)
    kept = original.read_bytes()
    run(["a.jpg"])
    before, manifest = digest(folders.output), folders.manifest.read_text()

    again = run(["a.jpg"])  # the same batch again: nothing left to do
    assert materialization(again)["already_done"] == 1
    # As if the first run had died after recording the photo but before moving the original:
    original.write_bytes(kept)
    repaired = run(["a.jpg"])
    meta = materialization(repaired)
    assert (meta["repaired"], meta["images_processed"]) == (1, 0)  # moved, not rendered again
    assert digest(folders.output) == before
    assert folders.manifest.read_text() == manifest
    assert [p.name for p in folders.processed.iterdir()] == ["a.jpg"]


def test_each_photo_has_one_row_with_its_source_hash(run, folders, alert_router) -> None:
    kept = photo(folders.inbox / "trip/a.jpg", 1700).read_bytes()
    result = run(["trip/a.jpg"])
    engine = alert_router.outbox().engine
    row = records.get_record(engine, folders.root, "trip/a.jpg")
    assert row.source_sha256 == hashlib.sha256(kept).hexdigest()
    assert row.run_id == result.run_id
    assert json.loads(folders.manifest.read_text()) == {
        "trip/a.jpg": records.manifest_entry_of(row)
    }
    assert materialization(result)["manifest_entries"] == 1


def test_other_settings_render_again_instead_of_reusing_outputs(run, folders) -> None:
    kept = photo(folders.inbox / "a.jpg", 1700).read_bytes()
    run(["a.jpg"])
    (folders.inbox / "a.jpg").write_bytes(kept)
    meta = materialization(run(["a.jpg"], webp_quality=50))
    assert (meta["images_processed"], meta["repaired"]) == (1, 0)


def test_a_run_waits_while_another_holds_the_lock(run, folders, sqlite_instance) -> None:
    photo(folders.inbox / "a.jpg", 1700)
    results: list = []
    with exclusive_lock(folders.lock, holder={"run_id": "the-other-run"}):
        worker = threading.Thread(target=lambda: results.append(run(["a.jpg"])), daemon=True)
        worker.start()

        def waiting_logged() -> bool:
            logs = [
                entry.user_message
                for other in sqlite_instance.get_runs()
                for entry in sqlite_instance.all_logs(other.run_id)
            ]
            return any("held by run_id the-other-run" in message for message in logs)

        deadline = time.monotonic() + 60
        while not waiting_logged():
            assert time.monotonic() < deadline, "the run never said it waits for the lock"
            time.sleep(0.1)
        # The holder is still working: the waiting run has touched nothing.
        assert (folders.inbox / "a.jpg").exists()
        assert not folders.output.exists() and not folders.processed.exists()
    worker.join(timeout=120)
    [result] = results
    assert result.success and (folders.processed / "a.jpg").exists()
    assert rendition(folders.output, "a.jpg", 1600, "webp").exists()


def test_the_next_run_repairs_what_a_killed_run_left(run, folders, alert_router) -> None:
    # recorded.jpg: rendered and recorded, the run died before moving the original.
    kept = photo(folders.inbox / "recorded.jpg", 1700).read_bytes()
    run(["recorded.jpg"])
    (folders.inbox / "recorded.jpg").write_bytes(kept)
    untouched = {p.name: p.stat().st_mtime_ns for p in folders.output.glob("recorded-*")}
    # earlier.jpg: delivered, but the manifest was last written before its row.
    photo(folders.inbox / "earlier.jpg", 900, sample="coffee")
    run(["earlier.jpg"])
    stale = json.loads(folders.manifest.read_text())
    del stale["earlier.jpg"]
    folders.manifest.write_text(json.dumps(stale))
    # half.jpg: the run died while writing its renditions.
    source = photo(folders.inbox / "half.jpg", 1700, sample="chelsea")
    scratch = Path(folders.root) / "scratch"
    render_image(source, scratch, Path("half.jpg"))
    first = rendition(scratch, "half.jpg", 1600, "webp")
    shutil.copy(first, folders.output / first.name)
    (folders.output / ".half.jpg-800.webp.k1ll3d.tmp").write_bytes(b"RIFF half a file")
    (folders.output / ".manifest.json.4242.tmp").write_bytes(b'{"half": ')
    shutil.rmtree(scratch)

    result = run(["recorded.jpg", "half.jpg"])

    meta = materialization(result)
    assert (meta["repaired"], meta["images_processed"]) == (1, 1)
    assert {p.name: p.stat().st_mtime_ns for p in folders.output.glob("recorded-*")} == untouched
    assert not list(folders.output.glob(".*.tmp"))
    assert sorted(p.name for p in folders.processed.iterdir()) == [
        "earlier.jpg",
        "half.jpg",
        "recorded.jpg",
    ]
    assert list(folders.inbox.iterdir()) == []
    manifest = json.loads(folders.manifest.read_text())
    assert sorted(manifest) == ["earlier.jpg", "half.jpg", "recorded.jpg"]
    engine = alert_router.outbox().engine
    assert manifest == records.manifest_from_records(engine, folders.root)
    for entry in manifest.values():
        for output in entry["outputs"]:
            assert (folders.output / output["path"]).stat().st_size == output["bytes"]


def test_bad_files_are_quarantined_and_the_good_ones_delivered(
    run, folders, json_receiver, alert_router, sqlite_instance
) -> None:
    photo(folders.inbox / "good.jpg", 1800)
    (folders.inbox / "empty.jpg").write_bytes(b"")
    (folders.inbox / "notes.jpg").write_text("meeting notes, not a photo\n")
    whole = photo(folders.inbox / "whole.jpg", 1800).read_bytes()
    (folders.inbox / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folders.inbox / "whole.jpg").unlink()
    photo(folders.inbox / "huge.jpg", 2600, sample="coffee")
    files = ["good.jpg", "empty.jpg", "notes.jpg", "truncated.jpg", "huge.jpg"]

    result = run(files, max_megapixels=4.0)

    assert rendition(folders.output, "good.jpg", 800, "webp").exists()
    assert (folders.processed / "good.jpg").exists()
    reasons = {
        p.name.removesuffix(".reason.txt"): p.read_text()
        for p in folders.quarantine.glob("*.reason.txt")
    }
    assert sorted(reasons) == ["empty.jpg", "huge.jpg", "notes.jpg", "truncated.jpg"]
    assert "empty file" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert "pixels" in reasons["huge.jpg"]
    for name in reasons:
        assert (folders.quarantine / name).exists()
    meta = materialization(result)
    assert (meta["images_processed"], meta["images_quarantined"]) == (1, 4)

    assert json_receiver.received == []  # queued by the run, delivered by the outbox sensor
    deliver_queued(sqlite_instance, alert_router)
    [alert] = json_receiver.received
    assert alert["title"].startswith("[QUARANTINED] web_images: 4 file(s)")
    for name in reasons:
        assert f"- {name}: " in alert["message"]
    letters = open_dead_letters(alert_router.outbox().engine, "web_images")
    assert sorted(r.item for r in letters) == sorted(reasons)
