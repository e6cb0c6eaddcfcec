"""slow clients: signed deliveries while thousands of connections stall mid-request.

One `automation-pipelines webhooks serve` as shipped (its default worker processes, SQLite WAL,
a fresh instance home). A signed sender POSTs GitHub pushes at a fixed pace, each on a fresh
connection as GitHub delivers, with a 10 s timeout; its latency runs from connecting to the
answer. Side by side in one run, on the same receiver, each for BENCH_SLOW_CLIENTS_SECONDS
(default 30):
- the sender alone;
- the same sender while BENCH_SLOW_CLIENTS_STALLED (default 2,000) connections, from a process of
  their own, each send a delivery's headers and one byte of its body and then nothing; one the
  receiver closes is opened again at once, so that many stay held;
- the same again with 2,100 stalled connections per worker process, more than the 2,000 open
  requests a process used to allow before it answered everyone 503 (for comparison).
- then through the project's nginx proxy (Debian's nginx, the config `make run-prod` renders for
  PROXY_PORT, plain HTTP on loopback, its default limits) in front of the same receiver: the
  sender alone, and beside 2,000 stalled connections, each from an address of its own (a crowd,
  not one client its per-address limits would stop).
The target, from the issue "A hardened public edge": with 2,000 stalled connections held, every
POST answered 202 and p95 under 1 s, against the receiver alone and through the proxy. The ratio
of the p95s shows what the stalled connections cost a sender. The stalled side reports how many
it held (sampled every 0.5 s) and how they were closed: the receiver's body deadline
(WEBHOOKS_BODY_TIMEOUT_SECONDS) and its bound on pending connections
(WEBHOOKS_MAX_PENDING_CONNECTIONS, per process) both answer 408; nginx's body timeout
(PROXY_BODY_TIMEOUT_SECONDS) resets the connection.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from automation_pipelines import proxy
from automation_pipelines.local_stack import free_port, wait_for
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines.webhooks.app import DEFAULT_WORKERS
from automation_pipelines.webhooks.edge import EdgeLimits
from automation_pipelines.webhooks.probes import StalledConnections, post_signed
from bench.bench_webhooks import SECRET, clean_environment, receiver
from bench.tables import load_average, print_columns, verdict

SECONDS = float(os.environ.get("BENCH_SLOW_CLIENTS_SECONDS", "30"))
STALLED = int(os.environ.get("BENCH_SLOW_CLIENTS_STALLED", "2000"))
#: Signed POSTs per second, from a few threads on a fixed timetable, so a slow answer does not
#: slow the stream.
RATE = 20
SENDERS = 8
TIMEOUT = 10.0
TARGET_P95_SECONDS = 1.0
WORK = Path(__file__).parent / ".data" / "slow_clients"
#: For comparison: more than the 2,000 open requests each process used to take.
MORE_STALLED = 2100 * DEFAULT_WORKERS
ALONE = "signed POSTs, nothing else connected"
PROXIED_ALONE = "through the proxy: signed POSTs, nothing else connected"


@dataclass
class Phase:
    mode: str
    outcomes: list[tuple[int | str, float]] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [seconds for _, seconds in self.outcomes]

    def count(self, status: int | str) -> int:
        return sum(1 for got, _ in self.outcomes if got == status)

    def percentile(self, p: int) -> float:
        values = sorted(self.latencies)
        if len(values) < 2:
            return values[0] if values else float("nan")
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> None:
    limits = EdgeLimits.from_settings()
    print(
        f"machine: {os.cpu_count()} cores; receiver: `webhooks serve` with {DEFAULT_WORKERS} "
        f"worker processes, uvicorn {uvicorn.__version__} (uvloop, httptools behind the edge), "
        f"SQLite; WEBHOOKS_MAX_PENDING_CONNECTIONS={limits.max_pending} per process, "
        f"WEBHOOKS_HEADER_TIMEOUT_SECONDS={limits.header_timeout:g}\n"
        f"{RATE} signed POSTs/s on fresh connections for {SECONDS:g} s alone, then as long beside "
        f"{STALLED:,} and beside {MORE_STALLED:,} stalled connections (headers and one body "
        f"byte, then nothing)\nload average at start: {load_average()}",
        flush=True,
    )
    shutil.rmtree(WORK, ignore_errors=True)
    phases: list[tuple[Phase, dict | None]] = []
    try:
        with receiver(WORK / "receiver", clean_environment()) as (url, _home):
            port = int(url.rsplit(":", 1)[1])
            alone = Phase(ALONE)
            send(port, alone, "alone")
            phases.append((alone, None))
            print(f"  {ALONE}: {len(alone.outcomes)} sent", flush=True)
            for count in (STALLED, MORE_STALLED):
                beside = Phase(f"signed POSTs beside {count:,} stalled connections")
                stalled = hold_stalled_beside(port, count, lambda b=beside: send(port, b, "beside"))
                phases.append((beside, stalled))
                print(f"  {beside.mode}: {len(beside.outcomes)} sent", flush=True)
            after = post_signed(port, f"after-{uuid.uuid4()}", SECRET, TIMEOUT)[0]
            with nginx_in_front(port) as edge_port:
                alone = Phase(PROXIED_ALONE)
                send(edge_port, alone, "proxied-alone")
                phases.append((alone, None))
                print(f"  {PROXIED_ALONE}: {len(alone.outcomes)} sent", flush=True)
                beside = Phase(f"through the proxy: beside {STALLED:,} stalled connections")
                stalled = hold_stalled_beside(
                    edge_port, STALLED, lambda: send(edge_port, beside, "proxied"), spread=True
                )
                phases.append((beside, stalled))
                print(f"  {beside.mode}: {len(beside.outcomes)} sent", flush=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print_report(phases, after)


@contextlib.contextmanager
def nginx_in_front(receiver_port: int) -> Iterator[int]:
    """The proxy `make run-prod` starts for PROXY_PORT, with its default limits, in front of
    the receiver at `receiver_port`: its port."""
    home = WORK / "proxy_home"
    users = home / "htpasswd"
    home.mkdir(parents=True)
    users.write_text("bench:$6$bench$unused\n")
    settings = proxy.ProxySettings(port=free_port(), htpasswd=users, host="127.0.0.1")
    edge = proxy.prepare(
        settings,
        home,
        upstream_host="127.0.0.1",
        webserver_port=free_port(),
        receiver_port=receiver_port,
    )
    log = home / "nginx.log"
    with ProcessGroup() as group, log.open("wb") as handle:
        group.start(edge.argv(), stdout=handle, stderr=handle)
        wait_for(
            "nginx",
            lambda: post_signed(settings.port, f"probe-{uuid.uuid4()}", SECRET, TIMEOUT)[0] == 202,
            30,
            lambda: log.read_text(errors="replace")[-4000:],
        )
        yield settings.port


def send(port: int, phase: Phase, prefix: str) -> None:
    """RATE signed POSTs a second for SECONDS, each on a connection of its own."""
    lock = threading.Lock()

    def one(delivery: str) -> None:
        outcome = post_signed(port, delivery, SECRET, TIMEOUT)
        with lock:
            phase.outcomes.append(outcome)

    with ThreadPoolExecutor(SENDERS) as pool:
        begin = time.monotonic()
        n = 0
        while (due := begin + n / RATE) < begin + SECONDS:
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(one, f"{prefix}-{n}-{uuid.uuid4()}")
            n += 1


def hold_stalled_beside(port: int, count: int, work, *, spread: bool = False) -> dict:
    """Run `work` while a process of its own holds `count` stalled connections (with `spread`,
    each from an address of its own); what it saw."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    holder = context.Process(target=hold_stalled, args=(port, count, theirs, spread), daemon=True)
    holder.start()
    try:
        if not ours.poll(120):
            raise SystemExit(f"the stalled clients did not hold {count:,} connections in 120 s")
        held_after = ours.recv()
        work()
        ours.send("stop")
        if not ours.poll(60):
            raise SystemExit("the stalled clients did not report")
        report = ours.recv()
    finally:
        holder.join(timeout=30)
        if holder.is_alive():
            holder.kill()
    return {**report, "count": count, "held_after": held_after}


def hold_stalled(port: int, count: int, pipe, spread: bool) -> None:
    """In the stalled clients' process: hold them until told to stop, sampling how many are
    held every 0.5 s, then report."""
    began = time.monotonic()
    with StalledConnections(port, count, spread=spread) as stalled:
        pipe.send(time.monotonic() - began)
        samples = []
        while not pipe.poll(0.5):
            samples.append(stalled.held)
        pipe.recv()
        report = {
            "samples": samples,
            "opened": stalled.opened,
            "closed": stalled.closed_by_receiver,
            "failed": stalled.failed_to_connect,
            "answers": dict(stalled.answers),
        }
    pipe.send(report)


def print_report(phases: list[tuple[Phase, dict | None]], after: int | str) -> None:
    def row(phase: Phase) -> list[str]:
        other = len(phase.outcomes) - phase.count(202)
        return [
            phase.mode,
            f"{len(phase.outcomes):,}",
            f"{phase.count(202):,}",
            f"{other:,}",
            *(f"{phase.percentile(p) * 1000:.1f}" for p in (50, 95, 99)),
            f"{max(phase.latencies, default=float('nan')) * 1000:.1f}",
        ]

    print_columns(
        ["mode", "POSTs", "202", "other", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [row(phase) for phase, _ in phases],
    )
    print()
    alone = phases[0][0]
    for phase, stalled in phases[1:]:
        if stalled is None:  # the proxy's own reference
            alone = phase
            continue
        samples = stalled["samples"] or [0]
        answers = ", ".join(f"{n:,} x {line}" for line, n in sorted(stalled["answers"].items()))
        where = "through the proxy, " if phase.mode.startswith("through") else ""
        held_after = stalled["held_after"]
        print(
            f"{where}{stalled['count']:,} stalled connections: each connected {held_after:.1f} s "
            f"after starting; while the sender ran, sampled every 0.5 s: min {min(samples):,}, "
            f"median {statistics.median(samples):,.0f}; {stalled['opened']:,} opened in all, "
            f"{stalled['closed']:,} closed by the other side ({answers or 'no answer'}), "
            f"{stalled['failed']:,} failed connects; p95 / alone: "
            f"{phase.percentile(95) / alone.percentile(95):.2f}x"
        )
    for where, beside in (("the receiver alone", phases[1][0]), ("the proxy", phases[-1][0])):
        p95 = beside.percentile(95)
        every = beside.count(202) == len(beside.outcomes) > 0
        print(
            f"target, {where}: with {STALLED:,} stalled connections every signed POST 202 and "
            f"p95 < {TARGET_P95_SECONDS:g} s: {verdict(every and p95 < TARGET_P95_SECONDS)} "
            f"({beside.count(202):,} of {len(beside.outcomes):,} x 202, p95 {p95 * 1000:.1f} ms)"
        )
    print(f"after the stalled connections left, a signed POST: {after}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
