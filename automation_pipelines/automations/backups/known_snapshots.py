"""What this host has read of a local repository's snapshots, so listing them needs no restic.

Every restic command that opens a repository first derives the key from the password (scrypt,
calibrated by `restic init` to about half a second of CPU). A backup needs the repository's
run ids (to take a free one) and a restore needs its runs (to pick one): both only read the
snapshots' time, tags, paths and host. A snapshot's file name in `snapshots/` is the hash of
its content, so what this host once read under a name never goes stale; a snapshot forgotten
takes its name with it. When every name in the folder is known here, the list comes from
here; any name this host has not seen (another host's snapshot, one made by hand, a file
restic is still writing) sends the caller to `restic snapshots`, as before. Remote
repositories are always asked through restic.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path

from automation_pipelines.automations.backups.restic import (
    Repository,
    ResticSnapshot,
    is_remote,
    parse_time,
)

FOLDER = "automation-pipelines-snapshots"


class KnownSnapshots:
    """One local repository's snapshots as this host read them, by file name."""

    def __init__(self, repository: Path, ledger: Path) -> None:
        self.folder = repository / "snapshots"
        self.ledger = ledger

    @classmethod
    def of(cls, repo: Repository) -> KnownSnapshots | None:
        """The ledger of a local repository: beside restic's cache when one is configured,
        else in the user's cache folder; None for a remote one, or when there is no home to
        hold it."""
        if is_remote(repo.location):
            return None
        path = Path(repo.location).absolute()
        try:
            base = (
                Path(repo.cache_dir)
                if repo.cache_dir
                else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            )
        except RuntimeError:  # no home folder to be found
            return None
        name = hashlib.sha256(os.fsencode(path)).hexdigest()[:32] + ".json"
        return cls(path, base / FOLDER / name)

    def _names(self) -> list[str] | None:
        try:
            return [entry.name for entry in os.scandir(self.folder)]
        except OSError:
            return None

    def _load(self) -> dict[str, ResticSnapshot]:
        try:
            raw = json.loads(self.ledger.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        known: dict[str, ResticSnapshot] = {}
        for name, item in raw.items() if isinstance(raw, dict) else ():
            try:
                snapshot = ResticSnapshot(
                    id=name,
                    time=parse_time(item["time"]),
                    tags=tuple(str(tag) for tag in item["tags"]),
                    paths=tuple(str(path) for path in item["paths"]),
                    hostname=str(item["hostname"]),
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # an entry this version cannot read is simply not known
            known[name] = snapshot
        return known

    def snapshots(self, ignoring: Collection[str] = ()) -> list[ResticSnapshot] | None:
        """The repository's snapshots, oldest first (restic's order), or None when one of them
        is not known here. `ignoring`: short ids of snapshots a backup just made and has not
        recorded yet; each must name exactly one file."""
        names = self._names()
        if names is None:
            return None
        for short in ignoring:
            matching = [name for name in names if name.startswith(short)]
            if len(short) < 8 or len(matching) != 1:
                return None
            names.remove(matching[0])
        known = self._load()
        if any(name not in known for name in names):
            return None
        return sorted((known[name] for name in names), key=lambda s: (s.time, s.id))

    def record(self, snapshots: Iterable[ResticSnapshot]) -> None:
        """Remember snapshots restic listed; names no longer in the repository are dropped. A
        ledger that cannot be written is only a cache missed: the next caller asks restic."""
        names = self._names()
        if names is None:
            return
        present = set(names)
        known = {name: s for name, s in self._load().items() if name in present}
        known.update({s.id: s for s in snapshots if s.id in present})
        entries = {
            name: {
                "time": s.time.isoformat(),
                "tags": list(s.tags),
                "paths": list(s.paths),
                "hostname": s.hostname,
            }
            for name, s in known.items()
        }
        try:
            self.ledger.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.ledger.parent, suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out)
            os.replace(temporary, self.ledger)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
