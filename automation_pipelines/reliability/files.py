"""Files written whole or not at all, and bad inputs set aside with the reason, never lost.

A reader (a web server, the next op, a backup) must never see half a file: outputs are written to
a temp name in the same folder, flushed to disk and renamed. A bad input is moved to a quarantine
folder under the same relative path, next to a `.reason.txt` that says what was wrong and the
size and modification time the file had when it was judged: a quarantined file that differs from
them later (an uploader that kept writing into it, a fix made in place) can be looked at again.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: Names that mean "still being written" by common copy tools; never picked up as inputs.
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".filepart", "~")


def is_temporary_name(name: str) -> bool:
    """Hidden files and the in-progress names browsers, rsync, scp and editors use."""
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries: a rename or a new name in it survives a power cut only then."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(target: Path) -> tuple[int, Path]:
    """A new hidden temp file in `target`'s folder, unique per call (threads included), created
    with the mode a plain open would give it."""
    while True:
        temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_writer(
    target: Path, *, mode: int | None = None, mtime: float | None = None
) -> Iterator[BinaryIO]:
    """Write to a hidden temp file beside `target`, fsync it, rename it over `target` and fsync
    the folder: after a crash or a power cut the name holds the old bytes or the new, whole. An
    exception in the block leaves `target` as it was. `mode` and `mtime` are set before the
    rename, so the file never shows without them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _temp_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        if mtime is not None:
            os.utime(temp, (mtime, mtime))
        os.replace(temp, target)
        fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_writer(target) as handle:
        handle.write(data)


def publish_together(folder: Path, files: dict[str, bytes], *, mode: int | None = None) -> None:
    """Write every file to a hidden temp name and fsync it, then rename them all into place and
    fsync the folder. A failure before the last rename removes the temp files and the files this
    call created, so the folder is as it was; only a kill mid-rename can leave new names behind
    (callers that record what they published can tell those apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, str]] = []
    created: list[Path] = []
    try:
        for name, data in files.items():
            fd, temp = _temp_beside(folder / name)
            temps.append((temp, name))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if mode is not None:
                os.chmod(temp, mode)
        for temp, name in temps:
            target = folder / name
            existed = target.exists()
            os.replace(temp, target)
            if not existed:
                created.append(target)
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        for target in created:
            target.unlink(missing_ok=True)
        raise
    fsync_dir(folder)


def move_into(source: Path, root: Path, relative: Path) -> Path:
    """Move `source` to `root/relative` (same volume: a rename), never overwriting: a name
    already taken by other content gets a numbered suffix, so nothing is silently replaced; the
    same content already there (a repeated move after a crash) is not kept twice. A symlink or
    special file is moved as it is, never followed or read."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if _is_regular(source) and _is_regular(target) and filecmp.cmp(source, target, shallow=False):
        source.unlink()
        return target
    counter = 1
    while os.path.lexists(target):
        target = root / relative.parent / f"{relative.stem}.{counter}{relative.suffix}"
        counter += 1
    shutil.move(str(source), str(target))
    return target


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


REASON_SUFFIX = ".reason.txt"


def quarantine(
    source: Path,
    root: Path,
    relative: Path,
    reason: str,
    *,
    seen: tuple[int, int] | None = None,
) -> Path:
    """Set `source` aside under `root/relative` with a `.reason.txt` beside it; return its path.
    `seen` is the (size, mtime_ns) the file had when it was judged (default: after the move)."""
    before = os.lstat(source)
    target = move_into(source, root, relative)
    after = os.lstat(target)
    if seen is None or after.st_ino != before.st_ino:
        # Not moved but found there already (the same content quarantined before): what is on
        # disk is the file the note speaks of.
        seen = (after.st_size, after.st_mtime_ns)
    one_line = " ".join(reason.split())
    note = (
        f"file: {relative.as_posix()}\n"
        f"quarantined: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n"
        f"reason: {one_line}\n"
        f"size: {seen[0]}\n"
        f"mtime_ns: {seen[1]}\n"
    )
    atomic_write_bytes(note_path(target), note.encode())
    return target


def note_path(quarantined: Path) -> Path:
    return quarantined.with_name(quarantined.name + REASON_SUFFIX)


def read_note(quarantined: Path) -> dict[str, str] | None:
    """The fields of a quarantined file's note; None when it has none (yet)."""
    try:
        text = note_path(quarantined).read_text(errors="replace")
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key] = value
    return fields


def changed_since_quarantine(quarantined: Path) -> bool | None:
    """Whether the file differs from the size and mtime its note recorded; None when that
    cannot be told (no note, a note from before they were recorded, the file gone)."""
    fields = read_note(quarantined)
    if not fields or "size" not in fields or "mtime_ns" not in fields:
        return None
    try:
        info = os.lstat(quarantined)
    except OSError:
        return None
    return (str(info.st_size), str(info.st_mtime_ns)) != (fields["size"], fields["mtime_ns"])
