"""Webhook events: signed deliveries from the inbox loaded into the warehouse, reported daily."""

from automation_pipelines.reliability.automation import Automation, Expectation

AUTOMATION = Automation.here(
    __file__,
    owner="team:data",
    # Events come when other systems send them, so the loader has no success window: silence is
    # the inbox sensor not ticking. The daily report has its own 26 h window (see jobs.py).
    expect=Expectation(max_runs_per_hour=900, trigger_stale_minutes=10),
    max_runtime_seconds=1800,
    breaker_after_failures=5,
)
