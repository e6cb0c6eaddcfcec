"""The failure hook every job carries: it records what failed, for the alert the run will get.

The hook only records (op, error class, redacted message, attempts, item). Whether and when to
alert is decided once the run has finished, by the run-failure sensor, so a run that Dagster will
retry, or a failure folded into an open incident, never produces a second alert.
"""

from __future__ import annotations

import dagster as dg

from automation_pipelines.reliability.messages import FailureDetail

HOOK_NAME = "alert_on_failure_hook"


def _metadata_value(metadata: dict, key: str):
    value = metadata.get(key)
    return getattr(value, "value", value)


def detail_from_hook(context: dg.HookContext) -> FailureDetail:
    exc = context.op_exception
    metadata = dict(getattr(exc, "metadata", None) or {})
    error_class = _metadata_value(metadata, "error_class") or type(exc).__name__
    message = _metadata_value(metadata, "error") or getattr(exc, "description", None) or str(exc)
    attempts = _metadata_value(metadata, "attempts")
    if attempts is None:
        retries = context.instance.get_records_for_run(
            context.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
        ).records
        attempts = 1 + sum(1 for r in retries if r.event_log_entry.step_key == context.step_key)
    return FailureDetail(
        op=context.op.name,
        error_class=str(error_class),
        message=str(message),
        attempts=int(attempts),
        item=_metadata_value(metadata, "item"),
    )


@dg.failure_hook(name=HOOK_NAME, required_resource_keys={"alerts"})
def alert_on_failure_hook(context: dg.HookContext) -> None:
    """Record the failed op for the run's alert (the op has used up its retries)."""
    try:
        detail = detail_from_hook(context)
        outbox = context.resources.alerts.outbox(context.instance)
        outbox.record_failure_detail(context.run_id, context.step_key, detail)
    except Exception:
        context.log.exception(
            "could not record this failure for alerting; the run-failure sensor will use the "
            "event log instead"
        )
