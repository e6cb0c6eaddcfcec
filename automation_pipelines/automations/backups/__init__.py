"""Backups: nightly verified snapshots of folders and databases, and a daily health check that
notices when they stop working."""

from automation_pipelines.reliability.automation import Automation, Expectation

AUTOMATION = Automation.here(
    __file__,
    owner="team:platform",
    # Both jobs run daily; a success at least every 26 h each. More than 12 runs an hour is a
    # loop (or a person launching backups by hand over and over).
    expect=Expectation(success_within_hours=26, max_runs_per_hour=12, trigger_stale_minutes=10),
    max_runtime_seconds=4 * 3600,
    breaker_after_failures=5,
)
