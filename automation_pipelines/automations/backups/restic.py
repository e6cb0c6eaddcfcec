"""The restic command line, as the backups automation calls it.

restic does the storage: encryption, deduplication, packs, locks, remote backends. This module
only runs it with the right flags, reads its JSON, and turns its failures into one sentence each.
The repository password reaches restic through its environment (RESTIC_PASSWORD or
RESTIC_PASSWORD_FILE) and nowhere else: never its argv (which `ps` shows), never a log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from automation_pipelines.automations.backups.sources import BackupError

#: Remote backends restic understands; anything else is a local folder.
REMOTE_SCHEMES = ("sftp:", "s3:", "rest:", "b2:", "azure:", "gs:", "swift:", "rclone:")
#: Inherited variables that would change which repository or password restic uses.
_INHERITED = ("RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE", "RESTIC_PASSWORD")
_INHERITED += ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_KEY_HINT")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: The size of the packs restic 0.14 writes (its default --pack-size): a destination with less
#: free space than this cannot take restic's next write.
PACK_BYTES = 16 * 1024 * 1024
#: restic's retry notice for a failed write ("Save(<data/2c67377e8e>) returned error, retrying
#: after 552ms: Write: sftp: ..."); restic retries each write ten times over about a minute.
_SAVE_RETRY = re.compile(r"^(Save\(<[a-z]+/[0-9a-f]+>\)) returned error, retrying after [^:]+: ")
_NO_SPACE = "no space left on device"
#: How long restic may take to clean up (remove its lock) after SIGINT before it is killed.
_STOP_GRACE_SECONDS = 15.0


class ResticError(BackupError):
    """restic refused or failed; the message is restic's own reason, in one sentence."""


class RepositoryMissing(ResticError):
    """No repository at the location: never initialised, deleted, or the wrong path."""


class WrongPassword(ResticError):
    """The repository exists but no key opens with the password given."""


class DestinationFull(ResticError):
    """A write failed and the destination has no room for restic's next one."""


class SpaceUnknown(BackupError):
    """The destination's free space cannot be measured; the message says why."""


@dataclass(frozen=True)
class FreeSpace:
    """The file system holding a repository, in bytes: its size and what its user may still
    write (statvfs's f_blocks and f_bavail, as `shutil.disk_usage` reads them locally)."""

    total: int
    free: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


def _without_restic_settings() -> dict[str, str]:
    """This process's environment without the repository and its password: what a command
    other than restic (ssh, sftp) gets."""
    return {k: v for k, v in os.environ.items() if k not in _INHERITED}


def is_remote(location: str) -> bool:
    return location.startswith(REMOTE_SCHEMES)


def sftp_parts(location: str) -> tuple[str, str, str, str]:
    """(user, host, port, path) of an `sftp:user@host:path` or `sftp://user@host:port/path`
    location, read as restic reads it (empty when not given; a path without a leading `/` is
    relative to the login's home)."""
    if location.startswith("sftp://"):
        url = urlsplit(location)
        if not url.path:
            raise ValueError(f"{location}: no folder given")
        port = str(url.port) if url.port else ""
        return url.username or "", url.hostname or "", port, posixpath.normpath(url.path[1:])
    if not location.startswith("sftp:"):
        raise ValueError(f"{location}: not an sftp: location")
    target, colon, path = location.removeprefix("sftp:").partition(":")
    if not colon:
        raise ValueError(f"{location}: expected sftp:user@host:path")
    user, at, host = target.partition("@")
    if not at:
        user, host = "", target
    return user, host, "", posixpath.normpath(path)


def split_command(command: str) -> list[str]:
    """`sftp.command` split into arguments as restic splits it (its SplitShellArgs), which is
    not the shell's way: whitespace separates, and a quote starts or ends an argument of its
    own (`-i '/a b'` gives `-i`, `/a b`; `-o X='a b'` gives `-o`, `X=`, `a b`)."""
    args: list[str] = []
    quote = last = ""
    start = -1
    for index, char in enumerate(command):
        if last != "\\" and ((quote and char == quote) or (not quote and char in "\"'")):
            quote = "" if quote else char
            split = True
        else:
            last = char
            split = not quote and (char == "\\" or char.isspace())
        if split:
            if start >= 0:
                args.append(command[start:index])
                start = -1
        elif start == -1:
            start = index
    if start >= 0:
        args.append(command[start:])
    if quote:
        raise ValueError(f"sftp.command: a {quote} quote is not closed")
    if not args:
        raise ValueError("sftp.command is empty")
    return args


def _direct_quote(arg: str) -> str:
    """One argument of OpenSSH's `sftp -D` command line (its argv_split: double quotes, with
    backslash before a backslash or a quote)."""
    return '"' + re.sub(r'([\\"\'])', r"\\\1", arg) + '"'


def _sftp_quote(path: str) -> str:
    """A path as one argument of an sftp batch command."""
    return '"' + re.sub(r'([\\"])', r"\\\1", path) + '"'


def parse_time(value: str) -> datetime:
    """restic's RFC 3339 times carry nanoseconds and an offset; Python takes microseconds."""
    match = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        raise ValueError(f"not a restic time: {value!r}")
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}").astimezone(UTC)


@dataclass(frozen=True)
class ResticSnapshot:
    """One snapshot as `restic snapshots --json` lists it."""

    id: str
    time: datetime
    tags: tuple[str, ...]
    paths: tuple[str, ...]
    hostname: str

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def tag(self, prefix: str) -> str | None:
        """The value of the first `prefix:value` tag."""
        for tag in self.tags:
            if tag.startswith(f"{prefix}:"):
                return tag[len(prefix) + 1 :]
        return None


def snapshot_from(item: dict) -> ResticSnapshot:
    """A snapshot from restic's JSON (`snapshots`, `ls`, or the snapshot file itself)."""
    return ResticSnapshot(
        id=item["id"],
        time=parse_time(item["time"]),
        tags=tuple(item.get("tags") or ()),
        paths=tuple(item.get("paths") or ()),
        hostname=item.get("hostname", ""),
    )


@dataclass(frozen=True)
class Lock:
    """A lock file in the repository: who holds it and since when."""

    id: str
    time: datetime
    exclusive: bool
    hostname: str
    username: str
    pid: int


def _one_sentence(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line.removeprefix("Fatal: ") for line in lines if line.startswith("Fatal:")]
    # restore's first error per file is the cause; what follows for that file is its effect.
    ignored = [
        line
        for line in lines
        if line.startswith("ignoring error for") and "no such file or directory" not in line
    ]
    chosen = [*ignored[:2], *fatal] or lines[-3:]
    return "; ".join(chosen)[:500] or "no output"


@dataclass(frozen=True)
class Repository:
    """A restic repository and how to open it. `password` is kept out of repr; when it is None,
    `password_file` names a file holding it (restic reads the file itself)."""

    location: str
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    binary: str = "restic"
    cache_dir: str | None = None
    compression: str = "auto"
    options: tuple[str, ...] = ()
    timeout_seconds: float = 4 * 3600.0

    def env(self, password_file: str | None = None) -> dict[str, str]:
        """restic's environment: this process's, without inherited repository settings, plus
        the password (or the file holding it). Times are UTC so `--time` means what it says.
        A variable this process read the password from (BACKUP_RESTIC_PASSWORD) stays out:
        restic hands its environment on to the ssh it starts for an SFTP destination."""
        env = {
            k: v
            for k, v in _without_restic_settings().items()
            if self.password is None or v != self.password
        }
        if password_file is not None:
            env["RESTIC_PASSWORD_FILE"] = password_file
        elif self.password is not None:
            env["RESTIC_PASSWORD"] = self.password
        elif self.password_file is not None:
            env["RESTIC_PASSWORD_FILE"] = self.password_file
        if self.cache_dir:
            env["RESTIC_CACHE_DIR"] = self.cache_dir
        env["TZ"] = "UTC"
        return env

    def command(self, *args: str) -> list[str]:
        options = [item for option in self.options for item in ("-o", option)]
        return [self.binary, "--repo", self.location, *options, *args]

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        timeout: float | None = None,
        password_file: str | None = None,
        stdin: IO[bytes] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> subprocess.CompletedProcess:
        """Run restic and return what it did; raise `ResticError` with its reason on failure."""
        done, _count = self._execute(
            args, cwd=cwd, timeout=timeout, password_file=password_file, stdin=stdin
        )
        if done.returncode not in ok_codes:
            raise self.error(done.stderr)
        return done

    def _execute(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        timeout: float | None = None,
        password_file: str | None = None,
        stdin: IO[bytes] | None = None,
        feed: IO[bytes] | None = None,
    ) -> tuple[subprocess.CompletedProcess, int]:
        """Run restic, reading its stderr as it comes: a failed write on a full destination
        stops restic at once (`DestinationFull`) instead of after its minute of retries per
        write. `feed` is streamed to restic's stdin; returns what it did and the bytes fed.
        stdout goes to a temp file, so a full pipe can never stall restic or the feed."""
        limit = timeout or self.timeout_seconds
        with tempfile.TemporaryFile() as out:
            try:
                process = subprocess.Popen(
                    self.command(*args),
                    cwd=cwd,
                    env=self.env(password_file),
                    stdin=subprocess.PIPE
                    if feed is not None
                    else (stdin if stdin is not None else subprocess.DEVNULL),
                    stdout=out,
                    stderr=subprocess.PIPE,
                )
            except FileNotFoundError:
                raise ResticError(
                    f"{self.binary} is not installed (Debian's package restic; `make install`)"
                ) from None
            watch = _Watch(self, process)
            # A timer kills restic at the limit, so the wait below blocks in waitpid and returns
            # the moment restic exits (a wait with a timeout polls, up to 50 ms late each time).
            expired = threading.Event()
            timer = threading.Timer(limit, lambda: (expired.set(), process.kill()))
            timer.daemon = True
            timer.start()
            count = 0
            try:
                if feed is not None:
                    count = _feed(feed, process.stdin)
                returncode = process.wait()
            finally:
                timer.cancel()
                if process.poll() is None:
                    process.kill()
                    process.wait()
                watch.join()
            if expired.is_set():
                raise ResticError(
                    f"repository {self.location}: restic {_verb(args)} did not finish "
                    f"within {limit:g} s"
                )
            if watch.full:
                raise DestinationFull(f"repository {self.location}: {watch.full}")
            out.seek(0)
            stdout = out.read().decode(errors="replace")
        done = subprocess.CompletedProcess(process.args, returncode, stdout, watch.stderr)
        return done, count

    def no_room(self, line: str) -> str:
        """The sentence for a full destination when restic's stderr `line` reports a write
        that failed for want of room, else "". restic names a local disk's lack of room; an
        SFTP server often says only "Failure", so a retried write is judged by the room left
        (measured as the health check measures it): less than one pack means full."""
        line = line.strip()
        retry = _SAVE_RETRY.match(line)
        said = f"{retry.group(1)}: {line[retry.end() :]}" if retry else line.removeprefix("Fatal: ")
        if not retry and _NO_SPACE not in line:
            return ""
        if _NO_SPACE in line and not (retry or self._names_destination(line)):
            return ""  # a file restic reads or restores, not the repository
        space = self._space()
        if space is not None and space.free < PACK_BYTES:
            return (
                f"the destination is full: {space.free / 1e6:.1f} MB free of "
                f"{space.total / 1e6:.1f} MB, less than the {PACK_BYTES / 1e6:.1f} MB restic "
                f"writes at a time (restic: {said})"
            )
        if _NO_SPACE in line:
            return f"the destination is full (restic: {said})"
        return ""  # room enough: a passing fault, restic's retries are for it

    def _names_destination(self, line: str) -> bool:
        if self.location.startswith("sftp:"):
            try:
                return sftp_parts(self.location)[3] in line
            except ValueError:
                return False
        return not is_remote(self.location) and self.location in line

    def _space(self) -> FreeSpace | None:
        """The destination's size and free space, None where it cannot be measured."""
        try:
            if self.location.startswith("sftp:"):
                return self.free_space(timeout=60)
            if is_remote(self.location):
                return None
            path = Path(self.location)
            while not path.exists() and path != path.parent:
                path = path.parent
            usage = shutil.disk_usage(path)
        except (SpaceUnknown, OSError):
            return None
        return FreeSpace(total=usage.total, free=usage.free)

    def error(self, stderr: str) -> ResticError:
        """The right exception for restic's complaint."""
        if "Is there a repository at the following location?" in stderr or (
            "unable to open config file" in stderr
        ):
            return RepositoryMissing(f"repository {self.location} does not exist")
        if "wrong password or no key found" in stderr:
            return WrongPassword(
                f"repository {self.location} does not open with the configured password"
            )
        ssh = self._ssh_failure(stderr)
        if ssh:
            return ResticError(f"repository {self.location}: {ssh}")
        return ResticError(f"repository {self.location}: restic: {_one_sentence(stderr)}")

    def _ssh_failure(self, stderr: str) -> str:
        """Why the SFTP session could not start or was lost, in ssh's words; "" when restic
        failed for another reason. restic may exit before it printed all its ssh said, so a
        session that did not start (or was lost without a word) is asked about once more,
        with the same ssh command."""
        if not self.location.startswith("sftp:") or not any(m in stderr for m in _SESSION_LOST):
            return ""
        said = [
            m.group(1).strip() for line in stderr.splitlines() if (m := _SUBPROCESS.match(line))
        ]
        if _NO_SESSION in stderr or not said:
            said = self._ask_ssh() or said
        return _ssh_sentence(said)

    def _ask_ssh(self) -> list[str]:
        """What the ssh command says on stderr when it fails ([] when it connects)."""
        try:
            again = subprocess.run(
                self.ssh_command(),
                env=_without_restic_settings(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return []
        if again.returncode == 0:
            return []
        return [line.strip() for line in again.stderr.splitlines() if line.strip()]

    def json_lines(self, *args: str, **kwargs: Any) -> list[Any]:
        """restic's JSON output, one value per line. Lines end at "\n" alone: a name may hold
        characters `str.splitlines` also breaks at (U+0085 and the like)."""
        found = []
        for line in self.run("--json", *args, **kwargs).stdout.split("\n"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    # -- The destination --------------------------------------------------------------------

    def option(self, name: str) -> str | None:
        """The value of the extended option `name` (`-o name=value`; the last one counts)."""
        found = None
        for option in self.options:
            key, equals, value = option.partition("=")
            if equals and key.strip() == name:
                found = value
        return found

    def ssh_command(self) -> list[str]:
        """The command restic starts to reach an `sftp:` repository: its `sftp.command` option,
        else the `ssh host [-p port] [-l user] [sftp.args] -s sftp` restic builds from the
        location (sftp.args: restic 0.17 and later)."""
        command = self.option("sftp.command")
        if command:
            return split_command(command)
        user, host, port, _path = sftp_parts(self.location)
        args = ["ssh", host, *(["-p", port] if port else []), *(["-l", user] if user else [])]
        extra = self.option("sftp.args")
        return [*args, *(split_command(extra) if extra else []), "-s", "sftp"]

    def free_space(self, sftp: str = "sftp", timeout: float = 120.0) -> FreeSpace:
        """Size and free space of the file system holding an `sftp:` repository, asked of the
        server with OpenSSH's sftp client (`df`, the statvfs@openssh.com extension) over the
        same command restic uses, so the same key, host key and login apply. Raises
        `SpaceUnknown` with the reason when it cannot be measured: another kind of storage, a
        server without that extension, a folder that does not exist."""
        if not self.location.startswith("sftp:"):
            kind = self.location.split(":", 1)[0]
            raise SpaceUnknown(f"{kind} storage reports no free space")
        try:
            path = sftp_parts(self.location)[3]
            direct = " ".join(_direct_quote(arg) for arg in self.ssh_command())
        except ValueError as exc:
            raise SpaceUnknown(str(exc)) from None
        try:
            done = subprocess.run(
                [sftp, "-q", "-b", "-", "-D", direct],
                input=f"df {_sftp_quote(path)}\n",
                env=_without_restic_settings(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except FileNotFoundError:
            raise SpaceUnknown(
                f"{sftp} is not installed (Debian's package openssh-client)"
            ) from None
        except subprocess.TimeoutExpired:
            raise SpaceUnknown(
                f"the server did not answer sftp's df within {timeout:g} s"
            ) from None
        figures = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s*$", done.stdout, re.M)
        if done.returncode != 0 or figures is None:
            why = _one_sentence(done.stderr) if done.stderr.strip() else "no figures"
            raise SpaceUnknown(f"sftp's df of {path} failed: {why}")
        # df prints KiB: f_frsize * f_blocks / 1024 (size) and f_frsize * f_bavail / 1024 (avail).
        return FreeSpace(total=int(figures.group(1)) * 1024, free=int(figures.group(3)) * 1024)

    # -- The repository ---------------------------------------------------------------------

    def exists(self) -> bool:
        """True if a repository opens with this password; False if there is none. A wrong
        password raises: that is never a reason to create a new repository."""
        try:
            self.run("cat", "config", "--no-lock", timeout=120)
        except RepositoryMissing:
            return False
        return True

    def init(self) -> None:
        self.run("init", "--repository-version", "2", timeout=300)

    def snapshots(self, *tags: str) -> list[ResticSnapshot]:
        """Snapshots, oldest first (restic's order); with tags, only those carrying any of them."""
        args = [arg for tag in tags for arg in ("--tag", tag)]
        [listed] = self.json_lines("snapshots", "--no-lock", *args, timeout=600) or [[]]
        return [snapshot_from(item) for item in listed or []]

    def ls(self, snapshot: str) -> list[dict]:
        """Every node of a snapshot (files, folders, links) with path, size and mtime."""
        return self.listing(snapshot)[1]

    def listing(self, snapshot: str) -> tuple[ResticSnapshot | None, list[dict]]:
        """The snapshot as `restic snapshots` would list it, and every node of it."""
        lines = self.json_lines("ls", "--no-lock", snapshot, timeout=1800)
        lines = [line for line in lines if isinstance(line, dict)]
        found = [snapshot_from(line) for line in lines if line.get("struct_type") == "snapshot"]
        return (found or [None])[0], [n for n in lines if n.get("struct_type") == "node"]

    # -- Backup -----------------------------------------------------------------------------

    def _backup_args(self, tags: Sequence[str], moment: datetime | None) -> list[str]:
        args = ["backup", "--json", "--quiet", "--compression", self.compression]
        args += [arg for tag in tags for arg in ("--tag", tag)]
        if moment is not None:
            args += ["--time", moment.astimezone(UTC).strftime(TIME_FORMAT)]
        return args

    def backup_paths(
        self, cwd: Path, paths: Sequence[str], tags: Sequence[str], moment: datetime | None = None
    ) -> tuple[dict, str]:
        """Back up `paths` relative to `cwd` (`.`: the folder's content becomes the snapshot's
        root). Returns restic's summary and its warnings; exit code 3 means the snapshot was
        made but some files could not be read, which the warnings name."""
        done = self.run(*self._backup_args(tags, moment), *paths, cwd=cwd, ok_codes=(0, 3))
        warnings = _one_sentence(done.stderr) if done.returncode == 3 else ""
        return _summary(done.stdout, self.location), warnings

    def backup_stream(
        self,
        stream: IO[bytes],
        filename: str,
        tags: Sequence[str],
        moment: datetime | None = None,
    ) -> tuple[dict, int]:
        """Back up what `stream` yields as one file `/<filename>`; return restic's summary and
        the byte count that went in."""
        args = [*self._backup_args(tags, moment), "--stdin", "--stdin-filename", filename]
        done, count = self._execute(args, feed=stream)
        if done.returncode != 0:
            raise self.error(done.stderr)
        return _summary(done.stdout, self.location), count

    # -- Retention, checks, locks -----------------------------------------------------------

    def forget(self, tag: str, keep_daily: int, keep_weekly: int, *, prune: bool) -> list[str]:
        """Apply the retention policy to the snapshots carrying `tag` (per host); return the
        ids removed. `prune` also frees the data nothing references any more."""
        args = ["forget", "--tag", tag, "--group-by", "host"]
        args += ["--keep-daily", str(keep_daily), "--keep-weekly", str(keep_weekly)]
        if prune:
            args.append("--prune")
        done = self.run("--json", *args)
        removed: list[str] = []
        for line in done.stdout.split("\n"):
            try:
                groups = json.loads(line)
            except ValueError:
                continue  # prune's own report follows the JSON
            if isinstance(groups, list):
                for group in groups:
                    removed += [item["id"] for item in group.get("remove") or []]
        return removed

    def forget_ids(self, *ids: str) -> None:
        self.run("forget", *ids)

    def check(self, read_data_subset: str | None = None) -> list[str]:
        """What `restic check` found wrong, one line each (empty when clean)."""
        args = ["check"] + ([f"--read-data-subset={read_data_subset}"] if read_data_subset else [])
        done, _count = self._execute(args)
        if done.returncode == 0:
            return []
        text = done.stdout + "\n" + done.stderr
        if "unable to create lock" in text or "repository is already locked" in text:
            raise self.error(done.stderr)
        if "wrong password" in text or "Is there a repository" in text:
            raise self.error(done.stderr)
        return _check_problems(text)

    def locks(self) -> list[Lock]:
        """The repository's locks, read without taking one."""
        ids = self.run("list", "locks", "--no-lock", timeout=300).stdout.split()
        found = []
        for ident in ids:
            try:
                raw = json.loads(self.run("cat", "lock", ident, "--no-lock", timeout=120).stdout)
            except (ResticError, ValueError):
                continue  # removed between the listing and the read: its holder finished
            found.append(
                Lock(
                    id=ident,
                    time=parse_time(raw["time"]),
                    exclusive=bool(raw.get("exclusive")),
                    hostname=raw.get("hostname", ""),
                    username=raw.get("username", ""),
                    pid=int(raw.get("pid", 0)),
                )
            )
        return found

    def unlock_stale(self) -> None:
        """`restic unlock`: removes only the locks restic itself proves stale (not refreshed
        for 30 minutes, or held by a process of this host that is gone)."""
        self.run("unlock", timeout=300)

    # -- Restore ----------------------------------------------------------------------------

    def restore(self, snapshot: str, target: Path, includes: Iterable[str] = ()) -> None:
        """Restore into `target` and read every restored file back against the content hashes
        the snapshot holds (`--verify`)."""
        args = ["restore", snapshot, "--target", str(target), "--verify", "--no-lock"]
        args += [arg for path in includes for arg in ("--include", glob_escape(path))]
        self.run(*args)

    # -- Keys -------------------------------------------------------------------------------

    def list_keys(self) -> list[dict]:
        [listed] = self.json_lines("key", "list", timeout=120) or [[]]
        return listed

    def key_add(self, new_password_file: Path) -> None:
        self.run("key", "add", "--new-password-file", str(new_password_file), timeout=300)

    def key_remove(self, key_id: str, *, password_file: str) -> None:
        self.run("key", "remove", key_id, password_file=password_file, timeout=300)


class _Watch:
    """Reads a restic process's stderr on a thread as it comes, and stops restic (SIGINT: it
    removes its lock; SIGKILL if it lingers) at the first write its destination has no room
    for. `full` is then the sentence saying so."""

    def __init__(self, repo: Repository, process: subprocess.Popen) -> None:
        self.repo = repo
        self.process = process
        self.lines: list[str] = []
        self.full = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if not self.full and (_NO_SPACE in line or _SAVE_RETRY.match(line)):
                self.full = self.repo.no_room(line)
                if self.full:
                    self._stop()
        self.process.stderr.close()

    def _stop(self) -> None:
        try:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
        except OSError:
            pass

    def join(self) -> None:
        self._thread.join()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def _feed(stream: IO[bytes], into: IO[bytes]) -> int:
    """Copy `stream` into restic's stdin and close it; the bytes copied (restic may stop
    reading early: it failed, and says why on stderr)."""
    count = 0
    try:
        while chunk := stream.read(1 << 20):
            into.write(chunk)
            count += len(chunk)
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            into.close()
    return count


def _verb(args: Sequence[str]) -> str:
    return next((arg for arg in args if not arg.startswith("-")), "")


#: What restic prints for its ssh subprocess: "subprocess <program>: <ssh's stderr line>".
_SUBPROCESS = re.compile(r"^subprocess [^:]+: (.+)$")
_NO_SESSION = "unable to start the sftp session"
_SESSION_LOST = (_NO_SESSION, "ssh command exited", "connection lost")
_SSH_MEANING = (
    ("Permission denied", "the SSH server refused the login"),
    ("Host key verification failed", "the SSH server's host key is not the one in known_hosts"),
    ("Connection refused", "nothing accepts SSH connections there"),
    ("closed by remote host", "the SSH server closed the connection"),
    ("Broken pipe", "the SSH connection broke off"),
    ("Connection reset", "the SSH connection broke off"),
    ("timed out", "the SSH server did not answer"),
)


def _ssh_sentence(said: list[str]) -> str:
    """ssh's stderr lines as one sentence: what its last line means, then the line itself (and
    a missing key file, which ssh only warns about before the refusal it causes)."""
    said = [line for line in said if line and not line.startswith("Warning: Permanently added")]
    if not said:
        return ""
    last = said[-1].removeprefix("ssh: ").rstrip(".")
    missing_key = [line.rstrip(".") for line in said[:-1] if "Identity file" in line][:1]
    meaning = next((text for marker, text in _SSH_MEANING if marker in last), "ssh failed")
    return "; ".join([f"{meaning}: {last}", *missing_key])


def glob_escape(path: str) -> str:
    """An exact path as a restic include pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", path)


def _summary(stdout: str, location: str) -> dict:
    for line in reversed(stdout.split("\n")):
        if line.startswith("{") and '"summary"' in line:
            return json.loads(line)
    raise ResticError(f"repository {location}: restic backup printed no summary")


_PACK = re.compile(r"[0-9a-f]{64}")
_ERROR_STARTS = ("error", "Load(", "pack ", "tree ", "blob ")


def _check_problems(text: str) -> list[str]:
    """restic check's errors, each shortened to one line with short ids."""
    problems = []
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        if not line or line.startswith(("Fatal: repository contains errors", "[", "using ")):
            continue
        if line.startswith("Pack ID does not match"):
            want = _PACK.findall(line)
            problems.append(
                f"pack {want[0][:12]}… does not match its ID: its content changed on the disk"
                if want
                else line
            )
        elif line.startswith("error for tree"):
            detail = lines[index + 1] if index + 1 < len(lines) else ""
            problems.append(f"{line.rstrip(':')}: {_shorten(detail)}")
        elif "not referenced in any index" in line or line.startswith(_ERROR_STARTS):
            problems.append(_shorten(line))
        elif line.startswith("Fatal:"):
            problems.append(line.removeprefix("Fatal: "))
    return problems or ["restic check failed without naming the problem"]


def _shorten(line: str) -> str:
    return _PACK.sub(lambda m: m.group(0)[:12] + "…", line)


def installed(binary: str = "restic") -> bool:
    return shutil.which(binary) is not None
