"""Archives in the format used before restic: one zstandard-compressed tar archive plus a
manifest of every file's size and SHA-256. Backups no longer write it; it stays so that every
archive made before the move to restic can still be listed, checked and restored byte for byte.

A snapshot folder `<destination>/<id>/` holds `archive.tar.zst`, `manifest.json` and
`verified.json`. It exists under that name only after the archive was read back and every file
matched the manifest; until then it is `<destination>/.partial-<id>/`, which nothing treats as a
snapshot. The archive's own size and hash are in the manifest too, so truncation and bit rot are
found without decompressing, and named precisely when they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import zstandard

from automation_pipelines.automations.backups.sources import (
    BackupError,
    FolderSource,
    PostgresSource,
    Source,
    SqliteSource,
    check_destination,
    copy_sqlite_online,
    restore_plan,
    safe_relative,
)
from automation_pipelines.reliability.files import atomic_writer, fsync_dir

ARCHIVE = "archive.tar.zst"
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
PARTIAL_PREFIX = ".partial-"
FORMAT = 1
ID_FORMAT = "%Y%m%dT%H%M%SZ"
#: Bytes read or written per call: large enough that Python's per-call cost disappears.
CHUNK = 1 << 20


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as found at the destination."""

    id: str
    path: Path
    created: datetime
    verified: bool

    @property
    def archive(self) -> Path:
        return self.path / ARCHIVE

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST


@dataclass
class BackupResult:
    """What one backup wrote, for the run's metadata."""

    snapshot: Snapshot
    files: int
    bytes_in: int
    archive_bytes: int
    seconds: float
    sources: list[dict] = field(default_factory=list)
    removed_partials: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


def snapshot_id(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(ID_FORMAT)


def parse_id(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to `target`: the archive's size and SHA-256."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.target.write(data)


class _Archive:
    """A POSIX (pax) tar stream written straight into the compressor, and the manifest entries
    of what went into it.

    Headers come from `tarfile.TarInfo.tobuf`, so the format is tarfile's own; file bytes go from
    the file to the compressor with no buffer in between, which is what keeps a backup as fast
    as `tar | zstd`.
    """

    def __init__(self, out: BinaryIO, work: Path) -> None:
        self.out = out
        self.work = work
        self.files: list[dict] = []
        self.written = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def add_file(self, path: Path, name: str) -> bool:
        """Add one regular file; False if it vanished before it could be opened. A file that
        shrinks while it is read is padded with zeros and flagged, never left half-framed."""
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return False
        with handle:
            stat = os.fstat(handle.fileno())
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = (
                stat.st_size,
                int(stat.st_mtime),
                stat.st_mode & 0o7777,
            )
            self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            digest, remaining = hashlib.sha256(), info.size
            while remaining:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                self._write(chunk)
                remaining -= len(chunk)
            if remaining:
                filler = bytes(remaining)
                digest.update(filler)
                self._write(filler)
            self._write(bytes(-info.size % tarfile.BLOCKSIZE))
        entry = {"path": name, "size": info.size, "sha256": digest.hexdigest()}
        if remaining:
            entry["shrank_while_reading"] = True
        self.files.append(entry)
        return True

    def _add_temporary(self, path: Path, name: str) -> dict:
        """Add a copy made for the archive (a database backup, a dump), then delete it."""
        try:
            self.add_file(path, name)
        finally:
            path.unlink(missing_ok=True)
        return self.files[-1]

    def close(self) -> None:
        """The end-of-archive marker, padded to a whole record as tar writes it."""
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        self._write(bytes(-self.written % tarfile.RECORDSIZE))

    def add_folder(self, source: FolderSource) -> dict:
        root = source.path
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            if source.missing == "skip" and not root.exists():
                return {
                    "name": source.name,
                    "kind": "folder",
                    "path": str(root),
                    "status": f"skipped: {root} {what}",
                }
            raise BackupError(f"source {source.name!r}: folder {root} {what}")
        files = size = others = vanished = 0
        for folder, dirs, names in os.walk(root, onerror=_raise):
            dirs.sort()
            base = Path(folder)
            for name in sorted(names):
                path = base / name
                if path.is_symlink() or not path.is_file():
                    others += 1
                    continue
                relative = path.relative_to(root).as_posix()
                if self.add_file(path, f"{source.name}/{relative}"):
                    files += 1
                    size += self.files[-1]["size"]
                else:
                    vanished += 1
        return {
            "name": source.name,
            "kind": "folder",
            "path": str(root),
            "status": "ok",
            "files": files,
            "bytes": size,
            "not_regular_files": others,
            "vanished_while_reading": vanished,
        }

    def add_sqlite(self, source: SqliteSource) -> dict:
        copy = self.work / f".{source.name}.sqlite"
        copy_sqlite_online(source, copy)
        entry = self._add_temporary(copy, f"{source.name}/{source.path.name}")
        return {
            "name": source.name,
            "kind": "sqlite",
            "path": str(source.path),
            "status": "ok",
            "files": 1,
            "bytes": entry["size"],
        }

    def add_postgres(self, source: PostgresSource) -> dict:
        dump = self.work / f".{source.name}.dump"
        command = [source.pg_dump, "--format=custom", "--no-password", f"--file={dump}"]
        try:
            done = subprocess.run(
                [*command, f"--dbname={source.dsn}"],
                capture_output=True,
                text=True,
                timeout=source.timeout_seconds,
                env={**os.environ, "PGPASSWORD": source.password} if source.password else None,
            )
        except FileNotFoundError:
            raise BackupError(
                f"source {source.name!r}: {source.pg_dump} is not installed"
            ) from None
        if done.returncode != 0:
            dump.unlink(missing_ok=True)
            message = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
            raise BackupError(
                f"source {source.name!r}: pg_dump failed: {message[:500] or 'no output'}"
            )
        entry = self._add_temporary(dump, f"{source.name}/{source.name}.dump")
        return {
            "name": source.name,
            "kind": "postgres",
            "status": "ok",
            "files": 1,
            "bytes": entry["size"],
        }


def _raise(error: OSError) -> None:
    raise error


def remove_partials(destination: Path) -> list[str]:
    """Delete what crashed backups left behind; only one backup runs at a time, so any
    `.partial-*` folder at the start of a backup is dead."""
    removed = []
    for path in sorted(destination.glob(f"{PARTIAL_PREFIX}*")):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def _write_archive(
    work: Path, sources: Sequence[Source], level: int, threads: int
) -> tuple[_Archive, list[dict], _HashingWriter]:
    """Stream every source through tar and zstd into `work/archive.tar.zst`, fsynced; return
    the archive's entries, the source reports, and the size and hash of the compressed file.
    zstd adds a checksum of the content to the frame, which every read checks."""
    compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    with (work / ARCHIVE).open("wb") as raw:
        counted = _HashingWriter(raw)
        with compressor.stream_writer(counted, closefd=False, write_size=CHUNK) as compressed:
            archive = _Archive(compressed, work)
            reports = []
            for source in sources:
                if isinstance(source, FolderSource):
                    reports.append(archive.add_folder(source))
                elif isinstance(source, SqliteSource):
                    reports.append(archive.add_sqlite(source))
                else:
                    reports.append(archive.add_postgres(source))
            archive.close()
        raw.flush()
        os.fsync(raw.fileno())
    return archive, reports, counted


def create_snapshot(
    destination: Path,
    sources: Sequence[Source],
    *,
    level: int = 3,
    threads: int = 2,
    now: datetime | None = None,
) -> BackupResult:
    """Archive every source into a new verified snapshot at `destination` and return it."""
    started = time.monotonic()
    check_destination(destination)
    names = [s.name for s in sources]
    if len(set(names)) != len(names) or not names:
        raise BackupError(f"source names must be unique and present, got {names}")
    removed = remove_partials(destination)
    moment = now or _utcnow()
    ident = snapshot_id(moment)
    final = destination / ident
    while final.exists():  # two backups in one second: the later takes the next free id
        moment = moment.fromtimestamp(moment.timestamp() + 1, tz=UTC)
        ident = snapshot_id(moment)
        final = destination / ident
    work = destination / f"{PARTIAL_PREFIX}{ident}"
    work.mkdir()
    try:
        archive, reports, counted = _write_archive(work, sources, level, threads)
        manifest = {
            "format": FORMAT,
            "snapshot": ident,
            "created_at": moment.astimezone(UTC).isoformat(),
            "zstd_level": level,
            "archive": {
                "name": ARCHIVE,
                "bytes": counted.bytes,
                "sha256": counted.sha256.hexdigest(),
                "tar_bytes": archive.written,
            },
            "sources": reports,
            "totals": {
                "files": len(archive.files),
                "bytes": sum(f["size"] for f in archive.files),
            },
            "files": archive.files,
        }
        _write_json(work / MANIFEST, manifest)
        problems = verify(work, depth=READ_BACK)
        if problems:
            raise BackupError(f"the new snapshot failed verification: {'; '.join(problems)}")
        _write_json(work / VERIFIED, {"verified_at": datetime.now(tz=UTC).isoformat()})
        fsync_dir(work)
        os.rename(work, final)
        fsync_dir(destination)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupResult(
        snapshot=Snapshot(ident, final, moment, verified=True),
        files=manifest["totals"]["files"],
        bytes_in=manifest["totals"]["bytes"],
        archive_bytes=counted.bytes,
        seconds=time.monotonic() - started,
        sources=reports,
        removed_partials=removed,
    )


def _write_json(path: Path, value: dict) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def list_snapshots(destination: Path) -> list[Snapshot]:
    """Finished snapshots, newest first; partial folders and other names are not snapshots."""
    found = []
    for path in destination.iterdir():
        created = parse_id(path.name)
        if created is None or not path.is_dir():
            continue
        found.append(Snapshot(path.name, path, created, (path / VERIFIED).is_file()))
    return sorted(found, key=lambda s: s.created, reverse=True)


def partials(destination: Path) -> list[Path]:
    return sorted(destination.glob(f"{PARTIAL_PREFIX}*"))


def read_manifest(snapshot: Path) -> dict:
    """The manifest, or BackupError saying exactly why it cannot be used."""
    path = snapshot / MANIFEST
    if not path.exists():
        raise BackupError(f"snapshot {snapshot.name}: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(
            f"snapshot {snapshot.name}: {MANIFEST} is not valid JSON: {exc}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"snapshot {snapshot.name}: {MANIFEST} is not a format {FORMAT} manifest")
    return manifest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _members(archive: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Each member of the archive in order, decompressing as it goes."""
    with archive.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK) as tar:
            for member in tar:
                yield member, tar


#: How deeply `verify` checks: the archive's size and hash; that, and that it decompresses
#: whole (zstd checks the content checksum it wrote); or every file against its manifest entry.
ARCHIVE_HASH, READ_BACK, EVERY_FILE = "archive", "read_back", "every_file"


class _HashingReader(io.RawIOBase):
    """Hashes the compressed bytes as the decompressor reads them: one pass does both."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.source.readinto(buffer)
        self.sha256.update(memoryview(buffer)[:count])
        return count


def verify(snapshot: Path, *, depth: str = EVERY_FILE) -> list[str]:
    """What is wrong with a snapshot, one precise sentence each; empty when it is sound.

    Every depth checks that the manifest reads and that the archive has the size and SHA-256
    the manifest gives. READ_BACK also decompresses it whole: zstd's content checksum then
    proves it holds exactly the tar stream whose files the manifest hashed as they were
    written. EVERY_FILE reads each file back and names every one that differs.
    """
    name = snapshot.name
    try:
        manifest = read_manifest(snapshot)
    except BackupError as exc:
        return [str(exc)]
    archive = snapshot / ARCHIVE
    expected = manifest["archive"]
    if not archive.exists():
        return [f"snapshot {name}: {ARCHIVE} is missing"]
    size = archive.stat().st_size
    if size != expected["bytes"]:
        state = "truncated" if size < expected["bytes"] else "longer than written"
        return [
            f"snapshot {name}: {ARCHIVE} is {size:,} bytes, the manifest says "
            f"{expected['bytes']:,}: the archive is {state}"
        ]
    if depth == READ_BACK:
        found, problem = _read_back(archive, expected["tar_bytes"])
    else:
        found, problem = _file_sha256(archive), None
    if found != expected["sha256"]:
        return [
            f"snapshot {name}: {ARCHIVE} does not match the SHA-256 in its manifest (expected "
            f"{expected['sha256'][:12]}…, found {found[:12]}…): the archive is corrupt"
        ]
    if problem:
        return [f"snapshot {name}: {ARCHIVE} {problem}"]
    if depth == EVERY_FILE:
        return _check_members(name, archive, {f["path"]: f for f in manifest["files"]})
    return []


def _read_back(archive: Path, tar_bytes: int) -> tuple[str, str | None]:
    """(SHA-256 of the compressed file, why it does not decompress to `tar_bytes` or None)."""
    with archive.open("rb", buffering=0) as raw:
        hashing = _HashingReader(raw)
        size, problem = 0, None
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(hashing, read_size=CHUNK)
            while chunk := reader.read(4 * CHUNK):
                size += len(chunk)
        except zstandard.ZstdError as exc:
            problem = f"cannot be decompressed: {exc}"
        while hashing.read(CHUNK):  # the rest, for the hash, if decompression stopped early
            pass
    if problem is None and size != tar_bytes:
        problem = f"decompresses to {size:,} bytes, not the {tar_bytes:,} written"
    return hashing.sha256.hexdigest(), problem


def _check_members(name: str, archive: Path, listed: dict[str, dict]) -> list[str]:
    problems = []
    seen = set()
    try:
        for member, tar in _members(archive):
            if not member.isfile():
                continue
            seen.add(member.name)
            entry = listed.get(member.name)
            if entry is None:
                problems.append(f"snapshot {name}: {member.name} is in the archive but not listed")
                continue
            digest = hashlib.sha256()
            extracted = tar.extractfile(member)
            while chunk := extracted.read(CHUNK):
                digest.update(chunk)
            if member.size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                problems.append(
                    f"snapshot {name}: {member.name} in the archive differs from the manifest "
                    f"({member.size:,} bytes, SHA-256 {digest.hexdigest()[:12]}…; manifest: "
                    f"{entry['size']:,} bytes, {entry['sha256'][:12]}…)"
                )
    except (zstandard.ZstdError, tarfile.TarError, EOFError, OSError) as exc:
        problems.append(f"snapshot {name}: {ARCHIVE} cannot be read back: {exc}")
        return problems
    missing = sorted(set(listed) - seen)
    if missing:
        problems.append(
            f"snapshot {name}: {len(missing)} listed file(s) are not in the archive, e.g. "
            f"{missing[0]}"
        )
    return problems


@dataclass
class RestoreResult:
    """What a restore wrote; every file was hash-checked against the manifest."""

    snapshot: str
    files: list[str]
    bytes: int


def restore(
    snapshot: Path,
    target: Path,
    *,
    files: Iterable[str] | None = None,
    overwrite: bool = False,
    check_archive: bool = True,
) -> RestoreResult:
    """Restore a snapshot (or only `files`, as named in its manifest) under `target`.

    The archive is checked against its manifest first; each file is written to a temp name,
    its SHA-256 compared with the manifest, then renamed into place with its mode and mtime. An
    existing file is never replaced unless `overwrite`. `check_archive=False` skips the first
    check for a caller that has just verified this snapshot itself.
    """
    manifest = read_manifest(snapshot)
    problems = verify(snapshot, depth=ARCHIVE_HASH) if check_archive else []
    if problems:
        raise BackupError("; ".join(problems))
    listed = {f["path"]: f for f in manifest["files"]}
    wanted = restore_plan(f"snapshot {snapshot.name}", listed, files, target, overwrite)
    target.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    total = 0
    for member, tar in _members(snapshot / ARCHIVE):
        if not member.isfile() or member.name not in wanted:
            continue
        destination = target / safe_relative(member.name)
        digest = hashlib.sha256()
        with atomic_writer(destination, mode=member.mode & 0o7777, mtime=member.mtime) as out:
            extracted = tar.extractfile(member)
            while chunk := extracted.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != listed[member.name]["sha256"]:
                raise BackupError(
                    f"{member.name}: the restored bytes do not match the manifest's SHA-256"
                )
        written.append(member.name)
        total += member.size
        if len(written) == len(wanted):
            break
    missing = sorted(wanted - set(written))
    if missing:
        raise BackupError(
            f"snapshot {snapshot.name}: {missing[0]} is listed but not in the archive"
        )
    return RestoreResult(snapshot.name, sorted(written), total)


def sample_restore(
    snapshot: Path, count: int, rng: random.Random | None = None, *, verified: bool = False
) -> list[str]:
    """Restore up to `count` files picked at random into a temp folder and compare each with the
    manifest; return one sentence per file that did not come back as it went in. `verified`: the
    caller has just checked the whole snapshot, so its archive is not hashed a second time."""
    try:
        manifest = read_manifest(snapshot)
    except BackupError as exc:
        return [f"test restore from {snapshot.name} impossible: {exc}"]
    names = sorted(f["path"] for f in manifest["files"])
    if not names:
        return []
    chosen = (rng or random.Random()).sample(names, min(count, len(names)))
    listed = {f["path"]: f for f in manifest["files"]}
    with tempfile.TemporaryDirectory(prefix="backup-test-restore-") as temp:
        try:
            restore(snapshot, Path(temp), files=chosen, check_archive=not verified)
        except (BackupError, zstandard.ZstdError, tarfile.TarError, EOFError, OSError) as exc:
            return [f"test restore of {len(chosen)} file(s) from {snapshot.name} failed: {exc}"]
        problems = []
        for name in chosen:
            restored = Path(temp) / name
            if not restored.is_file():
                problems.append(f"test restore: {name} was not restored")
            elif _file_sha256(restored) != listed[name]["sha256"]:
                problems.append(f"test restore: {name} does not match its manifest hash")
        return problems
