"""backlog: what one tick of the photo sensor costs as the inbox backlog grows.

Part 1, in process: the inbox holds 10, 10,000 or 100,000 waiting photos (BENCH_BACKLOG_SIZES),
each a small valid JPEG. `photo_inbox_sensor` is evaluated as the daemon would (its resources,
a real instance, listening off) three times in a row, each with the cursor the one before left:
the first tick requests the first batches, the next ones find them waiting for their runs (no
run is executed in this part). Figures: the median evaluation time and the cursor's size.

Part 2, through the real daemon: `make run`'s definitions on a fresh instance home, the inbox
holding the biggest backlog; the daemon's ticks of the sensor for BENCH_BACKLOG_TICKS ticks
(default 6) while the first runs render. Figure: how much the instance's own tick storage
(the tick records of the sensor in its schedule storage) grows per tick: the mean, and the
largest tick, which the target is held to (a tick that requests runs keeps their requests).

Targets (issue "Scale"): at 100,000 waiting files one evaluation <= 0.5 s, the cursor <= 10 KB,
tick storage growth per tick <= 10 KB. The photos live in bench/.data/backlog, removed after.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

import dagster as dg
from PIL import Image

from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.automations.web_images.sensors import photo_inbox_sensor
from automation_pipelines.local_stack import DagsterProcesses
from bench.bench_latency import project_env
from bench.tables import load_average, print_columns, verdict

SIZES = [int(n) for n in os.environ.get("BENCH_BACKLOG_SIZES", "10,10000,100000").split(",")]
TICKS = int(os.environ.get("BENCH_BACKLOG_TICKS", "6"))
WORK = Path(__file__).parent / ".data" / "backlog"
SENSOR = "photo_inbox_sensor"
EVALUATION_TARGET = 0.5  # seconds
CURSOR_TARGET = 10_000  # bytes
TICK_GROWTH_TARGET = 10_000  # bytes per tick


def main() -> None:
    print(
        f"machine: {os.cpu_count()} cores, Dagster {dg.__version__}; load average at start: "
        f"{load_average()}\nbacklogs of {', '.join(f'{n:,}' for n in SIZES)} waiting photos",
        flush=True,
    )
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    # The in-process sensor's pause switch and breaker live in a database of the bench's own.
    os.environ["AUTOMATION_DB_URL"] = f"sqlite:///{WORK / 'automation_pipelines.db'}"
    try:
        rows = [evaluate(WORK / f"in-process-{n}", n) for n in SIZES]
        growth = daemon_ticks(WORK / "daemon", max(SIZES))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print_report(rows, growth, max(SIZES))


def small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 160, 200)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def fill_inbox(root: Path, count: int) -> PhotoFolders:
    """`count` photos in root/inbox, written a minute ago (quiet at once)."""
    folders = PhotoFolders(root=str(root), listen_seconds=0.0)
    folders.inbox.mkdir(parents=True)
    data = small_jpeg()
    past = time.time() - 60
    for n in range(count):
        path = folders.inbox / f"photo-{n:06d}.jpg"
        path.write_bytes(data)
        os.utime(path, (past, past))
    return folders


def evaluate(root: Path, count: int) -> tuple[int, float, int, int]:
    """(files, median seconds of three evaluations, cursor bytes after the last, run requests
    of the first)."""
    folders = fill_inbox(root / "photos", count)
    seconds, cursor, first_requests = [], None, 0
    with dg.instance_for_test() as instance:
        for n in range(3):
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"folders": folders}
            )
            began = time.perf_counter()
            result = photo_inbox_sensor(context)
            seconds.append(time.perf_counter() - began)
            cursor = context.cursor
            if n == 0:
                first_requests = len(result) if isinstance(result, list) else 0
    size = len((cursor or "").encode())
    print(
        f"  {count:,} files: evaluations {', '.join(f'{s:.3f}' for s in seconds)} s, cursor "
        f"{size:,} bytes, {first_requests} run request(s) at the first",
        flush=True,
    )
    shutil.rmtree(root)
    return count, statistics.median(seconds), size, first_requests


def sensor_ticks(home: Path) -> list[tuple[float, int, int]]:
    """(timestamp, tick record bytes, cursor bytes) of the sensor's ticks, oldest first, read
    from the instance's schedule storage."""
    database = home / "schedules" / "schedules.db"
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT timestamp, tick_body FROM job_ticks ORDER BY id").fetchall()
    ticks = []
    for _, body in rows:
        data = json.loads(body)
        # Dagster stores TickData.instigator_name under its older name, job_name.
        if (data.get("job_name") or data.get("instigator_name")) != SENSOR:
            continue
        if data.get("status", {}).get("__enum__", "") == "TickStatus.STARTED":
            continue  # a tick still being evaluated: its record is not final yet
        ticks.append(
            (data.get("timestamp", 0.0), len(body.encode()), len(data.get("cursor") or ""))
        )
    return ticks


def daemon_ticks(root: Path, count: int) -> tuple[int, float, int, int]:
    """(ticks, mean and largest tick record growth in bytes per tick, the largest cursor in a
    tick) of the daemon's ticks of the sensor with `count` photos waiting."""
    fill_inbox(root / "photos", count)
    processes = DagsterProcesses(root, "automation_pipelines.definitions", env=project_env(root))
    try:
        processes.start_daemon()
        deadline = time.time() + 60 + 10 * TICKS
        while len(sensor_ticks(processes.home)) < TICKS + 1:
            if time.time() > deadline:
                raise TimeoutError(f"fewer than {TICKS + 1} ticks of {SENSOR}:\n{processes.logs()}")
            time.sleep(1)
        ticks = sensor_ticks(processes.home)
        runs = len(processes.instance.get_runs())
    finally:
        processes.stop()
    # The first tick is the one that finds the backlog; the growth is of the ticks after it.
    later = ticks[1 : TICKS + 1]
    growth = statistics.mean(size for _, size, _ in later)
    largest = max(size for _, size, _ in later)
    largest_cursor = max(cursor for _, _, cursor in ticks[: TICKS + 1])
    print(
        f"  daemon, {count:,} files: {len(later)} ticks after the first stored "
        f"{', '.join(f'{size:,}' for _, size, _ in later)} bytes; {runs} run(s) requested",
        flush=True,
    )
    return len(later), growth, largest, largest_cursor


def print_report(rows, growth: tuple[int, float, int, int], biggest: int) -> None:
    print_columns(
        ["waiting photos", "evaluation, s (median of 3)", "cursor, bytes", "runs requested"],
        [[f"{n:,}", f"{s:.3f}", f"{c:,}", str(r)] for n, s, c, r in rows],
    )
    ticks, per_tick, largest, cursor = growth
    print(
        f"\ndaemon ticks with {biggest:,} waiting: {per_tick:,.0f} bytes of tick record per tick "
        f"(mean of {ticks}), the largest {largest:,}; the largest cursor in them {cursor:,} "
        "bytes\n"
    )
    _, seconds, size, _ = next(row for row in rows if row[0] == biggest)
    print(
        f"evaluation at {biggest:,}: {seconds:.3f} s, target <= {EVALUATION_TARGET} s: "
        f"{verdict(seconds <= EVALUATION_TARGET)}"
    )
    print(
        f"cursor at {biggest:,}: {size:,} bytes, target <= {CURSOR_TARGET:,}: "
        f"{verdict(size <= CURSOR_TARGET)}"
    )
    print(
        f"tick storage growth per tick at {biggest:,}: the largest tick {largest:,} bytes (mean "
        f"{per_tick:,.0f}), target <= {TICK_GROWTH_TARGET:,}: "
        f"{verdict(largest <= TICK_GROWTH_TARGET)}"
    )
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
