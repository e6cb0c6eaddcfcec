"""The declaration every automation makes: who owns it, where its runbook is, and its limits.

One `Automation` per automation folder is the single source for the tags and descriptions the
readiness check looks for, so an automation cannot forget one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.hooks import alert_on_failure_hook

#: Tag naming the automation a run belongs to; dagster.yaml limits concurrency per value of it.
AUTOMATION_TAG = "automation"
#: Tag naming the person or team that is alerted and answers for the automation.
OWNER_TAG = "owner"
#: Dagster's own tag: run monitoring stops a run that has run longer than this many seconds.
MAX_RUNTIME_TAG = "dagster/max_runtime"
#: The line in a job description that points a reader at the runbook.
RUNBOOK_PREFIX = "Runbook: "

#: Dagster's own tag: with "false", run retries never re-run a run whose op failed.
RETRY_ON_OP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"


@dataclass(frozen=True)
class Automation:
    """Who owns an automation, where its runbook lives, and how long one run may take."""

    name: str
    owner: str
    folder: Path
    max_runtime_seconds: int = 3600

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"automation name {self.name!r} must be a lower-case identifier")
        if not self.owner.strip():
            raise ValueError(f"automation {self.name!r} needs an owner")
        if self.max_runtime_seconds <= 0:
            raise ValueError(f"automation {self.name!r}: max_runtime_seconds must be positive")

    @classmethod
    def here(cls, module_file: str, *, owner: str, max_runtime_seconds: int = 3600) -> Automation:
        """Declare the automation whose folder holds `module_file`; the folder name is its name."""
        folder = Path(module_file).resolve().parent
        return cls(
            name=folder.name, owner=owner, folder=folder, max_runtime_seconds=max_runtime_seconds
        )

    @property
    def runbook(self) -> Path:
        return self.folder / "README.md"

    @property
    def runbook_ref(self) -> str:
        """The runbook path as a reader of the repository sees it."""
        try:
            return self.runbook.relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            return self.runbook.as_posix()

    def job_tags(self, **extra: str) -> dict[str, str]:
        """Tags every job of this automation carries (owner, concurrency key, max runtime)."""
        return {
            OWNER_TAG: self.owner,
            AUTOMATION_TAG: self.name,
            MAX_RUNTIME_TAG: str(self.max_runtime_seconds),
            RETRY_ON_OP_FAILURE_TAG: "false",
            **extra,
        }

    def describe(self, text: str) -> str:
        """A description for a job, schedule or sensor that ends with the runbook link."""
        return f"{text.strip()}\n\n{RUNBOOK_PREFIX}{self.runbook_ref} (owner: {self.owner})"

    def job(self, **kwargs):
        """`dg.job` with this automation's tags and the alerting hook; the description gets the
        runbook link."""
        kwargs["tags"] = {**self.job_tags(), **kwargs.get("tags", {})}
        kwargs["hooks"] = {alert_on_failure_hook, *kwargs.get("hooks", ())}
        if "description" in kwargs:
            kwargs["description"] = self.describe(kwargs["description"])
        return dg.job(**kwargs)
