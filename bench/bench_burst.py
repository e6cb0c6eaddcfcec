"""burst: a folder of photos dropped at once, through the daemon, against the same rendering in
one process.

Side by side in one run, on the same photos (BENCH_BURST_PHOTOS, default 200, 6 MP camera-like
JPEGs made once and kept in bench/.data/burst):
- the baseline: `render_image` on every photo, one after another, in this process: the work
  itself, with nothing around it (no sensor, no run, no record, no move);
- this project, as `make run` starts it (its definitions and `dagster.yaml`, a fresh instance
  home, the real daemon): every photo renamed into the inbox in one go; the time runs until the
  last original is in processed/ and the manifest lists every photo.

The ratio is the second over the first; the target is at most 1.3x. The report also says how
many runs the burst took and how many of them overlapped another, from the run records.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images.images import ImageSettings, render_image
from automation_pipelines.local_stack import DagsterProcesses
from bench.photos import camera_photos
from bench.tables import dagster_machine, load_average, photo_set

PHOTOS = int(os.environ.get("BENCH_BURST_PHOTOS", "200"))
SIZE = (3000, 2000)  # a 6 MP photo
DATA = Path(__file__).parent / ".data" / "burst"
SOURCES = DATA / "sources-v2"  # bench/photos.py's camera photos
WORK = DATA / "work"
TARGET = 1.3
TIMEOUT = 1800.0


def main() -> None:
    sources = make_sources()
    print(f"{dagster_machine()}\n{photo_set(sources, SIZE)}", flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    try:
        alone = in_one_process(sources, WORK / "alone")
        print(f"  the same rendering in one process: {alone:.1f} s", flush=True)
        through, runs, overlapping = through_the_daemon(sources, WORK / "project")
        print(f"  photos dropped into the inbox -> all published: {through:.1f} s", flush=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    ratio = through / alone
    print()
    print(
        f"{len(sources)}-photo burst: {through:.1f} s end to end in {runs} run(s) "
        f"({overlapping} overlapping another), {alone:.1f} s rendering in one process: "
        f"{ratio:.2f}x; target <= {TARGET}x: {'MET' if ratio <= TARGET else 'NOT MET'}"
    )
    print(f"load average at the end: {load_average()}")


def make_sources() -> list[Path]:
    return camera_photos(SOURCES, PHOTOS, size=SIZE)


def in_one_process(sources: list[Path], out: Path) -> float:
    settings = ImageSettings()
    start = time.perf_counter()
    for source in sources:
        render_image(source, out, Path(source.name), settings)
    return time.perf_counter() - start


def through_the_daemon(
    sources: list[Path],
    root: Path,
    *,
    timeout: float = TIMEOUT,
    poll: float = 0.1,
    env: dict[str, str] | None = None,
    before_daemon: Callable[[DagsterProcesses], None] | None = None,
) -> tuple[float, int, int]:
    """Seconds from the photos renamed into the inbox to the last one published, runs of the
    job, and how many of them overlapped another, through `make run`'s definitions and a
    real daemon (`env` adds settings; `before_daemon` gets the processes once their instance
    home exists, before the daemon starts and the clock runs, to start more on it)."""
    photos_root, staging = root / "photos", root / "staging"
    inbox = photos_root / "inbox"
    inbox.mkdir(parents=True)
    staging.mkdir(parents=True)
    for source in sources:
        shutil.copyfile(source, staging / source.name)
    env = {
        "WEB_IMAGES_ROOT": str(photos_root),
        # Set but empty: the bench's instance and database, not a user's.
        "AUTOMATION_DB_URL": "",
        "AUTOMATION_INSTANCE_CONFIG": "",
        "DAGSTER_PG_HOST": "",
        **(env or {}),
    }
    processes = DagsterProcesses(root, "automation_pipelines.definitions", env=env)
    try:
        if before_daemon is not None:
            processes.instance.get_runs_count()  # its tables made once, before anything else
            before_daemon(processes)
        processes.start_daemon()
        time.sleep(10)  # the daemon's first rounds, so the burst meets a running sensor
        start = time.time()
        for source in sources:
            (staging / source.name).rename(inbox / source.name)
        processed, manifest = photos_root / "processed", photos_root / "web" / "manifest.json"
        deadline = start + timeout
        while not _all_published(processed, manifest, len(sources)):
            if time.time() > deadline:
                raise TimeoutError(f"the photos were not published within {timeout:.0f} s")
            time.sleep(poll)
        elapsed = time.time() - start
        records = processes.instance.get_run_records(
            dg.RunsFilter(job_name="render_web_images_job")
        )
        spans = sorted(
            (r.start_time or 0.0, r.end_time or time.time()) for r in records if r.start_time
        )
        overlapping = sum(
            1 for (a_start, a_end) in spans for (b_start, _) in spans if a_start < b_start < a_end
        )
        return elapsed, len(records), overlapping
    finally:
        processes.stop()


def _all_published(processed: Path, manifest: Path, count: int) -> bool:
    if not processed.is_dir() or sum(1 for _ in processed.iterdir()) < count:
        return False
    try:
        return len(json.loads(manifest.read_bytes())) >= count
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    main()
