"""Files written whole or not at all, and bad inputs set aside with the reason, never lost.

A reader (a web server, the next op, a backup) must never see half a file: outputs are written to
a temp name in the same folder, flushed to disk and renamed. A bad input is moved to a quarantine
folder under the same relative path, next to a `.reason.txt` that says what was wrong.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
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
    same content already there (a repeated move after a crash) is not kept twice."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and filecmp.cmp(source, target, shallow=False):
        source.unlink()
        return target
    counter = 1
    while target.exists():
        target = root / relative.parent / f"{relative.stem}.{counter}{relative.suffix}"
        counter += 1
    shutil.move(str(source), str(target))
    return target


def quarantine(source: Path, root: Path, relative: Path, reason: str) -> Path:
    """Set `source` aside under `root/relative` with a `.reason.txt` beside it; return its path."""
    target = move_into(source, root, relative)
    note = (
        f"file: {relative.as_posix()}\n"
        f"quarantined: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n"
        f"reason: {reason}\n"
    )
    atomic_write_bytes(target.with_name(target.name + ".reason.txt"), note.encode())
    return target
