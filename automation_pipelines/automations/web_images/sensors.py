"""The inbox sensor: complete new photos become runs, in capped batches, each file once.

A file is taken only when its size and modification time are the same on two looks (a copy in
progress changes between ticks) and it does not carry a temp name. Processed files leave the
inbox, so a scan costs what is waiting, not the history. The cursor remembers what each look saw
and which files were already requested, so a file is requested once; it is requested again only
if it is still in the inbox long after its run should have finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.images import IMAGE_SUFFIXES
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.files import is_temporary

MAX_FILES_PER_RUN = 25
MAX_RUNS_PER_TICK = 4
#: A requested file still in the inbox after this long is requested again (its run failed).
REQUEST_AGAIN_AFTER_SECONDS = 2 * AUTOMATION.max_runtime_seconds


def scan(inbox: Path, skip: list[Path]) -> Iterator[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of candidate files, skipping our own folders."""
    skip_resolved = {p.resolve() for p in skip}
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if is_temporary(path):
                continue
            if entry.is_dir(follow_symlinks=False):
                if path.resolve() not in skip_resolved:
                    stack.append(path)
            elif entry.is_file(follow_symlinks=False) and path.suffix.lower() in IMAGE_SUFFIXES:
                stat = entry.stat(follow_symlinks=False)
                yield path.relative_to(inbox).as_posix(), stat.st_size, stat.st_mtime_ns


def batch_run_key(batch: list[tuple[str, int, int]]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(batch)).encode()).hexdigest()[:24]
    return f"photos-{digest}"


def evaluate_inbox(
    folders: PhotoFolders, cursor: str | None, now: float
) -> tuple[list[dg.RunRequest], str, str]:
    """The run requests for this tick, the new cursor and a sentence for the tick's log."""
    state = json.loads(cursor) if cursor else {}
    previous: dict[str, list[int]] = state.get("seen", {})
    requested: dict[str, list[float]] = state.get("requested", {})
    current = {
        rel: [size, mtime] for rel, size, mtime in scan(folders.inbox, folders.own_folders())
    }

    ready, settling = [], 0
    for rel, (size, mtime) in sorted(current.items(), key=lambda item: (item[1][1], item[0])):
        if previous.get(rel) != [size, mtime]:
            settling += 1
            continue
        asked = requested.get(rel)
        if asked and asked[:2] == [size, mtime] and now - asked[2] < REQUEST_AGAIN_AFTER_SECONDS:
            continue
        ready.append((rel, size, mtime))

    cap = MAX_FILES_PER_RUN * MAX_RUNS_PER_TICK
    taken, left = ready[:cap], len(ready) - min(len(ready), cap)
    requests = []
    for start in range(0, len(taken), MAX_FILES_PER_RUN):
        batch = taken[start : start + MAX_FILES_PER_RUN]
        requests.append(
            dg.RunRequest(
                run_key=batch_run_key(batch),
                run_config={
                    "ops": {"render_web_images": {"config": {"files": [r for r, _, _ in batch]}}}
                },
                tags={"web_images/files": str(len(batch))},
            )
        )
        for rel, size, mtime in batch:
            requested[rel] = [size, mtime, now]
    requested = {rel: v for rel, v in requested.items() if rel in current}
    new_cursor = json.dumps({"seen": current, "requested": requested}, sort_keys=True)
    sentence = (
        f"{sum(len(r.run_config['ops']['render_web_images']['config']['files']) for r in requests)}"
        f" file(s) in {len(requests)} run(s); {settling} still being written; {left} left for "
        "the next tick"
    )
    return requests, new_cursor, sentence


@AUTOMATION.sensor(
    name="photo_inbox_sensor",
    job=render_web_images_job,
    minimum_interval_seconds=15,
    description=(
        f"Watches the photo inbox and requests runs for complete new files, at most "
        f"{MAX_FILES_PER_RUN} per run and {MAX_RUNS_PER_TICK} runs per tick."
    ),
)
def photo_inbox_sensor(context: dg.SensorEvaluationContext, folders: PhotoFolders):
    requests, cursor, sentence = evaluate_inbox(folders, context.cursor, time.time())
    context.update_cursor(cursor)
    if not requests:
        return dg.SkipReason(f"nothing to do: {sentence}")
    context.log.info(sentence)
    return requests
