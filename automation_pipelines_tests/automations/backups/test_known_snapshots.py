"""What this host knows of a local repository's snapshots: it answers only when it knows every
snapshot file in the repository, never lets a name it has not seen pass, forgets what the
repository forgot, and takes any content of its file for a cache miss."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from automation_pipelines.automations.backups.known_snapshots import KnownSnapshots
from automation_pipelines.automations.backups.restic import Repository, ResticSnapshot

names = st.text("0123456789abcdef", min_size=64, max_size=64)
START = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
snapshots = st.builds(
    lambda name, seconds, micro, run, host: ResticSnapshot(
        id=name,
        time=START + timedelta(seconds=seconds, microseconds=micro),
        tags=("source:docs", f"run:{run}") if run else (),
        paths=("/srv/docs",),
        hostname=host,
    ),
    names,
    st.integers(0, 10**6),
    st.integers(0, 999_999),
    st.sampled_from(["", "20261201T020000Z", "20261201T020001Z"]),
    st.sampled_from(["vm", "other-host"]),
)


def ledger_in(folder: Path) -> KnownSnapshots:
    (folder / "repo" / "snapshots").mkdir(parents=True)
    known = KnownSnapshots.of(Repository(str(folder / "repo"), cache_dir=str(folder / "cache")))
    assert known is not None
    return known


@settings(max_examples=60, deadline=None)
@given(
    recorded=st.lists(snapshots, max_size=6, unique_by=lambda s: s.id),
    later=st.lists(names, max_size=3, unique=True),
    forgotten=st.integers(min_value=0, max_value=6),
)
def test_it_answers_exactly_when_every_snapshot_is_known(recorded, later, forgotten) -> None:
    with tempfile.TemporaryDirectory() as folder:
        known = ledger_in(Path(folder))
        by_name = {s.id: s for s in recorded}
        later = [name for name in later if name not in by_name]
        for name in by_name:
            (known.folder / name).touch()
        known.record(recorded)
        # Some snapshots are forgotten (retention), others come from elsewhere.
        gone = sorted(by_name)[:forgotten]
        for name in gone:
            (known.folder / name).unlink()
        for name in later:
            (known.folder / name).touch()

        present = {p.name for p in known.folder.iterdir()}
        kept = [by_name[n] for n in present if n in by_name]
        expected = sorted(kept, key=lambda s: (s.time, s.id))
        assert known.snapshots() == (None if set(later) else expected)
        if later:
            # A snapshot just made is set aside by its short id until it is recorded.
            fresh, rest = later[0], set(later[1:])
            assert known.snapshots(ignoring=[fresh[:8]]) == (None if rest else expected)
            made = ResticSnapshot(fresh, START, ("run:20261203T020000Z",), ("/srv",), "vm")
            known.record([made])
            if not rest:
                assert known.snapshots() == sorted([*expected, made], key=lambda s: (s.time, s.id))
            # What was forgotten left the ledger at that record.
            assert not set(gone) & set(json.loads(known.ledger.read_text()))


@settings(max_examples=40, deadline=None)
@given(content=st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_any_content_of_its_file_is_a_cache_miss_not_an_error(content) -> None:
    with tempfile.TemporaryDirectory() as folder:
        known = ledger_in(Path(folder))
        (known.folder / ("a" * 64)).touch()
        known.ledger.parent.mkdir(parents=True)
        known.ledger.write_bytes(content)
        assert known.snapshots() is None


def test_an_entry_it_cannot_read_is_not_known(tmp_path) -> None:
    known = ledger_in(tmp_path)
    good, bad = "a" * 64, "b" * 64
    for name in (good, bad):
        (known.folder / name).touch()
    entry = {"time": "2026-12-01T02:00:00+00:00", "tags": [], "paths": [], "hostname": "vm"}
    for broken in ({**entry, "time": "yesterday"}, {**entry, "tags": 7}, {"time": entry["time"]}):
        known.ledger.parent.mkdir(parents=True, exist_ok=True)
        known.ledger.write_text(json.dumps({good: entry, bad: broken}))
        assert known.snapshots() is None
        assert [s.id for s in known.snapshots(ignoring=["bbbbbbbb"])] == [good]


def test_a_short_id_naming_two_files_is_not_guessed(tmp_path) -> None:
    known = ledger_in(tmp_path)
    one, two = "abcdef01" + "0" * 56, "abcdef01" + "1" * 56
    made = [ResticSnapshot(name, START, (), (), "vm") for name in (one, two)]
    for name in (one, two):
        (known.folder / name).touch()
    known.record(made)
    assert known.snapshots() == made
    assert known.snapshots(ignoring=["abcdef01"]) is None
    assert known.snapshots(ignoring=["abc"]) is None  # too short to name one


def test_a_missing_snapshots_folder_means_ask_restic(tmp_path) -> None:
    known = KnownSnapshots.of(
        Repository(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
    )
    assert known is not None and known.snapshots() is None
    known.record([ResticSnapshot("a" * 64, START, (), (), "vm")])  # nothing to record against
    assert not known.ledger.exists()
