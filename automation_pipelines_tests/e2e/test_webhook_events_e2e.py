"""Webhook events with the real daemon, the real receiver and the project's code location.

- A load run's worker is killed with SIGKILL mid-batch: every event still reaches the warehouse
  exactly once and nothing is left pending.
- An invalid event is dead-lettered at once; a batch whose runs keep failing (a broken warehouse
  table) is dead-lettered after three runs; both alert the owner at a local HTTP server; after the
  table is repaired, `automation-pipelines events replay --all` loads the events.
- A backfill of the daily report launched through the webserver's GraphQL API (what the UI does)
  gives the same rows and files as computing the partitions one by one.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import psutil
import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.ops import load_batch
from automation_pipelines.automations.webhook_events.report import (
    stored_report,
    webhook_daily_report,
)
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.demo import post_github
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import open_dead_letters
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.webhook_events.events import at, push, seed
from automation_pipelines_tests.e2e.harness import graphql, venv_script, wait_for

pytestmark = pytest.mark.e2e

SECRET = "e2e-github-webhook-secret"


def post_push(base_url: str, delivery: str, payload: dict) -> int:
    return post_github(base_url, SECRET, delivery, "push", payload)


def post_many(base_url: str, items: list[tuple[str, dict]]) -> list[int]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda item: post_push(base_url, *item), items))


def start(
    dagster_processes, tmp_path: Path, json_receiver, database_url=None, daemon=True, **env: str
):
    if database_url:
        env["AUTOMATION_DB_URL"] = database_url
    processes = dagster_processes(
        "automation_pipelines.definitions",
        env={
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "ALERT_URLS": json_receiver.url,
            "WEBHOOK_REPORTS_DIR": str(tmp_path / "reports"),
            "WEB_IMAGES_ROOT": str(tmp_path / "photos"),
            **env,
        },
        instance_overrides={"run_monitoring": {"poll_interval_seconds": 2}},
    )
    if daemon:
        processes.start_daemon()
    base_url = processes.start_webhooks(free_port())
    return processes, base_url, store.engine(database_url or store.database_url(processes.home))


def count(engine: sa.Engine, *where) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(inbox.inbox_table).where(*where)
        return conn.execute(query).scalar()


def half_loaded_batch(engine: sa.Engine) -> tuple[str, str, int] | None:
    """(run id, batch, rows done) of a batch a run has started but not finished, if any."""
    table = inbox.inbox_table
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.batch, table.c.status, table.c.run_id, sa.func.count())
            .where(table.c.batch.is_not(None))
            .group_by(table.c.batch, table.c.status, table.c.run_id)
        ).all()
    by_batch: dict[str, dict] = {}
    for batch, status, run_id, n in rows:
        entry = by_batch.setdefault(batch, {"done": 0, "pending_run": None})
        if status == inbox.DONE:
            entry["done"] += n
        elif status == inbox.PENDING and run_id:
            entry["pending_run"] = run_id
    for batch, entry in by_batch.items():
        if entry["done"] and entry["pending_run"]:
            return entry["pending_run"], batch, entry["done"]
    return None


def run_pids(instance: dg.DagsterInstance, run_id: str) -> set[int]:
    """Processes of a run as its own engine events name them (the run worker, step workers)."""
    pids = set()
    for entry in instance.all_logs(run_id):
        pids.update(int(pid) for pid in re.findall(r"\bpid:? (\d+)", entry.message or ""))
        event = entry.dagster_event
        metadata = getattr(getattr(event, "event_specific_data", None), "metadata", None) or {}
        if "pid" in metadata:
            pids.add(int(metadata["pid"].value))
    return pids


def kill_run_worker(instance: dg.DagsterInstance, run_id: str) -> int:
    """SIGKILL the run's worker and everything it started, at once; return how many died."""
    victims: dict[int, psutil.Process] = {}
    for pid in run_pids(instance, run_id):
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            victims[pid] = process
            victims.update({child.pid: child for child in process.children(recursive=True)})
    for victim in victims.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    return len(victims)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_killed_worker_loses_and_doubles_nothing(
    dagster_processes, tmp_path: Path, json_receiver, database: str, request
) -> None:
    # The inbox and the warehouse on PostgreSQL too (AUTOMATION_DB_URL), as a team runs them.
    url = request.getfixturevalue("events_db_url_postgres") if database == "postgres" else None
    # Everything is stored before the daemon starts, so its first tick makes full batches
    # (2000 events, 400 commits of 5): a kill has a wide window to land mid-batch.
    processes, base_url, engine = start(
        dagster_processes, tmp_path, json_receiver, url, daemon=False, WEBHOOK_LOAD_CHUNK_SIZE="5"
    )
    events = [(f"kill-{i}", push(commits=i % 3)) for i in range(3000)]
    redeliveries = events[::10]
    statuses = post_many(base_url, events + redeliveries)
    assert statuses.count(202) == 3000 and statuses.count(200) == 300
    processes.start_daemon()

    # A batch can still finish between being seen half-done and the kill; then the next
    # half-done batch is taken. One kill must land mid-batch.
    killed_mid_batch = None
    for _ in range(3):
        run_id, batch, done_before = wait_for(
            "a load run half-way through its batch",
            lambda: half_loaded_batch(engine),
            180,
            processes.logs,
            interval=0.005,
        )
        assert kill_run_worker(processes.instance, run_id) >= 1
        time.sleep(1)
        with engine.connect() as conn:
            batch_size = conn.execute(
                sa.select(sa.func.count()).where(inbox.inbox_table.c.batch == batch)
            ).scalar()
        done_at_kill = count(
            engine, inbox.inbox_table.c.batch == batch, inbox.inbox_table.c.status == "done"
        )
        assert 0 < done_before <= done_at_kill <= batch_size
        if done_at_kill < batch_size:
            killed_mid_batch = run_id
            break
    assert killed_mid_batch, "the worker was never killed mid-batch"
    run_id = killed_mid_batch

    wait_for(
        "every event loaded",
        lambda: count(engine, inbox.inbox_table.c.status == "done") == 3000,
        300,
        processes.logs,
    )
    assert count(engine, inbox.inbox_table.c.status != "done") == 0
    with engine.connect() as conn:
        loaded = conn.execute(
            sa.select(events_table.c.delivery_id, events_table.c.load_count)
        ).all()
    assert len(loaded) == 3000
    assert {delivery for delivery, _ in loaded} == {delivery for delivery, _ in events}
    assert all(load_count == 1 for _, load_count in loaded)
    killed = processes.instance.get_run_by_id(run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE


def alert_titles(json_receiver) -> list[str]:
    return [message["title"] for message in json_receiver.received]


@pytest.mark.timeout(600)
def test_dead_letters_alert_and_replay_then_backfill(
    dagster_processes, tmp_path: Path, json_receiver
) -> None:
    processes, base_url, engine = start(dagster_processes, tmp_path, json_receiver)

    # An event that can never be valid is dead-lettered by its run; the others load.
    statuses = post_many(
        base_url,
        [("good-1", push()), ("good-2", push()), ("no-repo", {"ref": "x", "commits": []})],
    )
    assert statuses == [202, 202, 202]
    wait_for(
        "the invalid event's alert",
        lambda: any("failed validation" in t for t in alert_titles(json_receiver)),
        180,
        processes.logs,
    )
    assert count(engine, inbox.inbox_table.c.status == "done") == 2
    [invalid] = json_receiver.received
    assert "no-repo" in invalid["message"] and "repository.full_name" in invalid["message"]

    # The warehouse table is broken under the loader: each run of the batch fails, and after the
    # third the batch is dead-lettered and the owner told.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE wh_github_pushes RENAME COLUMN pusher TO pusher_old"))
    assert post_many(base_url, [(f"late-{i}", push()) for i in range(3)]) == [202] * 3
    wait_for(
        "the dead-letter alert after three failed runs",
        lambda: any("gave up after 3 failed runs" in t for t in alert_titles(json_receiver)),
        300,
        processes.logs,
    )
    late = [row for row in inbox.dead_rows(engine) if row.delivery_id.startswith("late-")]
    assert len(late) == 3
    assert all("failed 3 runs" in row.last_error for row in late)
    assert "pusher" in late[0].last_error

    # Repaired, then replayed from the command line: the events load like new ones.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE wh_github_pushes RENAME COLUMN pusher_old TO pusher"))
    replay = subprocess.run(
        [venv_script("automation-pipelines"), "events", "replay", "--source", "github"],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "4 event(s) re-queued" in replay.stdout  # the 3 late ones and the invalid one
    wait_for(
        "the replayed events loaded",
        lambda: count(engine, inbox.inbox_table.c.status == "done") == 5,
        180,
        processes.logs,
    )
    # The invalid one is still invalid, so it is dead again, with a fresh alert; the rest loaded.
    wait_for(
        "the replayed invalid event dead-lettered again",
        lambda: count(engine, inbox.inbox_table.c.status == "dead") == 1,
        120,
        processes.logs,
    )
    still_open = [row.item for row in open_dead_letters(engine, "webhook_events")]
    assert len(still_open) == 1 and still_open[0].startswith("github/no-repo")

    # A backfill of three past days through GraphQL equals computing them one by one.
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    for index, day in enumerate(days):
        ids = seed(
            engine,
            [("github", f"{day}-{i}", "push", push(commits=i + index)) for i in range(index + 2)],
            received_at=at(day, 10 + index),
        )
        inbox.assign_batch(engine, ids, f"seed-{day}", now=time.time())
        load_batch(engine, f"seed-{day}", "seed", 100)
    web = processes.start_webserver(free_port())
    launched = graphql(
        web,
        """mutation { launchPartitionBackfill(backfillParams: {
              selector: {partitionSetName: "webhook_daily_report_job_partition_set",
                repositorySelector: {repositoryName: "__repository__",
                  repositoryLocationName: "automation_pipelines"}},
              partitionNames: ["2026-03-01", "2026-03-02", "2026-03-03"]}) {
            __typename ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message } ... on PartitionSetNotFoundError { message } } }""",
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    def report_runs_done() -> bool:
        runs = processes.instance.get_runs(
            filters=dg.RunsFilter(job_name="webhook_daily_report_job")
        )
        return len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

    wait_for("the three backfill runs", report_runs_done, 240, processes.logs)
    backfilled_rows = stored_report(engine, days)
    reports = tmp_path / "reports"
    backfilled_files = {p.name: p.read_bytes() for p in sorted(reports.iterdir())}
    assert [row[3] for row in backfilled_rows] == [2, 3, 4]
    assert sorted(backfilled_files) == [f"{day}.csv" for day in days]

    one_by_one = EventWarehouse(
        database_url=store.database_url(processes.home), reports_dir=str(tmp_path / "single")
    )
    for day in days:
        assert dg.materialize(
            [webhook_daily_report],
            partition_key=day,
            resources={"warehouse": one_by_one},
            instance=processes.instance,
        ).success
    assert stored_report(engine, days) == backfilled_rows
    single = {p.name: p.read_bytes() for p in sorted((tmp_path / "single").iterdir())}
    assert single == backfilled_files
