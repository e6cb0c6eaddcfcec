"""A PostgreSQL server of the test's own, to stop and start at will: a fresh cluster made with
Debian's `initdb` in a temp folder, run as the `postgres` user on a free loopback port.

Outage tests need a server they can take away; the shared one at AP_TEST_POSTGRES_URL serves
every other test and must stay up.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from automation_pipelines.local_stack import free_port

OWNER = "postgres"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


class PrivateServer:
    """`start()`, `stop()`, `settings()`; `remove()` deletes the cluster."""

    def __init__(self, host_auth: str = "trust") -> None:
        """`host_auth` for TCP logins (e.g. scram-sha-256, so a wrong password is refused);
        the unix socket always trusts the `postgres` user, who sets passwords."""
        if os.geteuid() != 0:
            raise PermissionError("running a private PostgreSQL cluster needs root (runuser)")
        self.port = free_port()
        # Under /tmp itself: pytest's own folders are closed to the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="ap-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.sockets.mkdir()
        account = pwd.getpwnam(OWNER)
        for path in (self.root, self.sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        self._as_owner(
            _bin("initdb"),
            "-D",
            str(self.data),
            "--auth-local=trust",
            f"--auth-host={host_auth}",
            "-U",
            OWNER,
        )

    def _as_owner(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", OWNER, "--", *argv],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_owner(
            _bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.connect_as_owner().close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def connect_as_owner(self):
        """A connection over the unix socket (trusted whatever `host_auth` says)."""
        return psycopg2.connect(
            host=str(self.sockets), port=self.port, user=OWNER, dbname="postgres"
        )

    def stop(self) -> None:
        self._as_owner(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def settings(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables for its `postgres` database."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": "postgres",
            "DAGSTER_PG_USERNAME": OWNER,
            "DAGSTER_PG_PASSWORD": "",
        }

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
