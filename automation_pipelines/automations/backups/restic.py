"""The restic command line, as the backups automation calls it.

restic does the storage: encryption, deduplication, packs, locks, remote backends. This module
only runs it with the right flags, reads its JSON, and turns its failures into one sentence each.
The repository password reaches restic through its environment (RESTIC_PASSWORD or
RESTIC_PASSWORD_FILE) and nowhere else: never its argv (which `ps` shows), never a log line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from automation_pipelines.automations.backups.sources import BackupError

#: Remote backends restic understands; anything else is a local folder.
REMOTE_SCHEMES = ("sftp:", "s3:", "rest:", "b2:", "azure:", "gs:", "swift:", "rclone:")
#: Inherited variables that would change which repository or password restic uses.
_INHERITED = ("RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE", "RESTIC_PASSWORD")
_INHERITED += ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_KEY_HINT")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class ResticError(BackupError):
    """restic refused or failed; the message is restic's own reason, in one sentence."""


class RepositoryMissing(ResticError):
    """No repository at the location: never initialised, deleted, or the wrong path."""


class WrongPassword(ResticError):
    """The repository exists but no key opens with the password given."""


def is_remote(location: str) -> bool:
    return location.startswith(REMOTE_SCHEMES)


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
        the password (or the file holding it). Times are UTC so `--time` means what it says."""
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
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
        try:
            done = subprocess.run(
                self.command(*args),
                cwd=cwd,
                env=self.env(password_file),
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout_seconds,
            )
        except FileNotFoundError:
            raise ResticError(
                f"{self.binary} is not installed (Debian's package restic; `make install`)"
            ) from None
        if done.returncode not in ok_codes:
            raise self.error(done.stderr)
        return done

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
        return ResticError(f"repository {self.location}: restic: {_one_sentence(stderr)}")

    def json_lines(self, *args: str, **kwargs: Any) -> list[Any]:
        found = []
        for line in self.run("--json", *args, **kwargs).stdout.splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

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
        return [
            ResticSnapshot(
                id=item["id"],
                time=parse_time(item["time"]),
                tags=tuple(item.get("tags") or ()),
                paths=tuple(item.get("paths") or ()),
                hostname=item.get("hostname", ""),
            )
            for item in listed or []
        ]

    def ls(self, snapshot: str) -> list[dict]:
        """Every node of a snapshot (files, folders, links) with path, size and mtime."""
        nodes = self.json_lines("ls", "--no-lock", snapshot, timeout=1800)
        return [n for n in nodes if n.get("struct_type") == "node"]

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
        the byte count that went in. restic's output goes to a temp file, so a full pipe can
        never stall the stream."""
        args = [*self._backup_args(tags, moment), "--stdin", "--stdin-filename", filename]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                process = subprocess.Popen(
                    self.command(*args),
                    env=self.env(),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                )
            except FileNotFoundError:
                raise ResticError(f"{self.binary} is not installed") from None
            count = 0
            try:
                while chunk := stream.read(1 << 20):
                    process.stdin.write(chunk)
                    count += len(chunk)
            except BrokenPipeError:
                pass
            finally:
                process.stdin.close()
                returncode = process.wait(timeout=self.timeout_seconds)
            out.seek(0)
            err.seek(0)
            if returncode != 0:
                raise self.error(err.read().decode(errors="replace"))
            return _summary(out.read().decode(), self.location), count

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
        for line in done.stdout.splitlines():
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
        try:
            subprocess_done = subprocess.run(
                self.command(*args),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout_seconds,
            )
        except FileNotFoundError:
            raise ResticError(f"{self.binary} is not installed") from None
        if subprocess_done.returncode == 0:
            return []
        text = subprocess_done.stdout + "\n" + subprocess_done.stderr
        if "unable to create lock" in text or "repository is already locked" in text:
            raise self.error(subprocess_done.stderr)
        if "wrong password" in text or "Is there a repository" in text:
            raise self.error(subprocess_done.stderr)
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


def glob_escape(path: str) -> str:
    """An exact path as a restic include pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", path)


def _summary(stdout: str, location: str) -> dict:
    for line in reversed(stdout.splitlines()):
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
