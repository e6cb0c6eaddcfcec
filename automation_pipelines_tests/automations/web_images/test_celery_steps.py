"""The steps web images runs on Celery workers (WEB_IMAGES_EXECUTOR=celery), executed here in
one process: a batch split into parts delivers every photo once with the manifest the rows say,
several parts render at once under the shared lock while the exclusive one waits, the workers'
config is the executor's, and a wrong setting is refused by name. The real workers, broker and
a killed worker are in e2e/test_web_images_celery_e2e.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from automation_pipelines.automations.web_images import AUTOMATION, execution, records
from automation_pipelines.automations.web_images.ops import (
    publish_web_images_batch,
    render_web_images_part,
    split_web_images_batch,
)
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import store
from automation_pipelines.reliability.locks import LockTimeout, exclusive_lock, shared_lock
from automation_pipelines.settings import ConfigurationError
from automation_pipelines_tests.automations.web_images.photos import photo


@AUTOMATION.job(name="render_web_images_in_parts_job", description="The Celery job's graph.")
def in_parts_job():
    publish_web_images_batch(split_web_images_batch().map(render_web_images_part).collect())


def test_a_batch_in_parts_delivers_every_photo_once(
    tmp_path: Path, sqlite_instance, alert_router, monkeypatch
) -> None:
    monkeypatch.setenv(execution.FILES_PER_STEP_ENV, "3")
    steps = tmp_path / "steps"
    monkeypatch.setenv(execution.STEP_OUTPUTS_ENV, str(steps))
    folders = PhotoFolders(root=str(tmp_path / "photos"), truncated_grace_seconds=0.0)
    names = [f"p{n}.jpg" for n in range(7)]
    folders.inbox.mkdir(parents=True, exist_ok=True)
    placing = time.time() - 0.01  # a file's ctime comes from a clock a tick coarser
    (folders.inbox / "broken.jpg").write_bytes(b"not a photo")
    first_placed = time.time()
    for name in names:
        photo(folders.inbox / name, 500)
    time.sleep(1)  # the photos wait for their run
    run_started = time.time()
    result = in_parts_job.execute_in_process(
        instance=sqlite_instance,
        resources={
            "folders": folders,
            "alerts": alert_router,
            execution.STEP_OUTPUTS_KEY: dg.FilesystemIOManager(base_dir=str(steps)),
        },
        run_config={
            "ops": {split_web_images_batch.name: {"config": {"files": [*names, "broken.jpg"]}}}
        },
    )
    assert result.success
    parts = [
        e.step_key
        for e in result.all_events
        if e.is_step_success and e.step_key.startswith(render_web_images_part.name)
    ]
    assert len(parts) == 3  # 8 files, 3 per part
    assert sorted(p.name for p in folders.processed.iterdir()) == sorted(names)
    assert (folders.quarantine / "broken.jpg").exists()
    engine = store.engine(alert_router.database_url)
    manifest = json.loads(folders.manifest.read_text())
    assert manifest == records.manifest_from_records(engine, folders.root)
    assert sorted(manifest) == sorted(names)
    events = {
        e.asset_key.to_user_string(): {key: value.value for key, value in e.metadata.items()}
        for e in result.asset_materializations_for_node(publish_web_images_batch.name)
    }
    metadata, numbers = events["web_images"], events["automations/web_images"]
    assert (metadata["images_processed"], metadata["images_quarantined"]) == (7, 1)
    assert (numbers["items"], numbers["items_quarantined"]) == (7, 1)
    # Latency counts from the first photo's arrival (the quarantined one), not the run's start.
    assert run_started - first_placed <= numbers["latency_seconds"] <= time.time() - placing
    [published] = [
        e
        for e in result.asset_materializations_for_node(publish_web_images_batch.name)
        if e.asset_key.to_user_string() == "automations/web_images"
    ]
    assert "from the oldest one's arrival" in (published.description or "")
    assert list(folders.output.rglob(".*.tmp")) == []
    assert steps.is_dir() and not (steps / result.run_id).exists()  # the outputs were read


def test_parts_share_the_lock_and_the_exclusive_phase_waits(tmp_path: Path) -> None:
    lock = tmp_path / ".web_images.lock"
    with (
        shared_lock(lock, timeout=1),
        shared_lock(lock, timeout=1),
        pytest.raises(LockTimeout),
        exclusive_lock(lock, timeout=0.3),
    ):
        pass
    with (
        exclusive_lock(lock, timeout=1),
        pytest.raises(LockTimeout),
        shared_lock(lock, timeout=0.3),
    ):
        pass


def test_the_workers_run_with_the_executors_settings() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "celery" / "worker.yaml").read_text())
    worker = config["execution"]["config"]
    assert worker["broker"] == {"env": execution.BROKER_ENV}
    assert worker["backend"] == execution.DEFAULT_BACKEND
    assert worker["config_source"] == execution.CELERY_SETTINGS


def test_an_unknown_executor_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv(execution.EXECUTOR_ENV, "k8s")
    with pytest.raises(ConfigurationError, match=execution.EXECUTOR_ENV):
        execution.executor_choice()
    monkeypatch.setenv(execution.EXECUTOR_ENV, "celery")
    assert execution.executor_choice() == execution.CELERY
    assert execution.celery_executor().name == "celery"
