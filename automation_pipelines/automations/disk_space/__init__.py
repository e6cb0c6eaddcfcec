"""Disk space guard: fails loudly before a full disk silently stops every other automation."""

from automation_pipelines.reliability.automation import Automation, Expectation

AUTOMATION = Automation.here(
    __file__,
    owner="team:platform",
    expect=Expectation(success_within_hours=3, max_runs_per_hour=6),
    max_runtime_seconds=300,
)
