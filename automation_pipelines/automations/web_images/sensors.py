"""The inbox sensor: complete new photos become runs, in capped batches, each file once.

A file is taken only when its size and modification time are the same on two looks (a copy in
progress changes between ticks) and it does not carry a temp name. Processed files leave the
inbox, so a scan costs what is waiting, not the history. The cursor remembers, only for files
still in the inbox, what the last look saw and which run key asked for each file.

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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.images import IMAGE_SUFFIXES
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.files import is_temporary
from automation_pipelines.reliability.tags import RUN_KEY_TAG, WILL_RETRY_TAG

MAX_FILES_PER_RUN = 25
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


def scan(
    inbox: Path, skip: list[Path], unreadable: list[str] | None = None
) -> Iterator[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of candidate files, skipping our own folders; folders
    that cannot be listed are named in `unreadable` and looked at again next tick."""
    skip_resolved = {p.resolve() for p in skip}
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            if unreadable is not None:
                unreadable.append(f"{folder} ({exc.strerror or type(exc).__name__})")
            continue
        for entry in entries:
            path = Path(entry.path)
            if is_temporary(path):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if path.resolve() not in skip_resolved:
                        stack.append(path)
                elif entry.is_file(follow_symlinks=False) and path.suffix.lower() in IMAGE_SUFFIXES:
                    stat = entry.stat(follow_symlinks=False)
                    yield path.relative_to(inbox).as_posix(), stat.st_size, stat.st_mtime_ns
            except FileNotFoundError:
                continue  # gone between the listing and the look


def batch_run_key(batch: list[tuple[str, int, int, int]]) -> str:
    """Deterministic per batch content and attempt: Dagster drops a request whose run key this
    sensor already used, so a re-request needs the attempt in its key."""
    digest = hashlib.sha256(json.dumps(sorted(batch)).encode()).hexdigest()[:24]
    attempt = max(item[3] for item in batch)
    return f"photos-{digest}" + (f"-try{attempt + 1}" if attempt else "")


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def evaluate_inbox(
    folders: PhotoFolders,
    cursor: str | None,
    now: float,
    runs: RunLookup = lambda run_key: None,
) -> tuple[list[dg.RunRequest], str, str]:
    """The run requests for this tick, the new cursor and a sentence for the tick's log."""
    state = json.loads(cursor) if cursor else {}
    previous: dict[str, list[int]] = state.get("seen", {})
    requested: dict[str, list] = state.get("requested", {})
    unreadable: list[str] = []
    current = {
        rel: [size, mtime]
        for rel, size, mtime in scan(folders.inbox, folders.own_folders(), unreadable)
    }
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

    ready: list[tuple[str, int, int, int]] = []
    settling = waiting = 0
    for rel, (size, mtime) in sorted(current.items(), key=lambda item: (item[1][1], item[0])):
        if previous.get(rel) != [size, mtime]:
            settling += 1
            continue
        asked = requested.get(rel)
        attempt = 0
        if asked and asked[:2] == [size, mtime]:
            moment = due_at(asked)
            if moment is None or now < moment:
                waiting += 1
                continue
            attempt = (asked[4] if len(asked) > 4 else 0) + 1
        ready.append((rel, size, mtime, attempt))

    cap = MAX_FILES_PER_RUN * MAX_RUNS_PER_TICK
    taken, space_note = _fit_free_space(folders, ready[:cap])
    left = len(ready) - len(taken)
    requests = []
    for start in range(0, len(taken), MAX_FILES_PER_RUN):
        batch = taken[start : start + MAX_FILES_PER_RUN]
        run_key = batch_run_key(batch)
        requests.append(
            dg.RunRequest(
                run_key=run_key,
                run_config={
                    "ops": {"render_web_images": {"config": {"files": [b[0] for b in batch]}}}
                },
                tags={"web_images/files": str(len(batch))},
            )
        )
        for rel, size, mtime, attempt in batch:
            requested[rel] = [size, mtime, now, run_key, attempt]
    requested = {rel: v for rel, v in requested.items() if rel in current}
    new_cursor = json.dumps({"seen": current, "requested": requested}, sort_keys=True)
    parts = [
        f"{len(taken)} file(s) in {len(requests)} run(s)",
        f"{settling} still being written",
        f"{waiting} waiting for their run or its retry",
        f"{left} left for the next tick",
    ]
    if unreadable:
        parts.append(f"unreadable, looked at again next tick: {', '.join(unreadable)}")
    sentence = "; ".join(parts)
    if space_note:
        sentence = f"{space_note}; {sentence}"
    elif not requests:
        sentence = f"nothing to do: {sentence}"
    return requests, new_cursor, sentence


def _fit_free_space(
    folders: PhotoFolders, ready: list[tuple[str, int, int, int]]
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
    batch = ready[len(taken) : len(taken) + MAX_FILES_PER_RUN]
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
    minimum_interval_seconds=15,
    description=(
        f"Watches the photo inbox and requests runs for complete new files, at most "
        f"{MAX_FILES_PER_RUN} per run and {MAX_RUNS_PER_TICK} runs per tick; files whose run "
        "failed are requested again with backoff, and nothing is requested while the output "
        "volume lacks space."
    ),
)
def photo_inbox_sensor(context: dg.SensorEvaluationContext, folders: PhotoFolders):
    now = time.time()
    requests, cursor, sentence = evaluate_inbox(
        folders, context.cursor, now, runs=lambda key: run_outcome(context.instance, key, now)
    )
    context.update_cursor(cursor)
    if not requests:
        return dg.SkipReason(sentence)
    context.log.info(sentence)
    return requests
