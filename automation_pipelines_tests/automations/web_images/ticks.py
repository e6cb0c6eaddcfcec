"""One look of the photo sensor as a tuple, for tests that follow a cursor from tick to tick."""

from __future__ import annotations

import dagster as dg

from automation_pipelines.automations.web_images import sensors
from automation_pipelines.automations.web_images.book import Book, TableBook, batch_files
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


def batch_of(request: dg.RunRequest, book: Book | None = None) -> tuple[list[str], list[str]]:
    """(files, revisit) of a request of the sensor: as its config lists them, or, for a batch
    named by run key, as `book` holds them (what the op reads)."""
    config = next(iter(request.run_config["ops"].values()))["config"]
    if "batch" not in config:
        return config.get("files", []), config.get("revisit", [])
    assert book is not None, f"{request.run_key} names its batch: give the book it is in"
    if isinstance(book, TableBook):
        return batch_files(book.engine, book.root, config["batch"])
    state = book.load()
    found = []
    for key, area in (("requested", "files"), ("quarantine_requested", "revisit")):
        for rel, asked in state[key].items():
            if asked[3] == config["batch"]:
                found.append((area, asked[1], rel))
    found.sort()
    return (
        [rel for area, _, rel in found if area == "files"],
        [rel for area, _, rel in found if area == "revisit"],
    )
