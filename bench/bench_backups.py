"""backups: this project's snapshot against `tar | zstd` on the same tree of about 1.1 GB.

Three ways to archive one folder at zstd level 3, side by side in one run:
- this backup: `create_snapshot` with the tree as its one FolderSource, on its default of two
  compression threads. Its time is the whole call: the tar stream, the SHA-256 of every file for
  the manifest, compression, the fsync of archive and manifest, the read-back that decompresses
  the whole archive and checks its hash, and the rename into place;
- `tar -cf - -C <parent> tree | zstd -3 -q -o <file>`, what a user would otherwise pick (zstd's
  default of one compression thread; tar runs in a process of its own);
- the same pipeline with `zstd -3 -T0`, one compression thread per core.
The pipelines are timed as a user runs them, with no fsync and no check, so every safety step
the snapshot takes is paid inside its own time.

Why the comparison is fair: all tools read the same tree, and they read it from the page cache.
Before every timed run the bench calls sync (so no earlier run's writeback lands in this one)
and then reads every file of the tree once, so it is warm for whichever tool comes next; the
header shows the memory available next to the tree's size. Every archive goes to the same disk
(bench/.data, on the project's disk). Time is wall-clock seconds from the call (or the start of
`bash -o pipefail -c`) to its return. Throughput is the tree's file bytes per second (1 MB =
10^6 bytes), the same input figure for every tool. The tools take turns for a few rounds, in
alternating order, and each is shown at its best round, so a slow moment of a shared machine
does not decide the comparison. No tool is pinned to CPUs.

The tree is deterministic (seeded) and made once: about 4,000 files of 2 KB to 4 MB in nested
folders. By bytes, about two thirds are text-like (log lines, CSV, JSON lines, prose; each file
is slices of a few MB pool of such text, each slice with its digits permuted, so files do not
repeat each other verbatim and compress about 3-4x), a quarter are random bytes (like photos and
archives, which do not compress) and the rest are highly repetitive (padded dumps, repeated
records). It is kept in bench/.data/backups/tree with tree.json recording its recipe and reused
while that matches; the archives, snapshots and the restore (bench/.data/backups/run) are
removed after.

Checks: the last snapshot, restored with `restore`, matches the tree file by file (SHA-256);
every pipeline archive passes `zstd -t`; target: this backup's throughput is at least 0.8x that
of `tar | zstd -3`.
Sizes: BENCH_BACKUPS_MB (tree size, default 1100) and BENCH_BACKUPS_ROUNDS (default 3).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

from automation_pipelines.automations.backups.snapshots import (
    FolderSource,
    create_snapshot,
    restore,
)
from bench.tables import print_columns

MEGABYTES = int(os.environ.get("BENCH_BACKUPS_MB", "1100"))
ROUNDS = int(os.environ.get("BENCH_BACKUPS_ROUNDS", "3"))
LEVEL = 3
THREADS = 2  # create_snapshot's default
TARGET = 0.8  # x the throughput of tar | zstd -3
SEED = 20260301
RECIPE = 1  # bump when the tree's recipe changes, so a kept tree is made again
DATA = Path(__file__).parent / ".data" / "backups"
TREE = DATA / "tree"  # its recipe is recorded next to it, in tree.json
WORK = DATA / "run"
CHUNK = 1 << 20

SNAPSHOT, PIPELINE, PIPELINE_ALL_CORES = (
    "this backup (create_snapshot)",
    "tar | zstd -3",
    "tar | zstd -3 -T0",
)
#: Shares of the tree's bytes; text-like files make up the rest.
RANDOM_SHARE, REPETITIVE_SHARE = 0.25, 0.08
#: (share of files, smallest, largest): sizes are log-uniform within each band.
SIZE_BANDS = ((0.60, 2 << 10, 64 << 10), (0.33, 64 << 10, 1 << 20), (0.07, 1 << 20, 4 << 20))
TEXT_STYLES = {"log": 0.35, "csv": 0.25, "json": 0.25, "prose": 0.15}
TEXT_SUFFIXES = {"log": (".log",), "csv": (".csv",), "json": (".jsonl", ".json"), "prose": (".md",)}
RANDOM_SUFFIXES = (".jpg", ".png", ".gz", ".zip", ".pdf")
REPETITIVE_SUFFIXES = (".dat", ".img", ".bak")
POOL_BYTES_PER_STYLE = 2_000_000
FILES_PER_FOLDER = 12
MAX_DEPTH = 4


def main() -> None:
    started = time.perf_counter()
    for tool in ("tar", "zstd", "bash"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH: `make bench` installs it")
    tree = ensure_tree()
    print(describe_machine(tree), flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        runs, last_snapshot = measure(tree)
        best = best_runs(runs)
        print_table(best, tree)
        ok = print_checks(runs, best, last_snapshot, tree)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"(whole benchmark: {time.perf_counter() - started:.0f} s)")
    if not ok:
        raise SystemExit(1)


@dataclass
class Tree:
    files: int
    bytes: int

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6


@dataclass
class Run:
    tool: str
    round: int
    seconds: float
    archive_bytes: int
    #: `zstd -t` passed (pipelines); a snapshot is checked by its own read-back.
    decompresses: bool = True
    manifest_bytes: int = 0
    snapshot: Path | None = None


# ---------------------------------------------------------------- the tree


def ensure_tree(root: Path = TREE, megabytes: int = MEGABYTES) -> Tree:
    """The benchmark tree, made once and reused while its recipe and size are the same; the
    other backup benches call it with a root and size of their own."""
    marker = root.with_suffix(".json")
    wanted = {"recipe": RECIPE, "seed": SEED, "megabytes": megabytes}
    if marker.exists() and root.is_dir():
        recorded = json.loads(marker.read_text())
        if {key: recorded.get(key) for key in wanted} == wanted:
            found = count_tree(root)
            if (found.files, found.bytes) == (recorded["files"], recorded["bytes"]):
                return found
    marker.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"making the benchmark tree in {root} (once): {megabytes:,} MB ...", flush=True)
    began = time.perf_counter()
    tree = make_tree(root, megabytes * 1_000_000, random.Random(SEED))
    os.sync()
    print(
        f"  {tree.files:,} files, {tree.megabytes:,.1f} MB in {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    marker.write_text(json.dumps({**wanted, "files": tree.files, "bytes": tree.bytes}) + "\n")
    return tree


def count_tree(root: Path) -> Tree:
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.stat(os.path.join(folder, name)).st_size
    return Tree(files, size)


def make_tree(root: Path, total: int, rng: random.Random) -> Tree:
    """Files of log-uniform sizes until `total` bytes; each file's kind is the one furthest
    below its share of the bytes so far, so the mix holds at any size."""
    words, weights = vocabulary(rng)
    pools = {style: text_pool(style, words, weights, rng) for style in TEXT_STYLES}
    sizes, planned = [], 0
    while planned < total:
        sizes.append(file_size(rng))
        planned += sizes[-1]
    sizes[-1] -= planned - total
    folders = make_folders(root, max(1, len(sizes) // FILES_PER_FOLDER), rng)
    shares = {"random": RANDOM_SHARE, "repetitive": REPETITIVE_SHARE}
    shares["text"] = 1 - sum(shares.values())
    written = dict.fromkeys(shares, 0)
    styles, style_weights = list(TEXT_STYLES), list(TEXT_STYLES.values())
    done = 0
    for number, size in enumerate(sizes):
        done += size
        kind = max(shares, key=lambda k: shares[k] * done - written[k])
        written[kind] += size
        if kind == "random":
            suffix, content = rng.choice(RANDOM_SUFFIXES), rng.randbytes(size)
        elif kind == "repetitive":
            suffix, content = rng.choice(REPETITIVE_SUFFIXES), repetitive(size, pools, rng)
        else:
            style = rng.choices(styles, style_weights)[0]
            suffix, content = rng.choice(TEXT_SUFFIXES[style]), text_file(size, pools[style], rng)
        path = rng.choice(folders) / f"{rng.choice(WORDS)}-{number:05d}{suffix}"
        path.write_bytes(content)
    return Tree(len(sizes), total)


def file_size(rng: random.Random) -> int:
    _, low, high = rng.choices(SIZE_BANDS, [band[0] for band in SIZE_BANDS])[0]
    return int(low * (high / low) ** rng.random())


def make_folders(root: Path, count: int, rng: random.Random) -> list[Path]:
    """`count` nested folders under `root`: an eighth at the top, the others under any folder
    less than MAX_DEPTH deep; files go in any of them."""
    folders = [(root, 0)]
    for number in range(count):
        if number < max(2, count // 8):
            parent, depth = root, 0
        else:
            parent, depth = rng.choice([f for f in folders[1:] if f[1] < MAX_DEPTH])
        folders.append((parent / f"{rng.choice(WORDS)}-{number:03d}", depth + 1))
    for folder, _ in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return [folder for folder, depth in folders if depth > 0]


def text_file(size: int, pool: bytes, rng: random.Random) -> bytes:
    """Slices of 4-32 KB from the pool, each with its digits permuted, so that neither two
    files nor two parts of a large file repeat each other verbatim."""
    parts, length = [], 0
    while length < size:
        take = rng.randint(4 << 10, 32 << 10)
        start = rng.randrange(len(pool) - take)
        digits = bytearray(b"0123456789")
        rng.shuffle(digits)
        parts.append(pool[start : start + take].translate(bytes.maketrans(b"0123456789", digits)))
        length += take
    return b"".join(parts)[:size]


def repetitive(size: int, pools: dict[str, bytes], rng: random.Random) -> bytes:
    """Runs of one short record repeated, between runs of zeros: a padded dump or image."""
    parts, length = [], 0
    while length < size:
        run = rng.randint(16 << 10, 256 << 10)
        if rng.random() < 0.5:
            parts.append(bytes(run))
        else:
            pool = pools[rng.choice(list(pools))]
            start = rng.randrange(len(pool) - 512)
            record = pool[start : start + rng.randint(64, 512)]
            parts.append((record * (run // len(record) + 1))[:run])
        length += run
    return b"".join(parts)[:size]


COMMON_WORDS = (
    "the of and to in is that for it as with was on be by at this from are or have an not "
    "they which one you were all we when there can more if their has will each about how up "
    "out them then she many some so these would other into two him time like could no than "
    "first been call who its now find long down day did get come made may part over new "
    "account report invoice customer order region batch export import backup archive status "
    "pending shipped delivered refund payment warehouse ledger schedule worker queue retry "
    "sensor asset partition snapshot restore manifest folder upload download review release"
)
WORDS = COMMON_WORDS.split()


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """Common words first, then made-up words; Zipf-like cumulative weights by rank."""
    syllables = [c + v for c in "bcdfghklmnprstvw" for v in ("a", "e", "i", "o", "u", "ar", "en")]
    made = {"".join(rng.choices(syllables, k=rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(4000)}
    words = WORDS + sorted(made - set(WORDS))
    return words, list(itertools.accumulate(1 / (rank + 1) ** 1.05 for rank in range(len(words))))


def text_pool(style: str, words: list[str], weights: list[float], rng: random.Random) -> bytes:
    """About POOL_BYTES_PER_STYLE of one style of text."""
    make = {"log": log_lines, "csv": csv_rows, "json": json_lines, "prose": prose}[style]
    parts, length = [], 0
    while length < POOL_BYTES_PER_STYLE:
        block = make(rng, words, weights)
        parts.append(block)
        length += len(block)
    return "".join(parts).encode()


def log_lines(rng: random.Random, words: list[str], weights: list[float]) -> str:
    moment = 1_772_000_000 + rng.randrange(10**7)
    loggers = [f"app.{rng.choice(WORDS)}.{rng.choice(WORDS)}" for _ in range(12)]
    lines = []
    for _ in range(200):
        moment += rng.expovariate(5)
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{moment % 1 * 1000:03.0f}Z"
        )
        level = rng.choices(("INFO", "DEBUG", "WARNING", "ERROR"), (70, 20, 8, 2))[0]
        message = rng.choice(
            (
                f"processed batch {rng.randrange(10**6)} for account {rng.randrange(10**5)} "
                f"in {rng.randrange(2000)} ms (rows={rng.randrange(10**4)}, status=ok)",
                f"GET /api/v2/{rng.choice(WORDS)}/{rng.randrange(10**6)} 200 "
                f"{rng.randrange(100, 90000)} bytes {rng.random() * 300:.1f} ms",
                f"retrying {rng.choice(WORDS)} request after {rng.choice((1, 2, 4, 8))} s: "
                f"connection reset by peer ({rng.randrange(1, 5)}/5)",
                " ".join(rng.choices(words, cum_weights=weights, k=rng.randint(4, 12))),
            )
        )
        lines.append(
            f"{stamp} {level:<7} [worker-{rng.randrange(8)}] {rng.choice(loggers)} "
            f"trace={rng.getrandbits(48):012x}: {message}\n"
        )
    return "".join(lines)


def csv_rows(rng: random.Random, words: list[str], weights: list[float]) -> str:
    rows = ["id,date,account,region,sku,quantity,unit_price,total,currency,status,note\n"]
    for _ in range(300):
        quantity, price = rng.randint(1, 40), rng.randrange(99, 99999) / 100
        rows.append(
            f"{rng.randrange(10**7)},2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},"
            f"AC-{rng.randrange(10**5):05d},{rng.choice(('north', 'south', 'east', 'west'))},"
            f"SKU-{rng.randrange(5000):04d},{quantity},{price:.2f},{quantity * price:.2f},"
            f"{rng.choice(('EUR', 'USD', 'GBP'))},"
            f"{rng.choice(('paid', 'pending', 'shipped', 'refunded'))},"
            f"{' '.join(rng.choices(words, cum_weights=weights, k=rng.randint(0, 6)))}\n"
        )
    return "".join(rows)


def json_lines(rng: random.Random, words: list[str], weights: list[float]) -> str:
    lines = []
    for _ in range(100):
        record = {
            "id": rng.randrange(10**9),
            "user": {
                "login": f"{rng.choice(words)}{rng.randrange(1000)}",
                "id": rng.randrange(10**7),
            },
            "created_at": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
            "tags": rng.choices(words[:300], k=rng.randint(0, 4)),
            "score": round(rng.random(), 4),
            "title": " ".join(rng.choices(words, cum_weights=weights, k=rng.randint(3, 9))),
            "active": rng.random() < 0.8,
        }
        lines.append(json.dumps(record) + "\n")
    return "".join(lines)


def prose(rng: random.Random, words: list[str], weights: list[float]) -> str:
    sentences = []
    for _ in range(60):
        chosen = rng.choices(words, cum_weights=weights, k=rng.randint(6, 22))
        sentences.append(" ".join(chosen).capitalize() + rng.choice(".....?!"))
    paragraphs, start = [], 0
    while start < len(sentences):
        end = start + rng.randint(3, 8)
        paragraphs.append(" ".join(sentences[start:end]))
        start = end
    return "\n\n".join(paragraphs) + "\n\n"


# ---------------------------------------------------------------- the runs


def warm(tree: Path) -> None:
    """Flush earlier writes, then read every file of the tree once into the page cache."""
    os.sync()
    buffer = bytearray(CHUNK)
    for folder, _, names in os.walk(tree):
        for name in names:
            with open(os.path.join(folder, name), "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass


def measure(tree: Tree) -> tuple[list[Run], Path]:
    """Every run of every tool, and the last snapshot (kept for the restore check)."""
    print(
        f"\n{tree.files:,} files, {tree.megabytes:,.1f} MB in {TREE}\nzstd level {LEVEL}; "
        f"{ROUNDS} round(s), the tools taking turns in alternating order; the tree is read "
        "into the page cache before each run",
        flush=True,
    )
    tools = [
        run_snapshot,
        lambda number: run_pipeline(PIPELINE, [], number),
        lambda number: run_pipeline(PIPELINE_ALL_CORES, ["-T0"], number),
    ]
    runs: list[Run] = []
    last_snapshot = None
    for number in range(1, ROUNDS + 1):
        for run in tools if number % 2 else reversed(tools):
            result = run(number)
            runs.append(result)
            last_snapshot = result.snapshot or last_snapshot
            print(
                f"  {number}. {result.tool}: {result.seconds:.2f} s, "
                f"{tree.megabytes / result.seconds:,.1f} MB/s, "
                f"archive {result.archive_bytes / 1e6:,.1f} MB",
                flush=True,
            )
    assert last_snapshot is not None
    return runs, last_snapshot


def run_snapshot(number: int) -> Run:
    destination = WORK / "snapshots"
    shutil.rmtree(destination, ignore_errors=True)  # the previous round's snapshot
    destination.mkdir()
    warm(TREE)
    began = time.perf_counter()
    result = create_snapshot(
        destination, [FolderSource("tree", TREE)], level=LEVEL, threads=THREADS
    )
    seconds = time.perf_counter() - began
    manifest = result.snapshot.manifest.stat().st_size
    return Run(
        SNAPSHOT,
        number,
        seconds,
        result.archive_bytes,
        manifest_bytes=manifest,
        snapshot=result.snapshot.path,
    )


def run_pipeline(tool: str, options: list[str], number: int) -> Run:
    """One timed `tar | zstd`; the archive is tested with `zstd -t` afterwards and removed."""
    archive = WORK / "pipeline.tar.zst"
    archive.unlink(missing_ok=True)
    command = (
        f"tar -cf - -C {shlex.quote(str(TREE.parent))} {shlex.quote(TREE.name)} "
        f"| zstd -{LEVEL} {' '.join(options)} -q -o {shlex.quote(str(archive))}"
    )
    warm(TREE)
    began = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    seconds = time.perf_counter() - began
    size = archive.stat().st_size
    tested = subprocess.run(["zstd", "-t", "-q", str(archive)], capture_output=True, text=True)
    if tested.returncode != 0:
        print(f"  zstd -t: {tested.stderr.strip()}")
    archive.unlink()
    return Run(tool, number, seconds, size, decompresses=tested.returncode == 0)


def best_runs(runs: list[Run]) -> list[Run]:
    return [
        min((r for r in runs if r.tool == tool), key=lambda r: r.seconds)
        for tool in (SNAPSHOT, PIPELINE, PIPELINE_ALL_CORES)
    ]


# ---------------------------------------------------------------- checks and reporting


def restored_matches(snapshot: Path) -> tuple[bool, str]:
    """Restore the snapshot and compare every file's SHA-256 with the tree's."""
    target = WORK / "restore"
    began = time.perf_counter()
    try:
        restore(snapshot, target)
    except Exception as exc:  # reported as a failed check, with the reason
        shutil.rmtree(target, ignore_errors=True)
        return False, f"the last snapshot could not be restored: {exc!r}"
    seconds = time.perf_counter() - began
    restored = target / TREE.name
    expected = {p.relative_to(TREE).as_posix() for p in TREE.rglob("*") if p.is_file()}
    found = {p.relative_to(restored).as_posix() for p in restored.rglob("*") if p.is_file()}
    differ = [n for n in sorted(expected & found) if digest(TREE / n) != digest(restored / n)]
    shutil.rmtree(target, ignore_errors=True)
    missing, extra = sorted(expected - found), sorted(found - expected)
    if not (missing or extra or differ):
        return True, (
            f"the last snapshot restores byte for byte ({len(found):,} files in {seconds:.1f} s, "
            "every SHA-256 equal to the tree's)"
        )
    example = (missing + extra + differ)[0]
    return False, (
        f"the last snapshot's restore: {len(missing)} files missing, {len(extra)} extra, "
        f"{len(differ)} with other bytes than the tree's (e.g. {example})"
    )


def digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def print_table(best: list[Run], tree: Tree) -> None:
    base = next(r for r in best if r.tool == PIPELINE)
    header = ("tool", "best s", "MB/s", "archive MB", "ratio", f"vs {PIPELINE}")
    rows = [
        (
            r.tool,
            f"{r.seconds:.2f}",
            f"{tree.megabytes / r.seconds:,.1f}",
            f"{r.archive_bytes / 1e6:,.1f}",
            f"{tree.bytes / r.archive_bytes:.2f}x",
            f"{base.seconds / r.seconds:.2f}x",
        )
        for r in best
    ]
    print_columns(header, rows)
    print(
        f"\neach tool at its best of {ROUNDS} round(s); MB/s: the tree's {tree.megabytes:,.1f} "
        "MB of file contents per wall-clock second;\nratio: tree bytes / archive bytes. This "
        "backup's time includes the SHA-256 of every file, the fsyncs,\nthe read-back of the "
        "whole archive and the rename; the pipelines neither fsync nor check.\n"
    )


def print_checks(runs: list[Run], best: list[Run], last_snapshot: Path, tree: Tree) -> bool:
    snapshot, pipeline = best[0], best[1]
    difference = snapshot.archive_bytes / pipeline.archive_bytes - 1
    print(
        f"archive size: this backup {snapshot.archive_bytes / 1e6:,.1f} MB (and a "
        f"{snapshot.manifest_bytes / 1e6:.1f} MB manifest), {PIPELINE} "
        f"{pipeline.archive_bytes / 1e6:,.1f} MB: this backup's is {abs(difference):.1%} "
        f"{'larger' if difference > 0 else 'smaller'}"
    )
    checks = [restored_matches(last_snapshot)]
    for tool in (PIPELINE, PIPELINE_ALL_CORES):
        tested = [r for r in runs if r.tool == tool]
        passed = sum(r.decompresses for r in tested)
        checks.append(
            (passed == len(tested), f"{tool}: {passed} of {len(tested)} archive(s) pass zstd -t")
        )
    ratio = pipeline.seconds / snapshot.seconds
    met = ratio >= TARGET
    checks.append(
        (
            met,
            f"target: this backup >= {TARGET}x the throughput of {PIPELINE}: "
            f"{'MET' if met else 'NOT MET'} ({ratio:.2f}x: "
            f"{tree.megabytes / snapshot.seconds:,.1f} vs "
            f"{tree.megabytes / pipeline.seconds:,.1f} MB/s)",
        )
    )
    for ok, text in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return all(ok for ok, _ in checks)


def memory_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_model() -> str:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def describe_machine(tree: Tree) -> str:
    cpu = cpu_model()
    zstd = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    available = memory_available()
    lines = [
        f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{available / 1e9:.1f} GB memory available for a {tree.megabytes / 1e3:.2f} GB tree",
        f"this backup: python-zstandard {zstandard.__version__} (libzstd "
        f"{'.'.join(map(str, zstandard.ZSTD_VERSION))}), {THREADS} compression threads",
        f"pipelines: {tar.splitlines()[0]}, "
        f"zstd {zstd.split(' v', 1)[-1].split(',')[0] if ' v' in zstd else zstd.strip()}",
    ]
    if available < 2 * tree.bytes:
        lines.append(
            "warning: the tree and the archives may not all stay in the page cache; runs may "
            "read from the disk"
        )
    return "\n".join(lines)
