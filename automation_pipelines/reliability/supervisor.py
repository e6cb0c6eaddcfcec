"""Supervise each long-lived process on its own, so one crash never takes the others down.

`dagster dev` runs the webserver and the daemon as one unit: when the daemon dies, everything
stops. Here every process (code server, webserver, daemon, webhook receiver) is watched alone:
an exit restarts that process with exponential backoff while the others keep serving; every
exit is logged with its reason and the last lines it printed. A crash is one incident until the
process has stayed up `stable_after` seconds again: its first exit is reported to the owner,
further exits before then only count. A process that exits `loop_exits` times within
`loop_window` seconds is given up on loudly — its owner is told, with its last output — and
then tried again only every `slow_retry` seconds (a database that comes back is picked up without
a person). A recovery notice follows once it has stayed up for `stable_after` seconds.

Dependencies (the instance's PostgreSQL) are looked at every few seconds: an outage is one alert
and its end one recovery notice, which also lists the exits during it; while it lasts, exits are
restarted with capped backoff and never given up on — a process that cannot reach its database
is not a crash loop to abandon.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from automation_pipelines.reliability.processes import ProcessGroup, exit_reason


@dataclass(frozen=True)
class Policy:
    """How hard to try: backoff between restarts, what counts as a crash loop, and after it."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    loop_exits: int = 5
    loop_window: float = 120.0
    slow_retry: float = 60.0
    stable_after: float = 30.0
    ready_timeout: float = 120.0
    probe_seconds: float = 5.0  # how often dependencies are looked at
    outage_after: int = 2  # failed looks in a row that make an outage (one blip is not)


@dataclass(frozen=True)
class Notice:
    """Something the owner must hear about: a restart, a give-up, an outage, a recovery."""

    kind: str  # restarted | given_up | outage | recovered
    service: str
    title: str
    body: str
    key: str


@dataclass
class Service:
    """One supervised process: how to start it and how to tell it is ready to serve."""

    name: str
    argv: list[str]
    ready: Callable[[], bool] = field(default=lambda: True)
    pass_fds: tuple[int, ...] = ()  # inherited descriptors, e.g. a listening socket
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    exits: list[float] = field(default_factory=list)
    failures: int = 0  # exits since it last stayed up `stable_after` seconds
    next_start_at: float | None = None
    delays: list[float] = field(default_factory=list)  # each restart's backoff, for the record
    given_up: bool = False
    incident_open: bool = False  # alerted, and not stable since
    folded: int = 0
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=30))

    def tail(self, lines: int = 15) -> str:
        return "\n".join(list(self.output)[-lines:])


@dataclass
class Dependency:
    """Something the processes need, such as the instance's PostgreSQL. While it is down, exits
    are waited out with capped backoff instead of being given up on, its outage is one alert, and
    its return one recovery notice."""

    name: str
    probe: Callable[[], object]  # raises while the dependency cannot be reached
    failures: int = 0
    down_since: float | None = None  # wall-clock time of the first failed look
    alerted: bool = False
    last_error: str = ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _die_with_parent(argv: list[str]) -> list[str]:
    """Wrap `argv` so the kernel sends SIGTERM to the process when the supervisor dies (even by
    SIGKILL): nothing keeps serving, or holding a port, unsupervised."""
    setpriv = shutil.which("setpriv")
    if setpriv and sys.platform.startswith("linux"):
        return [setpriv, "--pdeathsig", "TERM", "--", *argv]
    return argv


class Supervisor:
    """Start services in order, then keep each one running on its own until `stop` is set."""

    def __init__(
        self,
        services: list[Service],
        *,
        env: Mapping[str, str],
        cwd: Path,
        notify: Callable[[Notice], None],
        policy: Policy = Policy(),
        out: IO[str] | None = None,
        dependencies: list[Dependency] | None = None,
        refresh_env: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """`refresh_env`, when given, is asked for the environment before every start, so a
        restarted process sees what changed (a secret rotated in `.env`) instead of the
        environment the supervisor had when it started."""
        self.services = services
        self.refresh_env = refresh_env
        self.dependencies = list(dependencies or [])
        self._outage_exits: list[str] = []
        self._halt = threading.Event()
        self.env = dict(env)
        self.cwd = cwd
        self.notify = notify
        self.policy = policy
        self.out = out or sys.stdout
        self.group = ProcessGroup(reap_orphans=False)
        self._write_lock = threading.Lock()

    # -- output --------------------------------------------------------------------------

    def say(self, line: str) -> None:
        with self._write_lock:
            self.out.write(line.rstrip("\n") + "\n")
            self.out.flush()

    def _pump(self, service: Service, stream: IO[bytes]) -> None:
        """Copy a process's output to ours, prefixed, keeping its last lines for alerts."""
        prefix = f"{service.name} | "
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                service.output.append(line)
                self.say(prefix + line)
        stream.close()

    # -- lifecycle -----------------------------------------------------------------------

    def _launch(self, service: Service) -> None:
        service.output.clear()
        if self.refresh_env is not None:
            try:
                self.env = dict(self.refresh_env())
            except Exception as exc:  # an unreadable .env must not stop a restart
                self.say(f"✗ could not read the environment again ({exc}); the last one is used")
        process = self.group.start(
            _die_with_parent(service.argv),
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=service.pass_fds,
        )
        service.process = process
        service.started_at = time.monotonic()
        service.next_start_at = None
        threading.Thread(
            target=self._pump,
            args=(service, process.stdout),
            name=f"out-{service.name}",
            daemon=True,
        ).start()

    def start_all(self, stop: list[str]) -> None:
        """Start every service in order, waiting (up to the policy's timeout) until each is
        ready; one that is not ready yet is left to supervision instead of stopping the rest."""
        for service in self.services:
            if stop:
                return
            self._launch(service)
            if self._wait_ready(service, stop):
                self.say(f"✓ the {service.name} is up (pid {service.process.pid})")
            elif not stop:
                self.say(f"✗ the {service.name} is not ready; supervising it with the others")

    def _wait_ready(self, service: Service, stop: list[str]) -> bool:
        deadline = time.monotonic() + self.policy.ready_timeout
        while not stop and time.monotonic() < deadline:
            if service.process.poll() is not None:
                return False
            try:
                if service.ready():
                    return True
            except Exception:  # a probe that fails means "not yet"
                pass
            time.sleep(0.3)
        return False

    def run(self, stop: list[str], *, parent: int | None = None) -> None:
        """Supervise until `stop` gets an entry (a signal handler appends to it)."""
        if self.dependencies:
            threading.Thread(target=self._watch_dependencies, name="probes", daemon=True).start()
        while not stop:
            if parent is not None and os.getppid() != parent:
                stop.append("parent exited")
                break
            self.check(time.monotonic())
            self.reap_orphans()
            time.sleep(0.2)

    def check(self, now: float) -> None:
        """One pass: notice exits, start what is due, report what became stable."""
        for service in self.services:
            process = service.process
            if process is not None and process.poll() is not None:
                self._exited(service, now)
            elif process is None and service.next_start_at is not None:
                if now >= service.next_start_at:
                    self.say(f"… starting the {service.name} again")
                    self._launch(service)
            elif process is not None and now - service.started_at >= self.policy.stable_after:
                self._stable(service)

    def _exited(self, service: Service, now: float) -> None:
        process = service.process
        uptime = now - service.started_at
        reason = exit_reason(process.returncode)
        service.process = None
        if uptime >= self.policy.stable_after and not service.given_up:
            service.failures = 0
        service.failures += 1
        service.exits = [t for t in service.exits if now - t < self.policy.loop_window] + [now]
        time.sleep(0.05)  # let the output thread catch the last lines
        tail = service.tail()
        if service.given_up:
            service.next_start_at = now + self.policy.slow_retry
            self.say(
                f"✗ the {service.name} exited again ({reason}); next try in "
                f"{self.policy.slow_retry:.0f} s"
            )
            return
        outage = self.outage()
        if len(service.exits) >= self.policy.loop_exits and not outage:
            service.given_up = True
            service.next_start_at = now + self.policy.slow_retry
            self.say(
                f"✗ the {service.name} exited {len(service.exits)} times within "
                f"{self.policy.loop_window:.0f} s ({reason}): giving up on fast restarts; it is "
                f"tried again every {self.policy.slow_retry:.0f} s, the other processes keep "
                "running"
            )
            self._notify(
                service,
                "given_up",
                f"[GIVEN UP] {service.name} crash-loops: {len(service.exits)} exits in "
                f"{_duration(self.policy.loop_window)}",
                [
                    f"The {service.name} exited {len(service.exits)} times within "
                    f"{_duration(self.policy.loop_window)} (last: {reason}). The supervisor "
                    f"stopped restarting it at once and tries again every "
                    f"{_duration(self.policy.slow_retry)}; the other processes keep running.",
                    "Its last output:",
                    tail or "(nothing)",
                ],
            )
            return
        delay = min(
            self.policy.max_delay, self.policy.first_delay * 2 ** max(0, service.failures - 1)
        )
        because = f" while {outage} is down" if outage else ""
        service.next_start_at = now + delay
        service.delays.append(delay)
        self.say(
            f"✗ the {service.name} exited ({reason}) after {_duration(uptime)}{because}; "
            f"restarting it in {delay:.0f} s"
        )
        if outage:
            self._outage_exits.append(f"{service.name} ({reason})")
            return  # the outage is the incident; its recovery notice lists this exit
        if service.incident_open:
            service.folded += 1
            return
        service.incident_open = True
        self._notify(
            service,
            "restarted",
            f"[RESTARTED] {service.name}: {reason} after {_duration(uptime)} up",
            [
                f"The {service.name} exited ({reason}) after {_duration(uptime)}{because} and is "
                f"being restarted in {delay:.0f} s; the other processes kept running.",
                "Its last output:",
                tail or "(nothing)",
            ],
        )

    def _stable(self, service: Service) -> None:
        if service.failures == 0 and not service.given_up:
            return
        if service.given_up:
            service.given_up = False
            self.say(f"✓ the {service.name} has stayed up again")
            self._notify(
                service,
                "recovered",
                f"[RECOVERED] {service.name} is running again",
                [
                    f"The {service.name}, given up on after a crash loop, has stayed up for "
                    f"{_duration(self.policy.stable_after)}."
                ],
            )
        service.failures = 0
        service.exits = []
        service.folded = 0
        service.incident_open = False

    def _notify(self, service: Service, kind: str, title: str, lines: list[str]) -> None:
        if service.folded:
            lines = [*lines, f"({service.folded} earlier exit(s) were not alerted separately.)"]
            service.folded = 0
        self._send(kind, service.name, title, lines)

    # -- dependencies ----------------------------------------------------------------------

    def outage(self) -> str | None:
        """The names of the dependencies that are down now, or None."""
        down = [d.name for d in self.dependencies if d.alerted]
        return ", ".join(down) if down else None

    def _watch_dependencies(self) -> None:
        while not self._halt.wait(self.policy.probe_seconds):
            for dependency in self.dependencies:
                self.look_at(dependency)

    def look_at(self, dependency: Dependency) -> None:
        """Probe one dependency; alert once when it has been down `outage_after` looks in a
        row, and once more when it is back."""
        try:
            dependency.probe()
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            dependency.failures += 1
            dependency.last_error = reason
            dependency.down_since = dependency.down_since or time.time()
            if dependency.failures >= self.policy.outage_after and not dependency.alerted:
                dependency.alerted = True
                since = time.strftime("%H:%M:%S UTC", time.gmtime(dependency.down_since))
                self.say(f"✗ {dependency.name} is unreachable since {since}: {reason}")
                self._send(
                    "outage",
                    dependency.name,
                    f"[OUTAGE] {dependency.name} unreachable",
                    [
                        f"{dependency.name} cannot be reached since {since}: {reason}",
                        "The processes keep running and retry; the webhook receiver answers 503, "
                        "so senders deliver again later. Processes that exit meanwhile are "
                        "restarted, never given up on, until it is back.",
                    ],
                )
            return
        if dependency.alerted:
            lasted = _duration(time.time() - (dependency.down_since or time.time()))
            self.say(f"✓ {dependency.name} is reachable again after {lasted}")
            for service in self.services:  # waiting out a backoff: start now, not later
                if service.process is None and service.next_start_at is not None:
                    service.next_start_at = time.monotonic()
            exits, self._outage_exits = self._outage_exits, []
            meanwhile = (
                f"Meanwhile {len(exits)} process exit(s), each restarted: {', '.join(exits)}."
                if exits
                else "No process exited meanwhile."
            )
            self._send(
                "recovered",
                dependency.name,
                f"[RECOVERED] {dependency.name} reachable again after {lasted}",
                [
                    f"{dependency.name} was unreachable for {lasted} "
                    f"(last error: {dependency.last_error}).",
                    meanwhile,
                ],
            )
        dependency.failures, dependency.down_since, dependency.alerted = 0, None, False

    def _send(self, kind: str, subject: str, title: str, lines: list[str]) -> None:
        key = f"supervisor:{kind}:{subject}:{os.getpid()}:{time.time_ns()}"
        try:
            self.notify(Notice(kind, subject, title, "\n".join(lines), key))
        except Exception as error:  # telling must never stop supervising
            self.say(f"✗ could not queue the alert about {subject}: {error}")

    def reap_orphans(self) -> None:
        """Collect exited processes this supervisor adopted (as a subreaper) but did not start,
        so no zombie stays in the process table until shutdown."""
        own = {popen.pid for popen in self.group.popens}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                if child.pid in own:
                    continue
                with contextlib.suppress(psutil.Error, ChildProcessError):
                    if child.status() == psutil.STATUS_ZOMBIE:
                        os.waitpid(child.pid, os.WNOHANG)

    def stop(self) -> None:
        self._halt.set()
        self.group.stop()
