"""drain: a backlog of photos waiting in the inbox, drained through the daemon, against the same
rendering in as many processes as the instance lets web_images runs go side by side.

Side by side in one run, on the same photos (BENCH_DRAIN_PHOTOS, default 20,000, small
camera-like JPEGs of BENCH_DRAIN_SIZE, default 640x480, made once and kept in
bench/.data/drain):
- the baseline: `render_image` on every photo in a pool of as many processes as web_images
  runs may go side by side (its declaration's `side_by_side`, which `dagster.yaml`'s queue
  limit matches): the work itself, spread as wide as the instance allows, with nothing around
  it (no sensor, no run, no record, no move);
- this project, as `make run` starts it (its definitions and `dagster.yaml`, a fresh instance
  home, the real daemon, the in-process executor): every photo renamed into the inbox in one
  go; the time runs until the last original is in processed/ and the manifest lists every
  photo.

Figures: photos per second of each, and the ratio of the project's rate to the baseline's;
the target (issue "Scale") is at least 0.8x. The report also says how many runs the backlog
took and how many overlapped another. Everything but the kept sources is removed after.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.images import ImageSettings, render_image
from bench.bench_burst import through_the_daemon
from bench.photos import camera_photos
from bench.tables import dagster_machine, load_average, photo_set, verdict

PHOTOS = int(os.environ.get("BENCH_DRAIN_PHOTOS", "20000"))
SIZE = tuple(int(n) for n in os.environ.get("BENCH_DRAIN_SIZE", "640x480").split("x"))
DATA = Path(__file__).parent / ".data" / "drain"
SOURCES = DATA / f"sources-v1-{SIZE[0]}x{SIZE[1]}"
WORK = DATA / "work"
TARGET = 0.8  # x the baseline's photos per second
PROCESSES = AUTOMATION.side_by_side


def main() -> None:
    sources = camera_photos(SOURCES, PHOTOS, size=SIZE)
    print(
        f"{dagster_machine()}\n{photo_set(sources, SIZE)}; "
        f"web_images runs side by side: {PROCESSES}",
        flush=True,
    )
    shutil.rmtree(WORK, ignore_errors=True)
    try:
        alone = in_processes(sources, WORK / "alone", PROCESSES)
        print(f"  the same rendering in {PROCESSES} processes: {alone:.1f} s", flush=True)
        shutil.rmtree(WORK / "alone", ignore_errors=True)
        through, runs, overlapping = through_the_daemon(
            sources, WORK / "project", timeout=24 * 3600.0, poll=2.0
        )
        print(f"  backlog renamed into the inbox -> all published: {through:.1f} s", flush=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    baseline_rate, rate = len(sources) / alone, len(sources) / through
    ratio = rate / baseline_rate
    print(
        f"\n{len(sources):,}-photo backlog: {rate:.1f} photos/s through the daemon in {runs} "
        f"run(s) ({overlapping} overlapping another), {baseline_rate:.1f} photos/s rendering in "
        f"{PROCESSES} processes: {ratio:.2f}x; target >= {TARGET}x: {verdict(ratio >= TARGET)}"
    )
    print(f"load average at the end: {load_average()}")


def in_processes(sources: list[Path], out: Path, processes: int) -> float:
    """Seconds to render every photo in a pool of `processes` (started before the clock)."""
    out.mkdir(parents=True)
    render = partial(_render, out=out)
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(int, range(processes)))  # the workers are up before the clock starts
        start = time.perf_counter()
        list(pool.map(render, sources, chunksize=16))
        return time.perf_counter() - start


def _render(source: Path, out: Path) -> None:
    render_image(source, out, Path(source.name), ImageSettings())


if __name__ == "__main__":
    main()
