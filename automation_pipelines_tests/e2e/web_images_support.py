"""Helpers for the web_images e2e tests: photos staged on the inbox's volume, the processes of a
run, the moments runs executed their step, and the check that every photo was delivered once.

What Dagster 1.13 starts for a run, with the project's default run launcher: the daemon runs a
code server (`python -m dagster api grpc …`), which spawns one run worker per run
(`python -c 'from multiprocessing.spawn import spawn_main; …' --multiprocessing-fork`). The
worker reports "Started process for run (pid: N)" in the run's event log. With the in-process
executor the step runs inside the worker; the worker's only children are the compute-log
mirrors (`tail -F` and `watch_orphans.py`), which exit within a second of losing their parent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import sqlalchemy as sa

from automation_pipelines.automations.web_images import records
from automation_pipelines.automations.web_images.batch import LOCK_RELEASED, LOCK_TAKEN
from automation_pipelines.automations.web_images.ops import files_of_run
from automation_pipelines.reliability import store
from automation_pipelines_tests.automations.web_images.photos import photo

JOB = "render_web_images_job"
SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def make_sources(folder: Path, width: int) -> list[Path]:
    """One camera JPEG per sample photograph, to be copied under many names."""
    return [photo(folder / f"{sample}.jpg", width, sample=sample) for sample in SAMPLES]


def stage_photos(root: Path, sources: list[Path], names: list[str]) -> None:
    """Copy the photos next to the inbox (same volume), then rename them in: a finished upload
    appears whole, in one step."""
    staging = root / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        shutil.copyfile(sources[n % len(sources)], staging / name)
    for name in names:
        (staging / name).rename(root / "inbox" / name)


_BATCHES: dict[str, list[str]] = {}


def batch_files(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The photos of a run, as its config or its first log lines list them ([] until then)."""
    if run.run_id not in _BATCHES:
        found = files_of_run(instance, run)
        if found is None:
            return []
        _BATCHES[run.run_id] = found
    return _BATCHES[run.run_id]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The ones still running (a zombie has finished: it only waits to be reaped)."""
    running = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


def is_log_mirror(process: psutil.Process) -> bool:
    """Dagster's compute-log mirror of a run worker: `tail -F` and its watch_orphans.py guard."""
    try:
        command = process.cmdline()
    except psutil.Error:
        return False
    return command[:2] == ["tail", "-F"] or any(arg.endswith("watch_orphans.py") for arg in command)


def is_exiting(process: psutil.Process) -> bool:
    """A process the kernel is tearing down: its memory is gone (no command line), so none of its
    code runs any more; it becomes a zombie a moment later."""
    try:
        return process.cmdline() == []
    except psutil.Error:
        return True


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            lines.append(f"pid {process.pid}: {' '.join(process.cmdline())[:200]}")
    return "\n".join(lines)


@dataclass(frozen=True)
class StepSpan:
    run_id: str
    started: float
    ended: float


def step_spans(
    instance: dg.DagsterInstance, killed_at: dict[str, float] | None = None
) -> list[StepSpan]:
    """When each run of the job worked on the photo tree: from taking its lock (else
    STEP_START) to releasing it (else the step's end; for a killed worker: the kill, or a later
    end of its step if an orphan finished it; else the run's end). Runs start side by side, and
    the second waits in its step for the lock: that wait is not work."""
    killed_at = killed_at or {}
    spans = []
    for record in instance.get_run_records(dg.RunsFilter(job_name=JOB)):
        run_id = record.dagster_run.run_id
        events = instance.get_records_for_run(run_id, limit=5000).records
        starts = [
            r.event_log_entry.timestamp
            for r in events
            if r.event_log_entry.dagster_event_type == dg.DagsterEventType.STEP_START
        ]
        if not starts:
            continue
        said = {
            message: [r.event_log_entry.timestamp for r in events if message in _said(r)]
            for message in (LOCK_TAKEN, LOCK_RELEASED)
        }
        starts = said[LOCK_TAKEN] or starts
        ends = [
            r.event_log_entry.timestamp
            for r in events
            if r.event_log_entry.dagster_event_type
            in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)
        ]
        # A killed run's step ends at the kill, unless something of it went on writing events.
        ended = max([*ends, killed_at[run_id]]) if run_id in killed_at else None
        ended = ended or (min(said[LOCK_RELEASED]) if said[LOCK_RELEASED] else None)
        ended = ended or (max(ends) if ends else record.end_time)
        assert ended is not None, f"run {run_id} started its step and never ended"
        spans.append(StepSpan(run_id, min(starts), ended))
    return sorted(spans, key=lambda span: span.started)


def _said(record) -> str:
    entry = record.event_log_entry
    return entry.user_message if entry.dagster_event is None else ""


def overlapping(spans: list[StepSpan]) -> list[tuple[StepSpan, StepSpan]]:
    """Pairs of runs whose steps executed at the same time."""
    return [
        (earlier, later)
        for earlier, later in itertools.pairwise(spans)
        if later.started < earlier.ended
    ]


def project_engine(home: Path) -> sa.Engine:
    """The project database the daemon's runs write (SQLite beside the instance)."""
    return store.engine(store.database_url(home))


def check_every_photo_delivered_once(root: Path, home: Path, names: list[str]) -> None:
    """Renditions, one row and one manifest entry per photo, the original in processed/ once,
    the inbox empty and no temp file left in web/."""
    web, processed = root / "web", root / "processed"
    assert [p.name for p in (root / "inbox").iterdir()] == []
    assert sorted(p.name for p in processed.iterdir()) == sorted(names)  # no name.1.jpg
    assert list(web.rglob(".*.tmp")) == []
    engine = project_engine(home)
    table = records.web_images_table
    with engine.connect() as conn:
        paths = conn.execute(
            sa.select(table.c.path).where(table.c.root == records.root_key(root))
        ).scalars()
        assert sorted(paths) == sorted(names)
    manifest = json.loads((web / "manifest.json").read_text())
    assert manifest == records.manifest_from_records(engine, root)
    assert sorted(manifest) == sorted(names)
    for entry in manifest.values():
        assert entry["outputs"], entry
        for output in entry["outputs"]:
            assert (web / output["path"]).stat().st_size == output["bytes"], output
