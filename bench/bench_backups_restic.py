"""backups_restic: this project's backups on restic against the plain `restic` CLI, same tree.

Side by side in one run, each with a repository of its own made by the same untimed
`restic init --repository-version 2` (Debian's /usr/bin/restic for both):
- this backup: `back_up` with the tree as its one FolderSource, then `list_runs` and `restore`
  of the newest run. Its backup time is the whole call: restic's backup plus the project's
  checks around it (the repository opens, no dead lock, a free run id: the bench's
  repository holds only this backup's snapshots, so the id comes from what this host knows of
  them, without restic) and the verification of the new snapshot (its listing is read back
  and must hold every file and byte restic read). Its restore time includes reading the run
  list (from what this host knows, as for a restore on the host that made the backups),
  restic reading every restored file back against the snapshot's hashes (`--verify`), the
  size check of every file and its rename into place;
- plain restic, as a user types it in the tree's folder: `restic backup --json --quiet
  --compression auto .` (the flags this project passes, without its two tags) and `restic
  restore latest --target <empty folder> --verify` (the verification this project's restore
  asks for, so both read every restored file back).

What is measured, per round: the first backup of the tree; then 7 "days", each a seeded 1%
change of the files (about 4 in 5 of them rewritten in part or grown at the end, and as many
added as deleted; the same files on the same day for both) followed by a backup of each
tool, so 8 snapshots; the size on disk of each repository (allocated blocks of its files, as
`du`) after every backup; last, a full restore of the newest snapshot into an empty folder.
Targets: this backup's second backup (day 1) takes at most 0.25x the time of its first; its
repository after the 8 snapshots is at most 1.3x its size after the first; its backup and its
restore each take at most 1/0.9 of plain restic's time (throughput at least 0.9x). Plain
restic's figures are shown beside each. No retention runs: the storage is restic's
deduplication alone, the same for both.

Why the comparison is fair: both read the same source folder at the same path (a copy of the
kept tree, made again each round), from the page cache: before every timed backup the bench
calls sync and reads every file of the source once; before every timed restore it calls sync
and reads the repository about to be restored. Both get the password from the same file
(RESTIC_PASSWORD_FILE) and each a fresh restic cache of its own per round (RESTIC_CACHE_DIR
under bench/.data). The tools take turns in alternating order from round to round, and the
default number of rounds is even (BENCH_BACKUPS_RESTIC_ROUNDS, default 4), so each goes first
as often as the other: whichever tool backs up first in a round is faster here (by 0.3 to
0.9 s of about 6 s, in the latest runs). Each figure is the median over the rounds, and ratios
are of those medians. Time is wall-clock seconds from the call (or the start of the restic
process) to its return; throughput is the tree's file bytes per second (1 MB = 10^6 bytes).
No tool is pinned to CPUs; the header shows the machine's load at the start and the end.

The tree is bench_backups's deterministic mixed tree (text-like, random and repetitive files
of 2 KB to 4 MB), by default the very tree that bench uses (1.1 GB, about 4,000 files, kept in
bench/.data/backups/tree). Every restic command that opens a repository first derives its key
from the password (scrypt, calibrated by `restic init` to a good part of a second); this
backup verifies the new snapshot by reading it back in its own process, with the key derived
while restic backs up, so it opens the repository with restic once, like plain restic. With
BENCH_BACKUPS_RESTIC_MB set to another size, a tree of that size is kept in
bench/.data/backups_restic/tree instead; the source copy, the repositories, the caches and
the restores (bench/.data/backups_restic/run) are removed after. Check: every restore matches
the source file by file (SHA-256), and every backup after the first found its parent snapshot
(so it is incremental).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from automation_pipelines.automations.backups.engine import back_up, list_runs, restore
from automation_pipelines.automations.backups.restic import Repository
from automation_pipelines.automations.backups.sources import FolderSource
from bench import bench_backups
from bench.bench_backups import Tree, cpu_model, digest, ensure_tree, memory_available, warm
from bench.tables import load_average, print_columns, verdict

MEGABYTES = int(os.environ.get("BENCH_BACKUPS_RESTIC_MB", str(bench_backups.MEGABYTES)))
ROUNDS = int(os.environ.get("BENCH_BACKUPS_RESTIC_ROUNDS", "4"))
RESTIC = "/usr/bin/restic"
DAYS = 7
CHANGED_SHARE = 0.01
SEED = 20260317
SECOND_TARGET = 0.25  # second backup's time, x the first's
STORAGE_TARGET = 1.3  # repository after every day, x after the first backup
SPEED_TARGET = 0.9  # x plain restic's throughput
DATA = Path(__file__).parent / ".data" / "backups_restic"
TREE = bench_backups.TREE if MEGABYTES == bench_backups.MEGABYTES else DATA / "tree"
WORK = DATA / "run"
SOURCE = WORK / "source"
PASSWORD = WORK / "password"
OURS, PLAIN = "this backup", "plain restic"


def main() -> None:
    started = time.perf_counter()
    if not os.access(RESTIC, os.X_OK):
        raise SystemExit(f"{RESTIC} is missing: `make install` installs Debian's restic")
    tree = ensure_tree(TREE, MEGABYTES)
    print(describe_machine(tree), flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    PASSWORD.write_text("bench-backups-restic\n")
    try:
        runs = measure(tree)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print_table(runs, tree)
    ok = print_checks(runs, tree)
    print(f"load average at the end: {load_average()}")
    print(f"(whole benchmark: {time.perf_counter() - started:.0f} s)")
    if not ok:
        raise SystemExit(1)


@dataclass
class Round:
    """One tool's figures in one round."""

    tool: str
    number: int
    backups: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    restore: float = 0.0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the tools


@dataclass
class Tool:
    """One tool's repository, cache and restore folder for one round."""

    name: str
    home: Path

    @property
    def repository(self) -> Path:
        return self.home / "repository"

    @property
    def restored(self) -> Path:
        """Where the source's files land: this backup restores under the source's name."""
        target = self.home / "restore"
        return target / "tree" if self.name == OURS else target

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env["RESTIC_PASSWORD_FILE"] = str(PASSWORD)
        env["RESTIC_CACHE_DIR"] = str(self.home / "cache")
        return env

    def restic(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            [RESTIC, "--repo", str(self.repository), *args],
            cwd=cwd,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"{self.name}: restic {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def project_repository(self) -> Repository:
        return Repository(
            str(self.repository),
            password_file=str(PASSWORD),
            binary=RESTIC,
            cache_dir=str(self.home / "cache"),
        )

    def back_up(self) -> None:
        if self.name == OURS:
            back_up(
                self.project_repository(),
                [FolderSource("tree", SOURCE)],
                destination=self.home,
            )
        else:
            self.restic("backup", "--json", "--quiet", "--compression", "auto", ".", cwd=SOURCE)

    def restore(self) -> None:
        target = self.home / "restore"
        if self.name == OURS:
            repo = self.project_repository()
            restore(repo, list_runs(repo)[0], target)
        else:
            self.restic("restore", "latest", "--target", str(target), "--verify")

    def snapshots(self) -> list[dict]:
        return json.loads(self.restic("snapshots", "--json", "--no-lock"))


def timed(action: Callable[[], None]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


# ---------------------------------------------------------------- the runs


def measure(tree: Tree) -> list[Round]:
    print(
        f"\n{tree.files:,} files, {tree.megabytes:,.1f} MB in {TREE}\n{ROUNDS} round(s) of a "
        f"first backup, {DAYS} daily backups each after a {CHANGED_SHARE:.0%} change, and a "
        "full restore; the tools take turns, in alternating order from round to round",
        flush=True,
    )
    results: list[Round] = []
    for number in range(1, ROUNDS + 1):
        names = [OURS, PLAIN] if number % 2 else [PLAIN, OURS]
        results += one_round(
            number, [Tool(name, WORK / f"tool-{i}") for i, name in enumerate(names)]
        )
    return results


def one_round(number: int, tools: list[Tool]) -> list[Round]:
    """Every backup and the restore of both tools, on a fresh copy of the tree."""
    shutil.rmtree(SOURCE, ignore_errors=True)
    shutil.copytree(TREE, SOURCE)
    rounds = {tool.name: Round(tool.name, number) for tool in tools}
    for tool in tools:
        tool.home.mkdir()
        tool.restic("init", "--repository-version", "2")
    for day in range(DAYS + 1):
        change = ""
        if day:
            rewritten, added, deleted = change_files(SOURCE, day)
            change = f" after {rewritten} rewritten, {added} added, {deleted} deleted"
        for tool in tools:
            warm(SOURCE)
            rounds[tool.name].backups.append(timed(tool.back_up))
            rounds[tool.name].sizes.append(disk_usage(tool.repository))
        if day in (0, 1):
            progress(
                f"{number}. backup {day + 1}{change}",
                rounds,
                lambda r: f"{r.backups[-1]:.2f} s, repository {r.sizes[-1] / 1e6:,.1f} MB",
            )
    expected = {path: digest(SOURCE / path) for path in files_under(SOURCE)}
    for tool in tools:
        found = rounds[tool.name]
        found.problems += parentless(tool)
        warm(tool.repository)
        found.restore = timed(tool.restore)
        found.problems += differences(expected, tool.restored)
        shutil.rmtree(tool.home)
    progress(
        f"{number}. after {DAYS + 1} backups",
        rounds,
        lambda r: f"repository {r.sizes[-1] / 1e6:,.1f} MB, restore {r.restore:.2f} s",
    )
    return list(rounds.values())


def progress(what: str, rounds: dict[str, Round], figures: Callable[[Round], str]) -> None:
    print(f"  {what}: " + ", ".join(f"{n} {figures(r)}" for n, r in rounds.items()), flush=True)


def change_files(root: Path, day: int) -> tuple[int, int, int]:
    """Change CHANGED_SHARE of the files the same way for the same tree and day: most are
    rewritten in part or grown at the end, a few are added and as many deleted."""
    rng = random.Random(SEED * 100 + day)
    files = [root / path for path in files_under(root)]
    count = max(3, round(len(files) * CHANGED_SHARE))
    few = max(1, count // 10)
    picked = rng.sample(files, count - few)
    rewritten, deleted = picked[: count - 2 * few], picked[count - 2 * few :]
    for path in rewritten:
        data = path.read_bytes()
        length = min(len(data), rng.randint(4 << 10, 64 << 10))
        if rng.random() < 0.5:
            path.write_bytes(data + fresh(data[-length:], rng))
        else:
            start = rng.randrange(len(data) - length + 1)
            end = start + length
            path.write_bytes(data[:start] + fresh(data[start:end], rng) + data[end:])
    for number in range(few):
        donor = rng.choice(rewritten)
        new = donor.with_name(f"{donor.stem}-day{day}-{number}{donor.suffix}")
        new.write_bytes(fresh(donor.read_bytes(), rng))
    for path in deleted:
        path.unlink()
    return len(rewritten), few, len(deleted)


def fresh(sample: bytes, rng: random.Random) -> bytes:
    """New bytes like `sample`: its digits permuted (text stays text, yet no chunk repeats),
    or random bytes where it has no digits to permute."""
    digits = bytearray(b"0123456789")
    rng.shuffle(digits)
    changed = sample.translate(bytes.maketrans(b"0123456789", digits))
    return changed if changed != sample else rng.randbytes(len(sample))


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def disk_usage(root: Path) -> int:
    """Bytes allocated to the files under `root`, as `du` counts them."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def parentless(tool: Tool) -> list[str]:
    """Snapshots after the first that restic made without a parent, i.e. not incrementally."""
    snapshots = sorted(tool.snapshots(), key=lambda s: s["time"])
    full = [s["short_id"] for s in snapshots[1:] if not s.get("parent")]
    if len(snapshots) != DAYS + 1:
        return [f"{len(snapshots)} snapshots instead of {DAYS + 1}"]
    return [f"backups made without a parent snapshot: {', '.join(full)}"] if full else []


def differences(expected: dict[str, str], restored: Path) -> list[str]:
    """How the restored files differ from the source, by name and SHA-256."""
    found = set(files_under(restored)) if restored.is_dir() else set()
    missing, extra = sorted(expected.keys() - found), sorted(found - expected.keys())
    differ = [n for n in sorted(expected.keys() & found) if digest(restored / n) != expected[n]]
    if not (missing or extra or differ):
        return []
    example = (missing + extra + differ)[0]
    return [
        f"restore: {len(missing)} files missing, {len(extra)} extra, {len(differ)} with other "
        f"bytes than the source's (e.g. {example})"
    ]


# ---------------------------------------------------------------- reporting


@dataclass
class Medians:
    first: float
    second: float
    first_size: int
    second_size: int
    last_size: int
    restore: float


def medians(runs: list[Round], tool: str) -> Medians:
    mine = [r for r in runs if r.tool == tool]

    def median(pick: Callable[[Round], float]) -> float:
        return statistics.median(pick(r) for r in mine)

    return Medians(
        first=median(lambda r: r.backups[0]),
        second=median(lambda r: r.backups[1]),
        first_size=int(median(lambda r: r.sizes[0])),
        second_size=int(median(lambda r: r.sizes[1] - r.sizes[0])),
        last_size=int(median(lambda r: r.sizes[-1])),
        restore=median(lambda r: r.restore),
    )


def print_table(runs: list[Round], tree: Tree) -> None:
    ours, plain = medians(runs, OURS), medians(runs, PLAIN)
    rows = [
        ("first backup, s", lambda m: f"{m.first:.2f}"),
        ("  MB/s", lambda m: f"{tree.megabytes / m.first:,.1f}"),
        (f"second backup ({CHANGED_SHARE:.0%} changed), s", lambda m: f"{m.second:.2f}"),
        ("  second / first", lambda m: f"{m.second / m.first:.3f}x"),
        ("repository after the first, MB", lambda m: f"{m.first_size / 1e6:,.1f}"),
        ("  added by the second, MB", lambda m: f"{m.second_size / 1e6:,.2f}"),
        (f"repository after {DAYS + 1} backups, MB", lambda m: f"{m.last_size / 1e6:,.1f}"),
        (f"  after {DAYS + 1} / after the first", lambda m: f"{m.last_size / m.first_size:.3f}x"),
        ("full restore of the newest, s", lambda m: f"{m.restore:.2f}"),
        ("  MB/s", lambda m: f"{tree.megabytes / m.restore:,.1f}"),
    ]
    print_columns(("median over rounds", OURS, PLAIN), [(n, f(ours), f(plain)) for n, f in rows])
    print(
        f"\nmedians of {ROUNDS} round(s); MB/s: the tree's {tree.megabytes:,.1f} MB of file "
        "contents per wall-clock second; MB on disk as du counts them.\nThis backup's time "
        "includes its checks and the verification of the new snapshot (plain restic's does\n"
        "not); both restores read every file back against the snapshot's hashes (--verify).\n"
    )


def print_checks(runs: list[Round], tree: Tree) -> bool:
    ours, plain = medians(runs, OURS), medians(runs, PLAIN)
    problems = [(r, p) for r in runs for p in r.problems]
    for run, problem in problems:
        print(f"FAIL: round {run.number}, {run.tool}: {problem}")
    if not problems:
        print(
            f"PASS: every restore matches the source file by file (SHA-256), and every backup "
            f"after the first used its parent snapshot ({ROUNDS} round(s), both tools)"
        )
    second, plain_second = ours.second / ours.first, plain.second / plain.first
    storage = ours.last_size / ours.first_size
    plain_storage = plain.last_size / plain.first_size
    backup, restored = plain.first / ours.first, plain.restore / ours.restore
    print(
        f"second backup / first: {second:.3f}x, target <= {SECOND_TARGET}x: "
        f"{verdict(second <= SECOND_TARGET)} (plain restic: {plain_second:.3f}x)"
    )
    print(
        f"repository after {DAYS + 1} backups / after the first: {storage:.3f}x, target <= "
        f"{STORAGE_TARGET}x: {verdict(storage <= STORAGE_TARGET)} "
        f"(plain restic: {plain_storage:.3f}x)"
    )
    print(
        f"backup throughput vs plain restic (time plain / this): {backup:.2f}x, target >= "
        f"{SPEED_TARGET}x: {verdict(backup >= SPEED_TARGET)} "
        f"({tree.megabytes / ours.first:,.1f} vs {tree.megabytes / plain.first:,.1f} MB/s)"
    )
    print(
        f"restore throughput vs plain restic (time plain / this): {restored:.2f}x, target >= "
        f"{SPEED_TARGET}x: {verdict(restored >= SPEED_TARGET)} "
        f"({tree.megabytes / ours.restore:,.1f} vs {tree.megabytes / plain.restore:,.1f} MB/s)"
    )
    return not problems


def describe_machine(tree: Tree) -> str:
    version = subprocess.run([RESTIC, "version"], capture_output=True, text=True).stdout.strip()
    return (
        f"machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"{memory_available() / 1e9:.1f} GB memory available for a {tree.megabytes / 1e3:.2f} "
        f"GB tree; load average at the start: {load_average()}\n{RESTIC}: {version}"
    )
