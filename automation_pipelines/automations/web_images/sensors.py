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

Processed files leave the inbox, so a scan costs what is waiting, not the history. The cursor
remembers, only for files still there, what the last look saw and which run key asked for each.

Environmental failures recover by themselves. A file whose run finished without taking it out of
the inbox (a full disk, an unreadable folder) is requested again under a new run key, with
exponential backoff and jitter counted from that run's end (15-30 s, then 30-60 s, … at most
180 s), unless Dagster is still retrying that run. Before requesting, the sensor checks free
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
from automation_pipelines.automations.web_images.images import IMAGE_SUFFIXES
from automation_pipelines.automations.web_images.jobs import (
    batch_run_config,
    render_web_images_job,
)
from automation_pipelines.automations.web_images.resources import (
    DEFAULT_MAX_FILES_PER_RUN,
    PhotoFolders,
)
from automation_pipelines.reliability import listening, pacing
from automation_pipelines.reliability.files import (
    REASON_SUFFIX,
    changed_since_quarantine,
    is_temporary,
)
from automation_pipelines.reliability.tags import RUN_KEY_TAG, WILL_RETRY_TAG

#: A run's files while the inbox is quiet. Under load runs batch more: a backlog bigger than a
#: tick's runs take at this size is spread over them, up to `PhotoFolders.max_files_per_run`
#: (`DEFAULT_MAX_FILES_PER_RUN`, 100) per run, so a burst costs fewer run starts (each about 3 s
#: of a new process) for the same photos. A trickle still gets a run per photo.
MAX_FILES_PER_RUN = 25
#: Dagster's sensor daemon goes round every 5 s (a constant of its loop) and evaluates a sensor
#: whose interval has passed. An interval of 5 s would be missed by a hair every other round (a
#: 10 s cadence); 1 s makes every round evaluate it, so the cadence is the daemon's 5 s.
SENSOR_INTERVAL_SECONDS = 1
MAX_RUNS_PER_TICK = 4
#: Backoff before a file whose run finished (failed) is requested again: base * 2^attempt,
#: at most the cap, times a jitter in [0.5, 1] fixed per run key.
RE_REQUEST_BASE_SECONDS = 30.0
RE_REQUEST_MAX_SECONDS = 180.0
#: A file whose run cannot be found (deleted) is requested again this long after its request.
REQUEST_AGAIN_AFTER_SECONDS = 2 * AUTOMATION.max_runtime_seconds
_MB = 1_000_000


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


def scan(
    inbox: Path,
    skip: list[Path],
    unreadable: list[str] | None = None,
    notes: ScanNotes | None = None,
) -> Iterator[Entry]:
    """Every file under `inbox` that is not a folder (regular files of any name, symlinks,
    special files), skipping our own folders; folders that cannot be listed are named in
    `unreadable` and looked at again next tick, temp names and the like in `notes`."""
    notes = notes or ScanNotes()
    unreadable = notes.unreadable if unreadable is None else unreadable
    skip_resolved = {p.resolve() for p in skip}
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            unreadable.append(f"{folder} ({exc.strerror or type(exc).__name__})")
            continue
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(inbox).as_posix()
            if not _is_utf8(rel):
                notes.bad_names.append(rel.encode("utf-8", "surrogateescape").decode("latin-1"))
                continue
            if is_temporary(path):
                notes.temporary.append(rel)
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone between the listing and the look
            if stat.S_ISDIR(info.st_mode):
                if path.resolve() not in skip_resolved:
                    stack.append(path)
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        notes.photo_folders.append(f"{rel}/")
                continue
            yield Entry(
                rel, info.st_size, info.st_mtime_ns, min(info.st_mtime_ns, info.st_ctime_ns)
            )


def scan_quarantine(quarantine: Path) -> Iterator[Entry]:
    """Quarantined files that differ from what their note recorded when they were judged."""
    if not quarantine.is_dir():
        return
    for entry in scan(quarantine, []):
        if entry.rel.endswith(REASON_SUFFIX):
            continue
        if changed_since_quarantine(quarantine / entry.rel):
            yield entry


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
    truncated: list[str] = field(default_factory=list)


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
) -> Look:
    """The run requests for this tick (at most `max_runs`: the automation's pace may allow
    fewer than the cap per tick), the new cursor, a sentence for the tick's log and how many
    files are settling."""
    state = json.loads(cursor) if cursor else {}
    notes = ScanNotes()
    inbox = _Area(
        {e.rel: e for e in scan(folders.inbox, folders.own_folders(), notes=notes)},
        state.get("seen", {}),
        state.get("requested", {}),
    )
    changed = _Area(
        {e.rel: e for e in scan_quarantine(folders.quarantine)},
        state.get("quarantine_seen", {}),
        state.get("quarantine_requested", {}),
    )
    outcomes: dict[str, RunOutcome | None] = {}

    def due_at(asked: list) -> float | None:
        """When a requested file may be requested again; None while its run is in progress."""
        requested_at, run_key = asked[2], asked[3] if len(asked) > 3 else None
        attempt = asked[4] if len(asked) > 4 else 0
        if run_key is not None and run_key not in outcomes:
            outcomes[run_key] = runs(run_key)
        outcome = outcomes.get(run_key) if run_key is not None else None
        if outcome is None:
            return requested_at + REQUEST_AGAIN_AFTER_SECONDS
        if not outcome.done:
            return None
        return (outcome.ended_at or requested_at) + re_request_delay(attempt, run_key)

    def sort(area: _Area, waiting_notes: bool) -> None:
        for rel, entry in sorted(area.current.items(), key=lambda item: (item[1].mtime, item[0])):
            quiet = now - entry.written / 1e9 >= folders.quiet_seconds
            seen = area.previous.get(rel)
            if not quiet or (seen is not None and seen != [entry.size, entry.mtime]):
                area.settling += 1
                continue
            asked = area.requested.get(rel)
            attempt, moment = 0, None
            if asked and asked[:2] == [entry.size, entry.mtime]:
                moment = due_at(asked)
                if moment is None:
                    area.waiting += 1
                    area.in_flight += 1
                    continue
                attempt = (asked[4] if len(asked) > 4 else 0) + 1
            note = read_waiting_note(folders, rel) if waiting_notes else None
            if note and [note.get("size"), note.get("mtime_ns")] == [entry.size, entry.mtime]:
                if now < float(note.get("until", 0)):
                    area.truncated.append(_waiting_words(rel, note))
                    continue  # its grace period is over: requested, to be quarantined
            elif moment is not None and now < moment:
                area.waiting += 1
                continue
            area.ready.append((rel, entry.size, entry.mtime, attempt))

    sort(inbox, waiting_notes=True)
    sort(changed, waiting_notes=False)

    per_run = files_per_run(len(inbox.ready), max_runs, folders.max_files_per_run)
    taken, space_note = _fit_free_space(folders, inbox.ready[: per_run * max_runs], per_run)
    left = len(inbox.ready) - len(taken)
    requests = _requests(taken, inbox.requested, "files", "photos", now, per_run)
    room = MAX_FILES_PER_RUN * (max_runs - len(requests))
    requests += _requests(
        changed.ready[:room], changed.requested, "revisit", "revisit", now, MAX_FILES_PER_RUN
    )
    new_cursor = json.dumps(
        {
            "seen": {rel: [e.size, e.mtime] for rel, e in inbox.current.items()},
            "requested": {r: v for r, v in inbox.requested.items() if r in inbox.current},
            "quarantine_seen": {rel: [e.size, e.mtime] for rel, e in changed.current.items()},
            "quarantine_requested": {
                r: v for r, v in changed.requested.items() if r in changed.current
            },
        },
        sort_keys=True,
    )
    sentence = _sentence(folders, inbox, changed, notes, taken, requests, left)
    if space_note:
        sentence = f"{space_note}; {sentence}"
    elif not requests:
        sentence = f"nothing to do: {sentence}"
    return Look(requests, new_cursor, sentence, inbox.settling + changed.settling, inbox.in_flight)


def inbox_stamp(folders: PhotoFolders) -> int | None:
    """Moves when a file is made, renamed in or removed at the top of the inbox (a file in a
    sub-folder is seen at the next tick, or with any file that settles meanwhile)."""
    try:
        return os.stat(folders.inbox).st_mtime_ns
    except OSError:
        return None


def files_per_run(ready: int, runs: int, most: int = DEFAULT_MAX_FILES_PER_RUN) -> int:
    """`MAX_FILES_PER_RUN`, or under load the `ready` files spread over the `runs` a tick may
    request; never more than `most`."""
    if runs < 1:
        return max(1, min(most, MAX_FILES_PER_RUN))
    spread = -(-ready // runs)  # ceiling
    return max(1, min(most, max(MAX_FILES_PER_RUN, spread)))


def _requests(
    taken: list[tuple[str, int, int, int]],
    requested: dict[str, list],
    field_name: str,
    prefix: str,
    now: float,
    per_run: int,
) -> list[dg.RunRequest]:
    requests = []
    for start in range(0, len(taken), per_run):
        batch = taken[start : start + per_run]
        run_key = batch_run_key(batch, prefix)
        config = {field_name: [b[0] for b in batch]}
        requests.append(
            dg.RunRequest(
                run_key=run_key,
                run_config=batch_run_config(config),
                tags={f"web_images/{field_name}": str(len(batch))},
            )
        )
        for rel, size, mtime, attempt in batch:
            requested[rel] = [size, mtime, now, run_key, attempt]
    return requests


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
) -> str:
    parts = [
        f"{len(taken)} file(s) in {len(requests)} run(s)",
        f"{inbox.settling} still being written (written in the last "
        f"{folders.quiet_seconds:.0f} s or since the last look)",
        f"{inbox.waiting} waiting for their run or its retry",
        f"{left} left for the next tick",
    ]
    if inbox.truncated:
        parts.append(
            f"{len(inbox.truncated)} end early and wait for the rest of their upload, else are "
            f"quarantined: {_names(inbox.truncated)}"
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
        f"per run (more under load, up to $WEB_IMAGES_MAX_FILES_PER_RUN, 100) and at most "
        f"{MAX_RUNS_PER_TICK} runs per tick; files whose run "
        "failed are requested again with backoff, and nothing is requested while the output "
        "volume lacks space."
    ),
)
def photo_inbox_sensor(context: dg.SensorEvaluationContext, folders: PhotoFolders):
    max_runs = pacing.allowed_runs(MAX_RUNS_PER_TICK)
    cursor = context.cursor

    def look_now() -> Look:
        nonlocal cursor
        now = time.time()
        found = look(
            folders,
            cursor,
            now,
            runs=lambda key: run_outcome(context.instance, key, now),
            max_runs=max_runs,
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
