"""One batch of inbox photos under the automation's lock: what the op does, without Dagster.

Per photo, in this order: read it once (no symlink, no special file), then either
- it was rendered and recorded by a run that died before moving it: only move it (`repaired`);
- it renders: the renditions are published together under new names
  (`files.publish_together`), its row is written (one transaction), the original moves to
  processed/ and its dead letter, if it had one, is resolved;
- it ends early (truncated, empty) and changed less than the grace period ago: it stays in the
  inbox with a note in `.waiting/` saying why and until when, which the sensor's tick shows;
- anything else bad: it is quarantined with a reason, and one dead letter per file stays open.

Then the manifest is regenerated from the rows: the commit point at which readers switch to the
new sets. Only after it the files of superseded sets (a re-dropped photo's old renditions) and
renditions no row lists (left by a run killed mid-rename) are deleted, in the batch's folders.

Several photos render at once (`PhotoFolders.render_threads`); everything else above happens
in the batch's own thread, photo after photo in the batch's order, the rows of photos rendered
meanwhile written in one transaction before their originals move.

Quarantined files that changed since they were judged (an uploader that kept writing into one)
come back into the inbox first (`revisit`) and are judged again in the same batch.

With steps on several workers (the Celery executor) the same batch is three phases:
`open_batch` (exclusive lock: stale temp files, revisits), `render_files` for each part of the
batch, side by side under a shared lock (each photo is one part's alone), and `close_batch`
(exclusive lock: manifest, superseded and unlisted renditions). A run that holds the lock
exclusively, in any phase or executor, never overlaps another's writes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.images import (
    OUTPUT_NAME,
    BadImage,
    ImageResult,
    ImageSettings,
    SourceFile,
    read_source,
    render_image,
)
from automation_pipelines.automations.web_images.records import (
    get_records,
    listed_outputs,
    outputs_present,
    record_photos,
    regenerate_manifest,
)
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.deadletters import (
    open_items,
    record_dead_letter,
    resolve_items,
)
from automation_pipelines.reliability.errors import classify, for_item
from automation_pipelines.reliability.files import (
    atomic_write_bytes,
    changed_since_quarantine,
    move_into,
    note_path,
    quarantine,
    read_note,
)
from automation_pipelines.reliability.locks import exclusive_lock, shared_lock

_log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    """What became of each file of the batch."""

    delivered: list[dict] = field(default_factory=list)  # their manifest entries
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    waiting: list[tuple[str, str, float]] = field(default_factory=list)  # (file, reason, until)
    missing: list[str] = field(default_factory=list)  # gone already (an earlier attempt)
    repaired: list[str] = field(default_factory=list)
    revisited: list[str] = field(default_factory=list)  # brought back from quarantine
    removed_outputs: list[str] = field(default_factory=list)
    manifest_entries: int = 0
    superseded: list[str] = field(default_factory=list)  # outputs of replaced sets
    #: When the earliest of the photos delivered or quarantined arrived (epoch seconds): the
    #: ctime its file had when read, which its last write or its rename into the inbox set.
    arrived: float | None = None

    def merge(self, other: BatchOutcome) -> None:
        """Add what another part of the same batch did."""
        for name in ("delivered", "quarantined", "waiting", "missing", "repaired", "revisited"):
            getattr(self, name).extend(getattr(other, name))
        self.superseded.extend(other.superseded)
        arrived = getattr(other, "arrived", None)  # a part kept by an earlier release: none
        if arrived is not None:
            self.handled(arrived)

    def handled(self, arrived: float) -> None:
        """A photo that arrived at `arrived` got its result in this batch."""
        if self.arrived is None or arrived < self.arrived:
            self.arrived = arrived


def manifest_entry(relative: str, result: ImageResult) -> dict:
    """What the manifest says of one photo: every output with its size, the bytes saved by
    serving the largest WebP (else the largest output) instead of the original, and for an
    animation or a rendition a format could not hold, that too."""
    webps = [r for r in result.renditions if r.format == "webp"]
    largest = max(webps or result.renditions, key=lambda r: (r.width, -r.bytes))
    entry = {
        "source": relative,
        "source_bytes": result.source_bytes,
        "width": result.width,
        "height": result.height,
        "outputs": [
            {
                "path": r.path.as_posix(),
                "format": r.format,
                "width": r.width,
                "height": r.height,
                "bytes": r.bytes,
            }
            for r in result.renditions
        ],
        "bytes_saved": result.source_bytes - largest.bytes,
    }
    if result.frames > 1:
        entry["animated"], entry["frames"] = True, result.frames
    if result.skipped:
        entry["skipped"] = [
            {"width": s.width, "height": s.height, "format": s.format, "reason": s.reason}
            for s in result.skipped
        ]
    return entry


def process_batch(
    folders: PhotoFolders,
    engine: sa.Engine,
    files: Iterable[str],
    settings: ImageSettings | None = None,
    *,
    run_id: str | None = None,
    revisit: Iterable[str] = (),
    now: Callable[[], float] = time.time,
    on_wait: Callable[[str], None] | None = None,
    log: Any = _log,
) -> BatchOutcome:
    """Render, set aside or keep waiting every file of the batch (paths relative to the inbox;
    `revisit`: relative to the quarantine), holding the automation's lock throughout."""
    files, revisit = list(files), list(revisit)
    settings = settings or ImageSettings()
    _refuse_outside(files + revisit)
    outcome = BatchOutcome()
    batch = _Batch(folders, engine, settings, run_id, now, log, outcome)
    with exclusive_lock(folders.lock, holder={"run_id": run_id}, on_wait=on_wait):
        # Runs may start side by side; these two lines say when this one had the tree.
        log.info(f"{LOCK_TAKEN} ({len(files)} file(s), {len(revisit)} to revisit)")
        _remove_stale_temp_files(folders, files)
        files += batch.bring_back(revisit)
        try:
            batch.handle(files)
        except Exception:
            # The rows written so far are safe; the manifest is the next run's to repair if
            # this write fails too (a full disk), or if the run is being terminated.
            try:
                regenerate_manifest(engine, folders.root, folders.manifest)
            except Exception as exc:
                log.warning(f"manifest not regenerated: {type(exc).__name__}: {exc}")
            raise
        manifest = regenerate_manifest(engine, folders.root, folders.manifest)
        outcome.manifest_entries = len(manifest)
        outcome.removed_outputs = _remove_unlisted(
            folders, files, batch.superseded, listed_outputs(manifest)
        )
        _forget_waiting_notes_of_gone_files(folders)
    log.info(LOCK_RELEASED)
    return outcome


def open_batch(
    folders: PhotoFolders,
    engine: sa.Engine,
    files: Iterable[str],
    *,
    run_id: str | None = None,
    revisit: Iterable[str] = (),
    on_wait: Callable[[str], None] | None = None,
    log: Any = _log,
) -> BatchOutcome:
    """The first phase of a batch split over steps, under the exclusive lock: remove temp files
    a killed step left and bring changed quarantined files back; `revisited` names those."""
    files, revisit = list(files), list(revisit)
    _refuse_outside(files + revisit)
    outcome = BatchOutcome()
    batch = _Batch(folders, engine, ImageSettings(), run_id, time.time, log, outcome)
    with exclusive_lock(folders.lock, holder={"run_id": run_id}, on_wait=on_wait):
        _remove_stale_temp_files(folders, files)
        batch.bring_back(revisit)
    return outcome


def render_files(
    folders: PhotoFolders,
    engine: sa.Engine,
    files: Iterable[str],
    settings: ImageSettings,
    *,
    run_id: str | None = None,
    before: Callable[[], None] | None = None,
    now: Callable[[], float] = time.time,
    on_wait: Callable[[str], None] | None = None,
    log: Any = _log,
) -> BatchOutcome:
    """One part of a batch split over steps: every file as `process_batch` takes it, under the
    shared lock, so parts render side by side but never while a phase holds it exclusively.
    `before` runs once the lock is held (a step of a run that already ended raises there)."""
    files = list(files)
    _refuse_outside(files)
    outcome = BatchOutcome()
    batch = _Batch(folders, engine, settings, run_id, now, log, outcome)
    with shared_lock(folders.lock, on_wait=on_wait):
        if before is not None:
            before()
        batch.handle(files)
    outcome.superseded = sorted(batch.superseded)
    return outcome


def close_batch(
    folders: PhotoFolders,
    engine: sa.Engine,
    files: Iterable[str],
    superseded: Iterable[str],
    *,
    run_id: str | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[int, list[str]]:
    """The last phase, under the exclusive lock: temp files of a killed part, the manifest from
    the rows, then the superseded and unlisted renditions; returns the manifest's size and the
    renditions removed."""
    files = list(files)
    with exclusive_lock(folders.lock, holder={"run_id": run_id}, on_wait=on_wait):
        _remove_stale_temp_files(folders, files)
        manifest = regenerate_manifest(engine, folders.root, folders.manifest)
        removed = _remove_unlisted(folders, files, set(superseded), listed_outputs(manifest))
        _forget_waiting_notes_of_gone_files(folders)
    return len(manifest), removed


def _refuse_outside(files: list[str]) -> None:
    outside = [rel for rel in files if Path(rel).is_absolute() or ".." in Path(rel).parts]
    if outside:
        raise ValueError(f"files must be paths inside the inbox, got {outside}")


#: What a run's log says when it takes and releases the photo tree's lock.
LOCK_TAKEN = "took the photo tree's lock"
LOCK_RELEASED = "released the photo tree's lock"


#: Files read and handed to the pool, per thread, before the older half of them is finished
#: together: the pool keeps the younger half to render meanwhile, and rendered files are
#: recorded several to a transaction. Never more than `_READ_AHEAD_BYTES` of sources held.
_READ_AHEAD = 8
_READ_AHEAD_BYTES = 256 * 1024 * 1024


def _bytes(pending: collections.deque[_Job]) -> int:
    return sum(job.read.size for job in pending)


def _rendered(pending: collections.deque[_Job]) -> list[_Job]:
    """The older half of `pending` (at least one), once rendered, and the jobs after it whose
    rendering ended too, taken off `pending`."""
    half = max(1, len(pending) // 2)
    wait([pending[index].rendering for index in range(half)])
    taken = [pending.popleft() for _ in range(half)]
    while pending and pending[0].rendering.done():
        taken.append(pending.popleft())
    return taken


@dataclass
class _Job:
    """A file whose rendering is under way."""

    relative: str
    read: SourceFile
    row: Any  # its record before this batch, if it had one
    rendering: Future


class _Batch:
    def __init__(self, folders, engine, settings, run_id, now, log, outcome: BatchOutcome):
        self.folders, self.engine, self.settings = folders, engine, settings
        self.run_id, self.now, self.log, self.outcome = run_id, now, log, outcome
        self.threads = folders.threads()
        self.superseded: set[str] = set()
        #: Files of the batch with an open dead letter (an earlier try quarantined them).
        self.open_letters: set[str] = set()

    def handle(self, files: list[str]) -> None:
        """Every file of `files` once, in order, `threads` of them rendering at once.

        Only the rendering runs on the pool (Pillow lets go of the interpreter lock while it
        decodes, resizes and encodes WebP); reading, rows, moves, quarantine and logs stay in
        this thread, so the database and the run's log see one writer. Rendered files are
        finished in order, those done together in one transaction. A file whose rendering
        fails the run (a full disk) stops the batch: the files before it are finished, nothing
        new starts, the renderings under way end (their renditions stay unlisted until a run
        removes them), and the error is raised."""
        files = list(dict.fromkeys(files))
        rows = get_records(self.engine, self.folders.root, files)
        self.open_letters = open_items(self.engine, AUTOMATION.name, files)
        window = self.threads * _READ_AHEAD
        pending: collections.deque[_Job] = collections.deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="render") as pool:
            try:
                for relative in files:
                    job = self.prepare(relative, rows.get(relative), pool)
                    if job is not None:
                        pending.append(job)
                    if len(pending) >= window or _bytes(pending) >= _READ_AHEAD_BYTES:
                        self.finish(_rendered(pending))
                while pending:
                    self.finish(_rendered(pending))
            except BaseException:
                for job in pending:
                    job.rendering.cancel()
                raise

    def prepare(self, relative: str, row: Any, pool: ThreadPoolExecutor) -> _Job | None:
        """Read the file and settle what needs no rendering (gone, a folder, unreadable,
        rendered already); else start its rendering and return it. `row`: its record."""
        folders = self.folders
        source = folders.inbox / relative
        try:
            info = os.lstat(source)
        except FileNotFoundError:
            self.outcome.missing.append(relative)  # already handled by an earlier attempt
            return None
        if stat.S_ISDIR(info.st_mode):
            self.log.warning(f"{relative} is a folder, not a photo: its files are taken one by one")
            return None
        with for_item(relative):
            try:
                read = read_source(source, relative)
            except BadImage as exc:
                seen = (info.st_size, info.st_mtime_ns)
                self.set_aside(relative, exc.reason, seen, info.st_ctime_ns)
                return None
            if (
                row is not None
                and row.source_sha256 == read.sha256
                and row.settings == self.settings.key()
                and outputs_present(folders.output, row)
            ):
                # Rendered and recorded by a run that died before moving the original.
                move_into(source, folders.processed, Path(relative))
                self.done([relative])
                self.outcome.repaired.append(relative)
                return None
            rendering = pool.submit(
                render_image, read, folders.output, Path(relative), self.settings
            )
            return _Job(relative, read, row, rendering)

    def finish(self, jobs: list[_Job]) -> None:
        """Record, move and report the rendered files of `jobs`, judge those that did not
        render; an error that fails the run is raised once the files before it are done."""
        rendered: list[tuple[_Job, dict]] = []
        failed: tuple[_Job, Exception] | None = None
        for job in jobs:
            try:
                result = job.rendering.result()
            except Exception as exc:
                # Disk and I/O errors (a full or read-only output volume) are not the photo's
                # fault: they fail the run for the owner instead of quarantining a good photo.
                if classify(exc).transient or (
                    isinstance(exc, OSError) and not isinstance(exc, BadImage)
                ):
                    failed = (job, exc)
                    break
                with for_item(job.relative):
                    self.judge(job.relative, job.read, exc)
                continue
            rendered.append((job, manifest_entry(job.relative, result)))
        self.deliver(rendered)
        if failed is not None:
            with for_item(failed[0].relative):
                raise failed[1]

    def deliver(self, rendered: list[tuple[_Job, dict]]) -> None:
        """Rows first (one transaction), then the originals move: a run killed between the two
        leaves photos the next run only moves."""
        if not rendered:
            return
        folders = self.folders
        for job, _ in rendered:
            if job.row is not None:
                self.superseded.update(output["path"] for output in job.row.outputs)
        record_photos(
            self.engine,
            folders.root,
            [(entry, job.read.sha256) for job, entry in rendered],
            settings=self.settings.key(),
            run_id=self.run_id,
        )
        moved = []
        try:
            for job, entry in rendered:
                with for_item(job.relative):
                    move_into(folders.inbox / job.relative, folders.processed, Path(job.relative))
                moved.append(job.relative)
                self.outcome.delivered.append(entry)
                self.outcome.handled(job.read.changed_ns / 1e9)
        finally:
            self.done(moved)

    def judge(self, relative: str, read: SourceFile, exc: Exception) -> None:
        """A file that did not render: wait out the grace period if it ends early, else
        quarantine it."""
        reason = exc.reason if isinstance(exc, BadImage) else f"{type(exc).__name__}: {exc}"
        grace = self.folders.truncated_grace_seconds
        if isinstance(exc, BadImage) and exc.truncated:
            until = read.changed_ns / 1e9 + grace
            if self.now() < until:
                self.wait(relative, read, reason, until)
                return
            reason = f"{reason}; unchanged for {grace:.0f} s or more, so not an upload in progress"
        self.set_aside(relative, reason, (read.size, read.mtime_ns), read.changed_ns)

    def wait(self, relative: str, read: SourceFile, reason: str, until: float) -> None:
        note = {"size": read.size, "mtime_ns": read.mtime_ns, "reason": reason, "until": until}
        atomic_write_bytes(waiting_note(self.folders, relative), json.dumps(note).encode())
        self.outcome.waiting.append((relative, reason, until))
        moment = time.strftime("%H:%M:%S UTC", time.gmtime(until))
        self.log.info(f"waiting: {relative} ends early ({reason}); quarantined at {moment}")

    def set_aside(self, relative: str, reason: str, seen: tuple[int, int], changed_ns: int) -> None:
        folders = self.folders
        quarantine(folders.inbox / relative, folders.quarantine, Path(relative), reason, seen=seen)
        # One open dead letter per file: a re-quarantined file replaces its earlier one.
        resolve_items(self.engine, AUTOMATION.name, [relative])
        record_dead_letter(self.engine, AUTOMATION.name, relative, reason)
        waiting_note(folders, relative).unlink(missing_ok=True)
        self.outcome.quarantined.append((relative, reason))
        self.outcome.handled(changed_ns / 1e9)
        self.log.warning(f"quarantined {relative}: {reason}")

    def done(self, relatives: list[str]) -> None:
        """Delivered: dead letters of earlier tries (a fixed photo moved back) are resolved."""
        letters = [relative for relative in relatives if relative in self.open_letters]
        if letters:
            resolve_items(self.engine, AUTOMATION.name, letters)
        for relative in relatives:
            waiting_note(self.folders, relative).unlink(missing_ok=True)

    def bring_back(self, revisit: list[str]) -> list[str]:
        """Move quarantined files that changed since they were judged back into the inbox,
        under the name they had there; return their inbox paths."""
        folders, back = self.folders, []
        for relative in revisit:
            path = folders.quarantine / relative
            if changed_since_quarantine(path) is not True:
                continue  # unchanged, or already brought back by an earlier attempt
            item = (read_note(path) or {}).get("file") or relative
            target = move_into(path, folders.inbox, Path(item))
            note_path(path).unlink(missing_ok=True)
            now_named = target.relative_to(folders.inbox).as_posix()
            if now_named != item:
                resolve_items(self.engine, AUTOMATION.name, [item])
            self.log.info(f"{relative} changed in quarantine/: back in the inbox as {now_named}")
            self.outcome.revisited.append(now_named)
            back.append(now_named)
        return back


def waiting_note(folders: PhotoFolders, relative: str) -> Path:
    return folders.waiting / f"{relative}.json"


def read_waiting_note(folders: PhotoFolders, relative: str) -> dict | None:
    """The note of an inbox file waiting out its grace period, if it has one."""
    try:
        note = json.loads(waiting_note(folders, relative).read_bytes())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _remove_stale_temp_files(folders: PhotoFolders, files: list[str]) -> None:
    """Temp files in the batch's output folders can only be left by a run that died mid-write:
    while we hold the lock nobody else writes there."""
    targets = {folders.output} | {(folders.output / rel).parent for rel in files}
    for folder in targets:
        with contextlib.suppress(FileNotFoundError):
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def _remove_unlisted(
    folders: PhotoFolders, files: list[str], superseded: set[str], listed: set[str]
) -> list[str]:
    """After the manifest moved on: delete the superseded sets' files and, in the batch's
    folders, renditions (by their versioned names) that no row lists."""
    doomed = set(superseded - listed)
    for folder in {(folders.output / rel).parent for rel in files}:
        # Each entry's path by its folder's prefix: a flat inbox's folder is all of web/, four
        # renditions per photo ever published, and a Path per entry cost a second at 20,000.
        prefix = folder.relative_to(folders.output).as_posix()
        prefix = "" if prefix == "." else f"{prefix}/"
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                path = prefix + entry.name
                if OUTPUT_NAME.match(entry.name) and path not in listed:
                    doomed.add(path)
    removed = []
    for path in sorted(doomed):
        with contextlib.suppress(FileNotFoundError):
            (folders.output / path).unlink()
            removed.append(path)
    return removed


def _forget_waiting_notes_of_gone_files(folders: PhotoFolders) -> None:
    if not folders.waiting.is_dir():
        return
    for note in folders.waiting.rglob("*.json"):
        relative = note.relative_to(folders.waiting).as_posix().removesuffix(".json")
        if not os.path.lexists(folders.inbox / relative):
            note.unlink(missing_ok=True)
