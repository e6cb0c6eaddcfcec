"""A web_images run killed with SIGKILL at any instant, then run again: nothing is lost or doubled.

Property-style: 20 trials, each a batch of 6 real photos rendered by the job in a process of its
own (the run worker), killed after a random delay (seeded) spread over the time a whole batch
takes, then the same batch run again to completion, as Dagster's run retry does. After each
trial every photo has all six renditions with the sizes its row records, exactly one row and one
manifest entry, exactly one original in processed/ (no `name.1.jpg`), none left in the inbox and
no temp file in web/. The killed runs are forked from a fork server that imported the job once,
so a trial costs the batch, not an interpreter start-up.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from automation_pipelines.automations.web_images import records
from automation_pipelines.reliability import store
from automation_pipelines_tests.automations.web_images import kill_worker
from automation_pipelines_tests.automations.web_images.photos import photo, rendition_pattern

TRIALS = 20
SEED = 20_240_611
WIDTHS = (1600, 800, 400)
SAMPLES = [("astronaut", 1600), ("coffee", 1650), ("chelsea", 1700), ("rocket", 1600)]
SAMPLES += [("astronaut", 1750), ("coffee", 1600)]


@pytest.fixture(scope="module")
def fork_server():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(kill_worker.PRELOAD)
    return context


@pytest.fixture
def originals(tmp_path: Path) -> dict[str, bytes]:
    made = {}
    for n, (sample, width) in enumerate(SAMPLES):
        made[f"p{n}.jpg"] = photo(tmp_path / "originals" / f"p{n}.jpg", width, sample=sample)
    return {name: path.read_bytes() for name, path in made.items()}


def stage(root: Path, originals: dict[str, bytes]) -> None:
    for name, data in originals.items():
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        (root / "inbox" / name).write_bytes(data)


def state_after_kill(root: Path, names: list[str]) -> str:
    done = sum((root / "processed" / name).exists() for name in names)
    return "before the first photo" if done == 0 else "after the last" if done == 6 else "mid"


def check_complete(root: Path, engine: sa.Engine, originals: dict[str, bytes]) -> None:
    names = sorted(originals)
    web, processed = root / "web", root / "processed"
    assert sorted(os.listdir(processed)) == names  # one original each, no name.1.jpg
    for name in names:
        assert (processed / name).read_bytes() == originals[name]
    assert [p for p in (root / "inbox").rglob("*") if p.is_file()] == []
    assert list(web.rglob(".*.tmp")) == []
    table = records.web_images_table
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.path).where(table.c.root == records.root_key(root))
        ).all()
    assert sorted(row.path for row in rows) == names  # exactly one row per photo
    manifest = json.loads((web / "manifest.json").read_text())
    assert manifest == records.manifest_from_records(engine, root)
    assert sorted(manifest) == names
    for name, entry in manifest.items():
        paths = sorted(o["path"] for o in entry["outputs"])
        patterns = [rendition_pattern(name, w, ext) for w in WIDTHS for ext in ("webp", "jpg")]
        assert len(paths) == len(patterns)
        assert all(any(p.fullmatch(path) for path in paths) for p in patterns), paths
    listed = {o["path"] for entry in manifest.values() for o in entry["outputs"]}
    assert {p.name for p in web.iterdir()} == listed | {"manifest.json"}  # nothing unlisted
    for entry in manifest.values():
        for output in entry["outputs"]:
            assert (web / output["path"]).stat().st_size == output["bytes"], output


def wait_for_the_batch(root: Path, process) -> None:
    """Until the run's step works on the batch (it holds the lock, or writes outputs)."""
    lock, web = root / ".web_images.lock", root / "web"
    deadline = time.monotonic() + 60
    while process.is_alive() and not web.exists():
        if lock.exists() and lock.stat().st_size:
            return
        assert time.monotonic() < deadline, "the run never started its batch"
        time.sleep(0.005)


@pytest.mark.timeout(180)
def test_a_run_killed_at_any_instant_is_repaired_by_the_next_run(
    tmp_path, fork_server, originals, alert_routes
) -> None:
    database_url = f"sqlite:///{tmp_path / 'project.db'}"
    engine = store.engine(database_url)
    names = sorted(originals)

    def start(root: Path):
        args = (str(root), database_url, str(alert_routes), names)
        process = fork_server.Process(target=kill_worker.render_batch, args=args)
        process.start()
        return process

    # One whole batch first: kills are spread over the time a batch takes here and now.
    calibration = tmp_path / "calibration"
    stage(calibration, originals)
    process = start(calibration)
    wait_for_the_batch(calibration, process)
    started = time.monotonic()
    process.join(timeout=120)
    duration = time.monotonic() - started
    assert process.exitcode == 0
    check_complete(calibration, engine, originals)

    rng = random.Random(SEED)
    landed: dict[str, int] = {}
    for trial in range(TRIALS):
        root = tmp_path / f"trial{trial:02d}"
        stage(root, originals)
        process = start(root)
        wait_for_the_batch(root, process)
        process.join(timeout=rng.uniform(0.0, duration))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            process.join(timeout=30)
            # 0 when the run ended between the look and the kill
            assert process.exitcode in (-signal.SIGKILL, 0)
        if process.exitcode == -signal.SIGKILL:
            where = state_after_kill(root, names)
        else:
            assert process.exitcode == 0
            where = "after the run ended"
        landed[where] = landed.get(where, 0) + 1

        # The retry, as Dagster's run retry launches it: the same batch again.
        assert kill_worker.render_batch(str(root), database_url, str(alert_routes), names)
        check_complete(root, engine, originals)

    print(f"\nbatch of {len(names)} photos: {duration:.2f}s; kills landed: {landed}")
    assert landed.get("mid", 0) >= 1, f"no kill landed mid-batch: {landed}"
