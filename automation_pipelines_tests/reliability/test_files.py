"""Files written whole or not at all (`reliability/files.py`), the one place every automation
writes through: the bytes are flushed before the rename and the folder after it; a failure
leaves the old file; writers in threads of one process never share a temp file; a set of files
is published together, and a failure removes the names it added."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from automation_pipelines.reliability import files


@pytest.fixture
def durability_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What reached the disk, in order: ("fsync", path of the fd) and ("replace", target)."""
    log: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        fsync(fd)
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def logged_replace(source, target) -> None:
        replace(source, target)
        log.append(("replace", str(target)))

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    return log


def test_the_bytes_are_flushed_before_the_rename_and_the_folder_after(
    tmp_path: Path, durability_log: list[tuple[str, str]]
) -> None:
    target = tmp_path / "out" / "report.csv"
    files.atomic_write_bytes(target, b"a,b\n1,2\n")
    assert target.read_bytes() == b"a,b\n1,2\n"
    [(first, temp), second, third] = durability_log
    assert first == "fsync" and Path(temp).parent == target.parent
    assert Path(temp).name.startswith(".report.csv.") and temp.endswith(".tmp")
    assert second == ("replace", str(target))
    assert third == ("fsync", str(target.parent))  # without it a power cut can undo the rename


def test_publish_together_flushes_every_file_then_the_folder_once(
    tmp_path: Path, durability_log: list[tuple[str, str]]
) -> None:
    folder = tmp_path / "set"
    files.publish_together(folder, {"a.webp": b"A", "b.jpg": b"B"}, mode=0o644)
    kinds = [kind for kind, _ in durability_log]
    assert kinds == ["fsync", "fsync", "replace", "replace", "fsync"]
    assert durability_log[-1] == ("fsync", str(folder))
    for name, data in (("a.webp", b"A"), ("b.jpg", b"B")):
        assert (folder / name).read_bytes() == data
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644


def test_an_error_in_the_block_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_writer(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("the digest did not match")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_mode_and_mtime_are_set_before_the_file_shows(tmp_path: Path) -> None:
    target = tmp_path / "restored.txt"
    with files.atomic_writer(target, mode=0o600, mtime=1_700_000_000) as handle:
        handle.write(b"x")
        assert not target.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_mtime == 1_700_000_000


def test_without_a_mode_the_file_gets_what_a_plain_open_gives(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    files.atomic_write_bytes(tmp_path / "atomic", b"")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_threads_writing_the_same_file_each_write_it_whole(tmp_path: Path) -> None:
    """Threads of one process (the executor of an op, a sensor beside a run in the code server)
    each get a temp file of their own: none fails, and the file is always one of them, whole."""
    target = tmp_path / "manifest.json"
    contents = [bytes([n]) * 200_000 for n in range(8)]
    errors: list[BaseException] = []
    for _ in range(20):
        start = threading.Barrier(len(contents))

        def write(data: bytes, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                files.atomic_write_bytes(target, data)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=write, args=(data,)) for data in contents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert target.read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_set_that_fails_midway_removes_the_files_it_added(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "kept.webp").write_bytes(b"old")
    (folder / "blocked.jpg").mkdir()  # a rename over a folder fails
    with pytest.raises(OSError):
        files.publish_together(
            folder, {"kept.webp": b"new", "fresh.webp": b"F", "blocked.jpg": b"B"}
        )
    assert sorted(p.name for p in folder.iterdir()) == ["blocked.jpg", "kept.webp"]
    assert (folder / "kept.webp").read_bytes() == b"new"  # renamed over before the failure
