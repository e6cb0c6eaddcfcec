"""A batch renders several photos at once (`PhotoFolders.render_threads`) and still comes out
exactly as it would one photo at a time: any mix of the corpus gives the same deliveries,
quarantine reasons, manifest and files whatever the number of threads (Hypothesis). A disk error
on one photo finishes the photos before it and moves none after it, and the next run delivers
the rest; a batch resolves the open dead letters of its own photos only."""

from __future__ import annotations

import errno
import functools
import json
import tempfile
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation_pipelines.automations.web_images import batch as batch_module
from automation_pipelines.automations.web_images import records
from automation_pipelines.automations.web_images.batch import process_batch
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import open_dead_letters, record_dead_letter
from automation_pipelines_tests.automations.web_images import corpus
from automation_pipelines_tests.automations.web_images.photos import photo


def make_folders(root: Path, threads: int) -> PhotoFolders:
    folders = PhotoFolders(root=str(root), truncated_grace_seconds=0.0, render_threads=threads)
    folders.inbox.mkdir(parents=True, exist_ok=True)
    return folders


def engine_at(folder: Path) -> sa.Engine:
    return store.engine(f"sqlite:///{folder / 'project.db'}")


def tree(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != "manifest.json"
    )


def test_a_batch_renders_as_many_photos_at_once_as_it_has_threads(tmp_path, monkeypatch) -> None:
    """Three renderings meet at a barrier that only three at once can pass: one photo at a time
    would wait there until it broke and the photos would be quarantined."""
    folders = make_folders(tmp_path / "photos", threads=3)
    names = [f"{n}.jpg" for n in range(6)]
    for name in names:
        photo(folders.inbox / name, 500)
    barrier = threading.Barrier(3, timeout=20)
    inside: list[str] = []
    real = batch_module.render_image

    def meeting(read, output, relative, settings):
        if len(inside) < 3:
            inside.append(threading.current_thread().name)
            barrier.wait()
        return real(read, output, relative, settings)

    monkeypatch.setattr(batch_module, "render_image", meeting)
    outcome = process_batch(folders, engine_at(tmp_path), names)

    assert outcome.quarantined == []
    assert sorted(entry["source"] for entry in outcome.delivered) == names
    assert len(set(inside)) == 3  # three threads, not one thread three times


@functools.cache
def _cases() -> tuple[corpus.Case, ...]:
    return tuple(corpus.build())


def _outcome_of(root: Path, cases: list[corpus.Case], threads: int) -> dict:
    folders = make_folders(root / "photos", threads)
    corpus.stage(cases, folders.inbox)
    engine = engine_at(root)
    outcome = process_batch(folders, engine, [case.name for case in cases])
    manifest = json.loads(folders.manifest.read_text())
    return {
        "delivered": sorted(entry["source"] for entry in outcome.delivered),
        "quarantined": sorted(outcome.quarantined),
        "manifest": manifest,
        "web": tree(folders.output),
        "processed": tree(folders.processed),
        "quarantine": tree(folders.quarantine),
        "inbox": tree(folders.inbox),
        "letters": sorted((r.item, r.reason) for r in open_dead_letters(engine, "web_images")),
        "rows": sorted(records.manifest_from_records(engine, folders.root)),
    }


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=14, unique=True),
    threads=st.integers(2, 6),
)
def test_any_mix_comes_out_the_same_whatever_the_threads(picks, threads) -> None:
    cases = _cases()
    chosen = [cases[index] for index in dict.fromkeys(pick % len(cases) for pick in picks)]
    with tempfile.TemporaryDirectory() as folder:
        one = _outcome_of(Path(folder) / "one", chosen, 1)
        many = _outcome_of(Path(folder) / "many", chosen, threads)
    assert many == one
    assert len(one["delivered"]) + len(one["quarantined"]) == len(chosen)


def test_a_disk_error_finishes_the_photos_before_it_and_moves_none_after(
    tmp_path, monkeypatch
) -> None:
    folders = make_folders(tmp_path / "photos", threads=3)
    names = [f"{n:02d}.jpg" for n in range(10)]
    for name in names:
        photo(folders.inbox / name, 420)
    engine = engine_at(tmp_path)
    real = batch_module.render_image

    def full_at_six(read, output, relative, settings):
        if relative.name == "06.jpg":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(read, output, relative, settings)

    monkeypatch.setattr(batch_module, "render_image", full_at_six)
    with pytest.raises(OSError, match="No space left"):
        process_batch(folders, engine, names)

    before, after = names[:6], names[6:]
    assert tree(folders.processed) == before
    assert tree(folders.inbox) == after  # rendered or not, nothing after the error moved
    assert sorted(records.manifest_from_records(engine, folders.root)) == before
    assert sorted(json.loads(folders.manifest.read_text())) == before

    monkeypatch.setattr(batch_module, "render_image", real)
    outcome = process_batch(folders, engine, after)
    assert sorted(entry["source"] for entry in outcome.delivered) == after
    manifest = json.loads(folders.manifest.read_text())
    assert sorted(manifest) == names
    listed = {output["path"] for entry in manifest.values() for output in entry["outputs"]}
    assert set(tree(folders.output)) == listed  # nothing unlisted left behind


def test_a_batch_resolves_the_open_dead_letters_of_its_photos_only(tmp_path) -> None:
    folders = make_folders(tmp_path / "photos", threads=2)
    engine = engine_at(tmp_path)
    names = [f"{n}.jpg" for n in range(8)]
    for name in names:
        photo(folders.inbox / name, 400)
    store.metadata.create_all(engine)
    record_dead_letter(engine, "web_images", "3.jpg", "truncated: ends early")
    record_dead_letter(engine, "web_images", "elsewhere.jpg", "truncated: ends early")
    record_dead_letter(engine, "other_automation", "5.jpg", "broken")

    process_batch(folders, engine, names)

    still_open = sorted((r.automation, r.item) for r in open_dead_letters(engine))
    assert still_open == [("other_automation", "5.jpg"), ("web_images", "elsewhere.jpg")]


def test_renditions_no_row_lists_are_removed_from_the_batchs_folders_only(tmp_path) -> None:
    """A killed run can leave renditions no row lists: the next batch removes those in its own
    output folders (the top one and a sub-folder here), keeps every listed rendition and any
    file not named like one, and leaves the folders of other photos alone."""
    folders = make_folders(tmp_path / "photos", threads=2)
    engine = engine_at(tmp_path)
    photo(folders.inbox / "top.jpg", 500)
    photo(folders.inbox / "trip" / "beach.jpg", 500)
    stray = {
        "top.jpg-400.0123456789.webp",
        "trip/beach.jpg-800.abcdefabcd.jpg",
        "trip/gone.jpg-400.0123456789.jpg",
    }
    kept = {"notes.txt", "trip/readme.md", "other/old.jpg-400.0123456789.webp"}
    for name in stray | kept:
        (folders.output / name).parent.mkdir(parents=True, exist_ok=True)
        (folders.output / name).write_bytes(b"left by a killed run")

    outcome = process_batch(folders, engine, ["top.jpg", "trip/beach.jpg"])

    assert sorted(outcome.removed_outputs) == sorted(stray)
    manifest = json.loads(folders.manifest.read_text())
    listed = {output["path"] for entry in manifest.values() for output in entry["outputs"]}
    assert len(listed) == 4  # 400 px (they are 500 px wide), WebP and JPEG, for each photo
    assert set(tree(folders.output)) == listed | kept
