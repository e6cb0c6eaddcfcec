"""trickle: a steady stream of webhook events against the automation's declared run budget.

One signed GitHub push every BENCH_TRICKLE_INTERVAL seconds (default 2) for BENCH_TRICKLE_SECONDS
(default 3600, an hour) to `make run`'s receiver, daemon and definitions on a fresh instance
home. Each event's latency runs from its POST to its row in the warehouse. The figure the
target is about is the most load runs created within any one hour, read from the instance's
run history, against webhook_events' declared `max_runs_per_hour`: a trickle is normal
traffic, and the watchdog calls more than that a runaway loop. A run shorter than an hour also
prints its busiest tenth of an hour against a tenth of the declaration, the pace the sensors
keep within the hour.
"""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.ops import batch_of
from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.local_stack import DagsterProcesses, free_port
from automation_pipelines.reliability.pacing import HOUR, SLICES, most_in_an_hour
from automation_pipelines.reliability.tags import AUTOMATION_TAG
from automation_pipelines.webhooks.inbox import inbox_table
from bench.bench_latency import post_signed, project_env
from bench.tables import load_average, print_columns, verdict

SECONDS = float(os.environ.get("BENCH_TRICKLE_SECONDS", "3600"))
INTERVAL = float(os.environ.get("BENCH_TRICKLE_INTERVAL", "2"))
WORK = Path(__file__).parent / ".data" / "trickle"
LATENCY_TARGET = 5.0
#: How long the last events may take to arrive before the bench gives up on them.
DRAIN = 120.0


def main() -> None:
    declared = AUTOMATION.expect.max_runs_per_hour
    print(
        f"machine: {os.cpu_count()} cores, Dagster {dg.__version__}; load average at start: "
        f"{load_average()}\none event every {INTERVAL:g} s for {SECONDS:.0f} s; "
        f"webhook_events declares max_runs_per_hour={declared}",
        flush=True,
    )
    shutil.rmtree(WORK, ignore_errors=True)
    try:
        latencies, created, parts = trickle(WORK)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print_report(latencies, created, parts, declared)


def trickle(root: Path) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Latencies of the events, when each load run was created, and where each event's time
    went (to its run's creation, to its start, to the row)."""
    (root / "photos" / "inbox").mkdir(parents=True)
    processes = DagsterProcesses(root, "automation_pipelines.definitions", env=project_env(root))
    posted: dict[str, float] = {}
    arrived: dict[str, float] = {}
    lock = threading.Lock()
    try:
        processes.start_daemon()
        port = free_port()
        processes.start_webhooks(port)
        engine = sa.create_engine(f"sqlite:///{processes.home / 'automation_pipelines.db'}")
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(engine, posted, arrived, lock, stop))
        watcher.start()
        try:
            send(port, posted, lock)
            deadline = time.time() + DRAIN
            while time.time() < deadline:
                with lock:
                    if len(arrived) == len(posted):
                        break
                time.sleep(0.5)
        finally:
            stop.set()
            watcher.join()
        records = processes.instance.get_run_records(
            dg.RunsFilter(tags={AUTOMATION_TAG: AUTOMATION.name})
        )
        created = sorted(r.create_timestamp.timestamp() for r in records)
        with engine.connect() as conn:
            query = sa.select(inbox_table.c.delivery_id, inbox_table.c.batch)
            batches = {delivery: batch for delivery, batch in conn.execute(query)}
        engine.dispose()
    finally:
        processes.stop()
    missing = len(posted) - len(arrived)
    if missing:
        raise AssertionError(f"{missing} of {len(posted)} events never reached the warehouse")
    runs = {batch_of(r.dagster_run): r for r in records}
    parts: dict[str, list[float]] = {"to run": [], "run start": [], "work": []}
    joined = 0
    for delivery, sent in posted.items():
        record = runs.get(batches.get(delivery))
        if record is None or record.start_time is None:
            continue
        made = record.create_timestamp.timestamp()
        # An event that came while its run waited to start joined it: its "to run" is negative.
        joined += made < sent
        parts["to run"].append(made - sent)
        parts["run start"].append(record.start_time - made)
        parts["work"].append(arrived[delivery] - record.start_time)
    print(f"{joined} of {len(posted)} events joined a run that was waiting to start", flush=True)
    return [arrived[d] - posted[d] for d in posted], created, parts


def send(port: int, posted: dict[str, float], lock: threading.Lock) -> None:
    """One event every INTERVAL seconds on a fixed timetable, so a slow answer does not slow
    the stream."""
    begin = time.time()
    n = 0
    while (due := begin + n * INTERVAL) < begin + SECONDS:
        time.sleep(max(0.0, due - time.time()))
        delivery = str(uuid.uuid4())
        sent = time.time()
        status = post_signed(port, delivery)
        if status != 202:
            raise AssertionError(f"the receiver answered {status} to event {n}")
        with lock:
            posted[delivery] = sent
        n += 1
        if n % 300 == 0:
            print(f"  {n} events sent, {time.time() - begin:.0f} s", flush=True)


def watch(engine, posted, arrived, lock, stop: threading.Event) -> None:
    """Note when each posted event's warehouse row first shows, looking every 50 ms."""
    while not stop.is_set():
        with lock:
            waiting = [d for d in posted if d not in arrived]
        if waiting:
            query = sa.select(events_table.c.delivery_id).where(
                events_table.c.delivery_id.in_(waiting)
            )
            try:
                with engine.connect() as conn:
                    found = conn.execute(query).scalars().all()
            except sa.exc.OperationalError:  # the table is made by the first load
                found = []
            now = time.time()
            with lock:
                arrived.update((delivery, now) for delivery in found)
        stop.wait(0.05)


def most_in_a_window(moments: list[float], window: float) -> int:
    """The most of `moments` (sorted) within any `window` seconds."""
    return most_in_an_hour([moment * HOUR / window for moment in moments])


def print_report(
    latencies: list[float], created: list[float], parts: dict[str, list[float]], declared: int
) -> None:
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else p50
    hour = most_in_an_hour(created)
    slice_ = most_in_a_window(created, HOUR / SLICES)
    print_columns(
        ["", "figure"],
        [
            ["events", str(len(latencies))],
            ["latency p50, s", f"{p50:.1f}"],
            ["latency p95, s", f"{p95:.1f}"],
            ["latency max, s", f"{max(latencies):.1f}"],
            *(
                [f"p50 {name}, s", f"{statistics.median(values):.1f}"]
                for name, values in parts.items()
                if values
            ),
            ["load runs", str(len(created))],
            ["most runs in any hour", str(hour)],
            [f"most runs in any {HOUR / SLICES / 60:.0f} min", str(slice_)],
        ],
    )
    print()
    span = "an hour" if SECONDS >= HOUR else f"{SECONDS:.0f} s, not a whole hour"
    within = hour <= declared and slice_ <= declared / SLICES
    print(
        f"runs: {hour} in the busiest hour, {slice_} in the busiest tenth of one, against "
        f"max_runs_per_hour={declared} (over {span}); target never exceeded: {verdict(within)}"
    )
    fast = p50 <= LATENCY_TARGET
    print(f"latency: p50 {p50:.1f} s; target <= {LATENCY_TARGET:g} s: {verdict(fast)}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
