"""`automation-pipelines backups list|restore` through the installed console script: a whole
snapshot and a single file come back byte for byte, and a damaged snapshot is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

from automation_pipelines.automations.backups import snapshots as s
from automation_pipelines_tests.automations.backups.test_snapshots import _flip_one_byte
from automation_pipelines_tests.automations.backups.trees import make_tree, tree_hashes
from automation_pipelines_tests.e2e.harness import venv_script


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv_script("automation-pipelines"), "backups", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_and_restore_latest_byte_for_byte(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", files=25)
    destination = tmp_path / "backups"
    destination.mkdir()
    made = s.create_snapshot(destination, [s.FolderSource("docs", tree)])

    listed = cli("list", "--destination", str(destination))
    restored = cli("restore", "--destination", str(destination), "--to", str(tmp_path / "r"))

    assert listed.returncode == 0, listed.stderr
    assert f"{made.snapshot.id}" in listed.stdout and "verified" in listed.stdout
    assert restored.returncode == 0, restored.stderr
    assert f"Restored 26 file(s), {made.bytes_in:,} bytes, from {made.snapshot.id}" in (
        restored.stdout
    )
    assert tree_hashes(tmp_path / "r" / "docs") == tree_hashes(tree)


def test_restore_one_file_by_id(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", files=25)
    destination = tmp_path / "backups"
    destination.mkdir()
    made = s.create_snapshot(destination, [s.FolderSource("docs", tree)])
    files = cli("list", "--destination", str(destination), "--files", made.snapshot.id)
    assert "docs/a/b/file-8.txt" in files.stdout

    done = cli(
        "restore",
        made.snapshot.id,
        "--destination",
        str(destination),
        "--to",
        str(tmp_path / "one"),
        "--file",
        "docs/a/b/file-8.txt",
    )

    assert done.returncode == 0, done.stderr
    back = tmp_path / "one" / "docs" / "a" / "b" / "file-8.txt"
    assert back.read_bytes() == (tree / "a" / "b" / "file-8.txt").read_bytes()
    assert [p for p in (tmp_path / "one").rglob("*") if p.is_file()] == [back]


def test_damaged_snapshot_is_refused_with_the_reason(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs", files=10)
    destination = tmp_path / "backups"
    destination.mkdir()
    made = s.create_snapshot(destination, [s.FolderSource("docs", tree)])
    _flip_one_byte(made.snapshot.path)

    done = cli("restore", "--destination", str(destination), "--to", str(tmp_path / "r"))

    assert done.returncode == 1
    assert f"✗ snapshot {made.snapshot.id}: archive.tar.zst does not match" in done.stderr
    assert not (tmp_path / "r").exists()


def test_missing_destination_exits_1(tmp_path: Path) -> None:
    done = cli("list", "--destination", str(tmp_path / "gone"))

    assert done.returncode == 1
    assert f"destination {tmp_path / 'gone'} does not exist" in done.stderr
