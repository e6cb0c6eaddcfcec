"""One look of the photo sensor as a tuple, for tests that follow a cursor from tick to tick."""

from __future__ import annotations

import dagster as dg

from automation_pipelines.automations.web_images import sensors
from automation_pipelines.automations.web_images.book import Book
from automation_pipelines.automations.web_images.resources import PhotoFolders


def look_once(
    folders: PhotoFolders,
    cursor: str | None,
    now: float,
    runs: sensors.RunLookup = lambda run_key: None,
    max_runs: int = sensors.MAX_RUNS_PER_TICK,
    book: Book | None = None,
    waiting_runs: int = 0,
) -> tuple[list[dg.RunRequest], str, str]:
    """The requests, the new cursor and the sentence of `sensors.look` (its state in the
    cursor, or in `book`)."""
    found = sensors.look(folders, cursor, now, runs, max_runs, book, waiting_runs)
    return found.requests, found.cursor, found.sentence
