"""Disk space guard: the job passes with room to spare, fails (without retrying) on a low volume
or a missing path, and records free space as observations Dagster can plot."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.disk_space.jobs import check_disk_space_job
from automation_pipelines.automations.disk_space.ops import volume_report


@pytest.fixture
def run_job(sqlite_instance, alert_router):
    def run(**config) -> dg.ExecuteInProcessResult:
        return check_disk_space_job.execute_in_process(
            instance=sqlite_instance,
            resources={"alerts": alert_router},
            run_config={"ops": {"measure_free_space": {"config": config}}},
            raise_on_error=False,
        )

    return run


def _observations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetObservation]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
    return [r.event_log_entry.asset_observation for r in records.records]


def test_room_to_spare_succeeds_and_is_observed(run_job, sqlite_instance, tmp_path: Path) -> None:
    result = run_job(paths=[str(tmp_path)], min_free_percent=0.0, min_free_gb=0.0)
    assert result.success
    [report] = result.output_for_node("measure_free_space")
    assert report["path"] == str(tmp_path) and report["low"] is False and report["free_gb"] > 0
    [observation] = _observations(sqlite_instance, result.run_id)
    assert observation.asset_key == dg.AssetKey(["disk_space", tmp_path.name])
    assert observation.metadata["free_gb"].value == report["free_gb"]
    # The automation's plots: one volume measured, on automations/disk_space.
    [numbers] = result.asset_materializations_for_node("measure_free_space")
    assert numbers.asset_key == dg.AssetKey(["automations", "disk_space"])
    assert numbers.metadata["items"].value == 1
    assert numbers.metadata["latency_seconds"].value > 0


def test_default_path_is_the_instance_home(run_job, sqlite_instance) -> None:
    result = run_job(min_free_percent=0.0, min_free_gb=0.0)
    assert result.success
    [report] = result.output_for_node("measure_free_space")
    assert report["path"] == sqlite_instance.root_directory


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"min_free_gb": 10.0**9}, "low disk space"),
        ({"min_free_percent": 100.1, "min_free_gb": 0.0}, "low disk space"),
        ({"paths": ["/no/such/volume"]}, "configured path(s) do not exist: /no/such/volume"),
    ],
)
def test_problems_fail_the_run_without_retrying(run_job, config, message) -> None:
    result = run_job(**config)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert message in failure.step_failure_data.user_failure_data.description
    assert not any(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def test_volume_report_thresholds(tmp_path: Path) -> None:
    roomy = volume_report(tmp_path, min_free_percent=0.0, min_free_gb=0.0)
    assert roomy["low"] is False
    assert 0 < roomy["free_percent"] <= 100
    assert roomy["free_gb"] <= roomy["total_gb"]
    assert volume_report(tmp_path, min_free_percent=0.0, min_free_gb=roomy["total_gb"] + 1)["low"]
