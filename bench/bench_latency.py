"""latency: how long an event takes to reach its result, against a plain Dagster sensor.

Side by side in one run, each on a fresh instance home with its own daemon:
- the baseline: `bench/plain_sensor_location.py`, a plain `@dg.sensor` at Dagster's fastest
  useful interval requesting one run per new file, whose op copies the file, on an instance with
  Dagster's default settings. A file is renamed into its folder; the time runs until the copy
  exists;
- this project (`make run`'s definitions and `dagster.yaml`): a 10 MP camera photo renamed into
  the web_images inbox, until all six renditions exist; a signed GitHub push POSTed to the
  receiver, until its row is in the warehouse.

The events go one at a time, each after a random pause of 0-5 s, so they land at every phase of
the sensor daemon's loop. Where the time goes is read from each run's record: event to run
created (the sensor), created to started (the queue and the launch of the run worker), started
to done (the work). Dagster's own floor is the baseline's first two parts: its sensor daemon looks
every 5 s at most (a constant in Dagster), and the default launcher starts a Python process per
run. BENCH_LATENCY_ROUNDS (default 2) rounds of BENCH_LATENCY_EVENTS (default 5) events each.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.web_images.ops import files_of_run
from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.local_stack import DagsterProcesses, free_port
from automation_pipelines.webhooks.inbox import inbox_table
from automation_pipelines.webhooks.senders import github_headers
from bench.photos import camera_photo
from bench.plain_sensor_location import INBOX_ENV, OUTPUT_ENV
from bench.tables import dagster_machine, load_average, print_columns, verdict

ROUNDS = int(os.environ.get("BENCH_LATENCY_ROUNDS", "2"))
EVENTS = int(os.environ.get("BENCH_LATENCY_EVENTS", "5"))
WORK = Path(__file__).parent / ".data" / "latency"
SECRET = "bench-latency-secret"
PHOTO_SIZE = (3872, 2592)  # a 10 MP camera photo
#: What Dagster's defaults are, for the baseline's instance: nothing set but the noise off.
PLAIN_INSTANCE = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
#: How often a waiting bench looks at the result.
POLL = 0.02


@dataclass
class Sample:
    seconds: float
    sensor: float | None = None  # event -> run created
    launch: float | None = None  # run created -> run started
    work: float | None = None  # run started -> result seen


@dataclass
class Series:
    name: str
    samples: list[Sample] = field(default_factory=list)

    def p50(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    def worst(self) -> float:
        return max(s.seconds for s in self.samples)

    def part(self, name: str) -> str:
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return f"{statistics.median(values):.1f}" if values else "-"


def main() -> None:
    print(describe_machine(), flush=True)
    plain = Series("plain Dagster sensor, file copied (baseline)")
    photos = Series("photo renamed in -> 6 renditions")
    posts = Series("signed POST -> warehouse row")
    shutil.rmtree(WORK, ignore_errors=True)
    try:
        for round_ in range(ROUNDS):
            measure_plain(WORK / f"plain-{round_}", plain)
            measure_project(WORK / f"project-{round_}", photos, posts)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print_report(plain, photos, posts)


def describe_machine() -> str:
    return (
        f"{dagster_machine()}\n"
        f"{ROUNDS} round(s) of {EVENTS} event(s) per figure, each after a random 0-5 s pause"
    )


def settle(rng: random.Random) -> None:
    time.sleep(rng.uniform(0.0, 5.0))


def wait_until(what: str, done: Callable[[], bool], timeout: float = 120.0) -> float:
    """Poll `done`; return the moment it first held."""
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(POLL)
    return time.time()


def parts(instance: dg.DagsterInstance, job: str, key: Callable[[dg.DagsterRun], bool], start, end):
    """(sensor, launch, work) of the run of `job` that `key` picks, from its run record."""
    for record in instance.get_run_records(dg.RunsFilter(job_name=job), limit=50):
        if key(record.dagster_run):
            created = record.create_timestamp.timestamp()
            started = record.start_time
            return (
                created - start,
                (started - created) if started else None,
                (end - started) if started else None,
            )
    return None, None, None


def measure_plain(root: Path, series: Series) -> None:
    inbox, output, staging = root / "inbox", root / "output", root / "staging"
    for folder in (inbox, output, staging):
        folder.mkdir(parents=True)
    processes = DagsterProcesses(
        root,
        "bench.plain_sensor_location",
        env={INBOX_ENV: str(inbox), OUTPUT_ENV: str(output)},
        instance_overrides={"telemetry": {"enabled": False}},
    )
    (processes.home / "dagster.yaml").write_text(PLAIN_INSTANCE)
    source = camera_photo(staging, 0, size=PHOTO_SIZE)
    rng = random.Random(len(series.samples))
    try:
        processes.start_daemon()
        for n in range(EVENTS):
            name = f"file-{n}.jpg"
            shutil.copyfile(source, staging / name)
            settle(rng)
            start = time.time()
            (staging / name).rename(inbox / name)
            end = wait_until(f"the copy of {name}", (output / name).exists)
            sensor, launch, work = parts(
                processes.instance,
                "copy_job",
                lambda run, name=name: run.run_config["ops"]["copy_file"]["config"]["name"] == name,
                start,
                end,
            )
            series.samples.append(Sample(end - start, sensor, launch, work))
            print(f"  {series.name}: {end - start:.2f} s", flush=True)
    finally:
        processes.stop()


def measure_project(root: Path, photos: Series, posts: Series) -> None:
    photos_root, staging = root / "photos", root / "staging"
    (photos_root / "inbox").mkdir(parents=True)
    staging.mkdir(parents=True)
    env = project_env(root)
    processes = DagsterProcesses(root, "automation_pipelines.definitions", env=env)
    source = camera_photo(staging, 0, size=PHOTO_SIZE)
    rng = random.Random(1000 + len(photos.samples))
    try:
        processes.start_daemon()
        port = free_port()
        processes.start_webhooks(port)
        engine = sa.create_engine(f"sqlite:///{processes.home / 'automation_pipelines.db'}")
        for n in range(EVENTS):
            photos.samples.append(drop_photo(processes, source, photos_root, staging, n, rng))
            print(f"  {photos.name}: {photos.samples[-1].seconds:.2f} s", flush=True)
            posts.samples.append(post_event(processes, engine, port, rng))
            print(f"  {posts.name}: {posts.samples[-1].seconds:.2f} s", flush=True)
        engine.dispose()
    finally:
        processes.stop()


def drop_photo(processes, source: Path, root: Path, staging: Path, n: int, rng) -> Sample:
    name = f"photo-{n}.jpg"
    shutil.copyfile(source, staging / name)
    settle(rng)
    start = time.time()
    (staging / name).rename(root / "inbox" / name)
    web = root / "web"
    end = wait_until(
        f"the renditions of {name}",
        lambda: web.is_dir() and len(list(web.glob(f"{name}-*"))) == 6,
    )
    sensor, launch, work = parts(
        processes.instance,
        "render_web_images_job",
        lambda run: name in (files_of_run(processes.instance, run) or []),
        start,
        end,
    )
    return Sample(end - start, sensor, launch, work)


def signed_push(delivery: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a GitHub push delivery signed with the bench's secret."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": hashlib.sha1(delivery.encode()).hexdigest(),
            "repository": {"full_name": "acme/app"},
            "pusher": {"name": "bench"},
            "commits": [],
        }
    ).encode()
    return body, github_headers(body, SECRET, delivery=delivery)


def post_signed(port: int, delivery: str) -> int:
    """POST one signed push to the receiver; its HTTP status."""
    body, headers = signed_push(delivery)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/hooks/github", body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def project_env(root: Path) -> dict[str, str]:
    """The environment of the project's processes in a bench: its own instance and database."""
    return {
        "WEB_IMAGES_ROOT": str(root / "photos"),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "WEBHOOK_REPORTS_DIR": str(root / "reports"),
        # Set but empty: the bench's instance and database, not a user's.
        "AUTOMATION_DB_URL": "",
        "AUTOMATION_INSTANCE_CONFIG": "",
        "DAGSTER_PG_HOST": "",
    }


def post_event(processes, engine: sa.Engine, port: int, rng) -> Sample:
    delivery = str(uuid.uuid4())
    settle(rng)
    start = time.time()
    status = post_signed(port, delivery)
    assert status == 202, status
    query = sa.select(sa.func.count()).where(events_table.c.delivery_id == delivery)

    def loaded() -> bool:
        try:
            with engine.connect() as conn:
                return bool(conn.execute(query).scalar())
        except sa.exc.OperationalError:  # the table is made by the first load
            return False

    end = wait_until(f"the warehouse row of {delivery}", loaded)
    with engine.connect() as conn:
        batch = conn.execute(
            sa.select(inbox_table.c.batch).where(inbox_table.c.delivery_id == delivery)
        ).scalar()
    sensor, launch, work = parts(
        processes.instance,
        "load_webhook_events_job",
        lambda run: run.tags.get("webhook_events/batch") == batch,
        start,
        end,
    )
    return Sample(end - start, sensor, launch, work)


def print_report(plain: Series, photos: Series, posts: Series) -> None:
    rows = []
    for series in (plain, photos, posts):
        rows.append(
            [
                series.name,
                f"{series.p50():.1f}",
                f"{series.worst():.1f}",
                series.part("sensor"),
                series.part("launch"),
                series.part("work"),
            ]
        )
    print_columns(
        ["p50 of each part, seconds", "total", "max", "to run", "run start", "work"], rows
    )
    base = plain.p50()
    photo_ratio = photos.p50() / base
    print()
    print(
        f"photo -> renditions: p50 {photos.p50():.1f} s, {photo_ratio:.2f}x the baseline's "
        f"{base:.1f} s; target <= 6 s and <= 0.5x: "
        f"{verdict(photos.p50() <= 6.0 and photo_ratio <= 0.5)}"
    )
    print(
        f"POST -> warehouse row: p50 {posts.p50():.1f} s ({posts.p50() / base:.2f}x the "
        f"baseline); target <= 5 s: {verdict(posts.p50() <= 5.0)}"
    )
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
