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
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: Names that mean "still being written" by common copy tools; never picked up as inputs.
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".filepart", "~")


def is_temporary(path: Path) -> bool:
    """Hidden files and the in-progress names browsers, rsync, scp and editors use."""
    name = path.name
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[BinaryIO]:
    """Write to a hidden temp file beside `target`, fsync, then rename over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_writer(target) as handle:
        handle.write(data)


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
