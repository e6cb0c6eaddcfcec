"""`Automation.definitions` builds a folder's `defs`: each folder loads and runs on its own, and
a job, trigger or asset made around the declaration is refused by name instead of reaching the
UI without its tags, alert hook, runbook link or pause switch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines import discovery
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import Automation, Expectation, unguarded
from automation_pipelines.reliability.errors import DATABASE, LOCAL_IO, is_classified
from automation_pipelines.reliability.tags import AUTOMATION_TAG, RUNBOOK_PREFIX

FOLDERS = [name for name, _ in discovery.folders()]

ALONE = """
import json, sys
import dagster as dg
import automation_pipelines.automations.{name}.definitions as folder

dg.Definitions.validate_loadable(folder.defs)
repository = folder.defs.get_repository_def()
print(json.dumps({{
    "jobs": sorted(j.name for j in repository.get_all_jobs() if not j.name.startswith("__")),
    "monitoring_imported": any(m.startswith("automation_pipelines.monitoring")
                               for m in sys.modules),
}}))
"""


@pytest.mark.parametrize("name", FOLDERS)
def test_each_folder_loads_on_its_own(name: str) -> None:
    """In a fresh interpreter, without the monitoring layer that used to supply the `alerts`
    resource: every job of the folder resolves with the resources it needs."""
    result = subprocess.run(
        [sys.executable, "-c", ALONE.format(name=name)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["jobs"], f"{name} gave no jobs"
    assert loaded["monitoring_imported"] is False


def test_one_automation_runs_alone_and_its_failure_hook_records(
    sqlite_instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from automation_pipelines.automations.disk_space.definitions import defs

    job = defs.get_job_def("check_disk_space_job")

    def run(**config) -> dg.ExecuteInProcessResult:
        return job.execute_in_process(
            instance=sqlite_instance,
            run_config={"ops": {"measure_free_space": {"config": config}}},
            raise_on_error=False,
        )

    assert run(paths=[str(tmp_path)], min_free_percent=0.0, min_free_gb=0.0).success
    failed = run(paths=[str(tmp_path / "missing")])
    assert not failed.success
    # The hook reached the router the folder's definitions carry, and recorded for the alert.
    [detail] = AlertRouter.deployed().outbox(sqlite_instance).failure_details(failed.run_id)
    assert detail.op == "measure_free_space"
    assert "configured path(s) do not exist" in detail.message


def test_the_code_location_shares_one_alert_router() -> None:
    from automation_pipelines.definitions import defs

    assert defs.resources["alerts"] is AlertRouter.deployed()


@pytest.fixture
def scratch(tmp_path: Path) -> Automation:
    (tmp_path / "README.md").write_text("# scratch\n")
    return Automation(
        name="scratch",
        owner="team:scratch",
        folder=tmp_path,
        expect=Expectation(success_within_hours=2, max_runs_per_hour=4),
    )


def _made_by(automation: Automation) -> dict:
    @automation.op(LOCAL_IO)
    def step() -> None:
        pass

    @automation.job(name="scratch_job", description="Does a step.")
    def scratch_job():
        step()

    @automation.asset(key="scratch_table", errors=DATABASE, description="A table.")
    def scratch_table() -> None:
        pass

    @automation.sensor(name="scratch_sensor", job=scratch_job, minimum_interval_seconds=30)
    def scratch_sensor(context):
        return dg.SkipReason("nothing")

    @automation.multi_asset_check(
        name="scratch_fresh_checks",
        specs=[dg.AssetCheckSpec("fresh", asset="scratch_table")],
        errors=LOCAL_IO,
        description="Checks the table is fresh.",
    )
    def scratch_fresh_checks():
        yield dg.AssetCheckResult(check_name="fresh", asset_key="scratch_table", passed=True)

    return {
        "jobs": [
            scratch_job,
            automation.asset_job(
                "scratch_table_job",
                selection=[dg.AssetKey("scratch_table")],
                description="Makes the table.",
            ),
        ],
        "schedules": [
            automation.schedule(
                name="scratch_hourly_schedule",
                cron_schedule="0 * * * *",
                job=scratch_job,
                description="Hourly.",
            )
        ],
        "sensors": [scratch_sensor],
        "assets": [scratch_table, automation.spec("scratch_files", description="Files.")],
        "asset_checks": [scratch_fresh_checks],
    }


def test_what_the_declaration_made_is_accepted_and_loads_alone(scratch: Automation) -> None:
    made = _made_by(scratch)
    defs = scratch.definitions(**made)
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    for name in ("scratch_job", "scratch_table_job"):
        job = repository.get_job(name)
        assert job.owners == ["team:scratch"] and job.metadata["automation"].value == "scratch"
        assert RUNBOOK_PREFIX in (job.description or "")
        assert {op.pool for op in job.graph.iterate_op_defs()} == {"scratch"}
        # A run carries no tag of its own, so 10 fit the run list; the owner is the job's.
        assert (
            job.tags
            == job.run_tags
            == {
                "dagster/max_runtime": "3600",
                "dagster/retry_on_asset_or_op_failure": "false",
            }
        )
    assert made["asset_checks"][0].op.pool == "scratch"
    for key in ("scratch_table", "scratch_files"):
        spec = defs.resolve_assets_def(key).get_asset_spec(dg.AssetKey(key))
        assert spec.owners == ["team:scratch"]
        assert spec.tags[AUTOMATION_TAG] == "scratch" and spec.group_name == "scratch"
        assert RUNBOOK_PREFIX in (spec.description or "")


def test_an_asset_of_the_declaration_retries_only_classified_errors(scratch: Automation) -> None:
    table = _made_by(scratch)["assets"][0]
    assert is_classified(table.op)
    assert table.op.retry_policy == DATABASE.policy

    @scratch.multi_asset_check(
        name="scratch_checks",
        specs=[dg.AssetCheckSpec("fresh", asset="scratch_table")],
        errors=LOCAL_IO,
        description="Checks the table.",
    )
    def scratch_checks():
        yield dg.AssetCheckResult(check_name="fresh", asset_key="scratch_table", passed=True)

    assert is_classified(scratch_checks.op)
    assert scratch_checks.op.retry_policy == LOCAL_IO.policy
    assert RUNBOOK_PREFIX in (scratch_checks.op.description or "")


def _around(scratch: Automation) -> dict[str, dict]:
    """One definition of each kind made around the declaration, with the name it must be
    refused by."""
    made = _made_by(scratch)
    other = Automation(name="other", owner="team:other", folder=scratch.folder)

    @dg.op
    def step() -> None:
        pass

    @dg.job(name="plain_job", metadata={"automation": "scratch"}, owners=["team:scratch"])
    def plain_job():
        step()

    @other.job(name="other_job", description="Another automation's job.")
    def other_job():
        step()

    @scratch.job(name="unpooled_job", description="A job whose op is in no pool.")
    def unpooled_job():
        step()

    @dg.asset(key="plain_table", owners=["team:scratch"])
    def plain_table() -> None:
        pass

    @dg.multi_asset_check(specs=[dg.AssetCheckSpec("plain_check", asset="scratch_table")])
    def plain_checks():
        yield dg.AssetCheckResult(check_name="plain_check", asset_key="scratch_table", passed=True)

    @other.sensor(name="other_sensor", job=made["jobs"][0], minimum_interval_seconds=30)
    def other_sensor(context):
        return dg.SkipReason("nothing")

    return {
        "plain_job": {"jobs": [plain_job]},
        "other_job": {"jobs": [other_job]},
        "unpooled_job": {"jobs": [unpooled_job]},
        "plain_hourly_schedule": {
            "schedules": [
                dg.ScheduleDefinition(
                    name="plain_hourly_schedule", cron_schedule="0 * * * *", job=made["jobs"][0]
                )
            ]
        },
        "other_sensor": {"sensors": [other_sensor]},
        "plain_table": {"assets": [plain_table]},
        "plain_files": {"assets": [dg.AssetSpec("plain_files", owners=["team:scratch"])]},
        "plain_checks": {"asset_checks": [plain_checks]},
    }


@pytest.mark.parametrize(
    "name",
    [
        "plain_job",
        "other_job",
        "unpooled_job",
        "plain_hourly_schedule",
        "other_sensor",
        "plain_table",
        "plain_files",
        "plain_checks",
    ],
)
def test_a_definition_made_around_the_declaration_is_refused_by_name(
    scratch: Automation, name: str
) -> None:
    made = _made_by(scratch)
    extra = _around(scratch)[name]
    kinds = {*made, *extra}
    merged = {kind: [*made.get(kind, []), *extra.get(kind, [])] for kind in kinds}
    with pytest.raises(ValueError, match=rf"automation 'scratch'.*\b{name}\b") as refused:
        scratch.definitions(**merged)
    for other in set(_around(scratch)) - {name}:
        assert other not in str(refused.value)


def test_a_trigger_declared_exempt_with_a_reason_is_accepted(scratch: Automation) -> None:
    made = _made_by(scratch)
    exempt = dg.ScheduleDefinition(
        name="exempt_hourly_schedule",
        cron_schedule="0 * * * *",
        job=made["jobs"][0],
        metadata=unguarded("it reports on the pause switch itself"),
    )
    defs = scratch.definitions(**{**made, "schedules": [*made["schedules"], exempt]})
    accepted = defs.get_schedule_def("exempt_hourly_schedule")
    assert accepted.metadata == exempt.metadata


#: What an automation folder leaves to its declaration: stamping any of these by hand is how
#: an automation ends up with a tag, the hook, the runbook link or the classified retry missing.
MADE_BY_THE_DECLARATION = {
    "job",
    "asset",
    "multi_asset",
    "asset_check",
    "multi_asset_check",
    "define_asset_job",
    "sensor",
    "schedule",
    "ScheduleDefinition",
    "SensorDefinition",
    "Definitions",
    "RetryPolicy",
}
HAND_STAMPED_NAMES = {"job_tags", "alert_on_failure_hook"}
HAND_STAMPED_KEYWORDS = {"retry_policy", "hooks", "pool"}


def test_no_automation_folder_stamps_by_hand() -> None:
    found = []
    for _name, folder in discovery.folders():
        for path in sorted(folder.rglob("*.py")):
            where = path.relative_to(PROJECT_ROOT)
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    if node.value.id == "dg" and node.attr in MADE_BY_THE_DECLARATION:
                        found.append(f"{where}:{node.lineno} dg.{node.attr}")
                    elif node.attr in HAND_STAMPED_NAMES:
                        found.append(f"{where}:{node.lineno} .{node.attr}")
                elif isinstance(node, ast.keyword) and node.arg in HAND_STAMPED_KEYWORDS:
                    found.append(f"{where}:{node.lineno} {node.arg}=")
                elif (
                    isinstance(node, ast.Name | ast.alias)
                    and (getattr(node, "id", None) or getattr(node, "name", None))
                    in HAND_STAMPED_NAMES
                ):
                    found.append(f"{where}:{node.lineno} {getattr(node, 'id', None) or node.name}")
    assert found == [], "\n".join(found)
