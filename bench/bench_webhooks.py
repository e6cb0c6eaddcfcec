"""webhooks: the receiver's accepted events per second, and a burst that reaches the warehouse.

Part 1, the receiver alone. `wrk` (C, two threads, 64 keep-alive connections) sends correctly
signed GitHub pushes, each with a delivery id of its own, for a fixed time to one
`automation-pipelines webhooks serve` on a fresh instance home. The receiver shares two CPUs
with wrk (the bench holds itself and what it starts to two when the machine has more; the
PostgreSQL server is not held). An event counts as accepted when its 202 came back, which happens
only after its inbox row was committed; the rows are counted afterwards, and there must be at
least one per 202. The modes take turns for a few rounds and each is shown with the median of
its rounds (events/s and each latency). Side by side:
- the receiver as shipped: its worker processes (`webhooks serve --workers`, 2 by default) on
  one port, handing their events to one inbox writer process, which commits them in groups;
  SQLite WAL, synchronous=FULL;
- the same receiver in one process (`--workers 1`, with its own writer process);
- the receiver committing each event alone (`--max-group 1`), as a hand-written receiver with
  one transaction per request does;
- the receiver as shipped on PostgreSQL (a fresh database on the local server, dropped after);
- the app a person would write by hand (`bench/minimal_receiver.py`: the same server, one SQLite
  transaction per request, WAL, synchronous=FULL, no signature check), and the same app storing
  nothing: the cost of HTTP alone; both in one process, as `uvicorn app:app` runs unless told.
  The app storing nothing is also run in as many processes as the receiver, for comparison;
- what open-source Dagster offers instead: one GraphQL `launchRun` of the load job per event
  against `dagster-webserver`, from 8 client threads. It checks no signature and would load a
  re-delivered event twice; the runs are only queued (no daemon runs in this part).

Part 2, a burst through the real daemon. 10,000 signed POSTs from 32 keep-alive connections:
9,000 events and 1,000 re-deliveries of some of them (same id and body, each sent after its
original was answered), shuffled. The bench waits until the daemon's sensor and load runs have put
every event in `wh_webhook_events`, checks that each arrived exactly once, and reports events per
second from the first POST to the last warehouse row and each event's time from its POST to its
warehouse row.

The payloads are shaped and sized like GitHub's push deliveries (a few KB). The work folder is
bench/.data/webhooks (on the project's disk, so each fsync is a real one) and is removed after.
Sizes: BENCH_WEBHOOKS_SECONDS (load time per receiver run, default 10), BENCH_WEBHOOKS_ROUNDS
(default 2) and BENCH_WEBHOOKS_BURST (events in part 2, default 10,000, a tenth of them
re-deliveries).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psycopg2
import sqlalchemy as sa
import uvicorn

from automation_pipelines.automations.webhook_events.ops import batch_of
from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.instance import DEFAULT_CONFIG, prepare_home
from automation_pipelines.local_stack import (
    DagsterProcesses,
    free_port,
    http_get,
    venv_script,
    wait_for,
)
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines.topology import LOCATION
from automation_pipelines.webhooks.app import DEFAULT_WORKERS
from automation_pipelines.webhooks.inbox import DEAD, PENDING, inbox_table
from automation_pipelines.webhooks.senders import github_signature
from bench.tables import load_average, print_columns

SECONDS = int(os.environ.get("BENCH_WEBHOOKS_SECONDS", "10"))
BURST = int(os.environ.get("BENCH_WEBHOOKS_BURST", "10000"))
REDELIVERED = BURST // 10
WRK_THREADS, WRK_CONNECTIONS = 2, 64
#: Distinct pushes prepared per second of load (wrk sends them again under new delivery ids).
REQUESTS_PER_SECOND_PREPARED = 6000
ROUNDS = int(os.environ.get("BENCH_WEBHOOKS_ROUNDS", "2"))
BURST_CONNECTIONS = 32
LAUNCH_THREADS, LAUNCHES = 8, 200
CPUS = 2
TARGET_EVENTS_PER_SECOND = 1500
BURST_DEADLINE_SECONDS = 600
SECRET = "bench-github-webhook-secret"
POSTGRES_URL = os.environ.get("AP_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"
MODULE = "automation_pipelines.definitions"
LOAD_JOB = "load_webhook_events_job"
WORK = Path(__file__).parent / ".data" / "webhooks"
#: The API links a GitHub repository object carries (`<name>_url`), which make up much of a push.
REPOSITORY_LINKS = (
    *("assignees", "branches", "blobs", "collaborators", "comments", "commits", "compare"),
    *("contents", "contributors", "deployments", "downloads", "events", "forks", "git_commits"),
    *("git_refs", "git_tags", "hooks", "issue_comment", "issue_events", "issues", "keys"),
    *("labels", "languages", "merges", "milestones", "notifications", "pulls", "releases"),
    *("stargazers", "statuses", "subscribers", "tags", "trees"),
)

SHIPPED, ONE_PROCESS, ALONE, POSTGRES, LAUNCH_RUN, MINIMAL_SQLITE, MINIMAL_NONE, MINIMAL_NONE_2 = (
    f"receiver as shipped ({DEFAULT_WORKERS} processes, group commit, SQLite)",
    "receiver, 1 process (group commit, SQLite)",
    "receiver, one commit per event",
    "receiver as shipped on PostgreSQL",
    "Dagster launchRun per event",
    "minimal app, one SQLite commit per request",
    "minimal app, storing nothing",
    f"minimal app, storing nothing, {DEFAULT_WORKERS} processes",
)
#: The receiver as shipped against the minimal apps (`bench/minimal_receiver.py`).
TARGET_VS_ONE_COMMIT = 2.0
TARGET_VS_NOTHING = 0.5

#: wrk's script: each thread takes every n-th prepared push and sends them in turn; each time it
#: starts over, the deliveries get ids of their own (the id plus the round, in a header GitHub
#: does not sign), so every request is a new event however fast the receiver is. done() counts
#: the answers by status and prints one JSON line for the bench to read.
WRK_SCRIPT = r"""
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  accepted, duplicate, other = 0, 0, 0
  local every, host, line_number = tonumber(args[2]), args[3], 0
  heads, ids, tails, position, round = {}, {}, {}, 0, 0
  for line in io.lines(args[1]) do
    if line_number % every == index then
      local id, signature, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
      heads[#heads + 1] = "POST /hooks/github HTTP/1.1\r\nHost: " .. host
        .. "\r\nContent-Type: application/json\r\nX-Hub-Signature-256: " .. signature
        .. "\r\nX-GitHub-Event: push\r\nContent-Length: " .. #body
        .. "\r\nX-GitHub-Delivery: "
      ids[#ids + 1] = id
      tails[#tails + 1] = "\r\n\r\n" .. body
    end
    line_number = line_number + 1
  end
end

function request()
  position = position + 1
  if position > #heads then
    position, round = 1, round + 1
  end
  return heads[position] .. ids[position] .. "-" .. round .. tails[position]
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  elseif status == 200 then
    duplicate = duplicate + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local accepted_all, duplicate_all, other_all = 0, 0, 0
  for _, thread in ipairs(threads) do
    accepted_all = accepted_all + thread:get("accepted")
    duplicate_all = duplicate_all + thread:get("duplicate")
    other_all = other_all + thread:get("other")
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"accepted": %d, "duplicate": %d, "other": %d, "socket_errors": %d, '
      .. '"seconds": %.6f, "p50": %.3f, "p95": %.3f, "p99": %.3f}\n',
    accepted_all, duplicate_all, other_all,
    errors.connect + errors.read + errors.write + errors.timeout,
    summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def main() -> None:
    started = time.perf_counter()
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not on PATH: `make bench` installs it")
    print(describe_machine(wrk), flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        results, every = measure_receivers(wrk)
        print_table(results)
        ok = print_receiver_checks(results, every)
        ok = run_burst(WORK / "burst", launch_rate(results)) and ok
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    took = time.perf_counter() - started
    print(f"(whole benchmark: {took:.0f} s; load average at the end: {load_average()})")
    if not ok:
        raise SystemExit(1)


@dataclass
class Result:
    mode: str
    events_per_second: float | None = None
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    accepted: int = 0
    rejected: int = 0
    rows: int | None = None
    note: str = ""
    run: int = 1


# ---------------------------------------------------------------- the events


def push_payload(number: int, rng: random.Random) -> dict:
    """A push with the fields the warehouse reads plus the repository, sender and commit details
    a real GitHub delivery carries, so signing, parsing and storing cost what they would."""
    api = "https://api.github.com/repos/acme/app"
    repository = {
        "id": 420_000_001,
        "node_id": "R_kgDOGabc01",
        "name": "app",
        "full_name": "acme/app",
        "private": True,
        "owner": {"name": "acme", "login": "acme", "id": 9_100_001, "type": "Organization"},
        "html_url": "https://github.com/acme/app",
        "description": "The acme customer application",
        "fork": False,
        "url": api,
        **{f"{name}_url": f"{api}/{name}{{/number}}" for name in REPOSITORY_LINKS},
        "created_at": 1_650_000_000,
        "pushed_at": 1_760_000_000 + number,
        "size": 18_230,
        "language": "Python",
        "default_branch": "main",
        "master_branch": "main",
    }
    commits = []
    for index in range(rng.randint(1, 3)):
        sha = hashlib.sha1(f"{number}-{index}".encode()).hexdigest()
        author = {"name": "Dev Eloper", "email": "dev@acme.example", "username": "developer"}
        commits.append(
            {
                "id": sha,
                "tree_id": hashlib.sha1(sha.encode()).hexdigest(),
                "distinct": True,
                "message": f"Fix the report totals for accounts in region {number % 17}",
                "timestamp": "2026-03-01T12:00:00+00:00",
                "url": f"https://github.com/acme/app/commit/{sha}",
                "author": author,
                "committer": author,
                "added": [],
                "removed": [],
                "modified": [f"app/reports/module_{number % 40}.py", "tests/test_reports.py"],
            }
        )
    return {
        "ref": "refs/heads/main",
        "before": hashlib.sha1(f"{number}-before".encode()).hexdigest(),
        "after": commits[-1]["id"],
        "repository": repository,
        "pusher": {"name": "developer", "email": "dev@acme.example"},
        "sender": {"login": "developer", "id": 5_500_001, "type": "User"},
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": f"https://github.com/acme/app/compare/{commits[0]['id'][:12]}...",
        "commits": commits,
        "head_commit": commits[-1],
    }


def event_bodies(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(delivery id, body) for `count` distinct pushes."""
    rng = random.Random(seed)
    return [
        (str(uuid.UUID(int=rng.getrandbits(128), version=4)), compact(push_payload(n, rng)))
        for n in range(count)
    ]


def compact(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# ---------------------------------------------------------------- part 1: the receiver alone


def measure_receivers(wrk: str) -> tuple[list[Result], list[Result]]:
    """(the median of each mode and the launchRun row, every receiver run)."""
    count = max(SECONDS, 1) * REQUESTS_PER_SECOND_PREPARED
    events = event_bodies(count, seed=1)
    requests = WORK / "requests.tsv"
    with requests.open("w") as handle:
        for delivery, body in events:
            handle.write(f"{delivery}\t{github_signature(body, SECRET)}\t{body.decode()}\n")
        handle.flush()
        os.fsync(handle.fileno())  # its writeback must not compete with the receivers' fsyncs
    script = WORK / "post_signed.lua"
    script.write_text(WRK_SCRIPT)
    mean_kb = sum(len(body) for _, body in events) / len(events) / 1000
    count = len(events)
    del events
    print(
        f"part 1: {count:,} distinct signed pushes prepared ({mean_kb:.1f} KB each on "
        f"average); wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{SECONDS}s per receiver mode, "
        f"median of {ROUNDS} rounds",
        flush=True,
    )
    base = clean_environment()
    every: list[Result] = []
    with held_to_cpus(CPUS):
        for number in range(1, ROUNDS + 1):
            load = (wrk, script, requests)
            every.append(load_receiver(*load, SHIPPED, base, run=number))
            every.append(load_receiver(*load, ONE_PROCESS, base, "--workers", "1", run=number))
            every.append(load_receiver(*load, ALONE, base, "--max-group", "1", run=number))
            every.append(load_receiver(*load, MINIMAL_SQLITE, base, minimal="sqlite", run=number))
            every.append(load_receiver(*load, MINIMAL_NONE, base, minimal="none", run=number))
            workers = ("--workers", str(DEFAULT_WORKERS))
            every.append(
                load_receiver(*load, MINIMAL_NONE_2, base, *workers, minimal="none", run=number)
            )
            with postgres_database() as url:  # a fresh database each round
                if url is None:
                    continue
                env = {**base, "AUTOMATION_DB_URL": url}
                every.append(load_receiver(*load, POSTGRES, env, database=url, run=number))
        medians = []
        for mode in (
            SHIPPED,
            ONE_PROCESS,
            ALONE,
            POSTGRES,
            MINIMAL_SQLITE,
            MINIMAL_NONE,
            MINIMAL_NONE_2,
        ):
            runs = [r for r in every if r.mode == mode]
            if runs:
                medians.append(median_result(mode, runs))
            else:
                medians.append(Result(POSTGRES, note=f"skipped: {POSTGRES_URL} is unreachable"))
        medians.append(launch_runs(base))
    return medians, every


def median_result(mode: str, runs: list[Result]) -> Result:
    """One row for a mode: the median of its rounds, figure by figure."""
    return Result(
        mode,
        statistics.median(r.events_per_second or 0 for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p95_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
    )


def clean_environment() -> dict[str, str]:
    """This process's environment without any database or instance settings of the user's, so
    every mode starts on the database the bench chose, with the bench's secret."""
    dropped = {"AUTOMATION_DB_URL", "AUTOMATION_INSTANCE_CONFIG", "DAGSTER_HOME"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith("DAGSTER_PG_")
    }
    env["GITHUB_WEBHOOK_SECRET"] = SECRET
    return env


@contextmanager
def held_to_cpus(count: int) -> Iterator[None]:
    """Run this process, and every process it starts meanwhile, on `count` CPUs."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:count])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh database on the local PostgreSQL server as a SQLAlchemy URL (None when the
    server cannot be reached), dropped afterwards."""
    try:
        admin = psycopg2.connect(POSTGRES_URL, connect_timeout=3)
    except psycopg2.OperationalError:
        yield None
        return
    name = f"bench_webhooks_{uuid.uuid4().hex[:12]}"
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg2", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def receiver(
    root: Path, env: dict[str, str], *options: str, minimal: str | None = None
) -> Iterator[tuple[str, Path]]:
    """One `webhooks serve` process on a fresh instance home (or, with `minimal`, the minimal
    app storing in `<home>/minimal.db` or nothing): (its URL, the home)."""
    root.mkdir(parents=True)
    home = prepare_home(root / "dagster_home", DEFAULT_CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [venv_script("automation-pipelines"), "webhooks", "serve", "--host", "127.0.0.1"]
    if minimal is not None:
        app = Path(__file__).with_name("minimal_receiver.py")
        argv = [venv_script("python"), str(app), "--store", minimal]
        options = ("--db", str(home / "minimal.db"), *options)
    log = root / "webhooks.log"
    with ProcessGroup() as group:
        with log.open("wb") as handle:
            group.start(
                [*argv, "--port", str(port), *options],
                env={**env, "DAGSTER_HOME": str(home)},
                cwd=root,
                stdout=handle,
                stderr=handle,
            )
        wait_for(
            "the webhook receiver",
            lambda: (http_get(f"{url}/healthz") or (0, b""))[0] == 200,
            60,
            lambda: log.read_text(errors="replace")[-4000:],
        )
        yield url, home


def load_receiver(
    wrk: str,
    script: Path,
    requests: Path,
    mode: str,
    env: dict[str, str],
    *options: str,
    database: str | None = None,
    minimal: str | None = None,
    run: int,
) -> Result:
    root = WORK / f"{slug(mode)}-{run}"
    with receiver(root, env, *options, minimal=minimal) as (url, home):
        host = url.removeprefix("http://")
        command = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{SECONDS}s"]
        command += ["--timeout", "10s", "-s", str(script), url, "--"]
        command += [str(requests), str(WRK_THREADS), host]
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=SECONDS + 120, check=True
        )
        line = next((x for x in finished.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
        if line is None:
            raise SystemExit(f"wrk printed no result:\n{finished.stdout}\n{finished.stderr}")
        got = json.loads(line.removeprefix("WRK_RESULT "))
        if minimal == "none":
            rows = got["accepted"]  # nothing is stored: nothing to check
        elif minimal == "sqlite":
            rows = settled_count(f"sqlite:///{home / 'minimal.db'}", "events")
        else:
            rows = settled_count(database or f"sqlite:///{home / 'automation_pipelines.db'}")
    result = Result(
        mode,
        got["accepted"] / got["seconds"],
        got["p50"],
        got["p95"],
        got["p99"],
        accepted=got["accepted"],
        rejected=got["other"] + got["socket_errors"],
        rows=rows,
        run=run,
    )
    print(
        f"  {run}. {mode}: {result.events_per_second:,.0f} accepted events/s, "
        f"{got['accepted']:,} x 202, {got['duplicate']} x 200, {got['other']} other statuses, "
        f"{got['socket_errors']} socket errors; {rows:,} inbox rows",
        flush=True,
    )
    return result


def settled_count(url: str, table: str | None = None) -> int:
    """Inbox rows (or rows of `table`) once the receiver has committed what was in flight when
    wrk stopped."""
    engine = sa.create_engine(url)
    try:
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 1.0:
            with engine.connect() as conn:
                counted = sa.table(table) if table else inbox_table
                rows = conn.execute(sa.select(sa.func.count()).select_from(counted)).scalar()
            if rows != last:
                last, stable_since = rows, time.monotonic()
            time.sleep(0.2)
        return last
    finally:
        engine.dispose()


def launch_runs(env: dict[str, str]) -> Result:
    """One `launchRun` per event through dagster-webserver's GraphQL API, as a user without a
    receiver of their own would trigger the load job from a webhook."""
    root = WORK / slug(LAUNCH_RUN)
    root.mkdir(parents=True)
    processes = DagsterProcesses(root, MODULE, env=burst_environment(env, root))
    try:
        base_url = processes.start_webserver(free_port())
        host, port = base_url.removeprefix("http://").split(":")
        local = threading.local()

        def launch(number: int) -> tuple[float, bool]:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection(host, int(port), timeout=60)
            body = json.dumps({"query": LAUNCH_RUN_MUTATION, "variables": launch_params(number)})
            began = time.perf_counter()
            local.conn.request("POST", "/graphql", body, {"Content-Type": "application/json"})
            answer = json.loads(local.conn.getresponse().read())
            kind = answer.get("data", {}).get("launchRun", {}).get("__typename")
            return time.perf_counter() - began, kind == "LaunchRunSuccess"

        began = time.perf_counter()
        with ThreadPoolExecutor(LAUNCH_THREADS) as pool:
            outcomes = list(pool.map(launch, range(LAUNCHES)))
        seconds = time.perf_counter() - began
        queued = processes.instance.get_runs_count(dg.RunsFilter(job_name=LOAD_JOB))
    finally:
        processes.stop()
    latencies = [latency * 1000 for latency, _ in outcomes]
    accepted = sum(ok for _, ok in outcomes)
    print(
        f"  {LAUNCH_RUN}: {accepted / seconds:,.1f} launches/s, {accepted} of {LAUNCHES} "
        f"launched ({LAUNCH_THREADS} client threads), {queued} runs queued",
        flush=True,
    )
    return Result(
        LAUNCH_RUN,
        accepted / seconds,
        *percentiles(latencies, 50, 95, 99),
        accepted=accepted,
        rejected=LAUNCHES - accepted,
        rows=queued,
        note="no signature check, no idempotency",
    )


LAUNCH_RUN_MUTATION = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def launch_params(number: int) -> dict:
    return {
        "params": {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": LOAD_JOB,
            },
            "runConfigData": {"ops": {"load_events": {"config": {"batch": f"bench-{number}"}}}},
        }
    }


def launch_rate(results: list[Result]) -> float | None:
    return next((r.events_per_second for r in results if r.mode == LAUNCH_RUN), None)


# ---------------------------------------------------------------- part 2: the burst


@dataclass
class Delivery:
    delivery_id: str
    request: bytes
    redelivery: bool
    status: int = 0
    sent_at: float = 0.0
    answered_at: float = 0.0


@dataclass
class BurstChecks:
    lines: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.lines.append((ok, text))

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.lines)


def burst_environment(base: dict[str, str], root: Path) -> dict[str, str]:
    return {
        **base,
        "WEBHOOK_REPORTS_DIR": str(root / "reports"),
        "WEB_IMAGES_ROOT": str(root / "photos"),
        # Set but empty: DagsterProcesses adds this process's environment back.
        "AUTOMATION_DB_URL": "",
        "AUTOMATION_INSTANCE_CONFIG": "",
        "DAGSTER_PG_HOST": "",
    }


def burst_plan(port: int) -> list[Delivery]:
    """The events, then re-deliveries of a random tenth of them, each placed at a random point
    after its original."""
    unique = BURST - REDELIVERED
    rng = random.Random(2)
    originals = []
    for delivery, body in event_bodies(unique, seed=3):
        head = (
            f"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Hub-Signature-256: {github_signature(body, SECRET)}\r\n"
            f"X-GitHub-Delivery: {delivery}\r\n"
            "X-GitHub-Event: push\r\n\r\n"
        )
        originals.append(Delivery(delivery, head.encode() + body, redelivery=False))
    keyed = [(rng.random(), d) for d in originals]
    for position, original in rng.sample(list(enumerate(originals)), REDELIVERED):
        after = keyed[position][0]
        again = Delivery(original.delivery_id, original.request, redelivery=True)
        keyed.append((after + (1 - after) * rng.random(), again))
    return [d for _, d in sorted(keyed, key=lambda pair: pair[0])]


async def send_all(port: int, plan: list[Delivery]) -> None:
    """POST the plan over keep-alive connections; a re-delivery waits for its original's
    answer, as a sender retrying after a lost answer would."""
    answered = {d.delivery_id: asyncio.Event() for d in plan if not d.redelivery}
    pending = iter(plan)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for delivery in pending:
                if delivery.redelivery:
                    await answered[delivery.delivery_id].wait()
                delivery.sent_at = time.time()
                writer.write(delivery.request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                delivery.status = int(lines[0].split()[1])
                length = next(
                    int(line.split(":", 1)[1])
                    for line in lines
                    if line.lower().startswith("content-length:")
                )
                await reader.readexactly(length)
                delivery.answered_at = time.time()
                if not delivery.redelivery:
                    answered[delivery.delivery_id].set()
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(BURST_CONNECTIONS)))


def run_burst(root: Path, launches_per_second: float | None) -> bool:
    unique = BURST - REDELIVERED
    print(
        f"\npart 2: {BURST:,} signed POSTs ({unique:,} events + {REDELIVERED:,} re-deliveries, "
        f"shuffled) from {BURST_CONNECTIONS} connections, with the real daemon",
        flush=True,
    )
    root.mkdir(parents=True)
    processes = DagsterProcesses(root, MODULE, env=burst_environment(clean_environment(), root))
    checks = BurstChecks()
    try:
        processes.start_daemon()
        port = free_port()
        processes.start_webhooks(port)
        database = f"sqlite:///{processes.home / 'automation_pipelines.db'}"
        plan = burst_plan(port)
        posting = time.perf_counter()
        asyncio.run(send_all(port, plan))
        posting = time.perf_counter() - posting
        print(f"  sent in {posting:.1f} s ({BURST / posting:,.0f} POSTs/s answered)", flush=True)
        engine = sa.create_engine(database)
        try:
            loaded, pending = wait_until_loaded(engine, unique)
            runs = finished_runs(processes.instance, timeout=120 if loaded else 0)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(
                        events_table.c.delivery_id,
                        events_table.c.loaded_at,
                        events_table.c.load_count,
                    )
                ).all()
                dead = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(inbox_table)
                    .where(inbox_table.c.status == DEAD)
                ).scalar()
        finally:
            engine.dispose()
    finally:
        processes.stop()

    originals = {d.delivery_id: d for d in plan if not d.redelivery}
    statuses = [d.status for d in plan]
    ids = {delivery for delivery, _, _ in rows}
    checks.check(
        statuses.count(202) == unique, f"{statuses.count(202):,} x 202 for {unique:,} events"
    )
    checks.check(
        statuses.count(200) == REDELIVERED,
        f"{statuses.count(200):,} x 200 duplicate for {REDELIVERED:,} re-deliveries",
    )
    checks.check(len(rows) == unique, f"{len(rows):,} warehouse rows for {unique:,} events")
    checks.check(ids == set(originals), f"{len(ids):,} distinct delivery ids, each one sent")
    twice = sum(1 for _, _, count in rows if count != 1)
    checks.check(twice == 0, f"{twice} rows loaded more than once (load_count != 1)")
    checks.check(dead == 0 and pending == 0, f"{dead} dead and {pending} pending inbox rows left")
    for ok, text in checks.lines:
        print(f"  {'PASS' if ok else 'FAIL'}: {text}")

    if rows and loaded:
        first_post = min(d.sent_at for d in originals.values())
        last_row = max(loaded_at for _, loaded_at, _ in rows)
        from_post = [loaded_at - originals[d].sent_at for d, loaded_at, _ in rows if d in originals]
        from_answer = [
            loaded_at - originals[d].answered_at for d, loaded_at, _ in rows if d in originals
        ]
        post_p50, post_p95 = percentiles(from_post, 50, 95)
        answer_p50, answer_p95 = percentiles(from_answer, 50, 95)
        print(
            f"  end to end: {len(rows) / (last_row - first_post):,.0f} events/s "
            f"({len(rows):,} events from the first POST to the last warehouse row, "
            f"{last_row - first_post:.1f} s)"
        )
        print(f"  POST -> warehouse row: p50 {post_p50:.1f} s, p95 {post_p95:.1f} s")
        print(f"  202 answer -> warehouse row: p50 {answer_p50:.1f} s, p95 {answer_p95:.1f} s")
        succeeded = sum(1 for r in runs if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS)
        print(
            f"  {len(runs)} run(s) of {LOAD_JOB}, {succeeded} succeeded; the sensor ticks every "
            "5 s and asks for up to 2,000 events per run"
        )
        print("  " + describe_runs(runs, first_post))
        if launches_per_second:
            print(
                f"  one launchRun per event instead: {unique:,} launches at the "
                f"{launches_per_second:,.1f}/s measured in part 1 take "
                f"{unique / launches_per_second:,.0f} s only to queue {unique:,} runs"
            )
    print()
    return checks.passed


def wait_until_loaded(engine: sa.Engine, unique: int) -> tuple[bool, int]:
    """Wait until every event is in the warehouse and no inbox row is pending: (done, pending)."""
    deadline = time.monotonic() + BURST_DEADLINE_SECONDS
    while True:
        with engine.connect() as conn:
            loaded = conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar()
            pending = conn.execute(
                sa.select(sa.func.count())
                .select_from(inbox_table)
                .where(inbox_table.c.status == PENDING)
            ).scalar()
        if loaded >= unique and pending == 0:
            return True, pending
        if time.monotonic() > deadline:
            print(f"  gave up after {BURST_DEADLINE_SECONDS} s: {loaded:,} rows, {pending} pending")
            return False, pending
        time.sleep(0.5)


def finished_runs(instance: dg.DagsterInstance, timeout: float) -> list[dg.RunRecord]:
    """The load runs, oldest first, once none is still going (the last rows commit before
    its run ends)."""
    finished = {
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    }
    deadline = time.monotonic() + timeout
    while True:
        runs = instance.get_run_records(filters=dg.RunsFilter(job_name=LOAD_JOB), ascending=True)
        if all(r.dagster_run.status in finished for r in runs) or time.monotonic() > deadline:
            return list(runs)
        time.sleep(0.5)


def describe_runs(runs: list[dg.RunRecord], first_post: float) -> str:
    """Each load run as `batch: requested +s, started +s, ended +s` after the first POST."""
    parts = []
    for record in runs:
        batch = batch_of(record.dagster_run) or "?"
        times = [record.create_timestamp.timestamp(), record.start_time, record.end_time]
        parts.append(
            f"batch {batch}: "
            + ", ".join(
                f"{what} +{moment - first_post:.1f}"
                for what, moment in zip(("requested", "started", "ended"), times, strict=True)
                if moment
            )
        )
    return "runs (s after the first POST): " + "; ".join(parts)


# ---------------------------------------------------------------- reporting


def percentiles(values: list[float], *which: int) -> list[float]:
    if len(values) < 2:
        return [values[0] if values else float("nan")] * len(which)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [cuts[p - 1] for p in which]


def describe_machine(wrk: str) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    held = min(CPUS, len(os.sched_getaffinity(0)))
    return "\n".join(
        [
            f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; "
            f"part 1 held to {held} CPUs",
            f"receiver: uvicorn {uvicorn.__version__} (uvloop, httptools), SQLAlchemy "
            f"{sa.__version__}, SQLite {sqlite_version()}; Dagster {dg.__version__}",
            f"load: {(version.stdout or version.stderr).splitlines()[0].split(' [')[0]}",
            f"load average at start: {load_average()}",
        ]
    )


def sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def print_table(results: list[Result]) -> None:
    alone = next(r for r in results if r.mode == MINIMAL_SQLITE)
    launch = next(r for r in results if r.mode == LAUNCH_RUN)

    def ratio(result: Result, base: Result) -> str:
        if not result.events_per_second or not base.events_per_second:
            return "-"
        return f"{result.events_per_second / base.events_per_second:.2f}x"

    header = ("mode", "events/s", "p50 ms", "p95 ms", "p99 ms", "vs minimal app", "vs launchRun")
    rows = [
        (
            r.mode,
            f"{r.events_per_second:,.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p95_ms:.1f}",
            f"{r.p99_ms:.1f}",
            ratio(r, alone),
            ratio(r, launch),
        )
        if r.events_per_second
        else (r.mode, r.note, "-", "-", "-", "-", "-")
        for r in results
    ]
    print_columns(header, rows)
    print(
        "\nevents/s: 202 answers per second of load, each sent only after its inbox commit; "
        "latency as wrk\nmeasures it. launchRun: launches per second and latency per launch; it "
        "checks no signature,\nloads a re-delivered event twice and only queues a run.\n"
    )


def print_receiver_checks(results: list[Result], every: list[Result]) -> bool:
    """In every run, each 202 has its inbox row (a few more rows are fine: requests in flight
    when wrk stopped) and nothing was refused; then the shipped receiver against the target."""
    ok = True
    for r in every:
        durable = r.accepted <= (r.rows or 0) <= r.accepted + WRK_CONNECTIONS and r.rejected == 0
        ok = ok and durable
        print(
            f"{'PASS' if durable else 'FAIL'}: {r.run}. {r.mode}: {r.rows:,} inbox rows for "
            f"{r.accepted:,} accepted events, {r.rejected} other answers or errors"
        )
    shipped = next(r for r in results if r.mode == SHIPPED)
    rate = shipped.events_per_second or 0
    met = rate >= TARGET_EVENTS_PER_SECOND
    print(
        f"target: >= {TARGET_EVENTS_PER_SECOND:,} accepted events/s with durable commit on "
        f"{CPUS} cores: {'MET' if met else 'NOT MET'} ({rate:,.0f}/s)"
    )
    for mode, target in ((MINIMAL_SQLITE, TARGET_VS_ONE_COMMIT), (MINIMAL_NONE, TARGET_VS_NOTHING)):
        base = next(r for r in results if r.mode == mode).events_per_second or 0
        ratio = rate / base if base else 0.0
        print(
            f"target: >= {target}x the {mode} ({base:,.0f}/s): "
            f"{'MET' if ratio >= target else 'NOT MET'} ({ratio:.2f}x)"
        )
    both = next(r for r in results if r.mode == MINIMAL_NONE_2).events_per_second or 0
    print(
        f"for comparison, not a target: {rate / both if both else 0:.2f}x the {MINIMAL_NONE_2} "
        f"({both:,.0f}/s). The minimal apps run one process, as `uvicorn app:app` does unless "
        f"told; the receiver ships with {DEFAULT_WORKERS}."
    )
    return ok
