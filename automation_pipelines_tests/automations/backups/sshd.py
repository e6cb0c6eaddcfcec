"""A real OpenSSH server on loopback for the SFTP destination tests: Debian's sshd on a free port
of 127.0.0.1 with its own host key, key-only logins for the current user, the internal SFTP
server, and every file (keys, known_hosts, config, pid file, log) under one folder.

`stop()` ends the listener and every session it forked (sshd gives each connection its own
session, outside the listener's process group), so a test can cut a transfer half-way and no
process outlives the test.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import time
from pathlib import Path

from automation_pipelines.local_stack import free_port
from automation_pipelines_tests.conftest import require_program

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
SSH = Path("/usr/bin/ssh")
SFTP = Path("/usr/bin/sftp")
#: sshd running as root refuses to start without its privilege-separation folder, which
#: Debian's ssh service creates when it starts (it is disabled here: `make restic`).
PRIVSEP_DIR = Path("/run/sshd")


def require_openssh() -> None:
    """Skip (or fail where CI forbids skipping) without Debian's OpenSSH server and client."""
    require_program(SSHD, "openssh-server")
    for program in (SSH_KEYGEN, SSH, SFTP):
        require_program(program, "openssh-client")


def keygen(path: Path) -> Path:
    """A new ed25519 key pair without a passphrase at `path` and `path`.pub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def _children() -> dict[int, list[int]]:
    """Every process's children, read from /proc."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found.setdefault(parent, []).append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, as they are now."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Sshd:
    """sshd -D -e -f <config> on 127.0.0.1:<port>; `subsystem` is the sftp server it runs
    (`internal-sftp -P statvfs,fstatvfs` plays a server without the free-space extension)."""

    def __init__(self, root: Path, subsystem: str = "internal-sftp") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = keygen(root / "host_ed25519")
        self.client_key = keygen(root / "client keys" / "id_ed25519")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text((root / "client keys" / "id_ed25519.pub").read_text())
        self.known_hosts = root / "known_hosts"
        host_key = " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
        self.pid_file = root / "sshd.pid"
        self.log = root / "sshd.log"
        self.config = root / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f'HostKey "{self.host_key}"',
                    f'PidFile "{self.pid_file}"',
                    f'AuthorizedKeysFile "{self.authorized_keys}"',
                    f"AllowUsers {self.user}",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    f"Subsystem sftp {subsystem}",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen | None = None

    def ssh_command(self, key: Path | None = None, known_hosts: Path | None = None) -> str:
        """The `sftp.command` restic runs: the client key only, the host key checked against
        the known_hosts written from it, never a prompt, no ~/.ssh/config."""
        options = [
            "-F none",
            f"-i '{key or self.client_key}'",
            f"-p {self.port}",
            "-o IdentitiesOnly=yes",
            f"-o UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o BatchMode=yes",
            "-o ConnectTimeout=10",
        ]
        return f"{SSH} {' '.join(options)} {self.user}@127.0.0.1 -s sftp"

    def location(self, path: Path) -> str:
        """The restic URL of the folder `path` on this server."""
        return f"sftp:{self.user}@127.0.0.1:{path}"

    def start(self, timeout: float = 15.0) -> Sshd:
        """Start sshd and return once it listens."""
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while f"port {self.port}." not in self.log.read_text()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {self.log.read_text()[offset:]}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGKILL every session sshd forked and end the listener: open connections drop at
        once, as when the server goes away."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGSTOP)  # no new session while the old ones end
            for _round in range(3):
                for pid in descendants(process.pid):
                    _kill(pid)
            process.kill()
        process.wait(timeout=30)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
