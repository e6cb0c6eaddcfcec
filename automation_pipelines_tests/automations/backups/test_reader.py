"""The in-process reader of a local restic repository, against the real restic binary: for any
tree (nested, empty files and folders, links, odd names, files of several chunks), in either
repository version and with any compression, it counts the files and bytes `restic ls` lists
and describes the snapshot as `restic snapshots` does; after any one damaged byte in any file
of the repository it gives that same answer, reports the snapshot damaged, or leaves the
verdict to restic — never a different answer. Passwords open it exactly as they open restic."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation_pipelines.automations.backups.reader import (
    DamagedSnapshot,
    LocalRepository,
    open_local,
    read_back,
)
from automation_pipelines.automations.backups.restic import Repository
from automation_pipelines_tests.conftest import require_program

PASSWORD = "Correct-Horse-Restic-7781"

#: Names restic and this file system take: spaces, non-ASCII, a newline, leading dots.
names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)


@st.composite
def trees(draw, depth: int = 0) -> dict:
    """{name: bytes size | None (link) | dict (folder)}; files of several chunks only at the
    top, so that no example writes much."""
    size = [6, 4, 3][depth]
    entries = draw(st.dictionaries(names, st.none(), min_size=depth == 0, max_size=size))
    sizes = [0, 1, 700, 40_000] + ([2_500_000] if depth == 0 else [])
    tree: dict = {}
    for name in entries:
        kind = draw(st.sampled_from(["file", "file", "link", "folder"] if depth < 2 else ["file"]))
        if kind == "folder":
            tree[name] = draw(trees(depth=depth + 1))
        elif kind == "link":
            tree[name] = None
        else:
            tree[name] = draw(st.sampled_from(sizes))
    return tree


def write_tree(root: Path, tree: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, entry in tree.items():
        path = root / name
        if isinstance(entry, dict):
            write_tree(path, entry)
        elif entry is None:
            path.symlink_to("somewhere/else")
        else:
            path.write_bytes(os.urandom(entry) if entry > 1_000 else b"x" * entry)


def restic(repo: Repository, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        repo.command(*args), cwd=cwd, env=repo.env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_repository(path: Path, version: int) -> Repository:
    require_program(Path("/usr/bin/restic"), "restic")
    repo = Repository(str(path), password=PASSWORD, cache_dir=str(path.parent / "cache"))
    restic(repo, "init", "--repository-version", str(version))
    return repo


def backed_up(repo: Repository, tree: Path, *flags: str) -> str:
    """The short id of a new snapshot of `tree`, made by the plain restic CLI."""
    out = restic(repo, "backup", "--json", "--quiet", "--tag", "t:1", *flags, ".", cwd=tree)
    return out.strip().splitlines()[-1].split('"snapshot_id":"')[1][:8]


def as_restic_lists_it(repo: Repository, short_id: str) -> tuple:
    made, nodes = repo.listing(short_id)
    files = [node for node in nodes if node["type"] == "file"]
    return made, len(files), sum(node["size"] for node in files)


@pytest.fixture(scope="module")
def repositories(tmp_path_factory) -> dict[int, Repository]:
    base = tmp_path_factory.mktemp("reader")
    return {version: new_repository(base / f"v{version}", version) for version in (1, 2)}


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tree=trees(),
    version=st.sampled_from([1, 2]),
    compression=st.sampled_from(["auto", "off", "max"]),
)
def test_the_reader_lists_what_restic_lists(
    repositories, tmp_path_factory, tree, version, compression
):
    repo = repositories[version]
    folder = tmp_path_factory.mktemp("tree")
    write_tree(folder, tree)
    flags = ("--compression", compression) if version == 2 else ()
    short = backed_up(repo, folder, *flags)

    assert read_back(open_local(repo), short) == as_restic_lists_it(repo, short)


@pytest.fixture(scope="module")
def damaged_repository(tmp_path_factory) -> tuple[Repository, str, tuple]:
    """A repository of two snapshots (the second shares most trees with the first)."""
    base = tmp_path_factory.mktemp("damage")
    repo = new_repository(base / "repo", 2)
    tree = {"a": {"b": {"c.txt": 700, "d.bin": 40_000}, "e": 1}, "f": None, "g": {}}
    write_tree(base / "tree", tree)
    backed_up(repo, base / "tree")
    (base / "tree" / "a" / "new.txt").write_bytes(b"new")
    short = backed_up(repo, base / "tree")
    return repo, short, as_restic_lists_it(repo, short)


def repository_files(location: str) -> list[Path]:
    return sorted(p for p in Path(location).rglob("*") if p.is_file())


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_no_damaged_byte_changes_the_answer(damaged_repository, data):
    repo, short, intact = damaged_repository
    path = data.draw(st.sampled_from(repository_files(repo.location)), label="file")
    original = path.read_bytes()
    at = data.draw(st.integers(0, len(original) - 1), label="offset")
    flip = data.draw(st.integers(1, 255), label="xor")
    cut = data.draw(st.booleans(), label="cut there instead")
    damaged = (
        original[:at] if cut else original[:at] + bytes([original[at] ^ flip]) + original[at + 1 :]
    )
    os.chmod(path, 0o600)
    path.write_bytes(damaged)
    try:
        try:
            answer = read_back(open_local(repo), short)
        except DamagedSnapshot:
            answer = "damaged"
    finally:
        path.write_bytes(original)
    assert answer in (intact, None, "damaged")
    snapshot_file = path.parent.name == "snapshots" and path.name.startswith(short)
    if snapshot_file:  # the snapshot's own file is never taken as it was
        assert answer == "damaged"


def test_a_damaged_tree_of_the_snapshot_is_named(damaged_repository):
    repo, short, _ = damaged_repository
    trees_in = {
        pack["id"]
        for index in restic(repo, "list", "index").split()
        for pack in json.loads(restic(repo, "cat", "index", index))["packs"]
        if any(blob["type"] == "tree" for blob in pack["blobs"])
    }
    [pack] = [p for p in Path(repo.location, "data").glob("*/*") if p.name in trees_in][-1:]
    original = pack.read_bytes()
    os.chmod(pack, 0o600)
    pack.write_bytes(original[:10] + bytes([original[10] ^ 0x40]) + original[11:])
    try:
        with pytest.raises(DamagedSnapshot, match=rf"tree \w{{8}} in pack {pack.name[:8]}"):
            read_back(open_local(repo), short)
    finally:
        pack.write_bytes(original)
    assert read_back(open_local(repo), short) is not None


def test_every_key_opens_it_and_no_other_password_does(tmp_path):
    repo = new_repository(tmp_path / "repo", 2)
    write_tree(tmp_path / "tree", {"x": 700})
    short = backed_up(repo, tmp_path / "tree")
    (tmp_path / "second").write_text("  second password\t\n")
    restic(repo, "key", "add", "--new-password-file", str(tmp_path / "second"))
    expected = as_restic_lists_it(repo, short)

    by_file = Repository(
        repo.location, password_file=str(tmp_path / "second"), cache_dir=repo.cache_dir
    )
    assert restic(by_file, "cat", "config")  # restic takes the file's password trimmed
    assert read_back(open_local(by_file), short) == expected
    assert read_back(open_local(repo), short) == expected
    wrong = Repository(repo.location, password="  second password\t\n", cache_dir=repo.cache_dir)
    assert subprocess.run(wrong.command("cat", "config"), env=wrong.env()).returncode != 0
    assert open_local(wrong) is None  # restic takes RESTIC_PASSWORD as it is: no key opens


def test_only_a_local_repository_with_its_password_is_read_here(tmp_path):
    remote = Repository("sftp:backup@127.0.0.1:/srv/restic", password=PASSWORD)
    assert open_local(remote) is None
    missing = Repository(str(tmp_path / "nothing"), password=PASSWORD)
    assert open_local(missing) is None
    repo = new_repository(tmp_path / "repo", 2)
    assert open_local(Repository(repo.location)) is None
    assert isinstance(open_local(repo), LocalRepository)
