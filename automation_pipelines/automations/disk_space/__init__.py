"""Disk space guard: fails loudly before a full disk silently stops every other automation."""

from automation_pipelines.reliability.automation import Automation

AUTOMATION = Automation.here(__file__, owner="team:platform", max_runtime_seconds=300)
