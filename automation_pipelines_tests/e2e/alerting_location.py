"""A test-only code location whose jobs fail in every way alerting must catch, launched once
each by a sensor, with the real monitoring sensors delivering to $E2E_ALERT_URLS."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg

from automation_pipelines.monitoring.alerting import alert_outbox_sensor, run_failure_alert_sensor
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import Automation
from automation_pipelines.reliability.errors import PermanentError, RetryPreset, reliable_op
from automation_pipelines.reliability.secrets import register_resources

RUNBOOK = Path(__file__).parent.parent / "reliability" / "fixture_runbooks" / "complete"
FAST = RetryPreset("fast", max_retries=2, base_delay=0.2, max_delay=0.5)


def _automation(name: str, max_runtime_seconds: int = 600) -> Automation:
    return Automation(
        name=name, owner="team:test", folder=RUNBOOK, max_runtime_seconds=max_runtime_seconds
    )


class Vault(dg.ConfigurableResource):
    """A resource reading a credential from the environment, as a warehouse client would."""

    access_code: str


@reliable_op(FAST)
def call_down_upstream() -> None:
    raise ConnectionError("upstream 127.0.0.1:9 refused the connection")


@reliable_op(FAST)
def kill_own_worker() -> None:
    """Runs in the run worker itself (in-process executor), so this kills the run worker."""
    os.kill(os.getpid(), signal.SIGKILL)


@reliable_op(FAST)
def hang() -> None:
    time.sleep(600)


@reliable_op(FAST)
def use_refused_credential(vault: Vault) -> None:
    raise PermanentError(f"access code {vault.access_code} was refused", item="order-7")


@reliable_op(FAST)
def heal_after_two_timeouts() -> str:
    counter = Path(os.environ["E2E_STATE_DIR"]) / "flaky_calls"
    calls = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(calls + 1))
    if calls < 2:
        raise TimeoutError(f"upstream timed out (call {calls + 1})")
    return "healed"


@_automation("op_fails").job(name="op_fails_job", description="Fails after its op retries.")
def op_fails_job():
    call_down_upstream()


@_automation("worker_killed").job(
    name="worker_killed_job", description="Its worker dies.", executor_def=dg.in_process_executor
)
def worker_killed_job():
    kill_own_worker()


@_automation("too_slow", max_runtime_seconds=4).job(
    name="too_slow_job", description="Runs past its max runtime."
)
def too_slow_job():
    hang()


@_automation("refused").job(name="refused_job", description="A permanent error.")
def refused_job():
    use_refused_credential()


@_automation("flaky").job(name="flaky_job", description="Heals after two transient errors.")
def flaky_job():
    heal_after_two_timeouts()


JOBS = [op_fails_job, worker_killed_job, too_slow_job, refused_job, flaky_job]


@dg.sensor(
    name="e2e_launch_sensor",
    jobs=JOBS,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches each job once.",
)
def e2e_launch_sensor(context: dg.SensorEvaluationContext):
    for job in JOBS:
        yield dg.RunRequest(run_key=job.name, job_name=job.name)


defs = dg.Definitions(
    jobs=JOBS,
    sensors=[e2e_launch_sensor, run_failure_alert_sensor, alert_outbox_sensor],
    resources={
        "alerts": AlertRouter(
            ui_base_url="http://127.0.0.1:3000",
            routes_file=os.environ.get("E2E_ROUTES_FILE"),
            retry_base_seconds=1,
            retry_max_seconds=2,
        ),
        "vault": Vault(access_code=dg.EnvVar("E2E_ACCESS_CODE")),
    },
)
register_resources(defs)
