"""The inbox sensor: complete new files become runs, in capped batches, each file once, and
every file in the inbox is either requested or named in the tick with the reason it waits.

A file is taken on the first look at which it has not been written for `quiet_seconds`, and is
not seen different from the previous look, and it does not carry a temp or hidden name. Every
write moves both the mtime and the ctime to the moment; a rename, a chmod or a `touch -d` moves
the ctime alone. So the last write is the earlier of the two: a finished upload renamed in (its
mtime old, its ctime the rename) is taken at once, and a file whose mtime was set into the
future (a camera's or another machine's clock) waits only until its ctime is quiet. No second
look is waited for: that would cost a whole sensor interval per photo. A tick that finds nothing
listens for `listen_seconds` (see `reliability.listening`): a photo renamed in meanwhile is
taken by that tick as soon as it is quiet, not at the daemon's next round. Quiet is not proof an
upload is finished (one can stall for minutes), so the run decodes it whole: a file that ends
early waits in the inbox for its grace period after its last change (a note in `.waiting/`,
shown in the tick), and is only then quarantined. Every other file is requested whatever its
name or kind (a GIF, a symlink, a `notes.txt`), so the run quarantines it with a reason instead
of it lying in the inbox unseen. Folders are looked into; one named like a photo is pointed out.
Files in quarantine/ that changed after they were judged (an uploader kept writing into one) are
requested again, once they too have been quiet.

Processed files leave the inbox, so a look costs what is waiting, not the history, and a look
stops reading once it has more ready files than a tick takes (`SCAN_READY_LIMIT`): a backlog of
100,000 costs a tick what one of a thousand does. What the last look saw and which run key
asked for each file live in the project database (`book.py`), only for files still there that
a look read or a run was asked for; Dagster's cursor, stored with every tick, keeps only where
the sweep of quarantine/ goes on (read `QUARANTINE_SWEEP` files a tick, in turn). While
`MAX_WAITING_RUNS` runs wait to start, nothing more is requested: the queue keeps every run slot
busy, and the files in flight stay few.

Environmental failures recover by themselves. A file whose run finished without taking it out of
the inbox (a full disk, an unreadable folder) is requested again under a new run key, with
exponential backoff and jitter counted from that run's end (15-30 s, then 30-60 s, … at most
180 s), unless Dagster is still retrying that run. A file asked for under a run key no run
carries (the daemon died between the look and recording its runs, or the run was deleted) is
asked for again a minute later under the same key, which Dagster drops should the run turn up
after all. Before requesting, the sensor checks free
space on the output volume: while it is short of the batch's photos plus a margin, it requests
nothing (so a full disk does not burn through the circuit breaker) and says what it waits for,
and the photos go within one tick of space being freed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import dagster as dg

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.batch import read_waiting_note
from automation_pipelines.automations.web_images.book import Book, TableBook, empty_state
from automation_pipelines.automations.web_images.images import IMAGE_SUFFIXES
from automation_pipelines.automations.web_images.jobs import (
    batch_run_config,
    render_web_images_job,
)
from automation_pipelines.automations.web_images.resources import (
    DEFAULT_MAX_FILES_PER_RUN,
    PhotoFolders,
)
from automation_pipelines.reliability import breaker, listening, pacing
from automation_pipelines.reliability.files import (
    REASON_SUFFIX,
    changed_since_quarantine,
    is_temporary_name,
)
from automation_pipelines.reliability.tags import RUN_KEY_TAG, WILL_RETRY_TAG

#: A run's files while the inbox is quiet. Under load runs batch more: every ready file goes in
#: one run, up to `PhotoFolders.max_files_per_run` (`DEFAULT_MAX_FILES_PER_RUN`, 2,000) files
#: and `MAX_BYTES_PER_RUN` of photos, so a burst costs few run starts (each about 3 s of CPU for
#: a new process) for the same photos. A trickle still gets a run per photo.
MAX_FILES_PER_RUN = 25
#: A run's photos add up to at most this many bytes (one bigger photo goes alone): about two
#: minutes of rendering for big camera JPEGs on this 2-core machine, well within the run's
#: `max_runtime_seconds` whatever the photos.
MAX_BYTES_PER_RUN = 1_000_000_000
#: Dagster's sensor daemon goes round every 5 s (a constant of its loop) and evaluates a sensor
#: whose interval has passed. An interval of 5 s would be missed by a hair every other round (a
#: 10 s cadence); 1 s makes every round evaluate it, so the cadence is the daemon's 5 s.
SENSOR_INTERVAL_SECONDS = 1
MAX_RUNS_PER_TICK = 4
#: Backoff before a file whose run finished (failed) is requested again: base * 2^attempt,
#: at most the cap, times a jitter in [0.5, 1] fixed per run key.
RE_REQUEST_BASE_SECONDS = 30.0
RE_REQUEST_MAX_SECONDS = 180.0
#: How long after a finished run that Dagster will retry its retry may take to appear.
REQUEST_AGAIN_AFTER_SECONDS = 2 * AUTOMATION.max_runtime_seconds
#: A file asked for under a run key no run carries (the daemon died between this look and
#: recording its runs, or the run was deleted) is asked for again this long after, under the
#: same run key: Dagster drops the request should that run turn up after all.
MISSING_RUN_SECONDS = 60.0
_MB = 1_000_000
#: A look stops reading the inbox once it holds this many files ready to request: as many as
#: the biggest run takes by default, so a backlog fills a whole run each tick, the counts a tick
#: shows are exact for any inbox up to that size, and a backlog of any size costs a tick the same.
SCAN_READY_LIMIT = DEFAULT_MAX_FILES_PER_RUN
#: Quarantined files a look reads per tick (each with its note, to see whether it changed
#: since it was judged); a bigger quarantine is looked through a part per tick, in turn.
QUARANTINE_SWEEP = 1000
#: While this many runs of the job wait to start, the sensor requests no more: the queue
#: already holds enough to keep every run slot busy, and the files in flight stay few.
MAX_WAITING_RUNS = 2 * AUTOMATION.side_by_side
_WAITING_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]


@dataclass(frozen=True)
class RunOutcome:
    """What the sensor needs to know of the latest run of a run key."""

    done: bool  # finished, and Dagster will not retry it
    ended_at: float | None = None


RunLookup = Callable[[str], RunOutcome | None]


def run_outcome(instance: dg.DagsterInstance, run_key: str, now: float) -> RunOutcome | None:
    """The latest run (an automatic retry carries its parent's run key) of `run_key`; None when
    there is none (not created yet, or deleted)."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    if not records:
        return None
    record = records[0]
    run = record.dagster_run
    if not run.is_finished:
        return RunOutcome(done=False)
    ended = record.end_time or record.update_timestamp.timestamp()
    retrying = run.tags.get(WILL_RETRY_TAG) == "true"
    if retrying and now - ended < REQUEST_AGAIN_AFTER_SECONDS:
        return RunOutcome(done=False)  # the daemon launches its retry in a moment
    return RunOutcome(done=True, ended_at=ended)


def waiting_runs(instance: dg.DagsterInstance) -> int:
    """Runs of the job queued or starting: requested, not yet at work."""
    return instance.get_runs_count(
        dg.RunsFilter(job_name=render_web_images_job.name, statuses=_WAITING_STATUSES)
    )


def re_request_delay(attempt: int, run_key: str) -> float:
    """Seconds after the end of run number `attempt` (0 = the first request) before its files
    are requested again; the jitter is fixed per run key, so every tick agrees on the moment."""
    backoff = min(RE_REQUEST_MAX_SECONDS, RE_REQUEST_BASE_SECONDS * 2**attempt)
    return backoff * random.Random(run_key).uniform(0.5, 1.0)


class Entry(NamedTuple):
    """One file as a look saw it (lstat: a symlink is itself, not what it points at)."""

    rel: str
    size: int
    mtime: int  # ns
    written: int  # ns, the last write as the times tell it: the earlier of mtime and ctime


@dataclass
class ScanNotes:
    """What a look found that will never be requested, for the tick to say."""

    unreadable: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    photo_folders: list[str] = field(default_factory=list)
    bad_names: list[str] = field(default_factory=list)


def _walk(inbox: Path, skip: list[Path], notes: ScanNotes) -> Iterator[tuple[str, os.DirEntry]]:
    """Every entry under `inbox` that is not a folder, as (relative path, entry), in directory
    order and lazily (a look may stop early), without a stat of its own; our own folders are
    skipped, folders that cannot be listed and names never taken go to `notes`."""
    skip_resolved = {os.path.realpath(p) for p in skip}
    top = os.fspath(inbox)
    stack = [(top, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            listing = os.scandir(folder)
        except FileNotFoundError:
            continue
        except OSError as exc:
            notes.unreadable.append(f"{folder} ({exc.strerror or type(exc).__name__})")
            continue
        with listing:
            for entry in listing:
                rel = prefix + entry.name
                if not _is_utf8(rel):
                    notes.bad_names.append(rel.encode("utf-8", "surrogateescape").decode("latin-1"))
                    continue
                if is_temporary_name(entry.name):
                    notes.temporary.append(rel)
                    continue
                try:
                    folder_entry = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if folder_entry:
                    if os.path.realpath(entry.path) not in skip_resolved:
                        stack.append((entry.path, f"{rel}/"))
                        if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                            notes.photo_folders.append(f"{rel}/")
                    continue
                yield rel, entry


def _entry(rel: str, found: os.DirEntry) -> Entry | None:
    """The entry's figures (lstat: a symlink is itself); None when it is gone meanwhile."""
    try:
        info = found.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        return None  # became a folder between the listing and the look
    return Entry(rel, info.st_size, info.st_mtime_ns, min(info.st_mtime_ns, info.st_ctime_ns))


def scan(
    inbox: Path,
    skip: list[Path],
    unreadable: list[str] | None = None,
    notes: ScanNotes | None = None,
) -> Iterator[Entry]:
    """Every file under `inbox` that is not a folder (regular files of any name, symlinks,
    special files), skipping our own folders; folders that cannot be listed are named in
    `unreadable` and looked at again next tick, temp names and the like in `notes`. Lazy: a
    look that has enough stops reading the folder there."""
    notes = notes or ScanNotes()
    if unreadable is not None:
        notes.unreadable = unreadable
    for rel, found in _walk(inbox, skip, notes):
        entry = _entry(rel, found)
        if entry is not None:
            yield entry


def sweep_quarantine(
    quarantine: Path, start: int, budget: int | None
) -> tuple[list[tuple[Entry, bool | None]], int]:
    """Up to `budget` quarantined files (all with None) from position `start` in the folder's
    order, each with whether it changed since it was judged; and the position the next sweep
    starts from (0 once the sweep reached the end). A big quarantine is thus looked through a
    part per tick, and a tick's cost stays the same whatever it holds."""
    if not quarantine.is_dir():
        return [], 0
    files = (
        (rel, found)
        for rel, found in _walk(quarantine, [], ScanNotes())
        if not rel.endswith(REASON_SUFFIX)
    )
    swept: list[tuple[Entry, bool | None]] = []
    position = 0
    for rel, found in files:
        position += 1
        if position <= start:
            continue
        entry = _entry(rel, found)
        if entry is not None:
            swept.append((entry, changed_since_quarantine(quarantine / rel)))
        if budget is not None and len(swept) >= budget:
            return swept, position
    return swept, 0


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def batch_run_key(batch: list[tuple[str, int, int, int]], prefix: str = "photos") -> str:
    """Deterministic per batch content and attempt: Dagster drops a request whose run key this
    sensor already used, so a re-request needs the attempt in its key."""
    digest = hashlib.sha256(json.dumps(sorted(batch)).encode()).hexdigest()[:24]
    attempt = max(item[3] for item in batch)
    return f"{prefix}-{digest}" + (f"-try{attempt + 1}" if attempt else "")


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass
class _Area:
    """The files of one folder (the inbox, or quarantine/) and what the cursor knows of them."""

    current: dict[str, Entry]
    previous: dict[str, list[int]]
    requested: dict[str, list]
    ready: list[tuple[str, int, int, int]] = field(default_factory=list)
    settling: int = 0
    waiting: int = 0
    in_flight: int = 0  # of `waiting`: their run is queued or working
    #: Ready files whose run key no run carries: asked for again under that key.
    unrecorded: dict[str, str] = field(default_factory=dict)
    #: (mtime, rel, words) of files that end early and wait out their grace period.
    truncated: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class Look:
    """One look at the inbox: what to request, the new cursor, the tick's sentence, and how
    many files are still settling (they may become quiet within a listening tick)."""

    requests: list[dg.RunRequest]
    cursor: str
    sentence: str
    settling: int
    #: Files whose run is queued or working: the inbox folder changes as that run moves them out.
    in_flight: int = 0


def look(
    folders: PhotoFolders,
    cursor: str | None,
    now: float,
    runs: RunLookup = lambda run_key: None,
    max_runs: int = MAX_RUNS_PER_TICK,
    book: Book | None = None,
    waiting_runs: int = 0,
) -> Look:
    """The run requests for this tick (at most `max_runs`: the automation's pace may allow
    fewer than the cap per tick; none while `waiting_runs` runs of the job wait to start and
    that is `MAX_WAITING_RUNS` or more), the new cursor, a sentence for the tick's log and how
    many files are settling. With a `book` the per-file state lives there and the cursor
    holds only where the quarantine sweep goes on; without one, the cursor holds it all."""
    kept = json.loads(cursor) if cursor else {}
    if book is None:
        state = {**empty_state(), **{k: v for k, v in kept.items() if k in _STATE_KEYS}}
    else:
        state = book.load()
        for key in ("requested", "quarantine_requested"):  # a cursor from before the book
            for rel, asked in (kept.get(key) or {}).items():
                state[key].setdefault(rel, asked)
    notes = ScanNotes()
    inbox = _Area({}, state["seen"], state["requested"])
    changed = _Area({}, state["quarantine_seen"], state["quarantine_requested"])
    outcomes: dict[str, RunOutcome | None] = {}

    def due_at(asked: list) -> float | None:
        """When a requested file may be requested again; None while its run is in progress."""
        requested_at, run_key = asked[2], asked[3] if len(asked) > 3 else None
        attempt = asked[4] if len(asked) > 4 else 0
        if run_key is not None and run_key not in outcomes:
            outcomes[run_key] = runs(run_key)
        outcome = outcomes.get(run_key) if run_key is not None else None
        if outcome is None:
            return requested_at + MISSING_RUN_SECONDS
        if not outcome.done:
            return None
        return (outcome.ended_at or requested_at) + re_request_delay(attempt, run_key)

    def classify(area: _Area, entry: Entry, waiting_notes: bool) -> bool:
        """Count the file where it belongs; True when it is ready to request."""
        rel = entry.rel
        quiet = now - entry.written / 1e9 >= folders.quiet_seconds
        seen = area.previous.get(rel)
        if not quiet or (seen is not None and seen != [entry.size, entry.mtime]):
            area.settling += 1
            return False
        asked = area.requested.get(rel)
        attempt, moment = 0, None
        if asked and asked[:2] == [entry.size, entry.mtime]:
            moment = due_at(asked)
            if moment is None:
                area.waiting += 1
                area.in_flight += 1
                return False
            attempt = (asked[4] if len(asked) > 4 else 0) + 1
            if len(asked) > 3 and outcomes.get(asked[3]) is None:
                attempt -= 1  # never recorded: the same request again, under its own key
                area.unrecorded[rel] = asked[3]
        note = read_waiting_note(folders, rel) if waiting_notes else None
        if note and [note.get("size"), note.get("mtime_ns")] == [entry.size, entry.mtime]:
            if now < float(note.get("until", 0)):
                area.truncated.append((entry.mtime, rel, _waiting_words(rel, note)))
                return False  # its grace period is over: requested, to be quarantined
        elif moment is not None and now < moment:
            area.waiting += 1
            return False
        area.ready.append((rel, entry.size, entry.mtime, attempt))
        return True

    waiting_notes = _has_waiting_notes(folders)
    complete = True
    for entry in scan(folders.inbox, folders.own_folders(), notes=notes):
        inbox.current[entry.rel] = entry
        if classify(inbox, entry, waiting_notes) and len(inbox.ready) >= SCAN_READY_LIMIT:
            complete = False
            break
    sweep_from = int(kept.get("quarantine_at", 0))
    swept, sweep_next = sweep_quarantine(folders.quarantine, sweep_from, QUARANTINE_SWEEP)
    for entry, moved in sorted(swept, key=lambda item: (item[0].mtime, item[0].rel)):
        if moved:
            changed.current[entry.rel] = entry
            classify(changed, entry, waiting_notes=False)
    for area in (inbox, changed):
        area.ready.sort(key=lambda item: (item[2], item[0]))
        area.truncated.sort()

    if waiting_runs >= MAX_WAITING_RUNS:
        max_runs = 0
    per_run = files_per_run(len(inbox.ready), max_runs, folders.max_files_per_run)
    fitting, space_note = _fit_free_space(folders, inbox.ready[: per_run * max_runs], per_run)
    by_key = book is not None
    requests, taken = _requests(fitting, inbox, "files", "photos", now, per_run, max_runs, by_key)
    left = len(inbox.ready) - len(taken)
    runs_left = max_runs - len(requests)
    requests += _requests(
        changed.ready[: MAX_FILES_PER_RUN * runs_left],
        changed,
        "revisit",
        "revisit",
        now,
        MAX_FILES_PER_RUN,
        runs_left,
        by_key,
    )[0]
    seen, requested = _kept(inbox, folders.inbox, set(inbox.current), complete)
    quarantine_seen, quarantine_requested = _kept(
        changed,
        folders.quarantine,
        {entry.rel for entry, _moved in swept},
        sweep_from == 0 and sweep_next == 0,
    )
    new_state = {
        "seen": seen,
        "requested": requested,
        "quarantine_seen": quarantine_seen,
        "quarantine_requested": quarantine_requested,
    }
    position = {"quarantine_at": sweep_next} if sweep_next else {}
    if book is None:
        new_cursor = json.dumps({**new_state, **position}, sort_keys=True)
    else:
        book.save(new_state)
        new_cursor = json.dumps(position)
    sentence = _sentence(folders, inbox, changed, notes, taken, requests, left, complete)
    if waiting_runs >= MAX_WAITING_RUNS:
        sentence = (
            f"{waiting_runs} run(s) of {render_web_images_job.name} wait to start (at most "
            f"{MAX_WAITING_RUNS}): new files wait for them; {sentence}"
        )
    if space_note:
        sentence = f"{space_note}; {sentence}"
    elif not requests:
        sentence = f"nothing to do: {sentence}"
    in_flight = inbox.in_flight + (waiting_runs if waiting_runs >= MAX_WAITING_RUNS else 0)
    return Look(requests, new_cursor, sentence, inbox.settling + changed.settling, in_flight)


_STATE_KEYS = ("seen", "requested", "quarantine_seen", "quarantine_requested")


def _has_waiting_notes(folders: PhotoFolders) -> bool:
    """Whether any inbox file waits out its grace period (most looks have none to read)."""
    try:
        with os.scandir(folders.waiting) as listing:
            return any(True for _ in listing)
    except OSError:
        return False


def _kept(
    area: _Area, folder: Path, examined: set[str], complete: bool
) -> tuple[dict[str, list], dict[str, list]]:
    """The area's state for the next look: what this look saw of the files it examined (and
    the requests of those still there); a look that stopped early keeps what it knew of the
    files it did not reach, while they are still there."""
    seen = {rel: [e.size, e.mtime] for rel, e in area.current.items()}
    requested = {r: v for r, v in area.requested.items() if r in area.current}
    if not complete:
        for rel in (area.previous.keys() | area.requested.keys()) - examined:
            if not os.path.lexists(os.path.join(folder, rel)):
                continue
            if rel in area.previous:
                seen[rel] = area.previous[rel]
            if rel in area.requested:
                requested[rel] = area.requested[rel]
    return seen, requested


def inbox_stamp(folders: PhotoFolders) -> int | None:
    """Moves when a file is made, renamed in or removed at the top of the inbox (a file in a
    sub-folder is seen at the next tick, or with any file that settles meanwhile)."""
    try:
        return os.stat(folders.inbox).st_mtime_ns
    except OSError:
        return None


def files_per_run(ready: int, runs: int, most: int = DEFAULT_MAX_FILES_PER_RUN) -> int:
    """`MAX_FILES_PER_RUN`, or under load every `ready` file in one run; never more than
    `most` (and `_batches` keeps a run's photos under `MAX_BYTES_PER_RUN`). A run renders its
    photos several at once, and its start costs a new process seconds of CPU beside the run
    rendering: the fewer starts a backlog costs, the more of the machine renders."""
    if runs < 1:
        return max(1, min(most, MAX_FILES_PER_RUN))
    return max(1, min(most, max(MAX_FILES_PER_RUN, ready)))


def _batches(
    items: list[tuple[str, int, int, int]], per_run: int
) -> list[list[tuple[str, int, int, int]]]:
    """`items` in order, `per_run` a batch, a batch closed early once its photos reach
    `MAX_BYTES_PER_RUN` (a photo bigger than that alone is a batch of its own)."""
    batches: list[list[tuple[str, int, int, int]]] = []
    size = 0
    for item in items:
        if not batches or len(batches[-1]) >= per_run or size + item[1] > MAX_BYTES_PER_RUN:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item[1]
    return batches


def _requests(
    taken: list[tuple[str, int, int, int]],
    area: _Area,
    field_name: str,
    prefix: str,
    now: float,
    per_run: int,
    most: int,
    by_key: bool = False,
) -> tuple[list[dg.RunRequest], list[tuple[str, int, int, int]]]:
    """Requests for the `taken` files, `per_run` a run, at most `most` runs, and the files
    they take; files asked for under a run key no run carries are asked for again under that
    key, together. `by_key`: a run's config names its batch by run key (the book lists its
    files), so the tick record that keeps the request stays small."""
    again: dict[str, list[tuple[str, int, int, int]]] = {}
    fresh = []
    for item in taken:
        key = area.unrecorded.get(item[0])
        if key is None:
            fresh.append(item)
        else:
            again.setdefault(key, []).append(item)
    batches = [(key, batch) for key, batch in again.items()]
    for batch in _batches(fresh, per_run):
        batches.append((batch_run_key(batch, prefix), batch))
    requests, requested = [], []
    for run_key, batch in batches[: max(0, most)]:
        requested += batch
        config = {"batch": run_key} if by_key else {field_name: [b[0] for b in batch]}
        requests.append(dg.RunRequest(run_key=run_key, run_config=batch_run_config(config)))
        for rel, size, mtime, attempt in batch:
            area.requested[rel] = [size, mtime, now, run_key, attempt]
    return requests, requested


#: At most this many names per reason in a tick's sentence.
_NAMED = 5


def _names(items: list[str]) -> str:
    more = f" and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
    return ", ".join(items[:_NAMED]) + more


def _waiting_words(rel: str, note: dict) -> str:
    until = time.strftime("%H:%M:%S UTC", time.gmtime(float(note.get("until", 0))))
    return f"{rel} (until {until}: {note.get('reason', 'ends early')})"


def _sentence(
    folders: PhotoFolders,
    inbox: _Area,
    changed: _Area,
    notes: ScanNotes,
    taken: list,
    requests: list[dg.RunRequest],
    left: int,
    complete: bool = True,
) -> str:
    parts = [
        f"{len(taken):,} file(s) in {len(requests)} run(s)",
        f"{inbox.settling:,} still being written (written in the last "
        f"{folders.quiet_seconds:.0f} s or since the last look)",
        f"{inbox.waiting:,} waiting for their run or its retry",
        f"{left:,} left for the next tick"
        if complete
        else f"at least {left:,} left for the next tick (this look stopped reading the inbox at "
        f"{SCAN_READY_LIMIT:,} files ready; the counts are of the {len(inbox.current):,} "
        "files it read)",
    ]
    if inbox.truncated:
        words = [item[2] for item in inbox.truncated]
        parts.append(
            f"{len(words)} end early and wait for the rest of their upload, else are "
            f"quarantined: {_names(words)}"
        )
    if changed.ready or changed.settling or changed.waiting:
        parts.append(
            f"{len(changed.current)} quarantined file(s) changed since they were judged and go "
            f"back to the inbox once quiet: {_names(sorted(changed.current))}"
        )
    if notes.temporary:
        parts.append(
            f"{len(notes.temporary)} never taken, named like a copy in progress or hidden: "
            f"{_names(sorted(notes.temporary))}"
        )
    if notes.photo_folders:
        parts.append(
            f"folders named like photos, looked into as folders: {_names(notes.photo_folders)}"
        )
    if notes.bad_names:
        parts.append(
            f"{len(notes.bad_names)} with names that are not valid UTF-8, never taken (rename "
            f"them): {_names(notes.bad_names)}"
        )
    if notes.unreadable:
        parts.append(f"unreadable, looked at again next tick: {', '.join(notes.unreadable)}")
    return "; ".join(parts)


def _fit_free_space(
    folders: PhotoFolders, ready: list[tuple[str, int, int, int]], per_run: int
) -> tuple[list[tuple[str, int, int, int]], str | None]:
    """The ready files, in order, whose photos fit in the free space less the margin (their
    renditions are smaller than the photos), and a note when some must wait for space."""
    if not ready:
        return [], None
    free = free_bytes(folders.output_volume)
    margin = int(folders.free_space_margin_mb * _MB)
    taken, used = [], 0
    for item in ready:
        if used + item[1] + margin > free:
            break
        taken.append(item)
        used += item[1]
    if len(taken) == len(ready):
        return taken, None
    batch = ready[len(taken) : len(taken) + per_run]
    photos = sum(item[1] for item in batch)
    note = (
        f"waiting for disk space: {free / _MB:.1f} MB free on {folders.output_volume}, the next "
        f"{len(batch)} photo(s) need {(photos + margin) / _MB:.1f} MB ({photos / _MB:.1f} MB of "
        f"photos + {margin / _MB:.1f} MB margin); {len(ready) - len(taken)} file(s) wait, and "
        "go on the first tick after space is freed"
    )
    return taken, note


@AUTOMATION.sensor(
    name="photo_inbox_sensor",
    job=render_web_images_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    description=(
        f"Watches the photo inbox and requests runs for complete new files, {MAX_FILES_PER_RUN} "
        "per run (more under load, up to $WEB_IMAGES_MAX_FILES_PER_RUN, "
        f"{DEFAULT_MAX_FILES_PER_RUN}) and at most {MAX_RUNS_PER_TICK} runs per tick; files "
        "whose run failed are requested again with backoff, and nothing is requested while "
        "the output volume lacks space."
    ),
)
def photo_inbox_sensor(context: dg.SensorEvaluationContext, folders: PhotoFolders):
    max_runs = pacing.allowed_runs(MAX_RUNS_PER_TICK)
    cursor = context.cursor
    book = TableBook(breaker.engine_for(context.instance), folders.root)

    def look_now() -> Look:
        nonlocal cursor
        now = time.time()
        found = look(
            folders,
            cursor,
            now,
            runs=lambda key: run_outcome(context.instance, key, now),
            max_runs=max_runs,
            book=book,
            waiting_runs=waiting_runs(context.instance),
        )
        cursor = found.cursor
        return found

    listened = listening.listen(
        look_now,
        # While runs are in flight the queue sets the pace, and each file they move out would
        # wake the tick for nothing: such a tick looks once.
        has_work=lambda found: bool(found.requests) or found.in_flight > 0,
        stamp=lambda: inbox_stamp(folders),
        window=folders.listen_seconds,
        due_soon=lambda found: found.settling > 0,
        go_on=lambda: AUTOMATION.blocked(context) is None,
    )
    found = listened.look
    sentence = listened.describe(pacing.with_pace(found.sentence, MAX_RUNS_PER_TICK))
    context.update_cursor(found.cursor)
    if not found.requests:
        return dg.SkipReason(sentence)
    context.log.info(sentence)
    return found.requests
