"""The web images job on real photographs: renditions at the configured widths with orientation
applied and GPS stripped, WebP and JPEG written, originals moved, manifest correct, re-runs
idempotent; and a batch mixing a corpus of bad files with good ones delivers the good ones,
quarantines each bad one with its reason and sends one alert."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.deadletters import open_dead_letters
from automation_pipelines_tests.automations.web_images.photos import GPS_IFD, photo


@pytest.fixture
def folders(tmp_path: Path) -> PhotoFolders:
    folders = PhotoFolders(root=str(tmp_path / "photos"))
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
    [event] = result.asset_materializations_for_node("render_web_images")
    return {k: v.value for k, v in event.metadata.items()}


def test_good_photos_become_web_images(run, folders) -> None:
    photo(folders.inbox / "landscape.jpg", 3000)
    photo(folders.inbox / "trip/portrait.jpg", 2400, sample="coffee", orientation=6)
    photo(folders.inbox / "small.jpg", 600, sample="chelsea")
    files = ["landscape.jpg", "trip/portrait.jpg", "small.jpg"]

    result = run(files)

    out = folders.output
    for width in (1600, 800, 400):
        with Image.open(out / f"landscape-{width}.webp") as webp:
            assert webp.width == width and webp.format == "WEBP"
        with Image.open(out / f"landscape-{width}.jpg") as jpeg:
            assert jpeg.width == width and jpeg.info.get("progressive") == 1
            assert jpeg.height == round(width * 3000 / 3000)  # astronaut is square
            assert not jpeg.getexif().get_ifd(GPS_IFD) and 0x010F not in jpeg.getexif()
            assert jpeg.info.get("icc_profile")
        with Image.open(out / f"trip/portrait-{width}.jpg") as turned:
            assert turned.height > turned.width  # orientation 6 applied: now portrait
    assert not (out / "small-1600.jpg").exists() and not (out / "small-800.jpg").exists()
    with Image.open(out / "small-400.jpg") as small:
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
        f"landscape-{w}.{ext}" for w in (1600, 800, 400) for ext in ("webp", "jpg")
    }
    for output in entry["outputs"]:
        assert (out / output["path"]).stat().st_size == output["bytes"]
    largest_webp = (out / "landscape-1600.webp").stat().st_size
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
    # As if the first run had crashed after writing outputs but before moving the original:
    original.write_bytes(kept)
    run(["a.jpg"])
    assert digest(folders.output) == before
    assert folders.manifest.read_text() == manifest
    assert [p.name for p in folders.processed.iterdir()] == ["a.jpg"]


def test_bad_files_are_quarantined_and_the_good_ones_delivered(
    run, folders, json_receiver, alert_router
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

    assert (folders.output / "good-800.webp").exists()
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

    [alert] = json_receiver.received
    assert alert["title"].startswith("[QUARANTINED] web_images: 4 file(s)")
    for name in reasons:
        assert f"- {name}: " in alert["message"]
    letters = open_dead_letters(alert_router.outbox().engine, "web_images")
    assert sorted(r.item for r in letters) == sorted(reasons)
