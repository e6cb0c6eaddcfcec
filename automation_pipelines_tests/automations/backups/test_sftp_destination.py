"""An off-site destination over SFTP: Debian's OpenSSH server, started by each test on a loopback
port with its own host key and key-only login, and the real restic binary, driven through the
project's own jobs, health check and restore command with `restic_options: [sftp.command=…]`.

Covered: a backup of a folder and a SQLite database goes to `sftp:`, the health check finds it
healthy and measures the server's free space, and `backups restore` brings it back byte for
byte; the server gone (before and in the middle of a backup) fails the run with one sentence
naming the destination, nothing half-written counts, and the next run recovers with a clean
`restic check`; a client key the server refuses, or a host key known_hosts does not hold, is a
permanent error saying so; free space is held to min_free_percent, or noted as unmeasured on a
server without statvfs@openssh.com. The repository password appears in no command line, message
or log on the way.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from automation_pipelines.automations.backups import assets, engine, health
from automation_pipelines.automations.backups.jobs import backup_snapshots_job, check_backups_job
from automation_pipelines.automations.backups.resources import BackupConfigError, BackupSettings
from automation_pipelines.automations.backups.restic import (
    Repository,
    SpaceUnknown,
    sftp_parts,
    split_command,
)
from automation_pipelines_tests.automations.backups.conftest import PASSWORD, RunsJobs
from automation_pipelines_tests.automations.backups.sshd import Sshd, keygen, require_openssh
from automation_pipelines_tests.automations.backups.trees import make_tree, tree_hashes
from automation_pipelines_tests.e2e.harness import venv_script


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """Debian's sshd on a free loopback port, stopped with every session it forked."""
    require_openssh()
    server = Sshd(tmp_path / "sshd").start()
    try:
        yield server
    finally:
        server.stop()
        assert not server.running


class Offsite(RunsJobs):
    """The backup definitions on an `sftp:` destination served by `sshd`, on an instance."""

    def __init__(self, instance, router, sshd: Sshd, tmp_path: Path) -> None:
        self.instance = instance
        self.router = router
        self.sshd = sshd
        self.documents = make_tree(tmp_path / "documents", files=24)
        self.database = tmp_path / "app.db"
        with sqlite3.connect(self.database) as db:
            db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)")
            db.executemany("INSERT INTO events (body) VALUES (?)", [(f"e{i}",) for i in range(300)])
        db.close()
        #: The repository's folder on the server (the same disk, seen through SFTP).
        self.served = tmp_path / "server" / "backups"
        self.location = sshd.location(self.served)
        self.configure()

    def configure(
        self, key: Path | None = None, known_hosts: Path | None = None, **changes
    ) -> None:
        """(Re)build the definitions, logging in with `key` and checking the server's host key
        against `known_hosts` (by default the authorized key and the server's own host key)."""
        self.command = self.sshd.ssh_command(key, known_hosts)
        self.settings = BackupSettings(
            destination=self.location,
            sources={
                "documents": {"folder": str(self.documents)},
                "app": {"sqlite": str(self.database)},
            },
            restic_options=[f"sftp.command={self.command}"],
            **{"max_age_hours": 26, "min_free_percent": 0.5, "sample_files": 8, **changes},
        )
        self.defs = dg.Definitions(
            assets=[assets.backup_snapshots],
            asset_checks=[assets.check_backup_health],
            jobs=[backup_snapshots_job, check_backups_job],
            resources={"backups": self.settings, "alerts": self.router},
        )

    def failure(self, result: dg.ExecuteInProcessResult) -> dict:
        """The failed step's metadata, as the run-failure alert reads it."""
        [event] = [e for e in result.all_events if e.is_step_failure]
        user = event.step_failure_data.user_failure_data
        return {key: value.value for key, value in user.metadata.items()}

    def materializations(self) -> int:
        return len(self.instance.fetch_materializations(assets.BACKUP_KEY, limit=100).records)

    def repository(self) -> Repository:
        return self.settings.open_repository()


@pytest.fixture
def offsite(sqlite_instance, alert_router, json_receiver, restic_env, sshd, monkeypatch, tmp_path):
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)  # owner team:platform's route
    return Offsite(sqlite_instance, alert_router, sshd, tmp_path)


class CommandLines:
    """Every process's command line on the machine, sampled every few milliseconds while the
    block runs (what `ps` would have shown anyone), and the environment of each ssh that
    carried an SFTP session to `port` (this test's server: a test running beside it has its
    own, and its processes the password in their environment by design)."""

    def __init__(self, port: int) -> None:
        self.port = f" -p {port} ".encode()
        self.seen: set[str] = set()
        self.ssh_environments: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        line = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                        if (
                            line.startswith(b"/usr/bin/ssh ")
                            and line.endswith(b" -s sftp ")
                            and self.port in line
                        ):
                            self.ssh_environments.append((entry / "environ").read_bytes())
                    except OSError:
                        continue
                    self.seen.add(line.decode(errors="replace").strip())
            time.sleep(0.005)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv_script("automation-pipelines"), "backups", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def one_sentence(text: str) -> bool:
    return "\n" not in text.strip() and "Traceback" not in text and "subprocess " not in text


def test_backup_check_and_restore_over_sftp(offsite: Offsite, sshd: Sshd, tmp_path: Path) -> None:
    with CommandLines(sshd.port) as ps:
        made = offsite.backup()
    assert made.success
    [run] = engine.list_runs(offsite.repository())
    assert sorted(s.tag(engine.SOURCE) for s in run.snapshots) == ["app", "documents"]
    # The repository is on the server's side, written there by its SFTP server.
    assert sorted(p.name for p in offsite.served.iterdir()) == [
        "config",
        "data",
        "index",
        "keys",
        "locks",
        "snapshots",
    ]
    assert f"Accepted publickey for {sshd.user} from 127.0.0.1" in sshd.log.read_text()

    checks = offsite.check()

    assert {name: e.passed for name, e in checks.items()} == dict.fromkeys(checks, True)
    ready = checks["destination_ready"]
    assert re.fullmatch(
        rf"repository {re.escape(offsite.location)} answers with [\d.]+ GB free \([\d.]+%\)",
        ready.description,
    ), ready.description
    usage = shutil.disk_usage(offsite.served)  # the server's disk is this machine's
    measured = ready.metadata["free_percent"].value
    assert abs(measured - 100 * usage.free / usage.total) < 1.0
    assert checks["test_restore"].description.startswith("restored 8 file(s) of the newest")

    config = tmp_path / "backups.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "destination": offsite.location,
                "restic_options": offsite.settings.restic_options,
                "schedule": {"cron": "30 2 * * *"},
                "health_check": {"cron": "0 7 * * *"},
                "sources": offsite.settings.sources,
            }
        )
    )
    target = tmp_path / "restored"
    restored = cli("restore", "--to", str(target), env={"BACKUPS_CONFIG_FILE": str(config)})

    assert restored.returncode == 0, restored.stderr
    assert "Restored 26 file(s), " in restored.stdout and f"from {run.id} into" in restored.stdout
    assert tree_hashes(target / "documents") == tree_hashes(offsite.documents)
    copy = sqlite3.connect(target / "app" / "app.db")
    try:
        assert copy.execute("SELECT count(*), max(body) FROM events").fetchone() == (300, "e99")
    finally:
        copy.close()

    # The password went to restic in its environment only: no command line carried it, nor
    # did the ssh processes restic started for the SFTP sessions.
    ssh = [line for line in ps.seen if line.endswith(f"{sshd.user}@127.0.0.1 -s sftp")]
    assert ssh and any(line.startswith(f"restic --repo {offsite.location}") for line in ps.seen)
    assert " ".join(split_command(offsite.command)) in ssh
    assert ps.ssh_environments
    assert not [env for env in ps.ssh_environments if PASSWORD.encode() in env]
    said = [
        *ps.seen,
        offsite.command,
        " ".join(offsite.repository().command("snapshots")),
        sshd.log.read_text(),
        config.read_text(),
        restored.stdout + restored.stderr,
        *(e.description or "" for e in checks.values()),
    ]
    assert not [text for text in said if PASSWORD in text]


def _cut_when_uploading(
    sshd: Sshd, served: Path, cut: threading.Event, finished: threading.Event
) -> None:
    """Stop the server, with its open sessions, once restic holds a lock there and has begun
    writing packs: the connection drops in the middle of the backup."""
    while not finished.is_set():
        locks = list((served / "locks").glob("*")) if served.is_dir() else []
        if locks and list((served / "data").glob("*/*")):
            sshd.stop()
            cut.set()
            return
        time.sleep(0.002)


def test_a_server_that_goes_away_fails_the_run_in_one_sentence_then_the_next_one_recovers(
    offsite: Offsite, sshd: Sshd
) -> None:
    sshd.stop()

    refused = offsite.backup()

    assert not refused.success
    failure = offsite.failure(refused)
    assert failure["error"] == (
        f"repository {offsite.location}: nothing accepts SSH connections there: connect to host "
        f"127.0.0.1 port {sshd.port}: Connection refused"
    )
    assert failure["classification"] == "permanent"
    assert assets.last_failure(offsite.instance) == failure["error"]
    assert offsite.materializations() == 0

    # Back up, but the server goes away while restic is writing packs.
    sshd.start()
    (offsite.documents / "big.bin").write_bytes(os.urandom(80_000_000))
    cut, finished = threading.Event(), threading.Event()
    watcher = threading.Thread(
        target=_cut_when_uploading, args=(sshd, offsite.served, cut, finished)
    )
    watcher.start()
    try:
        dropped = offsite.backup()
    finally:
        finished.set()
        watcher.join(timeout=30)
    assert cut.is_set(), "the backup finished before the server could be stopped"

    assert not dropped.success
    sentence = offsite.failure(dropped)["error"]
    assert sentence.startswith(f"repository {offsite.location}: "), sentence
    assert one_sentence(sentence), sentence
    lost = "the SSH server closed the connection|the SSH connection broke off|nothing accepts SSH"
    assert re.search(rf": ({lost})", sentence), sentence
    assert offsite.materializations() == 0
    assert list((offsite.served / "snapshots").iterdir()) == []  # nothing half-written counts

    sshd.start()
    recovered = offsite.backup()

    assert recovered.success
    repo = offsite.repository()
    [run] = engine.list_runs(repo)
    assert sorted(s.tag(engine.SOURCE) for s in run.snapshots) == ["app", "documents"]
    assert run.source("documents") is not None
    assert repo.check() == []
    assert repo.locks() == []  # the lock the cut session left was of a dead restic: removed
    assert offsite.materializations() == 1
    assert not [s for s in (failure["error"], sentence) if PASSWORD in s]


def test_a_full_sftp_destination_fails_the_run_saying_so_then_the_next_one_recovers(
    offsite: Offsite, sshd: Sshd, small_volume: Path
) -> None:
    # The server's folder is an 8 MB volume; a 20 MB file does not compress. Over SFTP the
    # server answers a full disk with a bare "Failure", which restic retries for a minute a
    # write; the run stops at the first one and says the destination is full.
    offsite.served = small_volume / "backups"
    offsite.location = sshd.location(offsite.served)
    offsite.configure()
    (offsite.documents / "big.bin").write_bytes(os.urandom(20_000_000))

    full = offsite.backup()

    assert not full.success
    sentence = offsite.failure(full)["error"]
    assert re.fullmatch(
        rf"repository {re.escape(offsite.location)}: the destination is full: "
        r"\d+\.\d MB free of 8\.4 MB, less than the 16\.8 MB restic writes at a time "
        r"\(restic: .+\)",
        sentence,
    ), sentence
    assert one_sentence(sentence), sentence
    assert offsite.failure(full)["classification"] == "permanent"
    assert offsite.materializations() == 0
    assert list((offsite.served / "snapshots").iterdir()) == []

    (offsite.documents / "big.bin").unlink()
    recovered = offsite.backup()

    assert recovered.success
    repo = offsite.repository()
    assert [len(run.snapshots) for run in engine.list_runs(repo)] == [2]
    assert repo.check() == [] and repo.locks() == []


def _another_host_key(sshd: Sshd, tmp_path: Path) -> Path:
    """A known_hosts that names another key for the server: what a client sees after the
    server was reinstalled, or when someone sits in between."""
    other = keygen(tmp_path / "impostor" / "host_ed25519")
    known_hosts = tmp_path / "impostor" / "known_hosts"
    line = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {line}\n")
    return known_hosts


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            "client key",
            "the SSH server refused the login: {user}@127.0.0.1: Permission denied (publickey)",
        ),
        (
            "host key",
            "the SSH server's host key is not the one in known_hosts: Host key verification failed",
        ),
    ],
)
def test_a_refused_login_is_a_permanent_error_that_says_why(
    offsite: Offsite, sshd: Sshd, tmp_path: Path, change: str, reason: str
) -> None:
    if change == "client key":
        offsite.configure(key=keygen(tmp_path / "unknown" / "id_ed25519"))
    else:
        offsite.configure(known_hosts=_another_host_key(sshd, tmp_path))

    result = offsite.backup()

    assert not result.success
    failure = offsite.failure(result)
    expected = f"repository {offsite.location}: {reason.format(user=sshd.user)}"
    assert failure["error"] == expected
    assert failure["classification"] == "permanent" and failure["attempts"] == 1
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert offsite.materializations() == 0
    assert not offsite.served.exists()  # restic never got as far as the server's disk

    checks = offsite.check()

    assert not checks["destination_ready"].passed
    assert checks["destination_ready"].description == expected
    assert PASSWORD not in expected + offsite.command


def _inspect(settings: BackupSettings, min_free_percent: float) -> health.HealthReport:
    return health.inspect(
        destination=settings.destination,
        local=settings.local_destination,
        open_repository=settings.open_repository,
        expected=settings.expected_sources(),
        folders=settings.folders(),
        limits=health.Limits(min_free_percent=min_free_percent, sample_files=0),
        owner="team:platform",
        automation="backups",
        last_good=None,
        last_failure=None,
    )


def test_low_free_space_on_the_sftp_destination_is_reported(offsite: Offsite) -> None:
    offsite.repository().init()

    report = _inspect(offsite.settings, min_free_percent=100)  # no real disk is 100% free

    ready = report.checks["destination_ready"]
    assert not ready.passed
    assert re.fullmatch(
        rf"destination {re.escape(offsite.location)} is almost full: [\d.]+ GB free "
        r"\((\d+\.\d)%\), below 100%",
        ready.sentence,
    ), ready.sentence
    usage = shutil.disk_usage(offsite.served)
    assert abs(ready.metadata["free_percent"] - 100 * usage.free / usage.total) < 1.0
    assert [(f.kind, f.sentence) for f in report.findings if f.kind == health.DESTINATION] == [
        (health.DESTINATION, ready.sentence)
    ]


def test_enough_free_space_on_the_sftp_destination_passes(offsite: Offsite) -> None:
    offsite.repository().init()

    report = _inspect(offsite.settings, min_free_percent=0.5)

    ready = report.checks["destination_ready"]
    assert ready.passed, ready.sentence
    assert ready.sentence.startswith(f"repository {offsite.location} answers with ")
    usage = shutil.disk_usage(offsite.served)
    assert abs(ready.metadata["free_gb"] - usage.free / 1e9) < 1.0
    assert not [f for f in report.findings if f.kind == health.DESTINATION]


def test_a_server_without_the_statvfs_extension_gets_a_note_not_a_failure(
    sqlite_instance, alert_router, restic_env, tmp_path: Path
) -> None:
    require_openssh()
    server = Sshd(tmp_path / "sshd", subsystem="internal-sftp -P statvfs,fstatvfs").start()
    try:
        world = Offsite(sqlite_instance, alert_router, server, tmp_path)
        world.repository().init()

        report = _inspect(world.settings, min_free_percent=100)
    finally:
        server.stop()

    ready = report.checks["destination_ready"]
    assert ready.passed
    assert ready.sentence == (
        f"repository {world.location} answers; its free space is not measured: sftp's df of "
        f"{world.served} failed: Server does not support statvfs@openssh.com extension"
    )
    assert ready.metadata == {"free_space": "not measured"}
    assert not [f for f in report.findings if f.kind == health.DESTINATION]


def test_s3_storage_reports_no_free_space() -> None:
    repo = Repository("s3:https://s3.example.com/backups", password=PASSWORD)

    with pytest.raises(SpaceUnknown, match=r"^s3 storage reports no free space$"):
        repo.free_space()


@pytest.mark.parametrize(
    ("location", "options", "parts", "command"),
    [
        (
            "sftp:backup@host.example:/srv/backups",
            (),
            ("backup", "host.example", "", "/srv/backups"),
            ["ssh", "host.example", "-l", "backup", "-s", "sftp"],
        ),
        (
            "sftp://backup@host.example:2200//srv/backups/",
            (),
            ("backup", "host.example", "2200", "/srv/backups"),
            ["ssh", "host.example", "-p", "2200", "-l", "backup", "-s", "sftp"],
        ),
        (
            "sftp:host.example:backups",
            ("sftp.args=-i /k",),
            ("", "host.example", "", "backups"),
            ["ssh", "host.example", "-i", "/k", "-s", "sftp"],
        ),
        (
            "sftp:b@h:/x",
            ("sftp.command=ssh -i '/keys/a b' -o BatchMode=yes b@h -s sftp",),
            ("b", "h", "", "/x"),
            ["ssh", "-i", "/keys/a b", "-o", "BatchMode=yes", "b@h", "-s", "sftp"],
        ),
    ],
)
def test_the_ssh_command_is_the_one_restic_runs(location, options, parts, command) -> None:
    assert sftp_parts(location) == parts
    assert Repository(location, options=options).ssh_command() == command


def test_sftp_command_is_split_as_restic_splits_it() -> None:
    # restic starts a new argument at a quote and drops a backslash outside quotes.
    assert split_command("ssh -o X='a b' h") == ["ssh", "-o", "X=", "a b", "h"]
    assert split_command('ssh "-p" 22') == ["ssh", "-p", "22"]
    with pytest.raises(ValueError, match="quote is not closed"):
        split_command("ssh 'h")


def test_restic_options_come_from_backups_yaml(restic_env, tmp_path: Path) -> None:
    base = {
        "destination": "sftp:backup@host.example:/srv/backups",
        "schedule": {"cron": "30 2 * * *"},
        "health_check": {"cron": "0 7 * * *"},
        "sources": {"docs": {"folder": "/srv/docs"}},
    }
    config = tmp_path / "backups.yaml"
    command = "sftp.command=ssh -i /etc/k backup@host.example -s sftp"
    config.write_text(yaml.safe_dump({**base, "restic_options": [command]}))

    settings = BackupSettings.from_config(config)

    assert settings.restic_options == [command]
    repo = settings.open_repository()
    assert repo.command("snapshots")[3:5] == ["-o", command]
    assert repo.ssh_command() == ["ssh", "-i", "/etc/k", "backup@host.example", "-s", "sftp"]
    config.write_text(yaml.safe_dump({**base, "restic_options": command}))
    with pytest.raises(BackupConfigError, match=r"`restic_options:` must be a list of key=value"):
        BackupSettings.from_config(config)
